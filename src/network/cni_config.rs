//! CNI network config loading: the first usable `.conf`, `.conflist` or `.json` in the conf dir
//! (by file name), with every plugin binary present in a bin dir.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// CNI spec versions concord speaks to plugins.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// A loaded network config list.
#[derive(Debug, Clone, PartialEq)]
pub struct CniNetwork {
    /// The file it came from.
    pub file: PathBuf,
    /// Network name.
    pub name: String,
    /// CNI spec version.
    pub cni_version: String,
    /// Plugin configs in chain order (each with `type`).
    pub plugins: Vec<Value>,
}

impl CniNetwork {
    /// Plugin types in chain order.
    pub fn plugin_types(&self) -> Vec<String> {
        self.plugins
            .iter()
            .filter_map(|p| p.get("type").and_then(Value::as_str).map(str::to_owned))
            .collect()
    }
}

/// Why no network config could be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The conf dir could not be read.
    #[error("cannot read CNI conf dir {dir}: {source}")]
    ReadDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// No file had a usable config; each skipped file with its reason.
    #[error("no usable CNI network config in {dir}{}", skipped_list(.skipped))]
    NoneUsable {
        dir: PathBuf,
        skipped: Vec<(PathBuf, String)>,
    },
}

fn skipped_list(skipped: &[(PathBuf, String)]) -> String {
    if skipped.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = skipped
        .iter()
        .map(|(f, why)| format!("{}: {why}", f.display()))
        .collect();
    format!(" (skipped {})", parts.join("; "))
}

/// Loads the first usable network config from `dir`.
pub fn load_network(dir: &Path, bin_dirs: &[PathBuf]) -> Result<CniNetwork, LoadError> {
    let entries = std::fs::read_dir(dir).map_err(|source| LoadError::ReadDir {
        dir: dir.to_owned(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("conf" | "conflist" | "json")
            ) && p.is_file()
        })
        .collect();
    files.sort();
    let mut skipped = Vec::new();
    for file in files {
        match load_file(&file).and_then(|n| check_plugins(n, bin_dirs)) {
            Ok(net) => return Ok(net),
            Err(why) => skipped.push((file, why)),
        }
    }
    Err(LoadError::NoneUsable {
        dir: dir.to_owned(),
        skipped,
    })
}

fn load_file(file: &Path) -> Result<CniNetwork, String> {
    let text = std::fs::read_to_string(file).map_err(|e| e.to_string())?;
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("invalid JSON: {e}"))?;
    let obj = v.as_object().ok_or("not a JSON object")?;
    let name = obj
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or("no network name")?
        .to_string();
    let cni_version = obj
        .get("cniVersion")
        .and_then(Value::as_str)
        .unwrap_or("0.1.0")
        .to_string();
    if !SUPPORTED_VERSIONS.contains(&cni_version.as_str()) {
        return Err(format!("unsupported cniVersion {cni_version:?}"));
    }
    let is_list = file.extension().and_then(|e| e.to_str()) == Some("conflist");
    let plugins = if is_list {
        let list = obj
            .get("plugins")
            .and_then(Value::as_array)
            .ok_or("a .conflist needs a plugins array")?;
        if list.is_empty() {
            return Err("empty plugins list".into());
        }
        list.clone()
    } else {
        vec![v.clone()]
    };
    for p in &plugins {
        if p.get("type")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            return Err("a plugin has no type".into());
        }
    }
    Ok(CniNetwork {
        file: file.to_owned(),
        name,
        cni_version,
        plugins,
    })
}

fn check_plugins(net: CniNetwork, bin_dirs: &[PathBuf]) -> Result<CniNetwork, String> {
    for t in net.plugin_types() {
        if find_plugin(&t, bin_dirs).is_none() {
            let dirs: Vec<String> = bin_dirs.iter().map(|d| d.display().to_string()).collect();
            return Err(format!("plugin {t} not found in {}", dirs.join(":")));
        }
    }
    Ok(net)
}

/// Path of the executable plugin `name` in the first bin dir that has it.
pub fn find_plugin(name: &str, bin_dirs: &[PathBuf]) -> Option<PathBuf> {
    if name.contains('/') {
        return None;
    }
    bin_dirs.iter().map(|d| d.join(name)).find(|p| {
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bin_dir_with(names: &[&str]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for n in names {
            let p = d.path().join(n);
            std::fs::write(&p, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        d
    }

    #[test]
    fn first_usable_file_by_name_wins_and_broken_ones_are_skipped() {
        let bins = bin_dir_with(&["bridge", "portmap", "loopback"]);
        let conf = tempfile::tempdir().unwrap();
        std::fs::write(conf.path().join("05-broken.conf"), "{ not json").unwrap();
        std::fs::write(
            conf.path().join("10-net.conflist"),
            r#"{"cniVersion":"1.0.0","name":"net","plugins":[{"type":"bridge"},{"type":"portmap"}]}"#,
        )
        .unwrap();
        std::fs::write(
            conf.path().join("99-lo.conf"),
            r#"{"cniVersion":"0.4.0","name":"lo","type":"loopback"}"#,
        )
        .unwrap();
        let net = load_network(conf.path(), &[bins.path().to_owned()]).unwrap();
        assert_eq!(net.name, "net");
        assert_eq!(net.plugin_types(), vec!["bridge", "portmap"]);
    }

    #[test]
    fn a_missing_plugin_binary_makes_the_config_unusable() {
        let bins = bin_dir_with(&["bridge"]);
        let conf = tempfile::tempdir().unwrap();
        std::fs::write(
            conf.path().join("10-net.conflist"),
            r#"{"cniVersion":"0.4.0","name":"net","plugins":[{"type":"bridge"},{"type":"portmap"}]}"#,
        )
        .unwrap();
        let err = load_network(conf.path(), &[bins.path().to_owned()]).unwrap_err();
        assert!(
            err.to_string().contains("plugin portmap not found"),
            "{err}"
        );
    }

    #[test]
    fn an_empty_dir_is_not_ready() {
        let conf = tempfile::tempdir().unwrap();
        let err = load_network(conf.path(), &[]).unwrap_err();
        assert!(
            err.to_string().contains("no usable CNI network config"),
            "{err}"
        );
    }
}
