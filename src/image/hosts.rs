//! Registry host configuration in containerd's layout: a list of roots (containerd's
//! `config_path`) searched in order for `<root>/<host>/hosts.toml` (else `<root>/_default/`), each
//! `[host."url"]` an endpoint tried in file order, `server` the fallback; a host directory without
//! hosts.toml is read in Docker's certs.d layout (`*.crt`, `*.cert` + `*.key`). Directories
//! containerd and Docker users already have work unchanged.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use toml::Value;

/// One place to fetch from.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Endpoint {
    /// Base URL up to and including the API root, e.g. `https://registry-1.docker.io/v2`.
    pub base: String,
    /// May answer tag → digest lookups.
    pub resolve: bool,
    /// May serve manifests by digest and blobs.
    pub pull: bool,
    /// Accept any TLS certificate.
    pub skip_verify: bool,
    /// Extra CA certificates (PEM files).
    pub ca: Vec<PathBuf>,
    /// Client certificates: (cert PEM, key PEM; the key may be in the cert file).
    pub client: Vec<(PathBuf, Option<PathBuf>)>,
    /// Extra headers.
    pub headers: BTreeMap<String, String>,
    /// A mirror (not the upstream server): requests carry `?ns=<upstream host>`.
    pub mirror: bool,
}

/// Why a hosts.toml cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    /// The file could not be read.
    #[error("cannot read registry host config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid.
    #[error("registry host config {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// The endpoints for registry `host`, in the order to try them. `roots` are searched in order as
/// containerd searches its `config_path` list: the first root holding a directory for the host
/// (`<host>_<port>_`, `<host>`, else `_default`) wins; in it, `hosts.toml`, else Docker's
/// certs.d files.
pub fn endpoints(roots: &[PathBuf], host: &str) -> Result<Vec<Endpoint>, HostsError> {
    // The host names a directory under a root: only a registry host name may (`..` or a `/`
    // would read host configs, CA files and client keys from elsewhere).
    if !valid_host(host) {
        return Err(HostsError::Invalid {
            path: roots.first().cloned().unwrap_or_default(),
            reason: format!("{host:?} is not a registry host name"),
        });
    }
    for root in roots {
        if let Some(dir) = host_dir(root, host)? {
            return load_host_dir(&dir, host);
        }
    }
    Ok(vec![default_endpoint(host)])
}

/// The directory of `host` under `root`, as containerd's `HostDirFromRoot` finds it: `:port`
/// spelled `_port_` first, then the host as written, then `_default`.
fn host_dir(root: &Path, host: &str) -> Result<Option<PathBuf>, HostsError> {
    let name = strip_port(host);
    let ported = (name.len() < host.len()).then(|| format!("{name}_{}_", &host[name.len() + 1..]));
    let candidates = ported
        .into_iter()
        .chain([host.to_string(), "_default".into()]);
    for dir in candidates.map(|c| root.join(c)) {
        match std::fs::metadata(&dir) {
            Ok(_) => return Ok(Some(dir)),
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    || e.kind() == std::io::ErrorKind::NotADirectory => {}
            Err(source) => return Err(HostsError::Read { path: dir, source }),
        }
    }
    Ok(None)
}

/// The endpoints a host directory gives: its `hosts.toml`, or (absent or empty) the upstream
/// server with the directory's Docker-layout certificates.
fn load_host_dir(dir: &Path, host: &str) -> Result<Vec<Endpoint>, HostsError> {
    let file = dir.join("hosts.toml");
    match std::fs::read_to_string(&file) {
        Ok(text) if !text.trim().is_empty() => parse(&file, &text, host),
        Ok(_) => cert_files(dir, host),
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                || e.kind() == std::io::ErrorKind::NotADirectory =>
        {
            cert_files(dir, host)
        }
        Err(source) => Err(HostsError::Read { path: file, source }),
    }
}

/// Docker's certs.d layout, as containerd's `loadCertFiles` reads it: every `*.crt` is a CA,
/// every `*.cert` a client certificate with the `*.key` of the same name as its key (absent: the
/// key is in the cert file). They apply to the upstream server, which is then HTTPS.
fn cert_files(dir: &Path, host: &str) -> Result<Vec<Endpoint>, HostsError> {
    let read = |source| HostsError::Read {
        path: dir.to_owned(),
        source,
    };
    let mut ep = default_endpoint(host);
    let mut names: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| !t.is_dir()))
            .map(|e| e.path())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => Vec::new(),
        Err(e) => return Err(read(e)),
    };
    names.sort();
    for path in names {
        match path.extension().and_then(|e| e.to_str()) {
            Some("crt") => ep.ca.push(path),
            Some("cert") => {
                let key = path.with_extension("key");
                ep.client.push((path, key.exists().then_some(key)));
            }
            _ => {}
        }
    }
    if !ep.ca.is_empty() || !ep.client.is_empty() {
        ep.base = ep.base.replacen("http://", "https://", 1);
    }
    Ok(vec![ep])
}

/// The upstream server of `host` when nothing is configured.
pub fn default_endpoint(host: &str) -> Endpoint {
    let server = if host == "docker.io" {
        "registry-1.docker.io"
    } else {
        host
    };
    let scheme = if is_local(host) { "http" } else { "https" };
    Endpoint {
        base: format!("{scheme}://{server}/v2"),
        resolve: true,
        pull: true,
        ..Endpoint::default()
    }
}

/// Whether `host` (`name[:port]`, `[v6][:port]`) is a host name a registry can have: letters,
/// digits, `.`, `-`, `_`, a port, or a bracketed IPv6 address; not `.` or `..`.
pub fn valid_host(host: &str) -> bool {
    let name = strip_port(host);
    if name.is_empty() || name == "." || name == ".." || host.len() > 255 {
        return false;
    }
    let port_ok = host[name.len()..]
        .strip_prefix(':')
        .map_or(host.len() == name.len(), |p| p.parse::<u16>().is_ok());
    if let Some(v6) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        return port_ok && v6.parse::<std::net::Ipv6Addr>().is_ok();
    }
    port_ok
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
        && !name
            .split('.')
            .any(|label| label.is_empty() && name != "localhost")
}

/// `host` without its `:port`.
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map(|i| &host[..=i]).unwrap_or(host);
    }
    host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
}

/// A loopback registry (plain HTTP without a hosts.toml): `localhost`, an address in
/// 127.0.0.0/8 or `[::1]` — an address, not a name that starts with `127.`.
fn is_local(host: &str) -> bool {
    let h = strip_port(host);
    if h == "localhost" {
        return true;
    }
    let ip = h.trim_start_matches('[').trim_end_matches(']');
    ip.parse::<std::net::IpAddr>()
        .is_ok_and(|a| a.is_loopback())
}

/// The endpoints a `hosts.toml` (at `path`, for registry `host`) names. Public for fuzz/.
pub fn parse(path: &Path, text: &str, host: &str) -> Result<Vec<Endpoint>, HostsError> {
    let invalid = |reason: String| HostsError::Invalid {
        path: path.to_owned(),
        reason,
    };
    let doc: toml::Table =
        toml::from_str(text).map_err(|e| invalid(e.to_string().trim().replace('\n', " ")))?;
    let mut out = Vec::new();
    if let Some(hosts) = doc.get("host") {
        let hosts = hosts
            .as_table()
            .ok_or_else(|| invalid("[host] must be a table of URLs".into()))?;
        for (url, cfg) in hosts {
            let cfg = cfg
                .as_table()
                .ok_or_else(|| invalid(format!("host {url:?} must be a table")))?;
            let mut ep = endpoint_from(path, url, cfg).map_err(invalid)?;
            ep.mirror = true;
            out.push(ep);
        }
    }
    match doc.get("server").and_then(Value::as_str) {
        Some(server) => {
            let mut ep = endpoint_from(path, server, &doc).map_err(invalid)?;
            ep.mirror = false;
            // The server's capabilities default to everything.
            if doc.get("capabilities").is_none() {
                ep.resolve = true;
                ep.pull = true;
            }
            out.push(ep);
        }
        None => out.push(default_endpoint(host)),
    }
    Ok(out)
}

/// One endpoint from its URL and its table (`[host."url"]`, or the file's top level for `server`).
fn endpoint_from(path: &Path, url: &str, cfg: &toml::Table) -> Result<Endpoint, String> {
    // In this order: a file with several mistakes reports the same one as before.
    let base = api_base(url, cfg)?;
    let caps = capabilities(url, cfg)?;
    let dir = path.parent().unwrap_or(Path::new("/"));
    Ok(Endpoint {
        base,
        resolve: caps.iter().any(|c| c == "resolve"),
        pull: caps.iter().any(|c| c == "pull"),
        skip_verify: cfg
            .get("skip_verify")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        ca: ca_files(dir, url, cfg)?,
        client: client_files(dir, url, cfg)?,
        headers: headers(url, cfg)?,
        mirror: false,
    })
}

/// The endpoint's URL up to the API root: `/v2` appended unless the path has it or
/// `override_path` says the path is the root.
fn api_base(url: &str, cfg: &toml::Table) -> Result<String, String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("host {url:?} needs a scheme (http:// or https://)"))?;
    if scheme != "http" && scheme != "https" {
        return Err(format!("host {url:?}: scheme must be http or https"));
    }
    let (authority, url_path) = match rest.split_once('/') {
        Some((a, p)) => (a, format!("/{}", p.trim_end_matches('/'))),
        None => (rest, String::new()),
    };
    if authority.is_empty() {
        return Err(format!("host {url:?} has no host name"));
    }
    let override_path = cfg
        .get("override_path")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let api = if override_path || url_path.ends_with("/v2") {
        url_path
    } else {
        format!("{url_path}/v2")
    };
    Ok(format!("{scheme}://{authority}{api}"))
}

/// `capabilities`, by default pull and resolve.
fn capabilities(url: &str, cfg: &toml::Table) -> Result<Vec<String>, String> {
    match cfg.get("capabilities") {
        Some(Value::Array(a)) => Ok(a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()),
        Some(_) => Err(format!("host {url:?}: capabilities must be a list")),
        None => Ok(vec!["pull".into(), "resolve".into()]),
    }
}

/// `p`, relative to the hosts.toml's directory `dir` unless absolute.
fn relative_to(dir: &Path, p: &str) -> PathBuf {
    let p = PathBuf::from(p);
    if p.is_absolute() {
        p
    } else {
        dir.join(p)
    }
}

/// `ca`: a path or a list of paths.
fn ca_files(dir: &Path, url: &str, cfg: &toml::Table) -> Result<Vec<PathBuf>, String> {
    let rel = |p: &str| relative_to(dir, p);
    match cfg.get("ca") {
        Some(Value::String(s)) => Ok(vec![rel(s)]),
        Some(Value::Array(a)) => Ok(a.iter().filter_map(Value::as_str).map(rel).collect()),
        Some(_) => Err(format!(
            "host {url:?}: ca must be a path or a list of paths"
        )),
        None => Ok(vec![]),
    }
}

/// `client`: a path, a list of paths, or [cert, key] pairs.
fn client_files(
    dir: &Path,
    url: &str,
    cfg: &toml::Table,
) -> Result<Vec<(PathBuf, Option<PathBuf>)>, String> {
    let rel = |p: &str| relative_to(dir, p);
    match cfg.get("client") {
        Some(Value::String(s)) => Ok(vec![(rel(s), None)]),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok((rel(s), None)),
                Value::Array(pair) if pair.len() == 2 => {
                    let c = pair[0].as_str().ok_or("client cert must be a path")?;
                    let k = pair[1].as_str().ok_or("client key must be a path")?;
                    Ok((rel(c), Some(rel(k))))
                }
                _ => Err("client must be a path, a list of paths or [cert, key] pairs".to_string()),
            })
            .collect::<Result<_, _>>()
            .map_err(|e| format!("host {url:?}: {e}")),
        Some(_) => Err(format!("host {url:?}: client must be a path or a list")),
        None => Ok(vec![]),
    }
}

/// `header`: a table of names to a value or a list of values (joined with `,`).
fn headers(url: &str, cfg: &toml::Table) -> Result<BTreeMap<String, String>, String> {
    match cfg.get("header") {
        Some(Value::Table(t)) => Ok(t
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s.clone(),
                    Value::Array(a) => a
                        .iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(","),
                    other => other.to_string(),
                };
                (k.clone(), v)
            })
            .collect()),
        Some(_) => Err(format!("host {url:?}: header must be a table")),
        None => Ok(BTreeMap::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_come_first_in_file_order_then_the_server() {
        let dir = tempfile::tempdir().unwrap();
        let h = dir.path().join("docker.io");
        std::fs::create_dir_all(&h).unwrap();
        std::fs::write(
            h.join("hosts.toml"),
            r#"server = "https://registry-1.docker.io"

[host."http://127.0.0.1:5000"]
  capabilities = ["pull", "resolve"]

[host."https://mirror.example/base"]
  capabilities = ["pull"]
  skip_verify = true
  ca = "ca.pem"
  [host."https://mirror.example/base".header]
    x-token = "t"
"#,
        )
        .unwrap();
        let eps = endpoints(&[dir.path().to_owned()], "docker.io").unwrap();
        assert_eq!(eps.len(), 3);
        assert_eq!(eps[0].base, "http://127.0.0.1:5000/v2");
        assert!(eps[0].resolve && eps[0].pull && eps[0].mirror);
        assert_eq!(eps[1].base, "https://mirror.example/base/v2");
        assert!(!eps[1].resolve && eps[1].pull && eps[1].skip_verify);
        assert_eq!(eps[1].ca, vec![h.join("ca.pem")]);
        assert_eq!(eps[1].headers["x-token"], "t");
        assert_eq!(eps[2].base, "https://registry-1.docker.io/v2");
        assert!(!eps[2].mirror);
    }

    #[test]
    fn loopback_is_an_address_and_hosts_stay_inside_the_config_dir() {
        for local in [
            "localhost:5000",
            "127.0.0.1:5000",
            "127.9.9.9",
            "[::1]:5000",
            "[::1]",
        ] {
            assert!(is_local(local), "{local}");
        }
        for remote in [
            "127.evil.com",
            "127.0.0.1.nip.io:80",
            "localhost.evil.com",
            "[::2]",
        ] {
            assert!(!is_local(remote), "{remote}");
        }
        for bad in [
            "..",
            ".",
            "../etc",
            "a/b",
            "host:port",
            "a..b",
            "",
            "x:99999",
            "[zz]",
        ] {
            assert!(!valid_host(bad), "{bad}");
            let dir = tempfile::tempdir().unwrap();
            assert!(endpoints(&[dir.path().to_owned()], bad).is_err(), "{bad}");
        }
        for good in [
            "docker.io",
            "registry.k8s.io",
            "127.0.0.1:5000",
            "my-reg_1.local:443",
            "[::1]:5000",
            "localhost",
        ] {
            assert!(valid_host(good), "{good}");
        }
    }

    #[test]
    fn no_config_means_the_upstream_server_and_plain_http_for_loopback() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            endpoints(&[dir.path().to_owned()], "quay.io").unwrap()[0].base,
            "https://quay.io/v2"
        );
        assert_eq!(
            endpoints(&[dir.path().to_owned()], "docker.io").unwrap()[0].base,
            "https://registry-1.docker.io/v2"
        );
        assert_eq!(
            endpoints(&[dir.path().to_owned()], "127.0.0.1:5000").unwrap()[0].base,
            "http://127.0.0.1:5000/v2"
        );
        assert_eq!(
            endpoints(&["/nonexistent/dir".into()], "quay.io")
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn a_broken_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let h = dir.path().join("quay.io");
        std::fs::create_dir_all(&h).unwrap();
        std::fs::write(h.join("hosts.toml"), "[host.\"ftp://x\"]\n").unwrap();
        let e = endpoints(&[dir.path().to_owned()], "quay.io").unwrap_err();
        assert!(
            e.to_string().contains("hosts.toml") && e.to_string().contains("scheme"),
            "{e}"
        );
    }

    #[test]
    fn roots_are_searched_in_order_and_the_first_with_the_host_wins() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let hosts = |root: &Path, dir: &str, server: &str| {
            std::fs::create_dir_all(root.join(dir)).unwrap();
            let text = format!("server = \"{server}\"\n");
            std::fs::write(root.join(dir).join("hosts.toml"), text).unwrap();
        };
        hosts(b.path(), "quay.io", "https://b.example");
        hosts(b.path(), "ghcr.io", "https://b-ghcr.example");
        hosts(a.path(), "ghcr.io", "https://a-ghcr.example");
        hosts(b.path(), "reg.example_5000_", "https://ported.example");
        let roots = [a.path().to_owned(), b.path().to_owned()];
        let first = |host: &str| endpoints(&roots, host).unwrap()[0].base.clone();
        assert_eq!(first("quay.io"), "https://b.example/v2");
        assert_eq!(first("ghcr.io"), "https://a-ghcr.example/v2");
        assert_eq!(first("reg.example:5000"), "https://ported.example/v2");
        assert_eq!(first("docker.io"), "https://registry-1.docker.io/v2");
        // A root's _default wins over a later root's host directory, as in containerd.
        hosts(a.path(), "_default", "https://default.example");
        assert_eq!(first("quay.io"), "https://default.example/v2");
    }

    #[test]
    fn a_docker_certs_dir_gives_the_upstream_its_cas_and_client_pairs() {
        let dir = tempfile::tempdir().unwrap();
        let h = dir.path().join("127.0.0.1:5443");
        std::fs::create_dir_all(&h).unwrap();
        for f in [
            "ca.crt",
            "other.crt",
            "client.cert",
            "client.key",
            "lone.cert",
            "x.txt",
        ] {
            std::fs::write(h.join(f), "").unwrap();
        }
        let eps = endpoints(&[dir.path().to_owned()], "127.0.0.1:5443").unwrap();
        assert_eq!(eps.len(), 1);
        assert_eq!(eps[0].base, "https://127.0.0.1:5443/v2");
        assert_eq!(eps[0].ca, vec![h.join("ca.crt"), h.join("other.crt")]);
        assert_eq!(
            eps[0].client,
            vec![
                (h.join("client.cert"), Some(h.join("client.key"))),
                (h.join("lone.cert"), None)
            ]
        );
        assert!(!eps[0].mirror && eps[0].pull && eps[0].resolve);
    }
}
