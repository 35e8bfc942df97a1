//! Crash safety: pods are run, stopped and removed while concord is SIGKILLed at random moments,
//! while containerd is restarted, and while a CNI plugin fails or hangs; containers are created,
//! started, stopped and removed while concord is SIGKILLed; afterwards the node
//! converges (every sandbox Ready with an address and a running pause, or stopped; the journal
//! agrees with containerd's tasks), and once everything is removed nothing is leaked: no netns,
//! IP allocation, CNI cache entry, containerd container, task, shim or sandbox snapshot.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{container_config, pod_base, pod_flags, pull_ok, run_pod, Daemon, OwnContainerd};
use concord::cri;

fn config(n: u32) -> cri::PodSandboxConfig {
    pod_base(&format!("crash-{n}"))
}

/// host-local's allocations on `network`: "address → container id" (every sandbox a test made,
/// kept or not, must have given its address back).
fn allocations(network: &str) -> std::collections::BTreeSet<String> {
    std::fs::read_dir(format!("/var/lib/cni/networks/{network}"))
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
            // concord or containerd is down: do not spin.
            tokio::time::sleep(Duration::from_millis(20)).await;
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

/// A daemon for these tests: the local registry for the pause image, netns under its own dir.
fn daemon(containerd: Option<&OwnContainerd>) -> Daemon {
    let mut d = Daemon::new();
    if let Some(c) = containerd {
        d.containerd = c.socket.clone();
    }
    pod_flags(&mut d);
    d.extra.push("--log-level=info".into());
    d
}

/// What is done to the node while pods churn.
enum Fault<'a> {
    /// SIGKILL concord and start it again.
    KillConcord,
    /// Stop containerd, leave it down a moment, start it again.
    RestartContainerd(&'a mut OwnContainerd),
}

/// Two workers churn pods while `faults` faults hit at random moments; answers the runs started.
async fn churn_under(d: &mut Daemon, faults: u32, mut fault: Fault<'_>) -> u32 {
    let next = Arc::new(AtomicU32::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..2)
        .map(|_| tokio::spawn(churn(d.socket.clone(), next.clone(), stop.clone())))
        .collect();
    let mut restarts = Duration::ZERO;
    for _ in 0..faults {
        // concord restarts in milliseconds, containerd in about a second: let pods get going
        // between containerd restarts.
        let gap = match fault {
            Fault::KillConcord => 20..400,
            Fault::RestartContainerd(_) => 500..3000,
        };
        tokio::time::sleep(Duration::from_millis(fastrand::u64(gap))).await;
        match &mut fault {
            Fault::KillConcord => {
                d.kill9();
                restarts += d.start().await;
            }
            Fault::RestartContainerd(c) => {
                tokio::task::block_in_place(|| c.stop());
                tokio::time::sleep(Duration::from_millis(fastrand::u64(0..300))).await;
                tokio::task::block_in_place(|| c.restart());
            }
        }
    }
    let faults_done = std::time::Instant::now();
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        let _ = w.await;
    }
    let runs = next.load(Ordering::SeqCst);
    println!(
        "{faults} faults during {runs} sandbox runs; concord restarts took {:.1} s, the workers \
         stopped {:.1} s after the last fault",
        restarts.as_secs_f64(),
        faults_done.elapsed().as_secs_f64()
    );
    runs
}

/// containerd's tasks in the test's namespace.
async fn tasks(
    ctd: &concord::containerd::Containerd,
) -> Vec<containerd_client::types::v1::Process> {
    ctd.tasks()
        .list(
            ctd.request(containerd_client::services::v1::ListTasksRequest {
                filter: String::new(),
            }),
        )
        .await
        .unwrap()
        .into_inner()
        .tasks
}

/// The leases in containerd with the resources each holds.
async fn leases(ctd: &concord::containerd::Containerd) -> Vec<String> {
    use containerd_client::services::v1::{ListRequest, ListResourcesRequest};
    let req = ListRequest { filters: vec![] };
    let all = ctd
        .leases()
        .list(ctd.request(req))
        .await
        .unwrap()
        .into_inner()
        .leases;
    let mut out = Vec::new();
    for l in all {
        let req = ListResourcesRequest { id: l.id.clone() };
        let held = match ctd.leases().list_resources(ctd.request(req)).await {
            Ok(r) => r.into_inner().resources,
            Err(_) => Vec::new(),
        };
        let held: Vec<String> = held
            .into_iter()
            .map(|r| format!("{}:{}", r.r#type, r.id))
            .collect();
        out.push(format!("{} {:?} holds {held:?}", l.id, l.labels));
    }
    out
}

/// Waits until nothing is pending, checks every sandbox (Ready ⇒ an address and a running
/// pause; the journal's Ready set is containerd's running set), removes them all (retrying, as
/// kubelet does) and then checks that nothing is left anywhere.
async fn converges_and_leaves_nothing(
    d: &Daemon,
    network: &str,
    allocated_before: &std::collections::BTreeSet<String>,
) {
    let ctd = concord::containerd::Containerd::new(&d.containerd, &d.namespace, Default::default());
    let mut rt = d.runtime().await;
    let start = std::time::Instant::now();
    let items = loop {
        let mut i = d.introspection().await;
        let objects = i
            .list_objects(concord::proto::ListObjectsRequest {
                kind: "sandbox".into(),
                id_prefix: String::new(),
                ..Default::default()
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
        if start.elapsed() > Duration::from_secs(120) {
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
            panic!("not converged after 120 s; log kept at {}", kept.display());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Pause tasks (containers' tasks are checked by the containers' test); leftovers of
    // removed sandboxes are caught after the removal below.
    let running: std::collections::BTreeSet<String> = tasks(&ctd)
        .await
        .into_iter()
        .filter(|t| t.status == containerd_client::types::v1::Status::Running as i32)
        .filter(|t| items.iter().any(|s| s.id == t.id))
        .map(|t| t.id)
        .collect();
    let mut ready = std::collections::BTreeSet::new();
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
            ready.insert(s.id.clone());
            assert!(
                st.network.unwrap().ip.starts_with("10."),
                "a Ready sandbox has an address"
            );
        }
    }
    assert_eq!(
        ready, running,
        "Ready sandboxes are exactly containerd's running tasks"
    );
    println!(
        "{} sandboxes after the faults, {} Ready, converged in {:.1} s",
        items.len(),
        ready.len(),
        start.elapsed().as_secs_f64()
    );

    // Remove them all; then nothing may be left anywhere.
    let removing = std::time::Instant::now();
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
    // No per-object state (sandbox files, container dirs with exec FIFOs) outlives its object.
    for dir in ["sandboxes", "containers"] {
        let left: Vec<String> = std::fs::read_dir(d.state_dir.join(dir))
            .map(|r| {
                r.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        assert!(left.is_empty(), "state left in {dir}: {left:?}");
    }
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
    assert!(tasks(&ctd).await.is_empty(), "tasks leaked");
    // A removed container's snapshot is left to containerd's collector, which runs within its
    // interval of a deletion (the average collection time over its pause threshold: up to
    // seconds on a loaded machine). Gone within 20 s, or it leaked (and the leases holding
    // snapshots are shown).
    let collecting = std::time::Instant::now();
    loop {
        let keys = common::active_snapshot_keys(d).await;
        if keys.is_empty() {
            break;
        }
        if collecting.elapsed() > Duration::from_secs(20) {
            panic!(
                "active snapshots leaked: {keys:?}; leases: {:?}",
                leases(&ctd).await
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "containerd's collector removed the last snapshots in {:.1} s",
        collecting.elapsed().as_secs_f64()
    );
    let shims = std::process::Command::new("pgrep")
        // `--`: the pattern starts with a dash (without it pgrep failed and found nothing).
        .args(["-f", "--", &format!("-namespace {} ", d.namespace)])
        .output()
        .unwrap();
    assert!(
        shims.stdout.is_empty(),
        "shims leaked: {}",
        String::from_utf8_lossy(&shims.stdout)
    );
    let leaked_ips: Vec<String> = allocations(network)
        .into_iter()
        .filter(|a| !allocated_before.contains(a))
        .collect();
    assert!(
        leaked_ips.is_empty(),
        "IP allocations leaked: {leaked_ips:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_converges_and_leaks_nothing() {
    let kills: u32 = std::env::var("CONCORD_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let mut d = daemon(None);
    let allocated_before = allocations("rig-bridge");
    d.start().await;
    churn_under(&mut d, kills, Fault::KillConcord).await;
    converges_and_leaves_nothing(&d, "rig-bridge", &allocated_before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_restarted_mid_operation_converges_and_leaks_nothing() {
    let mut ctd = OwnContainerd::start();
    let mut d = daemon(Some(&ctd));
    // A network of its own (the plugin passes through): the kill test runs beside it.
    flaky_network(&mut d, "restarts", "10.98.0.0/24");
    let allocated_before = allocations("restarts");
    d.start().await;
    churn_under(&mut d, 8, Fault::RestartContainerd(&mut ctd)).await;
    converges_and_leaves_nothing(&d, "restarts", &allocated_before).await;
}

/// A network of the test's own (`name`, bridge `cni-<name>`, addresses from `subnet`), so that
/// its address checks see no other test's pods. Its one plugin wraps the real bridge plugin and
/// misbehaves on demand: the answered mode file says `fail-add`/`fail-del` (fail after the real
/// plugin did its work), `hang-add`/`hang-del` (hang after it); anything else passes through.
fn flaky_network(d: &mut Daemon, name: &str, subnet: &str) -> std::path::PathBuf {
    let dir = d.dir.join("cni");
    let (conf, bin, mode) = (dir.join("conf"), dir.join("bin"), dir.join("mode"));
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::create_dir_all(&bin).unwrap();
    let plugin = bin.join("flaky");
    std::fs::write(
        &plugin,
        format!(
            r#"#!/bin/sh
conf=$(cat)
mode=$(cat {mode} 2>/dev/null)
out=$(printf '%s' "$conf" | /usr/lib/cni/bridge)
rc=$?
case "$CNI_COMMAND:$mode" in
  ADD:hang-add|DEL:hang-del) exec sleep 600 ;;
  ADD:fail-add|DEL:fail-del)
    echo '{{"cniVersion":"0.4.0","code":11,"msg":"flaky: told to fail"}}'
    exit 1 ;;
esac
printf '%s' "$out"
exit $rc
"#,
            mode = mode.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&plugin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(
        conf.join("10-flaky.conflist"),
        serde_json::json!({"cniVersion": "0.4.0", "name": name, "plugins": [
            {"type": "flaky", "bridge": format!("cni-{name}"), "isGateway": true,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]]}}]})
        .to_string(),
    )
    .unwrap();
    d.extra.retain(|e| !e.starts_with("--cni-conf-dir"));
    d.extra.push(format!("--cni-conf-dir={}", conf.display()));
    d.extra
        .push(format!("--cni-bin-dir={}:/usr/lib/cni", bin.display()));
    d.extra.push("--cni-plugin-timeout-seconds=2".into());
    mode
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cni_plugin_that_fails_or_hangs_on_add_and_del_leaks_nothing() {
    let mut d = daemon(None);
    let mode = flaky_network(&mut d, "flaky", "10.99.0.0/24");
    let set = |m: &str| std::fs::write(&mode, m).unwrap();
    let allocated_before = allocations("flaky");
    d.start().await;
    let mut rt = d.runtime().await;
    let run = |n: u32| cri::RunPodSandboxRequest {
        config: Some(config(n)),
        runtime_handler: String::new(),
    };

    // ADD fails or hangs after the bridge allocated an address: RunPodSandbox fails naming the
    // step, and what it made (netns, address) is gone before it answers.
    for (n, m, says) in [
        (1, "fail-add", "told to fail"),
        (2, "hang-add", "did not finish"),
    ] {
        set(m);
        let err = rt.run_pod_sandbox(run(n)).await.unwrap_err();
        assert!(
            err.message().contains("CNI ADD") && err.message().contains(says),
            "{m}: {}",
            err.message()
        );
        let left = rt
            .list_pod_sandbox(cri::ListPodSandboxRequest::default())
            .await
            .unwrap()
            .into_inner()
            .items;
        assert!(left.is_empty(), "{m}: a failed run leaves no sandbox");
        assert_eq!(
            allocations("flaky"),
            allocated_before,
            "{m}: address released"
        );
        assert_eq!(
            std::fs::read_dir(d.dir.join("netns"))
                .map(|r| r.count())
                .unwrap_or(0),
            0,
            "{m}: netns removed"
        );
    }

    // DEL fails or hangs: StopPodSandbox fails naming the step; the loop retries and, once the
    // plugin behaves, the stop goes through.
    for (n, m, says) in [
        (3, "fail-del", "told to fail"),
        (4, "hang-del", "did not finish"),
    ] {
        set("ok");
        let id = rt
            .run_pod_sandbox(run(n))
            .await
            .unwrap()
            .into_inner()
            .pod_sandbox_id;
        set(m);
        let err = rt
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: id.clone(),
            })
            .await
            .unwrap_err();
        assert!(
            err.message().contains("CNI DEL") && err.message().contains(says),
            "{m}: {}",
            err.message()
        );
        set("ok");
        common::eventually(Duration::from_secs(30), "the stop retried", || async {
            d.runtime()
                .await
                .stop_pod_sandbox(cri::StopPodSandboxRequest {
                    pod_sandbox_id: id.clone(),
                })
                .await
                .is_ok()
        })
        .await;
    }

    // concord killed while ADD hangs: after the restart the sandbox is run to Ready.
    set("hang-add");
    let socket = d.socket.clone();
    let pending = tokio::spawn(async move {
        let mut rt = cri::runtime_service_client::RuntimeServiceClient::new(
            common::uds_channel(&socket).await.unwrap(),
        );
        let _ = rt.run_pod_sandbox(run(5)).await;
    });
    tokio::time::sleep(Duration::from_millis(1000)).await;
    d.kill9();
    let _ = pending.await;
    set("ok");
    d.start().await;
    converges_and_leaves_nothing(&d, "flaky", &allocated_before).await;
}

/// Creates, starts, stops and removes containers in pod `pod` until told to stop.
async fn churn_containers(
    socket: std::path::PathBuf,
    pod: String,
    next: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::SeqCst) {
        let Ok(ch) = common::uds_channel(&socket).await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let mut rt = cri::runtime_service_client::RuntimeServiceClient::new(ch);
        let n = next.fetch_add(1, Ordering::SeqCst);
        let Ok(r) = rt
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(cri::ContainerConfig {
                    log_path: format!("c{n}.log"),
                    ..container_config(&format!("c{n}"), "busybox", &["sleep", "1000"])
                }),
                sandbox_config: None,
            })
            .await
        else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let id = r.into_inner().container_id;
        if rt
            .start_container(cri::StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .is_err()
            || n % 3 == 0
        {
            continue;
        }
        if rt
            .stop_container(cri::StopContainerRequest {
                container_id: id.clone(),
                timeout: 0,
            })
            .await
            .is_err()
        {
            continue;
        }
        if n % 3 == 1 {
            let _ = rt
                .remove_container(cri::RemoveContainerRequest { container_id: id })
                .await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_under_kill_9_converge_and_leak_nothing() {
    let mut d = daemon(None);
    // A network of its own (the plugin passes through): the other tests run beside it.
    flaky_network(&mut d, "ctrs", "10.97.0.0/24");
    let allocated_before = allocations("ctrs");
    d.start().await;
    pull_ok(&d, "busybox").await;
    let mut pod_config = config(1000);
    pod_config.log_directory = d.dir.join("logs").display().to_string();
    let pod = run_pod(&d, &pod_config).await.unwrap();
    // A container that counts on its stdout through every kill: it must keep running and not
    // one line may be lost.
    let logger = {
        let mut rt = d.runtime().await;
        let id = rt
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(cri::ContainerConfig {
                    log_path: "logger.log".into(),
                    ..container_config(
                        "logger",
                        "busybox",
                        &[
                            "sh",
                            "-c",
                            "i=0; while :; do echo n $i; i=$((i+1)); sleep 0.02; done",
                        ],
                    )
                }),
                sandbox_config: None,
            })
            .await
            .unwrap()
            .into_inner()
            .container_id;
        rt.start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap();
        id
    };
    let next = Arc::new(AtomicU32::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..2)
        .map(|_| {
            tokio::spawn(churn_containers(
                d.socket.clone(),
                pod.clone(),
                next.clone(),
                stop.clone(),
            ))
        })
        .collect();
    let kills: u32 = std::env::var("CONCORD_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    for _ in 0..kills {
        tokio::time::sleep(Duration::from_millis(fastrand::u64(20..400))).await;
        d.kill9();
        d.start().await;
    }
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        let _ = w.await;
    }
    println!(
        "{kills} kills during {} container runs",
        next.load(Ordering::SeqCst)
    );

    // Converged: every container is where its record says: running ones have a running task,
    // nothing else has one.
    let start = std::time::Instant::now();
    loop {
        let objects = d
            .introspection()
            .await
            .list_objects(concord::proto::ListObjectsRequest {
                kind: "container".into(),
                id_prefix: String::new(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .objects;
        if objects
            .iter()
            .all(|o| !o.pending && o.observed_generation >= o.generation)
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "containers not converged: {:?}",
            objects
                .iter()
                .filter(|o| o.pending || o.observed_generation < o.generation)
                .map(|o| format!("{} {} {}", o.id, o.observed, o.last_error))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let listed = d
        .runtime()
        .await
        .list_containers(cri::ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers;
    let mut running: std::collections::BTreeSet<String> = listed
        .iter()
        .filter(|c| c.state == cri::ContainerState::ContainerRunning as i32)
        .map(|c| c.id.clone())
        .collect();
    running.insert(pod.clone());
    let ctd = concord::containerd::Containerd::new(&d.containerd, &d.namespace, Default::default());
    let tasks: std::collections::BTreeSet<String> = tasks(&ctd)
        .await
        .into_iter()
        .filter(|t| t.status == containerd_client::types::v1::Status::Running as i32)
        .map(|t| t.id)
        .collect();
    assert_eq!(
        tasks, running,
        "containerd's running tasks are the Running containers and the pause"
    );
    println!(
        "{} containers after the kills, {} running",
        listed.len(),
        running.len() - 1
    );
    assert!(
        running.contains(&logger),
        "the logging container still runs"
    );
    // Its log: every number from 0 on, once, in order, across all the kills.
    let text = std::fs::read_to_string(d.dir.join("logs").join("logger.log")).unwrap();
    // Only whole lines: the logger may be writing the last one right now.
    let whole = text.rfind('\n').map_or("", |end| &text[..=end]);
    let numbers: Vec<u64> = whole
        .lines()
        .filter_map(|l| l.rsplit_once(" n ").and_then(|(_, n)| n.parse().ok()))
        .collect();
    assert!(numbers.len() > 50, "{} lines logged", numbers.len());
    let gaps: Vec<(u64, u64)> = numbers
        .windows(2)
        .filter(|w| w[1] != w[0] + 1)
        .map(|w| (w[0], w[1]))
        .take(5)
        .collect();
    assert!(
        numbers[0] == 0 && gaps.is_empty(),
        "log lines lost or repeated across the kills: first {}, gaps {gaps:?}",
        numbers[0]
    );
    println!(
        "the logger wrote {} lines through the kills, none lost",
        numbers.len()
    );
    converges_and_leaves_nothing(&d, "ctrs", &allocated_before).await;
}
