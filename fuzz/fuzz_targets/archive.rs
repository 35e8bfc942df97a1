//! LoadImage's archive unpacking (a tar or tar.gz from the node, often from elsewhere): never
//! panics, writes nothing outside its directory, stays inside its byte and entry limits, and
//! what it leaves can be read only through links that stay inside.
#![no_main]
use concord::image::archive::{unpack, Limits};
use concord::image::layerfs::Layers;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

const LIMITS: Limits = Limits {
    max_bytes: 1 << 20,
    max_entries: 64,
};

/// Bytes in regular files under `dir` (not following links), and whether anything there is
/// neither a file, a directory nor a link.
fn walk(dir: &Path) -> (u64, bool) {
    let (mut bytes, mut odd) = (0, false);
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let t = e.file_type().unwrap();
        if t.is_dir() {
            let (b, o) = walk(&e.path());
            bytes += b;
            odd |= o;
        } else if t.is_file() {
            bytes += e.metadata().unwrap().len();
        } else if !t.is_symlink() {
            odd = true;
        }
    }
    (bytes, odd)
}

fuzz_target!(|data: &[u8]| {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let _ = unpack(data, &root, LIMITS);
    // Nothing beside the root.
    let names: Vec<_> = std::fs::read_dir(t.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("root")]);
    let (bytes, odd) = walk(&root);
    assert!(bytes <= LIMITS.max_bytes, "{bytes} bytes unpacked");
    assert!(!odd, "a device, FIFO or socket was unpacked");
    // Reading the layout's well-known names stays inside (a link to a host file reads nothing).
    let layers = Layers::new(vec![root.clone()]);
    for p in [
        "/index.json",
        "/manifest.json",
        "/oci-layout",
        "/blobs/sha256/a",
        "/etc/passwd",
    ] {
        if let Ok(Some((f, _))) = layers.open(p) {
            use std::os::unix::fs::MetadataExt;
            let dev_ino = |m: std::fs::Metadata| (m.dev(), m.ino());
            let target = dev_ino(f.metadata().unwrap());
            let inside = walkdir_has(&root, target);
            assert!(inside, "{p} opened a file outside the archive");
        }
    }
});

/// Whether a regular file under `dir` has device and inode `want`.
fn walkdir_has(dir: &Path, want: (u64, u64)) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            if m.is_dir() {
                walkdir_has(&e.path(), want)
            } else {
                m.is_file() && (m.dev(), m.ino()) == want
            }
        })
}
