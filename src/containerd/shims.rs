//! Shim processes that containerd no longer knows: a task create cancelled half-way (concord
//! killed mid-call, a deadline) can leave a `containerd-shim-runc-v2` serving no task. containerd
//! reaps only the shims of tasks it has, so these live on. concord finds them in `/proc` by their
//! command line (`-namespace <ours> -id <id> -address <our containerd>`) and kills them (and
//! what they started) when the id is gone: after a removal, and in the resync's orphan scan.

use std::path::Path;

/// A shim process serving `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shim {
    pub pid: i32,
    pub id: String,
}

/// The value after flag `name` in `args`.
fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

/// Whether command line `args` is a shim serving `namespace` of the containerd at `address`;
/// answers the id it serves.
pub fn serves(args: &[String], namespace: &str, address: &Path) -> Option<String> {
    let program = Path::new(args.first()?).file_name()?.to_str()?;
    if !program.starts_with("containerd-shim") {
        return None;
    }
    if flag(args, "-namespace")? != namespace || Path::new(flag(args, "-address")?) != address {
        return None;
    }
    let id = flag(args, "-id")?;
    (!id.is_empty()).then(|| id.to_string())
}

/// The shims running for `namespace` of the containerd at `address`.
pub fn list(namespace: &str, address: &Path) -> Vec<Shim> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let args: Vec<String> = raw
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            serves(&args, namespace, address).map(|id| Shim { pid, id })
        })
        .collect()
}

/// Kills shim `pid` and the processes it started (SIGKILL).
pub fn kill(pid: i32) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    for child in children
        .split_whitespace()
        .filter_map(|c| c.parse::<i32>().ok())
    {
        let _ = kill(Pid::from_raw(child), Signal::SIGKILL);
    }
    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
}

/// Kills every shim of `id` (a removed sandbox or container: containerd has nothing of it any
/// more); answers how many there were.
pub fn kill_for(namespace: &str, address: &Path, id: &str) -> usize {
    let shims: Vec<Shim> = list(namespace, address)
        .into_iter()
        .filter(|s| s.id == id)
        .collect();
    for s in &shims {
        tracing::warn!(pid = s.pid, id, "killing a shim left serving no task");
        kill(s.pid);
    }
    shims.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split(' ').map(String::from).collect()
    }

    #[test]
    fn shims_of_our_namespace_and_containerd_only() {
        let addr = Path::new("/run/containerd/containerd.sock");
        let ours = args("/usr/bin/containerd-shim-runc-v2 -namespace k8s.io -id abc -address /run/containerd/containerd.sock");
        assert_eq!(serves(&ours, "k8s.io", addr), Some("abc".into()));
        assert_eq!(serves(&ours, "moby", addr), None);
        assert_eq!(serves(&ours, "k8s.io", Path::new("/tmp/other.sock")), None);
        let other = args(
            "/usr/bin/sleep -namespace k8s.io -id abc -address /run/containerd/containerd.sock",
        );
        assert_eq!(serves(&other, "k8s.io", addr), None);
        let no_id = args("/usr/bin/containerd-shim-runc-v2 -namespace k8s.io -address /run/containerd/containerd.sock");
        assert_eq!(serves(&no_id, "k8s.io", addr), None);
    }
}
