//! Migration from containerd's CRI plugin on the dev node: a pod with a hostPort run by
//! containerd's own CRI (through crictl), the node switched to concord (containerd restarted
//! without its CRI, concord started on the same namespace with a pod of its own), `concord adopt`
//! removes containerd's pod (IP, hostPort rules, netns, containers, snapshots) and leaves concord's
//! alone; `concord adopt --reverse` then removes concord's, and containerd's CRI runs pods again.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{crictl_binary, pod_flags, pull_ok, snapshot_keys, Daemon, OwnContainerd, Pod};
use concord::cri;

/// The rig's CNI network (its host-local IPAM keeps one file per address, holding the id).
const NETWORK: &str = "rig-bridge";

/// crictl against containerd's CRI on `ctd`; answers stdout (it must succeed).
fn crictl(bin: &Path, ctd: &OwnContainerd, args: &[&str]) -> String {
    let endpoint = format!("unix://{}", ctd.socket.display());
    let out = Command::new(bin)
        .args([
            "--runtime-endpoint",
            &endpoint,
            "--image-endpoint",
            &endpoint,
        ])
        .args(["--timeout", "60s"])
        .args(args)
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_string();
    assert!(
        out.status.success(),
        "crictl {args:?}: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// The host-local IPAM files holding an address for sandbox `id`.
fn addresses_held(id: &str) -> Vec<PathBuf> {
    let dir = Path::new("/var/lib/cni/networks").join(NETWORK);
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| std::fs::read_to_string(p).is_ok_and(|t| t.lines().next() == Some(id)))
                .collect()
        })
        .unwrap_or_default()
}

/// The NAT rules the portmap plugin keeps for sandbox `id` (its hostPorts).
fn hostport_rules(id: &str) -> usize {
    let out = Command::new("iptables")
        .args(["-t", "nat", "-S"])
        .output()
        .expect("iptables");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(id))
        .count()
}

/// `concord adopt [extra]` with the daemon's settings: (success, stdout + stderr).
fn adopt(d: &Daemon, extra: &[&str]) -> (bool, String) {
    let out = d
        .command()
        .arg("adopt")
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Runs a pod (hostPort 18080 → 80) and a busybox container under containerd's CRI; answers
/// (sandbox id, container id, netns path).
fn run_under_containerds_cri(bin: &Path, ctd: &OwnContainerd) -> (String, String, String) {
    let pod = ctd.dir.join("pod.json");
    let ctr = ctd.dir.join("ctr.json");
    std::fs::write(
        &pod,
        serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop", "uid": "uid-web", "attempt": 0},
            "hostname": "web",
            "log_directory": ctd.dir.join("logs"),
            "port_mappings": [{"protocol": 0, "container_port": 80, "host_port": 18080}],
            "linux": {}
        })
        .to_string(),
    )
    .unwrap();
    std::fs::write(
        &ctr,
        r#"{"metadata":{"name":"app"},"image":{"image":"busybox"},"command":["sleep","1000"],"log_path":"app.log","linux":{}}"#,
    )
    .unwrap();
    crictl(bin, ctd, &["pull", "busybox"]);
    let (pod, ctr) = (pod.to_str().unwrap(), ctr.to_str().unwrap());
    let sandbox = crictl(bin, ctd, &["runp", pod]);
    let container = crictl(bin, ctd, &["create", &sandbox, ctr, pod]);
    crictl(bin, ctd, &["start", &container]);
    let info: serde_json::Value =
        serde_json::from_str(&crictl(bin, ctd, &["inspectp", "-o", "json", &sandbox])).unwrap();
    let netns = info["info"]["runtimeSpec"]["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["type"] == "network")
        .and_then(|n| n["path"].as_str())
        .unwrap()
        .to_string();
    (sandbox, container, netns)
}

/// The containers in the daemon's namespace of its containerd: (id, made by concord).
async fn containers(d: &Daemon) -> Vec<(String, bool)> {
    let ctd = concord::containerd::Containerd::new(&d.containerd, &d.namespace, Default::default());
    let list = ctd.list_containers(Vec::new()).await.unwrap();
    list.into_iter()
        .map(|c| {
            let ours = c.labels.contains_key(concord::containerd::OWNER_LABEL);
            (c.id, ours)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adopt_removes_what_containerds_cri_left_and_reverse_hands_the_node_back() {
    let Some(bin) = crictl_binary() else {
        eprintln!("SKIPPED: crictl not found (set CRICTL, or run hack/cri-tools.sh)");
        return;
    };
    // 1. containerd with its CRI plugin runs a pod with a hostPort.
    let mut ctd = OwnContainerd::start_with_cri(true);
    let (theirs, their_ctr, netns) = run_under_containerds_cri(&bin, &ctd);
    let held = addresses_held(&theirs);
    println!(
        "before adopt: containerd's pod {theirs}: addresses {held:?}, netns {netns} (exists: {}), \
         hostPort NAT rules {}",
        Path::new(&netns).exists(),
        hostport_rules(&theirs)
    );
    assert_eq!(held.len(), 1, "containerd's pod holds one address");
    assert!(Path::new(&netns).exists());
    assert!(hostport_rules(&theirs) > 0, "portmap made hostPort rules");

    // 2. The switch: containerd without its CRI, concord on the same namespace, with a pod.
    ctd.stop();
    ctd.write_config(false);
    ctd.restart();
    let mut d = Daemon::new();
    d.containerd = ctd.socket.clone();
    d.namespace = "k8s.io".into();
    pod_flags(&mut d);
    d.start().await;
    pull_ok(&d, "busybox").await;
    let mut config = common::pod_config(&d, "ours");
    config.port_mappings = vec![cri::PortMapping {
        protocol: cri::Protocol::Tcp as i32,
        container_port: 80,
        host_port: 18081,
        host_ip: String::new(),
    }];
    let ours = Pod::run(&d, config).await;
    let mut c = common::container_config("app", "busybox", &["sleep", "1000"]);
    c.log_path = "app.log".into();
    let our_ctr = ours.run_container(&d, c).await;
    assert_eq!(addresses_held(&ours.id).len(), 1);

    // 3. concord adopt (concord running: its objects carry its owner label and stay).
    let (ok, out) = adopt(&d, &[]);
    println!("concord adopt:\n{out}");
    assert!(ok, "{out}");
    assert!(out.contains(&theirs) && out.contains(&their_ctr), "{out}");
    println!(
        "after adopt: containerd's pod addresses {:?}, netns exists: {}, hostPort NAT rules {}",
        addresses_held(&theirs),
        Path::new(&netns).exists(),
        hostport_rules(&theirs)
    );
    assert!(
        addresses_held(&theirs).is_empty(),
        "its address is released"
    );
    assert!(!Path::new(&netns).exists(), "its netns is gone");
    assert_eq!(hostport_rules(&theirs), 0, "its hostPort rules are gone");
    let keys = snapshot_keys(&d).await;
    assert!(
        !keys.contains(&theirs) && !keys.contains(&their_ctr),
        "their snapshots are removed: {keys:?}"
    );
    let left = containers(&d).await;
    assert!(left.iter().all(|(_, ours)| *ours), "{left:?}");
    let ids: Vec<&str> = left.iter().map(|(id, _)| id.as_str()).collect();
    assert!(ids.contains(&ours.id.as_str()) && ids.contains(&our_ctr.as_str()));
    assert_eq!(
        addresses_held(&ours.id).len(),
        1,
        "concord's pod keeps its address"
    );
    let status = common::container_status(&d, &our_ctr).await;
    assert_eq!(status.state, cri::ContainerState::ContainerRunning as i32);
    // Run again: nothing left to do.
    let (ok, again) = adopt(&d, &[]);
    assert!(
        ok && again.contains("0 sandboxes and 0 containers"),
        "{again}"
    );

    // 4. The way back: concord's pods removed through concord.
    let (ok, out) = adopt(&d, &["--reverse"]);
    println!("concord adopt --reverse:\n{out}");
    assert!(ok && out.contains(&ours.id), "{out}");
    assert!(addresses_held(&ours.id).is_empty());
    assert_eq!(hostport_rules(&ours.id), 0);
    assert!(containers(&d).await.is_empty());
    println!(
        "after --reverse: concord's pod addresses {:?}, hostPort NAT rules {}",
        addresses_held(&ours.id),
        hostport_rules(&ours.id)
    );

    // 5. containerd's CRI takes the node again: its pod with the same hostPort runs.
    d.terminate().await;
    ctd.stop();
    ctd.write_config(true);
    ctd.restart();
    let (back, _, _) = run_under_containerds_cri(&bin, &ctd);
    assert_eq!(addresses_held(&back).len(), 1);
    crictl(&bin, &ctd, &["stopp", &back]);
    crictl(&bin, &ctd, &["rmp", &back]);
    assert!(addresses_held(&back).is_empty());
}
