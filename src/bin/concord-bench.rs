//! concord-bench: the same CRI calls against concord and against a reference CRI (containerd's
//! own plugin) on the same machine in the same run; p50/p99 per operation and their ratio.
//!
//! Usage: concord-bench --concord unix-socket --reference unix-socket [--iterations N] [--image REF]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

struct Args {
    concord: PathBuf,
    reference: PathBuf,
    iterations: usize,
    image: String,
}

fn args() -> Args {
    let mut a = Args {
        concord: "/run/concord/concord.sock".into(),
        reference: "/tmp/ctd-ref/containerd.sock".into(),
        iterations: 100,
        image: "docker.io/library/busybox:latest".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--concord" => a.concord = v.into(),
            "--reference" => a.reference = v.into(),
            "--iterations" => a.iterations = v.parse().expect("--iterations N"),
            "--image" => a.image = v,
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
    took
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let a = args();
    let connect = |p: PathBuf| async move {
        let ch = channel(&p).await;
        Endpoint {
            rt: RuntimeServiceClient::new(ch.clone()),
            img: ImageServiceClient::new(ch),
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
    async fn timed(e: &Endpoint, op: &str, image: &str) -> Duration {
        let t = Instant::now();
        run_op(e, op, image).await;
        t.elapsed()
    }
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

    // Pod sandboxes: run, status, stop, remove, each timed, endpoints alternated per cycle.
    let n = a.iterations.min(100);
    let mut t: Vec<(Vec<Duration>, Vec<Duration>)> = vec![(vec![], vec![]); 5];
    for i in 0..n {
        for (side, e) in [(0, &reference), (1, &concord)] {
            let times = sandbox_cycle(e, &format!("bench-{i}")).await;
            for (k, d) in times.into_iter().enumerate() {
                let slot = &mut t[k];
                if side == 0 {
                    slot.0.push(d)
                } else {
                    slot.1.push(d)
                }
            }
        }
    }
    for (name, (r, c)) in [
        "RunPodSandbox",
        "PodSandboxStatus",
        "StopPodSandbox",
        "RemovePodSandbox",
        "pod lifecycle",
    ]
    .iter()
    .zip(t.iter_mut())
    {
        row(name, r, c);
    }
    // 20 pods started at once.
    let (mut r, mut c) = (vec![], vec![]);
    for round in 0..3 {
        r.push(many_pods(&reference, 20, round).await);
        c.push(many_pods(&concord, 20, round).await);
    }
    row("20 pods at once (run all)", &mut r, &mut c);
}
