//! A container's OCI spec: the CRI ContainerConfig merged with the image config, joined to its
//! pod's namespaces and files.

use std::path::{Component, Path, PathBuf};

use k8s_cri::v1 as cri;
use serde_json::{json, Value};

use super::{clamp_oom_score_adj, DEFAULT_CAPABILITIES, MASKED_PATHS, READONLY_PATHS};
use crate::image::manifest::ImageConfig;

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

/// What the container's spec is built from besides its config and image.
#[derive(Debug, Clone)]
pub struct ContainerContext<'a> {
    pub id: &'a str,
    pub sandbox_id: &'a str,
    pub sandbox: &'a cri::PodSandboxConfig,
    /// The pause process (whose namespaces the container joins).
    pub sandbox_pid: u32,
    /// The sandbox's hostname/hosts/resolv.conf directory.
    pub sandbox_files: PathBuf,
    pub image_name: &'a str,
    /// The pid of the TARGET container (pid namespace TARGET).
    pub target_pid: Option<u32>,
    /// Where the image's declared volumes get their (empty) directories.
    pub volumes_dir: PathBuf,
    /// The pod and container annotations the runtime handler lets into the spec.
    pub passthrough: super::annotations::Passthrough<'a>,
}

/// A request field that cannot be honoured, with why.
#[derive(Debug, Clone, PartialEq)]
pub struct SpecError {
    pub field: &'static str,
    pub reason: String,
}

fn bad(field: &'static str, reason: impl Into<String>) -> SpecError {
    SpecError {
        field,
        reason: reason.into(),
    }
}

/// The process arguments by the CRI rules: `command` replaces the image's Entrypoint (and its
/// Cmd), `args` replaces the Cmd.
pub fn process_args(
    c: &cri::ContainerConfig,
    image: &ImageConfig,
) -> Result<Vec<String>, SpecError> {
    let ic = image.config.clone().unwrap_or_default();
    let mut args = if !c.command.is_empty() {
        c.command.clone()
    } else {
        ic.entrypoint.clone().unwrap_or_default()
    };
    if !c.args.is_empty() {
        args.extend(c.args.iter().cloned());
    } else if c.command.is_empty() {
        args.extend(ic.cmd.clone().unwrap_or_default());
    }
    if args.is_empty() {
        return Err(bad(
            "config.command",
            "no command: neither the config nor the image names one",
        ));
    }
    Ok(args)
}

/// Image env first, then the config's (a later key replaces an earlier one in place).
fn environment(c: &cri::ContainerConfig, image: &ImageConfig) -> Vec<String> {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |k: String, v: String| match env.iter_mut().find(|(ek, _)| *ek == k) {
        Some(e) => e.1 = v,
        None => env.push((k, v)),
    };
    let image_env = image
        .config
        .as_ref()
        .and_then(|c| c.env.clone())
        .unwrap_or_default();
    for e in image_env {
        let (k, v) = e.split_once('=').unwrap_or((&e, ""));
        set(k.to_string(), v.to_string());
    }
    for kv in &c.envs {
        set(kv.key.clone(), kv.value.clone());
    }
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// A container path: absolute, no `..`, no NUL.
pub fn check_container_path(field: &'static str, p: &str) -> Result<(), SpecError> {
    let path = Path::new(p);
    if !path.is_absolute()
        || path.components().any(|c| c == Component::ParentDir)
        || p.contains('\0')
    {
        return Err(bad(
            field,
            format!("{p:?} must be an absolute path without '..'"),
        ));
    }
    Ok(())
}

/// The largest uid or gid the kernel takes (2^32-1 is "no id").
const MAX_ID: i64 = u32::MAX as i64 - 1;

/// A uid or gid from `field`: 0 to 2^32-2.
pub fn check_id(field: &'static str, what: &str, id: i64) -> Result<i64, SpecError> {
    if (0..=MAX_ID).contains(&id) {
        Ok(id)
    } else {
        Err(bad(
            field,
            format!("{what} {id} is not a valid id (0 to {MAX_ID})"),
        ))
    }
}

/// A device node's type (`c` or `b`), major and minor numbers.
fn device_numbers(host_path: &str) -> Result<(&'static str, u64, u64), String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let m = std::fs::metadata(host_path).map_err(|e| format!("{host_path}: {e}"))?;
    let kind = if m.file_type().is_char_device() {
        "c"
    } else if m.file_type().is_block_device() {
        "b"
    } else {
        return Err(format!("{host_path} is not a device"));
    };
    let rdev = m.rdev();
    Ok((
        kind,
        nix::sys::stat::major(rdev),
        nix::sys::stat::minor(rdev),
    ))
}

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
fn capabilities(sc: &cri::LinuxContainerSecurityContext) -> Vec<String> {
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

/// The image's `/etc/passwd` and `/etc/group`, for user and group names.
#[derive(Debug, Clone, Default)]
pub struct UserDb {
    /// name → (uid, primary gid)
    pub users: Vec<(String, i64, i64)>,
    /// (name, gid, members)
    pub groups: Vec<(String, i64, Vec<String>)>,
}

impl UserDb {
    /// Parses the two files' contents (either may be empty).
    pub fn parse(passwd: &str, group: &str) -> UserDb {
        // An id the kernel cannot take makes its line malformed (skipped, as libc does).
        let id = |s: &str| s.parse::<i64>().ok().filter(|v| (0..=MAX_ID).contains(v));
        let users = passwd
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                Some((f.first()?.to_string(), id(f.get(2)?)?, id(f.get(3)?)?))
            })
            .collect();
        let groups = group
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                let members = f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .filter(|s| !s.is_empty())
                            .map(String::from)
                            .collect()
                    })
                    .unwrap_or_default();
                Some((f.first()?.to_string(), id(f.get(2)?)?, members))
            })
            .collect();
        UserDb { users, groups }
    }

    fn user(&self, name: &str) -> Option<(i64, i64)> {
        self.users.iter().find(|u| u.0 == name).map(|u| (u.1, u.2))
    }

    fn group(&self, name: &str) -> Option<i64> {
        self.groups.iter().find(|g| g.0 == name).map(|g| g.1)
    }

    /// The groups listing `user` as a member.
    fn groups_of(&self, user: &str) -> Vec<i64> {
        self.groups
            .iter()
            .filter(|g| g.2.iter().any(|m| m == user))
            .map(|g| g.1)
            .collect()
    }
}

/// The container's user: (uid, gid, the user's extra groups from the image's /etc/group). The
/// security context wins (run_as_user, run_as_username, run_as_group), else the image's `User`
/// (`uid`, `name`, `uid:gid`, `name:group`). Names need the image's files (`db`); without them
/// (the API's early check) a name is taken on trust and checked when the container is made.
/// Public for fuzz/.
pub fn user(
    sc: &cri::LinuxContainerSecurityContext,
    image: &ImageConfig,
    db: Option<&UserDb>,
) -> Result<(i64, i64, Vec<i64>), SpecError> {
    const FIELD: &str = "config.linux.security_context.run_as_username";
    if sc.run_as_group.is_some() && sc.run_as_user.is_none() && sc.run_as_username.is_empty() {
        return Err(bad(
            "config.linux.security_context.run_as_group",
            "user group is specified without user or username",
        ));
    }
    let lookup_user = |name: &str, field: &'static str| -> Result<(i64, i64), SpecError> {
        match db {
            None => Ok((0, 0)),
            Some(db) => db.user(name).ok_or_else(|| {
                bad(
                    field,
                    format!("user {name:?} is not in the image's /etc/passwd"),
                )
            }),
        }
    };
    let lookup_group = |name: &str| -> Result<i64, SpecError> {
        if let Ok(n) = name.parse() {
            return check_id("image", "the image's group", n);
        }
        match db {
            None => Ok(0),
            Some(db) => db.group(name).ok_or_else(|| {
                bad(
                    "image",
                    format!("group {name:?} is not in the image's /etc/group"),
                )
            }),
        }
    };
    let (uid, mut gid, name) = if let Some(u) = &sc.run_as_user {
        check_id("config.linux.security_context.run_as_user", "user", u.value)?;
        // Numeric user: its primary group is the image's for it, else 0.
        let primary = db
            .and_then(|db| db.users.iter().find(|x| x.1 == u.value))
            .map(|x| x.2)
            .unwrap_or(0);
        let name = db.and_then(|db| {
            db.users
                .iter()
                .find(|x| x.1 == u.value)
                .map(|x| x.0.clone())
        });
        (u.value, primary, name)
    } else if !sc.run_as_username.is_empty() {
        let (uid, gid) = lookup_user(&sc.run_as_username, FIELD)?;
        (uid, gid, Some(sc.run_as_username.clone()))
    } else {
        let image_user = image
            .config
            .as_ref()
            .and_then(|c| c.user.clone())
            .unwrap_or_default();
        let mut parts = image_user.splitn(2, ':');
        let u = parts.next().unwrap_or("");
        let g = parts.next();
        let (uid, primary, name) = if u.is_empty() {
            (0, 0, Some("root".to_string()))
        } else if let Ok(n) = u.parse::<i64>() {
            check_id("image", "the image's user", n)?;
            let known = db.and_then(|db| db.users.iter().find(|x| x.1 == n));
            (
                n,
                known.map(|x| x.2).unwrap_or(0),
                known.map(|x| x.0.clone()),
            )
        } else {
            let (uid, gid) = lookup_user(u, "image")?;
            (uid, gid, Some(u.to_string()))
        };
        let gid = match g {
            Some(g) => lookup_group(g)?,
            None => primary,
        };
        (uid, gid, name)
    };
    if let Some(g) = &sc.run_as_group {
        gid = check_id(
            "config.linux.security_context.run_as_group",
            "group",
            g.value,
        )?;
    }
    let extra = match (db, &name) {
        (Some(db), Some(n)) => db.groups_of(n),
        _ => Vec::new(),
    };
    Ok((uid, gid, extra))
}

/// The OCI `linux.resources` for CRI resources (unset values left out).
pub fn linux_resources(res: &cri::LinuxContainerResources) -> Value {
    let mut resources = json!({});
    let mut cpu = serde_json::Map::new();
    if res.cpu_shares > 0 {
        cpu.insert("shares".into(), json!(res.cpu_shares));
    }
    if res.cpu_quota > 0 {
        cpu.insert("quota".into(), json!(res.cpu_quota));
    }
    if res.cpu_period > 0 {
        cpu.insert("period".into(), json!(res.cpu_period));
    }
    if !res.cpuset_cpus.is_empty() {
        cpu.insert("cpus".into(), json!(res.cpuset_cpus));
    }
    if !res.cpuset_mems.is_empty() {
        cpu.insert("mems".into(), json!(res.cpuset_mems));
    }
    if !cpu.is_empty() {
        resources["cpu"] = Value::Object(cpu);
    }
    if res.memory_limit_in_bytes > 0 {
        resources["memory"] = json!({"limit": res.memory_limit_in_bytes});
    }
    // As containerd: the swap limit kubelet asks for (NodeSwap), else memory plus swap limited
    // to the memory limit (no swap) where the host accounts swap.
    if res.memory_swap_limit_in_bytes != 0 {
        resources["memory"]["swap"] = json!(res.memory_swap_limit_in_bytes);
    } else if res.memory_limit_in_bytes > 0 && swap_accounted() {
        resources["memory"]["swap"] = json!(res.memory_limit_in_bytes);
    }
    if !res.hugepage_limits.is_empty() {
        resources["hugepageLimits"] = res
            .hugepage_limits
            .iter()
            .map(|h| json!({"pageSize": h.page_size, "limit": h.limit}))
            .collect();
    }
    if !res.unified.is_empty() {
        resources["unified"] = json!(res.unified);
    }
    resources
}

/// Whether the host's memory cgroup accounts swap (v1 `memory.memsw.*`, v2 `memory.swap.max`
/// files exist), so a swap limit can be set.
pub fn swap_accounted() -> bool {
    static ACCOUNTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ACCOUNTED.get_or_init(|| {
        Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists()
            || std::fs::read_dir("/sys/fs/cgroup")
                .map(|d| {
                    d.flatten()
                        .any(|e| e.path().join("memory.swap.max").exists())
                })
                .unwrap_or(false)
    })
}

/// Refuses resource values no kernel would take, naming the field.
pub fn check_resources(
    field: &'static str,
    r: &cri::LinuxContainerResources,
) -> Result<(), SpecError> {
    let negative = [
        ("cpu_period", r.cpu_period),
        ("cpu_shares", r.cpu_shares),
        ("memory_limit_in_bytes", r.memory_limit_in_bytes),
        ("memory_swap_limit_in_bytes", r.memory_swap_limit_in_bytes),
    ];
    if let Some((name, v)) = negative.iter().find(|(_, v)| *v < 0) {
        return Err(bad(field, format!("{name} {v} is negative")));
    }
    if r.cpu_quota != 0 && r.cpu_quota != -1 && r.cpu_quota < 1000 {
        return Err(bad(
            field,
            format!("cpu_quota {} is below 1000 microseconds", r.cpu_quota),
        ));
    }
    if r.cpu_period != 0 && !(1000..=1_000_000).contains(&r.cpu_period) {
        return Err(bad(
            field,
            format!(
                "cpu_period {} is not 1000 to 1000000 microseconds",
                r.cpu_period
            ),
        ));
    }
    if !(-1000..=1000).contains(&r.oom_score_adj) {
        return Err(bad(
            field,
            format!("oom_score_adj {} is not -1000 to 1000", r.oom_score_adj),
        ));
    }
    Ok(())
}

/// The container's OCI spec.
pub fn container_spec(
    c: &cri::ContainerConfig,
    image: &ImageConfig,
    ctx: &ContainerContext,
    users: Option<&UserDb>,
) -> Result<Value, SpecError> {
    let linux = c.linux.clone().unwrap_or_default();
    let sc = linux.security_context.clone().unwrap_or_default();
    let pod_sc = ctx
        .sandbox
        .linux
        .as_ref()
        .and_then(|l| l.security_context.clone())
        .unwrap_or_default();
    let pod_ns = pod_sc.namespace_options.clone().unwrap_or_default();
    let ns = sc.namespace_options.clone().unwrap_or_default();
    let node = cri::NamespaceMode::Node as i32;
    let args = process_args(c, image)?;
    let (uid, gid, user_groups) = user(&sc, image, users)?;
    let caps = capabilities(&sc);
    let cwd = if !c.working_dir.is_empty() {
        c.working_dir.clone()
    } else {
        image
            .config
            .as_ref()
            .and_then(|c| c.working_dir.clone())
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".into())
    };
    let cwd_field = if c.working_dir.is_empty() {
        "image"
    } else {
        "config.working_dir"
    };
    check_container_path(cwd_field, &cwd)?;

    // Namespaces: the pod's (through the pause process), the host's, or the container's own.
    let proc_ns = |kind: &str| format!("/proc/{}/ns/{kind}", ctx.sandbox_pid);
    let mut namespaces = vec![json!({"type": "mount"})];
    if pod_ns.network != node {
        namespaces.push(json!({"type": "network", "path": proc_ns("net")}));
        namespaces.push(json!({"type": "uts", "path": proc_ns("uts")}));
    }
    if pod_ns.ipc != node {
        namespaces.push(json!({"type": "ipc", "path": proc_ns("ipc")}));
    }
    match cri::NamespaceMode::try_from(ns.pid).unwrap_or(cri::NamespaceMode::Pod) {
        cri::NamespaceMode::Node => {}
        cri::NamespaceMode::Container => namespaces.push(json!({"type": "pid"})),
        cri::NamespaceMode::Target => {
            let pid = ctx.target_pid.ok_or_else(|| {
                bad(
                    "config.linux.security_context.namespace_options.target_id",
                    format!("target container {:?} is not running", ns.target_id),
                )
            })?;
            namespaces.push(json!({"type": "pid", "path": format!("/proc/{pid}/ns/pid")}));
        }
        cri::NamespaceMode::Pod => {
            if pod_ns.pid != node {
                namespaces.push(json!({"type": "pid", "path": proc_ns("pid")}));
            }
        }
    }

    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", if sc.privileged { "rw" } else { "ro" }]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", if sc.privileged { "rw" } else { "ro" }]}),
    ];
    let user_paths: Vec<&str> = c.mounts.iter().map(|m| m.container_path.as_str()).collect();
    for (file, dest) in [
        ("hostname", "/etc/hostname"),
        ("hosts", "/etc/hosts"),
        ("resolv.conf", "/etc/resolv.conf"),
    ] {
        if !user_paths.contains(&dest) {
            let src = ctx.sandbox_files.join(file);
            let ro = if sc.readonly_rootfs { "ro" } else { "rw" };
            mounts.push(json!({"destination": dest, "type": "bind", "source": src, "options": ["rbind", "rprivate", ro]}));
        }
    }
    if !user_paths.contains(&"/dev/shm") {
        let src = if pod_ns.ipc == node {
            "/dev/shm".to_string()
        } else {
            super::files::shm_path(&ctx.sandbox_files)
                .display()
                .to_string()
        };
        mounts.push(json!({"destination": "/dev/shm", "type": "bind", "source": src, "options": ["rbind", "rprivate", "rw"]}));
    }
    let mut rootfs_propagation: Option<&str> = None;
    for (i, m) in c.mounts.iter().enumerate() {
        check_container_path("config.mounts.container_path", &m.container_path)?;
        if !Path::new(&m.host_path).is_absolute() {
            return Err(bad(
                "config.mounts.host_path",
                format!("mount {i}: {:?} must be an absolute path", m.host_path),
            ));
        }
        // Propagation needs the host path's mount to propagate (shared, or a slave for
        // HostToContainer) and the container's root to keep the peer group: rshared for a
        // Bidirectional mount, rslave at least for HostToContainer (runc's default is rprivate).
        let propagation = match cri::MountPropagation::try_from(m.propagation) {
            Ok(cri::MountPropagation::PropagationPrivate) => "rprivate",
            Ok(cri::MountPropagation::PropagationHostToContainer) => {
                super::mountinfo::ensure_propagates(&m.host_path, false)
                    .map_err(|e| bad("config.mounts.propagation", format!("mount {i}: {e}")))?;
                rootfs_propagation.get_or_insert("rslave");
                "rslave"
            }
            Ok(cri::MountPropagation::PropagationBidirectional) => {
                super::mountinfo::ensure_propagates(&m.host_path, true)
                    .map_err(|e| bad("config.mounts.propagation", format!("mount {i}: {e}")))?;
                rootfs_propagation = Some("rshared");
                "rshared"
            }
            Err(_) => {
                return Err(bad(
                    "config.mounts.propagation",
                    format!("mount {i}: unknown propagation {}", m.propagation),
                ))
            }
        };
        mounts.push(
            json!({"destination": m.container_path, "type": "bind", "source": m.host_path,
            "options": ["rbind", propagation, if m.readonly { "ro" } else { "rw" }]}),
        );
    }

    // The image's declared volumes that no mount covers: an empty directory of the container's.
    let declared = image
        .config
        .as_ref()
        .and_then(|c| c.volumes.clone())
        .unwrap_or_default();
    for path in declared.keys() {
        if user_paths.contains(&path.as_str()) || check_container_path("image", path).is_err() {
            continue;
        }
        let source = ctx
            .volumes_dir
            .join(path.trim_matches('/').replace('/', "_"));
        mounts.push(
            json!({"destination": path, "type": "bind", "source": source,
            "options": ["rbind", "rprivate", "rw"]}),
        );
    }

    let res = linux.resources.clone().unwrap_or_default();
    check_resources("config.linux.resources", &res)?;
    let mut resources = linux_resources(&res);
    let mut device_rules = vec![json!({"allow": sc.privileged, "access": "rwm"})];
    let mut devices = Vec::new();
    for (i, dev) in c.devices.iter().enumerate() {
        check_container_path("config.devices.container_path", &dev.container_path)?;
        let (kind, major, minor) = device_numbers(&dev.host_path)
            .map_err(|e| bad("config.devices.host_path", format!("device {i}: {e}")))?;
        let access = if dev.permissions.is_empty() {
            "rwm".to_string()
        } else if dev.permissions.chars().all(|c| "rwm".contains(c)) {
            dev.permissions.clone()
        } else {
            return Err(bad(
                "config.devices.permissions",
                format!(
                    "device {i}: {:?} is not made of r, w and m",
                    dev.permissions
                ),
            ));
        };
        devices.push(
            json!({"path": dev.container_path, "type": kind, "major": major,
            "minor": minor, "fileMode": 0o666, "uid": 0, "gid": 0}),
        );
        device_rules.push(
            json!({"allow": true, "type": kind, "major": major, "minor": minor,
            "access": access}),
        );
    }
    resources["devices"] = json!(device_rules);

    let parent = ctx
        .sandbox
        .linux
        .as_ref()
        .map(|l| l.cgroup_parent.as_str())
        .unwrap_or("");
    let mut linux_spec = json!({
        "namespaces": namespaces,
        "cgroupsPath": crate::cgroup::path(parent, ctx.id),
        "resources": resources,
        "devices": devices,
    });
    if let Some(p) = rootfs_propagation {
        linux_spec["rootfsPropagation"] = json!(p);
    }
    if !sc.privileged {
        linux_spec["maskedPaths"] = if sc.masked_paths.is_empty() {
            json!(MASKED_PATHS)
        } else {
            json!(sc.masked_paths)
        };
        linux_spec["readonlyPaths"] = if sc.readonly_paths.is_empty() {
            json!(READONLY_PATHS)
        } else {
            json!(sc.readonly_paths)
        };
        let cap_refs: Vec<&str> = caps.iter().map(String::as_str).collect();
        #[allow(deprecated)]
        let path = sc.seccomp_profile_path.clone();
        let seccomp = super::seccomp::Seccomp::requested(
            sc.seccomp.as_ref(),
            &path,
            "config.linux.security_context.seccomp",
        )
        .and_then(|s| s.profile(&cap_refs))
        .map_err(|e| bad("config.linux.security_context.seccomp", e))?;
        if let Some(p) = seccomp {
            linux_spec["seccomp"] = p;
        }
    }

    #[allow(deprecated)]
    let apparmor = super::apparmor::profile(
        sc.apparmor.as_ref(),
        &sc.apparmor_profile,
        sc.privileged,
        super::apparmor::Host::current(),
    )
    .map_err(|e| bad("config.linux.security_context.apparmor", e))?;

    // Only what the handler's admin allows of the pod's and the container's annotations, then
    // the CRI ones.
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
    if let Some(m) = &ctx.sandbox.metadata {
        annotations.insert("io.kubernetes.cri.sandbox-name".into(), m.name.clone());
        annotations.insert(
            "io.kubernetes.cri.sandbox-namespace".into(),
            m.namespace.clone(),
        );
        annotations.insert("io.kubernetes.cri.sandbox-uid".into(), m.uid.clone());
    }
    for g in &sc.supplemental_groups {
        check_id(
            "config.linux.security_context.supplemental_groups",
            "group",
            *g,
        )?;
    }
    for g in &pod_sc.supplemental_groups {
        check_id(
            "sandbox_config.linux.security_context.supplemental_groups",
            "group",
            *g,
        )?;
    }
    let mut groups: Vec<i64> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for g in user_groups
        .iter()
        .chain(&sc.supplemental_groups)
        .chain(&pod_sc.supplemental_groups)
    {
        if seen.insert(*g) {
            groups.push(*g);
        }
    }
    // NGROUPS_MAX: the kernel takes no more.
    if groups.len() > 65536 {
        return Err(bad(
            "config.linux.security_context.supplemental_groups",
            format!("{} groups (at most 65536)", groups.len()),
        ));
    }
    let oom = clamp_oom_score_adj(res.oom_score_adj as i32);
    let mut spec = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": c.tty,
            "user": {"uid": uid, "gid": gid, "additionalGids": groups},
            "args": args,
            "env": environment(c, image),
            "cwd": cwd,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "noNewPrivileges": sc.no_new_privs,
            "oomScoreAdj": oom,
        },
        "root": {"path": "rootfs", "readonly": sc.readonly_rootfs},
        "mounts": mounts,
        "annotations": annotations,
        "linux": linux_spec,
    });
    if let Some(profile) = apparmor {
        spec["process"]["apparmorProfile"] = json!(profile);
    }
    if pod_ns.network != node && !ctx.sandbox.hostname.is_empty() {
        spec["hostname"] = json!(ctx.sandbox.hostname);
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Container c1 of pod sb (pause pid 42) from image `image`.
    fn test_ctx<'a>(sandbox: &'a cri::PodSandboxConfig, image: &'a str) -> ContainerContext<'a> {
        ContainerContext {
            id: "c1",
            sandbox_id: "sb",
            sandbox,
            sandbox_pid: 42,
            sandbox_files: "/state/sb".into(),
            image_name: image,
            target_pid: None,
            volumes_dir: "/state/c1/volumes".into(),
            passthrough: Default::default(),
        }
    }

    fn image(entrypoint: &[&str], cmd: &[&str]) -> ImageConfig {
        serde_json::from_value(json!({
            "config": {"Entrypoint": entrypoint, "Cmd": cmd, "Env": ["PATH=/bin", "A=image"], "User": "1000:2000"},
            "rootfs": {"type": "layers", "diff_ids": []}
        }))
        .unwrap()
    }

    fn config(command: &[&str], args: &[&str]) -> cri::ContainerConfig {
        cri::ContainerConfig {
            command: command.iter().map(|s| s.to_string()).collect(),
            args: args.iter().map(|s| s.to_string()).collect(),
            envs: vec![cri::KeyValue {
                key: "A".into(),
                value: "config".into(),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn command_and_args_follow_the_cri_rules() {
        let img = image(&["/ep"], &["cmd1"]);
        assert_eq!(
            process_args(&config(&[], &[]), &img).unwrap(),
            ["/ep", "cmd1"]
        );
        assert_eq!(
            process_args(&config(&[], &["a"]), &img).unwrap(),
            ["/ep", "a"]
        );
        assert_eq!(process_args(&config(&["/c"], &[]), &img).unwrap(), ["/c"]);
        assert_eq!(
            process_args(&config(&["/c"], &["a"]), &img).unwrap(),
            ["/c", "a"]
        );
        assert!(process_args(&config(&[], &[]), &image(&[], &[])).is_err());
    }

    #[test]
    fn spec_joins_the_pod_and_merges_env_and_user() {
        let sandbox = cri::PodSandboxConfig {
            hostname: "web".into(),
            ..Default::default()
        };
        let ctx = test_ctx(&sandbox, "busybox");
        let v = container_spec(&config(&[], &[]), &image(&["/ep"], &[]), &ctx, None).unwrap();
        assert_eq!(v["process"]["env"], json!(["PATH=/bin", "A=config"]));
        assert_eq!(v["process"]["user"]["uid"], 1000);
        assert_eq!(v["process"]["user"]["gid"], 2000);
        let nss = v["linux"]["namespaces"].as_array().unwrap();
        assert!(nss.contains(&json!({"type": "network", "path": "/proc/42/ns/net"})));
        assert!(nss.contains(&json!({"type": "pid", "path": "/proc/42/ns/pid"})));
        let dests: Vec<&str> = v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["destination"].as_str().unwrap())
            .collect();
        for d in [
            "/etc/hosts",
            "/etc/resolv.conf",
            "/etc/hostname",
            "/dev/shm",
        ] {
            assert!(dests.contains(&d), "{d}");
        }
        assert_eq!(v["hostname"], "web");

        let mut bad_mount = config(&[], &[]);
        bad_mount.mounts = vec![cri::Mount {
            container_path: "../etc".into(),
            host_path: "/tmp".into(),
            ..Default::default()
        }];
        let err = container_spec(&bad_mount, &image(&["/ep"], &[]), &ctx, None).unwrap_err();
        assert_eq!(err.field, "config.mounts.container_path");
    }

    /// Found by fuzz/ (userdb, container_spec): ids the kernel cannot take and working dirs
    /// that are not absolute paths were put into the spec, for runc to fail on.
    #[test]
    fn ids_out_of_range_and_relative_working_dirs_are_refused_with_their_field() {
        let sandbox = cri::PodSandboxConfig::default();
        let ctx = test_ctx(&sandbox, "img");
        let img = |user: &str, wd: &str| -> ImageConfig {
            serde_json::from_value(json!({
                "config": {"Cmd": ["/x"], "User": user, "WorkingDir": wd},
                "rootfs": {"type": "layers", "diff_ids": []}
            }))
            .unwrap()
        };
        let field = |c: &cri::ContainerConfig, i: &ImageConfig| {
            container_spec(c, i, &ctx, None)
                .map(|_| ())
                .unwrap_err()
                .field
        };
        let plain = config(&[], &[]);
        assert_eq!(field(&plain, &img("99999999999999", "/")), "image");
        assert_eq!(field(&plain, &img("-1", "/")), "image");
        assert_eq!(field(&plain, &img("0:4294967295", "/")), "image");
        assert_eq!(field(&plain, &img("", "app")), "image");
        let with_sc = |sc: cri::LinuxContainerSecurityContext| cri::ContainerConfig {
            linux: Some(cri::LinuxContainerConfig {
                security_context: Some(sc),
                ..Default::default()
            }),
            ..config(&[], &[])
        };
        let negative = Some(cri::Int64Value { value: -5 });
        assert_eq!(
            field(
                &with_sc(cri::LinuxContainerSecurityContext {
                    run_as_user: negative,
                    ..Default::default()
                }),
                &img("", "/")
            ),
            "config.linux.security_context.run_as_user"
        );
        assert_eq!(
            field(
                &with_sc(cri::LinuxContainerSecurityContext {
                    run_as_user: Some(cri::Int64Value { value: 1 }),
                    run_as_group: negative,
                    ..Default::default()
                }),
                &img("", "/")
            ),
            "config.linux.security_context.run_as_group"
        );
        assert_eq!(
            field(
                &with_sc(cri::LinuxContainerSecurityContext {
                    supplemental_groups: vec![1, 1 << 40],
                    ..Default::default()
                }),
                &img("", "/")
            ),
            "config.linux.security_context.supplemental_groups"
        );
        let mut nul = config(&[], &[]);
        nul.working_dir = "/\0\u{12}ork".into();
        assert_eq!(field(&nul, &img("", "/")), "config.working_dir");
        // A passwd line with an id out of range is malformed: its user is not found.
        let db = UserDb::parse("big:x:4294967296:0::/:/bin/sh\nok:x:7:7::/:/bin/sh\n", "");
        assert_eq!(db.users, vec![("ok".to_string(), 7, 7)]);
    }

    #[test]
    fn the_images_volumes_get_directories_of_the_containers_own() {
        let sandbox = cri::PodSandboxConfig::default();
        let ctx = test_ctx(&sandbox, "img");
        let img: ImageConfig = serde_json::from_value(json!({
            "config": {"Cmd": ["/x"], "Volumes": {"/var/cache/app": {}, "/data": {}}},
            "rootfs": {"type": "layers", "diff_ids": []}
        }))
        .unwrap();
        let mut c = config(&[], &[]);
        c.mounts = vec![cri::Mount {
            container_path: "/data".into(),
            host_path: "/srv/data".into(),
            ..Default::default()
        }];
        let v = container_spec(&c, &img, &ctx, None).unwrap();
        let mounts = v["mounts"].as_array().unwrap();
        let find = |d: &str| {
            mounts
                .iter()
                .filter(|m| m["destination"] == d)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            find("/var/cache/app")[0]["source"],
            "/state/c1/volumes/var_cache_app"
        );
        let data = find("/data");
        assert_eq!(data.len(), 1, "a CRI mount covers the declared volume");
        assert_eq!(data[0]["source"], "/srv/data");
    }

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
}
