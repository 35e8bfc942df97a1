//! A container's stop signal: the CRI `Signal` enum, the image's `StopSignal` (a name or a
//! number), and the kernel's number for each. The config's signal wins, else the image's, else
//! SIGTERM (containerd's order in `container_stop.go`).

use crate::cri;

use super::SpecError;
use crate::image::manifest::ImageConfig;

/// The first real-time signal user space may use (glibc keeps 32 and 33), and the last; as
/// moby's `signal.ParseSignal`, which containerd parses `SIGRTMIN+n` with.
const SIGRTMIN: u32 = 34;
const SIGRTMAX: u32 = 64;

/// A signal by name (`SIGTERM`, `term`, `SIGRTMIN+3`, `RTMAX-1`) or number (1 to 64).
pub fn parse(s: &str) -> Option<u32> {
    if let Ok(n) = s.parse::<u32>() {
        return (1..=SIGRTMAX).contains(&n).then_some(n);
    }
    let upper = s.trim().to_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    let offset = |rest: &str| -> Option<u32> {
        match rest {
            "" => Some(0),
            _ => rest.parse::<u32>().ok().filter(|n| *n > 0),
        }
    };
    let rt = if let Some(rest) = name.strip_prefix("RTMIN") {
        rest.strip_prefix('+')
            .or(rest.is_empty().then_some(""))
            .and_then(offset)
            .map(|n| SIGRTMIN + n)
    } else if let Some(rest) = name.strip_prefix("RTMAX") {
        rest.strip_prefix('-')
            .or(rest.is_empty().then_some(""))
            .and_then(offset)
            .and_then(|n| SIGRTMAX.checked_sub(n))
    } else {
        None
    };
    if let Some(n) = rt {
        return (SIGRTMIN..=SIGRTMAX).contains(&n).then_some(n);
    }
    // The aliases the CRI enum and Go's tables know, which nix names by their first name.
    let canonical = match name {
        "CLD" => "CHLD",
        "IOT" => "ABRT",
        "POLL" => "IO",
        other => other,
    };
    format!("SIG{canonical}")
        .parse::<nix::sys::signal::Signal>()
        .ok()
        .map(|s| s as i32 as u32)
}

/// The kernel's number for a CRI signal (None: RUNTIME_DEFAULT).
pub fn number(sig: cri::Signal) -> Option<u32> {
    if sig == cri::Signal::RuntimeDefault {
        return None;
    }
    // SIGRTMINPLUS3 → SIGRTMIN+3, SIGRTMAXMINUS1 → SIGRTMAX-1 (as containerd converts it).
    let name = sig
        .as_str_name()
        .replacen("PLUS", "+", 1)
        .replacen("MINUS", "-", 1);
    parse(&name)
}

/// The CRI signal of a kernel number: the enum's first name for it (SIGCHLD, not SIGCLD);
/// RUNTIME_DEFAULT for a number the enum has no name for.
pub fn of_number(n: u32) -> cri::Signal {
    (1..=65)
        .filter_map(|v| cri::Signal::try_from(v).ok())
        .find(|s| number(*s) == Some(n))
        .unwrap_or(cri::Signal::RuntimeDefault)
}

/// Refuses a `stop_signal` the CRI enum does not name.
pub fn check(config: &cri::ContainerConfig) -> Result<(), SpecError> {
    match cri::Signal::try_from(config.stop_signal) {
        Ok(_) => Ok(()),
        Err(_) => Err(SpecError::new(
            "config.stop_signal",
            format!(
                "unknown signal {} (see the CRI Signal enum)",
                config.stop_signal
            ),
        )),
    }
}

/// The signal StopContainer sends, as the CRI enum and the kernel's number: the config's when
/// set, else the image's `StopSignal` (`image`: its config, when the image is still known),
/// else SIGTERM. An image signal that cannot be parsed is SIGTERM too.
pub fn stop_signal(
    config: &cri::ContainerConfig,
    image: Option<&ImageConfig>,
) -> (cri::Signal, u32) {
    let configured = cri::Signal::try_from(config.stop_signal).unwrap_or_default();
    if let Some(n) = number(configured) {
        return (configured, n);
    }
    let from_image = image
        .and_then(|i| i.config.as_ref())
        .and_then(|c| c.stop_signal.as_deref())
        .and_then(parse);
    match from_image {
        Some(n) => (of_number(n), n),
        None => (
            cri::Signal::Sigterm,
            nix::sys::signal::Signal::SIGTERM as i32 as u32,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_name_or_number_including_real_time_ones() {
        assert_eq!(parse("SIGTERM"), Some(15));
        assert_eq!(parse("quit"), Some(3));
        assert_eq!(parse("9"), Some(9));
        assert_eq!(parse("SIGBOGUS"), None);
        assert_eq!(parse("0"), None);
        assert_eq!(parse("65"), None);
        assert_eq!(parse("SIGRTMIN"), Some(34));
        assert_eq!(parse("SIGRTMIN+3"), Some(37));
        assert_eq!(parse("RTMAX-1"), Some(63));
        assert_eq!(parse("SIGRTMAX"), Some(64));
        assert_eq!(parse("SIGRTMIN+31"), None);
        assert_eq!(parse("SIGRTMIN-1"), None);
        assert_eq!(parse("SIGCLD"), Some(17));
        assert_eq!(parse("SIGIOT"), Some(6));
        assert_eq!(parse("SIGPOLL"), Some(29));
    }

    /// Every value of the CRI enum but RUNTIME_DEFAULT names a signal, and maps back to
    /// itself or to the enum's first name of the same number.
    #[test]
    fn every_cri_signal_has_a_number_and_maps_back() {
        for v in 1..=65 {
            let sig = cri::Signal::try_from(v).unwrap();
            let n = number(sig).unwrap_or_else(|| panic!("{sig:?}"));
            assert_eq!(number(of_number(n)), Some(n), "{sig:?}");
        }
        assert_eq!(number(cri::Signal::Sigusr1), Some(10));
        assert_eq!(number(cri::Signal::Sigrtminplus3), Some(37));
        assert_eq!(number(cri::Signal::Sigrtmaxminus1), Some(63));
        assert_eq!(of_number(17), cri::Signal::Sigchld);
        assert_eq!(of_number(6), cri::Signal::Sigabrt);
        assert_eq!(number(cri::Signal::RuntimeDefault), None);
    }

    #[test]
    fn the_configs_signal_wins_then_the_images_then_sigterm() {
        let image = |sig: Option<&str>| -> ImageConfig {
            serde_json::from_value(serde_json::json!({
                "config": {"StopSignal": sig},
                "rootfs": {"type": "layers", "diff_ids": []}
            }))
            .unwrap()
        };
        let config = |sig: cri::Signal| cri::ContainerConfig {
            stop_signal: sig as i32,
            ..Default::default()
        };
        let default = config(cri::Signal::RuntimeDefault);
        assert_eq!(
            stop_signal(&config(cri::Signal::Sigusr1), Some(&image(Some("SIGQUIT")))),
            (cri::Signal::Sigusr1, 10)
        );
        assert_eq!(
            stop_signal(&default, Some(&image(Some("SIGQUIT")))),
            (cri::Signal::Sigquit, 3)
        );
        assert_eq!(
            stop_signal(&default, Some(&image(Some("SIGRTMIN+3")))),
            (cri::Signal::Sigrtminplus3, 37)
        );
        assert_eq!(
            stop_signal(&default, Some(&image(Some("9")))),
            (cri::Signal::Sigkill, 9)
        );
        assert_eq!(
            stop_signal(&default, Some(&image(None))),
            (cri::Signal::Sigterm, 15)
        );
        assert_eq!(
            stop_signal(&default, Some(&image(Some("SIGBOGUS")))),
            (cri::Signal::Sigterm, 15)
        );
        assert_eq!(stop_signal(&default, None), (cri::Signal::Sigterm, 15));
        let unknown = cri::ContainerConfig {
            stop_signal: 99,
            ..Default::default()
        };
        assert_eq!(check(&unknown).unwrap_err().field, "config.stop_signal");
        assert_eq!(check(&default), Ok(()));
    }
}
