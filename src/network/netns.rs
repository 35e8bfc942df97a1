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

/// Creates a new network namespace pinned at `path`, owned by a new user namespace pinned at
/// `user_path` whose id maps are `uid_map` and `gid_map` (`/proc/<pid>/uid_map` lines): a pod
/// user namespace that owns the pod's network (runc 1.1 joins a user namespace before the
/// others, so a network namespace of the host's could not be joined from inside it). A child
/// cloned into both namespaces (it only waits) holds them while they are mapped and pinned.
pub fn create_in_userns(
    path: &Path,
    user_path: &Path,
    uid_map: &str,
    gid_map: &str,
) -> Result<(), NetnsError> {
    use nix::sys::signal::{kill, Signal};
    for p in [path, user_path] {
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir).map_err(|e| file_err(p, "creating the directory", e))?;
        }
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(p)
            .map_err(|e| file_err(p, "creating the mount point", e))?;
    }
    let mut stack = vec![0u8; 64 * 1024];
    let flags = CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNET;
    // SAFETY: the child (its own copy of the memory, no CLONE_VM) only calls pause(2) until
    // it is killed; it touches no lock or allocator state of this process.
    let child = unsafe {
        nix::sched::clone(
            Box::new(|| loop {
                nix::libc::pause();
            }),
            &mut stack,
            flags,
            Some(nix::libc::SIGCHLD),
        )
    }
    .map_err(io(path, "clone"))?;
    let made = (|| {
        let proc = PathBuf::from(format!("/proc/{child}"));
        std::fs::write(proc.join("uid_map"), uid_map)
            .map_err(|e| file_err(user_path, "writing uid_map", e))?;
        std::fs::write(proc.join("gid_map"), gid_map)
            .map_err(|e| file_err(user_path, "writing gid_map", e))?;
        for (p, ns) in [(path, "net"), (user_path, "user")] {
            let src = proc.join("ns").join(ns);
            mount(Some(&src), p, None::<&str>, MsFlags::MS_BIND, None::<&str>)
                .map_err(io(p, "bind mount"))?;
        }
        let target = path.to_owned();
        std::thread::spawn(move || -> Result<(), NetnsError> {
            let ns = std::fs::File::open(&target).map_err(|e| file_err(&target, "opening", e))?;
            nix::sched::setns(ns, CloneFlags::CLONE_NEWNET).map_err(io(&target, "setns"))?;
            loopback_up().map_err(|e| file_err(&target, "bringing lo up", e))
        })
        .join()
        .unwrap_or_else(|_| {
            Err(file_err(
                path,
                "namespace thread",
                std::io::Error::other("panicked"),
            ))
        })
    })();
    let _ = kill(child, Signal::SIGKILL);
    let _ = nix::sys::wait::waitpid(child, None);
    if made.is_err() {
        let _ = remove(path);
        let _ = remove(user_path);
    }
    made
}

fn file_err(path: &Path, step: &'static str, source: std::io::Error) -> NetnsError {
    NetnsError::Io {
        path: path.to_owned(),
        step,
        source,
    }
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
