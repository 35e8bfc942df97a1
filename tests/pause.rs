//! The sandbox mechanics end to end with the real parts, below the RPCs: pull the pause image,
//! pin a network namespace, attach it with the real CNI plugins, run the pause container with
//! runc through containerd in that namespace, then tear everything down and check nothing is left.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use concord::containerd::Containerd;
use concord::image::{ImageSettings, Images};
use concord::network::cni::{Attachment, Cni};
use concord::network::{netns, CniNetwork};
use concord::oci::{sandbox_spec, Ns, SandboxSpec, SANDBOX_OOM_SCORE_ADJ};
use serde_json::{json, Map};

#[tokio::test]
async fn a_pause_container_runs_in_its_own_attached_network_namespace_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let ns_name = common::unique("concord-test-pause");
    let ctd = Containerd::new(&common::containerd_socket(), &ns_name, Default::default());
    let settings = ImageSettings {
        hosts_dirs: vec![PathBuf::from(common::hosts_dir())],
        snapshotter: "overlayfs".into(),
        sandbox_image: "registry.k8s.io/pause:3.9".into(),
        progress_timeout: Duration::from_secs(30),
        max_concurrent_downloads: 3,
        fs_sync_interval: Duration::from_secs(10),
        scratch_dir: tmp.path().join("scratch"),
        load_max_bytes: 1 << 30,
    };
    let images = Images::new(ctd.clone(), settings, Arc::new(Default::default()));
    images.refresh_all().await;
    images.ensure("registry.k8s.io/pause:3.9").await.unwrap();
    let pause = images
        .index()
        .find("registry.k8s.io/pause:3.9")
        .cloned()
        .unwrap();

    let id = format!("sb{}", std::process::id());
    let netns_path = tmp.path().join("netns").join(&id);
    netns::create(&netns_path).unwrap();
    let data = tmp.path().join("ipam");
    let net = CniNetwork {
        file: PathBuf::from("test"),
        name: "concord-pause-net".into(),
        cni_version: "1.0.0".into(),
        plugins: vec![
            json!({"type": "bridge", "bridge": "concordtest1", "isGateway": true, "ipMasq": false,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.198.0.0/24"}]], "dataDir": data}}),
        ],
    };
    let cni = Cni::new(
        vec![PathBuf::from("/usr/lib/cni")],
        tmp.path().join("cni-cache"),
        Duration::from_secs(20),
    );
    let attach = Attachment {
        container_id: id.clone(),
        netns: netns_path.clone(),
        ifname: "eth0".into(),
        args: vec![("IgnoreUnknown".into(), "1".into())],
        capabilities: Map::new(),
    };
    let result = cni.add(&net, &attach).await.unwrap();
    let ip = result["ips"][0]["address"].as_str().unwrap().to_string();

    let spec = sandbox_spec(
        &SandboxSpec {
            id: id.clone(),
            hostname: "pause-test".into(),
            network: Ns::Path(netns_path.display().to_string()),
            pid: Ns::Pod,
            ipc: Ns::Pod,
            cgroups_path: format!("/concord-test/{id}"),
            sysctls: BTreeMap::from([("net.ipv4.ip_unprivileged_port_start".into(), "0".into())]),
            oom_score_adj: SANDBOX_OOM_SCORE_ADJ,
            shm_size: 64 << 20,
            seccomp: Some(concord::oci::seccomp::default_profile(
                concord::oci::DEFAULT_CAPABILITIES,
            )),
            ..Default::default()
        },
        &pause.resolved.config,
    )
    .unwrap();
    let lease = ctd
        .create_lease(&format!("{id}-lease"), Duration::from_secs(600), "test")
        .await
        .unwrap();
    let mounts = ctd
        .prepare_snapshot(
            "overlayfs",
            &id,
            &pause.resolved.chain_id,
            &format!("sandbox:{id}"),
            &lease,
        )
        .await
        .unwrap();
    ctd.create_container(
        &id,
        "registry.k8s.io/pause:3.9",
        &concord::containerd::ContainerRuntime::of(&Default::default(), false),
        &spec,
        "overlayfs",
        &id,
        &format!("sandbox:{id}"),
        Default::default(),
    )
    .await
    .unwrap();
    ctd.delete_lease(&lease).await.unwrap();
    let pid = ctd.create_task(&id, mounts).await.unwrap();
    ctd.start_task(&id).await.unwrap();

    // The pause process lives in the pinned namespace, under its hostname, with the sysctl.
    let inode = |p: &str| nix::sys::stat::stat(p).unwrap().st_ino;
    assert_eq!(
        inode(&format!("/proc/{pid}/ns/net")),
        inode(netns_path.to_str().unwrap())
    );
    let host = std::process::Command::new("nsenter")
        .args(["-u", "-t", &pid.to_string(), "hostname"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&host.stdout).trim(), "pause-test");
    let sysctl = std::process::Command::new("nsenter")
        .arg(format!("--net={}", netns_path.display()))
        .args(["cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&sysctl.stdout).trim(), "0");
    println!("pause pid {pid} in {} with {ip}", netns_path.display());

    // Teardown: stop, delete task (ends the shim), container, snapshot; CNI DEL; namespace.
    ctd.kill_task(&id, 15).await.unwrap();
    let code = tokio::time::timeout(Duration::from_secs(10), ctd.wait_task(&id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(code, 0, "pause exits 0 on SIGTERM");
    ctd.delete_task(&id).await.unwrap();
    ctd.delete_container(&id).await.unwrap();
    ctd.remove_snapshot("overlayfs", &id).await.unwrap();
    cni.del(Some(&net), &net.name, &attach).await.unwrap();
    netns::remove(&netns_path).unwrap();
    // Idempotent, all of it.
    ctd.delete_task(&id).await.unwrap();
    ctd.delete_container(&id).await.unwrap();
    ctd.remove_snapshot("overlayfs", &id).await.unwrap();
    cni.del(Some(&net), &net.name, &attach).await.unwrap();
    netns::remove(&netns_path).unwrap();

    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "no process left"
    );
    let shims = std::process::Command::new("pgrep")
        .args(["-f", &format!("-namespace {ns_name} ")])
        .output()
        .unwrap();
    assert!(
        shims.stdout.is_empty(),
        "no shim left: {}",
        String::from_utf8_lossy(&shims.stdout)
    );
    common::cleanup_namespace(&common::containerd_socket(), &ns_name);
}
