//! OCI runtime specs: what runc is asked to run, from the image config and what the pod asks
//! for. Both are oci-spec's typed `Spec`: a container's built by the options of `spec_opts`
//! (`container`), the pause container's by options of its own that share their pieces
//! (`sandbox`).

pub mod annotations;
pub mod apparmor;
pub mod capabilities;
pub mod cdi;
pub mod container;
pub mod devices;
pub mod files;
pub mod resources;
pub mod sandbox;
pub mod seccomp;
pub mod signal;
pub mod spec_opts;
pub mod user;
pub mod userns;

pub use sandbox::{sandbox_spec, Ns, SandboxSpec};

/// A request field that cannot be honoured, with why: what every spec builder and leaf here
/// refuses with, and the API answers as InvalidArgument naming `field`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct SpecError {
    /// The request field, as CRI names it (`config.mounts.container_path`), or `image`.
    pub field: &'static str,
    pub reason: String,
}

impl SpecError {
    pub fn new(field: &'static str, reason: impl Into<String>) -> SpecError {
        SpecError {
            field,
            reason: reason.into(),
        }
    }

    /// The same error, its reason prefixed with which element of the field it is about.
    pub fn within(self, element: impl std::fmt::Display) -> SpecError {
        SpecError {
            field: self.field,
            reason: format!("{element}: {}", self.reason),
        }
    }
}

/// Capabilities a container gets by default (containerd's and docker's default set).
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Paths hidden from containers unless privileged.
pub const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths read-only in containers unless privileged.
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// oom_score_adj of every pod sandbox (as kubelet and containerd use).
pub const SANDBOX_OOM_SCORE_ADJ: i32 = -998;

/// The lowest oom_score_adj this host lets concord's children ask for: without
/// CAP_SYS_RESOURCE it cannot go below the current value (runc fails with "can't get final
/// child's PID from pipe: EOF" otherwise), as containerd's `restrict_oom_score_adj` does.
pub fn clamp_oom_score_adj(want: i32) -> i32 {
    if has_cap_sys_resource() {
        return want;
    }
    let current = std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .unwrap_or(0);
    want.max(current)
}

/// Whether CAP_SYS_RESOURCE is in this process's bounding set.
pub fn has_cap_sys_resource() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("CapBnd:"))
                .and_then(|l| u64::from_str_radix(l.trim_start_matches("CapBnd:").trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << 24) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oom_score_adj_is_never_lowered_below_what_the_host_allows() {
        let got = clamp_oom_score_adj(-998);
        if !has_cap_sys_resource() {
            let own: i32 = std::fs::read_to_string("/proc/self/oom_score_adj")
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            assert_eq!(got, (-998).max(own));
        } else {
            assert_eq!(got, -998);
        }
    }
}
