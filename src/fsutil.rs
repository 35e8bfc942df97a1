//! Small file-system helpers.

use std::path::Path;

/// Writes `bytes` to `path` so that readers see the old or the new content, never a part: a
/// synced temporary file beside it (`<name>.tmp`, mode 0644), then a rename. Creates the parent.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Creates `dir` and its missing parents, `dir` itself mode 0700 (root's alone).
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// `s` cut to at most `max` bytes at a character boundary, "…" marking the cut.
pub fn truncate_utf8(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn truncation_cuts_at_a_character_boundary() {
        assert_eq!(super::truncate_utf8("abc".into(), 8), "abc");
        assert_eq!(super::truncate_utf8("ééé".into(), 3), "é…");
    }
}
