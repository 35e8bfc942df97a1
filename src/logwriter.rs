//! The container log writer: the program containerd's shim runs for a task's stdio
//! (`binary://<concord>?concord-log-writer=1&path=..&pidfile=..&max=..`). The shim hands it the
//! container's stdout and stderr as fds 3 and 4 and waits for fd 5 to close; it then writes
//! every line in the CRI log format (`<RFC3339Nano> <stdout|stderr> <F|P> <content>`) until both
//! streams end. It is a child of the shim, not of concord, so logs keep flowing while concord is
//! down or restarting. SIGUSR1 reopens the file (ReopenContainerLog after kubelet rotated it).
//! With `stdin=<fifo>` (a TTY container with stdin) it also holds that FIFO open for writing
//! as long as it runs, so the container's stdin stays open whether concord runs or not.
//!
//! # Protocol
//! A writer outlives the concord that started it (it is the shim's child), so an upgraded concord
//! meets writers started by an older one, and an older writer's binary may be gone from disk. The
//! contract between the two is versioned by [`PROTOCOL`], the value of the marker key:
//!
//! * **v1** (every concord so far): the arguments are key-value pairs: `concord-log-writer=1`,
//!   `path` (the log file), `pidfile`, `max` (line length before a partial entry), `stdin` (a
//!   FIFO to hold open); the shim passes stdout, stderr and a ready fd as fds 3, 4 and 5. The
//!   writer writes its bare pid to the pid file and removes it at exit; SIGUSR1 reopens the log
//!   file; SIGTERM is ignored (it drains to EOF). concord finds a writer by that pid file and
//!   recognises it by its command line (the marker key and the container id in the pid file path).
//!
//! Rules that keep old and new working together: a writer ignores keys it does not know and runs
//! an invocation of a newer protocol with the keys it knows (logs must keep flowing); a change a
//! writer must understand adds a key and bumps [`PROTOCOL`]; the pid file's content and SIGUSR1
//! stay as they are, since concord must handle writers of every version still running.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, FromRawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::poll::{PollFd, PollFlags, PollTimeout};

/// The query key that marks a log-writer invocation; its value is the [`PROTOCOL`] version.
pub const MARKER: &str = "concord-log-writer";

/// The log-writer protocol version this concord speaks (see the module docs).
pub const PROTOCOL: u32 = 1;

/// Default longest log line before it is split into partial entries (containerd's 16 KiB).
pub const MAX_LINE: usize = 16 * 1024;

static REOPEN: AtomicBool = AtomicBool::new(false);

extern "C" fn on_usr1(_: libc_int) {
    REOPEN.store(true, Ordering::SeqCst);
}

#[allow(non_camel_case_types)]
type libc_int = std::os::raw::c_int;

/// Whether `args` (without the program name) are a log-writer invocation.
pub fn is_invocation(args: &[String]) -> bool {
    protocol(args).is_some()
}

/// The protocol version of a log-writer invocation (a marker without a number is v1); None when
/// `args` are not one.
pub fn protocol(args: &[String]) -> Option<u32> {
    args.chunks(2)
        .find(|kv| kv[0] == MARKER)
        .map(|kv| kv.get(1).and_then(|v| v.parse().ok()).unwrap_or(1))
}

/// What an invocation asks of the writer.
#[derive(Debug, PartialEq)]
pub struct Invocation {
    pub protocol: u32,
    pub path: Option<PathBuf>,
    pub pidfile: Option<PathBuf>,
    pub stdin: Option<PathBuf>,
    pub max: usize,
    /// Keys this writer does not know (from a newer concord): ignored.
    pub unknown: Vec<String>,
}

impl Invocation {
    /// Parses the shim's arguments (key value pairs, values query-encoded).
    pub fn parse(args: &[String]) -> Invocation {
        let mut inv = Invocation {
            protocol: protocol(args).unwrap_or(PROTOCOL),
            path: None,
            pidfile: None,
            stdin: None,
            max: MAX_LINE,
            unknown: Vec::new(),
        };
        for kv in args.chunks(2) {
            let v = kv.get(1).map(|v| decode(v)).unwrap_or_default();
            match kv[0].as_str() {
                "path" => inv.path = Some(PathBuf::from(v)),
                "pidfile" => inv.pidfile = Some(PathBuf::from(v)),
                "stdin" => inv.stdin = Some(PathBuf::from(v)),
                "max" => inv.max = v.parse().unwrap_or(inv.max),
                MARKER => {}
                other => inv.unknown.push(other.to_string()),
            }
        }
        inv.max = inv.max.max(64);
        inv
    }
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The log file, reopened on request.
struct Sink {
    path: PathBuf,
    file: File,
}

impl Sink {
    fn open(path: &Path) -> std::io::Result<File> {
        use std::os::unix::fs::OpenOptionsExt;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        // O_NOFOLLOW: a link planted at the log path does not redirect the writes.
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
            .open(path)
    }

    fn write(&mut self, line: &[u8]) {
        if REOPEN.swap(false, Ordering::SeqCst) {
            match Sink::open(&self.path) {
                Ok(f) => self.file = f,
                Err(e) => eprintln!("concord log writer: reopening {}: {e}", self.path.display()),
            }
        }
        if let Err(e) = self.file.write_all(line) {
            eprintln!("concord log writer: writing {}: {e}", self.path.display());
        }
    }
}

/// One CRI log entry.
pub fn entry(stream: &str, partial: bool, content: &[u8]) -> Vec<u8> {
    let ts = crate::containerd::rfc3339_nano(std::time::SystemTime::now());
    let mut line = Vec::with_capacity(content.len() + 48);
    line.extend_from_slice(ts.as_bytes());
    line.push(b' ');
    line.extend_from_slice(stream.as_bytes());
    line.extend_from_slice(if partial { b" P " } else { b" F " });
    line.extend_from_slice(content);
    line.push(b'\n');
    line
}

/// Splits a byte stream into CRI log lines of at most `max` bytes, (partial, content) each: a
/// line per newline (without it), a longer line split into partial entries of `max` bytes, the
/// bytes left when the stream ends a full entry. The log writer and attach's copy into the log
/// both frame with it, chunk by chunk as the bytes arrive.
pub struct Lines {
    pending: Vec<u8>,
    max: usize,
}

impl Lines {
    pub fn new(max: usize) -> Lines {
        Lines {
            pending: Vec::new(),
            max: max.max(1),
        }
    }

    /// Emits every line `data` completes: ended by a newline (full), or `max` bytes long
    /// (partial).
    pub fn push(&mut self, mut data: &[u8], mut emit: impl FnMut(bool, &[u8])) {
        while !data.is_empty() {
            let room = self.max - self.pending.len();
            let window = &data[..room.min(data.len())];
            if let Some(nl) = window.iter().position(|b| *b == b'\n') {
                self.pending.extend_from_slice(&window[..nl]);
                emit(false, &self.pending);
                self.pending.clear();
                data = &data[nl + 1..];
            } else {
                self.pending.extend_from_slice(window);
                data = &data[window.len()..];
                if self.pending.len() >= self.max {
                    emit(true, &self.pending);
                    self.pending.clear();
                }
            }
        }
    }

    /// The stream ended: a last line without a newline is a full entry.
    pub fn finish(&mut self, mut emit: impl FnMut(bool, &[u8])) {
        if !self.pending.is_empty() {
            emit(false, &self.pending);
            self.pending.clear();
        }
    }
}

/// Copies the streams into the sink as CRI entries until each has ended (or failed), in this one
/// thread: a writer per container, hundreds on a dense node, each pays for one stack, not a
/// thread and a malloc arena per stream. Each stream's buffer is memory only as far as reads
/// have filled it (a `BufReader`'s is not zeroed first).
fn pump(streams: [(File, &'static str); 2], max: usize, sink: &mut Sink) {
    let mut streams = streams.map(|(f, stream)| (BufReader::with_capacity(64 * 1024, f), stream));
    let mut lines = [Lines::new(max), Lines::new(max)];
    let mut open = [true, true];
    while open.contains(&true) {
        let ready = match readable(&streams, open) {
            Ok(ready) => ready,
            // SIGUSR1 (reopen) interrupts the wait; the next write reopens the file.
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                eprintln!("concord log writer: poll: {e}");
                [false; 2]
            }
        };
        if ready == [false; 2] {
            break;
        }
        for (i, &is_ready) in ready.iter().enumerate() {
            if !is_ready {
                continue;
            }
            let (reader, stream) = &mut streams[i];
            let mut emit =
                |partial: bool, content: &[u8]| sink.write(&entry(stream, partial, content));
            // The buffer is empty between polls: one read.
            match reader.fill_buf() {
                Ok([]) => open[i] = false,
                Ok(bytes) => {
                    let n = bytes.len();
                    lines[i].push(bytes, &mut emit);
                    reader.consume(n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    eprintln!("concord log writer: reading {stream}: {e}");
                    open[i] = false;
                }
            }
            if !open[i] {
                lines[i].finish(&mut emit);
            }
        }
    }
    for (i, (_, stream)) in streams.iter().enumerate() {
        if open[i] {
            lines[i].finish(|partial, content| sink.write(&entry(stream, partial, content)));
        }
    }
}

/// Which of the open streams have something to read (bytes, their end, or an error).
fn readable(streams: &[(BufReader<File>, &str); 2], open: [bool; 2]) -> nix::Result<[bool; 2]> {
    let mut fds: Vec<PollFd> = streams
        .iter()
        .zip(open)
        .filter(|(_, o)| *o)
        .map(|((r, _), _)| PollFd::new(r.get_ref().as_fd(), PollFlags::POLLIN))
        .collect();
    nix::poll::poll(&mut fds, PollTimeout::NONE)?;
    let mut polled = fds.iter();
    let mut ready = [false; 2];
    for (r, o) in ready.iter_mut().zip(open) {
        if o {
            *r = polled.next().and_then(PollFd::any).unwrap_or(true);
        }
    }
    Ok(ready)
}

/// Runs the log writer with the shim's arguments (key value pairs); answers the exit code.
pub fn run(args: &[String]) -> i32 {
    let Invocation {
        protocol,
        path,
        pidfile,
        stdin,
        max,
        unknown,
    } = Invocation::parse(args);
    if protocol > PROTOCOL || !unknown.is_empty() {
        eprintln!(
            "concord log writer: protocol v{protocol} from a newer concord (this writer speaks \
             v{PROTOCOL}); ignoring {unknown:?}"
        );
    }
    let Some(path) = path else {
        eprintln!("concord log writer: no path");
        return 2;
    };
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        let action = nix::sys::signal::SigAction::new(
            nix::sys::signal::SigHandler::Handler(on_usr1),
            nix::sys::signal::SaFlags::SA_RESTART,
            nix::sys::signal::SigSet::empty(),
        );
        let _ = nix::sys::signal::sigaction(nix::sys::signal::Signal::SIGUSR1, &action);
        // The shim sends SIGTERM once the streams are closed: drain to EOF instead of dying.
        let _ = nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGTERM,
            nix::sys::signal::SigHandler::SigIgn,
        );
    }
    let file = match Sink::open(&path) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("concord log writer: opening {}: {e}", path.display());
            return 1;
        }
    };
    if let Some(p) = &pidfile {
        if let Some(dir) = p.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let _ = std::fs::write(p, std::process::id().to_string());
    }
    // Read-write: the open never blocks, and the FIFO keeps a writer while we run.
    let _stdin = match stdin.map(|p| OpenOptions::new().read(true).write(true).open(&p)) {
        Some(Err(e)) => {
            eprintln!("concord log writer: opening the stdin fifo: {e}");
            return 1;
        }
        held => held,
    };
    let mut sink = Sink { path, file };
    // SAFETY: the shim passes these descriptors (stdout, stderr, ready) and nothing else owns them.
    let (out, err, ready) = unsafe {
        (
            File::from_raw_fd(3),
            File::from_raw_fd(4),
            File::from_raw_fd(5),
        )
    };
    drop(ready); // tells the shim we are ready
    pump([(out, "stdout"), (err, "stderr")], max, &mut sink);
    if let Some(p) = &pidfile {
        let _ = std::fs::remove_file(p);
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_in_the_cri_log_format() {
        let e = String::from_utf8(entry("stdout", false, b"hello")).unwrap();
        let parts: Vec<&str> = e.splitn(4, ' ').collect();
        assert!(parts[0].ends_with('Z') && parts[0].contains('.'), "{e}");
        assert_eq!(&parts[1..], ["stdout", "F", "hello\n"]);
    }

    /// What the writer writes to its log for `stdout` and `stderr` (each a whole stream), as
    /// (stream, tag, content) per entry.
    fn written(stdout: &[u8], stderr: &[u8], max: usize) -> Vec<(String, String, String)> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.log");
        let (out, err) = (dir.path().join("out"), dir.path().join("err"));
        std::fs::write(&out, stdout).unwrap();
        std::fs::write(&err, stderr).unwrap();
        let mut sink = Sink {
            path: path.clone(),
            file: Sink::open(&path).unwrap(),
        };
        let streams = [
            (File::open(&out).unwrap(), "stdout"),
            (File::open(&err).unwrap(), "stderr"),
        ];
        pump(streams, max, &mut sink);
        std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| {
                let p: Vec<&str> = l.splitn(4, ' ').collect();
                (p[1].to_string(), p[2].to_string(), p[3].to_string())
            })
            .collect()
    }

    #[test]
    fn long_lines_split_into_partial_entries_and_eof_ends_a_full_one() {
        let e = |stream: &str, tag: &str, content: &str| {
            (stream.to_string(), tag.to_string(), content.to_string())
        };
        let mut got = written(
            b"0123456789abcdefghij-tail\nshort\nno-newline",
            b"oops\n",
            64,
        );
        got.sort();
        assert_eq!(
            got,
            [
                e("stderr", "F", "oops"),
                e("stdout", "F", "0123456789abcdefghij-tail"),
                e("stdout", "F", "no-newline"),
                e("stdout", "F", "short"),
            ]
        );
        let tags: Vec<String> = written(&[b'x'; 150], b"", 64)
            .into_iter()
            .map(|(_, tag, _)| tag)
            .collect();
        assert_eq!(tags, ["P", "P", "F"]);
    }

    #[test]
    fn both_pipes_are_copied_as_they_arrive_until_each_ends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.log");
        let mut sink = Sink {
            path: path.clone(),
            file: Sink::open(&path).unwrap(),
        };
        let (out_r, out_w) = nix::unistd::pipe().unwrap();
        let (err_r, err_w) = nix::unistd::pipe().unwrap();
        let feeder = std::thread::spawn(move || {
            let (mut out, mut err) = (File::from(out_w), File::from(err_w));
            for i in 0..50 {
                writeln!(out, "out {i}").unwrap();
                write!(err, "err {i}").unwrap();
                err.write_all(b"\n").unwrap();
            }
            drop(out);
            // stderr goes on alone after stdout ended, and ends without a newline.
            err.write_all(b"last words").unwrap();
        });
        pump(
            [(File::from(out_r), "stdout"), (File::from(err_r), "stderr")],
            MAX_LINE,
            &mut sink,
        );
        feeder.join().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let of = |stream: &str| -> Vec<String> {
            text.lines()
                .filter(|l| l.split(' ').nth(1) == Some(stream))
                .map(|l| l.splitn(4, ' ').nth(3).unwrap().to_string())
                .collect()
        };
        assert_eq!(
            of("stdout"),
            (0..50).map(|i| format!("out {i}")).collect::<Vec<_>>()
        );
        let mut want: Vec<String> = (0..50).map(|i| format!("err {i}")).collect();
        want.push("last words".into());
        assert_eq!(of("stderr"), want);
    }

    fn split(chunks: &[&[u8]], max: usize) -> Vec<(bool, String)> {
        let mut out = Vec::new();
        let mut l = Lines::new(max);
        for c in chunks {
            l.push(c, |p, s| {
                out.push((p, String::from_utf8_lossy(s).into_owned()))
            });
        }
        l.finish(|p, s| out.push((p, String::from_utf8_lossy(s).into_owned())));
        out
    }

    #[test]
    fn lines_are_assembled_across_chunks_and_split_at_max() {
        let full = |s: &str| (false, s.to_string());
        let part = |s: &str| (true, s.to_string());
        assert_eq!(
            split(&[b"hel", b"lo\nwor", b"ld\n"], 16),
            vec![full("hello"), full("world")]
        );
        assert_eq!(
            split(&[b"abcdefgh\n"], 4),
            vec![part("abcd"), part("efgh"), full("")]
        );
        assert_eq!(split(&[b"abcdef"], 4), vec![part("abcd"), full("ef")]);
        assert_eq!(split(&[b"\n\n"], 4), vec![full(""), full("")]);
        assert_eq!(split(&[b"hello"], 16), vec![full("hello")]);
        assert!(split(&[], 16).is_empty());
        // A zero limit is one byte, not a loop that never ends.
        assert_eq!(split(&[b"ab"], 0), vec![part("a"), part("b")]);
    }

    /// The arguments the shim hands the writer for a URI that concord 0aa31ca (protocol v1)
    /// formed: `binary://<writer>?concord-log-writer=1&path=..&pidfile=..&max=..&stdin=..`.
    fn v1_arguments() -> Vec<String> {
        [
            "concord-log-writer",
            "1",
            "path",
            "/var/log/pods/ns_p_u/c/0.log",
            "pidfile",
            "/var/lib/concord/containers/abc/log-writer.pid",
            "max",
            "16384",
            "stdin",
            "/var/lib/concord/containers/abc/stdin",
        ]
        .map(String::from)
        .to_vec()
    }

    #[test]
    fn a_v1_invocation_parses_as_v1() {
        let inv = Invocation::parse(&v1_arguments());
        assert_eq!(
            inv,
            Invocation {
                protocol: 1,
                path: Some("/var/log/pods/ns_p_u/c/0.log".into()),
                pidfile: Some("/var/lib/concord/containers/abc/log-writer.pid".into()),
                stdin: Some("/var/lib/concord/containers/abc/stdin".into()),
                max: 16384,
                unknown: vec![],
            }
        );
    }

    #[test]
    fn a_newer_invocation_runs_with_the_keys_this_writer_knows() {
        let mut args = v1_arguments();
        args[1] = "7".into();
        args.extend(["rotate".to_string(), "10Mi".to_string()]);
        let inv = Invocation::parse(&args);
        assert_eq!(inv.protocol, 7);
        assert_eq!(inv.unknown, ["rotate"]);
        assert_eq!(inv.path, Invocation::parse(&v1_arguments()).path);
        // A bare marker (no version) is v1; not an invocation at all: None.
        assert_eq!(protocol(&[MARKER.into()]), Some(1));
        assert_eq!(protocol(&["path".into(), "/x".into()]), None);
    }

    #[test]
    fn arguments_are_decoded_pairs() {
        assert!(is_invocation(&[
            "path".into(),
            "/x".into(),
            MARKER.into(),
            "1".into()
        ]));
        assert!(!is_invocation(&["pull".into(), "busybox".into()]));
        assert_eq!(decode("/a%20b%26c"), "/a b&c");
    }
}
