//! SIGHUP: the config read again as the daemon was started (file, drop-ins, flags) and checked;
//! what can change in a running daemon is applied (the log level; the CNI conf dir is rescanned),
//! the rest is named as needing a restart. A config that does not load changes nothing.
//! Registry hosts.toml and certs.d files are read at each pull: they need no reload.

use std::sync::Arc;

use tokio::signal::unix::Signal;
use tokio_util::sync::CancellationToken;

use super::logging::Logging;
use crate::config::Config;
use crate::network::Network;

/// Reads the config as the daemon was started, validated (Err: why it cannot be used).
pub type LoadConfig = Box<dyn Fn() -> Result<Config, String> + Send + Sync>;

/// What a SIGHUP needs: the way to read the config again and the logger to adjust.
pub struct Reload {
    pub load: LoadConfig,
    pub logging: Logging,
}

/// Settings a reload applies; a change to any other needs a restart.
const RELOADABLE: &[&str] = &["log_level"];

/// The settings (dotted keys, as the file spells them) whose values differ.
pub fn changed_keys(old: &Config, new: &Config) -> Vec<String> {
    let table = |c: &Config| match toml::Value::try_from(c) {
        Ok(toml::Value::Table(t)) => t,
        _ => toml::Table::new(),
    };
    let mut keys = Vec::new();
    diff("", &table(old), &table(new), &mut keys);
    keys
}

fn diff(prefix: &str, old: &toml::Table, new: &toml::Table, out: &mut Vec<String>) {
    let mut names: Vec<&String> = old.keys().chain(new.keys()).collect();
    names.sort();
    names.dedup();
    for name in names {
        let key = format!("{prefix}{name}");
        match (old.get(name), new.get(name)) {
            (Some(toml::Value::Table(a)), Some(toml::Value::Table(b))) => {
                diff(&format!("{key}."), a, b, out)
            }
            (a, b) if a != b => out.push(key),
            _ => {}
        }
    }
}

/// Applies a config again on every SIGHUP until `shutdown`. `running` is the config in force.
pub fn spawn(
    reload: Reload,
    mut sighup: Signal,
    mut running: Config,
    network: Arc<Network>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                got = sighup.recv() => {
                    if got.is_none() {
                        break;
                    }
                    tracing::info!("SIGHUP: reloading the config");
                    let n = network.clone();
                    // The conf dir's files may have changed even when the settings did not.
                    let _ = tokio::task::spawn_blocking(move || n.rescan()).await;
                    apply(&reload, &mut running);
                }
            }
        }
    })
}

/// Reads the config again and applies what it can of it to `running`.
fn apply(reload: &Reload, running: &mut Config) {
    let new = match (reload.load)() {
        Ok(c) => c,
        Err(error) => {
            tracing::error!(%error, "config reload failed: keeping the running config");
            return;
        }
    };
    let changed = changed_keys(running, &new);
    if changed.iter().any(|k| k == "log_level") {
        match reload.logging.set_level(&new.log_level) {
            Ok(true) => running.log_level = new.log_level.clone(),
            Ok(false) => tracing::info!(
                log_level = %new.log_level,
                "RUST_LOG is set: it stays the log filter"
            ),
            Err(error) => tracing::error!(%error, "cannot apply log_level"),
        }
    }
    let (_, restart): (Vec<&String>, Vec<&String>) = changed
        .iter()
        .partition(|k| RELOADABLE.contains(&k.as_str()));
    let listed = if changed.is_empty() {
        "none".to_string()
    } else {
        changed.join(", ")
    };
    tracing::info!(
        changed = %listed,
        registry_hosts = "read at each pull",
        "config reloaded"
    );
    if !restart.is_empty() {
        let keys: Vec<&str> = restart.iter().map(|k| k.as_str()).collect();
        tracing::warn!("needs a restart: {}", keys.join(", "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_keys_are_dotted_and_sorted() {
        let old = Config::default();
        let mut new = old.clone();
        assert!(changed_keys(&old, &new).is_empty());
        new.log_level = "debug".into();
        new.containerd.namespace = "other".into();
        new.cni.conf_dir = "/x".into();
        assert_eq!(
            changed_keys(&old, &new),
            ["cni.conf_dir", "containerd.namespace", "log_level"]
        );
    }
}
