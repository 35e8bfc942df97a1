//! The streaming server against real containers: exec over each WebSocket channel protocol
//! (output, exit codes, stdin, TTY and resize, a client that goes away), port-forward into a
//! pod, and the refusals (malformed upgrade, unknown, used and expired tokens).

mod common;

use std::time::Duration;

use common::{eventually, exec_out, Daemon};
use concord::stream::client::Client;
use k8s_cri::v1 as cri;

async fn daemon() -> Daemon {
    daemon_with(&[]).await
}

async fn daemon_with(extra: &[&str]) -> Daemon {
    let mut flags = vec!["--stream-token-ttl-seconds=2"];
    flags.extend_from_slice(extra);
    common::pod_daemon(&flags).await
}

async fn pull(d: &Daemon, image: &str) {
    common::pull_ok(d, image).await
}

/// A pod with one running container of `image` running `cmd` (empty: the image's).
async fn pod_with(d: &Daemon, name: &str, image: &str, cmd: &[&str]) -> (String, String) {
    pull(d, image).await;
    let config = cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        ..Default::default()
    };
    let mut rt = d.runtime().await;
    let pod = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    let id = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata {
                    name: "main".into(),
                    attempt: 0,
                }),
                image: Some(cri::ImageSpec {
                    image: image.into(),
                    ..Default::default()
                }),
                command: cmd.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            }),
            sandbox_config: Some(config),
        })
        .await
        .unwrap()
        .into_inner()
        .container_id;
    rt.start_container(cri::StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap();
    (pod, id)
}

fn exec_req(id: &str, cmd: &[&str], stdin: bool, tty: bool) -> cri::ExecRequest {
    cri::ExecRequest {
        container_id: id.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty,
        stdin,
        stdout: true,
        stderr: !tty,
    }
}

async fn exec_url(d: &Daemon, req: cri::ExecRequest) -> String {
    d.runtime().await.exec(req).await.unwrap().into_inner().url
}

async fn connect(url: &str, protocol: &str) -> Client {
    let offered: Vec<&str> = if protocol.is_empty() {
        vec![]
    } else {
        vec![protocol]
    };
    Client::connect(url, &offered)
        .await
        .unwrap()
        .unwrap_or_else(|r| panic!("upgrade refused: {} {}", r.status, r.body))
}

fn text(v: Option<&Vec<u8>>) -> String {
    String::from_utf8_lossy(v.map(Vec::as_slice).unwrap_or_default()).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_over_every_websocket_protocol() {
    let d = daemon().await;
    let (pod, id) = pod_with(&d, "exec", "busybox", &["sleep", "1000"]).await;

    for protocol in [
        "v5.channel.k8s.io",
        "v4.channel.k8s.io",
        "v4.base64.channel.k8s.io",
        "channel.k8s.io",
        "base64.channel.k8s.io",
        "",
    ] {
        let url = exec_url(
            &d,
            exec_req(&id, &["sh", "-c", "echo hi; echo err >&2"], false, false),
        )
        .await;
        let mut c = connect(&url, protocol).await;
        assert_eq!(c.negotiated, protocol);
        let out = c.collect().await.unwrap();
        assert_eq!(text(out.get(&1)), "hi\n", "{protocol}");
        assert_eq!(text(out.get(&2)), "err\n", "{protocol}");
        let status = text(out.get(&3));
        if protocol.starts_with("v4") || protocol.starts_with("v5") {
            let v: serde_json::Value = serde_json::from_str(&status).unwrap();
            assert_eq!(v["status"], "Success", "{protocol}");
        } else {
            assert_eq!(status, "", "{protocol}");
        }
    }

    // A non-zero exit code: v4's Status names it as a cause.
    let url = exec_url(&d, exec_req(&id, &["sh", "-c", "exit 7"], false, false)).await;
    let out = connect(&url, "v4.channel.k8s.io")
        .await
        .collect()
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&text(out.get(&3))).unwrap();
    assert_eq!(v["status"], "Failure");
    assert_eq!(v["reason"], "NonZeroExitCode");
    assert_eq!(v["details"]["causes"][0]["reason"], "ExitCode");
    assert_eq!(v["details"]["causes"][0]["message"], "7");

    // stdin piped to cat, closed with v5's close signal.
    let url = exec_url(&d, exec_req(&id, &["cat"], true, false)).await;
    let mut c = connect(&url, "v5.channel.k8s.io").await;
    c.send(0, b"hello ").await.unwrap();
    c.send(0, b"world\n").await.unwrap();
    c.close_channel(0).await.unwrap();
    let out = c.collect().await.unwrap();
    assert_eq!(text(out.get(&1)), "hello world\n");

    // A TTY, resized by the client.
    let url = exec_url(
        &d,
        exec_req(
            &id,
            &["sh", "-c", "sleep 1; stty size; test -t 0 && echo tty"],
            true,
            true,
        ),
    )
    .await;
    let mut c = connect(&url, "v5.channel.k8s.io").await;
    c.send(4, br#"{"Width":123,"Height":45}"#).await.unwrap();
    let out = c.collect().await.unwrap();
    let got = text(out.get(&1));
    assert!(got.contains("45 123") && got.contains("tty"), "{got:?}");

    // A client that goes away: its process is killed.
    let url = exec_url(&d, exec_req(&id, &["sleep", "777"], false, false)).await;
    let c = connect(&url, "v5.channel.k8s.io").await;
    let sleeping = || async { exec_out(&d, &id, &["ps"]).await.contains("sleep 777") };
    eventually(Duration::from_secs(10), "the exec runs", sleeping).await;
    c.abandon().await;
    eventually(
        Duration::from_secs(10),
        "the abandoned exec is killed",
        || async { !sleeping().await },
    )
    .await;
    assert!(
        d.metric("concord_stream_sessions_total", &["kind=\"exec\""])
            .await
            >= 10.0
    );

    // Refusals: nothing starts.
    let url = exec_url(&d, exec_req(&id, &["true"], false, false)).await;
    assert_eq!(
        Client::status_of(&url, "").await.unwrap(),
        400,
        "no upgrade"
    );
    let bogus = format!(
        "{}/exec/0123456789abcdef",
        url.rsplitn(3, '/').nth(2).unwrap()
    );
    let refused = Client::connect(&bogus, &["v4.channel.k8s.io"])
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(refused.status, 404, "unknown token");
    let _ = connect(&url, "v4.channel.k8s.io").await.collect().await;
    let refused = Client::connect(&url, &["v4.channel.k8s.io"])
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(refused.status, 404, "a token used twice");
    let url = exec_url(&d, exec_req(&id, &["true"], false, false)).await;
    let refused = Client::connect(&url, &["v9.nonsense"])
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(refused.status, 400, "no protocol in common");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let refused = Client::connect(&url, &["v4.channel.k8s.io"])
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(refused.status, 404, "an expired token");

    // Bad requests and a stopped container: the RPC refuses.
    let mut rt = d.runtime().await;
    let mut both = exec_req(&id, &["sh"], false, true);
    both.stderr = true;
    let err = rt.exec(both).await.unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::InvalidArgument,
        "{}",
        err.message()
    );
    let mut none = exec_req(&id, &["sh"], false, false);
    none.stdout = false;
    none.stderr = false;
    assert_eq!(
        rt.exec(none).await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );
    rt.stop_container(cri::StopContainerRequest {
        container_id: id.clone(),
        timeout: 0,
    })
    .await
    .unwrap();
    let err = rt
        .exec(exec_req(&id, &["true"], false, false))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::FailedPrecondition,
        "{}",
        err.message()
    );
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await
    .unwrap();
}

async fn pf_url(d: &Daemon, pod: String) -> String {
    d.runtime()
        .await
        .port_forward(cri::PortForwardRequest {
            pod_sandbox_id: pod,
            port: vec![80],
        })
        .await
        .unwrap()
        .into_inner()
        .url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_reaches_a_server_inside_the_pod() {
    let d = daemon().await;
    let image = "registry.k8s.io/e2e-test-images/httpd:2.4.39-4";
    let (pod, _) = pod_with(&d, "pf", image, &[]).await;
    let get = |url: String| async move {
        let mut c = connect(&url, "v4.channel.k8s.io").await;
        // The port comes first on both channels of the port.
        let first = c.recv().await.unwrap().unwrap();
        assert_eq!(first, (0, 80u16.to_le_bytes().to_vec()));
        let first = c.recv().await.unwrap().unwrap();
        assert_eq!(first, (1, 80u16.to_le_bytes().to_vec()));
        c.send(0, b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
        let mut body = Vec::new();
        while let Ok(Some((channel, data))) =
            tokio::time::timeout(Duration::from_secs(10), c.recv())
                .await
                .unwrap_or(Ok(None))
        {
            assert_eq!(channel, 0, "{}", String::from_utf8_lossy(&data));
            body.extend_from_slice(&data);
            if String::from_utf8_lossy(&body).contains("</html>") {
                break;
            }
        }
        String::from_utf8_lossy(&body).into_owned()
    };
    // httpd needs a moment to listen.
    let mut answered = false;
    for _ in 0..50 {
        let u = pf_url(&d, pod.clone()).await;
        let mut c = connect(&u, "v4.channel.k8s.io").await;
        let _ = c.recv().await;
        let _ = c.recv().await;
        c.send(0, b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
        if let Ok(Ok(Some((0, _)))) = tokio::time::timeout(Duration::from_secs(8), c.recv()).await {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if !answered {
        for l in d.log().lines().filter(|l| l.contains("stream")) {
            println!("{l}");
        }
    }
    assert!(answered, "httpd never answered through the forward");
    // Two forwards at once.
    let (a, b) = tokio::join!(
        get(pf_url(&d, pod.clone()).await),
        get(pf_url(&d, pod.clone()).await)
    );
    for body in [a, b] {
        assert!(
            body.starts_with("HTTP/1.") && body.contains(" 200 "),
            "{body}"
        );
    }
    // A pod that is not there, a port that is not one.
    let mut rt = d.runtime().await;
    let err = rt
        .port_forward(cri::PortForwardRequest {
            pod_sandbox_id: "no-such-pod".into(),
            port: vec![80],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let err = rt
        .port_forward(cri::PortForwardRequest {
            pod_sandbox_id: pod.clone(),
            port: vec![70000],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_is_closed_and_its_process_killed() {
    let d = daemon_with(&["--stream-idle-timeout-seconds=2"]).await;
    let (pod, id) = pod_with(&d, "idle", "busybox", &["sleep", "1000"]).await;
    let url = exec_url(&d, exec_req(&id, &["sleep", "888"], true, false)).await;
    let mut c = connect(&url, "v5.channel.k8s.io").await;
    let started = std::time::Instant::now();
    // The client says nothing: the server closes within the idle timeout (and a margin).
    let closed = tokio::time::timeout(Duration::from_secs(10), c.collect()).await;
    assert!(closed.is_ok(), "the idle session was not closed");
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert!(
        !exec_out(&d, &id, &["ps"]).await.contains("sleep 888"),
        "the idle session's process still runs"
    );
    d.runtime()
        .await
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod,
        })
        .await
        .unwrap();
}
