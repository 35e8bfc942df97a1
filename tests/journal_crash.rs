//! The journal across crashes: every acknowledged intent survives `kill -9`, and the daemon
//! answers within a second of its restart.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::Daemon;
use concord::cri;

fn update(cidr: String) -> cri::UpdateRuntimeConfigRequest {
    cri::UpdateRuntimeConfigRequest {
        runtime_config: Some(cri::RuntimeConfig {
            network_config: Some(cri::NetworkConfig { pod_cidr: cidr }),
        }),
    }
}

fn cidr(n: u64) -> String {
    format!("10.{}.{}.0/24", (n / 256) % 256, n % 256)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_intents_survive_kill_9_during_concurrent_writes() {
    let mut d = Daemon::new();
    d.extra.push("--journal-compact-after=50".into());
    d.start().await;

    // Four clients record distinct intents as fast as they can; count the acknowledgements.
    let acked = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(1));
    let mut writers = Vec::new();
    for _ in 0..4 {
        let mut rt = d.runtime().await;
        let acked = acked.clone();
        let next = next.clone();
        writers.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::SeqCst);
                match rt.update_runtime_config(update(cidr(n))).await {
                    Ok(_) => {
                        acked.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(_) => break,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    d.kill9();
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.load(Ordering::SeqCst);
    assert!(
        acked > 20,
        "only {acked} intents were acknowledged before the kill"
    );

    let ready_in = d.start().await;
    println!(
        "{acked} intents acknowledged before kill -9; concord answered {ready_in:?} after restart"
    );
    assert!(
        ready_in < Duration::from_secs(1),
        "answered only after {ready_in:?}"
    );
    let o = common::runtime_config_object(&d).await;
    assert!(
        o.generation >= acked,
        "journal holds {} intents, {acked} were acknowledged",
        o.generation
    );
    let mut i = d.introspection().await;
    let info = i
        .journal_info(concord::proto::JournalInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(info.last_seq >= acked);
    assert!(info.snapshot_seq > 0, "compaction ran: {info:?}");
    assert!(
        info.events_since_snapshot < 50 + 4,
        "journal bounded by compaction: {info:?}"
    );
}

#[tokio::test]
async fn the_last_acknowledged_intent_is_the_state_after_kill_9() {
    let mut d = Daemon::new();
    d.start().await;
    let mut rt = d.runtime().await;
    let mut last = String::new();
    for n in 0..30 {
        last = cidr(1000 + n);
        rt.update_runtime_config(update(last.clone()))
            .await
            .unwrap();
    }
    d.kill9();
    d.start().await;
    let o = common::runtime_config_object(&d).await;
    assert_eq!(o.generation, 30);
    assert!(o.desired.contains(&last), "{o:?} should hold {last}");
}
