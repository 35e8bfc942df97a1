//! `concord config import-containerd`: a containerd config.toml's CRI settings as a concord config.
//! Both layouts are read: containerd 1.x (`version = 2`, or unversioned `plugins.cri`) with
//! everything under `plugins."io.containerd.grpc.v1.cri"`, and 2.x (`version = 3`) split into
//! `plugins."io.containerd.cri.v1.images"`, `plugins."io.containerd.cri.v1.runtime"` and the
//! streaming keys left in `plugins."io.containerd.grpc.v1.cri"`. Every key read is marked; the
//! rest are returned so the operator sees what did not carry over.

use std::collections::BTreeSet;
use std::path::Path;

use toml::{Table, Value};

use super::{values::path_list, ConfigError, CONFIG_VERSION};

/// What an import produced.
#[derive(Debug)]
pub struct Imported {
    /// The concord config (TOML text, only the translated settings and `version`).
    pub toml: String,
    /// Dotted paths of the containerd keys not translated, with their values.
    pub untranslated: Vec<(String, String)>,
}

/// The containerd config being read, and which of its keys were used.
struct Source {
    doc: Table,
    used: BTreeSet<String>,
}

impl Source {
    /// The value at `path` (table names, then the key), marked as used.
    fn take(&mut self, path: &[&str]) -> Option<Value> {
        let (key, tables) = path.split_last()?;
        let mut t = &self.doc;
        for name in tables {
            t = t.get(*name)?.as_table()?;
        }
        let v = t.get(*key)?.clone();
        self.used.insert(path.join("\u{0}"));
        Some(v)
    }

    /// A string value at `path`; "" counts as unset.
    fn string(&mut self, path: &[&str]) -> Option<String> {
        self.take(path)
            .and_then(|v| v.as_str().map(str::to_string))
            .filter(|s| !s.is_empty())
    }

    /// The names of the subtables of the table at `path` (not marked).
    fn children(&self, path: &[&str]) -> Vec<String> {
        let mut t = &self.doc;
        for name in path {
            match t.get(*name).and_then(Value::as_table) {
                Some(next) => t = next,
                None => return Vec::new(),
            }
        }
        t.iter()
            .filter(|(_, v)| v.is_table())
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Every leaf key not used, dotted as containerd's docs spell them.
    fn unused(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        leaves(&self.doc, &mut Vec::new(), &self.used, &mut out);
        out
    }
}

fn leaves(
    t: &Table,
    path: &mut Vec<String>,
    used: &BTreeSet<String>,
    out: &mut Vec<(String, String)>,
) {
    for (k, v) in t {
        path.push(k.clone());
        match v {
            Value::Table(sub) => leaves(sub, path, used, out),
            _ if used.contains(&path.join("\u{0}")) => {}
            _ => {
                let dotted: Vec<String> = path
                    .iter()
                    .map(|p| {
                        if p.contains('.') {
                            format!("{p:?}")
                        } else {
                            p.clone()
                        }
                    })
                    .collect();
                out.push((dotted.join("."), v.to_string()));
            }
        }
        path.pop();
    }
}

/// Where each CRI section lives in a config of this layout.
struct Layout {
    images: &'static [&'static str],
    runtime: &'static [&'static str],
    stream: &'static [&'static str],
    /// The sandbox image key within `images`.
    sandbox_image: &'static [&'static str],
    /// The snapshotter key, from the top.
    snapshotter: &'static [&'static str],
}

const GRPC_CRI: &str = "io.containerd.grpc.v1.cri";
const V2: Layout = Layout {
    images: &["plugins", GRPC_CRI],
    runtime: &["plugins", GRPC_CRI],
    stream: &["plugins", GRPC_CRI],
    sandbox_image: &["sandbox_image"],
    snapshotter: &["plugins", GRPC_CRI, "containerd", "snapshotter"],
};
const V1: Layout = Layout {
    images: &["plugins", "cri"],
    runtime: &["plugins", "cri"],
    stream: &["plugins", "cri"],
    sandbox_image: &["sandbox_image"],
    snapshotter: &["plugins", "cri", "containerd", "snapshotter"],
};
const V3: Layout = Layout {
    images: &["plugins", "io.containerd.cri.v1.images"],
    runtime: &["plugins", "io.containerd.cri.v1.runtime"],
    stream: &["plugins", GRPC_CRI],
    sandbox_image: &["pinned_images", "sandbox"],
    snapshotter: &["plugins", "io.containerd.cri.v1.images", "snapshotter"],
};

fn at<'a>(base: &[&'a str], rest: &[&'a str]) -> Vec<&'a str> {
    base.iter().chain(rest).copied().collect()
}

/// Sets `key` in `section` ("" is the top level) of the output.
fn put(out: &mut Table, section: &[&str], key: &str, v: Value) {
    let mut t = out;
    for name in section {
        t = t
            .entry(name.to_string())
            .or_insert_with(|| Value::Table(Table::new()))
            .as_table_mut()
            .expect("sections are tables");
    }
    t.insert(key.to_string(), v);
}

/// Translates containerd's config text (`path` names it in errors).
pub fn import_containerd(path: &Path, text: &str) -> Result<Imported, ConfigError> {
    let parse_error = |message: String| ConfigError::Parse {
        path: path.to_owned(),
        message,
    };
    let doc: Table =
        toml::from_str(text).map_err(|e| parse_error(e.to_string().trim().replace('\n', " ")))?;
    let mut src = Source {
        doc,
        used: BTreeSet::new(),
    };
    let layout = match src.take(&["version"]).and_then(|v| v.as_integer()) {
        Some(3) => &V3,
        Some(2) => &V2,
        None | Some(1) => &V1,
        Some(v) => {
            return Err(parse_error(format!(
                "containerd config version {v} is unknown"
            )))
        }
    };
    let mut out = Table::new();
    out.insert("version".into(), Value::Integer(CONFIG_VERSION));
    if let Some(a) = src.string(&["grpc", "address"]) {
        put(&mut out, &["containerd"], "address", Value::String(a));
    }
    images(&mut src, layout, &mut out);
    cni(&mut src, layout, &mut out);
    runtimes(&mut src, layout, &mut out);
    stream(&mut src, layout, &mut out);
    let toml = toml::to_string(&out).map_err(|e| parse_error(e.to_string()))?;
    // What comes out must be a config concord accepts.
    super::Config::parse(Path::new("<imported>"), &toml)?.validate()?;
    Ok(Imported {
        toml,
        untranslated: src.unused(),
    })
}

/// Sandbox image, registry config path, snapshotter, download concurrency.
fn images(src: &mut Source, l: &Layout, out: &mut Table) {
    if let Some(image) = src.string(&at(l.images, l.sandbox_image)) {
        out.insert("sandbox_image".into(), Value::String(image));
    }
    if let Some(p) = src.string(&at(l.images, &["registry", "config_path"])) {
        let dirs = path_list::split(&p);
        let dirs = dirs.iter().map(|d| Value::String(d.display().to_string()));
        out.insert("registry_config_path".into(), Value::Array(dirs.collect()));
    }
    if let Some(s) = src.string(l.snapshotter) {
        put(out, &["containerd"], "snapshotter", Value::String(s));
    }
    if let Some(n) = src.take(&at(l.images, &["max_concurrent_downloads"])) {
        put(out, &["image"], "max_concurrent_downloads", n);
    }
    let progress = src.string(&at(l.images, &["image_pull_progress_timeout"]));
    if let Some(secs) = progress
        .and_then(|d| go_duration_secs(&d))
        .filter(|s| *s > 0)
    {
        let key = "pull_progress_timeout_seconds";
        put(out, &["image"], key, Value::Integer(secs));
    }
    // containerd's period of snapshot usage collection (behind ImageFsInfo), in seconds.
    if let Some(Value::Integer(secs)) = src.take(&at(l.images, &["stats_collect_period"])) {
        put(
            out,
            &["image"],
            "fs_sync_interval_seconds",
            Value::Integer(secs),
        );
    }
}

/// CNI conf dir and plugin dirs (`bin_dir`, or 2.1's `bin_dirs`).
fn cni(src: &mut Source, l: &Layout, out: &mut Table) {
    if let Some(d) = src.string(&at(l.runtime, &["cni", "conf_dir"])) {
        put(out, &["cni"], "conf_dir", Value::String(d));
    }
    let dirs = match src.take(&at(l.runtime, &["cni", "bin_dirs"])) {
        Some(Value::Array(a)) if !a.is_empty() => Some(a),
        _ => src
            .string(&at(l.runtime, &["cni", "bin_dir"]))
            .map(|d| vec![Value::String(d)]),
    };
    if let Some(dirs) = dirs {
        put(out, &["cni"], "bin_dirs", Value::Array(dirs));
    }
}

/// The default runtime, each runtime's type, runc binary and root, annotation patterns, and
/// `SystemdCgroup` (concord's cgroup driver is node-wide: any runtime asking for systemd sets it).
fn runtimes(src: &mut Source, l: &Layout, out: &mut Table) {
    let base = at(l.runtime, &["containerd"]);
    if let Some(d) = src.string(&at(&base, &["default_runtime_name"])) {
        put(out, &["runtime"], "default_handler", Value::String(d));
    }
    // Whether the runtimes ask for systemd cgroups (none says: concord's default stays).
    let mut systemd = None;
    if let Some(Value::Boolean(true)) = src.take(&at(l.runtime, &["systemd_cgroup"])) {
        systemd = Some(true);
    }
    let runtimes = at(&base, &["runtimes"]);
    for name in src.children(&runtimes) {
        let rt = at(&runtimes, &[name.as_str()]);
        let section = ["runtime", "handlers", name.as_str()];
        let Some(kind) = src.string(&at(&rt, &["runtime_type"])) else {
            continue;
        };
        put(out, &section, "runtime_type", Value::String(kind));
        for (from, to) in [("BinaryName", "binary_name"), ("Root", "root")] {
            if let Some(v) = src.string(&at(&rt, &["options", from])) {
                put(out, &section, to, Value::String(v));
            }
        }
        for key in ["pod_annotations", "container_annotations"] {
            match src.take(&at(&rt, &[key])) {
                Some(Value::Array(a)) if !a.is_empty() => put(out, &section, key, Value::Array(a)),
                _ => {}
            }
        }
        if let Some(Value::Boolean(b)) = src.take(&at(&rt, &["options", "SystemdCgroup"])) {
            systemd = Some(systemd.unwrap_or(false) || b);
        }
    }
    if let Some(systemd) = systemd {
        let driver = if systemd { "systemd" } else { "cgroupfs" };
        put(
            out,
            &["runtime"],
            "cgroup_driver",
            Value::String(driver.into()),
        );
    }
}

/// The streaming server's address, idle timeout and TLS files.
fn stream(src: &mut Source, l: &Layout, out: &mut Table) {
    let addr = src.string(&at(l.stream, &["stream_server_address"]));
    let port = src.string(&at(l.stream, &["stream_server_port"]));
    if addr.is_some() || port.is_some() {
        let ip = addr.unwrap_or_else(|| "127.0.0.1".into());
        let host = if ip.contains(':') {
            format!("[{ip}]")
        } else {
            ip
        };
        let address = format!("{host}:{}", port.unwrap_or_else(|| "0".into()));
        out.insert("stream_address".into(), Value::String(address));
    }
    let idle_at = at(l.stream, &["stream_idle_timeout"]);
    if let Some(secs) = src.string(&idle_at).and_then(|d| go_duration_secs(&d)) {
        out.insert("stream_idle_timeout_seconds".into(), Value::Integer(secs));
    }
    if let Some(Value::Boolean(true)) = src.take(&at(l.stream, &["enable_tls_streaming"])) {
        for (from, to) in [
            ("tls_cert_file", "stream_tls_cert_file"),
            ("tls_key_file", "stream_tls_key_file"),
        ] {
            if let Some(f) = src.string(&at(l.stream, &["x509_key_pair_streaming", from])) {
                out.insert(to.into(), Value::String(f));
            }
        }
    }
}

/// A Go duration (`4h0m0s`, `30m`, `90s`) in whole seconds; none when it is not one or has a
/// fraction of a second.
fn go_duration_secs(d: &str) -> Option<i64> {
    let (mut total, mut num) = (0i64, String::new());
    let mut chars = d.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let unit = match (c, chars.peek()) {
            ('h', _) => 3600,
            ('m', Some('s')) => return None,
            ('m', _) => 60,
            ('s', _) => 1,
            _ => return None,
        };
        total += num.parse::<i64>().ok()? * unit;
        num.clear();
    }
    num.is_empty().then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_become_whole_seconds() {
        assert_eq!(go_duration_secs("4h0m0s"), Some(14400));
        assert_eq!(go_duration_secs("30m"), Some(1800));
        assert_eq!(go_duration_secs("90s"), Some(90));
        assert_eq!(go_duration_secs("1.5s"), None);
        assert_eq!(go_duration_secs("100ms"), None);
        assert_eq!(go_duration_secs("5"), None);
    }

    #[test]
    fn an_unknown_containerd_version_is_refused() {
        let e = import_containerd(Path::new("c.toml"), "version = 9\n").unwrap_err();
        assert!(e.to_string().contains("version 9"), "{e}");
    }
}
