//! The command line: the flags (every setting, see `concord::config`), loading the config they
//! override, and the subcommands other than running the daemon.

mod adopt;
mod client;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use concord::config::{doc, Config, DEFAULT_CONFIG_PATH};

#[derive(Parser)]
#[command(
    name = "concord",
    version,
    args_override_self = true,
    about = "A Kubernetes CRI runtime on containerd, built as an event-sourced reconciliation controller",
    long_about = "Serves the CRI v1 API on a unix socket for kubelet (--container-runtime-endpoint). \
Settings come from the config file (default /etc/concord/config.toml; `concord config default` prints \
every setting) and are overridden by these flags."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Config file (TOML). A missing file is fine unless this flag names it.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// What to do instead of running the daemon.
#[derive(Subcommand)]
pub enum Command {
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        what: ConfigCommand,
    },
    /// Ask a running concord for its Version and Status (CRI), as kubelet does.
    Status,
    /// Import an image archive (OCI layout or docker save tar, plain or gzip) into a running
    /// concord; the path is read by the daemon.
    Load {
        /// The archive.
        file: PathBuf,
    },
    /// Pull an image through a running concord (CRI PullImage).
    Pull {
        /// Image reference.
        image: String,
    },
    /// List the images a running concord knows (CRI ListImages).
    Images,
    /// Run a pod sandbox through a running concord (CRI RunPodSandbox); prints its id.
    RunPod {
        /// Pod name (namespace "default", uid "<name>-uid").
        name: String,
        /// Publish a port: HOST:CONTAINER (TCP), repeatable.
        #[arg(long = "publish", value_name = "HOST:CONTAINER")]
        publish: Vec<String>,
        /// RuntimeClass handler ("" is the default).
        #[arg(long, default_value = "")]
        handler: String,
    },
    /// List pod sandboxes (CRI ListPodSandbox) with state and address.
    Pods,
    /// Create and start a container in a pod (CRI CreateContainer + StartContainer); prints its
    /// id. Its log goes to <pod log directory>/<name>.log.
    RunContainer {
        /// Pod sandbox id (or a unique prefix).
        pod: String,
        /// Container name.
        name: String,
        /// Image (present on the node).
        image: String,
        /// Command and arguments (default: the image's).
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// List containers (CRI ListContainers) with state.
    Containers,
    /// Stop a pod sandbox (CRI StopPodSandbox).
    StopPod { id: String },
    /// Remove a pod sandbox (CRI RemovePodSandbox).
    RemovePod { id: String },
    /// Take a node over from containerd's CRI plugin (kubelet stopped, node drained): remove the
    /// sandboxes and containers it left in the containerd namespace (tasks killed, CNI DEL, netns
    /// and snapshots removed). concord's own objects are never touched. With --reverse, the way
    /// back: stop and remove every pod of the running concord.
    Adopt {
        /// Remove concord's pods instead (through the running concord), to hand the node back to
        /// containerd's CRI.
        #[arg(long)]
        reverse: bool,
    },
    /// Show what a running concord's reconcile loop manages: desired and observed state,
    /// pending reconciles, last errors, and the journal.
    Inspect {
        /// Only objects of this kind (runtime_config, sandbox, container).
        #[arg(long, default_value = "")]
        kind: String,
    },
}

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Print the default config file, every setting with a comment.
    Default,
    /// Print the effective config (file plus flags) as TOML.
    Show,
    /// Print the README's settings table (generated from the same docs as `config default`).
    ReadmeTable,
    /// Translate a containerd config.toml's CRI settings (1.x `version = 2` or 2.x `version = 3`)
    /// into a concord config on stdout; every key not translated is named on stderr.
    ImportContainerd {
        /// containerd's config file (e.g. /etc/containerd/config.toml).
        file: PathBuf,
    },
}

/// The command line parsed: the subcommand (none: run the daemon) and the effective config
/// (defaults < config file < flags), validated. A bad flag or config is reported here, and its
/// exit code (2) returned.
pub fn parse() -> Result<(Option<Command>, Config), ExitCode> {
    let matches = doc::with_flags(Cli::command())
        .try_get_matches()
        .map_err(flag_error)?;
    let cli = Cli::from_arg_matches(&matches).map_err(flag_error)?;
    let (path, required) = match &cli.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
    };
    let config = Config::load(&path, required)
        .map_err(anyhow::Error::from)
        .and_then(|mut c| {
            c.update_from_arg_matches(&matches)?;
            c.validate()?;
            Ok(c)
        })
        .map_err(|e| {
            eprintln!("concord: {e}");
            ExitCode::from(2)
        })?;
    Ok((cli.command, config))
}

/// Prints a command-line error; a bad setting value is named by its config key, as the file's
/// are. `--help` and `--version` land here too (exit 0).
fn flag_error(e: clap::Error) -> ExitCode {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let context = |kind| match e.get(kind) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        Some(ContextValue::Strings(v)) => Some(format!("expected one of {}", v.join(", "))),
        _ => None,
    };
    let flag = context(ContextKind::InvalidArg);
    let key = flag
        .as_deref()
        .and_then(|f| f.split([' ', '=']).next())
        .and_then(doc::flag_setting);
    match (e.kind(), key) {
        (ErrorKind::ValueValidation | ErrorKind::InvalidValue, Some(key)) => {
            let reason = match e.kind() {
                ErrorKind::InvalidValue => context(ContextKind::ValidValue),
                _ => std::error::Error::source(&e).map(|s| s.to_string()),
            };
            eprintln!(
                "concord: invalid setting {key} = {:?} ({}): {}",
                context(ContextKind::InvalidValue).unwrap_or_default(),
                flag.unwrap_or_default(),
                reason.unwrap_or_default(),
            );
            ExitCode::from(2)
        }
        _ => {
            let _ = e.print();
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

/// Runs a subcommand.
pub fn run(command: Command, config: &Config) -> ExitCode {
    let printed = match command {
        Command::Config { what } => match what {
            ConfigCommand::Default => Ok(doc::default_toml()),
            ConfigCommand::ReadmeTable => Ok(doc::readme_table()),
            ConfigCommand::Show => toml::to_string(config).map_err(anyhow::Error::from),
            ConfigCommand::ImportContainerd { file } => import_containerd(&file),
        }
        .map(|text| print!("{text}")),
        client => runtime().and_then(|rt| rt.block_on(run_client(client, config))),
    };
    report(false, printed)
}

/// `concord config import-containerd`: the imported config; the keys left behind go to stderr.
fn import_containerd(file: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
    let imported = concord::config::import::import_containerd(file, &text)?;
    for (key, value) in &imported.untranslated {
        eprintln!("not translated: {key} = {value}");
    }
    Ok(imported.toml)
}

/// A command that talks to a running concord.
async fn run_client(command: Command, config: &Config) -> anyhow::Result<()> {
    match command {
        Command::Config { .. } => Ok(()),
        Command::Load { file } => client::load(config, file).await,
        Command::Pull { image } => client::pull(config, image).await,
        Command::Images => client::list_images(config).await,
        Command::Status => client::status(config).await,
        Command::RunPod {
            name,
            publish,
            handler,
        } => client::run_pod(config, name, publish, handler).await,
        Command::Pods => client::pods(config).await,
        Command::RunContainer {
            pod,
            name,
            image,
            command,
        } => client::run_container(config, pod, name, image, command).await,
        Command::Containers => client::containers(config).await,
        Command::StopPod { id } => client::pod_op(config, id, false).await,
        Command::RemovePod { id } => client::pod_op(config, id, true).await,
        Command::Inspect { kind } => client::inspect(config, kind).await,
        Command::Adopt { reverse: false } => adopt::forward(config).await,
        Command::Adopt { reverse: true } => adopt::reverse(config).await,
    }
}

/// Exit code for a result; the error goes to the log once logging is up, else to stderr.
pub fn report(logging: bool, result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if logging {
                tracing::error!("{e}");
            } else {
                eprintln!("concord: {e}");
            }
            ExitCode::FAILURE
        }
    }
}

/// The async runtime of the daemon and of the client commands.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))
}
