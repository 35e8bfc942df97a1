//! Hostile input against the real node: images whose user database is a trap. Each image is
//! built here as a `docker save` archive and loaded with LoadImage.

mod common;

use std::time::{Duration, Instant};

use common::{
    container_config, create_container, remove_pod, rss_kb, run_container, run_pod, Daemon, Unmount,
};
use concord::cri;
use sha2::{Digest, Sha256};

/// One entry of an image layer.
enum Item<'a> {
    Dir(&'a str),
    File(&'a str, Vec<u8>),
    Link(&'a str, &'a str),
    Fifo(&'a str),
}

fn layer(items: &[Item]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for item in items {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o755);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        match item {
            Item::Dir(p) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                b.append_data(&mut h, p, std::io::empty()).unwrap();
            }
            Item::File(p, data) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, p, data.as_slice()).unwrap();
            }
            Item::Link(p, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, p, target).unwrap();
            }
            Item::Fifo(p) => {
                h.set_entry_type(tar::EntryType::Fifo);
                h.set_size(0);
                b.append_data(&mut h, p, std::io::empty()).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A `docker save` archive of one image named `name` with one layer of `items`.
fn archive(path: &std::path::Path, name: &str, items: &[Item]) {
    let layer = layer(items);
    let layer_sha = sha(&layer);
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_sha}")]},
    })
    .to_string();
    let config_sha = sha(config.as_bytes());
    let manifest = serde_json::json!([{
        "Config": format!("{config_sha}.json"),
        "RepoTags": [name],
        "Layers": [format!("{layer_sha}/layer.tar")],
    }])
    .to_string();
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    let mut add = |p: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, p, data).unwrap();
    };
    add(&format!("{config_sha}.json"), config.as_bytes());
    add(&format!("{layer_sha}/layer.tar"), &layer);
    add("manifest.json", manifest.as_bytes());
    b.finish().unwrap();
}

/// CreateContainer for `image` in pod `pod` running as user name `user`.
async fn create_as(
    d: &Daemon,
    pod: &str,
    config: &cri::PodSandboxConfig,
    image: &str,
    name: &str,
    user: &str,
) -> Result<String, tonic::Status> {
    let c = cri::ContainerConfig {
        linux: Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                run_as_username: user.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..container_config(name, image, &[])
    };
    create_container(d, pod, config, c).await
}

/// An image's `/etc/passwd` linked to `/dev/zero` (concord read it until memory ran out, then
/// crash-looped on the journal record), `etc` linked to the host's `/etc` (the host's users were
/// read), a FIFO (a worker hung), a 8 MiB `/etc/group`: each CreateContainer answers at once and
/// clearly, reads nothing of the host's, and concord's memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_user_databases_in_images_fail_fast_and_read_nothing_of_the_host() {
    let d = common::pod_daemon(&[]).await;
    let dir = d.dir.join("hostile");
    std::fs::create_dir_all(&dir).unwrap();
    let big_group = {
        let mut g = Vec::new();
        while g.len() < (8 << 20) {
            g.extend_from_slice(b"group:x:1000:alice,bob,carol,dave,erin,frank,grace,heidi\n");
        }
        g
    };
    let images: [(&str, Vec<Item>); 4] = [
        (
            "example.test/hostile/devzero:1",
            vec![Item::Dir("etc"), Item::Link("etc/passwd", "/dev/zero")],
        ),
        (
            "example.test/hostile/hostetc:1",
            vec![Item::Link("etc", "/etc")],
        ),
        (
            "example.test/hostile/fifo:1",
            vec![Item::Dir("etc"), Item::Fifo("etc/passwd")],
        ),
        (
            "example.test/hostile/biggroup:1",
            vec![
                Item::Dir("etc"),
                Item::File("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n".to_vec()),
                Item::File("etc/group", big_group),
            ],
        ),
    ];
    let mut client = concord::proto::images_client::ImagesClient::new(d.channel().await.unwrap());
    for (i, (name, items)) in images.iter().enumerate() {
        let path = dir.join(format!("{i}.tar"));
        archive(&path, name, items);
        client
            .load_image(concord::proto::LoadImageRequest {
                file_path: path.display().to_string(),
            })
            .await
            .unwrap_or_else(|e| panic!("loading {name}: {}", e.message()));
    }
    common::pull_ok(&d, "busybox").await;
    let config = common::pod_config(&d, "hostile");
    let pod = run_pod(&d, &config).await.unwrap();
    let rss_before = rss_kb(d.pid());
    let expect = [
        // /dev/zero of the image (absent): no such user, at once.
        ("devzero", "root", "is not in the image's /etc/passwd"),
        // The host's /etc/passwd has root; the image's `/etc` is a link to itself.
        (
            "hostetc",
            "root",
            "/etc/passwd: more than 40 symbolic links",
        ),
        ("fifo", "root", "/etc/passwd is not a regular file"),
        ("biggroup", "root", "/etc/group is larger than"),
    ];
    for (short, user, message) in expect {
        let started = Instant::now();
        let image = format!("example.test/hostile/{short}:1");
        let err = create_as(&d, &pod, &config, &image, short, user)
            .await
            .expect_err(short);
        assert!(
            err.message().contains(message),
            "{short}: {} ({:?})",
            err.message(),
            err.code()
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{short} took {:?}",
            started.elapsed()
        );
        println!("{short}: {:?} in {:?}", err.code(), started.elapsed());
        // The image cannot be used so: the caller's precondition, not concord's failure.
        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{short}");
    }
    let rss_after = rss_kb(d.pid());
    println!("RSS {rss_before} kB before, {rss_after} kB after");
    assert!(
        rss_after < rss_before + 64 * 1024,
        "RSS grew from {rss_before} kB to {rss_after} kB"
    );
    // concord is alive and answers; it survives a restart with these records (no crash loop).
    d.runtime()
        .await
        .version(cri::VersionRequest::default())
        .await
        .unwrap();
    remove_pod(&d, &pod).await;
}

/// The OCI spec of containerd container `id` in the daemon's namespace.
async fn spec_of(d: &Daemon, id: &str) -> serde_json::Value {
    let c = common::containerd_container(d, id).await;
    serde_json::from_slice(&c.spec.unwrap().value).unwrap()
}

/// Pod and container annotations reach the OCI specs only where the runtime handler's
/// `pod_annotations` / `container_annotations` patterns allow them (CVE-2024-3154 class:
/// `org.systemd.property.*` would become systemd unit properties under runc's systemd driver).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn annotations_reach_the_spec_only_when_the_handler_allows_them() {
    let d = common::pod_daemon_with_config(
        &[],
        "[runtime.handlers.runc]\npod_annotations = [\"example.com/*\"]\ncontainer_annotations = [\"team.example.com/?ole\"]\n",
    )
    .await;
    common::pull_ok(&d, "busybox").await;
    let mut config = common::pod_config(&d, "annotated");
    config.annotations = [
        ("org.systemd.property.ExecStartPre", "/bin/evil"),
        ("run.oci.keep_original_groups", "1"),
        ("io.katacontainers.config.hypervisor.path", "/bin/evil"),
        ("example.com/owner", "team-a"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let pod = run_pod(&d, &config).await.unwrap();
    let mut c = container_config("c", "busybox", &["sleep", "100"]);
    c.annotations = [
        ("org.systemd.property.CPUWeight", "10000"),
        ("team.example.com/role", "db"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let id = create_container(&d, &pod, &config, c).await.unwrap();
    let keys = |spec: &serde_json::Value| -> Vec<String> {
        spec["annotations"]
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| !k.starts_with("io.kubernetes.cri."))
            .cloned()
            .collect()
    };
    let pause = spec_of(&d, &pod).await;
    assert_eq!(
        keys(&pause),
        vec!["example.com/owner"],
        "{}",
        pause["annotations"]
    );
    assert_eq!(pause["annotations"]["io.kubernetes.cri.sandbox-id"], pod);
    let ctr = spec_of(&d, &id).await;
    assert_eq!(
        keys(&ctr),
        vec!["example.com/owner", "team.example.com/role"],
        "{}",
        ctr["annotations"]
    );
    assert_eq!(
        ctr["annotations"]["io.kubernetes.cri.container-type"],
        "container"
    );
    remove_pod(&d, &pod).await;
}

/// A container that ignores SIGTERM, stopped with a grace period longer than
/// `reconcile.timeout_seconds`: the stop is retried after each reconcile timeout, but the grace
/// is not started over, and SIGKILL comes when it ends (before, the SIGTERM was re-sent forever).
/// A grace of i64::MAX seconds does not panic, and a second stop with a short grace wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_stop_grace_ends_in_sigkill_and_a_huge_one_does_not_panic() {
    let d = common::pod_daemon(&["--reconcile-timeout-seconds=2", "--backoff-max-ms=500"]).await;
    common::pull_ok(&d, "busybox").await;
    let config = common::pod_config(&d, "stubborn");
    let mut rt = d.runtime().await;
    let pod = run_pod(&d, &config).await.unwrap();
    let mut ids = Vec::new();
    for name in ["stubborn", "forever"] {
        let script = "trap '' TERM; while true; do sleep 1; done";
        let c = container_config(name, "busybox", &["sh", "-c", script]);
        ids.push(run_container(&d, &pod, &config, c).await);
    }
    // 6 s of grace against a 2 s reconcile timeout.
    let started = Instant::now();
    rt.stop_container(cri::StopContainerRequest {
        container_id: ids[0].clone(),
        timeout: 6,
    })
    .await
    .expect("the stop ends with SIGKILL");
    let took = started.elapsed();
    println!("6 s grace, 2 s reconcile timeout: SIGKILL after {took:?}");
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_secs(15),
        "SIGKILL after {took:?}"
    );
    let client = rt.clone();
    let status = |id: String| {
        let mut rt = client.clone();
        async move {
            rt.container_status(cri::ContainerStatusRequest {
                container_id: id,
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap()
        }
    };
    let s = status(ids[0].clone()).await;
    assert_eq!(
        s.exit_code,
        137,
        "{} {}\n{}",
        s.reason,
        s.message,
        d.log()
            .lines()
            .filter(|l| l.contains("stop") || l.contains("exit") || l.contains("kill"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // i64::MAX seconds: the caller's own deadline ends the wait; concord keeps answering.
    let mut req = tonic::Request::new(cri::StopContainerRequest {
        container_id: ids[1].clone(),
        timeout: i64::MAX,
    });
    req.set_timeout(Duration::from_secs(2));
    let err = rt.stop_container(req).await.unwrap_err();
    // (the client gives up at its deadline: Cancelled here, DeadlineExceeded from concord)
    assert!(
        matches!(
            err.code(),
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
        ),
        "{err:?}"
    );
    rt.version(cri::VersionRequest::default()).await.unwrap();
    // A second stop with no grace kills it now.
    let started = Instant::now();
    rt.stop_container(cri::StopContainerRequest {
        container_id: ids[1].clone(),
        timeout: 0,
    })
    .await
    .unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(status(ids[1].clone()).await.exit_code, 137);
    remove_pod(&d, &pod).await;
}

/// A registry on loopback whose answers are traps: an endless chunked manifest, a manifest that
/// claims 8 GiB, one that drips a byte a second, a token server answering endlessly.
async fn hostile_registry() -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                break;
            };
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 16384 {
                    if s.read(&mut b).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(b[0]);
                }
                let text = String::from_utf8_lossy(&head).into_owned();
                let path = text.split(' ').nth(1).unwrap_or("").to_string();
                let head_only = text.starts_with("HEAD");
                let manifest = "Content-Type: application/vnd.oci.image.manifest.v1+json\r\n";
                let chunk = vec![b'{'; 64 * 1024];
                let endless = |mut s: tokio::net::TcpStream, hdr: String| async move {
                    let _ = s.write_all(hdr.as_bytes()).await;
                    if head_only {
                        return;
                    }
                    let frame = [
                        format!("{:x}\r\n", chunk.len()).into_bytes(),
                        chunk,
                        b"\r\n".to_vec(),
                    ]
                    .concat();
                    while s.write_all(&frame).await.is_ok() {}
                };
                if path == "/v2/" {
                    let _ = s
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        )
                        .await;
                } else if path.starts_with("/v2/endless/") {
                    endless(
                        s,
                        format!("HTTP/1.1 200 OK\r\n{manifest}Transfer-Encoding: chunked\r\n\r\n"),
                    )
                    .await;
                } else if path.starts_with("/v2/claims/") {
                    let _ = s
                        .write_all(
                            format!(
                                "HTTP/1.1 200 OK\r\n{manifest}Content-Length: 8589934592\r\n\r\n"
                            )
                            .as_bytes(),
                        )
                        .await;
                    if !head_only {
                        while s.write_all(&[b' '; 65536]).await.is_ok() {}
                    }
                } else if path.starts_with("/v2/drip/") {
                    let _ = s
                        .write_all(
                            format!("HTTP/1.1 200 OK\r\n{manifest}Content-Length: 1000\r\n\r\n")
                                .as_bytes(),
                        )
                        .await;
                    if !head_only {
                        while s.write_all(b" ").await.is_ok() {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                } else if path.starts_with("/token") {
                    endless(s, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".into()).await;
                } else if path.starts_with("/v2/private/") {
                    let _ = s
                        .write_all(format!("HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"x\",scope=\"repository:private:pull\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes())
                        .await;
                } else {
                    let _ = s
                        .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        .await;
                }
            });
        }
    });
    port
}

/// Hostile registry bodies: each pull fails at once (or at the progress timeout for a drip) with
/// an error naming the limit, and concord's memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_registry_bodies_are_bounded_while_they_are_read() {
    let port = hostile_registry().await;
    let mut d = Daemon::new();
    d.extra
        .push("--image-pull-progress-timeout-seconds=3".into());
    d.start().await;
    let rss_before = rss_kb(d.pid());
    let pull = |image: String| {
        let d = &d;
        async move {
            let started = Instant::now();
            let err = d
                .images()
                .await
                .pull_image(cri::PullImageRequest {
                    image: Some(cri::ImageSpec {
                        image,
                        ..Default::default()
                    }),
                    auth: Some(cri::AuthConfig {
                        username: "u".into(),
                        password: "p".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .await
                .unwrap_err();
            (err, started.elapsed())
        }
    };
    for (repo, code, message, within) in [
        (
            "endless",
            tonic::Code::FailedPrecondition,
            "larger than the 4 MiB limit",
            10,
        ),
        (
            "claims",
            tonic::Code::FailedPrecondition,
            "larger than the 4 MiB limit",
            10,
        ),
        ("drip", tonic::Code::DeadlineExceeded, "", 15),
        (
            "private",
            tonic::Code::Unauthenticated,
            "larger than the 1 MiB limit",
            10,
        ),
    ] {
        let (err, took) = pull(format!("127.0.0.1:{port}/{repo}:1")).await;
        assert_eq!(err.code(), code, "{repo}: {}", err.message());
        assert!(err.message().contains(message), "{repo}: {}", err.message());
        assert!(took < Duration::from_secs(within), "{repo} took {took:?}");
        println!("{repo}: {:?} in {took:?}", err.code());
    }
    let rss_after = rss_kb(d.pid());
    println!("RSS {rss_before} kB before, {rss_after} kB after");
    assert!(
        rss_after < rss_before + 64 * 1024,
        "RSS grew from {rss_before} kB to {rss_after} kB"
    );
}

/// UpdateRuntimeConfig with pod CIDR `cidr`: one small journal append.
async fn set_pod_cidr(
    d: &Daemon,
    cidr: String,
) -> Result<tonic::Response<cri::UpdateRuntimeConfigResponse>, tonic::Status> {
    d.runtime()
        .await
        .update_runtime_config(cri::UpdateRuntimeConfigRequest {
            runtime_config: Some(cri::RuntimeConfig {
                network_config: Some(cri::NetworkConfig { pod_cidr: cidr }),
            }),
        })
        .await
}

/// Puts the daemon's state dir (its journal) on a tmpfs of `size`; unmounted when dropped.
fn state_on_tmpfs(d: &Daemon, size: &str) -> Unmount {
    std::fs::create_dir_all(&d.state_dir).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &d.state_dir,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some(format!("size={size},mode=0700").as_str()),
    )
    .unwrap();
    Unmount(vec![d.state_dir.clone()])
}

/// The journal's disk fills up mid-append: the failed intent is refused (not acknowledged),
/// RuntimeReady turns false with the reason, and once space is back concord reopens the journal
/// and is ready again by itself; after a restart every acknowledged intent is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_journal_disk_is_not_ready_then_recovers_and_loses_nothing() {
    let mut d = Daemon::new();
    let _unmount = state_on_tmpfs(&d, "8m");
    d.extra.push("--journal-compact-after=100".into());
    d.start().await;
    let update = |cidr: String| set_pod_cidr(&d, cidr);
    let ready = || {
        let d = &d;
        async move {
            d.runtime()
                .await
                .status(cri::StatusRequest { verbose: false })
                .await
                .unwrap()
                .into_inner()
                .status
                .unwrap()
                .conditions
                .into_iter()
                .find(|c| c.r#type == "RuntimeReady")
                .unwrap()
        }
    };
    update("10.1.0.0/24".into()).await.unwrap();
    // Fill the disk.
    let filler = d.state_dir.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0xa5u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
    }
    let mut last_ok = "10.1.0.0/24".to_string();
    let mut refused = None;
    for i in 0..5000u32 {
        let cidr = format!("10.{}.{}.0/24", 2 + i / 250, i % 250);
        match update(cidr.clone()).await {
            Ok(_) => last_ok = cidr,
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let refused = refused.expect("a write fails on a full disk");
    assert!(
        refused.message().contains("journal"),
        "{}",
        refused.message()
    );
    let c = ready().await;
    assert!(!c.status, "{c:?}");
    assert_eq!(c.reason, "JournalWriteFailed", "{c:?}");
    assert!(d.metric("concord_journal_write_errors_total", &[]).await >= 1.0);
    assert_eq!(d.metric("concord_journal_writable", &[]).await, 0.0);
    // Space comes back: ready again without any request.
    std::fs::remove_file(&filler).unwrap();
    let took = common::eventually(
        Duration::from_secs(30),
        "RuntimeReady after space is back",
        || async { ready().await.status },
    )
    .await;
    println!("ready again {took:?} after the disk had space");
    // The refused intent left nothing; the last acknowledged one is the desired state.
    let o = common::runtime_config_object(&d).await;
    let desired: serde_json::Value = serde_json::from_str(&o.desired).unwrap();
    assert_eq!(desired["pod_cidr"], last_ok.as_str(), "{}", o.desired);
    update("10.200.1.0/24".into()).await.unwrap();
    last_ok = "10.200.1.0/24".into();
    // Every acknowledged intent survives a restart.
    assert_eq!(d.terminate().await.code(), Some(0));
    d.start().await;
    let o = common::runtime_config_object(&d).await;
    let desired: serde_json::Value = serde_json::from_str(&o.desired).unwrap();
    assert_eq!(desired["pod_cidr"], last_ok.as_str(), "{}", o.desired);
    d.kill9();
}

/// An ExecSync whose caller goes away (kubelet's deadline, a dropped connection) does not leave
/// its process running or its FIFOs behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_exec_sync_leaves_no_process_and_no_fifos() {
    let d = common::pod_daemon(&[]).await;
    common::pull_ok(&d, "busybox").await;
    let config = common::pod_config(&d, "cancelled");
    let mut rt = d.runtime().await;
    let pod = run_pod(&d, &config).await.unwrap();
    let id = run_container(
        &d,
        &pod,
        &config,
        container_config("c", "busybox", &["sleep", "1000"]),
    )
    .await;
    let mut req = tonic::Request::new(cri::ExecSyncRequest {
        container_id: id.clone(),
        cmd: vec!["sleep".into(), "777".into()],
        timeout: 0,
    });
    req.set_timeout(Duration::from_secs(1));
    assert!(rt.exec_sync(req).await.is_err());
    let state = d.state_dir.join("containers").join(&id);
    common::eventually(
        Duration::from_secs(15),
        "the abandoned exec's process and FIFOs are gone",
        || async {
            let ps = common::exec_out(&d, &id, &["ps"]).await;
            let fifos = std::fs::read_dir(&state)
                .map(|r| {
                    r.flatten()
                        .any(|e| e.file_name().to_string_lossy().starts_with("exec-"))
                })
                .unwrap_or(false);
            !ps.contains("sleep 777") && !fifos
        },
    )
    .await;
    remove_pod(&d, &pod).await;
}

/// One raw tar entry: path, type, contents, link target.
type RawEntry<'a> = (&'a str, tar::EntryType, Vec<u8>, &'a str);

/// A tar of `entries`, written raw, as an attacker's tool would.
fn raw_tar(path: &std::path::Path, entries: &[RawEntry], gzip: bool) {
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind, data, link) in entries {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(*kind);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        if !link.is_empty() {
            h.set_link_name(link).unwrap();
        }
        h.set_cksum();
        b.append(&h, data.as_slice()).unwrap();
    }
    let bytes = b.into_inner().unwrap();
    if gzip {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(
            std::fs::File::create(path).unwrap(),
            flate2::Compression::best(),
        );
        gz.write_all(&bytes).unwrap();
        gz.finish().unwrap();
    } else {
        std::fs::write(path, bytes).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_archives_are_refused_and_leave_nothing() {
    use tar::EntryType as T;
    let d = common::pod_daemon(&[]).await;
    let dir = d.dir.join("archives");
    std::fs::create_dir_all(&dir).unwrap();
    // A host file an archive points at: a valid layer, so reading it would import it.
    let host_layer = layer(&[Item::File("secret", b"host only".to_vec())]);
    let host_file = dir.join("host-layer.tar");
    std::fs::write(&host_file, &host_layer).unwrap();
    let host_sha = sha(&host_layer);
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{host_sha}")]},
    })
    .to_string();
    let manifest = |layer: &str| {
        serde_json::json!([{
            "Config": "config.json", "RepoTags": ["example.test/hostile/archive:1"],
            "Layers": [layer],
        }])
        .to_string()
        .into_bytes()
    };
    let host = host_file.display().to_string();
    let host_dir = dir.display().to_string();
    let cases: Vec<(&str, Vec<RawEntry>, bool, &str)> = vec![
        (
            "a layer symlinked to a host file",
            vec![
                ("config.json", T::Regular, config.clone().into_bytes(), ""),
                ("l/layer.tar", T::Symlink, vec![], &host),
                ("manifest.json", T::Regular, manifest("l/layer.tar"), ""),
            ],
            false,
            "l/layer.tar",
        ),
        (
            "a directory symlinked to the host",
            vec![
                ("config.json", T::Regular, config.clone().into_bytes(), ""),
                ("l", T::Symlink, vec![], &host_dir),
                (
                    "manifest.json",
                    T::Regular,
                    manifest("l/host-layer.tar"),
                    "",
                ),
            ],
            false,
            "l/host-layer.tar",
        ),
        (
            "a layer path climbing out",
            vec![
                ("config.json", T::Regular, config.clone().into_bytes(), ""),
                (
                    "manifest.json",
                    T::Regular,
                    manifest(&format!("../../../../../../..{host}")),
                    "",
                ),
            ],
            false,
            "not in the archive",
        ),
        (
            "a device node",
            vec![("dev", T::Char, vec![], "")],
            false,
            "Char entries are not allowed",
        ),
        (
            "a gzip bomb",
            vec![("zeros", T::Regular, vec![0u8; 512 << 20], "")],
            true,
            "decompression bomb",
        ),
    ];
    let mut client = concord::proto::images_client::ImagesClient::new(d.channel().await.unwrap());
    let rss_before = rss_kb(d.pid());
    let mut rss_peak = rss_before;
    for (i, (what, entries, gzip, expect)) in cases.into_iter().enumerate() {
        let path = dir.join(format!("{i}.tar"));
        raw_tar(&path, &entries, gzip);
        drop(entries);
        let started = Instant::now();
        let err = client
            .load_image(concord::proto::LoadImageRequest {
                file_path: path.display().to_string(),
            })
            .await
            .expect_err(what);
        rss_peak = rss_peak.max(rss_kb(d.pid()));
        println!(
            "{what}: {:?} in {:?}: {}",
            err.code(),
            started.elapsed(),
            err.message()
        );
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{what}: {err:?}");
        assert!(err.message().contains(expect), "{what}: {}", err.message());
    }
    println!("rss {rss_before} kB before, {rss_peak} kB peak");
    assert!(rss_peak < rss_before + 64 * 1024, "{rss_peak} kB");
    let images = d
        .images()
        .await
        .list_images(cri::ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .images;
    assert!(
        images
            .iter()
            .all(|i| !i.repo_tags.iter().any(|t| t.contains("hostile/archive"))),
        "{images:?}"
    );
    let scratch = d.state_dir.join("tmp");
    let left: Vec<_> = std::fs::read_dir(&scratch)
        .map(|r| r.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "scratch left: {left:?}");
}

/// concord stopped between a container's task start and the journal fact of it (which makes the
/// start intent durable too, so the crash loses both): the restart finds the created container's
/// task, adopts it (running, or already exited with its code) and never runs the entrypoint a
/// second time. (It replaced the task: the entrypoint ran twice.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_right_after_a_task_start_never_runs_the_entrypoint_twice() {
    crash_then_converge("container-started", Crash::AtStart).await;
}

/// The create's fact is committed without waiting for the disk (containerd shows the container
/// again): a crash right after it loses it; the restart finds the containerd container and its
/// snapshot, and the container starts once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_that_loses_the_created_fact_finds_the_container_again() {
    crash_then_converge("container-create-recorded", Crash::AtCreate).await;
}

enum Crash {
    AtCreate,
    AtStart,
}

/// Two containers (one that runs on, one that exits 3), concord aborted at crash `point` in the
/// create or the start of each, restarted: both end as they should, each entrypoint ran once.
async fn crash_then_converge(point: &str, during: Crash) {
    let mut d = common::pod_daemon(&[]).await;
    common::pull_ok(&d, "busybox").await;
    let out = d.dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let config = common::pod_config(&d, "once");
    let pod = run_pod(&d, &config).await.unwrap();
    let with_out = |name: &str, script: &str| cri::ContainerConfig {
        mounts: vec![cri::Mount {
            container_path: "/out".into(),
            host_path: out.display().to_string(),
            ..Default::default()
        }],
        ..container_config(name, "busybox", &["sh", "-c", script])
    };
    let scripts = [
        ("long", "echo ran >> /out/long; sleep 1000"),
        ("short", "echo ran >> /out/short; exit 3"),
    ];
    let crash = |d: &mut Daemon| {
        d.kill9();
        d.env = vec![("CONCORD_CRASH_AT".into(), point.into())];
    };
    let mut ids = Vec::new();
    for (name, script) in scripts {
        if let Crash::AtCreate = during {
            crash(&mut d);
            d.start().await;
            let r = create_container(&d, &pod, &config, with_out(name, script)).await;
            assert!(r.is_err(), "concord did not stop at the crash point");
            restart_after_abort(&mut d).await;
            ids.push(container_named(&d, name).await);
        } else {
            ids.push(
                create_container(&d, &pod, &config, with_out(name, script))
                    .await
                    .unwrap(),
            );
        }
    }
    for id in &ids {
        if let Crash::AtStart = during {
            crash(&mut d);
            d.start().await;
        }
        let r = d
            .runtime()
            .await
            .start_container(cri::StartContainerRequest {
                container_id: id.clone(),
            })
            .await;
        if let Crash::AtStart = during {
            assert!(r.is_err(), "concord did not stop at the crash point");
            restart_after_abort(&mut d).await;
        } else {
            r.unwrap();
        }
    }
    let (long, short) = (ids[0].clone(), ids[1].clone());
    let status = |id: String| {
        let d = &d;
        async move {
            d.runtime()
                .await
                .container_status(cri::ContainerStatusRequest {
                    container_id: id,
                    verbose: false,
                })
                .await
                .unwrap_or_else(|e| panic!("{e}\n{}", d.log()))
                .into_inner()
                .status
                .unwrap()
        }
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (l, s) = (status(long.clone()).await, status(short.clone()).await);
        if l.state == cri::ContainerState::ContainerRunning as i32
            && s.state == cri::ContainerState::ContainerExited as i32
        {
            assert_eq!(s.exit_code, 3);
            assert!(s.started_at > 0 && s.finished_at >= s.started_at, "{s:?}");
            break;
        }
        assert!(Instant::now() < deadline, "long {l:?}\nshort {s:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Time for a second run to show up, had there been one.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for name in ["long", "short"] {
        let runs = std::fs::read_to_string(out.join(name)).unwrap();
        assert_eq!(
            runs,
            "ran\n",
            "{name}'s entrypoint ran {} times",
            runs.lines().count()
        );
    }
    if let Crash::AtStart = during {
        assert!(d
            .log()
            .contains("adopted a task an interrupted start left running"));
    }
}

/// Waits for the aborted concord, then starts it again without the crash point.
async fn restart_after_abort(d: &mut Daemon) {
    let mut child = d.child.take().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "{status:?}");
    d.env.clear();
    d.start().await;
}

/// The id of the container named `name` (its CreateContainer was cut off before the answer),
/// once the restarted concord created it again.
async fn container_named(d: &Daemon, name: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(c) = common::list_containers(d)
            .await
            .into_iter()
            .find(|c| c.metadata.as_ref().is_some_and(|m| m.name == name))
        {
            return c.id;
        }
        assert!(
            Instant::now() < deadline,
            "no container {name} after the restart\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The journal's disk fills up while it compacts: the snapshot (the whole state, ~1 MiB of pods
/// here) does not fit where small appends still do. The failed compaction loses nothing (its
/// events stay), appends go on or recover, and once space is back a compaction commits; after a
/// restart every acknowledged intent and every pod is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_disk_filling_mid_compaction_loses_nothing() {
    let mut d = Daemon::new();
    let _unmount = state_on_tmpfs(&d, "24m");
    d.extra.extend([
        "--journal-compact-after=25".to_string(),
        format!("--registry-config-path={}", common::hosts_dir()),
        format!("--netns-dir={}", d.dir.join("netns").display()),
    ]);
    d.start().await;
    // Four pods of 200 KiB of annotations each: a large state to snapshot.
    let mut pods = Vec::new();
    for i in 0..4 {
        let mut config = common::pod_config(&d, &format!("big{i}"));
        config
            .annotations
            .insert("example.test/blob".into(), "x".repeat(200 << 10));
        pods.push(run_pod(&d, &config).await.unwrap());
    }
    let compactions = d.metric("concord_journal_compactions_total", &[]).await;
    let update = |cidr: String| set_pod_cidr(&d, cidr);
    // Fill the disk, then give back 256 KiB: room for small appends, not for a snapshot.
    let filler = d.state_dir.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0xa5u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        let len = f.metadata().unwrap().len();
        f.set_len(len.saturating_sub(256 << 10)).unwrap();
    }
    let mut last_ok = None;
    let (mut acked, mut refused) = (0, 0);
    for i in 0..200u32 {
        let cidr = format!("10.{}.{}.0/24", 2 + i / 250, i % 250);
        match update(cidr.clone()).await {
            Ok(_) => {
                acked += 1;
                last_ok = Some(cidr)
            }
            Err(_) => refused += 1,
        }
        if d.log().contains("journal compaction failed") && i > 60 {
            break;
        }
    }
    println!("on the full disk: {acked} updates acknowledged, {refused} refused");
    assert!(
        d.log().contains("journal compaction failed"),
        "no compaction failed on the full disk"
    );
    assert!(d.metric("concord_journal_write_errors_total", &[]).await >= 1.0);
    // Space comes back: ready, and a compaction commits.
    std::fs::remove_file(&filler).unwrap();
    common::eventually(Duration::from_secs(30), "RuntimeReady", || async {
        d.runtime()
            .await
            .status(cri::StatusRequest { verbose: false })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap()
            .conditions
            .iter()
            .any(|c| c.r#type == "RuntimeReady" && c.status)
    })
    .await;
    let mut i = 0u32;
    while d.metric("concord_journal_compactions_total", &[]).await <= compactions {
        i += 1;
        assert!(i < 500, "no compaction committed after space came back");
        let cidr = format!("10.100.{}.0/24", i % 250);
        update(cidr.clone()).await.unwrap();
        last_ok = Some(cidr);
    }
    // Everything acknowledged survives a restart.
    assert_eq!(d.terminate().await.code(), Some(0));
    d.start().await;
    let o = common::runtime_config_object(&d).await;
    let desired: serde_json::Value = serde_json::from_str(&o.desired).unwrap();
    assert_eq!(
        desired["pod_cidr"],
        last_ok.unwrap().as_str(),
        "{}",
        o.desired
    );
    let listed = d
        .runtime()
        .await
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items;
    for p in &pods {
        assert!(listed.iter().any(|l| &l.id == p), "pod {p} lost");
    }
    let mut rt = d.runtime().await;
    for p in pods {
        rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: p.clone(),
        })
        .await
        .unwrap();
        remove_pod(&d, &p).await;
    }
}
