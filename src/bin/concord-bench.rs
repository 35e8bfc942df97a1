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
    let path = path.to_owned();
    tonic::transport::Endpoint::try_from("http://[::]")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let s = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
            }
        }))
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"))
}

fn spec(image: &str) -> Option<cri::ImageSpec> {
    Some(cri::ImageSpec {
        image: image.into(),
        ..Default::default()
    })
}

/// Runs `op` n times; answers the sorted durations.
async fn measure<F, Fut>(n: usize, mut op: F) -> Vec<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    op().await; // warm-up
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        op().await;
        v.push(t.elapsed());
    }
    v.sort();
    v
}

fn pct(v: &[Duration], p: f64) -> f64 {
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1000.0
}

async fn run_suite(name: &str, path: &Path, a: &Args) -> Vec<(String, f64, f64)> {
    let ch = channel(path).await;
    let rt = RuntimeServiceClient::new(ch.clone());
    let img = ImageServiceClient::new(ch);
    let n = a.iterations;
    let mut out = Vec::new();
    let mut record = |op: &str, v: Vec<Duration>| {
        let (p50, p99) = (pct(&v, 0.5), pct(&v, 0.99));
        eprintln!("{name:>9} {op:<28} p50 {p50:8.3} ms  p99 {p99:8.3} ms");
        out.push((op.to_string(), p50, p99));
    };
    // Make sure the image is there for the read benchmarks.
    img.clone()
        .pull_image(cri::PullImageRequest {
            image: spec(&a.image),
            ..Default::default()
        })
        .await
        .expect("initial pull");
    let v = measure(n, || {
        let mut rt = rt.clone();
        async move {
            rt.version(cri::VersionRequest::default()).await.unwrap();
        }
    })
    .await;
    record("Version", v);
    let v = measure(n, || {
        let mut rt = rt.clone();
        async move {
            rt.status(cri::StatusRequest { verbose: false })
                .await
                .unwrap();
        }
    })
    .await;
    record("Status", v);
    let v = measure(n, || {
        let mut img = img.clone();
        let image = a.image.clone();
        async move {
            img.image_status(cri::ImageStatusRequest {
                image: spec(&image),
                verbose: false,
            })
            .await
            .unwrap();
        }
    })
    .await;
    record("ImageStatus", v);
    let v = measure(n, || {
        let mut img = img.clone();
        async move {
            img.list_images(cri::ListImagesRequest::default())
                .await
                .unwrap();
        }
    })
    .await;
    record("ListImages", v);
    let v = measure(n, || {
        let mut img = img.clone();
        async move {
            img.image_fs_info(cri::ImageFsInfoRequest {}).await.unwrap();
        }
    })
    .await;
    record("ImageFsInfo", v);
    let v = measure(n, || {
        let mut img = img.clone();
        let image = a.image.clone();
        async move {
            img.pull_image(cri::PullImageRequest {
                image: spec(&image),
                ..Default::default()
            })
            .await
            .unwrap();
        }
    })
    .await;
    record("PullImage (present)", v);
    let v = measure(n.min(30), || {
        let mut img = img.clone();
        let image = a.image.clone();
        async move {
            img.remove_image(cri::RemoveImageRequest {
                image: spec(&image),
            })
            .await
            .unwrap();
            img.pull_image(cri::PullImageRequest {
                image: spec(&image),
                ..Default::default()
            })
            .await
            .unwrap();
        }
    })
    .await;
    record("RemoveImage + PullImage", v);
    out
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let a = args();
    let reference = run_suite("reference", &a.reference, &a).await;
    let concord = run_suite("concord", &a.concord, &a).await;
    println!("| operation | reference p50 ms | concord p50 ms | p50 ratio (ref/concord) | reference p99 ms | concord p99 ms |");
    println!("|---|---|---|---|---|---|");
    for ((op, rp50, rp99), (_, cp50, cp99)) in reference.iter().zip(&concord) {
        println!(
            "| {op} | {rp50:.3} | {cp50:.3} | {:.2}x | {rp99:.3} | {cp99:.3} |",
            rp50 / cp50
        );
    }
}
