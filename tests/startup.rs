//! Start-up refusals (each a clear error, nothing modified) and process placement.

mod common;

use common::Daemon;

fn file_bytes(p: &std::path::Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

#[tokio::test]
async fn a_corrupt_journal_stops_the_start_and_is_left_untouched() {
    let d = Daemon::new();
    std::fs::create_dir_all(&d.state_dir).unwrap();
    let journal = d.state_dir.join("journal.redb");
    std::fs::write(&journal, b"definitely not a journal\x00\x01\x02").unwrap();
    let before = file_bytes(&journal);
    let (status, stderr) = d.run_to_exit(&[]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("corrupt") && stderr.contains(&journal.display().to_string()),
        "{stderr}"
    );
    assert_eq!(file_bytes(&journal), before);
    assert!(!d.socket.exists(), "nothing served");
}

#[tokio::test]
async fn a_journal_damaged_after_a_crash_is_refused_and_left_untouched() {
    let mut d = Daemon::new();
    d.start().await;
    let mut rt = d.runtime().await;
    for n in 0..20 {
        rt.update_runtime_config(concord::cri::UpdateRuntimeConfigRequest {
            runtime_config: Some(concord::cri::RuntimeConfig {
                network_config: Some(concord::cri::NetworkConfig {
                    pod_cidr: format!("10.7.{n}.0/24"),
                }),
            }),
        })
        .await
        .unwrap();
    }
    d.kill9();
    let journal = d.state_dir.join("journal.redb");
    let mut bytes = file_bytes(&journal);
    let len = bytes.len();
    for b in &mut bytes[4096.min(len / 2)..] {
        *b ^= 0x5A;
    }
    std::fs::write(&journal, &bytes).unwrap();
    let (status, stderr) = d.run_to_exit(&[]);
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains(&journal.display().to_string()), "{stderr}");
    assert_eq!(file_bytes(&journal), bytes);
}

#[tokio::test]
async fn a_journal_from_a_newer_version_stops_the_start_and_is_left_untouched() {
    let d = Daemon::new();
    std::fs::create_dir_all(&d.state_dir).unwrap();
    let journal = d.state_dir.join("journal.redb");
    concord::journal::write_foreign_schema(&journal, concord::journal::SCHEMA_VERSION + 1).unwrap();
    let before = file_bytes(&journal);
    let (status, stderr) = d.run_to_exit(&[]);
    assert_eq!(status.code(), Some(1));
    let found = format!("schema version {}", concord::journal::SCHEMA_VERSION + 1);
    assert!(
        stderr.contains("newer") && stderr.contains(&found),
        "{stderr}"
    );
    assert_eq!(file_bytes(&journal), before);
}

/// A journal written by the release before the CRI proto became concord's own (schema 1, its CRI
/// messages as k8s-cri serde JSON: tests/fixtures/README.md) is migrated at start: its pods and
/// containers are there, the old file is kept beside the new one, and they are removed cleanly.
#[tokio::test]
async fn a_schema1_journal_from_the_previous_release_is_migrated_at_start() {
    let mut d = Daemon::new();
    std::fs::create_dir_all(&d.state_dir).unwrap();
    let journal = d.state_dir.join("journal.redb");
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/journal-schema1.redb");
    std::fs::copy(&fixture, &journal).unwrap();
    d.start().await;
    assert!(
        d.log().contains("migrated the journal from schema 1"),
        "{}",
        d.log()
    );
    assert_eq!(
        file_bytes(&d.state_dir.join("journal.redb.schema1")),
        file_bytes(&fixture)
    );
    let mut rt = d.runtime().await;
    let pods = rt
        .list_pod_sandbox(concord::cri::ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0].metadata.as_ref().unwrap().name, "fixture");
    let containers = rt
        .list_containers(concord::cri::ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(containers.len(), 2);
    // Its containerd objects are not in this test's namespace: the loop finds them gone and
    // the pod can be removed like any other.
    rt.stop_pod_sandbox(concord::cri::StopPodSandboxRequest {
        pod_sandbox_id: pods[0].id.clone(),
    })
    .await
    .unwrap();
    rt.remove_pod_sandbox(concord::cri::RemovePodSandboxRequest {
        pod_sandbox_id: pods[0].id.clone(),
    })
    .await
    .unwrap();
    let left = rt
        .list_containers(concord::cri::ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!(left.is_empty(), "{left:?}");
    d.terminate().await;
}

#[tokio::test]
async fn a_config_with_an_unknown_key_names_it() {
    let d = Daemon::new();
    std::fs::write(d.dir.join("config.toml"), "[containerd]\nadress = \"/x\"\n").unwrap();
    let (status, stderr) = d.run_to_exit(&[]);
    assert_eq!(status.code(), Some(2));
    assert!(
        stderr.contains("adress") && stderr.contains("config.toml"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_config_with_a_bad_value_names_the_setting() {
    let d = Daemon::new();
    std::fs::write(d.dir.join("config.toml"), "log_format = \"xml\"\n").unwrap();
    let (status, stderr) = d.run_to_exit(&[]);
    assert_eq!(status.code(), Some(2));
    assert!(
        stderr.contains("log_format") && stderr.contains("xml"),
        "{stderr}"
    );
    std::fs::write(d.dir.join("config.toml"), "").unwrap();
    let (status, stderr) = d.run_to_exit(&["--metrics-address=nowhere"]);
    assert_eq!(status.code(), Some(2));
    assert!(stderr.contains("metrics_address"), "{stderr}");
}

#[tokio::test]
async fn an_explicit_config_file_that_is_missing_is_an_error() {
    let d = Daemon::new();
    let missing = d.dir.join("nope.toml");
    let (status, stderr) = d.run_to_exit(&[&format!("--config={}", missing.display())]);
    assert_eq!(status.code(), Some(2));
    assert!(stderr.contains("nope.toml"), "{stderr}");
}

#[tokio::test]
async fn a_socket_in_a_missing_read_only_directory_is_a_clear_error() {
    let mut d = Daemon::new();
    let ro = d.dir.join("ro");
    std::fs::create_dir_all(&ro).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "ro,size=1m", "tmpfs"])
        .arg(&ro)
        .status()
        .unwrap();
    assert!(
        mounted.success(),
        "mount a read-only tmpfs (tests run as root)"
    );
    d.socket = ro.join("missing/concord.sock");
    let (status, stderr) = d.run_to_exit(&[]);
    std::process::Command::new("umount")
        .arg(&ro)
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.contains("cannot create directory") && stderr.contains("Read-only file system"),
        "{stderr}"
    );
}

#[tokio::test]
async fn oom_score_adj_is_set_or_refused_clearly() {
    let mut d = Daemon::new();
    d.extra.push("--oom-score-adj=500".into());
    d.start().await;
    let adj = std::fs::read_to_string(format!("/proc/{}/oom_score_adj", d.pid())).unwrap();
    assert_eq!(adj.trim(), "500");
    d.kill9();

    // Lowering needs CAP_SYS_RESOURCE: where the host lacks it, the start fails clearly.
    let (status, stderr) = d.run_to_exit(&["--oom-score-adj=-999"]);
    if !status.success() {
        assert!(
            stderr.contains("oom_score_adj") && stderr.contains("CAP_SYS_RESOURCE"),
            "{stderr}"
        );
    }
}

#[tokio::test]
async fn concord_places_itself_in_the_configured_cgroup() {
    let mut d = Daemon::new();
    let cg = common::unique("concord-test-cg");
    d.extra.push(format!("--cgroup=/{cg}"));
    d.start().await;
    let cgroups = std::fs::read_to_string(format!("/proc/{}/cgroup", d.pid())).unwrap();
    assert!(cgroups.contains(&format!("/{cg}")), "{cgroups}");
    d.kill9();
    // leave no cgroup behind
    for entry in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        std::fs::remove_dir(entry.path().join(&cg)).ok();
    }
    std::fs::remove_dir(std::path::Path::new("/sys/fs/cgroup").join(&cg)).ok();
}
