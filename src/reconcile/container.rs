//! Reconciles a container: snapshot + containerd container towards Created; a task whose stdio
//! goes to concord's log writer towards Running; stop signal, grace period and SIGKILL towards
//! Exited; task, container, snapshot and state away for Removed. As for sandboxes, every step
//! checks what exists first and teardown is unconditional.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::ports::ContainerdPort;
use super::{ReconcileError, Reconciled};
use crate::containerd::{
    cri_labels, ContainerRuntime, Containerd, SnapshotKind, TaskIo, TaskStatus, KIND_CONTAINER,
    KIND_LABEL,
};
use crate::image::Images;
use crate::journal::{
    ContainerDesired, ContainerRecord, ContainerUser, Event, JournalHandle, ObjectKey, State,
};
use crate::oci::container::{container_spec, ContainerContext};
use containerd_client::types::Mount;

mod image_volumes;
pub use image_volumes::view_key as image_volume_key;

/// Settings containers are made with.
#[derive(Debug, Clone)]
pub struct ContainerSettings {
    pub snapshotter: String,
    pub runtime: crate::config::RuntimeConfig,
    /// Where per-container and per-sandbox files go.
    pub layout: crate::state_layout::StateLayout,
    /// The program the shim runs as the log writer (concord itself).
    pub log_writer: PathBuf,
    /// Longest log line written as one entry; longer ones are split into partial entries.
    pub max_log_line: usize,
    /// `reconcile.timeout_seconds`: one pass of a stop waits at most three quarters of it for
    /// the grace period, so that its kill and exit record finish inside the pass.
    pub reconcile_timeout: Duration,
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// The container reconciler: containerd through its port (the real one by default; a fake in
/// `container_tests.rs`).
pub struct ContainerReconciler<C = Containerd> {
    ctd: C,
    images: Arc<Images>,
    journal: JournalHandle,
    settings: ContainerSettings,
    attachments: Arc<crate::attach::Attachments>,
    /// Stops in progress: when this concord sent the stop signal's grace period ends. The
    /// grace starts when the signal is sent (not when the intent was queued), is never started
    /// again by a retry, and a later stop intent with an earlier end shortens it.
    stopping: parking_lot::Mutex<std::collections::HashMap<String, StopClock>>,
    /// Which containers this process creates for the first time.
    attempts: super::FirstAttempts,
    /// The rootfs mounts of the containers this process created, until their first start:
    /// that start needs no `Tasks.Get` (no task of it can exist yet) and no `Snapshots.Mounts`.
    created: parking_lot::Mutex<std::collections::HashMap<String, Vec<Mount>>>,
    /// Containers containerd reported an OOM kill of (`/tasks/oom`) whose exit is not recorded
    /// yet: under the systemd driver the scope's cgroup (and its OOM counter) is gone as soon as
    /// its last process exits, before the exit can be recorded.
    oom_events: parking_lot::Mutex<std::collections::HashSet<String>>,
    /// The leases holding new snapshots until their container exists, one made ahead.
    leases: super::lease::Leases<C>,
    /// Created containers of a previous process looked at for a start whose intent was lost.
    lost_start_checked: parking_lot::Mutex<std::collections::HashSet<String>>,
}

/// One stop in progress.
#[derive(Debug, Clone, Copy)]
struct StopClock {
    /// The record's generation the signal was sent for.
    generation: u64,
    /// On tokio's clock (the real one in the daemon; paused in the unit tests).
    deadline: tokio::time::Instant,
}

/// Exit code of a container whose start failed (as containerd's CRI answers).
const START_FAILED_EXIT: i32 = 128;

use crate::clock::now_nanos;

/// Query-string encoding for the log writer's arguments.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'/' | b'-' | b'_' | b'.' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl<C: ContainerdPort> ContainerReconciler<C> {
    pub fn new(
        ctd: C,
        images: Arc<Images>,
        journal: JournalHandle,
        settings: ContainerSettings,
        attachments: Arc<crate::attach::Attachments>,
    ) -> Self {
        let attempts = super::FirstAttempts::new(journal.state().containers.keys().cloned());
        ContainerReconciler {
            attempts,
            leases: super::lease::Leases::new(ctd.clone(), "container"),
            lost_start_checked: Default::default(),
            ctd,
            images,
            journal,
            settings,
            attachments,
            stopping: Default::default(),
            oom_events: Default::default(),
            created: Default::default(),
        }
    }

    /// containerd reported that the kernel OOM-killed a process of container `id`.
    pub fn oom_reported(&self, id: &str) {
        self.oom_events.lock().insert(id.to_string());
    }

    /// A container whose stdin concord keeps open itself (stdin without a TTY).
    fn attached_stdio(rec: &ContainerRecord) -> bool {
        rec.config.stdin && !rec.config.tty
    }

    /// The container cannot be made as given (its image or spec).
    fn refused(id: &str, step: &'static str, message: impl ToString) -> ReconcileError {
        ReconcileError::Refused {
            kind: "container",
            id: id.into(),
            step,
            message: message.to_string(),
        }
    }

    fn err(id: &str, step: &'static str, message: impl ToString) -> ReconcileError {
        ReconcileError::Container {
            id: id.to_string(),
            step,
            message: message.to_string(),
        }
    }

    /// The log writer's pid file for container `id`.
    pub fn log_writer_pidfile(&self, id: &str) -> PathBuf {
        self.settings.layout.log_writer_pidfile(id)
    }

    /// Container ids that carry concord's owner label in containerd (container or snapshot)
    /// but have no record: orphans of a lost journal or an older concord. Lists first, then
    /// reads the journal (a record is written before anything it names exists).
    pub async fn orphans(&self, journal: &JournalHandle) -> Result<Vec<String>, ReconcileError> {
        let mut ids: Vec<String> = self
            .ctd
            .list_owned(&self.settings.snapshotter, "container:")
            .await?
            .into_iter()
            .map(|(_, owner)| owner.trim_start_matches("container:").to_string())
            .filter(|id| id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()))
            .collect();
        ids.sort();
        ids.dedup();
        let state = journal.state();
        ids.retain(|id| !state.containers.contains_key(id));
        Ok(ids)
    }

    /// One reconcile of container `id` against `state`.
    pub async fn reconcile(&self, id: &str, state: &State) -> Result<Reconciled, ReconcileError> {
        let Some(rec) = state.containers.get(id) else {
            self.remove(id).await?;
            return Ok(Reconciled::default());
        };
        let key = ObjectKey::Container(id.into());
        if rec.desired != ContainerDesired::Removed && !rec.created {
            let user = match self.create(rec, state).await {
                Ok(user) => user,
                // Not a failure of the create: tried again, the record stays.
                Err(e @ ReconcileError::Waiting(_)) => return Err(e),
                Err(e) => {
                    // CreateContainer failed: nothing it made may stay; the record goes too.
                    self.remove(id).await?;
                    self.journal
                        .append(vec![Event::ContainerRemoved { id: id.into() }])
                        .await?;
                    crate::lifecycle_info!(
                        *state,
                        &key,
                        reason = "create failed",
                        error = %e,
                        "container removed"
                    );
                    return Err(e);
                }
            };
            // containerd holds the container: a crash that loses this fact finds it there.
            self.journal
                .record(vec![Event::ContainerCreated {
                    id: id.into(),
                    user,
                }])
                .await?;
            crate::crash::crash_point("container-create-recorded");
            crate::lifecycle_info!(*state, &key, image = %rec.image_name, "container created");
        }
        match rec.desired {
            ContainerDesired::Created if self.attempts.replayed(id) => {
                self.adopt_lost_start(rec, state).await?
            }
            ContainerDesired::Created => {}
            ContainerDesired::Running if rec.finished_at != 0 => {}
            ContainerDesired::Running if rec.started_at == 0 => self.start(rec, state).await?,
            ContainerDesired::Running => {
                if !matches!(self.ctd.task_state(id).await?, Some((_, true))) {
                    self.record_exit(rec, state, None).await?;
                } else {
                    // concord restarted under a running container: take its stdio back.
                    self.reattach(rec)?;
                    if rec.resources_updated {
                        // UpdateContainerResources: the limits the record holds, on the live task.
                        let res = rec
                            .config
                            .linux
                            .as_ref()
                            .and_then(|l| l.resources.clone())
                            .unwrap_or_default();
                        self.ctd
                            .update_task(id, &crate::oci::resources::linux_resources(&res))
                            .await?;
                    }
                }
            }
            ContainerDesired::Exited => {
                if rec.started_at != 0 && rec.finished_at == 0 {
                    self.stop(rec).await?;
                    self.record_exit(rec, state, None).await?;
                } else {
                    self.ctd.delete_task(id).await?;
                }
            }
            ContainerDesired::Removed => {
                if rec.started_at != 0 && rec.finished_at == 0 {
                    self.ctd.end_task(id, Duration::from_secs(10)).await?;
                }
                // An exit is recorded only once its task was deleted (a failed start's
                // deletion is best effort: looked for again).
                let ended = rec.finished_at != 0 && rec.reason != "StartError";
                let known = Known {
                    task_gone: ended || rec.started_at != 0,
                    image_volumes: image_volumes::any(rec),
                };
                self.remove_after(id, known).await?;
                // Removed again after a crash that loses this fact: every step finds nothing.
                self.journal
                    .record(vec![Event::ContainerRemoved { id: id.into() }])
                    .await?;
                crate::lifecycle_info!(*state, &key, "container removed");
                return Ok(observed(json!({"state": "removed"})));
            }
        }
        let state = self.journal.state();
        let now = state.containers.get(id).map(|c| c.cri_state());
        Ok(observed(
            json!({ "state": now.map(|s| s.as_str_name()).unwrap_or("GONE") }),
        ))
    }

    /// Snapshot on the image's chain id, then the containerd container with its spec; answers
    /// the identity its process will run as.
    async fn create(
        &self,
        rec: &ContainerRecord,
        state: &State,
    ) -> Result<Option<ContainerUser>, ReconcileError> {
        let id = rec.id.as_str();
        const STEP: &str = "creating the container";
        let sandbox = state
            .sandboxes
            .get(&rec.sandbox_id)
            .filter(|s| s.ready())
            .ok_or_else(|| {
                let why = format!("pod sandbox {} is not ready", rec.sandbox_id);
                Self::err(id, STEP, why)
            })?;
        // After a restart the index may not be loaded yet: an image missing from it then means
        // nothing, and the create waits (a record whose create fact a crash lost is re-created
        // here, and must not be dropped for it).
        let img = self
            .images
            .loaded_index()
            .await
            .find(&rec.image_id)
            .cloned();
        let img = match img {
            Some(img) => img,
            None if !self.images.is_loaded() => {
                return Err(ReconcileError::Waiting(format!(
                    "container {id}: the image index is not loaded from containerd yet"
                )))
            }
            None => {
                return Err(Self::err(
                    id,
                    STEP,
                    format!("image {} is not present", rec.image_id),
                ))
            }
        };
        let handler = self
            .settings
            .runtime
            .handler(&sandbox.runtime_handler)
            .ok_or_else(|| {
                Self::err(
                    id,
                    STEP,
                    "the pod's runtime handler is no longer configured",
                )
            })?;
        let cdi = crate::oci::cdi::resolve(&rec.config, &self.settings.runtime.cdi_spec_dirs)
            .map_err(|e| Self::err(id, STEP, e.to_string()))?;
        let ctx = ContainerContext {
            id,
            sandbox_id: &rec.sandbox_id,
            sandbox: &sandbox.config,
            sandbox_pid: sandbox.pid.unwrap_or(0),
            sandbox_files: self.settings.layout.sandbox(&rec.sandbox_id),
            image_name: &rec.image_name,
            target_pid: target_pid(rec, state),
            volumes_dir: self.settings.layout.container_volumes(id),
            passthrough: crate::oci::annotations::Passthrough::of(handler),
            image_volumes: Default::default(),
            cgroup_driver: self.settings.runtime.cgroup_driver,
            cdi,
        };
        let runtime = ContainerRuntime::of(handler, self.settings.runtime.systemd_cgroup());
        let owner = format!("container:{id}");
        let made = Made {
            lease: self.leases.take(&owner).await?,
            owner,
            // A container this process recorded, tried for the first time, has no snapshot
            // or containerd container to look for yet.
            first: self.attempts.first(id),
        };
        let user = self.create_leased(rec, &img, ctx, &runtime, &made).await;
        // The container holds its snapshot now (or the failed create removed it): the lease
        // ends with `made`, its deletion off the answer's path.
        drop(made);
        user.map(Some)
    }

    /// The snapshot and image volume views (held by `made.lease` until the container
    /// references them), the image's users, the spec, the bind sources and the containerd
    /// container.
    async fn create_leased(
        &self,
        rec: &ContainerRecord,
        img: &crate::image::index::ImageRecord,
        mut ctx: ContainerContext<'_>,
        runtime: &ContainerRuntime,
        made: &Made<C>,
    ) -> Result<ContainerUser, ReconcileError> {
        let id = rec.id.as_str();
        let snapshotter = &self.settings.snapshotter;
        let existing = match made.first {
            true => None,
            false => self.ctd.snapshot_mounts(snapshotter, id).await?,
        };
        let mounts = match existing {
            Some(m) => m,
            None => {
                let (chain, rw) = (&img.resolved.chain_id, SnapshotKind::Active);
                self.ctd
                    .new_snapshot(rw, snapshotter, id, chain, &made.owner, made.lease.id())
                    .await?
            }
        };
        let layout = &self.settings.layout;
        let files = layout.container(id);
        crate::oci::userns::shift_rootfs(id, ctx.sandbox, &mounts, &layout.scratch(), &files)
            .await
            .map_err(|e| Self::err(id, crate::oci::userns::SHIFT_STEP, e))?;
        // User and group names resolve against the image's own /etc files, read inside the
        // image only (bounded, regular files) on a blocking thread.
        const USERS: &str = "reading the image's /etc/passwd and /etc/group";
        let layers = crate::image::layerfs::Layers::of_mounts(&mounts);
        let users = tokio::task::spawn_blocking(move || image_users(&layers))
            .await
            .map_err(|e| Self::err(id, USERS, e))?
            .map_err(|e| Self::refused(id, USERS, e))?;
        ctx.image_volumes = self.prepare_image_volumes(rec, made).await?;
        let spec = container_spec(&rec.config, &img.resolved.config, &ctx, Some(&users))
            .map_err(|e| Self::refused(id, "building the container spec", e))?;
        self.make_bind_sources(rec, &spec)?;
        if made.first || !self.ctd.container_exists(id).await? {
            let mut own: std::collections::HashMap<_, _> = [
                (KIND_LABEL.into(), KIND_CONTAINER.into()),
                (
                    "io.kubernetes.pod-sandbox-id".into(),
                    rec.sandbox_id.clone(),
                ),
            ]
            .into();
            own.extend(image_volumes::gc_labels(rec, snapshotter));
            let image_labels = img.resolved.config.config.as_ref();
            let labels = cri_labels(
                image_labels.and_then(|c| c.labels.as_ref()),
                &rec.config.labels,
                own,
            );
            self.ctd
                .create_container(
                    id,
                    &rec.image_name,
                    runtime,
                    &spec,
                    snapshotter,
                    id,
                    &made.owner,
                    labels,
                )
                .await?;
        }
        if made.first {
            self.created.lock().insert(id.to_string(), mounts);
        }
        Ok(container_user(&spec))
    }

    /// Missing host paths of bind mounts become directories (as kubelet expects), and the
    /// image's volumes get theirs.
    fn make_bind_sources(
        &self,
        rec: &ContainerRecord,
        spec: &oci_spec::runtime::Spec,
    ) -> Result<(), ReconcileError> {
        let volumes_dir = self.settings.layout.container_volumes(&rec.id);
        let binds = spec.mounts().iter().flatten();
        for m in binds.filter(|m| m.typ().as_deref() == Some("bind")) {
            let Some(src) = m.source().as_deref() else {
                continue;
            };
            let ours = src.starts_with(&volumes_dir);
            let user = rec
                .config
                .mounts
                .iter()
                .any(|cm| std::path::Path::new(&cm.host_path) == src);
            if (ours || user) && !src.exists() {
                std::fs::create_dir_all(src).map_err(|e| {
                    Self::err(
                        &rec.id,
                        "creating a mount's host directory",
                        format!("{}: {e}", src.display()),
                    )
                })?;
            }
        }
        Ok(())
    }

    /// The task, its stdio to the log writer, started. A start that fails is an exit (code 128,
    /// reason StartError, the runtime's message), not a reconcile error.
    async fn start(&self, rec: &ContainerRecord, state: &State) -> Result<(), ReconcileError> {
        let id = rec.id.as_str();
        if !state
            .sandboxes
            .get(&rec.sandbox_id)
            .is_some_and(|s| s.ready())
        {
            return self
                .fail_start(
                    state,
                    id,
                    format!("pod sandbox {} is not ready", rec.sandbox_id),
                )
                .await;
        }
        let created = self.created.lock().remove(id);
        let mounts = match created {
            Some(mounts) => mounts,
            None => match self.look_before_start(rec, state).await? {
                Some(mounts) => mounts,
                None => return Ok(()),
            },
        };
        self.remount_image_volumes(rec).await?;
        let dir = self.settings.layout.container(id);
        std::fs::create_dir_all(&dir).map_err(|e| Self::err(id, "starting the container", e))?;
        let io = if Self::attached_stdio(rec) {
            self.attachments.detach(id);
            self.attachments
                .attach(id, &dir, &rec.log_path)
                .map_err(|e| Self::err(id, "creating the container's stdio", e))?;
            crate::attach::task_io(&dir)
        } else {
            self.task_io(rec, &dir)?
        };
        let started = async {
            let pid = self.ctd.create_task_io(id, mounts, &io).await?;
            self.ctd.start_task(id).await?;
            crate::crash::crash_point("container-started");
            Ok::<_, crate::containerd::ContainerdError>(pid)
        }
        .await;
        match started {
            Ok(pid) => self.record_started(state, id, pid).await,
            Err(e) => {
                let _ = self.ctd.delete_task(id).await;
                self.attachments.detach(id);
                self.fail_start(state, id, e.to_string()).await
            }
        }
    }

    /// A created container a previous process knew: a StartContainer's intent is made durable
    /// with the start's own fact, so a crash between the task's start and that fact loses the
    /// intent, and the record shows the container created while its task runs or ran. Such a
    /// task is adopted as started (its intent recorded again first), and one created but never
    /// started is deleted (the call was never answered; the container is created, as
    /// recorded): [`adopt_task`](Self::adopt_task). Looked at once per process.
    async fn adopt_lost_start(
        &self,
        rec: &ContainerRecord,
        state: &State,
    ) -> Result<(), ReconcileError> {
        let id = rec.id.as_str();
        if self.lost_start_checked.lock().contains(id) {
            return Ok(());
        }
        let task = self.ctd.task_status(id).await?;
        if task.is_some_and(|(_, status)| status != TaskStatus::Created) {
            let intent = Event::ContainerStartRequested { id: id.into() };
            self.journal.record(vec![intent]).await?;
        }
        self.adopt_task(rec, state, task).await?;
        self.lost_start_checked.lock().insert(id.to_string());
        Ok(())
    }

    /// The task an interrupted start may have left: one that runs or ran is adopted (never
    /// started twice; answers true), one created but never started is deleted.
    async fn adopt_task(
        &self,
        rec: &ContainerRecord,
        state: &State,
        task: Option<(u32, TaskStatus)>,
    ) -> Result<bool, ReconcileError> {
        let id = rec.id.as_str();
        match task {
            Some((pid, TaskStatus::Running | TaskStatus::Paused | TaskStatus::Pausing)) => {
                self.reattach(rec)?;
                tracing::info!(
                    container_id = id,
                    pid,
                    "adopted a task an interrupted start left running"
                );
                self.record_started(state, id, pid).await?;
                Ok(true)
            }
            Some((pid, TaskStatus::Stopped)) => {
                tracing::info!(
                    container_id = id,
                    pid,
                    "recorded a task an interrupted start left exited"
                );
                self.record_exit(rec, state, Some(pid)).await?;
                Ok(true)
            }
            Some(_) => {
                self.ctd.end_task(id, Duration::from_secs(10)).await?;
                Ok(false)
            }
            None => Ok(false),
        }
    }

    /// Before a start that is not this process's first of the container: a start cut off
    /// before its fact was recorded may have run the entrypoint already. A task that runs or
    /// ran is adopted (answers None); only a task created but never started is replaced
    /// ([`adopt_task`](Self::adopt_task)). Answers the rootfs mounts.
    async fn look_before_start(
        &self,
        rec: &ContainerRecord,
        state: &State,
    ) -> Result<Option<Vec<Mount>>, ReconcileError> {
        let id = rec.id.as_str();
        let task = self.ctd.task_status(id).await?;
        if self.adopt_task(rec, state, task).await? {
            return Ok(None);
        }
        let mounts = self
            .ctd
            .snapshot_mounts(&self.settings.snapshotter, id)
            .await?
            .ok_or_else(|| Self::err(id, "starting the container", "its snapshot is gone"))?;
        Ok(Some(mounts))
    }

    /// Takes back the stdio of a running container whose output concord holds (after a
    /// restart), unless it already has it.
    fn reattach(&self, rec: &ContainerRecord) -> Result<(), ReconcileError> {
        let id = rec.id.as_str();
        if Self::attached_stdio(rec) && !self.attachments.is_attached(id) {
            self.attachments
                .attach(id, &self.settings.layout.container(id), &rec.log_path)
                .map_err(|e| Self::err(id, "attaching to the container's stdio", e))?;
        }
        Ok(())
    }

    async fn record_started(
        &self,
        state: &State,
        id: &str,
        pid: u32,
    ) -> Result<(), ReconcileError> {
        // Durable before the answer: a restart that lost it would show the running container
        // as created until the loop adopts its task, and a kubelet relisting then would start
        // another.
        self.journal
            .append(vec![Event::ContainerStarted {
                id: id.into(),
                pid,
                started_at: now_nanos(),
            }])
            .await?;
        crate::lifecycle_info!(
            *state,
            &ObjectKey::Container(id.into()),
            pid,
            "container started"
        );
        Ok(())
    }

    async fn fail_start(
        &self,
        state: &State,
        id: &str,
        message: String,
    ) -> Result<(), ReconcileError> {
        self.journal
            .append(vec![Event::ContainerExited {
                id: id.into(),
                exit_code: START_FAILED_EXIT,
                finished_at: now_nanos(),
                reason: "StartError".into(),
                message: message.clone(),
            }])
            .await?;
        let key = ObjectKey::Container(id.into());
        crate::lifecycle_info!(
            *state,
            &key,
            exit_code = START_FAILED_EXIT,
            reason = "StartError",
            %message,
            "container exited"
        );
        Ok(())
    }

    /// stdout and stderr to concord's log writer, run by the shim (so it outlives concord). A
    /// TTY container with stdin gets a stdin FIFO (the shim copies it to the console) that the
    /// log writer holds open.
    fn task_io(
        &self,
        rec: &ContainerRecord,
        dir: &std::path::Path,
    ) -> Result<TaskIo, ReconcileError> {
        let stdin = rec.config.stdin && rec.config.tty;
        if rec.log_path.is_empty() && !stdin {
            return Ok(TaskIo::default());
        }
        let mut uri = format!(
            "binary://{}?{}={}&path={}&pidfile={}&max={}",
            encode(&self.settings.log_writer.display().to_string()),
            crate::logwriter::MARKER,
            crate::logwriter::PROTOCOL,
            // No log path: the writer only holds stdin open.
            encode(if rec.log_path.is_empty() {
                "/dev/null"
            } else {
                &rec.log_path
            }),
            encode(&self.log_writer_pidfile(&rec.id).display().to_string()),
            self.settings.max_log_line
        );
        let mut stdin_path = String::new();
        if stdin {
            let fifo = dir.join("stdin");
            match nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)) {
                Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
                Err(e) => return Err(Self::err(&rec.id, "creating the container's stdin", e)),
            }
            stdin_path = fifo.display().to_string();
            uri.push_str(&format!("&stdin={}", encode(&stdin_path)));
        }
        Ok(TaskIo {
            stdin: stdin_path,
            stdout: uri.clone(),
            stderr: if rec.config.tty { String::new() } else { uri },
            terminal: rec.config.tty,
        })
    }

    /// The stop signal (the config's, else the image's, else SIGTERM), the grace period, then
    /// SIGKILL.
    async fn stop(&self, rec: &ContainerRecord) -> Result<(), ReconcileError> {
        let id = rec.id.as_str();
        let index = self.images.index();
        let image = index.find(&rec.image_id).map(|i| &i.resolved.config);
        let (_, signal) = crate::oci::signal::stop_signal(&rec.config, image);
        // The stop signal goes once, when the stop starts here; the grace period runs from then
        // (a stop that waited in the queue still gets all of it), and retries after a reconcile
        // timeout wait only what is left of it, then SIGKILL.
        let now = tokio::time::Instant::now();
        let far = || now + Duration::from_secs(100 * 365 * 86_400);
        let clock = self.stopping.lock().get(id).copied();
        let deadline = match clock {
            Some(c) if c.generation == rec.generation => c.deadline,
            // A newer stop intent: the earlier end wins (kubelet shortening the grace).
            Some(c) => c.deadline.min(
                now.checked_add(grace_left(rec, crate::clock::now_nanos()))
                    .unwrap_or_else(far),
            ),
            None => {
                if rec.stop_timeout > 0 {
                    self.ctd.kill_task(id, signal).await?;
                }
                let grace = Duration::from_secs(rec.stop_timeout.max(0) as u64);
                now.checked_add(grace).unwrap_or_else(far)
            }
        };
        self.stopping.lock().insert(
            id.to_string(),
            StopClock {
                generation: rec.generation,
                deadline,
            },
        );
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if !left.is_zero() {
            let budget = self.settings.reconcile_timeout / 4 * 3;
            if tokio::time::timeout(left.min(budget), self.ctd.wait_task(id))
                .await
                .is_ok()
            {
                self.stopping.lock().remove(id);
                return Ok(());
            }
            if left > budget {
                // The rest of the grace period in the next pass (not an answer to the caller).
                return Err(ReconcileError::Waiting(format!(
                    "container {id}: stopping: {:?} of its grace period left",
                    left - budget
                )));
            }
        }
        self.ctd.kill_task(id, 9).await?;
        let _ = tokio::time::timeout(Duration::from_secs(10), self.ctd.wait_task(id)).await;
        self.stopping.lock().remove(id);
        Ok(())
    }

    /// Deletes the exited task and records its exit.
    /// Records the task's exit (and deletes it). `started`: the pid of a start that was never
    /// recorded, recorded now, as having started when it exited.
    async fn record_exit(
        &self,
        rec: &ContainerRecord,
        state: &State,
        started: Option<u32>,
    ) -> Result<(), ReconcileError> {
        self.stopping.lock().remove(&rec.id);
        // The kernel's OOM kill count, read while the (empty) cgroup still exists.
        let driver = self.settings.runtime.cgroup_driver;
        let reported = self.oom_events.lock().remove(&rec.id);
        let oom = reported || cgroup_dir(rec, state, driver).is_some_and(|d| oom_killed(&d));
        let (code, at) = self
            .ctd
            .delete_task_exit(&rec.id)
            .await?
            .unwrap_or((255, 0));
        let code = code as i32;
        // A process that exits at once may exit before its start was timed (after Tasks.Start
        // answered): it never finishes before it started.
        let finished_at = if at > 0 { at } else { now_nanos() }.max(rec.started_at);
        let mut events = Vec::new();
        if let Some(pid) = started {
            events.push(Event::ContainerStarted {
                id: rec.id.clone(),
                pid,
                started_at: finished_at,
            });
        }
        let reason = if oom {
            "OOMKilled"
        } else if code == 0 {
            "Completed"
        } else {
            "Error"
        };
        self.journal
            .append(
                events
                    .into_iter()
                    .chain([Event::ContainerExited {
                        id: rec.id.clone(),
                        exit_code: code,
                        finished_at,
                        reason: reason.into(),
                        message: String::new(),
                    }])
                    .collect(),
            )
            .await?;
        let key = ObjectKey::Container(rec.id.clone());
        if let Some(pid) = started {
            crate::lifecycle_info!(*state, &key, pid, "container started");
        }
        crate::lifecycle_info!(*state, &key, exit_code = code, reason, "container exited");
        if oom {
            self.count_oom_kill(rec, state);
        }
        Ok(())
    }

    /// `concord_container_oom_kills_total`, by the pod's runtime handler.
    fn count_oom_kill(&self, rec: &ContainerRecord, state: &State) {
        let handler = state
            .sandboxes
            .get(&rec.sandbox_id)
            .map_or("", |s| s.runtime_handler.as_str());
        let handler = crate::metrics::handler_label(&self.settings.runtime, handler);
        self.settings
            .metrics
            .oom_kills
            .with_label_values(&[handler])
            .inc();
    }

    /// Task, container, snapshot, state: whatever of them exists.
    async fn remove(&self, id: &str) -> Result<(), ReconcileError> {
        let unknown = Known {
            task_gone: false,
            image_volumes: true,
        };
        self.remove_after(id, unknown).await
    }

    /// [`remove`](Self::remove), skipping what the record shows is not there.
    async fn remove_after(&self, id: &str, known: Known) -> Result<(), ReconcileError> {
        self.stopping.lock().remove(id);
        self.attempts.forget(id);
        self.created.lock().remove(id);
        self.lost_start_checked.lock().remove(id);
        if !known.task_gone {
            self.ctd.end_task(id, Duration::from_secs(10)).await?;
        }
        self.attachments.detach(id);
        // The container only: its snapshot, which no lease holds once the create is answered,
        // is then garbage that containerd's collector removes in its next collection (the one
        // that would remove its files after a removal by name too), within its interval. One
        // round trip and one commit in containerd; a snapshot a create left without its
        // container is removed here.
        if !self.ctd.delete_container(id).await? {
            self.ctd
                .remove_snapshot(&self.settings.snapshotter, id)
                .await?;
        }
        if known.image_volumes {
            self.release_image_volumes(id).await?;
        }
        match std::fs::remove_dir_all(self.settings.layout.container(id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Self::err(id, "removing container state", e))
            }
            _ => Ok(()),
        }
    }
}

/// What a removal may skip, from the record.
#[derive(Debug, Clone, Copy)]
struct Known {
    /// The record shows the task was deleted (or just ended): none is looked for.
    task_gone: bool,
    /// The container may have image volumes (else neither their mounts nor their snapshots
    /// are looked for).
    image_volumes: bool,
}

/// A container create's lease, its owner label, and whether it is the first attempt.
struct Made<C: ContainerdPort> {
    owner: String,
    lease: super::lease::Held<C>,
    first: bool,
}

/// The pid of the container whose PID namespace `rec` joins (namespace mode TARGET).
fn target_pid(rec: &ContainerRecord, state: &State) -> Option<u32> {
    rec.config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref())
        .map(|o| o.target_id.clone())
        .filter(|t| !t.is_empty())
        .and_then(|t| state.containers.get(&t))
        .and_then(|c| c.pid)
}

/// The identity the spec's process runs as.
fn container_user(spec: &oci_spec::runtime::Spec) -> ContainerUser {
    let user = spec.process().as_ref().map(|p| p.user().clone());
    let user = user.unwrap_or_default();
    ContainerUser {
        uid: user.uid().into(),
        gid: user.gid().into(),
        groups: user
            .additional_gids()
            .iter()
            .flatten()
            .map(|g| (*g).into())
            .collect(),
    }
}

/// The grace period left at `now` (ns since the epoch) of container `rec`'s stop.
fn grace_left(rec: &ContainerRecord, now: i64) -> Duration {
    if rec.stop_timeout <= 0 {
        return Duration::ZERO;
    }
    if rec.stop_deadline > 0 {
        return Duration::from_nanos(rec.stop_deadline.saturating_sub(now).max(0) as u64);
    }
    Duration::from_secs(rec.stop_timeout as u64)
}

/// Largest image `/etc/passwd` or `/etc/group` read.
const USER_DB_LIMIT: u64 = 4 << 20;

/// The image's /etc/passwd and /etc/group (absent: empty), read from the snapshot's layer
/// directories without mounting anything and without leaving the image (`layerfs`).
fn image_users(
    layers: &crate::image::layerfs::Layers,
) -> Result<crate::oci::user::UserDb, crate::image::layerfs::LayerError> {
    let read = |file: &str| -> Result<String, crate::image::layerfs::LayerError> {
        Ok(layers
            .read(file, USER_DB_LIMIT)?
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default())
    };
    Ok(crate::oci::user::UserDb::parse(
        &read("/etc/passwd")?,
        &read("/etc/group")?,
    ))
}

/// The container's cgroup directory (below a hierarchy's root) behind the path its spec names.
fn cgroup_dir(
    rec: &ContainerRecord,
    state: &State,
    driver: crate::config::CgroupDriver,
) -> Option<String> {
    match state.sandboxes.get(&rec.sandbox_id) {
        Some(s) => s.cgroup_dir_of(driver, &rec.id),
        None => crate::cgroup::dir(driver, &crate::cgroup::path(driver, "", &rec.id)),
    }
}

/// Whether the kernel OOM-killed a process of cgroup directory `dir` (v2 `memory.events`, v1
/// `memory.oom_control`; on a hybrid host the v2 tree is at `unified`).
fn oom_killed(dir: &str) -> bool {
    let path = dir.trim_start_matches('/');
    let root = std::path::Path::new("/sys/fs/cgroup");
    [
        root.join(path).join("memory.events"),
        root.join("memory").join(path).join("memory.oom_control"),
    ]
    .iter()
    .filter_map(|f| std::fs::read_to_string(f).ok())
    .any(|text| {
        text.lines().any(|l| {
            l.strip_prefix("oom_kill ")
                .and_then(|n| n.trim().parse::<u64>().ok())
                .is_some_and(|n| n > 0)
        })
    })
}

fn observed(v: serde_json::Value) -> Reconciled {
    Reconciled {
        observed: v.to_string(),
        drift_corrected: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_writer_arguments_are_query_encoded() {
        assert_eq!(
            encode("/var/log/pods/a b/c.log"),
            "/var/log/pods/a%20b/c.log"
        );
        assert_eq!(encode("x&y=z"), "x%26y%3Dz");
    }
}
