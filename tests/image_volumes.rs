//! Image volumes (CRI `Mount.image`, KEP-4639) on the real node: an image mounted read-only
//! into a container, `image_sub_path` picking one directory of it, sub paths that leave the
//! image refused with nothing left, and the snapshot view released on removal, also by a
//! concord restarted after a SIGKILL.

mod common;

use std::path::Path;

use common::{
    container_config, container_status, pod, pod_daemon, pull, remove_container, Daemon, Pod,
};
use concord::cri;
use sha2::Digest;

/// A busybox container sleeping, with `mounts`.
fn with_mounts(name: &str, mounts: Vec<cri::Mount>) -> cri::ContainerConfig {
    cri::ContainerConfig {
        mounts,
        ..container_config(name, "busybox", &["sleep", "3600"])
    }
}

/// A mount of image `image` at `/iv` with `sub_path`.
fn image_mount(image: &str, sub_path: &str) -> cri::Mount {
    cri::Mount {
        container_path: "/iv".into(),
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        image_sub_path: sub_path.into(),
        readonly: true,
        ..Default::default()
    }
}

/// ExecSync of `cmd` in `id`: (exit code, stdout and stderr).
async fn exec(d: &Daemon, id: &str, cmd: &[&str]) -> (i32, String) {
    let r = common::exec_sync(d, id, cmd).await;
    let out = String::from_utf8_lossy(&r.stdout).to_string() + &String::from_utf8_lossy(&r.stderr);
    (r.exit_code, out)
}

/// Asserts that `err` has `code` and a message containing `needle`.
fn assert_refused(err: &tonic::Status, code: tonic::Code, needle: &str) {
    assert_eq!(err.code(), code, "{}", err.message());
    assert!(err.message().contains(needle), "{}", err.message());
}

/// Whether snapshot `key` exists in the daemon's namespace.
async fn snapshot_exists(d: &Daemon, key: &str) -> bool {
    let ctd = concord::containerd::Containerd::new(&d.containerd, &d.namespace, Default::default());
    ctd.snapshot_mounts("overlayfs", key)
        .await
        .unwrap()
        .is_some()
}

/// The mount points of the host's mount table under `dir`.
fn mounts_under(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = dir.display().to_string();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(&dir))
        .map(String::from)
        .collect()
}

/// What the daemon's image volumes leave on the node: mounts and mount point directories.
fn volume_leftovers(d: &Daemon) -> (Vec<String>, usize) {
    let dir = d.state_dir.join("image-volumes");
    let entries = std::fs::read_dir(&dir).map(|e| e.count()).unwrap_or(0);
    (mounts_under(&dir), entries)
}

#[tokio::test]
async fn an_image_is_mounted_read_only_and_released_on_removal() {
    let d = pod_daemon(&[]).await;
    let p = pod(&d, "iv-whole").await;
    let image_ref = pull(&d, "busybox").await.unwrap();
    let id = p
        .run_container(&d, with_mounts("whole", vec![image_mount(&image_ref, "")]))
        .await;

    let (code, out) = exec(&d, &id, &["ls", "/iv/bin"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.lines().any(|l| l == "busybox"), "{out}");
    let (code, out) = exec(&d, &id, &["sh", "-c", "echo x > /iv/new"]).await;
    assert_ne!(code, 0, "writing to an image volume must fail: {out}");
    assert!(out.contains("Read-only file system"), "{out}");
    let (_, mounts) = exec(&d, &id, &["grep", " /iv ", "/proc/self/mountinfo"]).await;
    assert!(
        mounts.contains(" ro,") && mounts.contains("nosuid") && mounts.contains("nodev"),
        "{mounts}"
    );

    // Reported as given.
    let s = container_status(&d, &id).await;
    assert_eq!(s.mounts[0].image.as_ref().unwrap().image, image_ref);
    assert!(s.mounts[0].host_path.is_empty());

    // The image stays while a container mounts it.
    let err = d
        .images()
        .await
        .remove_image(cri::RemoveImageRequest {
            image: Some(cri::ImageSpec {
                image: image_ref.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_refused(&err, tonic::Code::FailedPrecondition, "image volume");

    let key = concord::reconcile::container::image_volume_key(&id, 0);
    assert!(snapshot_exists(&d, &key).await);
    assert_eq!(volume_leftovers(&d).0.len(), 1);
    remove_container(&d, &id).await;
    assert!(!snapshot_exists(&d, &key).await, "the view is removed");
    assert_eq!(volume_leftovers(&d), (vec![], 0));
}

#[tokio::test]
async fn a_sub_path_mounts_only_that_directory_of_the_image() {
    let d = pod_daemon(&[]).await;
    let p = pod(&d, "iv-sub").await;
    let id = p
        .run_container(&d, with_mounts("sub", vec![image_mount("busybox", "bin")]))
        .await;
    let (code, out) = exec(&d, &id, &["ls", "/iv"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.lines().any(|l| l == "busybox"), "{out}");
    assert!(!out.lines().any(|l| l == "etc" || l == "bin"), "{out}");
    remove_container(&d, &id).await;
    assert_eq!(volume_leftovers(&d), (vec![], 0));
}

/// A docker-archive image `name` of one layer: `data/hello`, a file `plain`, and symlinks out
/// of the image (`up` relative, `abs` absolute) and inside it (`in`).
fn links_archive(dir: &Path, name: &str) -> std::path::PathBuf {
    let mut layer = tar::Builder::new(Vec::new());
    let mut add = |path: &str, kind: tar::EntryType, link: Option<&str>, body: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(if kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_size(body.len() as u64);
        if let Some(l) = link {
            h.set_link_name(l).unwrap();
        }
        h.set_path(path).unwrap();
        h.set_cksum();
        layer.append(&h, body).unwrap();
    };
    add("data/", tar::EntryType::Directory, None, b"");
    add("data/hello", tar::EntryType::Regular, None, b"hi\n");
    add("plain", tar::EntryType::Regular, None, b"x\n");
    add(
        "up",
        tar::EntryType::Symlink,
        Some("../../../../../../../etc"),
        b"",
    );
    add("abs", tar::EntryType::Symlink, Some("/etc"), b"");
    add("in", tar::EntryType::Symlink, Some("data"), b"");
    let layer = layer.into_inner().unwrap();
    let diff_id = format!("{:x}", sha2::Sha256::digest(&layer));
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let config = serde_json::json!({
        "architecture": arch, "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{diff_id}")]}
    })
    .to_string();
    let config_id = format!("{:x}", sha2::Sha256::digest(config.as_bytes()));
    let manifest = serde_json::json!([{
        "Config": format!("{config_id}.json"),
        "RepoTags": [name],
        "Layers": [format!("{diff_id}/layer.tar")]
    }])
    .to_string();
    let mut archive = tar::Builder::new(Vec::new());
    for (path, body) in [
        ("manifest.json".to_string(), manifest.as_bytes()),
        (format!("{config_id}.json"), config.as_bytes()),
        (format!("{diff_id}/layer.tar"), layer.as_slice()),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(body.len() as u64);
        h.set_path(&path).unwrap();
        h.set_cksum();
        archive.append(&h, body).unwrap();
    }
    let path = dir.join("links.tar");
    std::fs::write(&path, archive.into_inner().unwrap()).unwrap();
    path
}

#[tokio::test]
async fn sub_paths_that_leave_the_image_or_are_missing_fail_and_leave_nothing() {
    let d = pod_daemon(&[]).await;
    let p: Pod = pod(&d, "iv-escape").await;
    let name = "example.test/iv/links:v1";
    let archive = links_archive(&d.dir, name);
    let mut images = concord::proto::images_client::ImagesClient::new(d.channel().await.unwrap());
    images
        .load_image(concord::proto::LoadImageRequest {
            file_path: archive.display().to_string(),
        })
        .await
        .unwrap();
    let before = common::namespace_counts(&d).await;

    // Refused by the request's shape, before anything exists.
    let err = p
        .create(&d, with_mounts("dotdot", vec![image_mount(name, "../etc")]))
        .await
        .unwrap_err();
    assert_refused(
        &err,
        tonic::Code::InvalidArgument,
        "config.mounts.image_sub_path",
    );
    let err = p
        .create(
            &d,
            with_mounts("unknown", vec![image_mount("example.test/iv/none:v1", "")]),
        )
        .await
        .unwrap_err();
    assert_refused(&err, tonic::Code::NotFound, "config.mounts.image");

    // Refused once the image is mounted: a symlink out of it, a missing path, a file.
    for (sub_path, why) in [
        ("up", "outside the image"),
        ("abs", "outside the image"),
        ("up/x", "outside the image"),
        ("nothing", "does not exist"),
        ("plain", "not a directory"),
    ] {
        let c = with_mounts(
            &format!("bad-{}", sub_path.len()),
            vec![image_mount(name, sub_path)],
        );
        let err = p.create(&d, c).await.unwrap_err();
        assert_refused(&err, tonic::Code::FailedPrecondition, why);
        assert!(err.message().contains(sub_path), "{}", err.message());
        assert_eq!(volume_leftovers(&d), (vec![], 0), "{sub_path}");
        assert_eq!(common::namespace_counts(&d).await, before, "{sub_path}");
    }

    // A link inside the image is fine.
    let id = p
        .run_container(&d, with_mounts("inside", vec![image_mount(name, "in")]))
        .await;
    let (code, out) = exec(&d, &id, &["cat", "/iv/hello"]).await;
    assert_eq!((code, out.trim()), (0, "hi"));
    remove_container(&d, &id).await;
    assert_eq!(volume_leftovers(&d), (vec![], 0));
}

#[tokio::test]
async fn removal_after_a_sigkill_and_restart_still_releases_the_view() {
    let mut d = pod_daemon(&[]).await;
    let p = pod(&d, "iv-crash").await;
    let id = p
        .run_container(
            &d,
            with_mounts("crash", vec![image_mount("busybox", "bin")]),
        )
        .await;
    let key = concord::reconcile::container::image_volume_key(&id, 0);
    d.kill9();
    d.start().await;
    let (code, out) = exec(&d, &id, &["ls", "/iv"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.lines().any(|l| l == "busybox"), "{out}");
    remove_container(&d, &id).await;
    assert!(!snapshot_exists(&d, &key).await, "the view is removed");
    assert_eq!(volume_leftovers(&d), (vec![], 0));
}
