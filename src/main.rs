//! The concord command: runs the daemon (default), prints the default config, or talks to a
//! running daemon (`cli`).

mod cli;

use std::process::ExitCode;

use concord::config::Config;
use concord::daemon::reload::Reload;
use concord::daemon::{self, logging, process};

fn main() -> ExitCode {
    // containerd's shim runs concord as a container's log writer with key-value arguments.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if concord::logwriter::is_invocation(&args) {
        return ExitCode::from(concord::logwriter::run(&args) as u8);
    }
    let (config, load) = match cli::parse() {
        Ok(cli::Invocation::Daemon(config, load)) => (*config, load),
        Ok(cli::Invocation::Config(what, config)) => {
            return cli::run_config(what, config.as_deref())
        }
        Ok(cli::Invocation::Docs(dir)) => return cli::run_docs(&dir),
        Ok(cli::Invocation::Client(command, target)) => return cli::run(command, &target),
        Ok(cli::Invocation::Adopt {
            reverse,
            config,
            target,
        }) => return cli::run_adopt(reverse, &config, &target),
        Err(code) => return code,
    };
    let logging = match logging::init(&config) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("concord: {e}");
            return ExitCode::from(2);
        }
    };
    let reload = Reload { load, logging };
    cli::report(
        true,
        place_process(&config).and_then(|()| {
            let rt = cli::runtime()?;
            rt.block_on(daemon::run(config, reload))
                .map_err(anyhow::Error::from)
        }),
    )
}

/// Cgroup and oom_score_adj, before any thread starts.
fn place_process(config: &Config) -> anyhow::Result<()> {
    if !config.cgroup.is_empty() {
        process::join_cgroup(&config.cgroup, std::path::Path::new("/sys/fs/cgroup"))?;
        tracing::info!(cgroup = %config.cgroup, "joined cgroup");
    }
    if let Some(adj) = config.oom_score_adj {
        process::set_oom_score_adj(adj)?;
        tracing::info!(oom_score_adj = adj, "set oom_score_adj");
    }
    Ok(())
}
