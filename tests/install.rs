//! What an installed concord meets on a node: systemd's readiness protocol, client commands run
//! while the daemon's config is broken, the help of a client command, and log writers started by
//! an older concord (protocol v1) still running after an upgrade.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::Daemon;

fn concord() -> Command {
    Command::new(env!("CARGO_BIN_EXE_concord"))
}

fn output(c: &mut Command) -> (i32, String, String) {
    let out = c.stdin(Stdio::null()).output().expect("run concord");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Waits for one datagram on `rx` (at most 20 s).
fn recv(rx: &UnixDatagram) -> String {
    rx.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut buf = [0u8; 512];
    let n = rx.recv(&mut buf).expect("a notify datagram");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_is_notified_once_the_socket_serves_and_stopping_on_sigterm() {
    let mut d = Daemon::new();
    let notify = d.dir.join("notify.sock");
    let rx = UnixDatagram::bind(&notify).unwrap();
    d.env
        .push(("NOTIFY_SOCKET".into(), notify.display().to_string()));
    d.start().await;
    let ready = recv(&rx);
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    assert!(ready.contains(&d.socket.display().to_string()), "{ready:?}");
    // READY=1 came after the socket answered (start() returned once Version did); the socket is there.
    assert!(d.socket.exists());
    let status = d.terminate().await;
    assert!(status.success(), "{status}");
    assert_eq!(recv(&rx), "STOPPING=1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_commands_work_while_the_config_file_is_broken() {
    let mut d = Daemon::new();
    d.start().await;
    let broken = d.dir.join("broken.toml");
    std::fs::write(&broken, "listen = [this is not toml\n").unwrap();
    let config = format!("--config={}", broken.display());
    let socket = d.socket.display().to_string();

    // The daemon refuses the file, naming it (exit 2).
    let (code, _, err) = output(concord().arg(&config));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("broken.toml"), "{err}");

    // Client commands do not need it: --socket and -r name the daemon; --timeout bounds them.
    let (code, out, err) = output(concord().args(["status", &config, "--socket", &socket]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"runtime_name\": \"concord\""), "{out}");
    let (code, out, err) = output(concord().args([
        &config,
        "inspect",
        "-r",
        &socket,
        "--timeout=20s",
        "-o",
        "json",
    ]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"journal\""), "{out}");
    let (code, _, err) = output(concord().args(["pods", "-r", &socket, &config]));
    assert_eq!(code, 0, "{err}");
    // The daemon's own flag before the subcommand names the socket too (scripts use it).
    let (code, _, err) = output(concord().args([&format!("--listen={socket}"), "images", &config]));
    assert_eq!(code, 0, "{err}");
    // Without --socket a broken file falls back to the default socket, saying so.
    let (code, _, err) = output(concord().args(["status", &config, "--timeout=5s"]));
    assert_ne!(code, 0);
    assert!(
        err.contains("ignoring the config") && err.contains("/run/concord/concord.sock"),
        "{err}"
    );
    // A file that parses gives its socket.
    let good = d.dir.join("good.toml");
    std::fs::write(&good, format!("listen = {socket:?}\n")).unwrap();
    let (code, _, err) =
        output(concord().args(["status", &format!("--config={}", good.display())]));
    assert_eq!(code, 0, "{err}");

    // config default needs no config; config show does (it prints the effective one).
    let (code, out, err) = output(concord().args([&config, "config", "default"]));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("sandbox_image = \"registry.k8s.io/pause:3.10.1\""),
        "{out}"
    );
    let (code, _, err) = output(concord().args(["config", "show", &config]));
    assert_eq!(code, 2, "{err}");

    // A bad timeout is a flag error; a daemon that does not answer in time is a clear error.
    let (code, _, err) = output(concord().args(["status", "-r", &socket, "--timeout=soon"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--timeout"), "{err}");
    let silent = d.dir.join("silent.sock");
    let _held = std::os::unix::net::UnixListener::bind(&silent).unwrap();
    let (code, _, err) = output(concord().args([
        "status",
        "-r",
        &silent.display().to_string(),
        "--timeout=300ms",
    ]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("timed out after 300ms"), "{err}");
}

#[test]
fn a_client_command_lists_its_own_flags_not_the_daemons() {
    let (code, help, err) = output(concord().args(["status", "--help"]));
    assert_eq!(code, 0, "{err}");
    for flag in ["--socket", "-r", "--timeout", "--config"] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
    for daemon in [
        "--containerd-address",
        "--state-dir",
        "--reconcile-workers",
        "--listen",
    ] {
        assert!(!help.contains(daemon), "{daemon} listed in:\n{help}");
    }
    let (_, help, _) = output(concord().args(["config", "default", "--help"]));
    assert!(!help.contains("--containerd-address"), "{help}");
    // The daemon's help still has every setting.
    let (_, help, _) = output(concord().arg("--help"));
    assert!(
        help.contains("--containerd-address") && help.contains("--listen"),
        "{help}"
    );
}

/// A log writer started with the arguments a v1 concord (0aa31ca) had the shim pass: the writer
/// of this build runs it, and this concord recognises it as a log writer (for ReopenContainerLog).
#[test]
fn a_v1_log_writer_invocation_runs_and_is_recognised() {
    use nix::fcntl::OFlag;
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;

    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("pods/ns_p_uid/c/0.log");
    let pidfile = dir.path().join("containers/abc/log-writer.pid");
    let (out_r, out_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
    let (err_r, err_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
    let (ready_r, ready_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
    let fds = [out_r.as_raw_fd(), err_r.as_raw_fd(), ready_w.as_raw_fd()];
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_concord-log-writer"));
    cmd.args(["concord-log-writer", "1", "path"])
        .arg(log.display().to_string().replace(' ', "%20"))
        .arg("pidfile")
        .arg(&pidfile)
        .args(["max", "16384"]);
    // SAFETY: only fcntl and dup2 between fork and exec. Each fd is first copied above 64, so
    // one whose number is 3, 4 or 5 is not overwritten before it is moved there (the copies
    // close at exec).
    unsafe {
        cmd.pre_exec(move || {
            let mut high = [0; 3];
            for (h, fd) in high.iter_mut().zip(fds) {
                *h = nix::libc::fcntl(fd, nix::libc::F_DUPFD_CLOEXEC, 64);
                if *h < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (target, fd) in (3..).zip(high) {
                if nix::libc::dup2(fd, target) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    drop((out_r, err_r, ready_w));
    // Ready: the writer closed fd 5 (after writing its pid file).
    let mut ready = Vec::new();
    std::fs::File::from(ready_r)
        .read_to_end(&mut ready)
        .unwrap();
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(pid, child.id());
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    assert_eq!(concord::logwriter::protocol(&args[1..]), Some(1));
    assert!(concord::logwriter::is_invocation(&args[1..]));

    std::fs::File::from(out_w).write_all(b"one\ntwo\n").unwrap();
    std::fs::File::from(err_w).write_all(b"oops\n").unwrap();
    assert!(child.wait().unwrap().success());
    let text = std::fs::read_to_string(&log).unwrap();
    let mut entries: Vec<(String, String)> = text
        .lines()
        .map(|l| {
            let p: Vec<&str> = l.splitn(4, ' ').collect();
            (p[1].to_string(), format!("{} {}", p[2], p[3]))
        })
        .collect();
    entries.sort();
    assert_eq!(
        entries,
        [
            ("stderr".to_string(), "F oops".to_string()),
            ("stdout".to_string(), "F one".to_string()),
            ("stdout".to_string(), "F two".to_string()),
        ]
    );
    assert!(!pidfile.exists(), "the pid file goes with the writer");
}
