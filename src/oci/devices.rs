//! The host's device nodes, as a privileged container gets them (containerd's
//! `oci.HostDevices`): every block and character device under /dev, recursively, but for
//! /dev/console and the directories a container has its own of (pts, shm, fd, mqueue) or that
//! belong to other managers (.lxc, .lxd-mounts, .udev). Symbolic links are not devices.

use std::path::Path;

use oci_spec::runtime::{LinuxDevice, LinuxDeviceType};

const SKIPPED_DIRS: &[&str] = &["pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"];
/// Device nodes taken at most (a host's /dev holds a few hundred).
const MAX_DEVICES: usize = 16_384;
/// Directory levels walked at most.
const MAX_DEPTH: usize = 8;

/// The device nodes under `dir`, each at the same path in the container, in name order. A
/// node that vanishes or cannot be read while walking is left out.
pub fn host_devices(dir: &Path) -> Vec<LinuxDevice> {
    let mut out = Vec::new();
    walk(dir, 0, &mut out);
    out
}

fn walk(dir: &Path, depth: usize, out: &mut Vec<LinuxDevice>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.filter_map(|e| e.ok()).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let Ok(ft) = e.file_type() else { continue };
        let name = e.file_name();
        let name = name.to_string_lossy();
        if ft.is_dir() {
            if depth + 1 < MAX_DEPTH && !SKIPPED_DIRS.contains(&name.as_ref()) {
                walk(&e.path(), depth + 1, out);
            }
        } else if name != "console" && out.len() < MAX_DEVICES {
            out.extend(device(&e.path()));
        }
    }
}

/// A block or character device node (not following links), with its mode and owner.
pub fn device(path: &Path) -> Option<LinuxDevice> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let m = std::fs::symlink_metadata(path).ok()?;
    let typ = match m.file_type() {
        t if t.is_char_device() => LinuxDeviceType::C,
        t if t.is_block_device() => LinuxDeviceType::B,
        _ => return None,
    };
    let mut dev = LinuxDevice::default();
    dev.set_path(path.to_path_buf())
        .set_typ(typ)
        .set_major(nix::sys::stat::major(m.rdev()) as i64)
        .set_minor(nix::sys::stat::minor(m.rdev()) as i64)
        .set_file_mode(Some(m.mode() & 0o7777))
        .set_uid(Some(m.uid()))
        .set_gid(Some(m.gid()));
    Some(dev)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hosts_dev_without_console_pts_and_links() {
        let devices = host_devices(Path::new("/dev"));
        let paths: Vec<String> = devices
            .iter()
            .map(|d| d.path().display().to_string())
            .collect();
        assert!(paths.contains(&"/dev/null".to_string()), "{paths:?}");
        assert!(!paths
            .iter()
            .any(|p| p == "/dev/console" || p.starts_with("/dev/pts/")));
        // /dev/stdin is a link to /proc/self/fd/0: not a device here.
        assert!(!paths.contains(&"/dev/stdin".to_string()));
        let null = devices
            .iter()
            .find(|d| d.path() == Path::new("/dev/null"))
            .unwrap();
        assert_eq!(
            (null.typ(), null.major(), null.minor()),
            (LinuxDeviceType::C, 1, 3)
        );
    }
}
