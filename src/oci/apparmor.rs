//! AppArmor for containers, only where the host has it (as containerd's CRI decides it).
//!
//! concord never loads profiles (that takes `apparmor_parser`, and concord executes nothing but
//! CNI plugins): RuntimeDefault uses containerd's default profile when the node has it loaded,
//! Localhost a profile the node has loaded.

use crate::cri;

use super::SpecError;

/// The request field an AppArmor profile comes from.
const FIELD: &str = "config.linux.security_context.apparmor";

/// Profile name containerd's CRI loads as its runtime default.
pub const DEFAULT_PROFILE: &str = "cri-containerd.apparmor.d";

/// The host's AppArmor: whether it is enabled, and the profiles loaded.
#[derive(Debug, Clone, Default)]
pub struct Host {
    pub enabled: bool,
    pub loaded: Vec<String>,
}

impl Host {
    /// Reads /sys: the module's `enabled` parameter and securityfs' profile list.
    pub fn detect() -> Host {
        let enabled = std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
            .is_ok_and(|v| v.trim() == "Y");
        let loaded = if enabled {
            std::fs::read_to_string("/sys/kernel/security/apparmor/profiles")
                .unwrap_or_default()
                .lines()
                // "name (enforce)"
                .filter_map(|l| l.rsplit_once(" (").map(|(n, _)| n.to_string()))
                .collect()
        } else {
            Vec::new()
        };
        Host { enabled, loaded }
    }

    /// This host's, read once per process.
    pub fn current() -> &'static Host {
        static HOST: std::sync::OnceLock<Host> = std::sync::OnceLock::new();
        HOST.get_or_init(Host::detect)
    }

    fn has(&self, name: &str) -> bool {
        self.loaded.iter().any(|l| l == name)
    }
}

/// The profile the container's process runs under (None: unconfined), or why the request
/// cannot be honoured on this host.
pub fn profile(
    requested: Option<&cri::SecurityProfile>,
    deprecated: &str,
    privileged: bool,
    host: &Host,
) -> Result<Option<String>, SpecError> {
    let bad = |why: String| SpecError::new(FIELD, why);
    use cri::security_profile::ProfileType;
    enum Want {
        Default,
        RuntimeDefault,
        Unconfined,
        Localhost(String),
    }
    let want = match requested {
        Some(p) => match ProfileType::try_from(p.profile_type) {
            Ok(ProfileType::RuntimeDefault) => Want::RuntimeDefault,
            Ok(ProfileType::Unconfined) => Want::Unconfined,
            Ok(ProfileType::Localhost) => Want::Localhost(p.localhost_ref.clone()),
            Err(_) => return Err(bad(format!("unknown profile type {}", p.profile_type))),
        },
        None => match deprecated {
            "" => Want::Default,
            "unconfined" => Want::Unconfined,
            "runtime/default" => Want::RuntimeDefault,
            p if p.starts_with("localhost/") => {
                Want::Localhost(p.trim_start_matches("localhost/").to_string())
            }
            other => {
                return Err(bad(format!(
                    "unknown apparmor profile {other:?} (runtime/default, unconfined or \
                     localhost/<name>)"
                )))
            }
        },
    };
    match want {
        Want::Unconfined => Ok(None),
        Want::Default if privileged || !host.enabled || !host.has(DEFAULT_PROFILE) => Ok(None),
        _ if !host.enabled => Err(bad("apparmor is not enabled on this host".into())),
        Want::Default | Want::RuntimeDefault if privileged => Ok(None),
        Want::Default | Want::RuntimeDefault => {
            if host.has(DEFAULT_PROFILE) {
                Ok(Some(DEFAULT_PROFILE.into()))
            } else {
                Err(bad(format!(
                    "the runtime default apparmor profile {DEFAULT_PROFILE} is not loaded on \
                     this host"
                )))
            }
        }
        Want::Localhost(name) if name.is_empty() => {
            Err(bad("localhost profile name is empty".into()))
        }
        Want::Localhost(name) if host.has(&name) => Ok(Some(name)),
        Want::Localhost(name) => Err(bad(format!(
            "apparmor profile {name:?} is not loaded on this host"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cri::security_profile::ProfileType;

    fn sp(t: ProfileType, name: &str) -> cri::SecurityProfile {
        cri::SecurityProfile {
            profile_type: t as i32,
            localhost_ref: name.into(),
        }
    }

    #[test]
    fn without_apparmor_only_unconfined_or_nothing_is_accepted() {
        let host = Host::default();
        assert_eq!(profile(None, "", false, &host), Ok(None));
        assert_eq!(
            profile(Some(&sp(ProfileType::Unconfined, "")), "", false, &host),
            Ok(None)
        );
        assert_eq!(profile(None, "unconfined", false, &host), Ok(None));
        let err = profile(Some(&sp(ProfileType::RuntimeDefault, "")), "", false, &host);
        assert!(err.unwrap_err().reason.contains("not enabled"));
        let err = profile(None, "localhost/mine", false, &host);
        assert!(err.unwrap_err().reason.contains("not enabled"));
        assert!(profile(None, "bogus", false, &host)
            .unwrap_err()
            .reason
            .contains("bogus"));
    }

    #[test]
    fn with_apparmor_defaults_and_loaded_profiles_apply() {
        let host = Host {
            enabled: true,
            loaded: vec![DEFAULT_PROFILE.into(), "mine".into()],
        };
        assert_eq!(
            profile(None, "", false, &host),
            Ok(Some(DEFAULT_PROFILE.into()))
        );
        assert_eq!(profile(None, "", true, &host), Ok(None));
        assert_eq!(
            profile(Some(&sp(ProfileType::Localhost, "mine")), "", false, &host),
            Ok(Some("mine".into()))
        );
        assert!(
            profile(Some(&sp(ProfileType::Localhost, "other")), "", false, &host)
                .unwrap_err()
                .reason
                .contains("not loaded")
        );
        let bare = Host {
            enabled: true,
            loaded: vec![],
        };
        assert_eq!(profile(None, "", false, &bare), Ok(None));
        assert!(profile(None, "runtime/default", false, &bare)
            .unwrap_err()
            .reason
            .contains(DEFAULT_PROFILE));
    }
}
