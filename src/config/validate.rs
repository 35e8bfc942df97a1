//! The checks the config's types do not make: ranges, absolute paths, names; one function per
//! section, each error naming the setting.

use std::path::Path;
use std::time::Duration;

use super::{
    CniConfig, Config, ConfigError, ContainerdConfig, ImageConfig, ReconcileConfig, RuntimeConfig,
    TracingConfig,
};

/// A [`ConfigError::Invalid`] for `key`.
fn invalid(key: &'static str, value: impl std::fmt::Debug, reason: &str) -> ConfigError {
    let value = format!("{value:?}");
    ConfigError::Invalid {
        key,
        value: value.trim_matches('"').to_string(),
        reason: reason.into(),
    }
}

/// `path` must be absolute.
fn absolute(key: &'static str, path: &Path) -> Result<(), ConfigError> {
    if path.is_absolute() {
        return Ok(());
    }
    Err(invalid(key, path, "must be an absolute path"))
}

/// `value` must lie in `range`; `reason` says so in words.
fn within<T: PartialOrd + std::fmt::Debug>(
    key: &'static str,
    value: T,
    range: std::ops::RangeInclusive<T>,
    reason: &str,
) -> Result<(), ConfigError> {
    if range.contains(&value) {
        return Ok(());
    }
    Err(invalid(key, value, reason))
}

/// A duration setting must not be zero.
fn nonzero(key: &'static str, d: Duration) -> Result<(), ConfigError> {
    if d.is_zero() {
        return Err(invalid(key, 0, "must be at least 1"));
    }
    Ok(())
}

impl TracingConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let e = &self.otlp_endpoint;
        let host = e
            .strip_prefix("http://")
            .or_else(|| e.strip_prefix("https://"));
        if !e.is_empty() && host.is_none_or(|h| h.is_empty() || h.starts_with('/')) {
            return Err(invalid(
                "tracing.otlp_endpoint",
                e,
                "must be an http:// (or https://) URL, or \"\" to send no traces",
            ));
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(invalid(
                "tracing.sample_ratio",
                self.sample_ratio,
                "must be 0.0 to 1.0",
            ));
        }
        Ok(())
    }
}

impl Config {
    /// The checks the types do not make, once, so the rest of concord can trust the values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_top()?;
        self.validate_stream()?;
        self.containerd.validate()?;
        self.cni.validate()?;
        self.runtime.validate()?;
        self.reconcile.validate()?;
        self.image.validate()?;
        self.tracing.validate()?;
        within(
            "stats.interval_seconds",
            self.stats.interval_seconds.as_secs(),
            1..=3600,
            "must be 1 to 3600",
        )?;
        within(
            "journal.compact_after",
            self.journal.compact_after,
            10..=u64::MAX,
            "must be at least 10",
        )
    }

    fn validate_top(&self) -> Result<(), ConfigError> {
        absolute("listen", &self.listen)?;
        absolute("netns_dir", &self.netns_dir)?;
        absolute("state_dir", &self.state_dir)?;
        if tracing_subscriber::EnvFilter::try_new(&self.log_level).is_err() {
            return Err(invalid(
                "log_level",
                &self.log_level,
                "expected trace, debug, info, warn, error or a tracing filter directive",
            ));
        }
        if self.sandbox_image.trim().is_empty() {
            return Err(invalid(
                "sandbox_image",
                &self.sandbox_image,
                "must not be empty",
            ));
        }
        if self.cgroup.contains("..") {
            return Err(invalid("cgroup", &self.cgroup, "must not contain '..'"));
        }
        if let Some(adj) = self.oom_score_adj {
            within(
                "oom_score_adj",
                adj,
                -1000..=1000,
                "must be between -1000 and 1000",
            )?;
        }
        Ok(())
    }

    fn validate_stream(&self) -> Result<(), ConfigError> {
        match (&self.stream_tls_cert_file, &self.stream_tls_key_file) {
            (None, None) => {}
            (Some(cert), Some(key)) => {
                for (key, path) in [("stream_tls_cert_file", cert), ("stream_tls_key_file", key)] {
                    if !path.is_file() {
                        return Err(invalid(key, path, "no such file"));
                    }
                }
            }
            (cert, _) => {
                return Err(invalid(
                    "stream_tls_cert_file",
                    cert.as_deref().unwrap_or(Path::new("")),
                    "stream_tls_cert_file and stream_tls_key_file go together (both set: https)",
                ))
            }
        }
        nonzero("stream_token_ttl_seconds", self.stream_token_ttl_seconds)?;
        nonzero(
            "stream_idle_timeout_seconds",
            self.stream_idle_timeout_seconds,
        )
    }
}

impl ContainerdConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        absolute("containerd.address", &self.address)?;
        let ns = &self.namespace;
        let ns_ok = !ns.is_empty()
            && ns.len() <= 76
            && ns.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && ns
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !ns_ok {
            return Err(invalid(
                "containerd.namespace",
                ns,
                "expected letters, digits, '.', '_' or '-', starting with a letter or digit",
            ));
        }
        if self.snapshotter.is_empty() {
            return Err(invalid("containerd.snapshotter", "", "must not be empty"));
        }
        nonzero(
            "containerd.health_interval_seconds",
            self.health_interval_seconds,
        )
    }
}

impl CniConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.bin_dirs.is_empty() {
            return Err(invalid(
                "cni.bin_dirs",
                "[]",
                "needs at least one directory",
            ));
        }
        nonzero("cni.plugin_timeout_seconds", self.plugin_timeout_seconds)?;
        nonzero("cni.rescan_interval_seconds", self.rescan_interval_seconds)
    }
}

impl RuntimeConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !self.handlers.contains_key(&self.default_handler) {
            return Err(invalid(
                "runtime.default_handler",
                &self.default_handler,
                "names no handler in [runtime.handlers]",
            ));
        }
        for (name, h) in &self.handlers {
            if name.is_empty() || name.contains(['/', ' ']) {
                return Err(invalid(
                    "runtime.handlers",
                    name,
                    "a handler name must be non-empty without '/' or spaces",
                ));
            }
            if h.runtime_type.is_empty() {
                return Err(invalid(
                    "runtime.handlers.<name>.runtime_type",
                    name,
                    "the handler needs a runtime_type (e.g. io.containerd.runc.v2)",
                ));
            }
        }
        for dir in &self.cdi_spec_dirs {
            absolute("runtime.cdi_spec_dirs", dir)?;
        }
        within(
            "runtime.container_events_buffer",
            self.container_events_buffer,
            1..=1_000_000,
            "must be 1 to 1000000",
        )
    }
}

impl ReconcileConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        nonzero("reconcile.timeout_seconds", self.timeout_seconds)?;
        within(
            "reconcile.workers",
            self.workers,
            1..=1024,
            "must be 1 to 1024",
        )?;
        if self.backoff_base_ms.as_millis() == 0 {
            return Err(invalid(
                "reconcile.backoff_base_ms",
                0,
                "must be at least 1",
            ));
        }
        if self.backoff_max_ms < self.backoff_base_ms {
            return Err(invalid(
                "reconcile.backoff_max_ms",
                self.backoff_max_ms.as_millis(),
                "must not be below reconcile.backoff_base_ms",
            ));
        }
        Ok(())
    }
}

impl ImageConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        nonzero(
            "image.pull_progress_timeout_seconds",
            self.pull_progress_timeout_seconds,
        )?;
        within(
            "image.max_concurrent_downloads",
            self.max_concurrent_downloads,
            1..=64,
            "must be 1 to 64",
        )?;
        within(
            "image.load_max_bytes",
            self.load_max_bytes,
            1 << 20..=u64::MAX,
            "must be at least 1048576 (1 MiB)",
        )?;
        nonzero(
            "image.fs_sync_interval_seconds",
            self.fs_sync_interval_seconds,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_name_the_setting() {
        type Mutation = Box<dyn Fn(&mut Config)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|c| c.listen = "relative.sock".into()), "listen"),
            (
                Box::new(|c| c.containerd.namespace = "bad ns".into()),
                "containerd.namespace",
            ),
            (Box::new(|c| c.reconcile.workers = 0), "reconcile.workers"),
            (
                Box::new(|c| c.reconcile.backoff_max_ms = Duration::from_millis(1)),
                "reconcile.backoff_max_ms",
            ),
            (Box::new(|c| c.oom_score_adj = Some(-5000)), "oom_score_adj"),
            (Box::new(|c| c.log_level = "loud=[".into()), "log_level"),
            (
                Box::new(|c| c.stream_tls_key_file = Some("/k.pem".into())),
                "stream_tls_cert_file",
            ),
            (
                Box::new(|c| c.stats.interval_seconds = Duration::ZERO),
                "stats.interval_seconds",
            ),
            (
                Box::new(|c| c.image.load_max_bytes = 1),
                "image.load_max_bytes",
            ),
            (
                Box::new(|c| c.tracing.otlp_endpoint = "127.0.0.1:4318".into()),
                "tracing.otlp_endpoint",
            ),
            (
                Box::new(|c| c.tracing.otlp_endpoint = "http://".into()),
                "tracing.otlp_endpoint",
            ),
            (
                Box::new(|c| c.tracing.sample_ratio = 1.5),
                "tracing.sample_ratio",
            ),
        ];
        for (mutate, key) in cases {
            let mut c = Config::default();
            mutate(&mut c);
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(key), "{err} should name {key}");
        }
    }

    #[test]
    fn an_http_otlp_endpoint_is_valid() {
        let mut c = Config::default();
        c.tracing.otlp_endpoint = "http://127.0.0.1:4318".into();
        c.tracing.sample_ratio = 0.25;
        c.validate().unwrap();
    }
}
