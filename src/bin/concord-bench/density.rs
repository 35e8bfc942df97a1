//! Density: 100 pods × 3 containers started as kubelet starts them (10 pods at a time, each
//! pod's containers one after another), the sides taking turns a batch each; then the list, status and stats
//! calls at 300 containers and, with 700 more created (not started), at 1,000; the processes'
//! RSS and CPU seconds over the run; concord's journal commit latency and bytes per object.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use concord::cri;

use super::{create_container, remove_pod, run_pod, start_container, Endpoint, Pod, Row};

/// What the density section needs beyond the endpoints.
pub struct Density {
    pub pods: usize,
    pub containers_per_pod: usize,
    pub parallel: usize,
    pub image: String,
    pub log_dir: PathBuf,
    pub concord_pid: Option<u32>,
    pub own_containerd_pid: Option<u32>,
    pub reference_pid: Option<u32>,
    /// concord's metrics URL (journal commit latency).
    pub concord_metrics: Option<String>,
    /// concord's journal file (bytes per object).
    pub concord_journal: Option<PathBuf>,
}

/// One side's pods, each with its container ids.
type Fleet = Vec<(Pod, Vec<String>)>;

pub async fn section(d: &Density, reference: &Endpoint, concord: &Endpoint, row: &Row<'_>) {
    let sides = [("reference", reference), ("concord", concord)];
    let mut fleets: [Fleet; 2] = [vec![], vec![]];
    let mut starts: [Vec<Duration>; 2] = [vec![], vec![]];
    println!();
    println!(
        "Density: {} pods x {} containers, {} pods at a time",
        d.pods, d.containers_per_pod, d.parallel
    );
    // The sides take turns, a batch each: both start every batch on a node holding the same
    // number of pods (and of iptables rules, which slow every CNI call as they grow), so neither
    // pays for the other's fleet.
    let mut took = [Duration::ZERO; 2];
    let mut cpu = [0.0f64; 2];
    // The whole node's: the runtime's floor (runc, the shims, the CNI plugins and iptables,
    // the kernel) is the rest.
    let mut node_cpu = [0.0f64; 2];
    let mut next = 0;
    while next < d.pods {
        let batch = next..(next + d.parallel).min(d.pods);
        for (side, (name, e)) in sides.iter().enumerate() {
            let pids = d.pids(side);
            let (before, node_before) = (cpu_seconds(&pids), node_cpu_seconds());
            let t = Instant::now();
            let (fleet, per_pod) = start_batch(d, e, &d.log_dir.join(name), batch.clone()).await;
            took[side] += t.elapsed();
            cpu[side] += cpu_seconds(&pids) - before;
            node_cpu[side] += node_cpu_seconds() - node_before;
            fleets[side].extend(fleet);
            starts[side].extend(per_pod);
        }
        next = batch.end;
    }
    for (side, (name, _)) in sides.iter().enumerate() {
        println!(
            "{name}: all {} pods running in {:.2} s (batches alternated); CPU {:.2} s ({}); RSS {}",
            d.pods,
            took[side].as_secs_f64(),
            cpu[side],
            d.pid_names(side),
            rss_line(&d.pids(side)),
        );
        println!(
            "  the node's CPU over {name}'s batches: {:.2} s, of which {:.2} s outside {}",
            node_cpu[side],
            node_cpu[side] - cpu[side],
            d.pid_names(side),
        );
    }
    row(
        "pod start (run + 3 containers, 10 at a time)",
        &mut starts[0].clone(),
        &mut starts[1].clone(),
    );
    println!("{}", log_writers_line());
    // Let both stats paths see every container once before timing.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let total = d.pods * d.containers_per_pod;
    reads(
        d,
        &fleets,
        [reference, concord],
        &format!("{total} containers"),
        row,
    )
    .await;

    // Up to 1,000 containers: the rest created, not started.
    let extra = 1000usize.saturating_sub(total);
    for (side, (_, e)) in sides.iter().enumerate() {
        for i in 0..extra {
            let (pod, ids) = &mut fleets[side][i % d.pods];
            ids.push(create_container(e, pod, &d.image, &format!("idle-{i}")).await);
        }
    }
    reads(d, &fleets, [reference, concord], "1000 containers", row).await;
    for (side, (name, _)) in sides.iter().enumerate() {
        println!("{name} at 1000 containers: RSS {}", rss_line(&d.pids(side)));
    }
    if let Some(url) = &d.concord_metrics {
        let objects = fleets[1].iter().map(|(_, ids)| 1 + ids.len()).sum();
        journal_line(url, d.concord_journal.as_deref(), objects).await;
    }
    for (side, (_, e)) in sides.iter().enumerate() {
        for (pod, _) in fleets[side].drain(..) {
            remove_pod(e, pod.0).await;
        }
    }
}

impl Density {
    /// The processes that do the CRI's work on a side: concord and its containerd, or
    /// containerd with its CRI plugin.
    fn pids(&self, side: usize) -> Vec<u32> {
        match side {
            0 => self.reference_pid.into_iter().collect(),
            _ => self
                .concord_pid
                .into_iter()
                .chain(self.own_containerd_pid)
                .collect(),
        }
    }

    fn pid_names(&self, side: usize) -> &'static str {
        match side {
            0 => "containerd with CRI",
            _ => "concord + its containerd",
        }
    }
}

/// Starts the pods of `batch` at once; answers them and each pod's start time (RunPodSandbox
/// until its last container started).
async fn start_batch(
    d: &Density,
    e: &Endpoint,
    log_dir: &std::path::Path,
    batch: std::ops::Range<usize>,
) -> (Fleet, Vec<Duration>) {
    let pods = batch.map(|i| async move {
        let t = Instant::now();
        let pod = run_pod(e, &format!("dense-{i}"), log_dir).await;
        let mut ids = vec![];
        for c in 0..d.containers_per_pod {
            let id = create_container(e, &pod, &d.image, &format!("c-{c}")).await;
            start_container(e, &id).await;
            ids.push(id);
        }
        ((pod, ids), t.elapsed())
    });
    futures::future::join_all(pods).await.into_iter().unzip()
}

/// The read calls kubelet makes all the time, alternated between the sides, 200 of each (20 of
/// the stats calls).
async fn reads(d: &Density, fleets: &[Fleet; 2], sides: [&Endpoint; 2], at: &str, row: &Row<'_>) {
    const N: usize = 200;
    for op in [
        "ListPodSandbox",
        "ListContainers",
        ANSWER_AS_BYTES,
        "PodSandboxStatus",
        "ContainerStatus",
        "ListContainerStats",
        "ListPodSandboxStats",
    ] {
        // The stats calls take containerd's CRI up to seconds each at this density: fewer.
        let n = if op.ends_with("Stats") { N / 10 } else { N };
        let mut t: [Vec<Duration>; 2] = [vec![], vec![]];
        for i in 0..n {
            for side in 0..2 {
                let (pod, ids) = &fleets[side][i % fleets[side].len()];
                let id = ids.get(i % ids.len().max(1)).cloned().unwrap_or_default();
                t[side].push(read(sides[side], op, &pod.0, &id).await);
            }
        }
        let [r, c] = &mut t;
        row(&format!("{op} ({at})"), r, c);
        if op == "ListContainers" {
            decode_floor(sides[1], at).await;
            handler_share(d, sides[1], at).await;
        }
    }
}

/// Where concord's ListContainers time goes: 200 more calls, with no reference call between
/// them (whose work would share the cores), timed here and by concord's own
/// `concord_grpc_request_duration_seconds` (the handler, from the request decoded to the answer
/// built), the rest being the transport (HTTP/2 framing both ways, encoding, the client's
/// decode). With `BENCH_PERF_DIR` set, `perf record -g` of concord during those calls.
async fn handler_share(d: &Density, e: &Endpoint, at: &str) {
    let Some(url) = &d.concord_metrics else {
        return;
    };
    let perf = std::env::var_os("BENCH_PERF_DIR").and_then(|dir| {
        let out = PathBuf::from(dir).join(format!("list-{}.perf", at.replace(' ', "-")));
        std::process::Command::new("perf")
            .args(["record", "-F", "4000", "-g", "-o"])
            .arg(&out)
            .args(["-p", &d.concord_pid?.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()
    });
    let before = histogram(
        url,
        "concord_grpc_request_duration_seconds",
        "ListContainers",
    )
    .await;
    let alone = calls_alone(e, "ListContainers").await;
    let total: Duration = alone.iter().sum();
    let after = histogram(
        url,
        "concord_grpc_request_duration_seconds",
        "ListContainers",
    )
    .await;
    if let Some(mut p) = perf {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let _ = p.wait();
    }
    let calls = (after.1 - before.1).max(1.0);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "  ListContainers ({at}): mean {:.3} ms a call, of which concord's handler {:.3} ms; \
         p50 {:.3} / p99 {:.3} ms with no reference calls between",
        ms(total) / 200.0,
        (after.0 - before.0) / calls * 1e3,
        super::pct(&alone, 0.5),
        super::pct(&alone, 0.99),
    );
    let as_bytes = calls_alone(e, ANSWER_AS_BYTES).await;
    println!(
        "  ListContainers ({at}), answer kept as bytes: p50 {:.3} / p99 {:.3} ms with no reference \
         calls between (the rest of a call is the client's decoding)",
        super::pct(&as_bytes, 0.5),
        super::pct(&as_bytes, 0.99),
    );
}

/// 200 calls of `op` one after another (no reference call between), sorted.
async fn calls_alone(e: &Endpoint, op: &str) -> Vec<Duration> {
    let mut t = Vec::with_capacity(200);
    for _ in 0..200 {
        t.push(read(e, op, "", "").await);
    }
    t.sort();
    t
}

/// (sum, count) of histogram `name`'s series for `method` at `url`.
async fn histogram(url: &str, name: &str, method: &str) -> (f64, f64) {
    let body = match reqwest::get(url).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => return (0.0, 0.0),
    };
    let label = format!("method=\"{method}\"");
    let value = |suffix: &str| {
        body.lines()
            .filter(|l| l.starts_with(&format!("{name}{suffix}{{")) && l.contains(&label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    (value("_sum"), value("_count"))
}

/// What any client pays for ListContainers before the transport: decoding the answer (the
/// same bytes concord sent, decoded 200 times in this process), and the answer's size.
async fn decode_floor(e: &Endpoint, at: &str) {
    use prost::Message;
    let Ok(answer) =
        e.rt.clone()
            .list_containers(cri::ListContainersRequest::default())
            .await
    else {
        return;
    };
    let bytes = answer.into_inner().encode_to_vec();
    let mut t: Vec<Duration> = (0..200)
        .map(|_| {
            let start = Instant::now();
            let decoded = cri::ListContainersResponse::decode(bytes.as_slice());
            std::hint::black_box(decoded.is_ok());
            start.elapsed()
        })
        .collect();
    t.sort();
    println!(
        "  ListContainers ({at}): the answer is {} kB; decoding it alone takes p50 {:.2} ms, p99 {:.2} ms",
        bytes.len() / 1000,
        t[t.len() / 2].as_secs_f64() * 1e3,
        t[t.len() * 99 / 100].as_secs_f64() * 1e3,
    );
}

/// ListContainers with the answer kept as the bytes received: the runtime's part of the call
/// (the request, the handler, the answer's encoding and transfer), without the client's
/// decoding of every container into its own structures, which costs the client the same
/// whichever runtime answered.
const ANSWER_AS_BYTES: &str = "ListContainers, answer kept as bytes";

async fn list_containers_as_bytes(e: &Endpoint) -> Result<bytes::Bytes, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(e.ch.clone());
    grpc.ready()
        .await
        .map_err(|err| tonic::Status::unavailable(err.to_string()))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/runtime.v1.RuntimeService/ListContainers",
    );
    let request = tonic::Request::new(cri::ListContainersRequest::default());
    Ok(grpc.unary(request, path, BytesCodec).await?.into_inner())
}

/// Encodes the request with prost; hands the answer's message bytes back undecoded.
struct BytesCodec;

impl tonic::codec::Codec for BytesCodec {
    type Encode = cri::ListContainersRequest;
    type Decode = bytes::Bytes;
    type Encoder = tonic_prost::ProstEncoder<cri::ListContainersRequest>;
    type Decoder = BytesCodec;
    fn encoder(&mut self) -> Self::Encoder {
        Default::default()
    }
    fn decoder(&mut self) -> Self::Decoder {
        BytesCodec
    }
}

impl tonic::codec::Decoder for BytesCodec {
    type Item = bytes::Bytes;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        buf: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<bytes::Bytes>, tonic::Status> {
        use bytes::Buf;
        Ok(Some(buf.copy_to_bytes(buf.remaining())))
    }
}

async fn read(e: &Endpoint, op: &str, pod: &str, container: &str) -> Duration {
    let mut rt = e.rt.clone();
    let t = Instant::now();
    let ok = match op {
        "ListPodSandbox" => rt
            .list_pod_sandbox(cri::ListPodSandboxRequest::default())
            .await
            .is_ok(),
        "ListContainers" => rt
            .list_containers(cri::ListContainersRequest::default())
            .await
            .is_ok(),
        ANSWER_AS_BYTES => list_containers_as_bytes(e).await.is_ok(),
        "PodSandboxStatus" => rt
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: pod.into(),
                verbose: false,
            })
            .await
            .is_ok(),
        "ContainerStatus" => rt
            .container_status(cri::ContainerStatusRequest {
                container_id: container.into(),
                verbose: false,
            })
            .await
            .is_ok(),
        "ListContainerStats" => rt
            .list_container_stats(cri::ListContainerStatsRequest::default())
            .await
            .is_ok(),
        "ListPodSandboxStats" => rt
            .list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest::default())
            .await
            .is_ok(),
        other => panic!("unknown op {other}"),
    };
    assert!(ok, "{op} failed");
    t.elapsed()
}

/// utime + stime of the processes, in seconds.
fn cpu_seconds(pids: &[u32]) -> f64 {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .filter_map(|s| {
            // Fields after the command (which may hold spaces) in parentheses.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?)
        })
        .sum::<f64>()
        / ticks
}

/// user + system + irq + softirq time of the whole node (all CPUs), in seconds; niced work
/// (a build beside the bench) is left out.
fn node_cpu_seconds() -> f64 {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0.0;
    };
    // cpu user nice system idle iowait irq softirq ...
    let f: Vec<f64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    [0, 2, 5, 6].iter().filter_map(|&i| f.get(i)).sum::<f64>() / ticks
}

/// Each process's RSS, and of what: heap and stacks (anonymous) and the binary's pages (file).
fn rss_line(pids: &[u32]) -> String {
    let mb = |p: u32, f: &str| super::status_kb(p, f) as f64 / 1024.0;
    pids.iter()
        .map(|&p| {
            let (anon, file) = (mb(p, "RssAnon"), mb(p, "RssFile"));
            format!("{:.1} MB ({anon:.1} anon, {file:.1} file)", mb(p, "VmRSS"))
        })
        .collect::<Vec<_>>()
        .join(" + ")
}

/// concord's log writers (one per container, children of the shims; containerd's CRI writes logs
/// inside containerd): their count and proportional set size (the binary's pages are shared).
fn log_writers_line() -> String {
    let mut n = 0;
    let mut pss_kb = 0u64;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if !String::from_utf8_lossy(&cmdline).contains(concord::logwriter::MARKER) {
            continue;
        }
        n += 1;
        let rollup = std::fs::read_to_string(entry.path().join("smaps_rollup")).unwrap_or_default();
        pss_kb += rollup
            .lines()
            .find_map(|l| l.strip_prefix("Pss:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    format!(
        "concord log writers: {n}, PSS {:.1} MB in all ({:.0} kB each)",
        pss_kb as f64 / 1024.0,
        pss_kb as f64 / n.max(1) as f64
    )
}

/// concord's journal commits: mean and bucketed p50/p99 latency, and bytes per object.
async fn journal_line(url: &str, journal: Option<&std::path::Path>, objects: usize) {
    let body = match reqwest::get(url).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(e) => return println!("journal: cannot scrape {url}: {e}"),
    };
    let mut buckets = vec![];
    let (mut sum, mut count) = (0.0, 0.0);
    for line in body.lines() {
        let Some(rest) = line.strip_prefix("concord_journal_append_duration_seconds") else {
            continue;
        };
        let value: f64 = rest
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        if let Some(le) = rest.strip_prefix("_bucket{le=\"") {
            let le = le.split('"').next().unwrap_or("+Inf");
            buckets.push((le.parse::<f64>().unwrap_or(f64::INFINITY), value));
        } else if rest.starts_with("_sum") {
            sum = value;
        } else if rest.starts_with("_count") {
            count = value;
        }
    }
    let quantile = |q: f64| {
        buckets
            .iter()
            .find(|(_, c)| *c >= q * count)
            .map(|(le, _)| le * 1000.0)
            .unwrap_or(f64::NAN)
    };
    let size = journal
        .and_then(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .unwrap_or(0);
    println!(
        "journal: {count} commits, mean {:.2} ms, p50 <= {} ms, p99 <= {} ms; file {:.1} MB, {} bytes per object ({objects} objects)",
        sum / count.max(1.0) * 1000.0,
        quantile(0.5),
        quantile(0.99),
        size as f64 / 1e6,
        size / objects.max(1) as u64,
    );
}
