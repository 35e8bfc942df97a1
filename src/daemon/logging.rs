//! concord's own log: its filter (`log_level`, or RUST_LOG when set), its format (text, json or
//! journald) and the handle a SIGHUP changes the level through; beside it, with a filter of its
//! own, the OTLP span layer when `tracing.otlp_endpoint` is set ([`super::otlp`]).

use std::sync::Arc;

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

use super::otlp::{Exporter, OtlpLayer};
use crate::config::{Config, LogFormat};
use crate::metrics::Metrics;

/// journald's socket: tracing-journald sends there and nowhere else.
pub const JOURNALD_SOCKET: &str = "/run/systemd/journal/socket";

/// Why the log cannot be set up as configured.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    /// RUST_LOG is set but is no filter directive.
    #[error("invalid RUST_LOG {value:?}: {source}")]
    RustLog {
        value: String,
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    /// `log_level` is no filter directive.
    #[error("invalid setting log_level = {value:?}: {source}")]
    Level {
        value: String,
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    /// A global subscriber is installed already.
    #[error("cannot install the logger: {0}")]
    Install(String),
    /// The level could not be swapped in.
    #[error("cannot change the log level: {0}")]
    Reload(#[from] reload::Error),
}

/// The log's output layer. Its filter is its own (a per-layer filter), so the OTLP layer sees
/// concord's debug spans whatever the log's level.
type Output = Box<dyn Layer<Registry> + Send + Sync>;

/// The installed logger: changes its level.
pub struct Logging {
    filter: reload::Handle<EnvFilter, Registry>,
    /// RUST_LOG's filter is in force: `log_level` does not apply.
    rust_log: bool,
    /// The OTLP exporter, until the daemon starts it.
    exporter: Mutex<Option<Exporter>>,
}

impl Logging {
    /// Applies `log_level` (unless RUST_LOG rules); answers whether the filter changed.
    pub fn set_level(&self, log_level: &str) -> Result<bool, LoggingError> {
        if self.rust_log {
            return Ok(false);
        }
        let filter = level_filter(log_level)?;
        self.filter.reload(filter)?;
        Ok(true)
    }

    /// RUST_LOG is set: it, not `log_level`, is the filter.
    pub fn rust_log(&self) -> bool {
        self.rust_log
    }

    /// Starts sending spans to the OTLP collector (once; None without an endpoint): until
    /// `stop`, then what is queued. Spans it drops are counted in `metrics`.
    pub fn spawn_exporter(
        &self,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let exporter = self.exporter.lock().take()?;
        Some(tokio::spawn(exporter.run(metrics, stop)))
    }
}

/// The filter `log_level` names. A plain debug/trace level is for concord's own logs; its
/// libraries stay at info.
fn level_filter(log_level: &str) -> Result<EnvFilter, LoggingError> {
    let directive = match log_level {
        l @ ("debug" | "trace") => format!("info,concord={l}"),
        other => other.to_string(),
    };
    EnvFilter::try_new(directive).map_err(|source| LoggingError::Level {
        value: log_level.to_string(),
        source,
    })
}

/// The filter: RUST_LOG's when it is set and not empty, else `log_level`'s. The bool says
/// whether RUST_LOG's.
fn filter(log_level: &str, rust_log: Option<&str>) -> Result<(EnvFilter, bool), LoggingError> {
    match rust_log.filter(|v| !v.trim().is_empty()) {
        Some(value) => EnvFilter::try_new(value)
            .map(|f| (f, true))
            .map_err(|source| LoggingError::RustLog {
                value: value.to_string(),
                source,
            }),
        None => Ok((level_filter(log_level)?, false)),
    }
}

/// Installs the global logger `config` asks for (stderr, or journald). Without journald's
/// socket, journald format logs to stderr as text and says so.
pub fn init(config: &Config) -> Result<Logging, LoggingError> {
    let rust_log = std::env::var("RUST_LOG").ok();
    let (filter, from_env) = filter(&config.log_level, rust_log.as_deref())?;
    let (filter, handle) = reload::Layer::new(filter);
    let mut fallback = None;
    let output: Output = match config.log_format {
        LogFormat::Text => text(),
        LogFormat::Json => Box::new(
            tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(true)
                .with_writer(std::io::stderr),
        ),
        LogFormat::Journald => match tracing_journald::layer() {
            Ok(layer) => Box::new(
                layer
                    .with_field_prefix(None)
                    .with_syslog_identifier("concord".into()),
            ),
            Err(e) => {
                fallback = Some(e);
                text()
            }
        },
    };
    let (otlp, exporter) = OtlpLayer::new(&config.tracing).unzip();
    tracing_subscriber::registry()
        .with(output.with_filter(filter))
        .with(otlp.map(|l| l.with_filter(OtlpLayer::filter())))
        .try_init()
        .map_err(|e| LoggingError::Install(e.to_string()))?;
    if let Some(error) = fallback {
        tracing::warn!(
            socket = JOURNALD_SOCKET,
            %error,
            "journald socket unavailable: logging to stderr"
        );
    }
    if from_env {
        tracing::info!(
            rust_log = rust_log.as_deref().unwrap_or(""),
            "RUST_LOG is set: it replaces log_level"
        );
    }
    Ok(Logging {
        filter: handle,
        rust_log: from_env,
        exporter: Mutex::new(exporter),
    })
}

/// Text lines on stderr (colored on a terminal).
fn text() -> Output {
    Box::new(
        tracing_subscriber::fmt::layer()
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_replaces_log_level_when_set() {
        let (f, env) = filter("info", Some("concord=trace")).unwrap();
        assert!(env);
        assert_eq!(f.to_string(), "concord=trace");
        let (f, env) = filter("warn", None).unwrap();
        assert!(!env);
        assert_eq!(f.to_string(), "warn");
    }

    #[test]
    fn an_empty_rust_log_is_unset() {
        let (f, env) = filter("error", Some("  ")).unwrap();
        assert!(!env);
        assert_eq!(f.to_string(), "error");
    }

    #[test]
    fn an_invalid_rust_log_is_an_error_naming_it() {
        let e = filter("info", Some("concord=[")).unwrap_err();
        assert!(e.to_string().contains("RUST_LOG"), "{e}");
    }

    #[test]
    fn plain_debug_keeps_libraries_at_info() {
        let f = level_filter("debug").unwrap();
        assert_eq!(f.to_string(), "concord=debug,info");
    }
}
