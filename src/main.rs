//! The concord command: runs the daemon (default), prints the default config, or talks to a
//! running daemon (`cli`).

mod cli;

use std::process::ExitCode;

use concord::config::{Config, LogFormat};
use concord::daemon::{self, process};

fn main() -> ExitCode {
    // containerd's shim runs concord as a container's log writer with key-value arguments.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if concord::logwriter::is_invocation(&args) {
        return ExitCode::from(concord::logwriter::run(&args) as u8);
    }
    let config = match cli::parse() {
        Ok(cli::Invocation::Daemon(config)) => *config,
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
    init_logging(&config);
    cli::report(
        true,
        place_process(&config).and_then(|()| {
            let rt = cli::runtime()?;
            rt.block_on(daemon::run(config))
                .map_err(anyhow::Error::from)
        }),
    )
}

fn init_logging(config: &Config) {
    // A plain debug/trace level is for concord's own logs; its libraries stay at info.
    let directive = match config.log_level.as_str() {
        l @ ("debug" | "trace") => format!("info,concord={l}"),
        other => other.to_string(),
    };
    let filter = tracing_subscriber::EnvFilter::new(directive);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
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
