//! An image volume on the host (CRI `Mount.image`, KEP-4639): a read-only snapshot view of an
//! image mounted at a mount point of concord's, and a sub path of it found without leaving it.
//! The container's spec binds the directory [`resolve_sub_path`] answers; [`unmount`] takes the
//! mount point away again (idempotent: a missing or unmounted one is fine).

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use containerd_client::types::Mount;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::mount::{MntFlags, MsFlags};

/// Why an image volume could not be mounted, resolved or unmounted.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// The snapshot's mounts are not one bind or overlay mount.
    #[error("cannot mount the image's snapshot view: {0}")]
    Unsupported(String),
    /// `image_sub_path` names nothing in the image.
    #[error("image_sub_path {sub_path:?} does not exist in the image")]
    Missing { sub_path: String },
    /// `image_sub_path` names something that is not a directory.
    #[error("image_sub_path {sub_path:?} is not a directory in the image")]
    NotDirectory { sub_path: String },
    /// `image_sub_path` leads out of the image (a `..` or a symlink pointing outside it).
    #[error("image_sub_path {sub_path:?} leads outside the image (a symbolic link or '..')")]
    Escapes { sub_path: String },
    /// A mount, unmount or file system call failed.
    #[error("{step} {}: {source}", path.display())]
    Io {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io<'a>(step: &'static str, path: &'a Path) -> impl FnOnce(nix::Error) -> VolumeError + 'a {
    move |e| VolumeError::Io {
        step,
        path: path.to_owned(),
        source: e.into(),
    }
}

/// Whether `target` is itself a mount point (per `/proc/self/mountinfo`: a bind mount of a
/// directory on the same file system has the same device number, so `stat` cannot tell).
pub fn is_mounted(target: &Path) -> Result<bool, VolumeError> {
    let text =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(|source| VolumeError::Io {
            step: "reading the mount table for",
            path: target.to_owned(),
            source,
        })?;
    let mounts = crate::mountinfo::parse(&text);
    Ok(mounts.iter().any(|m| m.mount_point == target))
}

/// Mounts a snapshot view's `mounts` (one bind or one overlay of lower dirs only) read-only,
/// nosuid and nodev at `target`, made if missing; already mounted is fine.
pub fn mount(mounts: &[Mount], target: &Path) -> Result<(), VolumeError> {
    let [m] = mounts else {
        return Err(VolumeError::Unsupported(format!(
            "{} mounts, not one",
            mounts.len()
        )));
    };
    std::fs::create_dir_all(target).map_err(|source| VolumeError::Io {
        step: "creating the mount point",
        path: target.to_owned(),
        source,
    })?;
    if is_mounted(target)? {
        return Ok(());
    }
    let (flags, data) = mount_options(&m.options);
    let safe = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    match m.r#type.as_str() {
        "bind" => {
            let bind = MsFlags::MS_BIND | (flags & MsFlags::MS_REC);
            nix::mount::mount(
                Some(m.source.as_str()),
                target,
                None::<&str>,
                bind,
                None::<&str>,
            )
            .map_err(io("bind-mounting the image at", target))?;
            // A bind mount takes read-only only from a remount.
            let remount = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | safe;
            if let Err(e) =
                nix::mount::mount(None::<&str>, target, None::<&str>, remount, None::<&str>)
            {
                let _ = nix::mount::umount2(target, MntFlags::MNT_DETACH);
                return Err(io("making the image read-only at", target)(e));
            }
            Ok(())
        }
        "overlay" => nix::mount::mount(
            Some(m.source.as_str()),
            target,
            Some("overlay"),
            safe | (flags & !MsFlags::MS_REC),
            Some(data.as_str()),
        )
        .map_err(io("mounting the image's layers at", target)),
        other => Err(VolumeError::Unsupported(format!(
            "a mount of type {other:?}"
        ))),
    }
}

/// A containerd mount's options as mount flags and the file system's data string.
pub(crate) fn mount_options(options: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        match o.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" | "bind" => {}
            "rbind" => flags |= MsFlags::MS_REC,
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            other => data.push(other),
        }
    }
    (flags, data.join(","))
}

/// Unmounts whatever is mounted at `target` (every layer of it, lazily: a container that is
/// going away may still hold it) and removes the then empty mount point; a missing one is fine.
/// Never removes anything but an empty directory.
pub fn unmount(target: &Path) -> Result<(), VolumeError> {
    loop {
        match nix::mount::umount2(target, MntFlags::MNT_DETACH) {
            Ok(()) => continue,
            Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => break,
            Err(e) => return Err(io("unmounting the image volume at", target)(e)),
        }
    }
    match std::fs::remove_dir(target) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(VolumeError::Io {
            step: "removing the mount point",
            path: target.to_owned(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// The directory `sub_path` names inside `root` (empty: `root` itself), resolved by the kernel
/// beneath `root` (openat2 `RESOLVE_BENEATH`): a `..` or a symlink, absolute or relative, that
/// would leave `root` fails with [`VolumeError::Escapes`] instead of being followed.
pub fn resolve_sub_path(root: &Path, sub_path: &str) -> Result<PathBuf, VolumeError> {
    if sub_path.is_empty() {
        return Ok(root.to_owned());
    }
    let dir = OpenHow::new().flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC);
    let root_fd = nix::fcntl::open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(io("opening the image volume", root))?;
    let how = dir.resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let owned = || sub_path.to_string();
    let fd = match nix::fcntl::openat2(root_fd.as_fd(), sub_path, how) {
        Ok(fd) => fd,
        Err(nix::Error::ENOENT) => return Err(VolumeError::Missing { sub_path: owned() }),
        Err(nix::Error::ENOTDIR) => return Err(VolumeError::NotDirectory { sub_path: owned() }),
        Err(nix::Error::EXDEV) | Err(nix::Error::ELOOP) => {
            return Err(VolumeError::Escapes { sub_path: owned() })
        }
        Err(e) => return Err(io("resolving image_sub_path in", root)(e)),
    };
    let link = PathBuf::from(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&fd)
    ));
    let found = std::fs::read_link(&link).map_err(|source| VolumeError::Io {
        step: "reading where image_sub_path led in",
        path: root.to_owned(),
        source,
    })?;
    if !found.starts_with(root) {
        return Err(VolumeError::Escapes { sub_path: owned() });
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An image-like tree: bin/ with a file, a file at the top, links in and out of it.
    fn tree() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::create_dir_all(r.join("bin/sub")).unwrap();
        std::fs::write(r.join("bin/sh"), "").unwrap();
        std::fs::write(r.join("file"), "").unwrap();
        std::os::unix::fs::symlink("bin", r.join("inside")).unwrap();
        std::os::unix::fs::symlink("../../../../../../etc", r.join("up")).unwrap();
        std::os::unix::fs::symlink("/etc", r.join("absolute")).unwrap();
        t
    }

    #[test]
    fn a_sub_path_resolves_to_its_directory_inside_the_root() {
        let t = tree();
        let root = t.path().canonicalize().unwrap();
        assert_eq!(resolve_sub_path(&root, "").unwrap(), root);
        assert_eq!(resolve_sub_path(&root, "bin").unwrap(), root.join("bin"));
        assert_eq!(
            resolve_sub_path(&root, "bin/sub/").unwrap(),
            root.join("bin/sub")
        );
        assert_eq!(
            resolve_sub_path(&root, "inside/sub").unwrap(),
            root.join("bin/sub")
        );
    }

    #[test]
    fn a_sub_path_that_leaves_the_root_or_names_no_directory_is_refused() {
        let t = tree();
        let root = t.path().canonicalize().unwrap();
        for escape in ["up", "absolute", "../", "bin/../../x", "/etc"] {
            let e = resolve_sub_path(&root, escape).unwrap_err();
            assert!(matches!(e, VolumeError::Escapes { .. }), "{escape}: {e}");
        }
        let e = resolve_sub_path(&root, "nothing/here").unwrap_err();
        assert!(matches!(e, VolumeError::Missing { .. }), "{e}");
        let e = resolve_sub_path(&root, "file").unwrap_err();
        assert!(matches!(e, VolumeError::NotDirectory { .. }), "{e}");
    }

    #[test]
    fn mount_options_split_into_flags_and_data() {
        let opts = ["ro", "rbind", "index=off", "lowerdir=/a:/b"].map(String::from);
        let (flags, data) = mount_options(&opts);
        assert_eq!(flags, MsFlags::MS_RDONLY | MsFlags::MS_REC);
        assert_eq!(data, "index=off,lowerdir=/a:/b");
    }

    #[test]
    fn unmounting_a_missing_mount_point_is_fine() {
        let t = tempfile::tempdir().unwrap();
        unmount(&t.path().join("0")).unwrap();
        std::fs::create_dir(t.path().join("1")).unwrap();
        unmount(&t.path().join("1")).unwrap();
        assert!(!t.path().join("1").exists());
    }
}
