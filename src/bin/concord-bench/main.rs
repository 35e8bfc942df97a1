//! concord-bench: the same CRI calls against concord and against a reference CRI (containerd's
//! own plugin) on the same machine in the same run; p50/p99 per operation and their ratio.
//!
//! Usage: concord-bench --concord unix-socket --reference unix-socket [--iterations N] [--image REF]
//!        [--concord-pid PID --reference-pid PID --own-containerd-pid PID] [--log-dir DIR]
//!        [--only images|sandboxes|containers|streaming|density|journal]
//!        [--concord-metrics URL --concord-journal PATH]
//!
//! With the pids it also reports resident memory with 100 running containers on each side.

mod density;
mod journal;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use concord::cri;
use concord::cri::image_service_client::ImageServiceClient;
use concord::cri::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

struct Args {
    concord: PathBuf,
    reference: PathBuf,
    iterations: usize,
    image: String,
    concord_pid: Option<u32>,
    reference_pid: Option<u32>,
    own_containerd_pid: Option<u32>,
    log_dir: PathBuf,
    /// concord's metrics URL and journal file (density: journal commit latency, bytes per object).
    concord_metrics: Option<String>,
    concord_journal: Option<PathBuf>,
    /// Only this section: images, sandboxes, containers or streaming (all when None).
    only: Option<String>,
}

fn args() -> Args {
    let mut a = Args {
        concord: "/run/concord/concord.sock".into(),
        reference: "/tmp/ctd-ref/containerd.sock".into(),
        iterations: 100,
        image: "docker.io/library/busybox:latest".into(),
        concord_pid: None,
        reference_pid: None,
        own_containerd_pid: None,
        log_dir: "/tmp/concord-bench/logs".into(),
        concord_metrics: None,
        concord_journal: None,
        only: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--concord" => a.concord = v.into(),
            "--reference" => a.reference = v.into(),
            "--iterations" => a.iterations = v.parse().expect("--iterations N"),
            "--image" => a.image = v,
            "--concord-pid" => a.concord_pid = Some(v.parse().expect("--concord-pid PID")),
            "--reference-pid" => a.reference_pid = Some(v.parse().expect("--reference-pid PID")),
            "--own-containerd-pid" => {
                a.own_containerd_pid = Some(v.parse().expect("--own-containerd-pid PID"))
            }
            "--log-dir" => a.log_dir = v.into(),
            "--only" => a.only = Some(v),
            "--concord-metrics" => a.concord_metrics = Some(v),
            "--concord-journal" => a.concord_journal = Some(v.into()),
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

async fn channel(path: &Path) -> Channel {
    concord::uds::connect(path)
        .await
        .unwrap_or_else(|e| panic!("connect to {}: {e}", path.display()))
}

fn spec(image: &str) -> Option<cri::ImageSpec> {
    Some(cri::ImageSpec {
        image: image.into(),
        ..Default::default()
    })
}

fn pct(v: &[Duration], p: f64) -> f64 {
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1000.0
}

/// One CRI endpoint's clients.
#[derive(Clone)]
struct Endpoint {
    rt: RuntimeServiceClient<Channel>,
    img: ImageServiceClient<Channel>,
    /// The connection under both (calls with a codec of the bench's own).
    ch: Channel,
}

/// The operations measured, by name.
const OPS: &[(&str, usize)] = &[
    ("Version", 100),
    ("Status", 100),
    ("ImageStatus", 100),
    ("ListImages", 100),
    ("ImageFsInfo", 100),
    ("PullImage (present)", 100),
];

/// Pull/remove cycles: each half timed on its own.
const CYCLES: usize = 50;

async fn run_op(e: &Endpoint, op: &str, image: &str) {
    let (mut rt, mut img) = (e.rt.clone(), e.img.clone());
    match op {
        "Version" => drop(rt.version(cri::VersionRequest::default()).await.unwrap()),
        "Status" => drop(
            rt.status(cri::StatusRequest { verbose: false })
                .await
                .unwrap(),
        ),
        "ImageStatus" => drop(
            img.image_status(cri::ImageStatusRequest {
                image: spec(image),
                verbose: false,
            })
            .await
            .unwrap(),
        ),
        "ListImages" => drop(
            img.list_images(cri::ListImagesRequest::default())
                .await
                .unwrap(),
        ),
        "ImageFsInfo" => drop(img.image_fs_info(cri::ImageFsInfoRequest {}).await.unwrap()),
        "PullImage (present)" => drop(
            img.pull_image(cri::PullImageRequest {
                image: spec(image),
                ..Default::default()
            })
            .await
            .unwrap(),
        ),
        "RemoveImage" => drop(
            img.remove_image(cri::RemoveImageRequest { image: spec(image) })
                .await
                .unwrap(),
        ),
        "PullImage (absent)" => drop(
            img.pull_image(cri::PullImageRequest {
                image: spec(image),
                ..Default::default()
            })
            .await
            .unwrap(),
        ),
        other => panic!("unknown op {other}"),
    }
}

fn pod(name: &str) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "bench".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        ..Default::default()
    }
}

/// Run, status, stop, remove of one sandbox; the four durations and their sum.
async fn sandbox_cycle(e: &Endpoint, name: &str) -> Vec<Duration> {
    let mut rt = e.rt.clone();
    let t = Instant::now();
    let id = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod(name)),
            runtime_handler: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    let run = t.elapsed();
    let t = Instant::now();
    rt.pod_sandbox_status(cri::PodSandboxStatusRequest {
        pod_sandbox_id: id.clone(),
        verbose: false,
    })
    .await
    .unwrap();
    let status = t.elapsed();
    let t = Instant::now();
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .unwrap();
    let stop = t.elapsed();
    let t = Instant::now();
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
        .await
        .unwrap();
    let remove = t.elapsed();
    vec![run, status, stop, remove, run + status + stop + remove]
}

/// Starts `n` sandboxes concurrently; answers the time until all are Ready, then removes them.
async fn many_pods(e: &Endpoint, n: usize, round: usize) -> Duration {
    let t = Instant::now();
    let runs = (0..n).map(|i| {
        let mut rt = e.rt.clone();
        async move {
            rt.run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(pod(&format!("many-{round}-{i}"))),
                runtime_handler: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .pod_sandbox_id
        }
    });
    let ids = futures::future::join_all(runs).await;
    let took = t.elapsed();
    for id in ids {
        remove_pod(e, id).await;
    }
    took
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let a = args();
    // The journal section drives the store alone (no CRI endpoint).
    if a.only.as_deref() == Some("journal") {
        journal::section().await;
        return;
    }
    let connect = |p: PathBuf| async move {
        let ch = channel(&p).await;
        Endpoint {
            rt: RuntimeServiceClient::new(ch.clone()),
            img: ImageServiceClient::new(ch.clone()),
            ch,
        }
    };
    let (reference, concord) = (
        connect(a.reference.clone()).await,
        connect(a.concord.clone()).await,
    );
    for e in [&reference, &concord] {
        run_op(e, "PullImage (present)", &a.image).await; // the image is there; warm-up
    }
    println!("| operation | n | reference p50 / p90 / p99 ms | concord p50 / p90 / p99 ms | p50 ratio (reference / concord) |");
    println!("|---|---|---|---|---|");
    let row = |op: &str, r: &mut Vec<Duration>, c: &mut Vec<Duration>| {
        r.sort();
        c.sort();
        println!(
            "| {op} | {} | {:.3} / {:.3} / {:.3} | {:.3} / {:.3} / {:.3} | {:.2}x |",
            r.len(),
            pct(r, 0.5),
            pct(r, 0.9),
            pct(r, 0.99),
            pct(c, 0.5),
            pct(c, 0.9),
            pct(c, 0.99),
            pct(r, 0.5) / pct(c, 0.5)
        );
    };
    // Alternate the two endpoints call by call, so both see the same machine state.
    let section = |name: &str| a.only.as_deref().is_none_or(|o| o == name);
    if section("images") {
        images_section(&a, &reference, &concord, &row).await;
    }
    if section("sandboxes") {
        sandboxes_section(&a, &reference, &concord, &row).await;
    }
    if section("containers") {
        containers_section(&a, &reference, &concord, &row).await;
    }
    if section("streaming") {
        streaming_section(&a, &reference, &concord, &row).await;
    }
    // Density runs only when asked for (it holds 200 pods and 2,000 containers).
    if a.only.as_deref() == Some("density") {
        let d = density::Density {
            pods: a.iterations,
            containers_per_pod: 3,
            parallel: 10,
            image: a.image.clone(),
            log_dir: a.log_dir.clone(),
            concord_pid: a.concord_pid,
            own_containerd_pid: a.own_containerd_pid,
            reference_pid: a.reference_pid,
            concord_metrics: a.concord_metrics.clone(),
            concord_journal: a.concord_journal.clone(),
        };
        density::section(&d, &reference, &concord, &row).await;
    }
}

/// Exec round trips (ExecSync, and Exec over WebSocket and SPDY with the project's clients)
/// and port-forward throughput over both, against both sides' streaming servers.
async fn streaming_section(a: &Args, reference: &Endpoint, concord: &Endpoint, row: &Row<'_>) {
    let sides = [reference, concord];
    let mut pods = Vec::new();
    let mut ids = Vec::new();
    for (side, e) in sides.iter().enumerate() {
        let dir = a
            .log_dir
            .join(if side == 0 { "reference" } else { "concord" });
        let pod = run_pod(e, "stream-bench", &dir).await;
        // A 64 MiB file served over HTTP on port 8080 inside the pod.
        let id =
            e.rt.clone()
                .create_container(cri::CreateContainerRequest {
                    pod_sandbox_id: pod.0.clone(),
                    config: Some(cri::ContainerConfig {
                        metadata: Some(cri::ContainerMetadata {
                            name: "srv".into(),
                            attempt: 0,
                        }),
                        image: spec(&a.image),
                        command: vec![
                            "sh".into(),
                            "-c".into(),
                            "mkdir /w; dd if=/dev/zero of=/w/big bs=1M count=64 2>/dev/null; \
                         exec httpd -f -p 8080 -h /w"
                                .into(),
                        ],
                        ..Default::default()
                    }),
                    sandbox_config: Some(pod.1.clone()),
                })
                .await
                .unwrap()
                .into_inner()
                .container_id;
        start_container(e, &id).await;
        pods.push(pod);
        ids.push(id);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let n = a.iterations.min(100);
    let (mut r, mut c) = (vec![], vec![]);
    for _ in 0..n {
        for (side, e) in sides.iter().enumerate() {
            let t = Instant::now();
            e.rt.clone()
                .exec_sync(cri::ExecSyncRequest {
                    container_id: ids[side].clone(),
                    cmd: vec!["echo".into(), "hi".into()],
                    timeout: 10,
                })
                .await
                .unwrap();
            if side == 0 { &mut r } else { &mut c }.push(t.elapsed());
        }
    }
    row("ExecSync echo hi", &mut r, &mut c);
    exec_rows(n, sides, &ids, row).await;
    port_forward_rows(sides, &pods).await;
    for (e, pod) in sides.iter().zip(pods) {
        remove_pod(e, pod.0).await;
    }
}

/// Exec round trips over WebSocket v4 and SPDY/3.1 with the project's clients.
async fn exec_rows(n: usize, sides: [&Endpoint; 2], ids: &[String], row: &Row<'_>) {
    use concord::stream::client::{Client, SpdyCommand};
    let exec_url = |side: usize| {
        let (e, id) = (sides[side], ids[side].clone());
        async move {
            e.rt.clone()
                .exec(cri::ExecRequest {
                    container_id: id,
                    cmd: vec!["echo".into(), "hi".into()],
                    stdout: true,
                    stderr: true,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .url
        }
    };
    let (mut r, mut c) = (vec![], vec![]);
    for _ in 0..n {
        for side in 0..2 {
            let t = Instant::now();
            let url = exec_url(side).await;
            let mut client = Client::connect(&url, &["v4.channel.k8s.io"])
                .await
                .unwrap()
                .unwrap_or_else(|refused| panic!("exec upgrade refused: {refused:?}"));
            let out = client.collect().await.unwrap();
            assert_eq!(out.get(&1).map(Vec::as_slice), Some(&b"hi\n"[..]));
            if side == 0 { &mut r } else { &mut c }.push(t.elapsed());
        }
    }
    row("Exec echo hi (WebSocket v4)", &mut r, &mut c);
    let (mut r, mut c) = (vec![], vec![]);
    for _ in 0..n {
        for side in 0..2 {
            let t = Instant::now();
            let url = exec_url(side).await;
            let cmd = SpdyCommand::start(&url, &["v4.channel.k8s.io"], false, true, true, false)
                .await
                .unwrap()
                .unwrap_or_else(|refused| panic!("exec upgrade refused: {refused:?}"));
            let out = cmd.finish().await;
            assert_eq!(out.stdout, b"hi\n");
            if side == 0 { &mut r } else { &mut c }.push(t.elapsed());
        }
    }
    row("Exec echo hi (SPDY/3.1 v4)", &mut r, &mut c);
}

/// Port-forward: 64 MiB through one connection, three times each, over each protocol.
async fn port_forward_rows(sides: [&Endpoint; 2], pods: &[Pod]) {
    let pf_url = |side: usize| {
        let (e, pod) = (sides[side], pods[side].0.clone());
        async move {
            e.rt.clone()
                .port_forward(cri::PortForwardRequest {
                    pod_sandbox_id: pod,
                    port: vec![8080],
                })
                .await
                .unwrap()
                .into_inner()
                .url
        }
    };
    let mut mbps = [vec![], vec![]];
    let mut spdy_mbps = [vec![], vec![]];
    for _ in 0..3 {
        for side in 0..2 {
            let url = pf_url(side).await;
            mbps[side].push(websocket_mbps(&url).await);

            let url = pf_url(side).await;
            spdy_mbps[side].push(spdy_mbps_of(&url).await);
        }
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    for (what, v) in [("WebSocket", &mut mbps), ("SPDY/3.1", &mut spdy_mbps)] {
        let (rm, cm) = (med(&mut v[0]), med(&mut v[1]));
        println!(
            "| port-forward 64 MiB, one connection, {what} (MB/s, median of 3) | 3 | {rm:.1} | {cm:.1} | {:.2}x |",
            cm / rm
        );
    }
}

/// Port-forward throughput over WebSocket: 64 MiB from the pod's httpd through one connection.
async fn websocket_mbps(url: &str) -> f64 {
    use concord::stream::client::Client;
    let mut client = Client::connect(url, &["v4.channel.k8s.io"])
        .await
        .unwrap()
        .unwrap_or_else(|refused| panic!("port-forward upgrade refused: {refused:?}"));
    let t = Instant::now();
    client.send(0, b"GET /big HTTP/1.0\r\n\r\n").await.unwrap();
    let mut bytes = 0usize;
    while let Ok(Some((channel, data))) = client.recv().await {
        if channel == 0 {
            bytes += data.len();
        }
        if bytes >= 64 << 20 {
            break;
        }
    }
    let secs = t.elapsed().as_secs_f64();
    bytes as f64 / secs / 1e6
}

/// Port-forward throughput over SPDY/3.1: the same 64 MiB.
async fn spdy_mbps_of(url: &str) -> f64 {
    use concord::stream::client::SpdyClient;
    let client = SpdyClient::connect(url, &["portforward.k8s.io"])
        .await
        .unwrap()
        .unwrap_or_else(|refused| panic!("port-forward upgrade refused: {refused:?}"));
    let t = Instant::now();
    let headers = |kind| [("streamType", kind), ("port", "8080"), ("requestID", "0")];
    let _err = client.open(&headers("error")).await.unwrap();
    let mut data = client.open(&headers("data")).await.unwrap();
    data.writer()
        .write(b"GET /big HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let mut bytes = 0usize;
    while let Some(d) = data.read().await {
        bytes += d.len();
        if bytes >= 64 << 20 {
            break;
        }
    }
    let secs = t.elapsed().as_secs_f64();
    client.conn.close().await;
    bytes as f64 / secs / 1e6
}

/// Prints one table row from the two sides' samples.
type Row<'a> = dyn Fn(&str, &mut Vec<Duration>, &mut Vec<Duration>) + 'a;

async fn timed(e: &Endpoint, op: &str, image: &str) -> Duration {
    let t = Instant::now();
    run_op(e, op, image).await;
    t.elapsed()
}

async fn images_section(a: &Args, reference: &Endpoint, concord: &Endpoint, row: &Row<'_>) {
    let (reference, concord) = (reference.clone(), concord.clone());
    for (op, default_n) in OPS {
        let n = a.iterations.min(*default_n);
        let (mut r, mut c) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for _ in 0..n {
            r.push(timed(&reference, op, &a.image).await);
            c.push(timed(&concord, op, &a.image).await);
        }
        row(op, &mut r, &mut c);
    }
    let n = a.iterations.min(CYCLES);
    let (mut rr, mut cr, mut rp, mut cp) = (vec![], vec![], vec![], vec![]);
    for _ in 0..n {
        rr.push(timed(&reference, "RemoveImage", &a.image).await);
        cr.push(timed(&concord, "RemoveImage", &a.image).await);
        rp.push(timed(&reference, "PullImage (absent)", &a.image).await);
        cp.push(timed(&concord, "PullImage (absent)", &a.image).await);
    }
    let mut rc: Vec<Duration> = rr.iter().zip(&rp).map(|(a, b)| *a + *b).collect();
    let mut cc: Vec<Duration> = cr.iter().zip(&cp).map(|(a, b)| *a + *b).collect();
    row("RemoveImage", &mut rr, &mut cr);
    row("PullImage (absent)", &mut rp, &mut cp);
    row("pull/remove cycle", &mut rc, &mut cc);
}

async fn sandboxes_section(a: &Args, reference: &Endpoint, concord: &Endpoint, row: &Row<'_>) {
    let (reference, concord) = (reference.clone(), concord.clone());
    // Pod sandboxes: run, status, stop, remove, each timed, endpoints alternated per cycle.
    let names = [
        "RunPodSandbox",
        "PodSandboxStatus",
        "StopPodSandbox",
        "RemovePodSandbox",
        "pod lifecycle",
    ];
    cycles(
        a.iterations.min(100),
        &names,
        [&reference, &concord],
        row,
        |_, e, i| async move { sandbox_cycle(&e, &format!("bench-{i}")).await },
    )
    .await;
    // 20 pods started at once.
    let (mut r, mut c) = (vec![], vec![]);
    for round in 0..3 {
        r.push(many_pods(&reference, 20, round).await);
        c.push(many_pods(&concord, 20, round).await);
    }
    row("20 pods at once (run all)", &mut r, &mut c);
}

async fn containers_section(a: &Args, reference: &Endpoint, concord: &Endpoint, row: &Row<'_>) {
    let (reference, concord) = (reference.clone(), concord.clone());
    // Containers: create, start, stop, remove in one pod per side, alternated per cycle.
    let n = a.iterations.min(100);
    let pods = [
        run_pod(&reference, "ctr-bench", &a.log_dir.join("reference")).await,
        run_pod(&concord, "ctr-bench", &a.log_dir.join("concord")).await,
    ];
    let names = [
        "CreateContainer",
        "StartContainer",
        "ContainerStatus",
        "StopContainer",
        "RemoveContainer",
        "container lifecycle",
    ];
    cycles(n, &names, [&reference, &concord], row, |side, e, i| {
        let (pod, image) = (pods[side].clone(), a.image.clone());
        async move { container_cycle(&e, &pod, &image, &format!("c-{i}")).await }
    })
    .await;

    // 100 running containers (10 pods of 10) on each side: the list calls, then memory.
    let mut running = [vec![], vec![]];
    for (side, e) in [(0, &reference), (1, &concord)] {
        let dir = a
            .log_dir
            .join(if side == 0 { "reference" } else { "concord" });
        for p in 0..10 {
            let pod = run_pod(e, &format!("many-ctr-{p}"), &dir).await;
            for c in 0..10 {
                let id = create_container(e, &pod, &a.image, &format!("c-{c}")).await;
                start_container(e, &id).await;
            }
            running[side].push(pod);
        }
    }
    // Let both stats paths see every container once before timing.
    tokio::time::sleep(Duration::from_secs(12)).await;
    for op in [
        "ListContainers",
        "ListContainerStats",
        "ListPodSandboxStats",
    ] {
        let (mut r, mut c) = (vec![], vec![]);
        for _ in 0..n {
            r.push(list_call(&reference, op).await);
            c.push(list_call(&concord, op).await);
        }
        row(&format!("{op} (100 running)"), &mut r, &mut c);
    }
    if let (Some(cp), Some(rp)) = (a.concord_pid, a.reference_pid) {
        let own = a.own_containerd_pid.map(rss_kb).unwrap_or(0);
        println!();
        println!(
            "RSS with 100 running containers (kB): concord {} (+ its containerd {own}); containerd with CRI {}",
            rss_kb(cp),
            rss_kb(rp)
        );
    }
    for (side, e) in [(0, &reference), (1, &concord)] {
        for pod in running[side].drain(..) {
            remove_pod(e, pod.0).await;
        }
    }
    for (e, pod) in [&reference, &concord].into_iter().zip(pods) {
        remove_pod(e, pod.0).await;
    }
}

/// Stops and removes pod sandbox `id`.
async fn remove_pod(e: &Endpoint, id: String) {
    let mut rt = e.rt.clone();
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .unwrap();
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
        .await
        .unwrap();
}

/// VmRSS of process `pid` in kB (0 when unreadable).
fn rss_kb(pid: u32) -> u64 {
    status_kb(pid, "VmRSS")
}

/// Field `name` (in kB) of `/proc/<pid>/status` (0 when unreadable).
fn status_kb(pid: u32, name: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// A running pod sandbox: its id and config.
#[derive(Clone)]
struct Pod(String, cri::PodSandboxConfig);

/// Runs `cycle` `n` times on each side (reference, concord), alternated; each run answers one
/// duration per step of `names`; prints a row per step.
async fn cycles<F, Fut>(
    n: usize,
    names: &[&str],
    sides: [&Endpoint; 2],
    row: &Row<'_>,
    mut cycle: F,
) where
    F: FnMut(usize, Endpoint, usize) -> Fut,
    Fut: std::future::Future<Output = Vec<Duration>>,
{
    let mut t: Vec<[Vec<Duration>; 2]> = vec![[vec![], vec![]]; names.len()];
    for i in 0..n {
        for (side, e) in sides.iter().enumerate() {
            for (k, d) in cycle(side, (*e).clone(), i).await.into_iter().enumerate() {
                t[k][side].push(d);
            }
        }
    }
    for (name, [r, c]) in names.iter().zip(t.iter_mut()) {
        row(name, r, c);
    }
}

async fn run_pod(e: &Endpoint, name: &str, log_dir: &Path) -> Pod {
    let mut config = pod(name);
    config.log_directory = log_dir.join(name).display().to_string();
    // A cgroup of the pod's own, as kubelet gives every pod (containerd's CRI has no pod stats
    // without one).
    let side = log_dir.file_name().and_then(|n| n.to_str()).unwrap_or("x");
    config.linux = Some(cri::LinuxPodSandboxConfig {
        cgroup_parent: format!("/concord-bench/{side}/{name}"),
        ..Default::default()
    });
    let id =
        e.rt.clone()
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .pod_sandbox_id;
    Pod(id, config)
}

async fn create_container(e: &Endpoint, pod: &Pod, image: &str, name: &str) -> String {
    e.rt.clone()
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.0.clone(),
            config: Some(cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata {
                    name: name.into(),
                    attempt: 0,
                }),
                image: spec(image),
                command: vec!["sleep".into(), "3600".into()],
                log_path: format!("{name}.log"),
                ..Default::default()
            }),
            sandbox_config: Some(pod.1.clone()),
        })
        .await
        .unwrap()
        .into_inner()
        .container_id
}

async fn start_container(e: &Endpoint, id: &str) {
    e.rt.clone()
        .start_container(cri::StartContainerRequest {
            container_id: id.into(),
        })
        .await
        .unwrap();
}

/// Create, start, status, stop (SIGKILL: timeout 0), remove of one container; each timed, and
/// their sum.
async fn container_cycle(e: &Endpoint, pod: &Pod, image: &str, name: &str) -> Vec<Duration> {
    let mut rt = e.rt.clone();
    let t = Instant::now();
    let id = create_container(e, pod, image, name).await;
    let create = t.elapsed();
    let t = Instant::now();
    start_container(e, &id).await;
    let start = t.elapsed();
    let t = Instant::now();
    rt.container_status(cri::ContainerStatusRequest {
        container_id: id.clone(),
        verbose: false,
    })
    .await
    .unwrap();
    let status = t.elapsed();
    let t = Instant::now();
    rt.stop_container(cri::StopContainerRequest {
        container_id: id.clone(),
        timeout: 0,
    })
    .await
    .unwrap();
    let stop = t.elapsed();
    let t = Instant::now();
    rt.remove_container(cri::RemoveContainerRequest { container_id: id })
        .await
        .unwrap();
    let remove = t.elapsed();
    vec![
        create,
        start,
        status,
        stop,
        remove,
        create + start + status + stop + remove,
    ]
}

async fn list_call(e: &Endpoint, op: &str) -> Duration {
    let mut rt = e.rt.clone();
    let t = Instant::now();
    match op {
        "ListContainers" => drop(
            rt.list_containers(cri::ListContainersRequest::default())
                .await
                .unwrap(),
        ),
        "ListContainerStats" => drop(
            rt.list_container_stats(cri::ListContainerStatsRequest::default())
                .await
                .unwrap(),
        ),
        "ListPodSandboxStats" => drop(
            rt.list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest::default())
                .await
                .unwrap(),
        ),
        other => panic!("unknown op {other}"),
    }
    t.elapsed()
}
