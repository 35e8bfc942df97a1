//! The framing of a stream into CRI log entries (the log writer's and attach's), fed in chunks of
//! any size as reads hand them over: never panics; each entry is
//! `<RFC 3339 time> <stream> <P|F> <content>\n` with content at most `max` bytes and no
//! newline; the contents (a newline after each F) give back the input exactly, but for the
//! newline a full entry at EOF did not have. (A line cut at exactly `max` bytes by EOF stays
//! P, as in containerd: the writer cannot tell EOF from a pause without waiting.)
//! Input: one byte for `max`, one for the chunk size, then the stream.
#![no_main]
use concord::logwriter::{entry, Lines};
use libfuzzer_sys::fuzz_target;

/// Parses one CRI log line: (stream, partial, content). The kubelet's parser, in short.
fn parse(line: &[u8]) -> Option<(&str, bool, &[u8])> {
    let line = line.strip_suffix(b"\n")?;
    let mut it = line.splitn(4, |b| *b == b' ');
    let ts = std::str::from_utf8(it.next()?).ok()?;
    if ts.len() < 20 || !ts.ends_with('Z') || ts.as_bytes()[10] != b'T' {
        return None;
    }
    let stream = std::str::from_utf8(it.next()?).ok()?;
    let tag = it.next()?;
    let content = it.next().unwrap_or(b"");
    let partial = match tag {
        b"P" => true,
        b"F" => false,
        _ => return None,
    };
    Some((stream, partial, content))
}

fuzz_target!(|data: &[u8]| {
    let [m, c, input @ ..] = data else {
        return;
    };
    let max = 1 + *m as usize % 64;
    let chunk = 1 + *c as usize % 32;
    let mut rebuilt = Vec::new();
    let mut entries = 0usize;
    let mut check = |partial: bool, content: &[u8]| {
        let line = entry("stdout", partial, content);
        entries += 1;
        let (stream, partial, content) =
            parse(&line).unwrap_or_else(|| panic!("not a CRI log line: {line:?}"));
        assert_eq!(stream, "stdout");
        assert!(content.len() <= max, "{} > {max}", content.len());
        assert!(!content.contains(&b'\n'));
        rebuilt.extend_from_slice(content);
        if !partial {
            rebuilt.push(b'\n');
        }
    };
    let mut lines = Lines::new(max);
    for piece in input.chunks(chunk) {
        lines.push(piece, &mut check);
    }
    lines.finish(&mut check);
    if rebuilt.last() == Some(&b'\n') && input.last() != Some(&b'\n') {
        rebuilt.pop();
    }
    assert_eq!(rebuilt, input);
    assert!(entries <= input.len() + 1);
});
