//! concord's own log as an operator reads it (`journalctl -u concord | grep web-0`): a pod's
//! lifecycle, one line per intent and per outcome naming the pod; the formats; RUST_LOG.

mod common;

use common::{self as pods, container_config, remove_pod, Daemon};
use concord::cri;

/// Runs pod `name` with a busybox container that exits 3 at once, waits for the exit, then
/// stops and removes the pod.
async fn pod_lifecycle(d: &Daemon, name: &str) {
    let pod = pods::pod(d, name).await;
    let c = pod
        .run_container(
            d,
            container_config("app", "busybox", &["sh", "-c", "exit 3"]),
        )
        .await;
    common::eventually(std::time::Duration::from_secs(20), "the exit", || async {
        pods::container_status(d, &c).await.state == cri::ContainerState::ContainerExited as i32
    })
    .await;
    d.runtime()
        .await
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.id.clone(),
        })
        .await
        .unwrap();
    remove_pod(d, &pod.id).await;
}

/// The lines of the daemon's log that name `pod` ("default/<name>").
fn lines_of(d: &Daemon, pod: &str) -> Vec<String> {
    let needle = format!("default/{pod}");
    d.log()
        .lines()
        .filter(|l| l.contains(&needle))
        .map(str::to_string)
        .collect()
}

/// Asserts the lines hold each of `steps` (every part of a step on one line), in this order.
fn assert_in_order(lines: &[String], steps: &[&[&str]]) {
    let mut from = 0;
    for step in steps {
        let at = lines[from..]
            .iter()
            .position(|l| step.iter().all(|p| l.contains(p)))
            .unwrap_or_else(|| {
                panic!(
                    "no line with {step:?} after line {from} in:\n{}",
                    lines.join("\n")
                )
            });
        from += at + 1;
    }
}

#[tokio::test]
async fn a_pods_lifecycle_is_in_the_log_by_its_name_in_order() {
    let mut d = Daemon::new();
    pods::pod_flags(&mut d);
    d.log_level = Some("info".into());
    d.start().await;
    let name = common::unique("web");
    pod_lifecycle(&d, &name).await;
    let lines = lines_of(&d, &name);
    let pod = format!("pod=\"default/{name}\"");
    assert_in_order(
        &lines,
        &[
            &[
                " INFO ",
                &pod,
                "pod sandbox requested",
                "pod_uid=",
                "generation=1",
            ],
            &[" INFO ", &pod, "pod ready", "ip=", "pod_id="],
            &[" INFO ", &pod, "container requested", "container=\"app\""],
            &[" INFO ", &pod, "container created", "container_id="],
            &[" INFO ", &pod, "container start requested"],
            &[" INFO ", &pod, "container started"],
            &[
                " INFO ",
                &pod,
                "container exited",
                "exit_code=3",
                "reason=\"Error\"",
            ],
            &[" INFO ", &pod, "pod sandbox stop requested"],
            &[" INFO ", &pod, "pod stopped"],
            &[" INFO ", &pod, "pod sandbox remove requested"],
            &[" INFO ", &pod, "container removed"],
            &[" INFO ", &pod, "pod removed"],
        ],
    );
    // Each outcome once: the loop's resyncs do not repeat it.
    for once in [
        "pod ready",
        "container started",
        "container exited",
        "pod removed",
    ] {
        let n = lines.iter().filter(|l| l.contains(once)).count();
        assert_eq!(n, 1, "{once}:\n{}", lines.join("\n"));
    }
}

#[tokio::test]
async fn at_debug_level_a_pods_name_finds_its_start_from_the_rpc_to_the_cni_plugin() {
    let mut d = Daemon::new();
    pods::pod_flags(&mut d);
    d.log_level = Some("debug".into());
    d.start().await;
    let name = common::unique("chain");
    let pod = pods::pod(&d, &name).await;
    let rpc = "rpc{method=\"RunPodSandbox\"}";
    assert_in_order(
        &lines_of(&d, &name),
        &[
            &[
                "DEBUG",
                rpc,
                "journal commit",
                "seq=",
                "events=1",
                "object=\"sandbox\"",
                "generation=1",
            ],
            &[" INFO ", rpc, "pod sandbox requested"],
            &[
                "DEBUG",
                "reconcile{",
                "step{step=\"cni_add\"}",
                "cni{command=\"ADD\"",
                "cni plugin call",
                "result=\"ok\"",
                "ips=\"",
            ],
            &[
                "DEBUG",
                "reconcile{",
                "containerd{call=\"Tasks.Create\"}",
                "containerd call",
                "code=\"OK\"",
                "elapsed=",
            ],
        ],
    );
    remove_pod(&d, &pod.id).await;
}

#[tokio::test]
async fn json_lines_carry_the_pod_as_a_field() {
    let mut d = Daemon::new();
    pods::pod_flags(&mut d);
    d.extra.push("--log-format=json".into());
    d.start().await;
    let name = common::unique("web");
    pod_lifecycle(&d, &name).await;
    let pod = format!("default/{name}");
    let lines: Vec<serde_json::Value> = lines_of(&d, &name)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let ready = lines
        .iter()
        .find(|l| l["message"] == "pod ready")
        .expect("a pod ready line");
    assert_eq!(ready["pod"], pod.as_str(), "{ready}");
    assert_eq!(ready["level"], "INFO");
    assert!(
        ready["ip"].as_str().is_some_and(|ip| !ip.is_empty()),
        "{ready}"
    );
    // Inside the reconcile span: the span's fields are there too.
    assert_eq!(ready["span"]["pod"], pod.as_str(), "{ready}");
    let exited = lines
        .iter()
        .find(|l| l["message"] == "container exited")
        .expect("a container exited line");
    assert_eq!(exited["container"], "app");
    assert_eq!(exited["exit_code"], 3);
}

#[tokio::test]
async fn journald_format_without_its_socket_logs_to_stderr_and_says_so() {
    // tracing-journald sends to /run/systemd/journal/socket only: where it exists (a systemd
    // host) the lines go to the journal and this fallback cannot be shown.
    if std::path::Path::new("/run/systemd/journal/socket").exists() {
        eprintln!("skipped: this host has a journald socket");
        return;
    }
    let mut d = Daemon::new();
    d.extra.push("--log-format=journald".into());
    d.start().await;
    let log = d.log();
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains("journald socket unavailable: logging to stderr")
            && l.contains("/run/systemd/journal/socket")),
        "{log}"
    );
    assert!(log.contains("concord is serving CRI"), "{log}");
}

#[tokio::test]
async fn journald_format_writes_the_pod_as_journal_fields() {
    // Where journald runs (the systemd node of hack/systemd-node-test.sh), the lines land in
    // the journal with concord's fields as journal fields, as `journalctl -o json` shows them.
    if !std::path::Path::new("/run/systemd/journal/socket").exists() {
        eprintln!("skipped: no journald here (hack/systemd-node-test.sh runs this on one)");
        return;
    }
    let mut d = Daemon::new();
    d.extra.push("--log-format=journald".into());
    common::pod_flags(&mut d);
    d.start().await;
    let pid = d.child.as_ref().unwrap().id().to_string();
    let name = format!("jd-{}", std::process::id());
    let p = common::Pod::run(&d, common::pod_config(&d, &name)).await;
    common::remove_pod(&d, &p.id).await;
    let pod = format!("default/{name}");
    let mut entries = Vec::new();
    common::eventually(
        std::time::Duration::from_secs(10),
        "the pod's lines in the journal",
        || {
            let out = std::process::Command::new("journalctl")
                .args(["-o", "json", "--no-pager", &format!("_PID={pid}")])
                .output()
                .unwrap();
            entries = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|e| e["POD"] == pod.as_str())
                .collect();
            let done = entries.iter().any(|e| e["MESSAGE"] == "pod removed");
            async move { done }
        },
    )
    .await;
    let ready = entries
        .iter()
        .find(|e| e["MESSAGE"] == "pod ready")
        .expect("a pod ready entry");
    assert_eq!(ready["POD_ID"], p.id.as_str(), "{ready}");
    // tracing-journald's levels: INFO is syslog's notice (5), DEBUG its info (6).
    assert_eq!(ready["PRIORITY"], "5", "{ready}");
    assert_eq!(ready["SYSLOG_IDENTIFIER"], "concord", "{ready}");
    assert!(
        ready["IP"].as_str().is_some_and(|ip| !ip.is_empty()),
        "{ready}"
    );
}

#[tokio::test]
async fn an_invalid_rust_log_stops_the_start_naming_it() {
    let mut d = Daemon::new();
    d.env.push(("RUST_LOG".into(), "concord=[".into()));
    let (status, stderr) = d.run_to_exit(&[]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("invalid RUST_LOG"), "{stderr}");
}

#[tokio::test]
async fn rust_log_replaces_log_level_even_after_a_reload() {
    let mut d = Daemon::new();
    d.log_level = None;
    let config = d.dir.join("config.toml");
    std::fs::write(&config, "log_level = \"debug\"\n").unwrap();
    d.env.push(("RUST_LOG".into(), "warn".into()));
    d.start().await;
    d.version().await;
    let quiet = |log: String| {
        // log_level is debug, yet neither debug nor info lines appear.
        assert!(!log.contains(" DEBUG ") && !log.contains(" INFO "), "{log}");
    };
    quiet(d.log());

    // A reload that changes log_level (and a key that needs a restart, whose warning shows
    // that the reload happened): RUST_LOG stays the filter.
    std::fs::write(
        &config,
        "log_level = \"trace\"\nshutdown_grace_seconds = 5\n",
    )
    .unwrap();
    d.hangup();
    common::eventually(std::time::Duration::from_secs(10), "the reload", || async {
        d.log().contains("needs a restart")
    })
    .await;
    d.version().await;
    quiet(d.log());
}

#[tokio::test]
async fn a_failed_pod_is_logged_with_its_error_then_removed() {
    // A handler whose runtime containerd does not have: the pause task cannot be made.
    let config = "[runtime.handlers.runc]\nruntime_type = \"io.containerd.runc.v2\"\n\n\
                  [runtime.handlers.broken]\nruntime_type = \"io.containerd.nope.v2\"\n";
    let d = pods::pod_daemon_with_config(&[], config).await;
    pods::pull_ok(&d, "busybox").await;
    let name = common::unique("web");
    let err = d
        .runtime()
        .await
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pods::pod_config(&d, &name)),
            runtime_handler: "broken".into(),
        })
        .await
        .unwrap_err();
    let lines = lines_of(&d, &name);
    let pod = format!("pod=\"default/{name}\"");
    assert_in_order(
        &lines,
        &[
            &[" INFO ", &pod, "pod sandbox requested"],
            &[" INFO ", &pod, "pod failed", "error="],
            &[" INFO ", &pod, "pod removed", "reason=\"failed\""],
        ],
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("WARN") && l.contains("reconcile failed")),
        "the reconcile's warning names the pod too: {}\n{}",
        err.message(),
        lines.join("\n")
    );
}
