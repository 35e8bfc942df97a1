//! Which mount a host path is on, and whether that mount propagates (`/proc/self/mountinfo`):
//! a Bidirectional volume needs a shared mount, a HostToContainer one a shared or slave mount,
//! as containerd checks. Without that, runc's rshared/rslave bind makes a new peer group and
//! nothing crosses between host and container.

use std::path::{Path, PathBuf};

/// One mountinfo line's mount point and its propagation tags.
#[derive(Debug, PartialEq, Eq)]
pub struct Mount {
    pub mount_point: PathBuf,
    pub shared: bool,
    pub slave: bool,
}

/// Decodes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mounts of a mountinfo table (lines it cannot read are skipped).
pub fn parse(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            if sep < 6 {
                return None;
            }
            let optional = &fields[6..sep];
            Some(Mount {
                mount_point: PathBuf::from(unescape(fields[4])),
                shared: optional.iter().any(|f| f.starts_with("shared:")),
                slave: optional.iter().any(|f| f.starts_with("master:")),
            })
        })
        .collect()
}

/// The mount `path` is on: the last-mounted one whose mount point is the longest prefix.
pub fn mount_of<'a>(mounts: &'a [Mount], path: &Path) -> Option<&'a Mount> {
    let mut best: Option<&Mount> = None;
    for m in mounts {
        if path.starts_with(&m.mount_point)
            && best
                .is_none_or(|b| m.mount_point.as_os_str().len() >= b.mount_point.as_os_str().len())
        {
            best = Some(m);
        }
    }
    best
}

/// Checks that host path `path` is on a shared mount (`shared`), or on a shared or slave one;
/// the error says why not.
pub fn ensure_propagates(path: &str, shared: bool) -> Result<(), String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("reading /proc/self/mountinfo: {e}"))?;
    check(&parse(&text), path, shared)
}

fn check(mounts: &[Mount], path: &str, shared: bool) -> Result<(), String> {
    // Symlinks resolved as the bind mount will resolve them; a path that does not exist yet is
    // taken as written.
    let resolved = std::fs::canonicalize(path).unwrap_or_else(|_| PathBuf::from(path));
    let Some(m) = mount_of(mounts, &resolved) else {
        return Err(format!("no mount found for path {path:?}"));
    };
    if m.shared || (!shared && m.slave) {
        return Ok(());
    }
    let want = if shared {
        "a shared mount"
    } else {
        "a shared or slave mount"
    };
    Err(format!(
        "path {path:?} is mounted on {:?} but it is not {want}",
        m.mount_point
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "\
22 1 0:21 / / rw,relatime shared:1 - overlay overlay rw
23 22 0:22 / /proc rw,nosuid - proc proc rw
30 22 0:30 / /mnt/private rw - tmpfs tmpfs rw
31 22 0:31 / /mnt/slave rw master:7 - tmpfs tmpfs rw
32 30 0:32 / /mnt/private/inner\\040dir rw shared:9 master:3 - tmpfs tmpfs rw
";

    #[test]
    fn mount_points_and_propagation_tags() {
        let m = parse(TABLE);
        assert_eq!(m.len(), 5);
        assert!(m[0].shared && !m[0].slave);
        assert!(!m[2].shared && !m[2].slave);
        assert!(m[3].slave);
        assert_eq!(m[4].mount_point, PathBuf::from("/mnt/private/inner dir"));
    }

    #[test]
    fn the_longest_mount_point_wins() {
        let m = parse(TABLE);
        let of = |p: &str| mount_of(&m, Path::new(p)).unwrap().mount_point.clone();
        assert_eq!(of("/mnt/private/x"), PathBuf::from("/mnt/private"));
        assert_eq!(
            of("/mnt/private/inner dir/y"),
            PathBuf::from("/mnt/private/inner dir")
        );
        assert_eq!(of("/mnt/privatex"), PathBuf::from("/"));
        assert_eq!(of("/var/lib"), PathBuf::from("/"));
    }

    #[test]
    fn bidirectional_needs_shared_host_to_container_shared_or_slave() {
        let m = parse(TABLE);
        assert!(check(&m, "/nonexistent-concord/a", true).is_ok());
        let e = check(&m, "/mnt/private/a", true).unwrap_err();
        assert!(e.contains("not a shared mount"), "{e}");
        assert!(check(&m, "/mnt/private/a", false).is_err());
        assert!(check(&m, "/mnt/slave/a", false).is_ok());
        assert!(check(&m, "/mnt/slave/a", true).is_err());
        assert!(check(&m, "/mnt/private/inner dir", true).is_ok());
    }
}
