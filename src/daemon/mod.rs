//! The daemon: opens the journal, binds the CRI socket, starts the loop, the event stream, the
//! health monitor, the CNI watcher and the metrics listener, serves until a signal, and shuts
//! down in order (stop accepting → finish in-flight RPCs → stop the loop → flush the journal).
//!
//! A critical task (gRPC server, event stream, reconcile loop, journal writer) that ends on its
//! own makes the daemon exit non-zero, so its supervisor restarts it.

pub mod process;
pub mod socket;

/// A crash-test hook: when `CONCORD_CRASH_AT` names this point, concord aborts here (as a
/// SIGKILL would stop it: nothing after this point runs, nothing is cleaned up). The crash tests
/// use it to stop concord inside windows too short to hit with a signal.
pub fn crash_point(name: &str) {
    static AT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    if AT
        .get_or_init(|| std::env::var("CONCORD_CRASH_AT").ok())
        .as_deref()
        == Some(name)
    {
        eprintln!("concord: CONCORD_CRASH_AT={name}: aborting");
        std::process::abort();
    }
}

use std::sync::Arc;
use std::time::Instant;

use futures::future::select_all;
use futures::FutureExt;
use tokio::signal::unix::{signal, SignalKind};
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;

use crate::api::{Cri, Runtime};
use crate::config::Config;
use crate::containerd::{spawn_health_monitor, Containerd};
use crate::events::{self, ContainerdEvent, EventSink};
use crate::image::{ImageSettings, Images};
use crate::journal::{self, Journal, JournalError};
use crate::metrics::{self, Metrics};
use crate::network::cni::Cni;
use crate::network::Network;
use crate::proto;
use crate::reconcile::container::{ContainerReconciler, ContainerSettings};
use crate::reconcile::{
    Controller, Dispatch, RuntimeConfigReconciler, SandboxReconciler, SandboxSettings,
};

/// Why the daemon could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The journal could not be opened.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The CRI socket could not be served.
    #[error(transparent)]
    Socket(#[from] socket::SocketError),
    /// The metrics listener could not bind.
    #[error("cannot listen for metrics on {addr}: {source}")]
    Metrics {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// The streaming server could not bind.
    #[error("cannot listen for streaming on {addr}: {source}")]
    Stream {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    /// A task that must run for the daemon's whole life ended.
    #[error("critical task {0} ended unexpectedly; exiting so the supervisor restarts concord")]
    CriticalTaskEnded(&'static str),
    /// The gRPC server failed.
    #[error("gRPC server failed: {0}")]
    Serve(#[source] tonic::transport::Error),
}

struct Sink {
    controller: Arc<Controller>,
    image_events: crate::image::ImageEvents,
}

impl EventSink for Sink {
    fn event(&self, event: ContainerdEvent) {
        match &event {
            ContainerdEvent::ImageCreate { name }
            | ContainerdEvent::ImageUpdate { name }
            | ContainerdEvent::ImageDelete { name } => {
                self.image_events.send(name);
            }
            _ => self.controller.on_containerd_event(&event),
        }
    }
    fn reconnected(&self) {
        self.controller.resync("event_stream_reconnect");
    }
}

/// Runs concord with a validated config until SIGTERM/SIGINT (Ok) or a failure (Err).
pub async fn run(config: Config) -> Result<(), DaemonError> {
    let started = Instant::now();
    let metrics = Arc::new(Metrics::new());

    // Journal first: a journal we refuse must stop the start before anything else happens.
    let path = config.journal_path();
    let (journal, state, info) = tokio::task::spawn_blocking(move || Journal::open(&path))
        .await
        .expect("journal open task panicked")?;
    tracing::info!(
        path = %journal.path().display(),
        replayed = info.replayed,
        snapshot_seq = info.snapshot_seq,
        last_seq = journal.last_seq(),
        created = info.created,
        "journal opened"
    );

    let listener = socket::bind(&config.listen).await?;

    let serve_stop = CancellationToken::new(); // stop accepting CRI calls
    let loop_stop = CancellationToken::new(); // stop the loop, events, watchers
    let journal_stop = CancellationToken::new(); // flush and close the journal

    let (journal, journal_task) = journal::spawn_writer(
        journal,
        state,
        &info,
        config.journal.compact_after,
        config.runtime.container_events_buffer,
        metrics.clone(),
        journal_stop.clone(),
    );
    let ctd = Containerd::new(
        &config.containerd.address,
        &config.containerd.namespace,
        metrics.clone(),
    );
    let network = Network::new(&config.cni, metrics.clone());
    let images = Images::new(
        ctd.clone(),
        ImageSettings::from_config(&config),
        metrics.clone(),
    );
    let cni = Cni::new(
        config.cni.bin_dirs.clone(),
        config.layout().cni_cache(),
        config.cni.plugin_timeout_seconds,
    )
    .with_metrics(metrics.clone());
    let attachments = crate::attach::Attachments::new(16 * 1024);
    let reconciler = Arc::new(Dispatch {
        runtime_config: RuntimeConfigReconciler::new(network.clone()),
        sandbox: Arc::new(SandboxReconciler::new(
            ctd.clone(),
            images.clone(),
            network.clone(),
            cni,
            journal.clone(),
            SandboxSettings {
                snapshotter: config.containerd.snapshotter.clone(),
                sandbox_image: config.sandbox_image.clone(),
                runtime: config.runtime.clone(),
                layout: config.layout(),
                netns_dir: config.netns_dir.clone(),
            },
            metrics.clone(),
        )),
        container: Arc::new(ContainerReconciler::new(
            ctd.clone(),
            images.clone(),
            journal.clone(),
            ContainerSettings {
                snapshotter: config.containerd.snapshotter.clone(),
                runtime: config.runtime.clone(),
                layout: config.layout(),
                log_writer: std::env::current_exe()
                    .unwrap_or_else(|_| std::path::PathBuf::from("/usr/local/bin/concord")),
                max_log_line: 16 * 1024,
                reconcile_timeout: config.reconcile.timeout_seconds,
            },
            attachments.clone(),
        )),
    });
    let controller = Controller::new(
        journal.clone(),
        reconciler.clone(),
        metrics.clone(),
        config.reconcile.clone(),
        loop_stop.clone(),
    );
    {
        let images = images.clone();
        controller.on_resync(move || {
            let images = images.clone();
            tokio::spawn(async move { images.refresh_all().await });
        });
    }
    {
        // Every resync also looks for what belongs to no record and queues its removal.
        let (sandboxes, containers) = (reconciler.sandbox.clone(), reconciler.container.clone());
        let weak = Arc::downgrade(&controller);
        let journal = journal.clone();
        controller.on_resync(move || {
            let (sandboxes, containers, weak, journal) = (
                sandboxes.clone(),
                containers.clone(),
                weak.clone(),
                journal.clone(),
            );
            tokio::spawn(async move {
                use crate::journal::ObjectKey;
                let found = async {
                    let mut keys: Vec<ObjectKey> = containers
                        .orphans(&journal)
                        .await?
                        .into_iter()
                        .map(ObjectKey::Container)
                        .collect();
                    keys.extend(
                        sandboxes
                            .orphans(&journal)
                            .await?
                            .into_iter()
                            .map(ObjectKey::Sandbox),
                    );
                    Ok::<_, crate::reconcile::ReconcileError>(keys)
                };
                let shims = sandboxes.orphan_shims(&journal).await;
                if shims > 0 {
                    tracing::warn!(count = shims, "orphaned shims killed");
                }
                match found.await {
                    Ok(keys) => {
                        for key in keys {
                            let Some(c) = weak.upgrade() else { return };
                            tracing::warn!(object = %key, "orphaned resources found; removing them");
                            c.wake(key);
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "orphan scan skipped"),
                }
            });
        });
    }
    let controller_task = controller.spawn();
    controller.resync("start");
    let syncer_task = images.spawn_syncer(loop_stop.clone());
    let stats = crate::stats::Collector::new(
        journal.clone(),
        images.clone(),
        config.stats.interval_seconds,
        metrics.clone(),
    );
    let stats_task = stats.spawn(loop_stop.clone());

    let process_start = std::time::SystemTime::now();
    let on_ready = {
        let c = controller.clone();
        let ctd = ctd.clone();
        let first = std::sync::atomic::AtomicBool::new(true);
        move || {
            if first.swap(false, std::sync::atomic::Ordering::SeqCst) {
                // Leases of a previous concord process (killed mid-pull or mid-load) protect
                // half-written content and snapshots: release them now, not at their expiry.
                let ctd = ctd.clone();
                tokio::spawn(async move { release_stale_leases(&ctd, process_start).await });
            }
            c.resync("containerd_ready")
        }
    };
    let (health, health_task) = spawn_health_monitor(
        ctd.clone(),
        config.containerd.health_interval_seconds,
        metrics.clone(),
        loop_stop.clone(),
        on_ready,
    );
    let events_task = events::spawn(
        ctd.clone(),
        metrics.clone(),
        Arc::new(Sink {
            controller: controller.clone(),
            image_events: images.spawn_event_applier(),
        }),
        loop_stop.clone(),
    );
    let cni_task = network.spawn_watcher(config.cni.rescan_interval_seconds, loop_stop.clone());
    let metrics_task = match config.metrics_address {
        Some(addr) => {
            let (bound, task) = metrics::serve(addr, metrics.clone(), loop_stop.clone())
                .await
                .map_err(|source| DaemonError::Metrics {
                    addr: addr.to_string(),
                    source,
                })?;
            tracing::info!(address = %bound, "metrics listener on http://{bound}/metrics");
            Some(task)
        }
        None => None,
    };

    let stream_addr = config.stream_address;
    let tls = match (&config.stream_tls_cert_file, &config.stream_tls_key_file) {
        (Some(cert), Some(key)) => {
            Some(
                crate::stream::tls_config(cert, key).map_err(|e| DaemonError::Stream {
                    addr: stream_addr.to_string(),
                    source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
                })?,
            )
        }
        _ => None,
    };
    let (stream, stream_task) = crate::stream::StreamServer::bind(
        stream_addr,
        config.stream_token_ttl_seconds,
        tls,
        crate::stream::Context {
            containerd: ctd.clone(),
            journal: journal.clone(),
            layout: config.layout(),
            metrics: metrics.clone(),
            idle_timeout: config.stream_idle_timeout_seconds,
            attachments: attachments.clone(),
        },
        serve_stop.clone(),
    )
    .await
    .map_err(|source| DaemonError::Stream {
        addr: stream_addr.to_string(),
        source,
    })?;
    tracing::info!(url = stream.base_url(), "streaming server listening");

    let runtime = Arc::new(Runtime {
        config: config.clone(),
        journal,
        controller: controller.clone(),
        containerd: ctd,
        health,
        network,
        images,
        metrics: metrics.clone(),
        stats,
        stream,
        attachments,
        stopping: serve_stop.clone(),
    });
    let cri = Cri(runtime);
    let server = tonic::transport::Server::builder()
        .add_service(k8s_cri::v1::runtime_service_server::RuntimeServiceServer::new(cri.clone()))
        .add_service(k8s_cri::v1::image_service_server::ImageServiceServer::new(
            cri.clone(),
        ))
        .add_service(proto::images_server::ImagesServer::new(cri.clone()))
        .add_service(proto::introspection_server::IntrospectionServer::new(cri))
        .serve_with_incoming_shutdown(
            UnixListenerStream::new(listener),
            serve_stop.clone().cancelled_owned(),
        );
    let mut server_task = tokio::spawn(server);
    tracing::info!(
        socket = %config.listen.display(),
        containerd = %config.containerd.address.display(),
        namespace = %config.containerd.namespace,
        startup = ?started.elapsed(),
        "concord is serving CRI"
    );

    let mut sigterm = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;

    // Wait for a signal or for a critical task to end on its own.
    let mut critical = vec![
        named("event stream", events_task),
        named("reconcile loop", controller_task),
        named("journal writer", journal_task),
    ];
    let outcome: Result<(), DaemonError> = tokio::select! {
        _ = sigterm.recv() => { tracing::info!("SIGTERM: shutting down"); Ok(()) }
        _ = sigint.recv() => { tracing::info!("SIGINT: shutting down"); Ok(()) }
        r = &mut server_task => Err(match r {
            Ok(Err(e)) => DaemonError::Serve(e),
            _ => DaemonError::CriticalTaskEnded("gRPC server"),
        }),
        (name, _, _) = select_all(critical.iter_mut()) => Err(DaemonError::CriticalTaskEnded(name.unwrap_or("unknown"))),
    };
    if let Err(e) = &outcome {
        tracing::error!(error = %e, "shutting down");
    }

    // A second signal forces the exit.
    tokio::spawn(async move {
        tokio::select! {
            _ = sigterm.recv() => {}
            _ = sigint.recv() => {}
        }
        tracing::warn!("second signal: exiting now");
        std::process::exit(130);
    });

    // Stop accepting, let in-flight RPCs finish (bounded), then the loop, then the journal.
    serve_stop.cancel();
    if !server_task.is_finished()
        && tokio::time::timeout(config.shutdown_grace_seconds, &mut server_task)
            .await
            .is_err()
    {
        tracing::warn!(grace = ?config.shutdown_grace_seconds, "in-flight RPCs did not finish in time");
        server_task.abort();
    }
    loop_stop.cancel();
    let (writer, rest): (Vec<_>, Vec<_>) = critical
        .into_iter()
        .partition(|c| c.name == "journal writer");
    for task in rest {
        let _ = task.await;
    }
    let _ = health_task.await;
    let _ = cni_task.await;
    let _ = syncer_task.await;
    let _ = stats_task.await;
    let _ = stream_task.await;
    if let Some(t) = metrics_task {
        let _ = t.await;
    }
    // Everything that could record events has stopped: flush and close the journal.
    journal_stop.cancel();
    for task in writer {
        let _ = task.await;
    }
    std::fs::remove_file(&config.listen).ok();
    tracing::info!("concord stopped");
    outcome
}

/// Deletes the concord-owned leases made before this process started (by a concord that died).
async fn release_stale_leases(ctd: &Containerd, process_start: std::time::SystemTime) {
    match ctd.list_owned_leases(process_start).await {
        Ok(ids) => {
            for id in ids {
                match ctd.delete_lease_sync(&id, true).await {
                    Ok(()) => {
                        tracing::info!(lease = %id, "released a lease left by a previous concord")
                    }
                    Err(e) => {
                        tracing::warn!(lease = %id, error = %e, "cannot release a stale lease")
                    }
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot list leases"),
    }
}

/// A task's join handle with a name, resolving to that name when the task ends.
struct Named {
    name: &'static str,
    handle: tokio::task::JoinHandle<()>,
}

fn named(name: &'static str, handle: tokio::task::JoinHandle<()>) -> Named {
    Named { name, handle }
}

impl std::future::Future for Named {
    type Output = Option<&'static str>;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let name = self.name;
        self.handle.poll_unpin(cx).map(|_| Some(name))
    }
}
