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
}
