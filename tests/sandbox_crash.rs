//! Crash safety: pods are run, stopped and removed while concord is SIGKILLed at random moments;
//! after every restart the node converges, and at the end nothing is leaked: no netns, IP
//! allocation, CNI cache entry, containerd container, task, shim or sandbox snapshot.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::Daemon;
use k8s_cri::v1 as cri;

fn config(n: u32) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: format!("crash-{n}"),
            uid: format!("uid-crash-{n}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: format!("crash-{n}"),
        ..Default::default()
    }
}

/// host-local's allocations on the test network: "address → container id" (every sandbox this
/// test made, kept or not, must have given its address back).
fn allocations() -> std::collections::BTreeSet<String> {
    std::fs::read_dir("/var/lib/cni/networks/rig-bridge")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with("10."))
                .map(|e| {
                    let owner = std::fs::read_to_string(e.path()).unwrap_or_default();
                    format!(
                        "{} {}",
                        e.file_name().to_string_lossy(),
                        owner.lines().next().unwrap_or("")
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Runs, stops and removes pods as fast as it can until told to stop; errors (concord dying
/// under it) are expected.
async fn churn(socket: std::path::PathBuf, next: Arc<AtomicU32>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::SeqCst) {
        let Ok(ch) = common::uds_channel(&socket).await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let mut rt = cri::runtime_service_client::RuntimeServiceClient::new(ch);
        let n = next.fetch_add(1, Ordering::SeqCst);
        let Ok(r) = rt
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config(n)),
                runtime_handler: String::new(),
            })
            .await
        else {
            continue;
        };
        let id = r.into_inner().pod_sandbox_id;
        if n % 3 == 0 {
            continue; // leave some running
        }
        if rt
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: id.clone(),
            })
            .await
            .is_err()
        {
            continue;
        }
        if n % 3 == 1 {
            let _ = rt
                .remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
                .await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_converges_and_leaks_nothing() {
    let kills: u32 = std::env::var("CONCORD_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let mut d = Daemon::new();
    d.extra.push(format!(
        "--registry-config-path={}",
        std::env::var("CONCORD_TEST_HOSTS_DIR")
            .unwrap_or_else(|_| "/tmp/rig/containerd/certs.d".into())
    ));
    d.extra
        .push(format!("--netns-dir={}", d.dir.join("netns").display()));
    d.extra.push("--log-level=info".into());
    let allocated_before = allocations();
    d.start().await;
    let next = Arc::new(AtomicU32::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..2)
        .map(|_| tokio::spawn(churn(d.socket.clone(), next.clone(), stop.clone())))
        .collect();
    let mut restarts = Duration::ZERO;
    for _ in 0..kills {
        tokio::time::sleep(Duration::from_millis(fastrand::u64(20..400))).await;
        d.kill9();
        restarts += d.start().await;
    }
    let kills_done = std::time::Instant::now();
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        let _ = w.await;
    }
    println!(
        "workers stopped in {:.1} s",
        kills_done.elapsed().as_secs_f64()
    );
    println!(
        "{kills} kills during {} sandbox runs; restarts took {:.1} s in all",
        next.load(Ordering::SeqCst),
        restarts.as_secs_f64()
    );

    // Converged: every sandbox is Ready with an address and a running pause, or NotReady after a
    // stop; none pending.
    let mut rt = d.runtime().await;
    let start = std::time::Instant::now();
    let items = loop {
        let mut i = d.introspection().await;
        let objects = i
            .list_objects(concord::proto::ListObjectsRequest {
                kind: "sandbox".into(),
                id_prefix: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .objects;
        if objects
            .iter()
            .all(|o| !o.pending && o.observed_generation >= o.generation)
        {
            break rt
                .list_pod_sandbox(cri::ListPodSandboxRequest::default())
                .await
                .unwrap()
                .into_inner()
                .items;
        }
        if start.elapsed() > Duration::from_secs(60) {
            // Say which objects are stuck and why, in a few lines (CI shows little of the
            // output), and keep the daemon's log.
            let log = d.log();
            let kept = std::env::temp_dir().join(format!("{}-concord.log", d.namespace));
            std::fs::write(&kept, &log).ok();
            for o in objects
                .iter()
                .filter(|o| o.pending || o.observed_generation < o.generation)
            {
                println!(
                    "stuck {} desired={} observed={} gen={}/{} retries={} error={}",
                    o.id,
                    o.desired,
                    o.observed,
                    o.observed_generation,
                    o.generation,
                    o.retries,
                    o.last_error
                );
                for line in log.lines().filter(|l| l.contains(&o.id)).rev().take(4) {
                    println!("  {line}");
                }
            }
            panic!("not converged after 60 s; log kept at {}", kept.display());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    if std::env::var_os("CONCORD_KEEP_LOG").is_some() {
        std::fs::write("/tmp/crash-concord.log", d.log()).ok();
    }
    let mut ready = 0;
    for s in &items {
        let st = rt
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: s.id.clone(),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap();
        if st.state == cri::PodSandboxState::SandboxReady as i32 {
            ready += 1;
            assert!(
                st.network.unwrap().ip.starts_with("10.88."),
                "a Ready sandbox has an address"
            );
        }
    }
    println!(
        "{} sandboxes after the kills, {ready} Ready, converged in {:.1} s",
        items.len(),
        start.elapsed().as_secs_f64()
    );
    let removing = std::time::Instant::now();

    // Remove them all; then nothing may be left anywhere.
    // As kubelet does, a failed remove is retried (the loop retries the teardown meanwhile).
    let mut retried = 0;
    for s in &items {
        let start = std::time::Instant::now();
        while let Err(e) = rt
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: s.id.clone(),
            })
            .await
        {
            retried += 1;
            println!("remove {} failed, retrying: {}", &s.id[..12], e.message());
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "remove never succeeded: {}",
                e.message()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    println!(
        "removed in {:.1} s; {retried} removes needed a retry",
        removing.elapsed().as_secs_f64()
    );

    assert!(rt
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items
        .is_empty());
    let netns = std::fs::read_dir(d.dir.join("netns"))
        .map(|r| r.count())
        .unwrap_or(0);
    assert_eq!(netns, 0, "network namespaces leaked");
    let cache = std::fs::read_dir(d.state_dir.join("cni-cache"))
        .map(|r| r.count())
        .unwrap_or(0);
    assert_eq!(cache, 0, "CNI results left in the cache");
    let ctd = concord::containerd::Containerd::new(&d.containerd, &d.namespace, Default::default());
    let containers = ctd
        .containers()
        .list(
            ctd.request(containerd_client::services::v1::ListContainersRequest { filters: vec![] }),
        )
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!(
        containers.is_empty(),
        "containers leaked: {:?}",
        containers.iter().map(|c| &c.id).collect::<Vec<_>>()
    );
    let tasks = ctd
        .tasks()
        .list(
            ctd.request(containerd_client::services::v1::ListTasksRequest {
                filter: String::new(),
            }),
        )
        .await
        .unwrap()
        .into_inner()
        .tasks;
    assert!(tasks.is_empty(), "tasks leaked");
    let mut keys = Vec::new();
    let req = containerd_client::services::v1::snapshots::ListSnapshotsRequest {
        snapshotter: "overlayfs".into(),
        ..Default::default()
    };
    let mut stream = ctd
        .snapshots()
        .list(ctd.request(req))
        .await
        .unwrap()
        .into_inner();
    while let Some(m) = stream.message().await.unwrap() {
        keys.extend(m.info.into_iter().map(|i| i.name));
    }
    assert_eq!(
        keys.len(),
        1,
        "only the pause image's layer snapshot remains: {keys:?}"
    );
    let shims = std::process::Command::new("pgrep")
        .args(["-f", &format!("-namespace {} ", d.namespace)])
        .output()
        .unwrap();
    assert!(
        shims.stdout.is_empty(),
        "shims leaked: {}",
        String::from_utf8_lossy(&shims.stdout)
    );
    let leaked_ips: Vec<String> = allocations()
        .into_iter()
        .filter(|a| !allocated_before.contains(a))
        .collect();
    assert!(
        leaked_ips.is_empty(),
        "IP allocations leaked: {leaked_ips:?}"
    );
}
