//! Images against the real containerd and the dev environment's local registry (reached through
//! the hosts.toml mirrors that map docker.io, registry.k8s.io, public.ecr.aws, ... to it).

mod common;

use std::time::Duration;

use common::{eventually, hosts_dir, namespace_counts, pull, registry, Daemon};
use concord::containerd::Containerd;
use concord::cri;

async fn daemon() -> Daemon {
    let mut d = Daemon::new();
    d.extra
        .push(format!("--registry-config-path={}", hosts_dir()));
    d.extra.push("--image-fs-sync-interval-seconds=1".into());
    d.start().await;
    d
}

fn spec(image: &str) -> Option<cri::ImageSpec> {
    Some(cri::ImageSpec {
        image: image.into(),
        ..Default::default()
    })
}

async fn status(d: &Daemon, image: &str) -> Option<cri::Image> {
    d.images()
        .await
        .image_status(cri::ImageStatusRequest {
            image: spec(image),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .image
}

async fn remove(d: &Daemon, image: &str) {
    d.images()
        .await
        .remove_image(cri::RemoveImageRequest { image: spec(image) })
        .await
        .unwrap();
}

#[tokio::test]
async fn pull_by_tag_then_status_list_remove_and_gc_frees_everything() {
    let d = daemon().await;
    assert_eq!(namespace_counts(&d).await, (0, 0, 0));
    let id = pull(&d, "busybox").await.unwrap();
    assert!(id.starts_with("sha256:"), "{id}");

    let img = status(&d, "busybox").await.expect("status by short name");
    assert_eq!(img.id, id);
    assert_eq!(img.repo_tags, vec!["docker.io/library/busybox:latest"]);
    assert_eq!(img.repo_digests.len(), 1);
    assert!(img.repo_digests[0].starts_with("docker.io/library/busybox@sha256:"));
    assert!(img.size > 1_000_000, "{}", img.size);
    assert!(img.uid.is_none() && img.username.is_empty());
    assert!(!img.pinned);
    assert_eq!(status(&d, &id).await.unwrap().id, id, "status by id");
    assert_eq!(
        status(&d, &id["sha256:".len()..]).await.unwrap().id,
        id,
        "status by bare hex id"
    );
    assert_eq!(
        status(&d, &img.repo_digests[0]).await.unwrap().id,
        id,
        "status by digest"
    );
    assert!(status(&d, "docker.io/library/nothere:1").await.is_none());

    let verbose = d
        .images()
        .await
        .image_status(cri::ImageStatusRequest {
            image: spec(&id),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        verbose.info["info"].contains("diff_ids"),
        "{:?}",
        verbose.info
    );

    let list = d
        .images()
        .await
        .list_images(cri::ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.images.len(), 1);
    let filtered = d
        .images()
        .await
        .list_images(cri::ListImagesRequest {
            filter: Some(cri::ImageFilter {
                image: spec("busybox:latest"),
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(filtered.images.len(), 1);

    let (content, snaps, images) = namespace_counts(&d).await;
    assert_eq!(
        (content, snaps, images),
        (3, 1, 2),
        "config + manifest + layer, one snapshot, tag + digest records"
    );

    // ImageFsInfo comes from the syncer.
    let fs = eventually(
        Duration::from_secs(5),
        "fs usage with the snapshot",
        || async {
            match d
                .images()
                .await
                .image_fs_info(cri::ImageFsInfoRequest {})
                .await
            {
                Ok(r) => r
                    .into_inner()
                    .image_filesystems
                    .first()
                    .is_some_and(|f| f.used_bytes.as_ref().unwrap().value > 0),
                Err(_) => false,
            }
        },
    )
    .await;
    let info = d
        .images()
        .await
        .image_fs_info(cri::ImageFsInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        info.image_filesystems[0]
            .fs_id
            .as_ref()
            .unwrap()
            .mountpoint
            .contains("overlayfs"),
        "{info:?}"
    );
    // One snapshotter holds images and writable layers: no separate container filesystem.
    assert!(info.container_filesystems.is_empty(), "{info:?}");
    println!("fs usage visible after {fs:?}: {info:?}");

    // Remove by tag: it was the only tag, so the image goes, and the GC frees it all.
    remove(&d, "busybox").await;
    assert!(status(&d, &id).await.is_none());
    assert_eq!(namespace_counts(&d).await, (0, 0, 0));
    // Unknown image: fine.
    remove(&d, "busybox").await;

    // Re-pull works.
    assert_eq!(
        pull(&d, "docker.io/library/busybox:latest").await.unwrap(),
        id
    );
}

#[tokio::test]
async fn pull_by_digest_and_remove_by_id_removes_every_name() {
    let d = daemon().await;
    let id = pull(&d, "registry.k8s.io/e2e-test-images/busybox:1.29-2")
        .await
        .unwrap();
    let img = status(&d, &id).await.unwrap();
    let digest_ref = img.repo_digests[0].clone();
    let by_digest = pull(&d, &digest_ref).await.unwrap();
    assert_eq!(by_digest, id);
    pull(&d, "busybox:1.36").await.unwrap();
    let img = status(&d, &id).await.unwrap();
    assert_eq!(img.repo_tags.len(), 2, "{img:?}");

    // By tag: only that name goes while another tag remains.
    remove(&d, "busybox:1.36").await;
    let img = status(&d, &id).await.unwrap();
    assert_eq!(
        img.repo_tags,
        vec!["registry.k8s.io/e2e-test-images/busybox:1.29-2"]
    );

    // By id: every name.
    remove(&d, &id).await;
    assert!(status(&d, &id).await.is_none());
    assert_eq!(namespace_counts(&d).await, (0, 0, 0));
}

#[tokio::test]
async fn image_users_are_reported_as_uid_or_name() {
    let d = daemon().await;
    let base = "gcr.io/k8s-staging-cri-tools";
    pull(&d, &format!("{base}/test-image-user-uid:latest"))
        .await
        .unwrap();
    let img = status(&d, &format!("{base}/test-image-user-uid:latest"))
        .await
        .unwrap();
    assert_eq!(img.uid.map(|u| u.value), Some(1002));
    pull(&d, &format!("{base}/test-image-user-username:latest"))
        .await
        .unwrap();
    let img = status(&d, &format!("{base}/test-image-user-username:latest"))
        .await
        .unwrap();
    assert_eq!((img.uid, img.username.as_str()), (None, "www-data"));
    pull(&d, &format!("{base}/test-image-user-uid-group:latest"))
        .await
        .unwrap();
    let img = status(&d, &format!("{base}/test-image-user-uid-group:latest"))
        .await
        .unwrap();
    assert_eq!(img.uid.map(|u| u.value), Some(1003));
}

#[tokio::test]
async fn the_sandbox_image_is_pinned() {
    let mut d = Daemon::new();
    d.extra
        .push(format!("--registry-config-path={}", hosts_dir()));
    d.extra
        .push("--sandbox-image=registry.k8s.io/pause:3.9".into());
    d.start().await;
    let id = pull(&d, "registry.k8s.io/pause:3.9").await.unwrap();
    assert!(status(&d, &id).await.unwrap().pinned);
    pull(&d, "busybox").await.unwrap();
    assert!(!status(&d, "busybox").await.unwrap().pinned);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_of_one_reference_share_one_download() {
    let d = daemon().await;
    let image = "gcr.io/k8s-staging-cri-tools/test-image-1:latest";
    let pulls: Vec<_> = (0..4)
        .map(|_| {
            let socket = d.socket.clone();
            tokio::spawn(async move {
                let ch = common::uds_channel(&socket).await.unwrap();
                cri::image_service_client::ImageServiceClient::new(ch)
                    .pull_image(cri::PullImageRequest {
                        image: spec(image),
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .image_ref
            })
        })
        .collect();
    let mut ids = Vec::new();
    for p in pulls {
        ids.push(p.await.unwrap());
    }
    assert!(ids.windows(2).all(|w| w[0] == w[1]));
    let pulls_ok = d
        .metric("concord_image_pulls_total", &["result=\"ok\""])
        .await;
    assert!(
        pulls_ok < 4.0,
        "4 concurrent requests made {pulls_ok} pulls"
    );
    let grpc_ok = d
        .metric(
            "concord_grpc_requests_total",
            &["method=\"PullImage\"", "code=\"OK\""],
        )
        .await;
    assert_eq!(grpc_ok, 4.0);
}

#[tokio::test]
async fn an_image_added_by_another_client_shows_up_without_a_restart() {
    use containerd_client::services::v1::{CreateImageRequest, DeleteImageRequest, Image};
    let d = daemon().await;
    let id = pull(&d, "busybox").await.unwrap();
    let ctd = Containerd::new(&d.containerd, &d.namespace, Default::default());
    let existing = ctd
        .images()
        .get(
            ctd.request(containerd_client::services::v1::GetImageRequest {
                name: "docker.io/library/busybox:latest".into(),
            }),
        )
        .await
        .unwrap()
        .into_inner()
        .image
        .unwrap();
    let other = Image {
        name: "example.test/other/copy:v1".into(),
        ..existing
    };
    ctd.images()
        .create(ctd.request(CreateImageRequest {
            image: Some(other),
            source_date_epoch: None,
        }))
        .await
        .unwrap();
    eventually(
        Duration::from_secs(5),
        "the new name in ImageStatus",
        || async {
            status(&d, &id).await.is_some_and(|i| {
                i.repo_tags
                    .contains(&"example.test/other/copy:v1".to_string())
            })
        },
    )
    .await;
    ctd.images()
        .delete(ctd.request(DeleteImageRequest {
            name: "example.test/other/copy:v1".into(),
            ..Default::default()
        }))
        .await
        .unwrap();
    eventually(Duration::from_secs(5), "the name gone", || async {
        status(&d, &id)
            .await
            .is_some_and(|i| i.repo_tags.len() == 1)
    })
    .await;
}

#[tokio::test]
async fn bad_references_and_unreachable_registries_fail_clearly_and_leave_nothing() {
    let d = daemon().await;
    let cases: Vec<(String, tonic::Code, &str)> = vec![
        (
            "Not A Reference".into(),
            tonic::Code::InvalidArgument,
            "invalid image reference",
        ),
        (
            "busybox@sha256:1234".into(),
            tonic::Code::InvalidArgument,
            "sha256",
        ),
        (
            "docker.io/library/does-not-exist:1".into(),
            tonic::Code::NotFound,
            "not found",
        ),
        (
            "127.0.0.1:1/some/image:1".into(),
            tonic::Code::Unavailable,
            "127.0.0.1:1",
        ),
        (
            "no-such-host.invalid/some/image:1".into(),
            tonic::Code::Unavailable,
            "no-such-host.invalid",
        ),
        (
            format!("{}/library/busybox:no-such-tag", registry()),
            tonic::Code::NotFound,
            "no-such-tag",
        ),
    ];
    for (image, code, needle) in cases {
        let err = pull(&d, &image).await.unwrap_err();
        assert_eq!(err.code(), code, "{image}: {}", err.message());
        assert!(err.message().contains(needle), "{image}: {}", err.message());
    }
    let err = d
        .images()
        .await
        .pull_image(cri::PullImageRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("image.image"));
    assert_eq!(namespace_counts(&d).await, (0, 0, 0));
}

#[tokio::test]
async fn a_multi_platform_index_pulls_the_node_platform_and_a_foreign_one_is_refused() {
    let d = daemon().await;
    let reg = registry();
    let repo = "docker/library/busybox";
    let http = reqwest::Client::new();
    let head = |tag: &str| {
        let url = format!("http://{reg}/v2/{repo}/manifests/{tag}");
        let http = http.clone();
        async move {
            let r = http
                .get(url)
                .header(
                    "Accept",
                    "application/vnd.docker.distribution.manifest.v2+json",
                )
                .send()
                .await
                .unwrap();
            let bytes = r.bytes().await.unwrap();
            (concord::image::manifest::sha256_digest(&bytes), bytes.len())
        }
    };
    let (amd, amd_size) = head("1").await;
    let (other, other_size) = head("1-musl").await;
    let entry = |digest: &str, size: usize, arch: &str| {
        serde_json::json!({"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "digest": digest, "size": size,
            "platform": {"architecture": arch, "os": "linux"}})
    };
    let put = |tag: &str, entries: Vec<serde_json::Value>| {
        let body = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json", "manifests": entries});
        let url = format!("http://{reg}/v2/{repo}/manifests/{tag}");
        let http = http.clone();
        async move {
            let r = http
                .put(url)
                .header(
                    "Content-Type",
                    "application/vnd.docker.distribution.manifest.list.v2+json",
                )
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "push index: {}", r.status());
        }
    };
    let arch = concord::image::manifest::node_platform().architecture;
    let foreign = if arch == "amd64" { "arm64" } else { "amd64" };
    put(
        "concord-multi",
        vec![
            entry(&other, other_size, foreign),
            entry(&amd, amd_size, &arch),
        ],
    )
    .await;
    put(
        "concord-foreign",
        vec![
            entry(&other, other_size, foreign),
            entry(&amd, amd_size, "s390x"),
        ],
    )
    .await;

    let id = pull(&d, "public.ecr.aws/docker/library/busybox:concord-multi")
        .await
        .unwrap();
    let single = pull(&d, "public.ecr.aws/docker/library/busybox:1")
        .await
        .unwrap();
    assert_eq!(id, single, "the node's platform was chosen from the index");

    let err = pull(&d, "public.ecr.aws/docker/library/busybox:concord-foreign")
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(
        err.message().contains("no manifest for platform linux/"),
        "{}",
        err.message()
    );
}

fn skopeo(args: &[&str]) {
    let st = std::process::Command::new("skopeo")
        .args(args)
        .status()
        .expect("skopeo (hack/dev-up.sh installs it)");
    assert!(st.success(), "skopeo {args:?}");
}

#[tokio::test]
async fn load_image_imports_oci_and_docker_archives_plain_and_gzip() {
    let d = daemon().await;
    let oci = std::env::var("CONCORD_TEST_OCI_LAYOUT").unwrap_or_else(|_| "/tmp/rig/oci".into());
    let dir = d.dir.join("archives");
    std::fs::create_dir_all(&dir).unwrap();
    let oci_tar = dir.join("oci.tar");
    let docker_tar = dir.join("docker.tar");
    skopeo(&[
        "copy",
        "--quiet",
        &format!("oci:{oci}:httpd"),
        &format!(
            "oci-archive:{}:example.test/loaded/httpd:oci",
            oci_tar.display()
        ),
    ]);
    skopeo(&[
        "copy",
        "--quiet",
        &format!("oci:{oci}:nginx"),
        &format!(
            "docker-archive:{}:example.test/loaded/nginx:docker",
            docker_tar.display()
        ),
    ]);
    let gz = dir.join("docker.tar.gz");
    let st = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "gzip -c {} > {}",
            docker_tar.display(),
            gz.display()
        ))
        .status()
        .unwrap();
    assert!(st.success());

    let mut client = concord::proto::images_client::ImagesClient::new(d.channel().await.unwrap());
    let load = |p: &std::path::Path| concord::proto::LoadImageRequest {
        file_path: p.display().to_string(),
    };
    let r = client
        .load_image(load(&oci_tar))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.images, vec!["example.test/loaded/httpd:oci"]);
    let r = client
        .load_image(load(&docker_tar))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.images, vec!["example.test/loaded/nginx:docker"]);
    remove(&d, "example.test/loaded/nginx:docker").await;
    let r = client.load_image(load(&gz)).await.unwrap().into_inner();
    assert_eq!(r.images, vec!["example.test/loaded/nginx:docker"]);
    let img = status(&d, "example.test/loaded/httpd:oci")
        .await
        .expect("loaded image is known");
    assert!(img.size > 0);

    // The CLI does the same.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_concord"))
        .arg(format!("--listen={}", d.socket.display()))
        .arg("load")
        .arg(&oci_tar)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "example.test/loaded/httpd:oci"
    );

    // Bad archives: clear errors, nothing left behind.
    let before = namespace_counts(&d).await;
    let text = dir.join("not-an-archive.tar");
    std::fs::write(&text, "hello, this is not a tar file at all".repeat(30)).unwrap();
    let truncated = dir.join("truncated.tar");
    let bytes = std::fs::read(&docker_tar).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 3]).unwrap();
    let corrupt_gz = dir.join("corrupt.tar.gz");
    let mut g = std::fs::read(&gz).unwrap();
    let mid = g.len() / 2;
    for b in &mut g[mid..mid + 64] {
        *b ^= 0xff;
    }
    std::fs::write(&corrupt_gz, &g).unwrap();
    for (p, code) in [
        (text.clone(), tonic::Code::InvalidArgument),
        (truncated.clone(), tonic::Code::InvalidArgument),
        (corrupt_gz.clone(), tonic::Code::InvalidArgument),
        (dir.join("missing.tar"), tonic::Code::NotFound),
    ] {
        let err = client.load_image(load(&p)).await.unwrap_err();
        assert_eq!(err.code(), code, "{}: {}", p.display(), err.message());
        assert!(
            err.message().contains(&p.display().to_string()),
            "{}",
            err.message()
        );
    }
    assert_eq!(namespace_counts(&d).await, before);
}
