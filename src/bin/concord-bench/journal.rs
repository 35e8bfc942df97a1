//! `concord-bench --only journal`: commit latency of the journal writer (the real store, group
//! commit, fsync) with 1,000 objects in the state, and bytes per object after compaction. Needs
//! no CRI endpoint: it drives `concord::journal` in a temp dir.
//!
//! Phases: fill (250 pods, 750 containers with kubelet-sized configs, one append each), then 1,000
//! fact appends (container started/exited) one at a time, then the same 10 at a time.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use concord::cri;
use concord::journal::{Event, Journal};

fn kv(n: usize, prefix: &str) -> HashMap<String, String> {
    (0..n)
        .map(|i| {
            (
                format!("{prefix}.example.com/key-{i}"),
                format!("value-{i}-{prefix}"),
            )
        })
        .collect()
}

fn sandbox(i: usize) -> Event {
    let config = cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: format!("pod-{i}"),
            uid: format!("{i:08}-aaaa-bbbb-cccc-dddddddddddd"),
            namespace: "bench".into(),
            attempt: 0,
        }),
        hostname: format!("pod-{i}"),
        log_directory: format!("/var/log/pods/bench_pod-{i}"),
        labels: kv(6, "label"),
        annotations: kv(6, "annotation"),
        ..Default::default()
    };
    Event::SandboxRequested {
        id: format!("{i:064}"),
        config: Box::new(config),
        runtime_handler: String::new(),
        netns_path: Some(format!("/var/run/netns/cni-{i}")),
        created_at: i as i64,
    }
}

fn container(i: usize) -> Event {
    let config = cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: format!("c-{i}"),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: "sha256:".to_string() + &"ab".repeat(32),
            ..Default::default()
        }),
        command: vec!["/bin/sh".into(), "-c".into(), "sleep 3600".into()],
        envs: (0..10)
            .map(|e| cri::KeyValue {
                key: format!("ENV_{e}"),
                value: format!("value-{e}").into_bytes(),
            })
            .collect(),
        mounts: (0..3)
            .map(|m| cri::Mount {
                container_path: format!("/var/run/secrets/{m}"),
                host_path: format!("/var/lib/kubelet/pods/{i}/volumes/{m}"),
                readonly: true,
                ..Default::default()
            })
            .collect(),
        labels: kv(4, "label"),
        annotations: kv(4, "annotation"),
        log_path: format!("c-{i}/0.log"),
        ..Default::default()
    };
    Event::ContainerRequested {
        id: format!("c{i:063}"),
        sandbox_id: format!("{:064}", i / 3),
        config: Box::new(config),
        image_id: "sha256:".to_string() + &"ab".repeat(32),
        image_name: "busybox".into(),
        log_path: format!("/var/log/pods/bench/c-{i}/0.log"),
        image_volumes: Vec::new(),
        created_at: i as i64,
    }
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)].as_secs_f64() * 1000.0
}

pub async fn section() {
    let dir = tempfile_dir();
    let path = dir.join("journal.redb");
    let (journal, state, info) = Journal::open(&path).expect("open the journal");
    let metrics = Arc::new(concord::metrics::Metrics::new());
    let stop = tokio_util::sync::CancellationToken::new();
    let (handle, task) =
        concord::journal::spawn_writer(journal, state, &info, 1000, 64, metrics, stop.clone());
    let timed = |events: Vec<Event>| {
        let handle = handle.clone();
        async move {
            let t = Instant::now();
            handle.append(events).await.expect("append");
            t.elapsed()
        }
    };
    let mut fill = Vec::new();
    for i in 0..250 {
        fill.push(timed(vec![sandbox(i)]).await);
    }
    for i in 0..750 {
        fill.push(timed(vec![container(i)]).await);
    }
    let fact = |n: usize| {
        let id = format!("c{:063}", n % 750);
        if n % 2 == 0 {
            Event::ContainerStarted {
                id,
                pid: n as u32 + 1,
                started_at: n as i64,
            }
        } else {
            Event::ContainerExited {
                id,
                exit_code: 0,
                finished_at: n as i64,
                reason: "Completed".into(),
                message: String::new(),
            }
        }
    };
    let mut serial = Vec::new();
    for n in 0..1000 {
        serial.push(timed(vec![fact(n)]).await);
    }
    let mut concurrent = Vec::new();
    for round in 0..100 {
        let batch = (0..10).map(|k| timed(vec![fact(round * 10 + k)]));
        concurrent.extend(futures::future::join_all(batch).await);
    }
    let objects = handle.state().sandboxes.len() + handle.state().containers.len();
    stop.cancel();
    drop(handle);
    let _ = task.await;
    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    println!("| journal phase | commits | p50 ms | p99 ms |");
    println!("|---|---|---|---|");
    for (name, v) in [
        ("fill to 1,000 objects (one config each)", &mut fill),
        ("facts at 1,000 objects, serial", &mut serial),
        ("facts at 1,000 objects, 10 concurrent", &mut concurrent),
    ] {
        let n = v.len();
        println!(
            "| {name} | {n} | {:.3} | {:.3} |",
            pct(v, 0.5),
            pct(v, 0.99)
        );
    }
    println!(
        "journal file: {bytes} bytes, {objects} objects, {} bytes/object",
        bytes / objects.max(1) as u64
    );
    std::fs::remove_dir_all(&dir).ok();
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("concord-bench-journal-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}
