//! The command line: the flags (every setting, see `concord::config`), loading the config they
//! override, and the subcommands other than running the daemon.

mod adopt;
mod client;
mod docs;
mod inspect;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use concord::config::{doc, Config, DEFAULT_CONFIG_PATH};

pub use client::Target;

#[derive(Parser)]
#[command(
    name = "concord",
    version,
    args_override_self = true,
    about = "A Kubernetes CRI runtime on containerd, built as an event-sourced reconciliation controller",
    long_about = "Serves the CRI v1 API on a unix socket for kubelet (--container-runtime-endpoint). \
Settings come from the config file (default /etc/concord/config.toml; `concord config default` prints \
every setting) and are overridden by these flags. The subcommands other than `config show` do not \
need the config: a client command only looks up the socket in it (unless --socket names it)."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Config file (TOML). A missing file is fine unless this flag names it.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// The flags of every command that talks to a running concord.
#[derive(Args)]
struct ClientArgs {
    /// concord's CRI socket (default: `listen` of the config file when that file is readable,
    /// else /run/concord/concord.sock)
    #[arg(long, short = 'r', alias = "listen", value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Give up after this long (e.g. 30s, 500ms, 2m; a bare number is seconds); default: no limit
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    timeout: Option<Duration>,
}

/// How a listing prints.
#[derive(Args)]
pub struct ListArgs {
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    output: output::Format,
    /// Only the ids, one per line.
    #[arg(long, short = 'q')]
    quiet: bool,
}

impl ListArgs {
    fn listing(&self) -> client::Listing {
        client::Listing {
            format: self.output,
            quiet: self.quiet,
        }
    }
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
    Images {
        #[command(flatten)]
        list: ListArgs,
    },
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
    Pods {
        #[command(flatten)]
        list: ListArgs,
    },
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
    Containers {
        #[command(flatten)]
        list: ListArgs,
    },
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
    /// Show what a running concord's reconcile loop manages: a table of every object (desired
    /// and observed generation, retries, last error) and the journal; for the objects QUERY
    /// names, why they are as they are: desired vs converged, the pending retry, the last error
    /// and its age, the last reconcile's steps, the pod's containers and the recent history.
    Inspect(inspect::Query),
    /// Write the man page, the shell completions and metrics.md into DIR (for packaging).
    #[command(hide = true)]
    GenerateDocs { dir: PathBuf },
}

/// The subcommands that do not talk to a running concord (no client flags).
const LOCAL: [&str; 2] = ["config", "generate-docs"];

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

/// What the command line asks for.
pub enum Invocation {
    /// Run the daemon with this effective config; SIGHUP reads it again with the loader.
    Daemon(Box<Config>, concord::daemon::reload::LoadConfig),
    /// Print a config file or table (needs no config, except `config show`).
    Config(ConfigCommand, Option<Box<Config>>),
    /// Write the man page and the completions into this directory.
    Docs(PathBuf),
    /// Talk to the running concord at this target.
    Client(Command, Target),
    /// `concord adopt`: containerd's CRI leftovers removed with this config's containerd and CNI
    /// (`reverse`: the running concord's pods removed through the target).
    Adopt {
        reverse: bool,
        config: Box<Config>,
        target: Target,
    },
}

/// The command line with the daemon's flags on the top-level command only (a subcommand's help
/// lists its own flags) and the client flags on every client subcommand.
pub fn command() -> clap::Command {
    let mut cmd = doc::with_flags(Cli::command());
    let clients: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .filter(|name| !LOCAL.contains(&name.as_str()))
        .collect();
    for name in clients {
        cmd = cmd.mut_subcommand(name, ClientArgs::augment_args);
    }
    cmd
}

/// The command line parsed. The daemon and `config show` get the effective config (defaults <
/// config file < flags), validated; the other subcommands do not read it (a client only looks up
/// its socket there). A bad flag or config is reported here, and its exit code (2) returned.
pub fn parse() -> Result<Invocation, ExitCode> {
    let matches = command().try_get_matches().map_err(flag_error)?;
    let cli = Cli::from_arg_matches(&matches).map_err(flag_error)?;
    let (path, required) = match &cli.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
    };
    let effective = || {
        load_effective(&path, required, &matches).map_err(|e| {
            eprintln!("concord: {e}");
            ExitCode::from(2)
        })
    };
    match cli.command {
        None => {
            let config = effective()?;
            let (path, matches) = (path.clone(), matches.clone());
            let load =
                move || load_effective(&path, required, &matches).map_err(|e| format!("{e:#}"));
            Ok(Invocation::Daemon(Box::new(config), Box::new(load)))
        }
        Some(Command::Config {
            what: what @ ConfigCommand::Show,
        }) => Ok(Invocation::Config(what, Some(Box::new(effective()?)))),
        Some(Command::Config { what }) => Ok(Invocation::Config(what, None)),
        Some(Command::GenerateDocs { dir }) => Ok(Invocation::Docs(dir)),
        Some(client) => {
            let sub = matches.subcommand().map(|(_, m)| m).unwrap_or(&matches);
            let args = ClientArgs::from_arg_matches(sub).map_err(flag_error)?;
            let socket = args
                .socket
                .or_else(|| matches.get_one::<PathBuf>("listen").cloned())
                .unwrap_or_else(|| configured_socket(&path, required));
            let target = Target {
                socket,
                timeout: args.timeout,
            };
            match client {
                Command::Adopt { reverse } => Ok(Invocation::Adopt {
                    reverse,
                    config: Box::new(effective()?),
                    target,
                }),
                client => Ok(Invocation::Client(client, target)),
            }
        }
    }
}

/// The effective config: defaults < the config file and its drop-ins < flags, validated.
fn load_effective(
    path: &std::path::Path,
    required: bool,
    matches: &clap::ArgMatches,
) -> anyhow::Result<Config> {
    let mut c = Config::load(path, required)?;
    c.update_from_arg_matches(matches)?;
    c.validate()?;
    Ok(c)
}

/// The socket the config file names; where the file is missing or broken, the default socket
/// (a client command must work while the daemon's config does not).
fn configured_socket(path: &std::path::Path, required: bool) -> PathBuf {
    match Config::load(path, required) {
        Ok(c) => c.listen,
        Err(e) => {
            let listen = Config::default().listen;
            eprintln!(
                "concord: ignoring the config ({e}); using {}",
                listen.display()
            );
            listen
        }
    }
}

/// A duration flag: `30s`, `500ms`, `2m`, `1h`, or a bare number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 30s, 500ms, 2m)"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m, h)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
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

/// Prints a config file or table.
pub fn run_config(what: ConfigCommand, config: Option<&Config>) -> ExitCode {
    let text = match (what, config) {
        (ConfigCommand::Default, _) => Ok(doc::default_toml()),
        (ConfigCommand::ReadmeTable, _) => Ok(doc::readme_table()),
        (ConfigCommand::ImportContainerd { file }, _) => import_containerd(&file),
        (ConfigCommand::Show, c) => {
            toml::to_string(&c.cloned().unwrap_or_default()).map_err(anyhow::Error::from)
        }
    };
    report(false, text.map(|text| print!("{text}")))
}

/// `concord adopt` (within the client's `--timeout`, if any).
pub fn run_adopt(reverse: bool, config: &Config, target: &Target) -> ExitCode {
    let work = async {
        match reverse {
            false => adopt::forward(config).await,
            true => adopt::reverse(target).await,
        }
    };
    report(false, within(target, work))
}

/// Writes the man page and the completions.
pub fn run_docs(dir: &std::path::Path) -> ExitCode {
    report(false, docs::generate(dir))
}

/// Runs a client command, within its timeout.
pub fn run(command: Command, target: &Target) -> ExitCode {
    report(false, within(target, run_client(command, target)))
}

/// Runs `work` to its end or to the client's `--timeout`.
fn within(
    target: &Target,
    work: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        match target.timeout {
            Some(limit) => tokio::time::timeout(limit, work)
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out after {limit:?}"))),
            None => work.await,
        }
    })
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
async fn run_client(command: Command, config: &Target) -> anyhow::Result<()> {
    match command {
        Command::Config { .. } | Command::GenerateDocs { .. } => Ok(()),
        Command::Load { file } => client::load(config, file).await,
        Command::Pull { image } => client::pull(config, image).await,
        Command::Images { list } => client::list_images(config, list.listing()).await,
        Command::Status => client::status(config).await,
        Command::RunPod {
            name,
            publish,
            handler,
        } => client::run_pod(config, name, publish, handler).await,
        Command::Pods { list } => client::pods(config, list.listing()).await,
        Command::RunContainer {
            pod,
            name,
            image,
            command,
        } => client::run_container(config, pod, name, image, command).await,
        Command::Containers { list } => client::containers(config, list.listing()).await,
        Command::StopPod { id } => client::pod_op(config, id, false).await,
        Command::RemovePod { id } => client::pod_op(config, id, true).await,
        Command::Inspect(q) => inspect::inspect(config, q).await,
        Command::Adopt { .. } => Ok(()),
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
    few_malloc_arenas();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))
}

/// At most two glibc malloc arenas, set before the runtime starts its threads. By default glibc gives each
/// thread that allocates an arena of its own (up to 8 per core), and the runtime's worker and
/// blocking threads then each hold partly used heaps: RSS that nothing uses. Two arenas keep
/// the workers' allocations apart with a fraction of that.
fn few_malloc_arenas() {
    // SAFETY: mallopt only sets a parameter of the allocator, under glibc's own lock (a thread
    // started earlier, such as the log's writer, keeps its arena; it counts towards the two).
    #[cfg(target_env = "gnu")]
    unsafe {
        nix::libc::mallopt(nix::libc::M_ARENA_MAX, 2);
    }
}
