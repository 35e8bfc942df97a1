//! OCI runtime specs: what runc is asked to run, from the image config and what the pod asks
//! for. A container's is oci-spec's typed `Spec` (`container`, built by the options of
//! `spec_opts`); the pause container's is still built as JSON here.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::image::manifest::ImageConfig;

pub mod annotations;
pub mod apparmor;
pub mod capabilities;
pub mod cdi;
pub mod container;
pub mod devices;
pub mod files;
pub mod resources;
pub mod seccomp;
pub mod signal;
pub mod spec_opts;
pub mod user;
pub mod userns;

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

/// Where a namespace of the sandbox comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Ns {
    /// A new one for the pod.
    Pod,
    /// The host's.
    Node,
    /// An existing one at this path.
    Path(String),
}

/// What a pod sandbox's pause container needs.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    pub id: String,
    pub hostname: String,
    pub network: Ns,
    pub pid: Ns,
    pub ipc: Ns,
    /// Cgroup path for the sandbox (cgroupfs: `/parent/id`).
    pub cgroups_path: String,
    pub sysctls: BTreeMap<String, String>,
    pub oom_score_adj: i32,
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub supplemental_groups: Vec<i64>,
    pub readonly_rootfs: bool,
    pub privileged: bool,
    /// Size of the /dev/shm tmpfs when the pod has its own IPC namespace.
    pub shm_size: u64,
    /// The pod's shared /dev/shm (a tmpfs concord mounted) to bind; None: a tmpfs of its own.
    pub shm_path: Option<String>,
    pub annotations: BTreeMap<String, String>,
    /// `linux.seccomp` (None: unconfined).
    pub seccomp: Option<oci_spec::runtime::LinuxSeccomp>,
    /// The pod's own user namespace and where it is pinned (None: the host's).
    pub userns: Option<(userns::UserNs, String)>,
}

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

/// The image's `User` as numeric uid and gid (names are resolved by the containers issue).
fn image_user(config: &ImageConfig) -> (i64, i64) {
    let user = config
        .config
        .as_ref()
        .and_then(|c| c.user.clone())
        .unwrap_or_default();
    let mut parts = user.split(':');
    let uid = parts.next().and_then(|u| u.parse().ok()).unwrap_or(0);
    let gid = parts.next().and_then(|g| g.parse().ok()).unwrap_or(uid);
    (uid, gid)
}

/// The pause container's spec.
pub fn sandbox_spec(s: &SandboxSpec, image: &ImageConfig) -> Value {
    let cfg = image.config.clone().unwrap_or_default();
    let mut args: Vec<String> = cfg.entrypoint.clone().unwrap_or_default();
    args.extend(cfg.cmd.clone().unwrap_or_default());
    if args.is_empty() {
        args.push("/pause".into());
    }
    let env = cfg.env.clone().unwrap_or_else(|| {
        vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()]
    });
    let (img_uid, img_gid) = image_user(image);
    let uid = s.run_as_user.unwrap_or(img_uid);
    let gid = s
        .run_as_group
        .unwrap_or(if s.run_as_user.is_some() { 0 } else { img_gid });
    let caps: Vec<&str> = DEFAULT_CAPABILITIES.to_vec();
    let ns = |kind: &str, n: &Ns| match n {
        Ns::Pod => Some(json!({"type": kind})),
        Ns::Path(p) => Some(json!({"type": kind, "path": p})),
        Ns::Node => None,
    };
    let mut namespaces: Vec<Value> = vec![json!({"type": "mount"})];
    namespaces.extend(ns("network", &s.network));
    namespaces.extend(ns("pid", &s.pid));
    namespaces.extend(ns("ipc", &s.ipc));
    if s.network != Ns::Node {
        namespaces.push(json!({"type": "uts"}));
    }
    if let Some((_, path)) = &s.userns {
        namespaces.push(json!({"type": "user", "path": path}));
    }
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}),
    ];
    if s.ipc == Ns::Node {
        mounts.push(json!({"destination": "/dev/shm", "type": "bind", "source": "/dev/shm", "options": ["rbind", "ro"]}));
    } else if let Some(shm) = &s.shm_path {
        mounts.push(json!({"destination": "/dev/shm", "type": "bind", "source": shm, "options": ["rbind", "rprivate", "rw"]}));
    } else {
        mounts.push(
            json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", format!("size={}", s.shm_size)]}),
        );
    }
    if s.userns.is_some() {
        mounts[4] = json!(userns::sys_bind());
    }
    let mut linux = json!({
        "namespaces": namespaces,
        "cgroupsPath": s.cgroups_path,
        "sysctl": s.sysctls,
        "resources": {"devices": [{"allow": false, "access": "rwm"}], "cpu": {"shares": 2}},
    });
    if let Some((ns, _)) = &s.userns {
        let (uids, gids) = ns.mappings();
        linux["uidMappings"] = json!([uids]);
        linux["gidMappings"] = json!([gids]);
    }
    if !s.privileged {
        linux["maskedPaths"] = json!(MASKED_PATHS);
        linux["readonlyPaths"] = json!(READONLY_PATHS);
        if let Some(profile) = &s.seccomp {
            linux["seccomp"] = json!(profile);
        }
    }
    let mut annotations = s.annotations.clone();
    annotations.insert("io.kubernetes.cri.container-type".into(), "sandbox".into());
    annotations.insert("io.kubernetes.cri.sandbox-id".into(), s.id.clone());
    let mut spec = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": uid, "gid": gid, "additionalGids": s.supplemental_groups},
            "args": args,
            "env": env,
            "cwd": cfg.working_dir.filter(|w| !w.is_empty()).unwrap_or_else(|| "/".into()),
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "noNewPrivileges": !s.privileged,
            "oomScoreAdj": clamp_oom_score_adj(s.oom_score_adj),
        },
        "root": {"path": "rootfs", "readonly": s.readonly_rootfs},
        "hostname": s.hostname,
        "mounts": mounts,
        "annotations": annotations,
        "linux": linux,
    });
    // The host's UTS namespace (host network) keeps the host's name: runc refuses to set one.
    if s.network == Ns::Node {
        spec.as_object_mut().expect("object").remove("hostname");
    }
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pause_config() -> ImageConfig {
        serde_json::from_value(json!({
            "architecture": "amd64", "os": "linux",
            "config": {"User": "65535:65535", "Entrypoint": ["/pause"]},
            "rootfs": {"type": "layers", "diff_ids": ["sha256:aa"]}
        }))
        .unwrap()
    }

    fn spec(network: Ns) -> SandboxSpec {
        SandboxSpec {
            id: "sb".into(),
            hostname: "web-0".into(),
            network,
            pid: Ns::Pod,
            ipc: Ns::Pod,
            cgroups_path: "/k8s.io/sb".into(),
            sysctls: BTreeMap::from([(
                "net.ipv4.ip_unprivileged_port_start".to_string(),
                "0".to_string(),
            )]),
            oom_score_adj: SANDBOX_OOM_SCORE_ADJ,
            run_as_user: None,
            run_as_group: None,
            supplemental_groups: vec![],
            readonly_rootfs: false,
            privileged: false,
            shm_size: 64 << 20,
            shm_path: None,
            annotations: BTreeMap::new(),
            seccomp: Some(seccomp::default_profile(DEFAULT_CAPABILITIES)),
            userns: None,
        }
    }

    #[test]
    fn pause_spec_joins_the_pod_netns_and_runs_as_the_image_user() {
        let v = sandbox_spec(&spec(Ns::Path("/run/netns/sb".into())), &pause_config());
        assert_eq!(v["process"]["args"], json!(["/pause"]));
        assert_eq!(v["process"]["user"]["uid"], 65535);
        assert_eq!(v["process"]["user"]["gid"], 65535);
        let nss = v["linux"]["namespaces"].as_array().unwrap();
        assert!(nss.contains(&json!({"type": "network", "path": "/run/netns/sb"})));
        assert!(nss.contains(&json!({"type": "uts"})));
        assert_eq!(v["hostname"], "web-0");
        let shm = v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/dev/shm")
            .unwrap();
        assert!(shm["options"]
            .as_array()
            .unwrap()
            .contains(&json!("size=67108864")));
        assert_eq!(
            v["linux"]["sysctl"]["net.ipv4.ip_unprivileged_port_start"],
            "0"
        );
        assert!(v["process"]["oomScoreAdj"].as_i64().unwrap() >= -998);
        assert_eq!(v["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
        let mut privileged = spec(Ns::Pod);
        privileged.privileged = true;
        let v = sandbox_spec(&privileged, &pause_config());
        assert!(
            v["linux"].get("seccomp").is_none(),
            "privileged: unconfined"
        );
    }

    #[test]
    fn a_pod_user_namespace_is_joined_with_its_mappings_and_the_hosts_sys() {
        let mut s = spec(Ns::Path("/run/netns/sb".into()));
        let range = userns::IdRange {
            host: 200000,
            len: 65536,
        };
        let ns = userns::UserNs {
            uids: range,
            gids: range,
        };
        s.userns = Some((ns, "/state/sandboxes/sb/userns".into()));
        let v = sandbox_spec(&s, &pause_config());
        let nss = v["linux"]["namespaces"].as_array().unwrap();
        assert!(nss.contains(&json!({"type": "user", "path": "/state/sandboxes/sb/userns"})));
        let map = json!([{"containerID": 0, "hostID": 200000, "size": 65536}]);
        assert_eq!(v["linux"]["uidMappings"], map);
        assert_eq!(v["linux"]["gidMappings"], map);
        let sys = v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/sys")
            .unwrap();
        assert_eq!(
            (&sys["type"], &sys["source"]),
            (&json!("bind"), &json!("/sys"))
        );
        assert!(sys["options"].as_array().unwrap().contains(&json!("ro")));
    }

    #[test]
    fn host_network_shares_the_host_uts_and_net() {
        let v = sandbox_spec(&spec(Ns::Node), &pause_config());
        let nss = v["linux"]["namespaces"].as_array().unwrap();
        assert!(!nss
            .iter()
            .any(|n| n["type"] == "network" || n["type"] == "uts"));
    }

    /// The pod user namespace of the tests: 65536 ids from host id 200000.
    fn test_userns() -> userns::UserNs {
        let range = userns::IdRange {
            host: 200000,
            len: 65536,
        };
        userns::UserNs {
            uids: range,
            gids: range,
        }
    }

    /// The sandboxes whose specs are kept as JSON in `testdata/`, by file name: every branch
    /// of [`sandbox_spec`].
    fn golden_cases() -> Vec<(&'static str, SandboxSpec, ImageConfig)> {
        let pod = spec(Ns::Path("/run/netns/sb".into()));
        // The other cases pass a small profile through (the default one is in `pod`).
        let mut small = pod.clone();
        small.seccomp = Some(
            oci_spec::runtime::LinuxSeccompBuilder::default()
                .default_action(oci_spec::runtime::LinuxSeccompAction::ScmpActErrno)
                .build()
                .unwrap(),
        );
        let mut shared_shm = small.clone();
        shared_shm.shm_path = Some("/state/sandboxes/sb/shm".into());
        shared_shm.run_as_user = Some(1000);
        shared_shm.supplemental_groups = vec![5, 6];
        shared_shm.readonly_rootfs = true;
        shared_shm.annotations = BTreeMap::from([
            ("io.kubernetes.pod.name".to_string(), "web-0".to_string()),
            ("allowed".to_string(), "yes".to_string()),
        ]);
        let mut run_as_group = small.clone();
        run_as_group.run_as_group = Some(3000);
        run_as_group.seccomp = None;
        let mut privileged = small.clone();
        privileged.privileged = true;
        let mut host = spec(Ns::Node);
        host.seccomp = small.seccomp.clone();
        host.pid = Ns::Node;
        host.ipc = Ns::Node;
        host.sysctls.clear();
        let mut user = small.clone();
        user.userns = Some((test_userns(), "/state/sandboxes/sb/userns".into()));
        let bare: ImageConfig = serde_json::from_value(json!({
            "rootfs": {"type": "layers", "diff_ids": []}
        }))
        .unwrap();
        let full: ImageConfig = serde_json::from_value(json!({
            "config": {"User": "7", "Env": ["A=1"], "Entrypoint": ["/bin/pause"],
                       "Cmd": ["-v"], "WorkingDir": "/work"},
            "rootfs": {"type": "layers", "diff_ids": []}
        }))
        .unwrap();
        vec![
            ("pod", pod, pause_config()),
            ("pod_shared_shm", shared_shm, pause_config()),
            ("pod_run_as_group_unconfined", run_as_group, pause_config()),
            ("privileged", privileged, pause_config()),
            ("host_namespaces", host, pause_config()),
            ("userns", user, pause_config()),
            ("bare_image", small.clone(), bare),
            ("full_image", small, full),
        ]
    }

    /// The spec as JSON, its host-dependent parts made fixed: the capability sets sorted
    /// (a set has no order) and oom_score_adj the one asked for (after checking it is the
    /// one this host allows).
    fn normalized(spec: impl serde::Serialize, s: &SandboxSpec) -> Value {
        let mut v = serde_json::to_value(spec).unwrap();
        let process = &mut v["process"];
        assert_eq!(
            process["oomScoreAdj"],
            json!(clamp_oom_score_adj(s.oom_score_adj))
        );
        process["oomScoreAdj"] = json!(s.oom_score_adj);
        if let Some(caps) = process["capabilities"].as_object_mut() {
            for set in caps.values_mut() {
                set.as_array_mut().unwrap().sort_by_key(|c| c.to_string());
            }
        }
        v
    }

    /// Every case's spec is the one kept in `testdata/sandbox_<case>.json` (made by the JSON
    /// builder this replaced: the typed spec changes nothing runc is given).
    /// `CONCORD_UPDATE_GOLDEN=1` rewrites the files.
    #[test]
    fn sandbox_specs_are_the_golden_ones() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/oci/testdata");
        for (case, s, image) in golden_cases() {
            let got = normalized(sandbox_spec(&s, &image), &s);
            let path = dir.join(format!("sandbox_{case}.json"));
            if std::env::var_os("CONCORD_UPDATE_GOLDEN").is_some() {
                let text = serde_json::to_string_pretty(&got).unwrap() + "\n";
                std::fs::write(&path, text).unwrap();
            }
            let want: Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            assert_eq!(got, want, "sandbox spec {case}");
        }
    }

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
