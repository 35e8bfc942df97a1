//! systemd's readiness protocol (sd_notify(3)), by hand: one datagram of `KEY=VALUE` lines to
//! the unix socket `$NOTIFY_SOCKET` names (a path, or an abstract socket spelled `@name`). With
//! `Type=notify` systemd holds back the units ordered after concord (kubelet) until READY=1.

use std::ffi::OsStr;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Tells the service manager `state` (e.g. "READY=1"); answers whether there was one to tell
/// (no `$NOTIFY_SOCKET`: not run by systemd, nothing sent).
pub fn notify(state: &str) -> io::Result<bool> {
    match std::env::var_os("NOTIFY_SOCKET") {
        Some(socket) if !socket.is_empty() => send(&socket, state).map(|()| true),
        _ => Ok(false),
    }
}

/// Sends `state` to the notify socket `socket`.
pub fn send(socket: &OsStr, state: &str) -> io::Result<()> {
    let addr = address(socket)?;
    let sock = UnixDatagram::unbound()?;
    let sent = sock.send_to_addr(state.as_bytes(), &addr)?;
    if sent != state.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("notify socket took {sent} of {} bytes", state.len()),
        ));
    }
    Ok(())
}

/// `@name` is an abstract socket, `/path` a file; anything else is refused (as sd_notify does).
fn address(socket: &OsStr) -> io::Result<SocketAddr> {
    match socket.as_bytes() {
        [b'@', name @ ..] => SocketAddr::from_abstract_name(name),
        [b'/', ..] => SocketAddr::from_pathname(socket),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("NOTIFY_SOCKET={socket:?} is neither an absolute path nor @abstract"),
        )),
    }
}

/// [`notify`], a failure logged (a service manager that cannot be told is not a reason to stop).
pub fn tell(state: &str) {
    match notify(state) {
        Ok(true) => tracing::debug!(state, "told the service manager"),
        Ok(false) => {}
        Err(e) => tracing::warn!(state, error = %e, "cannot notify the service manager"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_datagram_reaches_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        send(path.as_os_str(), "READY=1\nSTATUS=serving").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=serving");
    }

    #[test]
    fn a_datagram_reaches_an_abstract_socket() {
        let name = format!("concord-notify-test-{}", std::process::id());
        let rx = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
        send(OsStr::new(&format!("@{name}")), "STOPPING=1").unwrap();
        let mut buf = [0u8; 16];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }

    #[test]
    fn a_relative_or_missing_socket_is_an_error() {
        assert!(send(OsStr::new("relative/notify"), "READY=1").is_err());
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("gone");
        assert!(send(gone.as_os_str(), "READY=1").is_err());
    }
}
