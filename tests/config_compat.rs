//! Configs carried over from containerd: `concord config import-containerd` on real containerd
//! configs (the rig's, Debian containerd 1.6's default as a kubeadm node has it, containerd 2.x's
//! default), `conf.d` drop-ins and the `version` key, through the real binary and daemon.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{hosts_dir, pull, Daemon};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/containerd")
        .join(name)
}

/// `concord config import-containerd <file>` (with an empty config of its own): (exit code,
/// stdout, stderr).
fn import(file: &Path) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let own = dir.path().join("config.toml");
    std::fs::write(&own, "").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_concord"))
        .arg(format!("--config={}", own.display()))
        .args(["config", "import-containerd"])
        .arg(file)
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}

/// [`import`] of `file`, which must succeed: the result as `config show` reads it back, and
/// stderr (the untranslated keys). Both are printed for the test log.
fn imported(file: &Path) -> (toml::Table, String) {
    let (code, out, err) = import(file);
    assert_eq!(code, 0, "{err}");
    println!("--- {}\n{out}--- stderr\n{err}", file.display());
    (shown(&out), err)
}

/// Asserts that every one of `keys` is named untranslated in `err`.
fn named(err: &str, keys: &[&str]) {
    for key in keys {
        assert!(
            err.contains(key),
            "{key} should be named untranslated:\n{err}"
        );
    }
}

/// The imported text read back by `concord config show` (so the daemon would accept it).
fn shown(imported: &str) -> toml::Table {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    std::fs::write(&file, imported).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_concord"))
        .arg(format!("--config={}", file.display()))
        .args(["config", "show"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    toml::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap()
}

fn get<'a>(t: &'a toml::Table, path: &str) -> &'a toml::Value {
    let mut parts = path.split('.').peekable();
    let mut t = t;
    loop {
        let k = parts.next().unwrap();
        let v = t.get(k).unwrap_or_else(|| panic!("{path} missing"));
        if parts.peek().is_none() {
            return v;
        }
        t = v.as_table().unwrap();
    }
}

#[test]
fn the_rigs_containerd_config_imports_with_its_cri_settings() {
    // The live file hack/dev-up.sh wrote, else the copy taken from it.
    let live = Path::new("/tmp/rig/containerd/config-cri.toml");
    let file = if live.exists() {
        live.to_owned()
    } else {
        fixture("rig-cri.toml")
    };
    let (c, err) = imported(&file);
    // The rig's pause image (hack/dev-up.sh's SANDBOX_IMAGE), as that file names it.
    let text = std::fs::read_to_string(&file).unwrap();
    let source: toml::Table = toml::from_str(&text).unwrap();
    let pause = &source["plugins"]["io.containerd.grpc.v1.cri"]["sandbox_image"];
    assert!(pause
        .as_str()
        .unwrap()
        .starts_with("registry.k8s.io/pause:"));
    assert_eq!(get(&c, "sandbox_image"), pause);
    assert_eq!(
        get(&c, "registry_config_path").as_array().unwrap()[0].as_str(),
        Some("/tmp/rig/containerd/certs.d")
    );
    assert_eq!(
        get(&c, "cni.bin_dirs").as_array().unwrap()[0].as_str(),
        Some("/usr/lib/cni")
    );
    assert_eq!(
        get(&c, "containerd.address").as_str(),
        Some("/tmp/ctd/containerd.sock")
    );
    assert_eq!(get(&c, "runtime.cgroup_driver").as_str(), Some("cgroupfs"));
    assert!(get(&c, "stream_address")
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    named(
        &err,
        &["root = ", "restrict_oom_score_adj = ", "max_conf_num = "],
    );
    assert!(!err.contains("sandbox_image"), "{err}");
}

#[test]
fn a_kubeadm_nodes_containerd_1_6_config_imports_with_systemd_cgroups() {
    let (c, err) = imported(&fixture("kubeadm-1.6-default-systemd.toml"));
    assert_eq!(get(&c, "runtime.cgroup_driver").as_str(), Some("systemd"));
    assert_eq!(
        get(&c, "sandbox_image").as_str(),
        Some("registry.k8s.io/pause:3.6")
    );
    assert_eq!(
        get(&c, "runtime.handlers.runc.runtime_type").as_str(),
        Some("io.containerd.runc.v2")
    );
    assert_eq!(get(&c, "runtime.default_handler").as_str(), Some("runc"));
    assert_eq!(get(&c, "cni.conf_dir").as_str(), Some("/etc/cni/net.d"));
    assert_eq!(
        get(&c, "stream_idle_timeout_seconds").as_integer(),
        Some(14400)
    );
    // containerd's other plugins and the CRI keys concord has no equivalent of are named.
    named(
        &err,
        &[
            "plugins.\"io.containerd.grpc.v1.cri\".enable_selinux = false",
            "plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options.NoPivotRoot",
            "plugins.\"io.containerd.gc.v1.scheduler\".pause_threshold",
            "oom_score = 0",
        ],
    );
    assert!(!err.contains("SystemdCgroup"), "{err}");
}

#[test]
fn a_containerd_2_config_imports_from_its_split_cri_plugins() {
    let (c, err) = imported(&fixture("containerd-2.x-default.toml"));
    assert_eq!(
        get(&c, "sandbox_image").as_str(),
        Some("registry.k8s.io/pause:3.10")
    );
    let dirs: Vec<&str> = get(&c, "registry_config_path")
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(dirs, ["/etc/containerd/certs.d", "/etc/docker/certs.d"]);
    assert_eq!(get(&c, "cni.bin_dirs").as_array().unwrap().len(), 1);
    assert_eq!(get(&c, "runtime.cgroup_driver").as_str(), Some("systemd"));
    assert_eq!(
        get(&c, "containerd.snapshotter").as_str(),
        Some("overlayfs")
    );
    named(&err, &["enable_cdi = true", "sandboxer = \"podsandbox\""]);
}

#[test]
fn a_config_of_a_newer_version_or_a_bad_drop_in_stops_the_daemon_with_exit_2() {
    let d = Daemon::new();
    std::fs::write(d.dir.join("config.toml"), "version = 2\n").unwrap();
    let (status, err) = d.run_to_exit(&[]);
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(
        err.contains("version = 2") && err.contains("config.toml"),
        "{err}"
    );
    std::fs::write(d.dir.join("config.toml"), "version = 1\n").unwrap();
    std::fs::create_dir_all(d.dir.join("conf.d")).unwrap();
    std::fs::write(d.dir.join("conf.d/50-x.toml"), "[cni]\nconf_dri = \"/x\"\n").unwrap();
    let (status, err) = d.run_to_exit(&[]);
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(
        err.contains("50-x.toml") && err.contains("conf_dri"),
        "{err}"
    );
}

/// A conf.d drop-in gives the registry path as a TOML array whose first directory has nothing
/// for the host: the pull goes through the rig's mirrors in the second.
#[tokio::test]
async fn a_drop_in_registry_path_list_is_searched_in_order_by_a_real_pull() {
    let mut d = Daemon::new();
    let empty = d.dir.join("empty-certs.d");
    std::fs::create_dir_all(empty.join("quay.io")).unwrap();
    std::fs::create_dir_all(d.dir.join("conf.d")).unwrap();
    std::fs::write(
        d.dir.join("conf.d/10-registry.toml"),
        format!(
            "version = 1\nregistry_config_path = [\"{}\", \"{}\"]\n",
            empty.display(),
            hosts_dir()
        ),
    )
    .unwrap();
    d.start().await;
    pull(&d, "busybox").await.unwrap();
    let status = d
        .runtime()
        .await
        .status(concord::cri::StatusRequest { verbose: true })
        .await
        .unwrap()
        .into_inner();
    let config: serde_json::Value = serde_json::from_str(&status.info["config"]).unwrap();
    assert_eq!(
        config["registry"]["configPath"],
        format!("{}:{}", empty.display(), hosts_dir())
    );
}
