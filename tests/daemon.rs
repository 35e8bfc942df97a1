//! The daemon against the real containerd: CRI basics, start-up refusals, shutdown, metrics.

mod common;

use std::time::Duration;

use common::{eventually, Daemon};
use concord::cri;
use concord::cri::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

#[tokio::test]
async fn version_and_status_answer_over_the_socket() {
    let mut d = Daemon::new();
    d.start().await;
    let mut rt = d.runtime().await;
    let v = rt
        .version(cri::VersionRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.runtime_name, "concord");
    assert_eq!(v.runtime_api_version, "v1");
    assert_eq!(v.runtime_version, env!("CARGO_PKG_VERSION"));

    let ready = |s: &cri::StatusResponse, t: &str| {
        s.status
            .as_ref()
            .unwrap()
            .conditions
            .iter()
            .find(|c| c.r#type == t)
            .unwrap()
            .status
    };
    eventually(Duration::from_secs(10), "RuntimeReady", || {
        let mut rt = rt.clone();
        async move {
            let s = rt
                .status(cri::StatusRequest { verbose: false })
                .await
                .unwrap()
                .into_inner();
            ready(&s, "RuntimeReady")
        }
    })
    .await;
    let s = rt
        .status(cri::StatusRequest { verbose: true })
        .await
        .unwrap()
        .into_inner();
    assert!(
        ready(&s, "NetworkReady"),
        "dev CNI config should be usable: {s:?}"
    );
    let config: serde_json::Value = serde_json::from_str(&s.info["config"]).unwrap();
    assert_eq!(config["containerd"]["namespace"], d.namespace.as_str());
    assert!(
        s.info["cniconfig"].contains("bridge"),
        "{}",
        s.info["cniconfig"]
    );
    assert!(s.runtime_handlers.iter().any(|h| h.name == "runc"));

    let rc = rt
        .runtime_config(cri::RuntimeConfigRequest {})
        .await
        .unwrap()
        .into_inner();
    let driver = if common::systemd_driver() {
        cri::CgroupDriver::Systemd
    } else {
        cri::CgroupDriver::Cgroupfs
    };
    assert_eq!(rc.linux.unwrap().cgroup_driver, driver as i32);
}

#[tokio::test]
async fn network_turns_ready_when_a_config_appears() {
    let mut d = Daemon::new();
    let conf = d.dir.join("net.d");
    std::fs::create_dir_all(&conf).unwrap();
    // The periodic rescan out of the way: the conf dir's watch (inotify) is what must see the
    // config come and go.
    d.extra = vec![
        format!("--cni-conf-dir={}", conf.display()),
        "--cni-bin-dir=/usr/lib/cni".into(),
        "--cni-rescan-interval-seconds=600".into(),
    ];
    d.start().await;
    let mut rt = d.runtime().await;
    let s = rt
        .status(cri::StatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    let net = s
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.r#type == "NetworkReady")
        .unwrap();
    assert!(!net.status);
    assert_eq!(net.reason, "NetworkPluginNotReady");
    assert!(
        net.message.contains("no usable CNI network config"),
        "{}",
        net.message
    );

    std::fs::write(
        conf.join("10-test.conflist"),
        r#"{"cniVersion":"1.0.0","name":"t","plugins":[{"type":"bridge","bridge":"cnitest0","ipam":{"type":"host-local","subnet":"10.99.0.0/24"}}]}"#,
    )
    .unwrap();
    // Status' NetworkReady condition.
    let network_ready = |rt: &RuntimeServiceClient<Channel>| {
        let mut rt = rt.clone();
        async move {
            let s = rt
                .status(cri::StatusRequest::default())
                .await
                .unwrap()
                .into_inner();
            s.status
                .unwrap()
                .conditions
                .iter()
                .any(|c| c.r#type == "NetworkReady" && c.status)
        }
    };
    let took = eventually(Duration::from_secs(10), "NetworkReady", || {
        network_ready(&rt)
    })
    .await;
    println!("network ready {took:?} after the config appeared");

    // Renamed away (as a CNI installer replaces its file): not ready again.
    std::fs::rename(conf.join("10-test.conflist"), d.dir.join("moved.conflist")).unwrap();
    let took = eventually(Duration::from_secs(10), "NetworkReady false", || async {
        !network_ready(&rt).await
    })
    .await;
    println!("network not ready {took:?} after the config went");
}

#[tokio::test]
async fn update_runtime_config_records_and_applies_the_pod_cidr() {
    let mut d = Daemon::new();
    d.start().await;
    let mut rt = d.runtime().await;
    let update = |cidr: &str| cri::UpdateRuntimeConfigRequest {
        runtime_config: Some(cri::RuntimeConfig {
            network_config: Some(cri::NetworkConfig {
                pod_cidr: cidr.into(),
            }),
        }),
    };
    rt.update_runtime_config(update("10.244.1.0/24"))
        .await
        .unwrap();
    let o = &common::runtime_config_object(&d).await;
    assert!(o.desired.contains("10.244.1.0/24"), "{o:?}");
    assert!(
        o.observed.contains("10.244.1.0/24"),
        "the loop applied it: {o:?}"
    );
    assert_eq!(o.generation, 1);
    assert_eq!(o.observed_generation, 1);
    assert!(!o.pending);

    // Bad input names the field and records nothing.
    let err = rt
        .update_runtime_config(update("10.244.1.0/40"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("pod_cidr"), "{}", err.message());
    assert_eq!(common::runtime_config_object(&d).await.generation, 1);

    // Survives a restart: replayed from the journal and applied again by the loop.
    assert!(d.terminate().await.success());
    d.start().await;
    let o = eventually_observed(&d).await;
    assert!(
        o.desired.contains("10.244.1.0/24") && o.observed.contains("10.244.1.0/24"),
        "{o:?}"
    );
    let verbose = d
        .runtime()
        .await
        .status(cri::StatusRequest { verbose: true })
        .await
        .unwrap()
        .into_inner();
    assert!(
        verbose.info["cniconfig"].contains("10.244.1.0/24"),
        "{}",
        verbose.info["cniconfig"]
    );
}

async fn eventually_observed(d: &Daemon) -> concord::proto::ObjectStatus {
    let start = std::time::Instant::now();
    loop {
        let o = common::runtime_config_object(d).await;
        if o.observed_generation == o.generation && !o.observed.is_empty() {
            return o;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "runtime config not observed: {o:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_bad_request_is_counted_with_its_code() {
    let mut d = Daemon::new();
    d.start().await;
    let mut rt = d.runtime().await;
    let err = rt
        .checkpoint_container(cri::CheckpointContainerRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("location"), "{}", err.message());
    let count = d
        .metric(
            "concord_grpc_requests_total",
            &["method=\"CheckpointContainer\"", "code=\"InvalidArgument\""],
        )
        .await;
    assert_eq!(count, 1.0);
}

#[tokio::test]
async fn sigterm_exits_zero_and_removes_the_socket() {
    let mut d = Daemon::new();
    d.start().await;
    let status = d.terminate().await;
    assert!(status.success(), "{status}");
    assert!(!d.socket.exists());
    assert!(d.log().contains("concord stopped"));
}

#[tokio::test]
async fn a_second_concord_on_the_same_socket_is_refused() {
    let mut a = Daemon::new();
    a.start().await;
    let mut b = Daemon::new();
    b.socket = a.socket.clone();
    let (status, stderr) = b.run_to_exit(&[]);
    assert!(!status.success());
    assert!(
        stderr.contains("already serving") && stderr.contains(&a.socket.display().to_string()),
        "{stderr}"
    );
    // a is unharmed
    a.runtime()
        .await
        .version(cri::VersionRequest::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_stale_socket_file_is_replaced() {
    let mut d = Daemon::new();
    d.start().await;
    d.kill9(); // leaves the socket file behind
    assert!(d.socket.exists());
    d.start().await;
}

#[tokio::test]
async fn metrics_pass_promtool_and_use_kubelet_buckets() {
    let mut d = Daemon::new();
    d.start().await;
    let mut rt = d.runtime().await;
    rt.version(cri::VersionRequest::default()).await.unwrap();
    rt.status(cri::StatusRequest::default()).await.unwrap();
    let text = d.metrics().await;
    assert!(text.contains("concord_build_info{"), "{text}");
    assert!(text
        .contains("concord_grpc_request_duration_seconds_bucket{method=\"Version\",le=\"0.005\"}"));
    assert!(
        text.contains("le=\"298.0232238769531\"") || text.contains("le=\"298.02322387695"),
        "buckets pass 4 minutes"
    );
    // The process's metrics, the loop's failing objects (computed at the scrape), the
    // per-handler series of the default handler, pulls' buckets up to 10 minutes.
    for want in [
        "\nprocess_resident_memory_bytes ",
        "\nprocess_cpu_seconds_total ",
        "\nprocess_open_fds ",
        "concord_reconcile_failing_objects{kind=\"sandbox\"} 0",
        "concord_pod_start_duration_seconds_bucket{handler=\"runc\",le=\"0.005\"} 0",
        "concord_container_oom_kills_total{handler=\"runc\"} 0",
        "concord_image_pull_duration_seconds_bucket{le=\"600\"} 0",
        "revision=\"",
    ] {
        assert!(text.contains(want), "no {want:?} in\n{text}");
    }
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        assert!(!line.contains("_id=\""), "no id labels: {line}");
    }
    let promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; hack/dev-up.sh installs it)");
    use std::io::Write;
    promtool
        .stdin
        .as_ref()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn a_real_containerd_event_reaches_the_stream() {
    use containerd_client::services::v1::{CreateImageRequest, DeleteImageRequest, Image};
    let mut d = Daemon::new();
    d.start().await;
    eventually(
        Duration::from_secs(10),
        "event stream connected",
        || async {
            d.metric("concord_containerd_event_stream_connected", &[])
                .await
                == 1.0
        },
    )
    .await;
    let ctd = concord::containerd::Containerd::new(&d.containerd, &d.namespace, Default::default());
    let name = format!("example.test/concord/{}:latest", d.namespace);
    let img = Image {
        name: name.clone(),
        target: Some(containerd_client::types::Descriptor {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            digest: "sha256:0000000000000000000000000000000000000000000000000000000000000000"
                .into(),
            size: 1,
            annotations: Default::default(),
        }),
        ..Default::default()
    };
    ctd.images()
        .create(ctd.request(CreateImageRequest {
            image: Some(img),
            source_date_epoch: None,
        }))
        .await
        .unwrap();
    ctd.images()
        .delete(ctd.request(DeleteImageRequest {
            name,
            sync: false,
            ..Default::default()
        }))
        .await
        .unwrap();
    eventually(Duration::from_secs(5), "image events counted", || async {
        let m = d.metrics().await;
        common::metric_value(&m, "concord_containerd_events_total", &["/images/create"]) >= 1.0
            && common::metric_value(&m, "concord_containerd_events_total", &["/images/delete"])
                >= 1.0
    })
    .await;
}

/// Sends SIGHUP to the daemon and waits until its log holds `count` "config reloaded" or
/// "config reload failed" lines.
async fn sighup(d: &Daemon, count: usize) {
    d.hangup();
    eventually(Duration::from_secs(10), "the reload's log line", || async {
        let log = d.log();
        log.matches("config reloaded").count() + log.matches("config reload failed").count()
            >= count
    })
    .await;
}

#[tokio::test]
async fn sighup_applies_a_new_log_level_and_survives_a_broken_config() {
    let mut d = Daemon::new();
    d.log_level = None;
    let config = d.dir.join("config.toml");
    std::fs::write(&config, "log_level = \"info\"\n").unwrap();
    d.start().await;
    d.version().await;
    assert!(!d.log().contains(" DEBUG "), "{}", d.log());

    std::fs::write(
        &config,
        "log_level = \"debug\"\nshutdown_grace_seconds = 5\n",
    )
    .unwrap();
    sighup(&d, 1).await;
    let log = d.log();
    let reloaded = log.find("config reloaded").unwrap();
    let line = log[reloaded..].lines().next().unwrap();
    assert!(
        line.contains("log_level") && line.contains("shutdown_grace_seconds"),
        "{line}"
    );
    assert!(
        log.contains("needs a restart: shutdown_grace_seconds"),
        "{log}"
    );
    d.version().await;
    eventually(Duration::from_secs(5), "a debug line", || async {
        d.log()[reloaded..].contains(" DEBUG ")
    })
    .await;

    std::fs::write(&config, "log_level = [\n").unwrap();
    sighup(&d, 2).await;
    let log = d.log();
    assert!(
        log.lines()
            .any(|l| l.contains("ERROR") && l.contains("config reload failed")),
        "{log}"
    );
    // Still serving, still at the level it had.
    d.version().await;
    let status = d.terminate().await;
    assert!(status.success(), "{status}");
}
