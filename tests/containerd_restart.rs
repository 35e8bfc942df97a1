//! containerd restarted under a running concord: Status turns not-ready and back, the event
//! stream reconnects (counted), and a resync runs. Uses a containerd of the test's own.

mod common;

use std::time::{Duration, Instant};

use common::{eventually, Daemon, OwnContainerd};
use concord::cri;

async fn runtime_ready(d: &Daemon) -> bool {
    let s = d
        .runtime()
        .await
        .status(cri::StatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    s.status
        .unwrap()
        .conditions
        .iter()
        .any(|c| c.r#type == "RuntimeReady" && c.status)
}

fn absent_image() -> cri::RemoveImageRequest {
    cri::RemoveImageRequest {
        image: Some(cri::ImageSpec {
            image: "127.0.0.1:5000/concord/never-pulled:1".into(),
            ..Default::default()
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_restart_turns_status_not_ready_and_back_and_the_stream_reconnects() {
    let mut ctd = OwnContainerd::start();
    let mut d = Daemon::new();
    d.containerd = ctd.socket.clone();
    d.start().await;
    eventually(Duration::from_secs(10), "ready and streaming", || async {
        runtime_ready(&d).await
            && d.metric("concord_containerd_event_stream_connected", &[])
                .await
                == 1.0
    })
    .await;
    let reconnects = d
        .metric("concord_containerd_event_stream_reconnects_total", &[])
        .await;
    let resyncs = d
        .metric("concord_resyncs_total", &["event_stream_reconnect"])
        .await;

    ctd.stop();
    let down = eventually(Duration::from_secs(10), "RuntimeReady false", || async {
        !runtime_ready(&d).await
    })
    .await;
    let s = d
        .runtime()
        .await
        .status(cri::StatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    let cond = s
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.r#type == "RuntimeReady")
        .unwrap();
    assert_eq!(cond.reason, "ContainerdNotReady");
    assert!(
        cond.message.contains(&ctd.socket.display().to_string()),
        "{}",
        cond.message
    );
    // An RPC that needs containerd is refused meanwhile, naming it; Version still answers.
    let refused = d
        .images()
        .await
        .remove_image(absent_image())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("RemoveImage needs containerd, which is not ready"),
        "{}",
        refused.message()
    );
    d.runtime()
        .await
        .version(cri::VersionRequest::default())
        .await
        .unwrap();

    ctd.restart();
    let back = Instant::now();
    // The first call after containerd is back is served, not refused for the gap until the next
    // periodic health check (the gate asks for a fresh check and waits for it).
    d.images()
        .await
        .remove_image(absent_image())
        .await
        .unwrap_or_else(|e| panic!("first call after containerd came back: {e:?}"));
    let served = back.elapsed();
    let ready = eventually(Duration::from_secs(10), "RuntimeReady again", || async {
        runtime_ready(&d).await
    })
    .await;
    let stream = eventually(
        Duration::from_secs(10),
        "event stream reconnected",
        || async {
            d.metric("concord_containerd_event_stream_reconnects_total", &[])
                .await
                > reconnects
        },
    )
    .await;
    eventually(Duration::from_secs(5), "resync after reconnect", || async {
        d.metric("concord_resyncs_total", &["event_stream_reconnect"])
            .await
            > resyncs
    })
    .await;
    println!(
        "not-ready seen {down:?} after containerd stopped; after containerd restarted, the first call served \
         in {served:?}, ready again {ready:?} and stream reconnected {stream:?} (total {:?})",
        back.elapsed()
    );
    assert!(
        d.metric("concord_containerd_event_stream_connected", &[])
            .await
            == 1.0
    );
    assert!(
        d.metric("concord_resyncs_total", &["containerd_ready"])
            .await
            >= 2.0
    );
}
