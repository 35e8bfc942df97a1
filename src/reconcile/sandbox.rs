//! Reconciles a pod sandbox: netns + CNI + pause container and task towards Ready; task, network
//! and netns away for Stopped; container, snapshot and state away for Removed. Every step checks
//! what exists first, so a reconcile interrupted anywhere (a crash, a kill -9) converges when it
//! runs again; teardown is unconditional and NotFound is success.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::ports::{CniPort, ContainerdPort, HostNetns, NetnsPort};
use super::{ReconcileError, Reconciled};
use crate::containerd::{
    cri_labels, ContainerRuntime, Containerd, SnapshotKind, TaskIo, KIND_LABEL, KIND_SANDBOX,
};
use crate::image::Images;
use crate::journal::{Event, JournalHandle, ObjectKey, SandboxDesired, SandboxRecord, State};
use crate::metrics::Metrics;
use crate::network::cni::{ips_of, Attachment, Cni};
use crate::network::{Network, NetworkStatus};
use crate::oci::{sandbox_spec, Ns, SandboxSpec, SANDBOX_OOM_SCORE_ADJ};

/// Settings sandboxes are made with.
#[derive(Debug, Clone)]
pub struct SandboxSettings {
    pub snapshotter: String,
    pub sandbox_image: String,
    /// Runtime handlers and the cgroup driver.
    pub runtime: crate::config::RuntimeConfig,
    /// Where per-sandbox files go.
    pub layout: crate::state_layout::StateLayout,
    /// Where network namespaces are pinned (named by sandbox id).
    pub netns_dir: PathBuf,
}

/// The sandbox reconciler: containerd, CNI and the netns directory through their ports (the
/// real ones by default; fakes in `sandbox_tests.rs`).
pub struct SandboxReconciler<C = Containerd, N = Cni, F = HostNetns> {
    ctd: C,
    images: Arc<Images>,
    network: Arc<Network>,
    cni: N,
    netns: F,
    journal: JournalHandle,
    settings: SandboxSettings,
    metrics: Arc<Metrics>,
    /// Which sandboxes this process starts for the first time.
    attempts: super::FirstAttempts,
    /// The leases holding new snapshots until their pause container exists, one made ahead.
    leases: super::lease::Leases<C>,
}

const IFNAME: &str = "eth0";

impl SandboxReconciler {
    pub fn new(
        ctd: Containerd,
        images: Arc<Images>,
        network: Arc<Network>,
        cni: Cni,
        journal: JournalHandle,
        settings: SandboxSettings,
        metrics: Arc<Metrics>,
    ) -> SandboxReconciler {
        let ports = (ctd, cni, HostNetns);
        SandboxReconciler::with_ports(ports, images, network, journal, settings, metrics)
    }

    /// Kills shims of this namespace whose id is neither a journal record (pod or container)
    /// nor a containerd container: left by a task create cancelled half-way. Lists first, then
    /// reads the journal (a record is written before its task is made). Answers how many.
    pub async fn orphan_shims(&self, journal: &JournalHandle) -> usize {
        let (ns, addr) = (
            self.ctd.namespace().to_string(),
            self.ctd.address().to_owned(),
        );
        let shims = tokio::task::spawn_blocking(move || crate::containerd::shims::list(&ns, &addr))
            .await
            .unwrap_or_default();
        let state = journal.state();
        let mut killed = 0;
        for s in shims {
            if state.sandboxes.contains_key(&s.id) || state.containers.contains_key(&s.id) {
                continue;
            }
            // A container of that id is the label-based scan's (its task ends through containerd).
            if !matches!(self.ctd.container_exists(&s.id).await, Ok(false)) {
                continue;
            }
            tracing::warn!(pid = s.pid, id = %s.id, "orphaned shim (no record, no container): killing it");
            crate::containerd::shims::kill(s.pid);
            killed += 1;
        }
        killed
    }
}

impl<C: ContainerdPort, N: CniPort, F: NetnsPort> SandboxReconciler<C, N, F> {
    /// A reconciler on these ports: (containerd, CNI, netns directory).
    pub fn with_ports(
        (ctd, cni, netns): (C, N, F),
        images: Arc<Images>,
        network: Arc<Network>,
        journal: JournalHandle,
        settings: SandboxSettings,
        metrics: Arc<Metrics>,
    ) -> Self {
        let attempts = super::FirstAttempts::new(journal.state().sandboxes.keys().cloned());
        SandboxReconciler {
            leases: super::lease::Leases::new(ctd.clone(), "sandbox"),
            ctd,
            images,
            network,
            cni,
            netns,
            journal,
            settings,
            metrics,
            attempts,
        }
    }

    /// Runs one step, timing it into concord_sandbox_step_duration_seconds{step} and into the
    /// reconcile's steps (`concord inspect`).
    async fn timed<T: super::steps::Outcome>(
        &self,
        step: &'static str,
        f: impl std::future::Future<Output = T>,
    ) -> T {
        let start = std::time::Instant::now();
        let out = tracing::Instrument::instrument(f, tracing::debug_span!("step", step)).await;
        let took = start.elapsed();
        self.metrics
            .sandbox_step_duration
            .with_label_values(&[step])
            .observe(took.as_secs_f64());
        super::steps::record(step, took, out.ok());
        out
    }

    /// One reconcile of sandbox `id` against `state`.
    pub async fn reconcile(&self, id: &str, state: &State) -> Result<Reconciled, ReconcileError> {
        let Some(rec) = state.sandboxes.get(id) else {
            // No record: whatever carries this id is an orphan (found by the resync's scan).
            self.remove_orphan(id).await?;
            return Ok(Reconciled::default());
        };
        let key = ObjectKey::Sandbox(id.into());
        match rec.desired {
            SandboxDesired::Ready if rec.pid.is_none() => match self.start(rec).await {
                Ok((ips, pid)) => {
                    self.journal
                        .append(vec![
                            Event::SandboxNetworkReady {
                                id: id.into(),
                                ips: ips.clone(),
                            },
                            Event::SandboxStarted { id: id.into(), pid },
                        ])
                        .await?;
                    let ip = ips.first().map(String::as_str).unwrap_or("");
                    crate::lifecycle_info!(*state, &key, ip, ?ips, pid, "pod ready");
                    Ok(observed(json!({"state": "ready", "pid": pid, "ips": ips})))
                }
                Err(e) => {
                    // RunPodSandbox failed: remove everything it created before answering. The
                    // record goes only once that worked; else it stays, to be removed, and the
                    // loop keeps tearing down (nothing may leak).
                    let mut facts = vec![Event::SandboxFailed {
                        id: id.into(),
                        error: e.to_string(),
                    }];
                    let removed = self.teardown(id, rec).await;
                    if removed {
                        facts.push(Event::SandboxRemoved { id: id.into() });
                    }
                    self.journal.append(facts).await?;
                    crate::lifecycle_info!(*state, &key, error = %e, "pod failed");
                    if removed {
                        crate::lifecycle_info!(*state, &key, reason = "failed", "pod removed");
                    }
                    Err(e)
                }
            },
            SandboxDesired::Ready => {
                let task = self.ctd.task_state(id).await?;
                let running = matches!(task, Some((_, true)));
                if !running {
                    // The pause exited: release its shim now, not at StopPodSandbox.
                    if task.is_some() {
                        self.ctd.delete_task(id).await?;
                    }
                    if !rec.exited {
                        self.journal
                            .append(vec![Event::SandboxExited { id: id.into() }])
                            .await?;
                        crate::lifecycle_info!(*state, &key, reason = "exited", "pod not ready");
                    }
                }
                let mut seen = json!({"state": if running { "ready" } else { "notready" }});
                if rec.resources_updated && running {
                    seen["podCgroup"] = pod_limits(rec, self.settings.runtime.cgroup_driver);
                }
                Ok(observed(seen))
            }
            SandboxDesired::Stopped => {
                if !rec.stopped {
                    self.stop(rec).await?;
                    self.journal
                        .append(vec![Event::SandboxStopped { id: id.into() }])
                        .await?;
                    crate::lifecycle_info!(*state, &key, "pod stopped");
                }
                Ok(observed(json!({"state": "stopped"})))
            }
            SandboxDesired::Removed => {
                // A converged stop (its fact is written only after the task, the network and
                // the netns were gone) is not repeated: a second CNI DEL is the costliest step.
                if !rec.stopped {
                    self.stop(rec).await?;
                }
                self.remove(id).await?;
                self.journal
                    .append(vec![Event::SandboxRemoved { id: id.into() }])
                    .await?;
                crate::lifecycle_info!(*state, &key, "pod removed");
                Ok(observed(json!({"state": "removed"})))
            }
        }
    }

    fn err(id: &str, step: &'static str, message: impl ToString) -> ReconcileError {
        ReconcileError::Sandbox {
            id: id.to_string(),
            step,
            message: message.to_string(),
        }
    }

    fn attachment(&self, rec: &SandboxRecord) -> Attachment {
        let m = rec.config.metadata.clone().unwrap_or_default();
        let caps = crate::network::capabilities::for_pod(&rec.config, &self.network.pod_cidr());
        Attachment {
            container_id: rec.id.clone(),
            netns: rec
                .netns_path
                .clone()
                .map(PathBuf::from)
                .unwrap_or_default(),
            ifname: IFNAME.into(),
            args: vec![
                ("IgnoreUnknown".into(), "1".into()),
                ("K8S_POD_NAMESPACE".into(), m.namespace),
                ("K8S_POD_NAME".into(), m.name),
                ("K8S_POD_INFRA_CONTAINER_ID".into(), rec.id.clone()),
                ("K8S_POD_UID".into(), m.uid),
            ],
            capabilities: caps,
        }
    }

    /// The network (netns → CNI ADD) alongside the pause container (files, image, snapshot,
    /// container → task create → task start): neither needs the other until the pod is ready.
    /// Answers (ips, pid).
    async fn start(&self, rec: &SandboxRecord) -> Result<(Vec<String>, u32), ReconcileError> {
        // The first start of a sandbox this process recorded skips the checks for (and the undoing
        // of) what an earlier attempt would have left.
        let first = self.attempts.first(&rec.id);
        // The pause task joins the netns: its create waits for the netns, not for CNI ADD.
        let (netns_made, netns_ready) = tokio::sync::oneshot::channel();
        let pause = async {
            let mounts = self.pause_container(rec, first).await?;
            if netns_ready.await.is_err() {
                // The network half failed; try_join answers its error.
                return Err(Self::err(
                    &rec.id,
                    "creating the network namespace",
                    "failed",
                ));
            }
            self.start_pause(&rec.id, mounts, first).await
        };
        futures::future::try_join(self.attach_network(rec, first, netns_made), pause).await
    }

    /// The pod's netns (`netns_made` fires once it exists) and its CNI ADD; answers the pod's
    /// IPs (none on the node's network).
    async fn attach_network(
        &self,
        rec: &SandboxRecord,
        first: bool,
        netns_made: tokio::sync::oneshot::Sender<()>,
    ) -> Result<Vec<String>, ReconcileError> {
        let id = rec.id.as_str();
        let Some(path) = &rec.netns_path else {
            let _ = netns_made.send(());
            return Ok(Vec::new());
        };
        let path = PathBuf::from(path);
        let fresh = !self.netns.exists(&path);
        if fresh {
            self.netns
                .remove(&path)
                .map_err(|e| Self::err(id, "creating the network namespace", e))?;
            let p = path.clone();
            let userns = crate::oci::userns::of_pod(&rec.config).ok().flatten();
            let user_path = self.userns_path(id);
            let ns_dir = self.netns.clone();
            self.timed(
                "netns",
                tokio::task::spawn_blocking(move || match userns {
                    Some(ns) => {
                        let (uids, gids) = (ns.uids.map_line(), ns.gids.map_line());
                        ns_dir.remove(&user_path)?;
                        ns_dir.create_in_userns(&p, &user_path, &uids, &gids)
                    }
                    None => ns_dir.create(&p),
                }),
            )
            .await
            .map_err(|e| Self::err(id, "creating the network namespace", e))?
            .map_err(|e| Self::err(id, "creating the network namespace", e))?;
        }
        let _ = netns_made.send(());
        let net = match self.network.status() {
            NetworkStatus::Ready(n) => n,
            NetworkStatus::NotReady(why) => {
                return Err(Self::err(
                    id,
                    "CNI ADD",
                    format!("network not ready: {why}"),
                ))
            }
        };
        let attachment = self.attachment(rec);
        // An ADD that finished before a crash is kept (its namespace still exists).
        if !fresh {
            if let Some(result) = self.cni.cached_result(&net.name, &attachment) {
                return Ok(ips_of(&result));
            }
        }
        // A stale result (new namespace) or an ADD a crash interrupted: undo it first.
        if !(fresh && first) {
            let del = self.cni.del(Some(&net), &net.name, &attachment);
            if let Err(e) = self.timed("cni_del_before_add", del).await {
                tracing::debug!(sandbox_id = id, error = %e, "CNI DEL before ADD failed");
            }
        }
        let result = self
            .timed("cni_add", self.cni.add(&net, &attachment))
            .await
            .map_err(|e| Self::err(id, "CNI ADD", e))?;
        Ok(ips_of(&result))
    }

    /// The pod's files, the pause image, its snapshot and the pause container; answers the
    /// snapshot's mounts.
    async fn pause_container(
        &self,
        rec: &SandboxRecord,
        first: bool,
    ) -> Result<Vec<containerd_client::types::Mount>, ReconcileError> {
        let id = rec.id.as_str();
        self.write_files(rec).await?;
        self.images
            .ensure(&self.settings.sandbox_image)
            .await
            .map_err(|e| Self::err(id, "pulling the sandbox image", e))?;
        let img = self
            .images
            .index()
            .find(&self.settings.sandbox_image)
            .cloned()
            .ok_or_else(|| {
                Self::err(
                    id,
                    "pulling the sandbox image",
                    "image not in the index after the pull",
                )
            })?;
        // The snapshot is held by a lease until the container references it.
        let owner = format!("sandbox:{id}");
        let lease = self.leases.take(&owner).await?;
        let made = async {
            let existing = match first {
                true => None,
                false => {
                    self.ctd
                        .snapshot_mounts(&self.settings.snapshotter, id)
                        .await?
                }
            };
            let mounts = match existing {
                Some(m) => m,
                None => {
                    let prepare = self.ctd.new_snapshot(
                        SnapshotKind::Active,
                        &self.settings.snapshotter,
                        id,
                        &img.resolved.chain_id,
                        &owner,
                        lease.id(),
                    );
                    self.timed("snapshot", prepare).await?
                }
            };
            let layout = &self.settings.layout;
            let files = layout.sandbox(id);
            crate::oci::userns::shift_rootfs(id, &rec.config, &mounts, &layout.scratch(), &files)
                .await
                .map_err(|e| Self::err(id, crate::oci::userns::SHIFT_STEP, e))?;
            if first || !self.ctd.container_exists(id).await? {
                self.create_pause(rec, &img.resolved.config).await?;
            }
            Ok::<_, ReconcileError>(mounts)
        }
        .await;
        // The container holds its snapshot now (or the failed create removed it): the lease
        // ends, its deletion off the answer's path.
        drop(lease);
        made
    }

    /// The files the pod's containers will mount (hostname, hosts, resolv.conf) and its
    /// /dev/shm; synced writes, off the async threads (the network half runs meanwhile).
    async fn write_files(&self, rec: &SandboxRecord) -> Result<(), ReconcileError> {
        const FILES: &str = "writing the sandbox's hosts, hostname and resolv.conf";
        let (dir, hostname, dns) = (
            self.settings.layout.sandbox(&rec.id),
            self.spec_input(rec).hostname,
            rec.config.dns_config.clone(),
        );
        let own_ipc = !host_ipc(rec);
        let userns = crate::oci::userns::of_pod(&rec.config).ok().flatten();
        tokio::task::spawn_blocking(move || {
            crate::oci::files::write_sandbox_files(
                &dir,
                &hostname,
                dns.as_ref(),
                &crate::oci::files::HostFiles::default(),
            )?;
            // The pod's root owns its files, as the image's root owns /etc.
            if let Some(ns) = userns {
                for file in ["hostname", "hosts", "resolv.conf"] {
                    let (uid, gid) = (Some(ns.uids.host), Some(ns.gids.host));
                    std::os::unix::fs::lchown(dir.join(file), uid, gid)?;
                }
            }
            if own_ipc {
                crate::oci::files::mount_shm(&dir, SHM_SIZE)?;
            }
            Ok::<_, std::io::Error>(())
        })
        .await
        .map_err(|e| Self::err(&rec.id, FILES, e))?
        .map_err(|e| Self::err(&rec.id, FILES, e))
    }

    /// The pause container in containerd (its spec from the pod config and the image config).
    async fn create_pause(
        &self,
        rec: &SandboxRecord,
        image_config: &crate::image::manifest::ImageConfig,
    ) -> Result<(), ReconcileError> {
        let id = rec.id.as_str();
        let handler = self
            .settings
            .runtime
            .handler(&rec.runtime_handler)
            .ok_or_else(|| {
                Self::err(
                    id,
                    "creating the sandbox container",
                    format!(
                        "runtime handler {:?} is no longer configured",
                        rec.runtime_handler
                    ),
                )
            })?;
        let runtime = ContainerRuntime::of(handler, self.settings.runtime.systemd_cgroup());
        let mut input = self.spec_input(rec);
        input.seccomp = crate::oci::seccomp::for_sandbox(&rec.config)
            .map_err(|e| Self::err(id, "building the sandbox spec", e))?;
        let spec = sandbox_spec(&input, image_config)
            .map_err(|e| Self::err(id, "building the sandbox spec", e))?;
        let own = [(KIND_LABEL.to_string(), KIND_SANDBOX.to_string())].into();
        let image_labels = image_config.config.as_ref().and_then(|c| c.labels.as_ref());
        let labels = cri_labels(image_labels, &rec.config.labels, own);
        let owner = format!("sandbox:{id}");
        let create = self.ctd.create_container(
            id,
            &self.settings.sandbox_image,
            &runtime,
            &spec,
            &self.settings.snapshotter,
            id,
            &owner,
            labels,
        );
        self.timed("container_create", create).await?;
        Ok(())
    }

    /// Creates and starts the pause task; answers its pid.
    async fn start_pause(
        &self,
        id: &str,
        mounts: Vec<containerd_client::types::Mount>,
        first: bool,
    ) -> Result<u32, ReconcileError> {
        if !first {
            // A task left by an interrupted start is replaced.
            self.ctd.end_task(id, Duration::from_secs(10)).await?;
        }
        self.timed("task_start", async {
            let pid = self
                .ctd
                .create_task_io(id, mounts, &TaskIo::default())
                .await?;
            self.ctd.start_task(id).await?;
            Ok::<_, ReconcileError>(pid)
        })
        .await
    }

    /// Where pod `id`'s user namespace is pinned (it owns the pod's netns).
    fn userns_path(&self, id: &str) -> PathBuf {
        self.settings.layout.sandbox(id).join("userns")
    }

    fn spec_input(&self, rec: &SandboxRecord) -> SandboxSpec {
        let linux = rec.config.linux.clone().unwrap_or_default();
        let sc = linux.security_context.clone().unwrap_or_default();
        let opts = sc.namespace_options.clone().unwrap_or_default();
        let mode = |m: i32| if m == 2 { Ns::Node } else { Ns::Pod };
        let network = match (&rec.netns_path, opts.network) {
            (Some(p), _) => Ns::Path(p.clone()),
            (None, _) => Ns::Node,
        };
        let mut sysctls: BTreeMap<String, String> = linux.sysctls.clone().into_iter().collect();
        // In a pod user namespace only its mapped gids can be named.
        let max_gid = crate::oci::userns::of_pod(&rec.config)
            .ok()
            .flatten()
            .map_or(2147483647, |ns| ns.gids.len - 1);
        if network != Ns::Node {
            sysctls
                .entry("net.ipv4.ip_unprivileged_port_start".into())
                .or_insert_with(|| "0".into());
            sysctls
                .entry("net.ipv4.ping_group_range".into())
                .or_insert_with(|| format!("0 {max_gid}"));
        }
        // Only what the handler's admin allows of the pod's annotations, then the CRI ones.
        let patterns = self
            .settings
            .runtime
            .handler(&rec.runtime_handler)
            .map(|h| h.pod_annotations.as_slice())
            .unwrap_or_default();
        let mut annotations = crate::oci::annotations::allowed(patterns, &rec.config.annotations);
        crate::oci::annotations::insert_pod_identity(
            &mut annotations,
            rec.config.metadata.as_ref(),
        );
        SandboxSpec {
            id: rec.id.clone(),
            hostname: if rec.config.hostname.is_empty() || network == Ns::Node {
                nix::unistd::gethostname()
                    .ok()
                    .and_then(|h| h.into_string().ok())
                    .unwrap_or_default()
            } else {
                rec.config.hostname.clone()
            },
            network,
            pid: mode(opts.pid),
            ipc: mode(opts.ipc),
            cgroups_path: rec.cgroups_path_of(self.settings.runtime.cgroup_driver, &rec.id),
            sysctls,
            oom_score_adj: SANDBOX_OOM_SCORE_ADJ,
            run_as_user: sc.run_as_user.map(|v| v.value),
            run_as_group: sc.run_as_group.map(|v| v.value),
            supplemental_groups: sc.supplemental_groups.clone(),
            readonly_rootfs: sc.readonly_rootfs,
            privileged: sc.privileged,
            shm_size: SHM_SIZE,
            shm_path: (!host_ipc(rec)).then(|| {
                crate::oci::files::shm_path(&self.settings.layout.sandbox(&rec.id))
                    .display()
                    .to_string()
            }),
            annotations,
            seccomp: None,
            // Validated by RunPodSandbox; pinned with the netns.
            userns: crate::oci::userns::of_pod(&rec.config)
                .ok()
                .flatten()
                .map(|ns| (ns, self.userns_path(&rec.id).display().to_string())),
        }
    }

    /// The network a CNI DEL goes through when no cached result names one: the network
    /// configured now when it is ready, and its name (empty without one).
    fn network_for_del(&self) -> (Option<crate::network::CniNetwork>, String) {
        let net = match self.network.status() {
            NetworkStatus::Ready(n) => Some(n),
            NetworkStatus::NotReady(_) => None,
        };
        let name = net.as_ref().map(|n| n.name.clone()).unwrap_or_default();
        (net, name)
    }

    /// Task, then CNI DEL (always, also when the netns is gone), then the netns.
    async fn stop(&self, rec: &SandboxRecord) -> Result<(), ReconcileError> {
        let id = rec.id.as_str();
        // The pause task and the pod's network do not depend on each other: both at once.
        let task = async {
            self.timed("task_stop", self.ctd.end_task(id, Duration::from_secs(10)))
                .await
                .map_err(ReconcileError::from)
        };
        let network = async {
            if rec.netns_path.is_none() {
                return Ok(());
            }
            let (net, name) = self.network_for_del();
            // A netns file that no longer pins a namespace (a crash between creating the file
            // and mounting it, or an unmount) is named as none: the plugins then release the
            // address without entering it, where they would refuse a path that is no netns.
            let mut attachment = self.attachment(rec);
            if !self.netns.exists(&attachment.netns) {
                attachment.netns = PathBuf::new();
            }
            self.timed("cni_del", self.cni.del(net.as_ref(), &name, &attachment))
                .await
                .map_err(|e| Self::err(id, "CNI DEL", e))
        };
        futures::future::try_join(task, network).await?;
        if let Some(p) = &rec.netns_path {
            self.timed("netns_remove", async {
                self.netns.remove(&PathBuf::from(p))
            })
            .await
            .map_err(|e| Self::err(id, "removing the network namespace", e))?;
        }
        self.netns
            .remove(&self.userns_path(id))
            .map_err(|e| Self::err(id, "removing the pod's user namespace", e))?;
        crate::oci::files::unmount_shm(&self.settings.layout.sandbox(id))
            .map_err(|e| Self::err(id, "unmounting the pod's /dev/shm", e))?;
        Ok(())
    }

    /// Container, snapshot, per-sandbox state.
    async fn remove(&self, id: &str) -> Result<(), ReconcileError> {
        self.timed("container_remove", async {
            self.ctd.delete_container(id).await?;
            self.ctd
                .remove_snapshot(&self.settings.snapshotter, id)
                .await
        })
        .await?;
        // A shim a cancelled task create left serving nothing goes with its pod. (A pod's
        // containers share its shim, grouped by the sandbox-id annotation, so containers need
        // no scan of their own.) One /proc scan per pod removal.
        self.ctd.kill_shims_of(id).await;
        self.attempts.forget(id);
        let dir = self.settings.layout.sandbox(id);
        crate::oci::files::unmount_shm(&dir)
            .map_err(|e| Self::err(id, "unmounting the pod's /dev/shm", e))?;
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(Self::err(id, "removing sandbox state", e));
            }
        }
        Ok(())
    }

    /// Sandbox ids something of ours exists for (containerd container or snapshot, pinned
    /// netns, cached CNI result) that the journal has no record of: orphans of a crash that lost
    /// the journal, of an older concord, or of a bug. Lists first, then reads the journal: a
    /// record is written before anything is created, so nothing being created is listed.
    pub async fn orphans(&self, journal: &JournalHandle) -> Result<Vec<String>, ReconcileError> {
        let mut ids: std::collections::BTreeSet<String> = self
            .ctd
            .list_owned(&self.settings.snapshotter, "sandbox:")
            .await?
            .into_iter()
            .map(|(_, owner)| owner.trim_start_matches("sandbox:").to_string())
            .collect();
        for p in self.netns.list(&self.settings.netns_dir) {
            ids.extend(p.file_name().and_then(|n| n.to_str()).map(String::from));
        }
        ids.extend(self.cni.cached_ids(IFNAME));
        ids.retain(|id| is_sandbox_id(id));
        let state = journal.state();
        ids.retain(|id| !state.sandboxes.contains_key(id));
        Ok(ids.into_iter().collect())
    }

    /// Removes what an orphan left (no record: what it would have named is found by id).
    async fn remove_orphan(&self, id: &str) -> Result<(), ReconcileError> {
        self.ctd.end_task(id, Duration::from_secs(10)).await?;
        let netns = self.settings.netns_dir.join(id);
        let attachment = Attachment {
            container_id: id.to_string(),
            netns: if self.netns.exists(&netns) {
                netns.clone()
            } else {
                PathBuf::new()
            },
            ifname: IFNAME.into(),
            args: vec![
                ("IgnoreUnknown".into(), "1".into()),
                ("K8S_POD_INFRA_CONTAINER_ID".into(), id.to_string()),
            ],
            capabilities: Map::new(),
        };
        // The cached result's network, else (the cache went with the journal: a state dir
        // lost whole) the network configured now: the plugins release what they hold for the
        // id, and a DEL of an id they never saw succeeds.
        let (net, name) = self.network_for_del();
        self.cni
            .del(net.as_ref(), &name, &attachment)
            .await
            .map_err(|e| Self::err(id, "CNI DEL", e))?;
        self.netns
            .remove(&netns)
            .map_err(|e| Self::err(id, "removing the network namespace", e))?;
        self.netns
            .remove(&self.userns_path(id))
            .map_err(|e| Self::err(id, "removing the pod's user namespace", e))?;
        self.remove(id).await
    }

    /// Full teardown; answers whether every step succeeded (failures are logged).
    async fn teardown(&self, id: &str, rec: &SandboxRecord) -> bool {
        let mut ok = true;
        if let Err(e) = self.stop(rec).await {
            tracing::warn!(sandbox_id = id, error = %e, "teardown: stop failed");
            ok = false;
        }
        if ok {
            if let Err(e) = self.remove(id).await {
                tracing::warn!(sandbox_id = id, error = %e, "teardown: remove failed");
                ok = false;
            }
        }
        ok
    }
}

/// Size of a pod's /dev/shm (as containerd's CRI).
const SHM_SIZE: u64 = 64 << 20;

/// Whether the pod uses the host's IPC namespace (and so the host's /dev/shm).
/// Writes the pod-level limits UpdatePodSandboxResources recorded to the pod's cgroup; answers
/// what it did. A write the kernel refuses is reported, not retried: the kubelet owns the pod
/// cgroup and already sized it (the RPC is best effort).
fn pod_limits(rec: &SandboxRecord, driver: crate::config::CgroupDriver) -> Value {
    use super::pod_cgroup::{apply, pod_total, Applied};
    let linux = rec.config.linux.clone().unwrap_or_default();
    let Some(total) = pod_total(linux.overhead.as_ref(), linux.resources.as_ref()) else {
        return json!("nothing to write");
    };
    let parent = rec.pod_cgroup_dir(driver).unwrap_or_default();
    let parent = parent.as_str();
    match apply(std::path::Path::new("/sys/fs/cgroup"), parent, &total) {
        Ok(Applied::Nothing) => json!("nothing to write"),
        Ok(Applied::NoCgroup) => json!({"recorded": true, "cgroup": parent, "exists": false}),
        Ok(Applied::Written(files)) => json!({"cgroup": parent, "written": files}),
        Err(e) => {
            tracing::warn!(sandbox_id = %rec.id, error = %e, "pod cgroup limits not written");
            json!({"cgroup": parent, "error": e.to_string()})
        }
    }
}

fn host_ipc(rec: &SandboxRecord) -> bool {
    rec.config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref())
        .is_some_and(|o| o.ipc == crate::cri::NamespaceMode::Node as i32)
}

/// Whether `s` has the shape of a sandbox id (64 lowercase hex characters): only such names in
/// shared directories are taken for concord's.
fn is_sandbox_id(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn observed(v: Value) -> Reconciled {
    Reconciled {
        observed: v.to_string(),
        drift_corrected: false,
    }
}

#[cfg(test)]
mod tests {
    use super::ips_of;

    #[test]
    fn ips_come_without_prefix_and_ipv4_first() {
        let r =
            serde_json::json!({"ips": [{"address": "fd00::5/64"}, {"address": "10.88.0.5/16"}]});
        assert_eq!(ips_of(&r), vec!["10.88.0.5", "fd00::5"]);
    }
}
