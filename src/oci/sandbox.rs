//! The pause container's OCI spec: the process that holds the pod's namespaces, cgroup and
//! /dev/shm. Built as oci-spec's typed [`Spec`] by options in the style of
//! [`super::spec_opts`] (one function per concern, run in order on a blank spec), from the
//! pieces the container's options share (kernel mounts, capabilities, confinement, namespaces,
//! id mappings, the device rule).

use std::collections::BTreeMap;

use oci_spec::runtime::{LinuxCpu, LinuxNamespaceType, Root, Spec};

use super::spec_opts::{
    all_devices, blank_spec, confine, id_mappings, kernel_mounts, linux, linux_capabilities, mount,
    namespace, process, resources, set_user,
};
use super::{clamp_oom_score_adj, userns, SpecError, DEFAULT_CAPABILITIES};
use crate::image::manifest::ImageConfig;

/// Where a namespace of the sandbox comes from.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Ns {
    /// A new one for the pod.
    #[default]
    Pod,
    /// The host's.
    Node,
    /// An existing one at this path.
    Path(String),
}

/// What a pod sandbox's pause container needs (the default: a pod of its own namespaces, in
/// the root cgroup, nothing asked for).
#[derive(Debug, Clone, Default)]
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

/// One concern of the pause container's spec.
type SandboxOpt = fn(&mut Spec, &SandboxSpec, &ImageConfig) -> Result<(), SpecError>;

/// Every option, in order.
const OPTIONS: &[SandboxOpt] = &[
    with_process,
    with_user,
    with_namespaces,
    with_mounts,
    with_resources,
    with_security,
    with_annotations,
];

/// The pause container's spec: every option of [`OPTIONS`] applied to a blank spec. Refuses
/// only an image whose user is no valid id (containerd would refuse the spec).
pub fn sandbox_spec(s: &SandboxSpec, image: &ImageConfig) -> Result<Spec, SpecError> {
    let mut spec = blank_spec();
    for option in OPTIONS {
        option(&mut spec, s, image)?;
    }
    Ok(spec)
}

/// The image's entrypoint and command (`/pause` if it names none), its environment (a PATH if
/// it has none) and working directory; no terminal; no_new_privs unless privileged;
/// oom_score_adj as low as the host allows.
fn with_process(spec: &mut Spec, s: &SandboxSpec, image: &ImageConfig) -> Result<(), SpecError> {
    let cfg = image.config.clone().unwrap_or_default();
    let mut args: Vec<String> = cfg.entrypoint.unwrap_or_default();
    args.extend(cfg.cmd.unwrap_or_default());
    if args.is_empty() {
        args.push("/pause".into());
    }
    let env = cfg.env.unwrap_or_else(|| {
        vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()]
    });
    let cwd = cfg.working_dir.filter(|w| !w.is_empty());
    process(spec)
        .set_terminal(Some(false))
        .set_args(Some(args))
        .set_env(Some(env))
        .set_cwd(cwd.unwrap_or_else(|| "/".into()).into())
        .set_no_new_privileges(Some(!s.privileged))
        .set_oom_score_adj(Some(clamp_oom_score_adj(s.oom_score_adj)));
    Ok(())
}

/// The pod's run_as_user and run_as_group, else the image's user (its group only when the pod
/// names no user), and the pod's supplemental groups.
fn with_user(spec: &mut Spec, s: &SandboxSpec, image: &ImageConfig) -> Result<(), SpecError> {
    let (img_uid, img_gid) = image_user(image);
    let uid = s.run_as_user.unwrap_or(img_uid);
    let gid = s
        .run_as_group
        .unwrap_or(if s.run_as_user.is_some() { 0 } else { img_gid });
    // RunPodSandbox checked the pod's ids; the image's are checked here.
    let id = |what: &str, v: i64| {
        u32::try_from(v)
            .map_err(|_| SpecError::new("image", format!("{what} {v} of the image's User")))
    };
    let groups = s.supplemental_groups.iter().map(|g| *g as u32).collect();
    set_user(spec, id("uid", uid)?, id("gid", gid)?, groups);
    Ok(())
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

/// A mount namespace of its own; the pod's network, pid and IPC namespaces (new, or joined by
/// path) unless the host's; a UTS namespace and the pod's hostname unless on the host's
/// network (runc refuses to name the host's UTS namespace); the pod's user namespace with its
/// mappings.
fn with_namespaces(spec: &mut Spec, s: &SandboxSpec, _: &ImageConfig) -> Result<(), SpecError> {
    use LinuxNamespaceType as T;
    let ns = |typ: T, n: &Ns| match n {
        Ns::Pod => Some(namespace(typ, None)),
        Ns::Path(p) => Some(namespace(typ, Some(p.clone()))),
        Ns::Node => None,
    };
    let mut namespaces = vec![namespace(T::Mount, None)];
    namespaces.extend(ns(T::Network, &s.network));
    namespaces.extend(ns(T::Pid, &s.pid));
    namespaces.extend(ns(T::Ipc, &s.ipc));
    if s.network != Ns::Node {
        namespaces.push(namespace(T::Uts, None));
        spec.set_hostname(Some(s.hostname.clone()));
    }
    if let Some((userns, path)) = &s.userns {
        namespaces.push(namespace(T::User, Some(path.clone())));
        id_mappings(spec, userns);
    }
    linux(spec).set_namespaces(Some(namespaces));
    Ok(())
}

/// The root file system, the kernel file systems (/sys read-only, even privileged) and
/// /dev/shm: the host's (read-only) for host IPC, else the pod's shared tmpfs, else a tmpfs of
/// its own.
fn with_mounts(spec: &mut Spec, s: &SandboxSpec, _: &ImageConfig) -> Result<(), SpecError> {
    let mut root = Root::default();
    root.set_path("rootfs".into())
        .set_readonly(Some(s.readonly_rootfs));
    spec.set_root(Some(root));
    let mut mounts = kernel_mounts("ro", s.userns.is_some());
    let shm = match (&s.ipc, &s.shm_path) {
        (Ns::Node, _) => mount("/dev/shm", "bind", "/dev/shm", &["rbind", "ro"]),
        (_, Some(shm)) => mount("/dev/shm", "bind", shm, &["rbind", "rprivate", "rw"]),
        (_, None) => {
            let size = format!("size={}", s.shm_size);
            let options = ["nosuid", "noexec", "nodev", "mode=1777", &size];
            mount("/dev/shm", "tmpfs", "shm", &options)
        }
    };
    mounts.push(shm);
    spec.set_mounts(Some(mounts));
    Ok(())
}

/// The pod's cgroup and sysctls; no device; the least CPU weight.
fn with_resources(spec: &mut Spec, s: &SandboxSpec, _: &ImageConfig) -> Result<(), SpecError> {
    let mut cpu = LinuxCpu::default();
    cpu.set_shares(Some(2));
    resources(spec)
        .set_devices(Some(vec![all_devices(false)]))
        .set_cpu(Some(cpu));
    let sysctls = s.sysctls.clone().into_iter().collect();
    linux(spec)
        .set_cgroups_path(Some(s.cgroups_path.clone().into()))
        .set_sysctl(Some(sysctls));
    Ok(())
}

/// The default capabilities; unless privileged the default masked and read-only paths and
/// the pod's seccomp profile.
fn with_security(spec: &mut Spec, s: &SandboxSpec, _: &ImageConfig) -> Result<(), SpecError> {
    let caps: Vec<String> = DEFAULT_CAPABILITIES.iter().map(|c| c.to_string()).collect();
    process(spec).set_capabilities(Some(linux_capabilities(&caps)));
    if !s.privileged {
        confine(spec, &[], &[], s.seccomp.clone());
    }
    Ok(())
}

/// The pod's annotations the handler allows (already filtered), then the CRI ones.
fn with_annotations(spec: &mut Spec, s: &SandboxSpec, _: &ImageConfig) -> Result<(), SpecError> {
    let mut annotations = s.annotations.clone();
    annotations.insert("io.kubernetes.cri.container-type".into(), "sandbox".into());
    annotations.insert("io.kubernetes.cri.sandbox-id".into(), s.id.clone());
    spec.set_annotations(Some(annotations.into_iter().collect()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde_json::{json, Value};

    use super::*;
    use crate::oci::{seccomp, SANDBOX_OOM_SCORE_ADJ};

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
            shm_size: 64 << 20,
            seccomp: Some(seccomp::default_profile(DEFAULT_CAPABILITIES)),
            ..Default::default()
        }
    }

    /// The spec's namespaces, as (type, path).
    fn namespaces(spec: &Spec) -> Vec<(LinuxNamespaceType, Option<String>)> {
        let nss = spec.linux().as_ref().unwrap().namespaces().clone().unwrap();
        nss.iter()
            .map(|n| (n.typ(), n.path().as_ref().map(|p| p.display().to_string())))
            .collect()
    }

    /// The spec's mount at `destination`.
    fn mount_at(spec: &Spec, destination: &str) -> oci_spec::runtime::Mount {
        let mounts = spec.mounts().as_ref().unwrap();
        let found = mounts
            .iter()
            .find(|m| m.destination() == Path::new(destination));
        found.unwrap().clone()
    }

    #[test]
    fn pause_spec_joins_the_pod_netns_and_runs_as_the_image_user() {
        let s = spec(Ns::Path("/run/netns/sb".into()));
        let got = sandbox_spec(&s, &pause_config()).unwrap();
        let process = got.process().as_ref().unwrap();
        assert_eq!(process.args().as_deref(), Some(&["/pause".to_string()][..]));
        assert_eq!((process.user().uid(), process.user().gid()), (65535, 65535));
        let nss = namespaces(&got);
        let netns = (LinuxNamespaceType::Network, Some("/run/netns/sb".into()));
        assert!(nss.contains(&netns));
        assert!(nss.contains(&(LinuxNamespaceType::Uts, None)));
        assert_eq!(got.hostname().as_deref(), Some("web-0"));
        let shm = mount_at(&got, "/dev/shm");
        assert!(shm
            .options()
            .as_ref()
            .unwrap()
            .contains(&"size=67108864".into()));
        let linux = got.linux().as_ref().unwrap();
        let sysctls = linux.sysctl().as_ref().unwrap();
        assert_eq!(sysctls["net.ipv4.ip_unprivileged_port_start"], "0");
        assert!(process.oom_score_adj().unwrap() >= -998);
        let seccomp = linux.seccomp().as_ref().unwrap();
        assert_eq!(
            seccomp.default_action(),
            oci_spec::runtime::LinuxSeccompAction::ScmpActErrno
        );
        let mut privileged = spec(Ns::Pod);
        privileged.privileged = true;
        let got = sandbox_spec(&privileged, &pause_config()).unwrap();
        let linux = got.linux().as_ref().unwrap();
        assert!(linux.seccomp().is_none(), "privileged: unconfined");
    }

    #[test]
    fn a_pod_user_namespace_is_joined_with_its_mappings_and_the_hosts_sys() {
        let mut s = spec(Ns::Path("/run/netns/sb".into()));
        s.userns = Some((test_userns(), "/state/sandboxes/sb/userns".into()));
        let got = sandbox_spec(&s, &pause_config()).unwrap();
        let userns = (
            LinuxNamespaceType::User,
            Some("/state/sandboxes/sb/userns".into()),
        );
        assert!(namespaces(&got).contains(&userns));
        let (uids, gids) = test_userns().mappings();
        let linux = got.linux().as_ref().unwrap();
        assert_eq!(linux.uid_mappings().as_deref(), Some(&[uids][..]));
        assert_eq!(linux.gid_mappings().as_deref(), Some(&[gids][..]));
        let sys = mount_at(&got, "/sys");
        assert_eq!(sys.typ().as_deref(), Some("bind"));
        assert_eq!(sys.source().as_deref(), Some(Path::new("/sys")));
        assert!(sys.options().as_ref().unwrap().contains(&"ro".into()));
    }

    #[test]
    fn host_network_shares_the_host_uts_and_net() {
        let got = sandbox_spec(&spec(Ns::Node), &pause_config()).unwrap();
        let kinds: Vec<_> = namespaces(&got).into_iter().map(|(t, _)| t).collect();
        assert!(!kinds.contains(&LinuxNamespaceType::Network));
        assert!(!kinds.contains(&LinuxNamespaceType::Uts));
        assert!(got.hostname().is_none(), "runc refuses a hostname here");
    }

    #[test]
    fn an_image_user_that_is_no_id_is_refused() {
        let image: ImageConfig = serde_json::from_value(json!({
            "config": {"User": "-5"},
            "rootfs": {"type": "layers", "diff_ids": []}
        }))
        .unwrap();
        let err = sandbox_spec(&spec(Ns::Pod), &image).unwrap_err();
        assert_eq!(err.field, "image");
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
            let got = normalized(sandbox_spec(&s, &image).unwrap(), &s);
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
}
