//! CNI with the real plugins (bridge, host-local, portmap) in a real network namespace: ADD
//! gives an address, the result is cached, DEL after a "restart" frees it, misbehaving plugins
//! fail clearly and in time.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use concord::network::cni::{Attachment, Cni, CniError};
use concord::network::{netns, CniNetwork};
use serde_json::{json, Map};

fn bin_dir() -> PathBuf {
    PathBuf::from(
        std::env::var("CONCORD_TEST_CNI_BIN_DIR").unwrap_or_else(|_| "/usr/lib/cni".into()),
    )
}

fn network(data_dir: &Path) -> CniNetwork {
    CniNetwork {
        file: PathBuf::from("test"),
        name: "concord-test-net".into(),
        cni_version: "1.0.0".into(),
        plugins: vec![
            json!({"type": "bridge", "bridge": "concordtest0", "isGateway": true, "ipMasq": false,
                   "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.199.0.0/24"}]], "dataDir": data_dir}}),
            json!({"type": "portmap", "capabilities": {"portMappings": true}}),
        ],
    }
}

fn attachment(id: &str, ns: &Path) -> Attachment {
    let mut caps = Map::new();
    caps.insert(
        "portMappings".into(),
        json!([{"hostPort": 31999, "containerPort": 80, "protocol": "tcp"}]),
    );
    Attachment {
        container_id: id.into(),
        netns: ns.to_owned(),
        ifname: "eth0".into(),
        args: vec![
            ("IgnoreUnknown".into(), "1".into()),
            ("K8S_POD_NAMESPACE".into(), "default".into()),
            ("K8S_POD_NAME".into(), "web".into()),
            ("K8S_POD_INFRA_CONTAINER_ID".into(), id.into()),
        ],
        capabilities: caps,
    }
}

fn allocations(data_dir: &Path) -> Vec<String> {
    let dir = data_dir.join("concord-test-net");
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("10.199."))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn add_then_del_after_a_restart_frees_the_address() {
    let tmp = tempfile::tempdir().unwrap();
    let ns = tmp.path().join("netns/sb-1");
    netns::create(&ns).unwrap();
    let data = tmp.path().join("ipam");
    let net = network(&data);
    let cache = tmp.path().join("cache");
    let a = attachment("sb-1", &ns);

    let cni = Cni::new(vec![bin_dir()], cache.clone(), Duration::from_secs(20));
    let result = cni.add(&net, &a).await.unwrap();
    let ip = result["ips"][0]["address"].as_str().unwrap().to_string();
    assert!(ip.starts_with("10.199.0."), "{result}");
    assert_eq!(allocations(&data).len(), 1);
    assert!(cni.cached("concord-test-net", &a));
    let inside = Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .args(["ip", "-o", "-4", "addr", "show", "eth0"])
        .output()
        .unwrap();
    let inside = String::from_utf8_lossy(&inside.stdout);
    assert!(
        inside.contains(&ip),
        "eth0 in the namespace has {ip}: {inside}"
    );

    // A new instance (concord restarted) with no network config: DEL from the cache alone.
    let after_restart = Cni::new(vec![bin_dir()], cache.clone(), Duration::from_secs(20));
    after_restart
        .del(None, "concord-test-net", &a)
        .await
        .unwrap();
    assert!(allocations(&data).is_empty(), "the address was released");
    assert!(!after_restart.cached("concord-test-net", &a));
    // Again, and with the namespace already gone: still fine.
    netns::remove(&ns).unwrap();
    after_restart
        .del(Some(&net), "concord-test-net", &a)
        .await
        .unwrap();
    after_restart
        .del(None, "concord-test-net", &a)
        .await
        .unwrap();
}

fn script(dir: &Path, name: &str, body: &str) {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[tokio::test]
async fn failing_hanging_and_missing_plugins_give_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let bins = tmp.path().join("bin");
    std::fs::create_dir_all(&bins).unwrap();
    script(
        &bins,
        "fails",
        r#"cat >/dev/null; echo '{"cniVersion":"1.0.0","code":11,"msg":"no more addresses","details":"pool full"}'; exit 1"#,
    );
    script(&bins, "hangs", "cat >/dev/null; sleep 30");
    let cni = Cni::new(
        vec![bins.clone()],
        tmp.path().join("cache"),
        Duration::from_millis(500),
    );
    let net = |t: &str| CniNetwork {
        file: PathBuf::new(),
        name: "bad".into(),
        cni_version: "1.0.0".into(),
        plugins: vec![json!({"type": t})],
    };
    let a = attachment("sb-2", Path::new("/nonexistent"));

    let e = cni.add(&net("fails"), &a).await.unwrap_err();
    assert!(matches!(e, CniError::Plugin { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("no more addresses: pool full (code 11)"),
        "{e}"
    );

    let start = std::time::Instant::now();
    let e = cni.add(&net("hangs"), &a).await.unwrap_err();
    assert!(matches!(e, CniError::Timeout { .. }), "{e}");
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(e.to_string().contains("plugin hangs"), "{e}");

    let e = cni.add(&net("absent"), &a).await.unwrap_err();
    assert!(matches!(e, CniError::NoPlugin { .. }), "{e}");
    assert!(!cni.cached("bad", &a), "nothing cached for a failed ADD");
}
