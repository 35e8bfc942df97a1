//! concord's container log writer on its own: the program containerd's shim runs for every
//! container's stdio (see `concord::logwriter`). A small binary of its own, so each of the
//! hundreds of log writers on a dense node maps little private memory (the daemon's binary
//! dirties about 0.8 MiB of relocated data per process), and so upgrading the daemon's binary
//! never meets a running log writer.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !concord::logwriter::is_invocation(&args) {
        eprintln!("concord-log-writer: run by containerd's shim for a container's logs (binary:// logging); not a command");
        return ExitCode::from(2);
    }
    ExitCode::from(concord::logwriter::run(&args) as u8)
}
