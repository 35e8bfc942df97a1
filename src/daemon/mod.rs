//! The daemon: opens the journal, binds the CRI socket, starts the loop, the event stream, the
//! health monitor, the CNI watcher and the metrics listener, serves until a signal, and shuts
//! down in order (stop accepting → finish in-flight RPCs → stop the loop → flush the journal).
//!
//! A critical task (gRPC server, event stream, reconcile loop, journal writer) that ends on its
//! own makes the daemon exit non-zero, so its supervisor restarts it.

pub mod logging;
pub mod notify;
pub mod otlp;
pub mod process;
pub mod reload;
pub mod socket;

use std::sync::Arc;
use std::time::Instant;

use futures::future::select_all;
use futures::FutureExt;
use tokio::signal::unix::{signal, SignalKind};
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;

use crate::api::{Cri, Server};
use crate::config::Config;
use crate::containerd::{spawn_health_monitor, Containerd, HealthWatch};
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
    containers: Arc<ContainerReconciler>,
    image_events: crate::image::ImageEvents,
    health: HealthWatch,
}

impl EventSink for Sink {
    fn event(&self, event: ContainerdEvent) {
        match &event {
            ContainerdEvent::ImageCreate { name }
            | ContainerdEvent::ImageUpdate { name }
            | ContainerdEvent::ImageDelete { name } => {
                self.image_events.send(name);
            }
            ContainerdEvent::TaskOom { container_id } => {
                self.containers.oom_reported(container_id);
                self.controller.on_containerd_event(&event);
            }
            _ => self.controller.on_containerd_event(&event),
        }
    }
    fn reconnected(&self) {
        // containerd answers again: say so now, not at the next periodic health check, which
        // may be an interval away (calls that need containerd are refused until it is seen).
        self.health.recheck();
        self.controller.resync("event_stream_reconnect");
    }
}

/// The three stages of a shutdown, each cancelled after the one before has finished.
#[derive(Default)]
struct Stops {
    /// Stop accepting CRI calls (and streaming sessions).
    serve: CancellationToken,
    /// Stop the loop, the event stream, the watchers and the listeners.
    r#loop: CancellationToken,
    /// Flush and close the journal.
    journal: CancellationToken,
}

/// What the daemon is made of: built once at start, shared by the server and the background tasks.
struct Parts {
    metrics: Arc<Metrics>,
    journal: journal::JournalHandle,
    ctd: Containerd,
    network: Arc<Network>,
    images: Arc<Images>,
    attachments: Arc<crate::attach::Attachments>,
    controller: Arc<Controller>,
}

/// The daemon's tasks: `critical` ones end the daemon when they end on their own.
struct Tasks {
    critical: Vec<Named>,
    background: Vec<tokio::task::JoinHandle<()>>,
}

/// Runs concord with a validated config until SIGTERM/SIGINT (Ok) or a failure (Err); SIGHUP
/// applies the config again through `reload`.
pub async fn run(config: Config, reload: reload::Reload) -> Result<(), DaemonError> {
    let started = Instant::now();
    let metrics = Arc::new(Metrics::new());
    metrics.init_handlers(&config.runtime);
    let stops = Stops::default();
    // Handlers before the socket: a SIGTERM that arrives once a client has been answered must
    // shut down cleanly, never kill the process with the default action.
    let mut sigterm = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    let sighup = signal(SignalKind::hangup()).map_err(DaemonError::Signals)?;

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
    let (journal, journal_task) = journal::spawn_writer(
        journal,
        state,
        &info,
        config.journal.compact_after,
        config.runtime.container_events_buffer,
        metrics.clone(),
        stops.journal.clone(),
    );

    let (parts, dispatch) = build(&config, journal, metrics, &stops);
    let (mut tasks, health) = spawn_background(&config, &parts, &dispatch, &stops).await?;
    tasks.critical.push(named("journal writer", journal_task));
    tasks.background.extend(
        reload
            .logging
            .spawn_exporter(parts.metrics.clone(), stops.r#loop.clone()),
    );
    tasks.background.push(reload::spawn(
        reload,
        sighup,
        config.clone(),
        parts.network.clone(),
        stops.r#loop.clone(),
    ));
    let mut server_task = serve(&config, parts, health, listener, &stops, &mut tasks).await?;
    tracing::info!(
        socket = %config.listen.display(),
        containerd = %config.containerd.address.display(),
        namespace = %config.containerd.namespace,
        startup = ?started.elapsed(),
        "concord is serving CRI"
    );
    // The socket is bound and the journal replayed: kubelet (ordered after us) may start.
    notify::tell(&format!(
        "READY=1\nSTATUS=serving CRI on {}",
        config.listen.display()
    ));

    // Wait for a signal or for a critical task to end on its own.
    let outcome: Result<(), DaemonError> = tokio::select! {
        _ = sigterm.recv() => { tracing::info!("SIGTERM: shutting down"); Ok(()) }
        _ = sigint.recv() => { tracing::info!("SIGINT: shutting down"); Ok(()) }
        r = &mut server_task => Err(match r {
            Ok(Err(e)) => DaemonError::Serve(e),
            _ => DaemonError::CriticalTaskEnded("gRPC server"),
        }),
        (name, _, _) = select_all(tasks.critical.iter_mut()) => Err(DaemonError::CriticalTaskEnded(name.unwrap_or("unknown"))),
    };
    if let Err(e) = &outcome {
        tracing::error!(error = %e, "shutting down");
    }
    notify::tell("STOPPING=1");
    // A second signal forces the exit.
    tokio::spawn(async move {
        tokio::select! {
            _ = sigterm.recv() => {}
            _ = sigint.recv() => {}
        }
        tracing::warn!("second signal: exiting now");
        std::process::exit(130);
    });
    shutdown(&config, server_task, tasks, stops).await;
    outcome
}

/// Builds the clients and the reconcile loop (nothing runs yet).
fn build(
    config: &Config,
    journal: journal::JournalHandle,
    metrics: Arc<Metrics>,
    stops: &Stops,
) -> (Parts, Arc<Dispatch>) {
    let ctd = Containerd::new(
        &config.containerd.address,
        &config.containerd.namespace,
        metrics.clone(),
    );
    let network = Network::new(&config.cni, metrics.clone());
    let images = Images::new(
        ctd.clone(),
        ImageSettings::from_config(config),
        metrics.clone(),
    );
    let cni = Cni::new(
        config.cni.bin_dirs.clone(),
        config.layout().cni_cache(),
        config.cni.plugin_timeout_seconds,
    )
    .with_metrics(metrics.clone());
    let attachments = crate::attach::Attachments::new(16 * 1024);
    let dispatch = Arc::new(Dispatch {
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
                log_writer: log_writer_binary(),
                max_log_line: crate::logwriter::MAX_LINE,
                reconcile_timeout: config.reconcile.timeout_seconds,
                metrics: metrics.clone(),
            },
            attachments.clone(),
        )),
    });
    let controller = Controller::new(
        journal.clone(),
        dispatch.clone(),
        metrics.clone(),
        config.reconcile.clone(),
        stops.r#loop.clone(),
    );
    let parts = Parts {
        metrics,
        journal,
        ctd,
        network,
        images,
        attachments,
        controller,
    };
    (parts, dispatch)
}

/// Starts the loop and everything that feeds it or reads from it: the resync hooks, the image
/// syncer, stats, the containerd health monitor, the event stream, the CNI watcher, metrics.
async fn spawn_background(
    config: &Config,
    parts: &Parts,
    dispatch: &Dispatch,
    stops: &Stops,
) -> Result<(Tasks, HealthWatch), DaemonError> {
    let (controller, images, metrics) = (&parts.controller, &parts.images, &parts.metrics);
    let failing = Arc::downgrade(controller);
    metrics.on_scrape(move |m| {
        if let Some(c) = failing.upgrade() {
            m.count_failing(&c.failing_by_kind());
        }
    });
    {
        let images = images.clone();
        controller.on_resync(move || {
            let images = images.clone();
            tokio::spawn(async move { images.refresh_all().await });
        });
    }
    crate::reconcile::orphans::scan_on_resync(
        controller,
        dispatch.sandbox.clone(),
        dispatch.container.clone(),
        parts.journal.clone(),
    );
    let controller_task = controller.spawn();
    controller.resync("start");
    let mut background = vec![images.spawn_syncer(stops.r#loop.clone())];
    let process_start = std::time::SystemTime::now();
    let on_ready = {
        let (c, ctd) = (controller.clone(), parts.ctd.clone());
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
        parts.ctd.clone(),
        config.containerd.health_interval_seconds,
        metrics.clone(),
        stops.r#loop.clone(),
        on_ready,
    );
    background.push(health_task);
    let events_task = events::spawn(
        parts.ctd.clone(),
        metrics.clone(),
        Arc::new(Sink {
            controller: controller.clone(),
            containers: dispatch.container.clone(),
            image_events: images.spawn_event_applier(),
            health: health.clone(),
        }),
        stops.r#loop.clone(),
    );
    background.push(
        parts
            .network
            .spawn_watcher(config.cni.rescan_interval_seconds, stops.r#loop.clone()),
    );
    if let Some(addr) = config.metrics_address {
        let (bound, task) = metrics::serve(addr, metrics.clone(), stops.r#loop.clone())
            .await
            .map_err(|source| DaemonError::Metrics {
                addr: addr.to_string(),
                source,
            })?;
        tracing::info!(address = %bound, "metrics listener on http://{bound}/metrics");
        background.push(task);
    }
    let tasks = Tasks {
        critical: vec![
            named("event stream", events_task),
            named("reconcile loop", controller_task),
        ],
        background,
    };
    Ok((tasks, health))
}

/// Binds the streaming server and serves the CRI socket; the streaming task joins `tasks`.
async fn serve(
    config: &Config,
    parts: Parts,
    health: HealthWatch,
    listener: tokio::net::UnixListener,
    stops: &Stops,
    tasks: &mut Tasks,
) -> Result<ServerTask, DaemonError> {
    let stream_addr = config.stream_address;
    let stream_error = |source| DaemonError::Stream {
        addr: stream_addr.to_string(),
        source,
    };
    let tls =
        match (&config.stream_tls_cert_file, &config.stream_tls_key_file) {
            (Some(cert), Some(key)) => Some(crate::stream::tls_config(cert, key).map_err(|e| {
                stream_error(std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
            })?),
            _ => None,
        };
    let (stream, stream_task) = crate::stream::StreamServer::bind(
        stream_addr,
        config.stream_token_ttl_seconds,
        tls,
        crate::stream::Context {
            containerd: parts.ctd.clone(),
            journal: parts.journal.clone(),
            layout: config.layout(),
            metrics: parts.metrics.clone(),
            idle_timeout: config.stream_idle_timeout_seconds,
            attachments: parts.attachments.clone(),
        },
        stops.serve.clone(),
    )
    .await
    .map_err(stream_error)?;
    tracing::info!(url = stream.base_url(), "streaming server listening");
    tasks.background.push(stream_task);

    let stats = crate::stats::Collector::new(
        parts.journal.clone(),
        parts.images.clone(),
        config.stats.interval_seconds,
        parts.metrics.clone(),
        config.runtime.cgroup_driver,
    );
    tasks.background.push(stats.spawn(stops.r#loop.clone()));
    let cri = Cri(Arc::new(Server {
        config: config.clone(),
        journal: parts.journal,
        controller: parts.controller,
        containerd: parts.ctd,
        health,
        network: parts.network,
        images: parts.images,
        metrics: parts.metrics,
        stats,
        stream,
        attachments: parts.attachments,
        stopping: stops.serve.clone(),
        list_cache: Default::default(),
    }));
    let server = tonic::transport::Server::builder()
        .trace_fn(otlp::remote_parent)
        .add_service(crate::cri::runtime_service_server::RuntimeServiceServer::new(cri.clone()))
        .add_service(crate::cri::image_service_server::ImageServiceServer::new(
            cri.clone(),
        ))
        .add_service(proto::images_server::ImagesServer::new(cri.clone()))
        .add_service(proto::introspection_server::IntrospectionServer::new(cri))
        .serve_with_incoming_shutdown(
            UnixListenerStream::new(listener),
            stops.serve.clone().cancelled_owned(),
        );
    Ok(tokio::spawn(server))
}

type ServerTask = tokio::task::JoinHandle<Result<(), tonic::transport::Error>>;

/// Stops accepting, lets in-flight RPCs finish (bounded), then stops the loop and the
/// background tasks, then flushes and closes the journal.
async fn shutdown(config: &Config, mut server_task: ServerTask, tasks: Tasks, stops: Stops) {
    stops.serve.cancel();
    if !server_task.is_finished()
        && tokio::time::timeout(config.shutdown_grace_seconds, &mut server_task)
            .await
            .is_err()
    {
        tracing::warn!(grace = ?config.shutdown_grace_seconds, "in-flight RPCs did not finish in time");
        server_task.abort();
    }
    stops.r#loop.cancel();
    let (writer, rest): (Vec<_>, Vec<_>) = tasks
        .critical
        .into_iter()
        .partition(|c| c.name == "journal writer");
    for task in rest {
        let _ = task.await;
    }
    for task in tasks.background {
        let _ = task.await;
    }
    // Everything that could record events has stopped: flush and close the journal.
    stops.journal.cancel();
    for task in writer {
        let _ = task.await;
    }
    std::fs::remove_file(&config.listen).ok();
    tracing::info!("concord stopped");
}
/// The program containerd's shims run for containers' logs: `concord-log-writer` beside this
/// binary (small: hundreds run on a dense node), else this binary, which is one too.
fn log_writer_binary() -> std::path::PathBuf {
    let me = std::env::current_exe()
        .unwrap_or_else(|_| std::path::PathBuf::from("/usr/local/bin/concord"));
    let sibling = me.with_file_name("concord-log-writer");
    if sibling.is_file() {
        sibling
    } else {
        me
    }
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
