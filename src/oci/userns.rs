//! Pod user namespaces (`hostUsers: false`: CRI `NamespaceOption.userns_options`).
//!
//! A pod in mode POD gets a user namespace of its own with the kubelet's uid and gid mappings.
//! runc 1.1 joins a user namespace before the others, so the pod's network namespace must be
//! owned by it: concord makes both at once (`network::netns::create_in_userns`, the user
//! namespace pinned in the pod's directory), the pause container joins both by path, and every
//! container joins the pause's (user, net, ipc, uts, pid). Because the pod's user namespace
//! owns its netns, runc may write its net.* sysctls (ping_group_range is capped to the mapped
//! gids).
//!
//! runc 1.1 has no idmapped mounts, so a root file system must be owned by the mapped ids:
//! [`shift_tree`] changes the owner of every entry of a freshly prepared (writable) snapshot by
//! the mapping, once (a marker in concord's own files says it is done). On overlayfs every
//! changed entry is copied up whole (its data too, metacopy being off, and hard links split):
//! the busybox test image (3 MB, its ~400 applets hard links to one 1 MB binary) costs about
//! 1 s and 200 MB of upper dir per container, the pause image little.
//!
//! `/sys` is a read-only recursive bind of the host's, as containerd and CRI-O do for pods in
//! a user namespace.
//!
//! Mode NODE (or no options at all: what kubelets without user namespaces send) keeps the
//! host's user namespace; CONTAINER and TARGET are not user namespace modes.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::cri;

use super::SpecError;

/// One id range of a pod's user namespace: container ids `0..len` are host ids
/// `host..host+len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub host: u32,
    pub len: u32,
}

impl IdRange {
    /// The range as a `/proc/<pid>/uid_map` (or gid_map) line.
    pub fn map_line(&self) -> String {
        format!("0 {} {}\n", self.host, self.len)
    }

    /// The host id of container id `id`; ids outside the range are left as they are (the
    /// kernel shows them as the overflow id inside).
    pub fn host_id(&self, id: u32) -> u32 {
        if id < self.len {
            self.host + id
        } else {
            id
        }
    }
}

/// A pod's user namespace: its uid and gid ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserNs {
    pub uids: IdRange,
    pub gids: IdRange,
}

/// The user namespace `opts` asks for: None for mode NODE or no options; `field` names the
/// request's `userns_options` in errors.
pub fn from_options(
    opts: Option<&cri::NamespaceOption>,
    field: &'static str,
) -> Result<Option<UserNs>, SpecError> {
    let Some(u) = opts.and_then(|o| o.userns_options.as_ref()) else {
        return Ok(None);
    };
    match cri::NamespaceMode::try_from(u.mode) {
        Ok(cri::NamespaceMode::Node) => {
            if !u.uids.is_empty() || !u.gids.is_empty() {
                return Err(SpecError::new(
                    field,
                    "mode NODE takes no uid or gid mappings",
                ));
            }
            Ok(None)
        }
        Ok(cri::NamespaceMode::Pod) => Ok(Some(UserNs {
            uids: range(&u.uids, field, "uids")?,
            gids: range(&u.gids, field, "gids")?,
        })),
        Ok(other) => Err(SpecError::new(
            field,
            format!(
                "mode {} is not a user namespace mode (POD or NODE)",
                other.as_str_name()
            ),
        )),
        Err(_) => Err(SpecError::new(field, format!("unknown mode {}", u.mode))),
    }
}

/// The field a pod's user namespace options are in.
pub const POD_FIELD: &str = "config.linux.security_context.namespace_options.userns_options";

/// Pod `config`'s namespace options.
fn pod_options(config: &cri::PodSandboxConfig) -> Option<&cri::NamespaceOption> {
    config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|sc| sc.namespace_options.as_ref())
}

/// The user namespace pod `config` asks for (None: the host's).
pub fn of_pod(config: &cri::PodSandboxConfig) -> Result<Option<UserNs>, SpecError> {
    from_options(pod_options(config), POD_FIELD)
}

/// What RunPodSandbox refuses of a pod's user namespace: bad options, and a user namespace
/// with the host's network, pid or ipc namespace (its root could not own them; Status says
/// `user_namespaces_host_network: false`).
pub fn check_pod(config: &cri::PodSandboxConfig) -> Result<(), SpecError> {
    if of_pod(config)?.is_none() {
        return Ok(());
    }
    let opts = pod_options(config).cloned().unwrap_or_default();
    let node = cri::NamespaceMode::Node as i32;
    for (what, mode) in [
        ("network", opts.network),
        ("pid", opts.pid),
        ("ipc", opts.ipc),
    ] {
        if mode == node {
            return Err(SpecError::new(
                POD_FIELD,
                format!("a pod user namespace cannot go with the host's {what} namespace"),
            ));
        }
    }
    Ok(())
}

/// The field a container's user namespace options are in (the same path as a pod's).
pub const CONTAINER_FIELD: &str = POD_FIELD;

/// What CreateContainer refuses: options other than its pod's (none is its pod's too).
pub fn check_container(
    pod: &cri::PodSandboxConfig,
    opts: Option<&cri::NamespaceOption>,
) -> Result<(), SpecError> {
    let pod_ns = of_pod(pod)?;
    let own = from_options(opts, CONTAINER_FIELD)?;
    let given = opts.is_some_and(|o| o.userns_options.is_some());
    if given && own != pod_ns {
        return Err(SpecError::new(
            CONTAINER_FIELD,
            format!("{own:?} is not the pod's user namespace {pod_ns:?}"),
        ));
    }
    Ok(())
}

/// The one mapping of `what` (uids or gids): container id 0, a length, no overflow.
fn range(maps: &[cri::IdMapping], field: &'static str, what: &str) -> Result<IdRange, SpecError> {
    let [m] = maps else {
        return Err(SpecError::new(
            field,
            format!(
                "mode POD needs exactly one {what} mapping, not {}",
                maps.len()
            ),
        ));
    };
    if m.container_id != 0 {
        return Err(SpecError::new(
            field,
            format!(
                "the {what} mapping must start at container id 0, not {}",
                m.container_id
            ),
        ));
    }
    if m.length == 0 {
        return Err(SpecError::new(
            field,
            format!("the {what} mapping is empty"),
        ));
    }
    if m.host_id == 0 {
        return Err(SpecError::new(
            field,
            format!("the {what} mapping must not map to host id 0"),
        ));
    }
    if m.host_id.checked_add(m.length).is_none() {
        return Err(SpecError::new(
            field,
            format!(
                "the {what} mapping {}+{} overflows 32 bits",
                m.host_id, m.length
            ),
        ));
    }
    Ok(IdRange {
        host: m.host_id,
        len: m.length,
    })
}

impl UserNs {
    /// The spec's `linux.uidMappings` and `linux.gidMappings`.
    pub fn mappings(
        &self,
    ) -> (
        oci_spec::runtime::LinuxIdMapping,
        oci_spec::runtime::LinuxIdMapping,
    ) {
        let map = |r: IdRange| {
            oci_spec::runtime::LinuxIdMappingBuilder::default()
                .container_id(0u32)
                .host_id(r.host)
                .size(r.len)
                .build()
                .expect("every field is set")
        };
        (map(self.uids), map(self.gids))
    }
}

/// `/sys` for a container in a user namespace: the host's, bound read-only.
pub fn sys_bind() -> oci_spec::runtime::Mount {
    let mut m = oci_spec::runtime::Mount::default();
    m.set_destination("/sys".into())
        .set_typ(Some("bind".into()))
        .set_source(Some("/sys".into()))
        .set_options(Some(
            ["rbind", "nosuid", "noexec", "nodev", "ro"]
                .iter()
                .map(|o| o.to_string())
                .collect(),
        ));
    m
}

/// At most this many entries are shifted in one root file system.
pub const SHIFT_CAP: u64 = 1_000_000;

/// Why a root file system could not be shifted.
#[derive(Debug, thiserror::Error)]
pub enum ShiftError {
    /// The snapshot is not one writable bind or overlay mount.
    #[error("cannot mount the root file system to change its owners: {0}")]
    Unsupported(String),
    /// The tree has more entries than [`SHIFT_CAP`].
    #[error("more than {0} entries to change the owner of")]
    TooMany(u64),
    /// A file system call failed.
    #[error("{step} {}: {source}", path.display())]
    Io {
        step: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Changes the owner of every entry under `root` (itself included) by `ns`: uid → host + uid,
/// gid alike; symbolic links themselves, never their targets; never into another file system
/// mounted below. Answers how many entries it changed. Not idempotent: the caller marks it done.
pub fn shift_tree(root: &Path, ns: &UserNs, cap: u64) -> Result<u64, ShiftError> {
    let io = |step, path: &Path| {
        let path = path.to_owned();
        move |source| ShiftError::Io { step, path, source }
    };
    let dev = std::fs::symlink_metadata(root)
        .map_err(io("reading", root))?
        .dev();
    let mut stack = vec![root.to_owned()];
    let mut done = 0u64;
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).map_err(io("reading", &path))?;
        if meta.dev() != dev {
            continue;
        }
        done += 1;
        if done > cap {
            return Err(ShiftError::TooMany(cap));
        }
        let (uid, gid) = (ns.uids.host_id(meta.uid()), ns.gids.host_id(meta.gid()));
        // chown clears set-id bits: put the mode back (links have none to restore).
        std::os::unix::fs::lchown(&path, Some(uid), Some(gid))
            .map_err(io("changing the owner of", &path))?;
        if !meta.is_symlink() && meta.mode() & 0o6000 != 0 {
            use std::os::unix::fs::PermissionsExt;
            let perms = std::fs::Permissions::from_mode(meta.mode() & 0o7777);
            std::fs::set_permissions(&path, perms).map_err(io("restoring the mode of", &path))?;
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).map_err(io("listing", &path))? {
                stack.push(entry.map_err(io("listing", &path))?.path());
            }
        }
    }
    Ok(done)
}

/// Shifts the owners in a writable snapshot (`mounts`, one bind or one overlay) by `ns`,
/// mounted for that at `target` (a private directory of concord's, unmounted and removed
/// after), unless `marker` says it was done; writes `marker` after. Answers how many entries
/// it changed (0: done before). A crash halfway is harmless when the ranges do not overlap the
/// ids they map (host id ≥ length, as kubelet picks them): shifted ids are left alone.
pub fn shift_snapshot(
    mounts: &[containerd_client::types::Mount],
    target: &Path,
    ns: &UserNs,
    marker: &Path,
) -> Result<u64, ShiftError> {
    use nix::mount::{MntFlags, MsFlags};
    if marker.exists() {
        return Ok(0);
    }
    let io = |step, path: &Path| {
        let path = path.to_owned();
        move |e: nix::Error| ShiftError::Io {
            step,
            path,
            source: e.into(),
        }
    };
    let [m] = mounts else {
        return Err(ShiftError::Unsupported(format!(
            "{} mounts, not one",
            mounts.len()
        )));
    };
    let (flags, data) = crate::image::volume::mount_options(&m.options);
    let (fstype, flags) = match m.r#type.as_str() {
        "bind" => (None, MsFlags::MS_BIND),
        "overlay" => (Some("overlay"), flags & !MsFlags::MS_REC),
        other => {
            return Err(ShiftError::Unsupported(format!(
                "a mount of type {other:?}"
            )))
        }
    };
    if flags.contains(MsFlags::MS_RDONLY) {
        return Err(ShiftError::Unsupported("a read-only snapshot".into()));
    }
    std::fs::create_dir_all(target).map_err(|source| ShiftError::Io {
        step: "creating",
        path: target.to_owned(),
        source,
    })?;
    let safe = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let data = (!data.is_empty()).then_some(data.as_str());
    nix::mount::mount(Some(m.source.as_str()), target, fstype, flags | safe, data)
        .map_err(io("mounting the root file system at", target))?;
    let shifted = shift_tree(target, ns, SHIFT_CAP);
    let unmounted = nix::mount::umount2(target, MntFlags::MNT_DETACH)
        .map_err(io("unmounting the root file system at", target));
    let _ = std::fs::remove_dir(target);
    let n = shifted?;
    unmounted?;
    let text = format!("{:?}\n", ns);
    crate::fsutil::write_atomic(marker, text.as_bytes()).map_err(|source| ShiftError::Io {
        step: "writing",
        path: marker.to_owned(),
        source,
    })?;
    Ok(n)
}

/// The step [`shift_rootfs`] failures are reported as.
pub const SHIFT_STEP: &str = "changing the root file system's owners";

/// [`shift_snapshot`] on a blocking thread for object `id` of pod `pod` when the pod has a
/// user namespace (else nothing: 0): its mount point under `scratch`, its marker in `files`
/// (the object's own directory of concord's), logged with its cost.
pub async fn shift_rootfs(
    id: &str,
    pod: &cri::PodSandboxConfig,
    mounts: &[containerd_client::types::Mount],
    scratch: &Path,
    files: &Path,
) -> Result<u64, String> {
    // Validated by RunPodSandbox.
    let Some(ns) = of_pod(pod).ok().flatten() else {
        return Ok(0);
    };
    let (mounts, target) = (mounts.to_vec(), scratch.join(format!("userns-{id}")));
    let marker = files.join("rootfs-shifted");
    let started = std::time::Instant::now();
    let n = tokio::task::spawn_blocking(move || shift_snapshot(&mounts, &target, &ns, &marker))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    if n > 0 {
        let ms = started.elapsed().as_millis() as u64;
        tracing::info!(
            id,
            entries = n,
            ms,
            "root file system owners shifted for the pod's user namespace"
        );
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(
        mode: cri::NamespaceMode,
        uids: &[(u32, u32, u32)],
        gids: &[(u32, u32, u32)],
    ) -> cri::NamespaceOption {
        let maps = |v: &[(u32, u32, u32)]| {
            v.iter()
                .map(|&(container_id, host_id, length)| cri::IdMapping {
                    host_id,
                    container_id,
                    length,
                })
                .collect()
        };
        cri::NamespaceOption {
            userns_options: Some(cri::UserNamespace {
                mode: mode as i32,
                uids: maps(uids),
                gids: maps(gids),
            }),
            ..Default::default()
        }
    }

    const F: &str = "config.linux.security_context.namespace_options.userns_options";

    #[test]
    fn pod_mode_takes_one_mapping_from_container_id_zero() {
        use cri::NamespaceMode::*;
        let ok = opts(Pod, &[(0, 200000, 65536)], &[(0, 300000, 65536)]);
        let ns = from_options(Some(&ok), F).unwrap().unwrap();
        assert_eq!(
            ns.uids,
            IdRange {
                host: 200000,
                len: 65536
            }
        );
        assert_eq!(ns.gids.host_id(5), 300005);
        assert_eq!(ns.gids.host_id(70000), 70000);
        assert_eq!(from_options(None, F), Ok(None));
        assert_eq!(from_options(Some(&opts(Node, &[], &[])), F), Ok(None));
        for bad in [
            opts(Pod, &[], &[(0, 1, 1)]),
            opts(Pod, &[(0, 1, 1), (1, 2, 1)], &[(0, 1, 1)]),
            opts(Pod, &[(1, 200000, 10)], &[(0, 1, 1)]),
            opts(Pod, &[(0, 200000, 0)], &[(0, 1, 1)]),
            opts(Pod, &[(0, 0, 10)], &[(0, 1, 1)]),
            opts(Pod, &[(0, u32::MAX - 5, 10)], &[(0, 1, 1)]),
            opts(Node, &[(0, 200000, 10)], &[]),
            opts(Container, &[], &[]),
            opts(Target, &[], &[]),
        ] {
            let e = from_options(Some(&bad), F).unwrap_err();
            assert_eq!(e.field, F, "{e}");
        }
    }

    #[test]
    fn a_tree_is_shifted_without_following_links() {
        let dir = std::env::temp_dir().join(format!("concord-shift-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("a/b")).unwrap();
        std::fs::write(dir.join("a/b/f"), "x").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.join("a/l")).unwrap();
        let ns = UserNs {
            uids: IdRange {
                host: 200000,
                len: 65536,
            },
            gids: IdRange {
                host: 300000,
                len: 65536,
            },
        };
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        assert_eq!(shift_tree(&dir, &ns, 100).unwrap(), 5);
        let m = std::fs::symlink_metadata(dir.join("a/b/f")).unwrap();
        assert_eq!((m.uid(), m.gid()), (200000, 300000));
        assert_eq!(
            std::fs::symlink_metadata(dir.join("a/l")).unwrap().uid(),
            200000
        );
        assert_eq!(std::fs::metadata("/etc/passwd").unwrap().uid(), 0);
        assert!(matches!(
            shift_tree(&dir, &ns, 2),
            Err(ShiftError::TooMany(2))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
