//! Files a pod's containers share, kept in the sandbox's state directory as containerd's CRI
//! keeps them: `hostname`, `hosts` (the host's /etc/hosts; kubelet mounts its own for pod-network
//! pods) and `resolv.conf` (from the pod's DNSConfig, or the host's when it has none).

use std::path::Path;

use crate::cri;

/// resolv.conf for a DNSConfig, as containerd writes it; `None` when the config asks for nothing
/// (then the host's is used).
pub fn resolv_conf(dns: &cri::DnsConfig) -> Option<String> {
    let mut out = String::new();
    if !dns.searches.is_empty() {
        out.push_str(&format!("search {}\n", dns.searches.join(" ")));
    }
    for s in &dns.servers {
        out.push_str(&format!("nameserver {s}\n"));
    }
    if !dns.options.is_empty() {
        out.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    (!out.is_empty()).then_some(out)
}

/// The host's files these are copied from.
#[derive(Debug, Clone)]
pub struct HostFiles {
    pub hosts: std::path::PathBuf,
    pub resolv_conf: std::path::PathBuf,
}

impl Default for HostFiles {
    fn default() -> Self {
        HostFiles {
            hosts: "/etc/hosts".into(),
            resolv_conf: "/etc/resolv.conf".into(),
        }
    }
}

/// Writes `hostname`, `hosts` and `resolv.conf` into `dir` (created), each replaced atomically.
pub fn write_sandbox_files(
    dir: &Path,
    hostname: &str,
    dns: Option<&cri::DnsConfig>,
    host: &HostFiles,
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    crate::fsutil::write_atomic(&dir.join("hostname"), format!("{hostname}\n").as_bytes())?;
    let hosts = read_or_empty(&host.hosts)?;
    crate::fsutil::write_atomic(&dir.join("hosts"), &hosts)?;
    let resolv = match dns.and_then(resolv_conf) {
        Some(r) => r.into_bytes(),
        None => read_or_empty(&host.resolv_conf)?,
    };
    crate::fsutil::write_atomic(&dir.join("resolv.conf"), &resolv)
}

/// Mounts the pod's shared /dev/shm: a tmpfs of `size` bytes at `dir/shm` (the pause container
/// and every container of the pod bind it). Already mounted is fine; answers the path.
/// Where the pod's shared /dev/shm is mounted in its files directory `dir`.
pub fn shm_path(dir: &Path) -> std::path::PathBuf {
    dir.join("shm")
}

pub fn mount_shm(dir: &Path, size: u64) -> std::io::Result<std::path::PathBuf> {
    use nix::mount::{mount, MsFlags};
    let shm = shm_path(dir);
    std::fs::create_dir_all(&shm)?;
    if is_mount_point(&shm)? {
        return Ok(shm);
    }
    mount(
        Some("shm"),
        &shm,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(format!("mode=1777,size={size}").as_str()),
    )
    .map_err(|e| {
        std::io::Error::other(format!(
            "mounting the pod's /dev/shm at {}: {e}",
            shm.display()
        ))
    })?;
    Ok(shm)
}

/// Unmounts the pod's /dev/shm (lazily: a dying container may still hold it); absent is fine.
pub fn unmount_shm(dir: &Path) -> std::io::Result<()> {
    let shm = shm_path(dir);
    match is_mount_point(&shm) {
        Ok(true) => nix::mount::umount2(&shm, nix::mount::MntFlags::MNT_DETACH)
            .map_err(|e| std::io::Error::other(format!("unmounting {}: {e}", shm.display()))),
        Ok(false) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Whether `p` is a mount point (its device differs from its parent's).
fn is_mount_point(p: &Path) -> std::io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let here = std::fs::metadata(p)?.dev();
    let parent = std::fs::metadata(p.parent().unwrap_or(Path::new("/")))?.dev();
    Ok(here != parent)
}

/// A host file's bytes; a host without it gives an empty file.
fn read_or_empty(p: &Path) -> std::io::Result<Vec<u8>> {
    match std::fs::read(p) {
        Ok(b) => Ok(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(std::io::Error::new(
            e.kind(),
            format!("reading {}: {e}", p.display()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_has_search_nameservers_and_options_in_containerds_order() {
        let dns = cri::DnsConfig {
            servers: vec!["10.96.0.10".into(), "8.8.8.8".into()],
            searches: vec![
                "default.svc.cluster.local".into(),
                "svc.cluster.local".into(),
            ],
            options: vec!["ndots:5".into(), "edns0".into()],
        };
        assert_eq!(
            resolv_conf(&dns).unwrap(),
            "search default.svc.cluster.local svc.cluster.local\n\
             nameserver 10.96.0.10\nnameserver 8.8.8.8\noptions ndots:5 edns0\n"
        );
        assert_eq!(resolv_conf(&cri::DnsConfig::default()), None);
    }

    #[test]
    fn files_come_from_the_dns_config_or_the_host() {
        let dir = tempfile::tempdir().unwrap();
        let host = HostFiles {
            hosts: dir.path().join("host-hosts"),
            resolv_conf: dir.path().join("host-resolv"),
        };
        std::fs::write(&host.hosts, "127.0.0.1 localhost\n").unwrap();
        std::fs::write(&host.resolv_conf, "nameserver 192.0.2.1\n").unwrap();
        let sb = dir.path().join("sb");
        write_sandbox_files(&sb, "web-0", None, &host).unwrap();
        assert_eq!(
            std::fs::read_to_string(sb.join("hostname")).unwrap(),
            "web-0\n"
        );
        assert_eq!(
            std::fs::read_to_string(sb.join("hosts")).unwrap(),
            "127.0.0.1 localhost\n"
        );
        assert_eq!(
            std::fs::read_to_string(sb.join("resolv.conf")).unwrap(),
            "nameserver 192.0.2.1\n"
        );
        let dns = cri::DnsConfig {
            servers: vec!["10.96.0.10".into()],
            ..Default::default()
        };
        write_sandbox_files(&sb, "web-0", Some(&dns), &host).unwrap();
        assert_eq!(
            std::fs::read_to_string(sb.join("resolv.conf")).unwrap(),
            "nameserver 10.96.0.10\n"
        );
        assert!(!sb.join("resolv.tmp").exists());
    }
}
