//! The capabilities a container's process holds: the default set (or every one the host lets
//! concord pass on, privileged) with the CRI's add and drop, as OCI's typed set.

use crate::cri;
use oci_spec::runtime::{Capabilities, Capability};

use super::DEFAULT_CAPABILITIES;

/// Every capability (what a privileged container gets; `ALL` in add/drop).
pub const ALL_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Every capability concord itself may pass on: those of [`ALL_CAPABILITIES`] (indexed by
/// number) in its own bounding set, as containerd gives privileged containers its current ones.
/// A capability the host withholds from concord would make runc fail with EPERM.
fn all_capabilities() -> Vec<String> {
    static BOUNDING: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let bounding = *BOUNDING.get_or_init(|| {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("CapBnd:"))
                    .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            })
            .unwrap_or(u64::MAX)
    });
    ALL_CAPABILITIES
        .iter()
        .enumerate()
        .filter(|(n, _)| bounding & (1u64 << n) != 0)
        .map(|(_, c)| c.to_string())
        .collect()
}

/// The capability set: the default (or all, privileged), plus `add`, minus `drop`.
pub fn capabilities(sc: &cri::LinuxContainerSecurityContext) -> Vec<String> {
    if sc.privileged {
        return all_capabilities();
    }
    let norm = |c: &String| {
        let c = c.to_uppercase();
        if c.starts_with("CAP_") || c == "ALL" {
            c
        } else {
            format!("CAP_{c}")
        }
    };
    let caps = sc.capabilities.clone().unwrap_or_default();
    let add: Vec<String> = caps.add_capabilities.iter().map(norm).collect();
    let drop: Vec<String> = caps.drop_capabilities.iter().map(norm).collect();
    let mut set: Vec<String> = if drop.iter().any(|d| d == "ALL") {
        vec![]
    } else {
        DEFAULT_CAPABILITIES
            .iter()
            .map(|c| c.to_string())
            .filter(|c| !drop.contains(c))
            .collect()
    };
    if add.iter().any(|a| a == "ALL") {
        set = all_capabilities();
    } else {
        for a in add {
            if !set.contains(&a) {
                set.push(a);
            }
        }
    }
    set
}

/// The capability names as OCI's set. A name no kernel knows is left out: runc ignores it too.
pub fn capability_set(names: &[String]) -> Capabilities {
    names
        .iter()
        .filter_map(|n| serde_json::from_value::<Capability>(n.as_str().into()).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_add_and_drop_with_all() {
        let mut sc = cri::LinuxContainerSecurityContext {
            capabilities: Some(cri::Capability {
                add_capabilities: vec!["NET_ADMIN".into()],
                drop_capabilities: vec!["CAP_CHOWN".into()],
                ..Default::default()
            }),
            ..Default::default()
        };
        let caps = capabilities(&sc);
        assert!(caps.contains(&"CAP_NET_ADMIN".to_string()));
        assert!(!caps.contains(&"CAP_CHOWN".to_string()));
        sc.capabilities = Some(cri::Capability {
            drop_capabilities: vec!["ALL".into()],
            ..Default::default()
        });
        assert!(capabilities(&sc).is_empty());
    }

    #[test]
    fn unknown_capabilities_are_left_out_as_runc_does() {
        let set = capability_set(&["CAP_CHOWN".into(), "CAP_NO_SUCH".into()]);
        assert_eq!(set, [Capability::Chown].into());
    }
}
