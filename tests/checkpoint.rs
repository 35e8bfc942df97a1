//! CheckpointContainer against the real node: CRIU through containerd's runc shim, the archive
//! at the requested location, the container left running; clear errors otherwise.
//!
//! On a host where CRIU cannot dump (criu 3.17 on a kernel newer than it knows refuses with
//! "vdso: Unexpected rt vDSO area bounds"), the checkpoint fails with FailedPrecondition naming
//! CRIU and nothing is left at the location: the test accepts that outcome and says so.

mod common;

use common::{container_config, container_status, pod, pod_daemon, remove_pod, Daemon};
use concord::cri;

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
    let dir = tempfile::tempdir().unwrap();
    let location = dir.path().join("checkpoint.tar");
    match checkpoint(&d, &c, &location).await {
        Ok(()) => {
            let names: Vec<String> = tar::Archive::new(std::fs::File::open(&location).unwrap())
                .entries()
                .unwrap()
                .map(|e| e.unwrap().path().unwrap().display().to_string())
                .collect();
            assert!(
                names.iter().any(|n| n == "checkpoint/inventory.img"),
                "{names:?}"
            );
            assert!(names.iter().any(|n| n == "spec.dump"), "{names:?}");
            assert!(names.iter().any(|n| n == "config.dump"), "{names:?}");
        }
        Err(e) => {
            eprintln!("checkpoint failed on this host (accepted): {}", e.message());
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
