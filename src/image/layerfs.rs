//! Reading a file of an image from its unpacked layer directories (an overlay snapshot's upper
//! and lower dirs, top first, or one bind-mounted directory) without mounting anything and
//! without ever leaving the image: every path, symlinks included, is resolved against the image's
//! own root, whiteouts and opaque directories are honoured, only a regular file is read, and at
//! most `limit` bytes of it. An image whose `/etc/passwd` links to `/dev/zero`, `/etc/shadow` or
//! `../../../etc` reads nothing of the host's.

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Symlinks followed in one lookup before it is refused (as the kernel's ELOOP).
const MAX_LINKS: usize = 40;

/// Why a file could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayerError {
    #[error("{path} is not a regular file")]
    NotRegular { path: String },
    #[error("{path} is larger than {limit} bytes")]
    TooLarge { path: String, limit: u64 },
    #[error("{path}: more than {MAX_LINKS} symbolic links")]
    Loop { path: String },
    #[error("{path}: {message}")]
    Io { path: String, message: String },
}

/// What one path is in the layer stack.
#[derive(Debug)]
enum Entry {
    Absent,
    Dir,
    /// A regular file: its place in one layer.
    File(PathBuf),
    /// A device, FIFO or socket: never opened.
    Special,
    Link(PathBuf),
}

/// A stack of layer directories, the topmost first.
pub struct Layers {
    dirs: Vec<PathBuf>,
}

fn io_err(path: &str, e: std::io::Error) -> LayerError {
    LayerError::Io {
        path: path.to_string(),
        message: e.to_string(),
    }
}

impl Layers {
    pub fn new(dirs: Vec<PathBuf>) -> Layers {
        Layers { dirs }
    }

    /// The layer directories of a snapshot's mounts: an overlay's `upperdir` then `lowerdir`s,
    /// or a bind mount's source.
    pub fn of_mounts(mounts: &[containerd_client::types::Mount]) -> Layers {
        let mut dirs: Vec<PathBuf> = Vec::new();
        for m in mounts {
            if m.r#type == "bind" {
                dirs.push(PathBuf::from(&m.source));
            }
            for o in &m.options {
                if let Some(d) = o.strip_prefix("upperdir=") {
                    dirs.insert(0, PathBuf::from(d));
                } else if let Some(l) = o.strip_prefix("lowerdir=") {
                    dirs.extend(l.split(':').map(PathBuf::from));
                }
            }
        }
        Layers { dirs }
    }

    /// Reads the image file `path` (absolute inside the image): None when it does not exist.
    pub fn read(&self, path: &str, limit: u64) -> Result<Option<Vec<u8>>, LayerError> {
        let Some((f, len)) = self.open(path)? else {
            return Ok(None);
        };
        if len > limit {
            return Err(LayerError::TooLarge {
                path: path.to_string(),
                limit,
            });
        }
        let mut bytes = Vec::with_capacity(len as usize);
        f.take(limit + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| io_err(path, e))?;
        if bytes.len() as u64 > limit {
            return Err(LayerError::TooLarge {
                path: path.to_string(),
                limit,
            });
        }
        Ok(Some(bytes))
    }

    /// Opens the image file `path` (absolute inside the image), a regular file, with its length:
    /// None when it does not exist.
    pub fn open(&self, path: &str) -> Result<Option<(std::fs::File, u64)>, LayerError> {
        let Some(layer_path) = self.resolve(path)? else {
            return Ok(None);
        };
        // Only what lookup saw as a regular file is opened. O_NOFOLLOW: not a link swapped in;
        // O_NONBLOCK and O_NOCTTY: a FIFO or tty swapped in meanwhile neither hangs the open nor
        // becomes concord's terminal; the descriptor's own type is checked again.
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(
                nix::libc::O_NOFOLLOW
                    | nix::libc::O_NONBLOCK
                    | nix::libc::O_NOCTTY
                    | nix::libc::O_CLOEXEC,
            )
            .open(&layer_path)
            .map_err(|e| io_err(path, e))?;
        let meta = f.metadata().map_err(|e| io_err(path, e))?;
        if !meta.file_type().is_file() {
            return Err(LayerError::NotRegular {
                path: path.to_string(),
            });
        }
        Ok(Some((f, meta.len())))
    }

    /// Resolves `path` inside the image: the file's place in one layer, or None when it does not exist (or a component is not a directory).
    fn resolve(&self, path: &str) -> Result<Option<PathBuf>, LayerError> {
        let mut todo: Vec<Vec<u8>> = components(path.as_bytes()).into_iter().rev().collect();
        let mut at: Vec<Vec<u8>> = Vec::new();
        let mut links = 0;
        while let Some(name) = todo.pop() {
            match name.as_slice() {
                b"." => continue,
                b".." => {
                    at.pop();
                    continue;
                }
                _ => {}
            }
            at.push(name);
            let last = todo.is_empty();
            match self.lookup(&at, path)? {
                Entry::Absent => return Ok(None),
                Entry::Dir if last => {
                    return Err(LayerError::NotRegular {
                        path: path.to_string(),
                    })
                }
                Entry::Dir => {}
                Entry::File(p) if last => return Ok(Some(p)),
                // A device node (mknod'ed from a layer), FIFO or socket is never opened: opening
                // a device can act on the host (a watchdog, a tty).
                Entry::Special if last => {
                    return Err(LayerError::NotRegular {
                        path: path.to_string(),
                    })
                }
                // A file where a directory is needed: nothing there.
                Entry::File(_) | Entry::Special => return Ok(None),
                Entry::Link(target) => {
                    links += 1;
                    if links > MAX_LINKS {
                        return Err(LayerError::Loop {
                            path: path.to_string(),
                        });
                    }
                    at.pop();
                    let t = target.as_os_str().as_bytes();
                    if t.first() == Some(&b'/') {
                        at.clear();
                    }
                    for c in components(t).into_iter().rev() {
                        todo.push(c);
                    }
                }
            }
        }
        // The root itself.
        Err(LayerError::NotRegular {
            path: path.to_string(),
        })
    }

    /// What image path `at` is: the topmost layer that has it or hides it decides. A layer is
    /// looked into only through real directories of its own (each ancestor checked without
    /// following links, so a lower layer's `etc -> /host/dir` is never walked through); a
    /// non-directory ancestor, a whiteout or an opaque directory hides everything below.
    fn lookup(&self, at: &[Vec<u8>], path: &str) -> Result<Entry, LayerError> {
        'layers: for dir in &self.dirs {
            let mut here = dir.clone();
            // An opaque directory among the ancestors in this layer hides the lower layers.
            let mut opaque_above = false;
            for (n, c) in at.iter().enumerate() {
                here.push(OsStr::from_bytes(c));
                let last = n + 1 == at.len();
                let m = match std::fs::symlink_metadata(&here) {
                    Ok(m) => m,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        // An OCI whiteout beside it hides the lower layers' entry.
                        let mut wh = b".wh.".to_vec();
                        wh.extend_from_slice(c);
                        let parent = here.parent().unwrap_or(dir);
                        if std::fs::symlink_metadata(parent.join(OsStr::from_bytes(&wh))).is_ok() {
                            return Ok(Entry::Absent);
                        }
                        if opaque_above {
                            return Ok(Entry::Absent);
                        }
                        continue 'layers;
                    }
                    Err(e) => return Err(io_err(path, e)),
                };
                let t = m.file_type();
                // overlayfs whiteout: a character device 0:0.
                if t.is_char_device() && m.rdev() == 0 {
                    return Ok(Entry::Absent);
                }
                if !last {
                    if t.is_dir() {
                        opaque_above |= opaque(&here);
                        continue;
                    }
                    // An ancestor that is not a directory in this layer hides the path here and
                    // below (resolve() follows links only through lookup's answers).
                    return Ok(Entry::Absent);
                }
                if t.is_symlink() {
                    let target = std::fs::read_link(&here).map_err(|e| io_err(path, e))?;
                    return Ok(Entry::Link(target));
                }
                if t.is_dir() {
                    return Ok(Entry::Dir);
                }
                if !t.is_file() {
                    return Ok(Entry::Special);
                }
                return Ok(Entry::File(here));
            }
        }
        Ok(Entry::Absent)
    }
}
/// Whether directory `d` of a layer is opaque (its lower layers' contents hidden).
fn opaque(d: &Path) -> bool {
    if d.join(".wh..wh..opq").exists() {
        return true;
    }
    let mut buf = [0u8; 4];
    let Ok(c) = std::ffi::CString::new(d.as_os_str().as_bytes()) else {
        return false;
    };
    let name = c"trusted.overlay.opaque";
    // SAFETY: both strings are NUL-terminated and `buf` is valid for its length.
    let n = unsafe {
        nix::libc::lgetxattr(
            c.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    n == 1 && buf[0] == b'y'
}

/// The non-empty components of a path.
fn components(p: &[u8]) -> Vec<Vec<u8>> {
    p.split(|b| *b == b'/')
        .filter(|c| !c.is_empty())
        .map(|c| c.to_vec())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn layers(n: usize) -> (tempfile::TempDir, Vec<PathBuf>) {
        let t = tempfile::tempdir().unwrap();
        let dirs: Vec<PathBuf> = (0..n).map(|i| t.path().join(format!("l{i}"))).collect();
        for d in &dirs {
            std::fs::create_dir_all(d.join("etc")).unwrap();
        }
        (t, dirs)
    }

    fn read(dirs: &[PathBuf], p: &str) -> Result<Option<String>, LayerError> {
        Layers::new(dirs.to_vec())
            .read(p, 1024)
            .map(|o| o.map(|b| String::from_utf8(b).unwrap()))
    }

    #[test]
    fn the_top_layer_wins_and_whiteouts_hide() {
        let (_t, d) = layers(3);
        std::fs::write(d[2].join("etc/passwd"), "bottom").unwrap();
        assert_eq!(read(&d, "/etc/passwd").unwrap().unwrap(), "bottom");
        std::fs::write(d[1].join("etc/passwd"), "middle").unwrap();
        assert_eq!(read(&d, "/etc/passwd").unwrap().unwrap(), "middle");
        std::fs::write(d[0].join("etc/.wh.passwd"), "").unwrap();
        assert_eq!(read(&d, "/etc/passwd").unwrap(), None);
        std::fs::write(d[0].join("etc/.wh..wh..opq"), "").unwrap();
        assert_eq!(read(&d, "/etc/group").unwrap(), None);
        std::fs::write(d[2].join("etc/group"), "g").unwrap();
        assert_eq!(
            read(&d, "/etc/group").unwrap(),
            None,
            "opaque etc in the top layer"
        );
    }

    #[test]
    fn symlinks_resolve_inside_the_image_never_the_host() {
        let (_t, d) = layers(2);
        // Absolute and escaping links point into the image, where nothing is.
        symlink("/etc/shadow", d[0].join("etc/passwd")).unwrap();
        assert_eq!(read(&d, "/etc/passwd").unwrap(), None);
        symlink("../../../../../../etc/hostname", d[0].join("etc/group")).unwrap();
        assert_eq!(read(&d, "/etc/group").unwrap(), None);
        // A link to a file of a lower layer is followed within the image.
        std::fs::create_dir_all(d[1].join("usr/share")).unwrap();
        std::fs::write(d[1].join("usr/share/base-passwd"), "root:x:0:0").unwrap();
        std::fs::remove_file(d[0].join("etc/passwd")).unwrap();
        symlink("../usr/share/base-passwd", d[0].join("etc/passwd")).unwrap();
        assert_eq!(read(&d, "/etc/passwd").unwrap().unwrap(), "root:x:0:0");
        // A directory link: etc -> /etc of the host is the image's own /etc.
        let (_t2, e) = layers(1);
        std::fs::remove_dir(e[0].join("etc")).unwrap();
        symlink("/etc", e[0].join("etc")).unwrap();
        assert!(matches!(
            read(&e, "/etc/passwd"),
            Err(LayerError::Loop { .. }) | Ok(None)
        ));
        // Loops end.
        symlink("loop", d[0].join("etc/loop")).unwrap();
        assert!(matches!(
            read(&d, "/etc/loop"),
            Err(LayerError::Loop { .. })
        ));
    }

    #[test]
    fn lower_layers_are_entered_through_real_directories_only() {
        let (t, d) = layers(2);
        // A host directory a lower layer's `etc` links to: never read.
        let host = t.path().join("host");
        std::fs::create_dir_all(&host).unwrap();
        std::fs::write(host.join("passwd"), "HOST").unwrap();
        std::fs::remove_dir(d[1].join("etc")).unwrap();
        symlink(&host, d[1].join("etc")).unwrap();
        assert_eq!(read(&d, "/etc/passwd").unwrap(), None);
        // An opaque directory above hides a deeper path of the lower layer.
        std::fs::create_dir_all(d[0].join("a/b")).unwrap();
        std::fs::write(d[0].join("a/.wh..wh..opq"), "").unwrap();
        std::fs::create_dir_all(d[1].join("a/b")).unwrap();
        std::fs::write(d[1].join("a/b/c"), "lower").unwrap();
        assert_eq!(read(&d, "/a/b/c").unwrap(), None);
        std::fs::remove_file(d[0].join("a/.wh..wh..opq")).unwrap();
        assert_eq!(read(&d, "/a/b/c").unwrap().unwrap(), "lower");
    }

    #[test]
    fn only_bounded_regular_files_are_read() {
        let (_t, d) = layers(1);
        symlink("/dev/zero", d[0].join("etc/passwd")).unwrap();
        assert_eq!(
            read(&d, "/etc/passwd").unwrap(),
            None,
            "the image's /dev/zero"
        );
        std::fs::create_dir_all(d[0].join("dev")).unwrap();
        // A device node in a layer (here /dev/null's numbers) is refused before any open.
        nix::sys::stat::mknod(
            &d[0].join("dev/null"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
            nix::sys::stat::makedev(1, 3),
        )
        .unwrap();
        symlink("/dev/null", d[0].join("etc/shadow")).unwrap();
        assert!(matches!(
            read(&d, "/etc/shadow"),
            Err(LayerError::NotRegular { .. })
        ));
        nix::unistd::mkfifo(
            &d[0].join("dev/zero"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        assert!(matches!(
            read(&d, "/etc/passwd"),
            Err(LayerError::NotRegular { .. })
        ));
        std::fs::write(d[0].join("etc/group"), vec![b'x'; 2048]).unwrap();
        assert!(matches!(
            read(&d, "/etc/group"),
            Err(LayerError::TooLarge { limit: 1024, .. })
        ));
        assert!(matches!(
            read(&d, "/etc"),
            Err(LayerError::NotRegular { .. })
        ));
    }
}
