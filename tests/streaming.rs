//! The streaming server against real containers: exec over each WebSocket channel protocol
//! (output, exit codes, stdin, TTY and resize, a client that goes away), port-forward into a
//! pod, and the refusals (malformed upgrade, unknown, used and expired tokens).

mod common;

use std::time::Duration;

use common::{
    container_config, eventually, exec_out, pod_config, pull_ok, remove_pod, Daemon, Pod,
};
use concord::cri;
use concord::stream::client::{Client, SpdyClient, SpdyCommand};

async fn daemon() -> Daemon {
    daemon_with(&[]).await
}

async fn daemon_with(extra: &[&str]) -> Daemon {
    let mut flags = vec!["--stream-token-ttl-seconds=2"];
    flags.extend_from_slice(extra);
    common::pod_daemon(&flags).await
}

/// A pod with one running container of `image` running `cmd` (empty: the image's).
async fn pod_with(d: &Daemon, name: &str, image: &str, cmd: &[&str]) -> (String, String) {
    pod_with_config(d, name, image, cmd, |_| {}).await
}

/// The same, its container config changed by `tune` (stdin, tty...).
async fn pod_with_config(
    d: &Daemon,
    name: &str,
    image: &str,
    cmd: &[&str],
    tune: impl FnOnce(&mut cri::ContainerConfig),
) -> (String, String) {
    pull_ok(d, image).await;
    let pod = Pod::run(d, pod_config(d, name)).await;
    let mut container = cri::ContainerConfig {
        log_path: "main.log".into(),
        ..container_config("main", image, cmd)
    };
    tune(&mut container);
    let id = pod.run_container(d, container).await;
    (pod.id, id)
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
    remove_pod(&d, &pod).await;
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
    remove_pod(&d, &pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_pushed_at_a_process_that_does_not_read_is_held_to_a_budget() {
    let d = daemon().await;
    let (pod, id) = pod_with(&d, "push", "busybox", &["sleep", "1000"]).await;
    let before = common::rss_kb(d.pid());
    // `exec -i sleep`: 1 MiB stdin messages as fast as the connection takes them, for 5 s.
    let url = exec_url(&d, exec_req(&id, &["sleep", "600"], true, false)).await;
    let mut c = connect(&url, "v5.channel.k8s.io").await;
    let chunk = vec![b'x'; 1 << 20];
    let mut sent = 0u64;
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while c.send(0, &chunk).await.is_ok() {
            sent += chunk.len() as u64;
        }
    })
    .await;
    let grown = common::rss_kb(d.pid()).saturating_sub(before);
    println!(
        "pushed {} MiB; concord's RSS grew {} MiB",
        sent >> 20,
        grown >> 10
    );
    // The session's stdin budget (8 MiB) plus a message being read, not what was pushed.
    assert!(
        grown < 32 << 10,
        "RSS grew {grown} kB after {sent} bytes pushed"
    );
    // CRI RPCs still answer.
    d.runtime()
        .await
        .version(cri::VersionRequest::default())
        .await
        .unwrap();
    drop(c);
    remove_pod(&d, &pod).await;
}

/// Idle means idle both ways: a forward whose pod keeps sending while the client only reads is
/// not cut at the idle timeout (it was: only client traffic counted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_forward_the_pod_keeps_talking_on_is_not_idle() {
    let d = daemon_with(&["--stream-idle-timeout-seconds=2"]).await;
    let server = "while true; do (while true; do echo tick; sleep 0.5; done) | nc -l -p 80; done";
    let (pod, _) = pod_with(&d, "talker", "busybox", &["sh", "-c", server]).await;
    let mut ticks = 0;
    let started = std::time::Instant::now();
    'attempts: for _ in 0..50 {
        let mut c = connect(&pf_url(&d, pod.clone()).await, "v4.channel.k8s.io").await;
        let _ = c.recv().await;
        let _ = c.recv().await;
        // The client sends nothing at all, for three idle timeouts.
        let until = std::time::Instant::now() + Duration::from_secs(6);
        loop {
            match tokio::time::timeout_at(until.into(), c.recv()).await {
                Err(_) => break 'attempts,
                Ok(Ok(Some((0, data)))) => {
                    ticks += data.windows(4).filter(|w| w == b"tick").count()
                }
                Ok(Ok(Some(_))) => {}
                // Closed: the server was not listening yet, or the forward was cut as idle.
                Ok(_) => break,
            }
        }
        if ticks > 0 {
            panic!(
                "the forward was closed after {ticks} ticks in {:?}",
                started.elapsed()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(ticks >= 8, "{ticks} ticks in 6 s");
    remove_pod(&d, &pod).await;
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
    // The same over SPDY.
    let url = exec_url(&d, exec_req(&id, &["sleep", "889"], true, false)).await;
    let c = spdy(&url, "v4.channel.k8s.io", true, false).await;
    let started = std::time::Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(10), c.finish()).await;
    assert!(closed.is_ok(), "the idle SPDY session was not closed");
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert!(!exec_out(&d, &id, &["ps"]).await.contains("sleep 889"));
    remove_pod(&d, &pod).await;
}

async fn spdy(url: &str, protocol: &str, stdin: bool, tty: bool) -> SpdyCommand {
    let offered: Vec<&str> = if protocol.is_empty() {
        vec![]
    } else {
        vec![protocol]
    };
    SpdyCommand::start(url, &offered, stdin, true, !tty, tty)
        .await
        .unwrap()
        .unwrap_or_else(|r| panic!("upgrade refused: {} {}", r.status, r.body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_over_every_spdy_protocol() {
    let d = daemon().await;
    let (pod, id) = pod_with(&d, "exec-spdy", "busybox", &["sleep", "1000"]).await;
    for protocol in [
        "v4.channel.k8s.io",
        "v3.channel.k8s.io",
        "v2.channel.k8s.io",
        "channel.k8s.io",
        "",
    ] {
        for (cmd, code) in [
            ("echo hi; echo err >&2", 0),
            ("echo hi; echo err >&2; exit 7", 7),
        ] {
            let url = exec_url(&d, exec_req(&id, &["sh", "-c", cmd], false, false)).await;
            let c = spdy(&url, protocol, false, false).await;
            assert_eq!(c.client.negotiated, protocol);
            let out = c.finish().await;
            assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n", "{protocol}");
            assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n", "{protocol}");
            match (protocol.starts_with("v4"), code) {
                (true, _) => {
                    let v: serde_json::Value = serde_json::from_str(&out.error).unwrap();
                    if code == 0 {
                        assert_eq!(v["status"], "Success");
                    } else {
                        assert_eq!(v["reason"], "NonZeroExitCode");
                        assert_eq!(v["details"]["causes"][0]["reason"], "ExitCode");
                        assert_eq!(v["details"]["causes"][0]["message"], "7");
                    }
                }
                (false, 0) => assert_eq!(out.error, "", "{protocol}"),
                (false, _) => assert!(
                    out.error.contains("exit code 7"),
                    "{protocol}: {}",
                    out.error
                ),
            }
        }
    }

    // stdin piped to cat, ended by the stream's FIN; a PING answered on the way.
    let url = exec_url(&d, exec_req(&id, &["cat"], true, false)).await;
    let c = spdy(&url, "v4.channel.k8s.io", true, false).await;
    c.client.conn.ping().await.unwrap();
    c.write_stdin(b"hello ").await.unwrap();
    c.write_stdin(b"spdy\n").await.unwrap();
    c.close_stdin().await.unwrap();
    let out = c.finish().await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello spdy\n");

    // A TTY, resized on the resize stream.
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
    let c = spdy(&url, "v4.channel.k8s.io", true, true).await;
    c.resize(132, 43).await.unwrap();
    let out = c.finish().await;
    let got = String::from_utf8_lossy(&out.stdout);
    assert!(got.contains("43 132") && got.contains("tty"), "{got:?}");

    // Flow control: a client that keeps windows (SETTINGS, WINDOW_UPDATE) gets 4 MiB through
    // 64 KiB windows, all of it.
    let url = exec_url(
        &d,
        exec_req(&id, &["head", "-c", "4194304", "/dev/zero"], false, false),
    )
    .await;
    let c = spdy(&url, "v4.channel.k8s.io", false, false).await;
    c.client.conn.settings_initial_window(65536).await.unwrap();
    let out = c.finish().await;
    assert_eq!(out.stdout.len(), 4 << 20);
    assert!(out.stdout.iter().all(|b| *b == 0));

    // A client that goes away: its process is killed.
    let url = exec_url(&d, exec_req(&id, &["sleep", "778"], false, false)).await;
    let c = spdy(&url, "v4.channel.k8s.io", false, false).await;
    let sleeping = || async { exec_out(&d, &id, &["ps"]).await.contains("sleep 778") };
    eventually(Duration::from_secs(10), "the exec runs", sleeping).await;
    c.abandon().await;
    eventually(
        Duration::from_secs(10),
        "the abandoned exec is killed",
        || async { !sleeping().await },
    )
    .await;

    // Refusals: no protocol in common (403, as kubelet), unknown and used tokens (404).
    let url = exec_url(&d, exec_req(&id, &["true"], false, false)).await;
    let refused = SpdyClient::connect(&url, &["v9.channel.k8s.io"])
        .await
        .unwrap()
        .err()
        .unwrap();
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(
        refused.body.contains("v4.channel.k8s.io"),
        "{}",
        refused.body
    );
    let _ = spdy(&url, "v4.channel.k8s.io", false, false)
        .await
        .finish()
        .await;
    let refused = SpdyClient::connect(&url, &["v4.channel.k8s.io"])
        .await
        .unwrap()
        .err()
        .unwrap();
    assert_eq!(refused.status, 404, "a token used twice");
    let bogus = format!(
        "{}/exec/0123456789abcdef",
        url.rsplitn(3, '/').nth(2).unwrap()
    );
    let refused = SpdyClient::connect(&bogus, &["v4.channel.k8s.io"])
        .await
        .unwrap()
        .err()
        .unwrap();
    assert_eq!(refused.status, 404, "unknown token");
    remove_pod(&d, &pod).await;
}

fn attach_req(id: &str, stdin: bool, tty: bool) -> cri::AttachRequest {
    cri::AttachRequest {
        container_id: id.into(),
        stdin,
        tty,
        stdout: true,
        stderr: !tty,
    }
}

async fn attach_url(d: &Daemon, req: cri::AttachRequest) -> String {
    d.runtime()
        .await
        .attach(req)
        .await
        .unwrap()
        .into_inner()
        .url
}

/// Reads a WebSocket session until `want` shows up on stdout.
async fn ws_until(c: &mut Client, want: &str) -> String {
    let mut seen = String::new();
    while !seen.contains(want) {
        match tokio::time::timeout(Duration::from_secs(10), c.recv()).await {
            Ok(Ok(Some((1, d)))) => seen.push_str(&String::from_utf8_lossy(&d)),
            Ok(Ok(Some(_))) => {}
            other => panic!("waiting for {want:?}, saw {seen:?}, then {other:?}"),
        }
    }
    seen
}

/// Reads a SPDY stream until `want` shows up.
async fn spdy_until(s: &mut concord::stream::spdy::Stream, want: &str) -> String {
    let mut seen = String::new();
    while !seen.contains(want) {
        match tokio::time::timeout(Duration::from_secs(10), s.read()).await {
            Ok(Some(d)) => seen.push_str(&String::from_utf8_lossy(&d)),
            other => panic!("waiting for {want:?}, saw {seen:?}, then {other:?}"),
        }
    }
    seen
}

/// A pod whose container (stdin, stdin_once, no TTY) echoes each line it reads and says when
/// its stdin closed.
async fn stdin_once_reader(d: &Daemon, name: &str) -> (String, String) {
    let script = "while read l; do echo got $l; done; echo stdin closed";
    pod_with_config(d, name, "busybox", &["sh", "-c", script], |c| {
        c.stdin = true;
        c.stdin_once = true;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_follows_output_and_feeds_stdin() {
    let d = daemon().await;
    // A container printing in a loop: two attached clients (WebSocket and SPDY) see its lines,
    // which still go to its log.
    let (pod, id) = pod_with(
        &d,
        "attach",
        "busybox",
        &[
            "sh",
            "-c",
            "i=0; while true; do echo line $i; i=$((i+1)); sleep 0.1; done",
        ],
    )
    .await;
    let mut ws = connect(
        &attach_url(&d, attach_req(&id, false, false)).await,
        "v5.channel.k8s.io",
    )
    .await;
    let mut sp = spdy(
        &attach_url(&d, attach_req(&id, false, false)).await,
        "v4.channel.k8s.io",
        false,
        false,
    )
    .await;
    let seen = ws_until(&mut ws, "\nline").await;
    let n: u32 = seen
        .split("line ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{seen:?}"));
    ws_until(&mut ws, &format!("line {}\n", n + 5)).await;
    spdy_until(sp.stdout.as_mut().unwrap(), &format!("line {}\n", n + 5)).await;
    ws.abandon().await;
    sp.abandon().await;
    let status = d
        .runtime()
        .await
        .container_status(cri::ContainerStatusRequest {
            container_id: id.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    let log = std::fs::read_to_string(&status.log_path).unwrap();
    assert!(log.contains(&format!("stdout F line {}\n", n + 5)), "{log}");

    // stdin without a TTY, stdin_once: what the client types reaches the process; when the
    // client's stdin ends the container's stdin closes, and the session ends with the container.
    let (pod2, id2) = stdin_once_reader(&d, "attach-stdin").await;
    let c = spdy(
        &attach_url(&d, attach_req(&id2, true, false)).await,
        "v4.channel.k8s.io",
        true,
        false,
    )
    .await;
    c.write_stdin(b"hello\n").await.unwrap();
    c.close_stdin().await.unwrap();
    let Ok(out) = tokio::time::timeout(Duration::from_secs(20), c.finish()).await else {
        let log = std::fs::read_to_string(d.dir.join("logs/attach-stdin/main.log"));
        panic!("the stdin_once session did not end; the container logged {log:?}");
    };
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("got hello\n") && text.contains("stdin closed"),
        "{text:?}"
    );
    let v: serde_json::Value = serde_json::from_str(&out.error).unwrap();
    assert_eq!(v["status"], "Success");

    // critest's attach: `sh` with stdin_once and no log path (the pod has no log directory);
    // the command typed is answered on stdout, once, and stderr stays empty.
    let (pod5, id5) = pod_with_config(&d, "attach-nolog", "busybox", &["sh"], |c| {
        c.stdin = true;
        c.stdin_once = true;
        c.log_path = String::new();
    })
    .await;
    let mut c = spdy(
        &attach_url(&d, attach_req(&id5, true, false)).await,
        "v4.channel.k8s.io",
        true,
        false,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // `echo -n`: output without a newline reaches the client as it is printed.
    c.write_stdin(b"echo -n hello\n").await.unwrap();
    let mut stdout = c.stdout.take().unwrap();
    assert_eq!(spdy_until(&mut stdout, "hello").await, "hello");
    c.close_stdin().await.unwrap();
    let rest = tokio::time::timeout(Duration::from_secs(20), stdout.read_to_end())
        .await
        .expect("stdout of a log-less stdin_once container ends with its stdin");
    assert!(rest.is_empty(), "more output: {rest:?}");
    let out = tokio::time::timeout(Duration::from_secs(20), c.finish())
        .await
        .expect("the attach session to a log-less container ends with its stdin");
    assert!(out.stderr.is_empty(), "{:?}", out.stderr);

    // stdin_once: the first attach going away (no stdin end) closes the container's stdin too.
    let (pod4, id4) = stdin_once_reader(&d, "attach-once").await;
    let mut c = connect(
        &attach_url(&d, attach_req(&id4, true, false)).await,
        "v5.channel.k8s.io",
    )
    .await;
    c.send(0, b"first\n").await.unwrap();
    ws_until(&mut c, "got first").await;
    c.abandon().await;
    let log = d.dir.join("logs/attach-once/main.log");
    eventually(
        Duration::from_secs(20),
        "the detached stdin_once container reads EOF",
        || async { std::fs::read_to_string(&log).is_ok_and(|l| l.contains("stdin closed")) },
    )
    .await;

    // A TTY with stdin: a shell reads the typed command and prints through the terminal.
    let (pod3, id3) = pod_with_config(&d, "attach-tty", "busybox", &["sh"], |c| {
        c.stdin = true;
        c.tty = true;
    })
    .await;
    let mut c = connect(
        &attach_url(&d, attach_req(&id3, true, true)).await,
        "v5.channel.k8s.io",
    )
    .await;
    c.send(0, b"echo tty-$((6*7))\n").await.unwrap();
    ws_until(&mut c, "tty-42").await;
    c.abandon().await;

    // Refusals: nothing to attach, a stopped container.
    let mut rt = d.runtime().await;
    let mut none = attach_req(&id, false, false);
    none.stdout = false;
    none.stderr = false;
    assert_eq!(
        rt.attach(none).await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );
    rt.stop_container(cri::StopContainerRequest {
        container_id: id.clone(),
        timeout: 0,
    })
    .await
    .unwrap();
    let err = rt.attach(attach_req(&id, false, false)).await.unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::FailedPrecondition,
        "{}",
        err.message()
    );
    for p in [pod, pod2, pod3, pod4, pod5] {
        remove_pod(&d, &p).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_over_spdy() {
    let d = daemon().await;
    let image = "registry.k8s.io/e2e-test-images/httpd:2.4.39-4";
    let (pod, _) = pod_with(&d, "pf-spdy", image, &[]).await;
    let url = pf_url(&d, pod.clone()).await;
    let c = SpdyClient::connect(&url, &["portforward.k8s.io"])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.negotiated, "portforward.k8s.io");
    let get = |request_id: u32| {
        let c = &c;
        async move {
            let rid = request_id.to_string();
            let err = c
                .open(&[("streamType", "error"), ("port", "80"), ("requestID", &rid)])
                .await
                .unwrap();
            let mut data = c
                .open(&[("streamType", "data"), ("port", "80"), ("requestID", &rid)])
                .await
                .unwrap();
            data.writer()
                .write(b"GET / HTTP/1.0\r\n\r\n")
                .await
                .unwrap();
            let body = String::from_utf8_lossy(&data.read_to_end().await).into_owned();
            (body, err)
        }
    };
    // httpd needs a moment to listen.
    let mut answered = false;
    for i in 0..50 {
        let Ok((body, _)) = tokio::time::timeout(Duration::from_secs(10), get(100 + i)).await
        else {
            for l in d
                .log()
                .lines()
                .filter(|l| l.contains("stream") || l.contains("spdy"))
            {
                println!("{l}");
            }
            panic!("a forward hung");
        };
        if body.contains(" 200 ") {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(answered, "httpd never answered through the forward");
    // Two connections at once through the one SPDY connection.
    let ((a, mut ea), (b, mut eb)) = tokio::join!(get(1), get(2));
    for body in [a, b] {
        assert!(
            body.starts_with("HTTP/1.") && body.contains(" 200 "),
            "{body}"
        );
    }
    assert_eq!(ea.read_to_end().await, b"");
    assert_eq!(eb.read_to_end().await, b"");
    // A port nothing listens on: the error stream says so.
    let mut err = c
        .open(&[("streamType", "error"), ("port", "81"), ("requestID", "9")])
        .await
        .unwrap();
    let _data = c
        .open(&[("streamType", "data"), ("port", "81"), ("requestID", "9")])
        .await
        .unwrap();
    let msg = String::from_utf8_lossy(&err.read_to_end().await).into_owned();
    assert!(msg.contains("port 81") && msg.contains(&pod), "{msg}");
    c.conn.close().await;
    remove_pod(&d, &pod).await;
}

/// kubectl's side of the streaming protocols, when kubectl is installed: a stand-in for the
/// API server and kubelet answers kubectl's pod lookup and forwards its exec, attach and
/// port-forward upgrades to the URL concord's RPC returns (as kubelet proxies them).
mod kubectl {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    pub fn installed() -> bool {
        std::process::Command::new("kubectl")
            .args(["version", "--client"])
            .output()
            .is_ok_and(|o| o.status.success())
    }

    async fn head(s: &mut tokio::net::TcpStream) -> Option<String> {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            if s.read(&mut b).await.ok()? == 0 {
                return None;
            }
            head.push(b[0]);
        }
        Some(String::from_utf8_lossy(&head).into_owned())
    }

    fn query(path: &str) -> Vec<(String, String)> {
        path.split_once('?')
            .map(|(_, q)| q)
            .unwrap_or("")
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| {
                let v = v.replace('+', " ");
                let mut out = Vec::new();
                let b = v.as_bytes();
                let mut i = 0;
                while i < b.len() {
                    if b[i] == b'%' && i + 2 < b.len() {
                        if let Ok(x) = u8::from_str_radix(&v[i + 1..i + 3], 16) {
                            out.push(x);
                            i += 3;
                            continue;
                        }
                    }
                    out.push(b[i]);
                    i += 1;
                }
                (k.to_string(), String::from_utf8_lossy(&out).into_owned())
            })
            .collect()
    }

    /// Serves pod `pod_name` (sandbox `pod`, container `id` named "main") on a free port.
    pub async fn apiserver(d: &Daemon, pod_name: &str, pod: &str, id: &str) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let rt = d.runtime().await;
        let (pod_name, pod, id) = (pod_name.to_string(), pod.to_string(), id.to_string());
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let (mut rt, pod_name, pod, id) =
                    (rt.clone(), pod_name.clone(), pod.clone(), id.clone());
                tokio::spawn(async move {
                    let Some(head) = head(&mut s).await else {
                        return;
                    };
                    let mut lines = head.lines();
                    let first = lines.next().unwrap_or_default().to_string();
                    let path = first.split_whitespace().nth(1).unwrap_or("/").to_string();
                    let q = query(&path);
                    let flag = |k: &str| q.iter().any(|(n, v)| n == k && v == "true");
                    let base = format!("/api/v1/namespaces/default/pods/{pod_name}");
                    let route = path.split('?').next().unwrap_or("").to_string();
                    let url = if route == format!("{base}/exec") {
                        let cmd = q
                            .iter()
                            .filter(|(k, _)| k == "command")
                            .map(|(_, v)| v.clone())
                            .collect();
                        rt.exec(cri::ExecRequest {
                            container_id: id,
                            cmd,
                            tty: flag("tty"),
                            stdin: flag("stdin"),
                            stdout: flag("stdout"),
                            stderr: flag("stderr"),
                        })
                        .await
                        .map(|r| r.into_inner().url)
                    } else if route == format!("{base}/attach") {
                        rt.attach(cri::AttachRequest {
                            container_id: id,
                            tty: flag("tty"),
                            stdin: flag("stdin"),
                            stdout: flag("stdout"),
                            stderr: flag("stderr"),
                        })
                        .await
                        .map(|r| r.into_inner().url)
                    } else if route == format!("{base}/portforward") {
                        rt.port_forward(cri::PortForwardRequest {
                            pod_sandbox_id: pod,
                            port: vec![],
                        })
                        .await
                        .map(|r| r.into_inner().url)
                    } else {
                        let sub = |n: &str, kind: &str| {
                            serde_json::json!({"name": n, "singularName": "", "namespaced": true,
                                "kind": kind, "verbs": ["create", "get"]})
                        };
                        let found =
                            [base.as_str(), "/api", "/apis", "/api/v1"].contains(&route.as_str());
                        let body = if route == "/api" {
                            serde_json::json!({"kind": "APIVersions", "versions": ["v1"],
                                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0",
                                "serverAddress": "127.0.0.1"}]})
                        } else if route == "/apis" {
                            serde_json::json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": []})
                        } else if route == "/api/v1" {
                            serde_json::json!({"kind": "APIResourceList", "groupVersion": "v1",
                            "resources": [
                                {"name": "pods", "singularName": "pod", "namespaced": true,
                                 "kind": "Pod", "verbs": ["get", "list"], "shortNames": ["po"]},
                                sub("pods/exec", "PodExecOptions"),
                                sub("pods/attach", "PodAttachOptions"),
                                sub("pods/portforward", "PodPortForwardOptions"),
                            ]})
                        } else if route == base {
                            serde_json::json!({
                                "kind": "Pod", "apiVersion": "v1",
                                "metadata": {"name": pod_name, "namespace": "default"},
                                "spec": {"containers": [{"name": "main", "image": "busybox",
                                    "stdin": true, "tty": false}]},
                                "status": {"phase": "Running"},
                            })
                        } else {
                            serde_json::json!({"kind": "Status", "apiVersion": "v1",
                                "status": "Failure", "reason": "NotFound", "code": 404})
                        };
                        let code = if found { "200 OK" } else { "404 Not Found" };
                        let body = body.to_string();
                        let _ = s
                            .write_all(
                                format!(
                                    "HTTP/1.1 {code}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                                    body.len()
                                )
                                .as_bytes(),
                            )
                            .await;
                        return;
                    };
                    let url = url.expect("concord refused the streaming request");
                    let rest = url.trim_start_matches("http://");
                    let (host, target) = rest.split_at(rest.find('/').unwrap());
                    let mut up = tokio::net::TcpStream::connect(host).await.unwrap();
                    let method = first.split_whitespace().next().unwrap_or("POST");
                    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\n");
                    for l in lines.filter(|l| !l.is_empty()) {
                        let name = l.split(':').next().unwrap_or("").to_ascii_lowercase();
                        if name != "host" && name != "content-length" {
                            req.push_str(l);
                            req.push_str("\r\n");
                        }
                    }
                    req.push_str("\r\n");
                    up.write_all(req.as_bytes()).await.unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut s, &mut up).await;
                });
            }
        });
        port
    }

    /// Runs kubectl against the stand-in at `port` with `env`, feeding it `stdin`.
    pub async fn run(
        port: u16,
        env: &[(&str, &str)],
        args: &[&str],
        stdin: &str,
    ) -> std::process::Output {
        let mut cmd = tokio::process::Command::new("kubectl");
        cmd.arg(format!("--server=http://127.0.0.1:{port}"))
            .args(["--namespace=default", "--request-timeout=30s"])
            .args(args)
            .env("KUBECONFIG", "/dev/null")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.as_bytes()).await.unwrap();
        drop(input);
        tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .expect("kubectl hung")
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_exec_and_port_forward() {
    if !kubectl::installed() {
        eprintln!("kubectl is not installed: skipping its interop test");
        return;
    }
    let d = daemon().await;
    let image = "registry.k8s.io/e2e-test-images/httpd:2.4.39-4";
    let (pod, id) = pod_with(&d, "kubectl", image, &[]).await;
    let port = kubectl::apiserver(&d, "web", &pod, &id).await;
    let spdy = [("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false")];
    let websocket = [("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "true")];
    for (name, env) in [("spdy", &spdy[..]), ("websocket", &websocket[..])] {
        let out = kubectl::run(
            port,
            env,
            &[
                "exec",
                "web",
                "-c",
                "main",
                "--",
                "sh",
                "-c",
                "echo hi; echo err >&2",
            ],
            "",
        )
        .await;
        assert!(out.status.success(), "{name}: {out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n", "{name}");
        assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n", "{name}");
        let out = kubectl::run(
            port,
            env,
            &["exec", "web", "-c", "main", "--", "sh", "-c", "exit 3"],
            "",
        )
        .await;
        assert_eq!(out.status.code(), Some(3), "{name}: {out:?}");
        let out = kubectl::run(
            port,
            env,
            &["exec", "-i", "web", "-c", "main", "--", "wc", "-c"],
            "twelve bytes",
        )
        .await;
        assert!(out.status.success(), "{name}: {out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "12", "{name}");
    }
    // port-forward over SPDY: kubectl listens locally, every connection becomes a stream pair.
    let local = common::free_port();
    let mut pf = tokio::process::Command::new("kubectl")
        .arg(format!("--server=http://127.0.0.1:{port}"))
        .args([
            "--namespace=default",
            "port-forward",
            "pod/web",
            &format!("{local}:80"),
        ])
        .env("KUBECONFIG", "/dev/null")
        .env("KUBECTL_PORT_FORWARD_WEBSOCKETS", "false")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let get = || async move {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", local))
            .await
            .ok()?;
        tokio::io::AsyncWriteExt::write_all(&mut s, b"GET / HTTP/1.0\r\n\r\n")
            .await
            .ok()?;
        let mut body = Vec::new();
        tokio::time::timeout(
            Duration::from_secs(10),
            tokio::io::AsyncReadExt::read_to_end(&mut s, &mut body),
        )
        .await
        .ok()?
        .ok()?;
        Some(String::from_utf8_lossy(&body).into_owned())
    };
    eventually(
        Duration::from_secs(30),
        "httpd answers through kubectl port-forward",
        || async { get().await.is_some_and(|b| b.contains(" 200 ")) },
    )
    .await;
    let (a, b) = tokio::join!(get(), get());
    assert!(a.unwrap().contains("It works!") && b.unwrap().contains("It works!"));
    let _ = pf.kill().await;
    // Each protocol was the one used.
    let log = d.log();
    for (kind, upgrade) in [
        ("exec", "SPDY/3.1"),
        ("exec", "websocket"),
        ("portforward", "SPDY/3.1"),
    ] {
        assert!(
            log.lines()
                .any(|l| l.contains(&format!("streaming upgrade to {upgrade}"))
                    && l.contains(&format!("kind=\"{kind}\""))),
            "no {kind} over {upgrade} in the log"
        );
    }
    remove_pod(&d, &pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=concord-streaming"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    concord::stream::client::trust(&std::fs::read(&cert).unwrap()).unwrap();
    let d = daemon_with(&[
        &format!("--stream-tls-cert-file={}", cert.display()),
        &format!("--stream-tls-key-file={}", key.display()),
    ])
    .await;
    let (pod, id) = pod_with(&d, "tls", "busybox", &["sleep", "1000"]).await;
    let url = exec_url(&d, exec_req(&id, &["echo", "over tls"], false, false)).await;
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let out = connect(&url, "v5.channel.k8s.io")
        .await
        .collect()
        .await
        .unwrap();
    assert_eq!(text(out.get(&1)), "over tls\n");
    let url = exec_url(&d, exec_req(&id, &["echo", "spdy over tls"], false, false)).await;
    let out = spdy(&url, "v4.channel.k8s.io", false, false)
        .await
        .finish()
        .await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "spdy over tls\n");
    // Plain http to the TLS port gets no upgrade.
    let url = exec_url(&d, exec_req(&id, &["true"], false, false)).await;
    let plain = url.replace("https://", "http://");
    assert!(!matches!(
        Client::connect(&plain, &["v5.channel.k8s.io"]).await,
        Ok(Ok(_))
    ));
    remove_pod(&d, &pod).await;
}

/// Streaming abuse against one node: 20,000 connections to the streaming port that never send a
/// byte, and 1,000 SPDY streams opened on one exec session. concord's memory stays within a
/// budget, the streaming server keeps at most its cap of connections, and CRI RPCs keep
/// answering quickly throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_abuse_keeps_memory_bounded_and_the_cri_answering() {
    // This sandbox caps open files at 20,000 (hard, no CAP_SYS_RESOURCE to raise it): the
    // connections are held half here, half by a Python process beside.
    let want = nix::libc::rlimit {
        rlim_cur: 20_000,
        rlim_max: 20_000,
    };
    // SAFETY: a valid rlimit for the calling process.
    unsafe { nix::libc::setrlimit(nix::libc::RLIMIT_NOFILE, &want) };
    let d = daemon().await;
    let (pod, id) = pod_with(&d, "abuse", "busybox", &["sleep", "1000"]).await;
    let before = common::rss_kb(d.pid());
    let mut peak = before;
    let mut slowest = Duration::ZERO;
    let probe = |peak: &mut u64| {
        *peak = (*peak).max(common::rss_kb(d.pid()));
        let d = &d;
        async move {
            let t = std::time::Instant::now();
            tokio::time::timeout(
                Duration::from_secs(5),
                d.runtime()
                    .await
                    .list_pod_sandbox(cri::ListPodSandboxRequest::default()),
            )
            .await
            .expect("ListPodSandbox answered within 5 s")
            .unwrap();
            t.elapsed()
        }
    };

    // 1,000 SPDY streams on one session.
    let url = exec_url(&d, exec_req(&id, &["sleep", "600"], true, false)).await;
    let c = concord::stream::client::SpdyCommand::start(
        &url,
        &["v4.channel.k8s.io"],
        true,
        true,
        true,
        false,
    )
    .await
    .unwrap()
    .unwrap();
    let (mut opened, mut refused) = (0, 0);
    let mut held = Vec::new();
    for _ in 0..1000 {
        match tokio::time::timeout(
            Duration::from_secs(5),
            c.client.open(&[("streamtype", "stdin")]),
        )
        .await
        {
            Ok(Ok(mut s)) => {
                // A refused stream is reset right after its SYN: it reads its end at once.
                match tokio::time::timeout(Duration::from_millis(20), s.read()).await {
                    Ok(None) => refused += 1,
                    _ => {
                        opened += 1;
                        held.push(s);
                    }
                }
            }
            _ => refused += 1,
        }
    }
    let t = probe(&mut peak).await;
    slowest = slowest.max(t);
    println!("1000 SPDY streams: {opened} held open, {refused} refused");
    assert!(
        opened <= concord::stream::spdy::MAX_STREAMS,
        "{opened} streams open on one connection"
    );
    drop(held);
    drop(c);

    // 20,000 idle connections.
    let port: u16 = url
        .split("://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .and_then(|hp| hp.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .unwrap();
    let helper = std::process::Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import socket, sys\nheld = []\nfor _ in range(10000):\n    try:\n        held.append(socket.create_connection(('127.0.0.1', {port})))\n    except OSError:\n        pass\nprint(len(held), flush=True)\nsys.stdin.read()\n"
        ))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let mut conns = Vec::new();
    let mut failed = 0;
    for i in 0..10_000 {
        match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            Ok(s) => conns.push(s),
            Err(_) => failed += 1,
        }
        if i % 2000 == 0 {
            let t = probe(&mut peak).await;
            slowest = slowest.max(t);
        }
    }
    let mut helper = helper;
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(helper.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let helper_made: usize = line.trim().parse().unwrap_or(0);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t = probe(&mut peak).await;
    slowest = slowest.max(t);
    // The server closed what is over its cap: count what it still holds.
    let mut held_open = 0;
    for s in &conns {
        let mut b = [0u8; 1];
        match s.try_read(&mut b) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => held_open += 1,
            _ => {}
        }
    }
    let fds = std::fs::read_dir(format!("/proc/{}/fd", d.pid()))
        .map(|r| r.count())
        .unwrap_or(0);
    println!(
        "20000 idle connections: {} made ({helper_made} by the helper), {failed} failed, {held_open} of ours held by concord ({fds} fds); RSS {} MiB before, peak {} MiB; slowest ListPodSandbox {slowest:?}",
        conns.len() + helper_made,
        before >> 10,
        peak >> 10
    );
    assert!(
        held_open <= concord::stream::MAX_CONNECTIONS,
        "{held_open} connections held"
    );
    assert!(
        peak < before + (256 << 10),
        "RSS {peak} kB (from {before} kB)"
    );
    assert!(slowest < Duration::from_secs(2), "{slowest:?}");
    assert!(
        fds < concord::stream::MAX_CONNECTIONS + 512,
        "concord holds {fds} descriptors"
    );
    drop(conns);
    drop(helper.stdin.take());
    let _ = helper.wait();
    remove_pod(&d, &pod).await;
}

/// 1,000 port-forward connections (error + data stream pairs, over four SPDY connections) to a
/// pod server that accepts and never reads, each pushed 1 MiB: what the server does not take
/// stays in flow control and the per-connection budget, not in concord's memory, and CRI RPCs
/// keep answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_forwards_to_a_server_that_never_reads_stay_bounded() {
    let d = daemon().await;
    // Every connection gets a `sleep` on its socket: accepted, never read.
    let (pod, _) = pod_with(
        &d,
        "sink",
        "busybox",
        &["nc", "-ll", "-p", "80", "-e", "sleep", "1000"],
    )
    .await;
    let before = common::rss_kb(d.pid());
    let mut clients = Vec::new();
    for _ in 0..4 {
        let url = pf_url(&d, pod.clone()).await;
        clients.push(std::sync::Arc::new(
            SpdyClient::connect(&url, &["portforward.k8s.io"])
                .await
                .unwrap()
                .unwrap(),
        ));
    }
    let started = std::time::Instant::now();
    let mut pushes = Vec::new();
    for i in 0..1000u32 {
        let c = clients[i as usize % 4].clone();
        pushes.push(tokio::spawn(async move {
            let rid = i.to_string();
            let open = async {
                let err = c
                    .open(&[("streamType", "error"), ("port", "80"), ("requestID", &rid)])
                    .await?;
                let data = c
                    .open(&[("streamType", "data"), ("port", "80"), ("requestID", &rid)])
                    .await?;
                Ok::<_, std::io::Error>((err, data))
            };
            let Ok(Ok((err, data))) = tokio::time::timeout(Duration::from_secs(20), open).await
            else {
                return (0u64, None);
            };
            let chunk = vec![b'x'; 64 << 10];
            let mut sent = 0u64;
            let _ = tokio::time::timeout(Duration::from_secs(15), async {
                while sent < 1 << 20 && data.writer().write(&chunk).await.is_ok() {
                    sent += chunk.len() as u64;
                }
            })
            .await;
            (sent, Some((err, data)))
        }));
    }
    let mut sent = 0u64;
    let mut opened = 0;
    let mut held = Vec::new();
    for p in pushes {
        let (n, streams) = p.await.unwrap();
        sent += n;
        if let Some(s) = streams {
            opened += 1;
            held.push(s);
        }
    }
    let rss = common::rss_kb(d.pid());
    let t = std::time::Instant::now();
    d.runtime()
        .await
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .unwrap();
    let answered = t.elapsed();
    println!(
        "{opened} forwards opened, {} MiB pushed in {:?} (the server reads none); concord RSS {} MiB before, {} MiB after; ListPodSandbox in {answered:?}",
        sent >> 20,
        started.elapsed(),
        before >> 10,
        rss >> 10
    );
    assert!(opened >= 990, "{opened} forwards opened");
    // Four connections' budgets (16 MiB each) and buffers, not the 1,000 MiB pushed at it.
    assert!(
        rss < before + (160 << 10),
        "RSS {rss} kB (from {before} kB)"
    );
    assert!(answered < Duration::from_secs(2), "{answered:?}");
    drop(held);
    drop(clients);
    remove_pod(&d, &pod).await;
}
