//! The container spec's options, containerd style: one function per concern, each
//! `fn(&mut Spec, &Inputs) -> Result<(), SpecError>`, run in order on a blank spec by
//! [`super::container::container_spec`]. Each option's fallible part is a resolver of its own
//! (process arguments, user, a mount, a device, the seccomp profile...), which
//! [`super::container::validate`] runs without building a spec.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::cri;
use oci_spec::runtime::{
    LinuxCapabilities, LinuxDevice, LinuxDeviceCgroup, LinuxDeviceType, LinuxNamespace,
    LinuxNamespaceType, LinuxResources, LinuxSeccomp, Mount, Process, Root, Spec, User,
};

use super::capabilities::{capabilities, capability_set};
use super::container::{check_container_path, environment, process_args, working_dir, Inputs};
use super::resources::{check_resources, linux_resources};
use super::user::{check_id, user};
use super::{clamp_oom_score_adj, SpecError, MASKED_PATHS, READONLY_PATHS};

/// One concern of the spec.
pub type SpecOpt = fn(&mut Spec, &Inputs) -> Result<(), SpecError>;

/// Every option, in the order their refusals are checked.
pub const OPTIONS: &[SpecOpt] = &[
    with_process,
    with_user,
    with_namespaces,
    with_mounts,
    with_resources,
    with_devices,
    with_security,
    with_cdi,
    with_annotations,
];

/// A spec with nothing in it but the OCI version (oci-spec's defaults are a shell
/// container's: rlimits, capabilities, namespaces, mounts of their own).
pub fn blank_spec() -> Spec {
    let mut spec = Spec::default();
    spec.set_version("1.0.2".into())
        .set_hostname(None)
        .set_mounts(Some(Vec::new()))
        .set_annotations(Some(HashMap::new()))
        .set_root(None)
        .set_process(None)
        .set_linux(None);
    spec
}

/// The spec's process, made blank (no rlimits, capabilities, args or env) when absent.
pub(super) fn process(spec: &mut Spec) -> &mut Process {
    spec.process_mut().get_or_insert_with(|| {
        let mut p = Process::default();
        p.set_terminal(None)
            .set_args(None)
            .set_env(None)
            .set_capabilities(None)
            .set_rlimits(None)
            .set_no_new_privileges(None);
        p
    })
}

/// The spec's `linux`, made blank (no namespaces, resources or masked paths) when absent.
pub(super) fn linux(spec: &mut Spec) -> &mut oci_spec::runtime::Linux {
    spec.linux_mut().get_or_insert_with(|| {
        let mut l = oci_spec::runtime::Linux::default();
        l.set_resources(None)
            .set_namespaces(None)
            .set_masked_paths(None)
            .set_readonly_paths(None);
        l
    })
}

/// The spec's `linux.resources`, empty when absent.
pub(super) fn resources(spec: &mut Spec) -> &mut LinuxResources {
    linux(spec)
        .resources_mut()
        .get_or_insert_with(LinuxResources::default)
}

/// Arguments, environment, working directory, terminal, no_new_privs and oom_score_adj. The
/// stop signal is not in the spec (StopContainer sends it) but must be one CRI names.
pub fn with_process(spec: &mut Spec, inp: &Inputs) -> Result<(), SpecError> {
    let args = process_args(inp.config, inp.image)?;
    let cwd = working_dir(inp.config, inp.image)?;
    super::signal::check(inp.config)?;
    let oom = clamp_oom_score_adj(inp.resources.oom_score_adj as i32);
    process(spec)
        .set_terminal(Some(inp.config.tty))
        .set_args(Some(args))
        .set_env(Some(environment(inp.config, inp.image)))
        .set_cwd(cwd.into())
        .set_no_new_privileges(Some(inp.sc.no_new_privs))
        .set_oom_score_adj(Some(oom));
    Ok(())
}

/// The process's uid, gid and additional groups.
pub fn with_user(spec: &mut Spec, inp: &Inputs) -> Result<(), SpecError> {
    let (uid, gid, user_groups) = user(&inp.sc, inp.image, inp.users)?;
    let groups = additional_gids(inp, gid, &user_groups)?;
    // check_id keeps every id within 0..2^32-2.
    set_user(spec, uid as u32, gid as u32, groups);
    Ok(())
}

/// The process's user: `uid`, `gid` and `groups`.
pub(super) fn set_user(spec: &mut Spec, uid: u32, gid: u32, groups: Vec<u32>) {
    let mut u = User::default();
    u.set_uid(uid)
        .set_gid(gid)
        .set_additional_gids(Some(groups));
    process(spec).set_user(u);
}

/// Whether the image's groups are left out: SupplementalGroupsPolicy Strict in the container's
/// security context or the pod's (kubelet sets both from the pod's; Merge is the default).
fn strict_groups(inp: &Inputs) -> Result<bool, SpecError> {
    let mut strict = false;
    for (field, policy) in [
        (
            "config.linux.security_context.supplemental_groups_policy",
            inp.sc.supplemental_groups_policy,
        ),
        (
            "sandbox_config.linux.security_context.supplemental_groups_policy",
            inp.pod_sc.supplemental_groups_policy,
        ),
    ] {
        match cri::SupplementalGroupsPolicy::try_from(policy) {
            Ok(cri::SupplementalGroupsPolicy::Merge) => {}
            Ok(cri::SupplementalGroupsPolicy::Strict) => strict = true,
            Err(_) => {
                return Err(SpecError::new(
                    field,
                    format!("unknown policy {policy} (Merge or Strict)"),
                ))
            }
        }
    }
    Ok(strict)
}

/// The primary group first (as containerd's `ensureAdditionalGids`), then the user's groups
/// from the image's /etc/group (policy Merge; none when Strict), then the container's and the
/// pod's supplemental groups, each once.
pub(super) fn additional_gids(
    inp: &Inputs,
    gid: i64,
    user_groups: &[i64],
) -> Result<Vec<u32>, SpecError> {
    for g in &inp.sc.supplemental_groups {
        check_id(
            "config.linux.security_context.supplemental_groups",
            "group",
            *g,
        )?;
    }
    for g in &inp.pod_sc.supplemental_groups {
        check_id(
            "sandbox_config.linux.security_context.supplemental_groups",
            "group",
            *g,
        )?;
    }
    let image_groups = if strict_groups(inp)? {
        &[]
    } else {
        user_groups
    };
    let mut groups: Vec<u32> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for g in std::iter::once(&gid)
        .chain(image_groups)
        .chain(&inp.sc.supplemental_groups)
        .chain(&inp.pod_sc.supplemental_groups)
    {
        if seen.insert(*g) {
            groups.push(*g as u32);
        }
    }
    // NGROUPS_MAX: the kernel takes no more.
    if groups.len() > 65536 {
        return Err(SpecError::new(
            "config.linux.security_context.supplemental_groups",
            format!("{} groups (at most 65536)", groups.len()),
        ));
    }
    Ok(groups)
}

/// A namespace of kind `typ`: a new one, or the one at `path`.
pub(super) fn namespace(typ: LinuxNamespaceType, path: Option<String>) -> LinuxNamespace {
    let mut ns = LinuxNamespace::default();
    ns.set_typ(typ).set_path(path.map(PathBuf::from));
    ns
}

/// The pod's namespaces (through the pause process), the host's, or the container's own; the
/// pod's hostname where it has its own UTS namespace.
pub fn with_namespaces(spec: &mut Spec, inp: &Inputs) -> Result<(), SpecError> {
    use LinuxNamespaceType as T;
    let pod_ns = inp.pod_sc.namespace_options.clone().unwrap_or_default();
    let node = cri::NamespaceMode::Node as i32;
    let proc_ns = |kind: &str| Some(format!("/proc/{}/ns/{kind}", inp.ctx.sandbox_pid));
    let mut namespaces = vec![namespace(T::Mount, None)];
    if pod_ns.network != node {
        namespaces.push(namespace(T::Network, proc_ns("net")));
        namespaces.push(namespace(T::Uts, proc_ns("uts")));
    }
    if pod_ns.ipc != node {
        namespaces.push(namespace(T::Ipc, proc_ns("ipc")));
    }
    namespaces.extend(pid_namespace(inp)?);
    // The pod's user namespace, made by the pause container with the pod's mappings (runc
    // wants them named again when joining).
    if let Some(ns) = super::userns::of_pod(inp.ctx.sandbox)? {
        namespaces.push(namespace(T::User, proc_ns("user")));
        id_mappings(spec, &ns);
    }
    linux(spec).set_namespaces(Some(namespaces));
    if pod_ns.network != node && !inp.ctx.sandbox.hostname.is_empty() {
        spec.set_hostname(Some(inp.ctx.sandbox.hostname.clone()));
    }
    Ok(())
}

/// The uid and gid mappings of the pod's user namespace `ns`.
pub(super) fn id_mappings(spec: &mut Spec, ns: &super::userns::UserNs) {
    let (uids, gids) = ns.mappings();
    linux(spec)
        .set_uid_mappings(Some(vec![uids]))
        .set_gid_mappings(Some(vec![gids]));
}

/// The pid namespace: the pod's, the host's (None), the container's own, or its TARGET's.
pub(super) fn pid_namespace(inp: &Inputs) -> Result<Option<LinuxNamespace>, SpecError> {
    let ns = inp.sc.namespace_options.clone().unwrap_or_default();
    let pod_pid = inp
        .pod_sc
        .namespace_options
        .as_ref()
        .map(|n| n.pid)
        .unwrap_or_default();
    let pid = |path| Some(namespace(LinuxNamespaceType::Pid, path));
    Ok(
        match cri::NamespaceMode::try_from(ns.pid).unwrap_or(cri::NamespaceMode::Pod) {
            cri::NamespaceMode::Node => None,
            cri::NamespaceMode::Container => pid(None),
            cri::NamespaceMode::Target => {
                let target = inp.ctx.target_pid.ok_or_else(|| {
                    SpecError::new(
                        "config.linux.security_context.namespace_options.target_id",
                        format!("target container {:?} is not running", ns.target_id),
                    )
                })?;
                pid(Some(format!("/proc/{target}/ns/pid")))
            }
            cri::NamespaceMode::Pod if pod_pid == cri::NamespaceMode::Node as i32 => None,
            cri::NamespaceMode::Pod => pid(Some(format!("/proc/{}/ns/pid", inp.ctx.sandbox_pid))),
        },
    )
}

/// A mount of `source` (of type `typ`) at `destination`.
pub(super) fn mount(
    destination: &str,
    typ: &str,
    source: impl Into<PathBuf>,
    options: &[&str],
) -> Mount {
    let mut m = Mount::default();
    m.set_destination(destination.into())
        .set_typ(Some(typ.into()))
        .set_source(Some(source.into()))
        .set_options(Some(options.iter().map(|o| o.to_string()).collect()));
    m
}

/// The root filesystem, the kernel filesystems, the pod's files and /dev/shm, the CRI mounts
/// (and the root's propagation they need), and the image's volumes no mount covers.
pub fn with_mounts(spec: &mut Spec, inp: &Inputs) -> Result<(), SpecError> {
    let sc = &inp.sc;
    let mut root = Root::default();
    root.set_path("rootfs".into())
        .set_readonly(Some(sc.readonly_rootfs));
    spec.set_root(Some(root));
    let sys = if sc.privileged { "rw" } else { "ro" };
    let pod_userns = super::userns::of_pod(inp.ctx.sandbox)?.is_some();
    let mut mounts = kernel_mounts(sys, pod_userns);
    let c = inp.config;
    let user_paths: Vec<&str> = c.mounts.iter().map(|m| m.container_path.as_str()).collect();
    for (file, dest) in [
        ("hostname", "/etc/hostname"),
        ("hosts", "/etc/hosts"),
        ("resolv.conf", "/etc/resolv.conf"),
    ] {
        if !user_paths.contains(&dest) {
            let src = inp.ctx.sandbox_files.join(file);
            let ro = if sc.readonly_rootfs { "ro" } else { "rw" };
            mounts.push(mount(dest, "bind", src, &["rbind", "rprivate", ro]));
        }
    }
    if !user_paths.contains(&"/dev/shm") {
        let host_ipc = inp
            .pod_sc
            .namespace_options
            .as_ref()
            .is_some_and(|n| n.ipc == cri::NamespaceMode::Node as i32);
        let src = if host_ipc {
            PathBuf::from("/dev/shm")
        } else {
            super::files::shm_path(&inp.ctx.sandbox_files)
        };
        mounts.push(mount("/dev/shm", "bind", src, &["rbind", "rprivate", "rw"]));
    }
    let mut rootfs_propagation: Option<&str> = None;
    for (i, m) in c.mounts.iter().enumerate() {
        if m.image.is_some() {
            let source = inp.ctx.image_volumes.get(&i).ok_or_else(|| {
                SpecError::new("config.mounts.image", format!("mount {i}: not mounted"))
            })?;
            mounts.push(image_mount(i, m, source)?);
            continue;
        }
        let (bind, propagation) = user_mount(i, m)?;
        mounts.push(bind);
        match propagation {
            "rshared" => rootfs_propagation = Some("rshared"),
            "rslave" => _ = rootfs_propagation.get_or_insert("rslave"),
            _ => {}
        }
    }
    mounts.extend(image_volumes(inp, &user_paths));
    spec.set_mounts(Some(mounts));
    linux(spec).set_rootfs_propagation(rootfs_propagation.map(String::from));
    Ok(())
}

/// The kernel file systems every container has: /proc, /dev, /dev/pts, /dev/mqueue, /sys and
/// its cgroups (`sys`: `ro` or `rw`); in a pod user namespace /sys is a bind of the host's.
pub(super) fn kernel_mounts(sys: &str, pod_userns: bool) -> Vec<Mount> {
    let mut mounts = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", sys],
        ),
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", sys],
        ),
    ];
    if pod_userns {
        mounts[4] = super::userns::sys_bind();
    }
    mounts
}

/// CRI mount `i` as a bind mount, with its propagation (`rprivate`, `rslave`, `rshared`).
/// Propagation needs the host path's mount to propagate (shared, or a slave for
/// HostToContainer) and the container's root to keep the peer group: rshared for a
/// Bidirectional mount, rslave at least for HostToContainer (runc's default is rprivate).
pub(super) fn user_mount(i: usize, m: &cri::Mount) -> Result<(Mount, &'static str), SpecError> {
    check_container_path("config.mounts.container_path", &m.container_path)?;
    if !m.image_sub_path.is_empty() {
        return Err(SpecError::new(
            "config.mounts.image_sub_path",
            format!("mount {i}: only an image mount (config.mounts.image) has a sub path"),
        ));
    }
    if !Path::new(&m.host_path).is_absolute() {
        return Err(SpecError::new(
            "config.mounts.host_path",
            format!("mount {i}: {:?} must be an absolute path", m.host_path),
        ));
    }
    recursive_read_only(i, m)?;
    const PROPAGATION: &str = "config.mounts.propagation";
    let propagation = match cri::MountPropagation::try_from(m.propagation) {
        Ok(cri::MountPropagation::PropagationPrivate) => "rprivate",
        Ok(cri::MountPropagation::PropagationHostToContainer) => {
            crate::mountinfo::ensure_propagates(&m.host_path, false)
                .map_err(|why| SpecError::new(PROPAGATION, format!("mount {i}: {why}")))?;
            "rslave"
        }
        Ok(cri::MountPropagation::PropagationBidirectional) => {
            crate::mountinfo::ensure_propagates(&m.host_path, true)
                .map_err(|why| SpecError::new(PROPAGATION, format!("mount {i}: {why}")))?;
            "rshared"
        }
        Err(_) => {
            return Err(SpecError::new(
                "config.mounts.propagation",
                format!("mount {i}: unknown propagation {}", m.propagation),
            ))
        }
    };
    let rw = if m.readonly { "ro" } else { "rw" };
    let bind = mount(
        &m.container_path,
        "bind",
        &m.host_path,
        &["rbind", propagation, rw],
    );
    Ok((bind, propagation))
}

/// Refuses a recursive read-only mount: the CRI allows it only on a read-only mount, and no
/// runtime handler here can make one (runc 1.1 has no `rro` mount option, so Status reports
/// `recursive_read_only_mounts: false` and kubelet asks for it only with `Enabled`). As
/// containerd, the refusal says `RROUnsupported` (cri-api's `ErrRROUnsupported`).
fn recursive_read_only(i: usize, m: &cri::Mount) -> Result<(), SpecError> {
    const FIELD: &str = "config.mounts.recursive_read_only";
    match (m.recursive_read_only, m.readonly) {
        (false, _) => Ok(()),
        (true, false) => Err(SpecError::new(
            FIELD,
            format!("mount {i}: recursive read-only needs readonly set too (a read-write mount cannot be recursively read-only)"),
        )),
        (true, true) => Err(SpecError::new(
            FIELD,
            format!("mount {i}: RROUnsupported: the runtime handler does not support recursive read-only mounts (runc has no `rro` mount option)"),
        )),
    }
}

/// CRI image mount `i` (`Mount.image`, an image volume) as a read-only bind of `source`, the
/// host directory of its mounted image. Its `host_path` must be empty.
pub(super) fn image_mount(i: usize, m: &cri::Mount, source: &Path) -> Result<Mount, SpecError> {
    check_container_path("config.mounts.container_path", &m.container_path)?;
    if !m.host_path.is_empty() {
        return Err(SpecError::new(
            "config.mounts.host_path",
            format!("mount {i}: must be empty when the mount is an image"),
        ));
    }
    super::container::check_image_sub_path(&m.image_sub_path)
        .map_err(|e| e.within(format!("mount {i}")))?;
    let options = ["rbind", "rprivate", "ro", "nosuid", "nodev"];
    Ok(mount(&m.container_path, "bind", source, &options))
}

/// The image's declared volumes that no mount covers: an empty directory of the container's.
fn image_volumes(inp: &Inputs, user_paths: &[&str]) -> Vec<Mount> {
    let declared = inp.image.config.as_ref().and_then(|c| c.volumes.as_ref());
    declared
        .into_iter()
        .flat_map(|volumes| volumes.keys())
        .filter(|path| {
            !user_paths.contains(&path.as_str()) && check_container_path("image", path).is_ok()
        })
        .map(|path| {
            let source = inp
                .ctx
                .volumes_dir
                .join(path.trim_matches('/').replace('/', "_"));
            mount(path, "bind", source, &["rbind", "rprivate", "rw"])
        })
        .collect()
}

/// The CRI resources as `linux.resources`, and the cgroup the container runs in.
pub fn with_resources(spec: &mut Spec, inp: &Inputs) -> Result<(), SpecError> {
    check_resources("config.linux.resources", &inp.resources)?;
    let parent = inp
        .ctx
        .sandbox
        .linux
        .as_ref()
        .map(|l| l.cgroup_parent.as_str())
        .unwrap_or("");
    let l = linux(spec);
    l.set_resources(Some(linux_resources(&inp.resources)))
        .set_cgroups_path(Some(
            crate::cgroup::path(inp.ctx.cgroup_driver, parent, inp.ctx.id).into(),
        ));
    Ok(())
}

/// The CRI devices: their nodes in the container and the cgroup rules that let them be used
/// (after the first rule: all allowed for a privileged container, else none). A privileged
/// container (outside a user namespace) first gets every device node of the host's /dev, as
/// containerd gives it: device plugins, CSI node drivers and KubeVirt need them.
pub fn with_devices(spec: &mut Spec, inp: &Inputs) -> Result<(), SpecError> {
    let mut rules = vec![all_devices(inp.sc.privileged)];
    let mut devices = Vec::new();
    if inp.sc.privileged && !matches!(super::userns::of_pod(inp.ctx.sandbox), Ok(Some(_))) {
        devices = super::devices::host_devices(Path::new("/dev"));
    }
    for (i, dev) in inp.config.devices.iter().enumerate() {
        let (node, rule) = device(i, dev)?;
        devices.retain(|d: &LinuxDevice| d.path() != node.path());
        devices.push(node);
        rules.push(rule);
    }
    resources(spec).set_devices(Some(rules));
    linux(spec).set_devices(Some(devices));
    Ok(())
}

/// The cgroup rule for every device: all allowed (`allow`) or none.
pub(super) fn all_devices(allow: bool) -> LinuxDeviceCgroup {
    let mut all = LinuxDeviceCgroup::default();
    all.set_allow(allow).set_access(Some("rwm".into()));
    all
}

/// CRI device `i`: its node (type, numbers of the host's) and its cgroup rule.
pub(super) fn device(
    i: usize,
    dev: &cri::Device,
) -> Result<(LinuxDevice, LinuxDeviceCgroup), SpecError> {
    check_container_path("config.devices.container_path", &dev.container_path)?;
    let (kind, major, minor) = device_numbers(&dev.host_path)
        .map_err(|e| SpecError::new("config.devices.host_path", format!("device {i}: {e}")))?;
    let access = if dev.permissions.is_empty() {
        "rwm".to_string()
    } else if dev.permissions.chars().all(|c| "rwm".contains(c)) {
        dev.permissions.clone()
    } else {
        return Err(SpecError::new(
            "config.devices.permissions",
            format!(
                "device {i}: {:?} is not made of r, w and m",
                dev.permissions
            ),
        ));
    };
    let mut node = LinuxDevice::default();
    node.set_path(dev.container_path.clone().into())
        .set_typ(kind)
        .set_major(major)
        .set_minor(minor)
        .set_file_mode(Some(0o666))
        .set_uid(Some(0))
        .set_gid(Some(0));
    let mut rule = LinuxDeviceCgroup::default();
    rule.set_allow(true)
        .set_typ(Some(kind))
        .set_major(Some(major))
        .set_minor(Some(minor))
        .set_access(Some(access));
    Ok((node, rule))
}

/// A device node's type (`c` or `b`), major and minor numbers.
fn device_numbers(host_path: &str) -> Result<(LinuxDeviceType, i64, i64), String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let m = std::fs::metadata(host_path).map_err(|e| format!("{host_path}: {e}"))?;
    let kind = if m.file_type().is_char_device() {
        LinuxDeviceType::C
    } else if m.file_type().is_block_device() {
        LinuxDeviceType::B
    } else {
        return Err(format!("{host_path} is not a device"));
    };
    let rdev = m.rdev();
    Ok((
        kind,
        nix::sys::stat::major(rdev) as i64,
        nix::sys::stat::minor(rdev) as i64,
    ))
}

/// The container edits of the CDI devices the container asks for ([`super::cdi`]).
pub fn with_cdi(spec: &mut Spec, inp: &Inputs) -> Result<(), SpecError> {
    super::cdi::apply(spec, &inp.ctx.cdi)
}

/// Capabilities; unless privileged the masked and read-only paths and seccomp; AppArmor.
pub fn with_security(spec: &mut Spec, inp: &Inputs) -> Result<(), SpecError> {
    let sc = &inp.sc;
    let caps = capabilities(sc);
    if !sc.privileged {
        let seccomp = seccomp(sc, &caps)?;
        confine(spec, &sc.masked_paths, &sc.readonly_paths, seccomp);
    }
    let apparmor = apparmor(sc)?;
    process(spec)
        .set_capabilities(Some(linux_capabilities(&caps)))
        .set_apparmor_profile(apparmor);
    Ok(())
}

/// `names` as the process's bounding, effective and permitted capabilities (none inherited or
/// ambient).
pub(super) fn linux_capabilities(names: &[String]) -> LinuxCapabilities {
    let set = capability_set(names);
    let mut lc = LinuxCapabilities::default();
    lc.set_bounding(Some(set.clone()))
        .set_effective(Some(set.clone()))
        .set_permitted(Some(set))
        .set_inheritable(None)
        .set_ambient(None);
    lc
}

/// What an unprivileged process is kept from: the masked and read-only paths (the defaults
/// where none are asked for) and `seccomp` (None: unconfined).
pub(super) fn confine(
    spec: &mut Spec,
    masked: &[String],
    readonly: &[String],
    seccomp: Option<LinuxSeccomp>,
) {
    let paths = |asked: &[String], default: &[&str]| {
        if asked.is_empty() {
            default.iter().map(|p| p.to_string()).collect()
        } else {
            asked.to_vec()
        }
    };
    linux(spec)
        .set_masked_paths(Some(paths(masked, MASKED_PATHS)))
        .set_readonly_paths(Some(paths(readonly, READONLY_PATHS)))
        .set_seccomp(seccomp);
}

/// The seccomp profile the security context asks for, for a process holding `caps`.
pub(super) fn seccomp(
    sc: &cri::LinuxContainerSecurityContext,
    caps: &[String],
) -> Result<Option<LinuxSeccomp>, SpecError> {
    const FIELD: &str = "config.linux.security_context.seccomp";
    let cap_refs: Vec<&str> = caps.iter().map(String::as_str).collect();
    #[allow(deprecated)]
    let path = &sc.seccomp_profile_path;
    super::seccomp::Seccomp::requested(sc.seccomp.as_ref(), path, FIELD)?.profile(&cap_refs, FIELD)
}

/// The AppArmor profile the security context asks for, if this host can honour it.
pub(super) fn apparmor(
    sc: &cri::LinuxContainerSecurityContext,
) -> Result<Option<String>, SpecError> {
    #[allow(deprecated)]
    let deprecated = &sc.apparmor_profile;
    super::apparmor::profile(
        sc.apparmor.as_ref(),
        deprecated,
        sc.privileged,
        super::apparmor::Host::current(),
    )
}

/// Only what the handler's admin allows of the pod's and the container's annotations, then
/// the CRI ones.
pub fn with_annotations(spec: &mut Spec, inp: &Inputs) -> Result<(), SpecError> {
    let (c, ctx) = (inp.config, inp.ctx);
    let mut annotations =
        super::annotations::allowed(ctx.passthrough.pod, &ctx.sandbox.annotations);
    annotations.extend(super::annotations::allowed(
        ctx.passthrough.container,
        &c.annotations,
    ));
    annotations.insert(
        "io.kubernetes.cri.container-type".into(),
        "container".into(),
    );
    annotations.insert("io.kubernetes.cri.sandbox-id".into(), ctx.sandbox_id.into());
    annotations.insert("io.kubernetes.cri.image-name".into(), ctx.image_name.into());
    if let Some(m) = &c.metadata {
        annotations.insert("io.kubernetes.cri.container-name".into(), m.name.clone());
    }
    super::annotations::insert_pod_identity(&mut annotations, ctx.sandbox.metadata.as_ref());
    spec.set_annotations(Some(annotations.into_iter().collect()));
    Ok(())
}
