//! Persistent network namespaces: a new namespace bind-mounted on a file named after its
//! sandbox, so it outlives every process in it (and concord) until removed.
//!
//! The namespace is made on a dedicated OS thread that unshares and then exits: a pooled thread
//! (tokio's blocking pool) must never change namespaces.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};

/// Why a namespace could not be made or removed.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// A filesystem or kernel step failed.
    #[error("network namespace {path}: {step}: {source}")]
    Io {
        path: PathBuf,
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
}

fn io<'a>(path: &'a Path, step: &'static str) -> impl FnOnce(nix::Error) -> NetnsError + 'a {
    move |e| NetnsError::Io {
        path: path.to_owned(),
        step,
        source: std::io::Error::from(e),
    }
}

/// Sets `lo` up in the calling thread's network namespace.
fn loopback_up() -> std::io::Result<()> {
    use nix::libc;
    use std::os::fd::AsRawFd;
    let sock = std::net::UdpSocket::bind("0.0.0.0:0")?;
    // SAFETY: an ifreq zeroed then named "lo"; the ioctls read and write only that struct.
    unsafe {
        let mut req: libc::ifreq = std::mem::zeroed();
        for (d, s) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *d = *s as libc::c_char;
        }
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Creates a new network namespace pinned at `path` (its directory is created).
pub fn create(path: &Path) -> Result<(), NetnsError> {
    let err = |step, source| NetnsError::Io {
        path: path.to_owned(),
        step,
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| err("creating the directory", e))?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| err("creating the mount point", e))?;
    let target = path.to_owned();
    let made = std::thread::spawn(move || -> Result<(), NetnsError> {
        unshare(CloneFlags::CLONE_NEWNET).map_err(io(&target, "unshare"))?;
        // The pod's loopback is up, as containerd's CRI has its loopback plugin make it:
        // 127.0.0.1 inside the pod (port-forward, probes) needs it.
        loopback_up().map_err(|source| NetnsError::Io {
            path: target.clone(),
            step: "bringing lo up",
            source,
        })?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(io(&target, "bind mount"))
    })
    .join()
    .unwrap_or_else(|_| {
        Err(NetnsError::Io {
            path: path.to_owned(),
            step: "namespace thread",
            source: std::io::Error::other("panicked"),
        })
    });
    if made.is_err() {
        let _ = std::fs::remove_file(path);
    }
    made
}

/// Unmounts and deletes the namespace at `path`; a missing one is fine.
pub fn remove(path: &Path) -> Result<(), NetnsError> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
        Err(e) => return Err(io(path, "unmount")(e)),
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(NetnsError::Io {
            path: path.to_owned(),
            step: "removing the mount point",
            source,
        }),
    }
}

/// Whether `path` holds a pinned network namespace (a mount of an nsfs inode).
pub fn exists(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
        .unwrap_or(false)
}

/// Namespace files in `dir` (for the resync's orphan scan).
pub fn list(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_pins_a_namespace_and_remove_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("netns/sb1");
        create(&p).unwrap();
        assert!(exists(&p));
        let mine = std::fs::read_link("/proc/self/ns/net").unwrap();
        let st = nix::sys::stat::stat(&p).unwrap();
        let own = nix::sys::stat::stat("/proc/self/ns/net").unwrap();
        assert_ne!(
            st.st_ino, own.st_ino,
            "a new namespace, not ours ({mine:?})"
        );
        assert!(create(&p).is_err(), "an existing one is not replaced");
        remove(&p).unwrap();
        assert!(!p.exists());
        remove(&p).unwrap();
        assert_eq!(list(&dir.path().join("netns")).len(), 0);
    }
}
