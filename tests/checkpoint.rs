//! CheckpointContainer against the real node: CRIU through containerd's runc shim, the archive
//! at the requested location (CRIU's images, the container's filesystem changes, its spec and
//! identity), the container left running; clear errors otherwise.
//!
//! Where the `criu` on PATH passes `criu check` (hack/criu.sh installs one that does on Debian
//! 12), the checkpoint must succeed. Only where it does not (Debian 12's criu 3.17 on a kernel
//! newer than it knows: "vdso: Unexpected rt vDSO area bounds") the test accepts the clear
//! failure: FailedPrecondition naming CRIU, nothing left at the location.

mod common;

use std::io::Read;

use common::{
    container_config, container_status, exec_out, namespace_counts, pod, pod_daemon, remove_pod,
    snapshot_keys, Daemon,
};
use concord::cri;

/// Whether the `criu` on PATH can dump on this host (`criu check` says "Looks good").
fn criu_can_dump() -> bool {
    std::process::Command::new("criu")
        .arg("check")
        .output()
        .map(|o| {
            let all = [o.stdout, o.stderr].concat();
            String::from_utf8_lossy(&all).contains("Looks good")
        })
        .unwrap_or(false)
}

/// The archive's entries: (path, size, bytes when `keep` names it).
fn entries(archive: &std::path::Path, keep: &str) -> (Vec<(String, u64)>, Vec<u8>) {
    let mut tar = tar::Archive::new(std::fs::File::open(archive).unwrap());
    let (mut list, mut kept) = (Vec::new(), Vec::new());
    for e in tar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().display().to_string();
        list.push((name.clone(), e.header().size().unwrap()));
        if name == keep {
            e.read_to_end(&mut kept).unwrap();
        }
    }
    (list, kept)
}

/// Checks a successful checkpoint's archive: CRIU's images, the dumps, and in rootfs-diff.tar
/// the file the container wrote and the whiteout of the one it deleted.
fn check_archive(location: &std::path::Path) {
    let (list, diff) = entries(location, "rootfs-diff.tar");
    for (name, size) in &list {
        eprintln!("  {size:>9}  {name}");
    }
    let has = |n: &str| list.iter().any(|(name, _)| name == n);
    for name in [
        "checkpoint/inventory.img",
        "spec.dump",
        "config.dump",
        "rootfs-diff.tar",
    ] {
        assert!(has(name), "{name} missing: {list:?}");
    }
    let mut layer = tar::Archive::new(diff.as_slice());
    let mut changes = std::collections::HashMap::new();
    for e in layer.entries().unwrap() {
        let mut e = e.unwrap();
        let mut body = String::new();
        let _ = e.read_to_string(&mut body);
        changes.insert(e.path().unwrap().display().to_string(), body);
    }
    assert_eq!(
        changes.get("written-by-c.txt").map(String::as_str),
        Some("checkpointed\n"),
        "{changes:?}"
    );
    assert!(changes.contains_key("etc/.wh.group"), "{changes:?}");
    assert!(
        !changes.contains_key("bin/busybox"),
        "only changes: {changes:?}"
    );
}

async fn checkpoint(d: &Daemon, id: &str, location: &std::path::Path) -> Result<(), tonic::Status> {
    d.runtime()
        .await
        .checkpoint_container(cri::CheckpointContainerRequest {
            container_id: id.into(),
            location: location.display().to_string(),
            timeout: 60,
        })
        .await
        .map(|_| ())
}

#[tokio::test]
async fn a_running_container_is_checkpointed_or_the_criu_failure_is_clear() {
    let d = pod_daemon(&[]).await;
    let p = pod(&d, "checkpoint").await;
    let c = p
        .run_container(&d, container_config("c", "busybox", &["sleep", "3600"]))
        .await;
    // A file the container writes and one of its image it deletes: rootfs-diff.tar holds both.
    let script = "echo checkpointed > /written-by-c.txt && rm /etc/group && echo done";
    assert_eq!(exec_out(&d, &c, &["sh", "-c", script]).await, "done");
    let dir = tempfile::tempdir().unwrap();
    let location = dir.path().join("checkpoint.tar");
    let can_dump = criu_can_dump();
    let before = namespace_counts(&d).await;
    let started = std::time::Instant::now();
    match checkpoint(&d, &c, &location).await {
        Ok(()) => {
            eprintln!("checkpoint took {:?}; the archive:", started.elapsed());
            check_archive(&location);
            // The diff's parent view, its blob and its lease are gone.
            assert_eq!(namespace_counts(&d).await, before);
            let views: Vec<String> = snapshot_keys(&d).await;
            assert!(views.iter().all(|k| !k.contains("view")), "{views:?}");
        }
        Err(e) if can_dump => panic!("`criu check` passes here, yet the checkpoint failed: {e:?}"),
        Err(e) => {
            eprintln!(
                "checkpoint failed on this host (accepted: `criu check` fails too): {}",
                e.message()
            );
            assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
            assert!(e.message().contains("CRIU"), "{e:?}");
            assert!(!location.exists(), "nothing is left at the location");
        }
    }
    // Either way the container runs on, and no work dir is left.
    let status = container_status(&d, &c).await;
    assert_eq!(status.state, cri::ContainerState::ContainerRunning as i32);
    let scratch = d.state_dir.join("tmp");
    let left: Vec<_> = std::fs::read_dir(&scratch)
        .map(|r| r.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.iter()
            .all(|n| !n.to_string_lossy().starts_with("checkpoint-")),
        "{left:?}"
    );
    // A second checkpoint to the same place is refused (nothing is overwritten) when the first
    // wrote it; a stopped container cannot be checkpointed.
    if location.exists() {
        let e = checkpoint(&d, &c, &location).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
    }
    d.runtime()
        .await
        .stop_container(cri::StopContainerRequest {
            container_id: c.clone(),
            timeout: 0,
        })
        .await
        .unwrap();
    let e = checkpoint(&d, &c, &dir.path().join("stopped.tar"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("not running"), "{e:?}");
    let e = checkpoint(&d, &c, std::path::Path::new("relative.tar"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("location"), "{e:?}");
    remove_pod(&d, &p.id).await;
}

#[tokio::test]
async fn without_criu_checkpoint_is_a_failed_precondition_naming_it() {
    let mut d = Daemon::new();
    // A PATH without the sbin directories criu is installed in.
    d.env
        .push(("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()));
    d.start().await;
    let dir = tempfile::tempdir().unwrap();
    let e = checkpoint(&d, "anything", &dir.path().join("c.tar"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("CRIU") && e.message().contains("criu"),
        "{e:?}"
    );
}
