//! Test harness: starts the real concord binary against the real containerd of the dev
//! environment (`hack/dev-up.sh`) and talks CRI to it over its unix socket.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use concord::cri::image_service_client::ImageServiceClient;
use concord::cri::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

mod pods;
#[allow(unused_imports)] // not every suite uses them
pub use pods::*;

/// containerd socket of the dev environment (override with CONCORD_TEST_CONTAINERD).
pub fn containerd_socket() -> PathBuf {
    let p = PathBuf::from(
        std::env::var("CONCORD_TEST_CONTAINERD")
            .unwrap_or_else(|_| "/tmp/ctd/containerd.sock".into()),
    );
    assert!(
        p.exists(),
        "containerd socket {} not found: run hack/dev-up.sh first (or set CONCORD_TEST_CONTAINERD)",
        p.display()
    );
    p
}

/// CNI conf dir of the dev environment.
pub fn cni_conf_dir() -> PathBuf {
    PathBuf::from(
        std::env::var("CONCORD_TEST_CNI_CONF_DIR").unwrap_or_else(|_| "/etc/cni/net.d".into()),
    )
}

/// The cgroup driver test daemons run with: `CONCORD_TEST_CGROUP_DRIVER` (`cgroupfs`, the
/// default, or `systemd`: on a node whose PID 1 is systemd, see hack/systemd-node.sh).
pub fn cgroup_driver() -> concord::config::CgroupDriver {
    match std::env::var("CONCORD_TEST_CGROUP_DRIVER").as_deref() {
        Ok("systemd") => concord::config::CgroupDriver::Systemd,
        Ok("cgroupfs") | Err(_) => concord::config::CgroupDriver::Cgroupfs,
        Ok(other) => panic!("CONCORD_TEST_CGROUP_DRIVER={other:?}: cgroupfs or systemd"),
    }
}

/// Whether test daemons name cgroups the systemd way.
pub fn systemd_driver() -> bool {
    cgroup_driver() == concord::config::CgroupDriver::Systemd
}

/// A cgroup parent of its own for a pod (unique per test) in the form the daemons' driver
/// takes, and the cgroupfs directory it is (below a hierarchy's root): `/concord-test/<u>`, or
/// the slice `concordtest-<u>.slice` (the kubelet's form: `-` nests, so the unique part has
/// `_`) at `/concordtest.slice/concordtest-<u>.slice`.
pub fn unique_cgroup_parent(name: &str) -> (String, String) {
    if systemd_driver() {
        let slice = format!("concordtest-{}.slice", unique(name).replace('-', "_"));
        let dir = concord::cgroup::expand_slice(&slice).unwrap();
        (slice, dir)
    } else {
        let parent = format!("/concord-test/{}", unique(name));
        (parent.clone(), parent)
    }
}

/// The cgroupfs directory (below a hierarchy's root) of object `id` of a pod whose config names
/// cgroup parent `parent`, as the daemons' driver places it.
pub fn cgroup_dir_of(parent: &str, id: &str) -> String {
    let driver = cgroup_driver();
    concord::cgroup::dir(driver, &concord::cgroup::path(driver, parent, id)).unwrap()
}

/// A unique name per test (namespaces, cgroups).
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// A free loopback port (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One concord process with its own state dir and socket.
pub struct Daemon {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub metrics_port: u16,
    pub containerd: PathBuf,
    pub namespace: String,
    pub extra: Vec<String>,
    /// Environment of the daemon's process (besides the test's own).
    pub env: Vec<(String, String)>,
    /// The --log-level flag (None: none, the config file's applies).
    pub log_level: Option<String>,
    pub child: Option<Child>,
    metrics_retries: u32,
    _tmp: Option<tempfile::TempDir>,
}

impl Daemon {
    /// A daemon (not started) in a fresh temp dir, against the dev containerd.
    pub fn new() -> Daemon {
        let tmp = tempfile::Builder::new()
            .prefix("concord-test")
            .tempdir()
            .unwrap();
        let dir = tmp.path().to_owned();
        std::fs::write(dir.join("config.toml"), "").unwrap();
        Daemon {
            socket: dir.join("run/concord.sock"),
            state_dir: dir.join("state"),
            metrics_port: free_port(),
            containerd: containerd_socket(),
            namespace: unique("concord-test"),
            extra: vec![
                format!("--cni-conf-dir={}", cni_conf_dir().display()),
                format!(
                    "--cgroup-driver={}",
                    if systemd_driver() {
                        "systemd"
                    } else {
                        "cgroupfs"
                    }
                ),
            ],
            env: Vec::new(),
            log_level: Some("debug".into()),
            dir,
            child: None,
            metrics_retries: 0,
            _tmp: Some(tmp),
        }
    }

    /// The command line this daemon runs with.
    pub fn command(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_concord"));
        c.arg(format!(
            "--config={}",
            self.dir.join("config.toml").display()
        ))
        .arg(format!("--listen={}", self.socket.display()))
        .arg(format!("--state-dir={}", self.state_dir.display()))
        .arg(format!(
            "--containerd-address={}",
            self.containerd.display()
        ))
        .arg(format!("--containerd-namespace={}", self.namespace))
        .arg(format!("--metrics-address=127.0.0.1:{}", self.metrics_port))
        .arg("--containerd-health-interval-seconds=1")
        .arg("--cni-rescan-interval-seconds=1")
        .args(self.log_level.iter().map(|l| format!("--log-level={l}")))
        .args(&self.extra)
        .envs(self.env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join("concord.log"))
                .unwrap(),
        ));
        c
    }

    /// Starts the daemon and waits until Version answers; answers how long that took.
    pub async fn start(&mut self) -> Duration {
        let start = Instant::now();
        self.child = Some(self.command().spawn().expect("spawn concord"));
        loop {
            if let Ok(mut c) = self.try_runtime().await {
                if c.version(concord::cri::VersionRequest::default())
                    .await
                    .is_ok()
                {
                    return start.elapsed();
                }
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                // Another test may have taken the metrics port since it was picked: pick again.
                if self.log().contains("cannot listen for metrics") && self.metrics_retries < 3 {
                    self.metrics_retries += 1;
                    self.metrics_port = free_port();
                    self.child = Some(self.command().spawn().expect("spawn concord"));
                    continue;
                }
                panic!(
                    "concord exited during start ({status}); log:\n{}",
                    self.log()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "concord did not answer; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Runs concord to completion (for start failures); answers its status and stderr.
    pub fn run_to_exit(&self, extra: &[&str]) -> (ExitStatus, String) {
        let out = self
            .command()
            .args(extra)
            .stderr(Stdio::piped())
            .output()
            .expect("run concord");
        (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("concord.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("started").id()
    }

    pub async fn channel(&self) -> Result<Channel, tonic::transport::Error> {
        uds_channel(&self.socket).await
    }

    async fn try_runtime(&self) -> Result<RuntimeServiceClient<Channel>, tonic::transport::Error> {
        Ok(RuntimeServiceClient::new(self.channel().await?))
    }

    pub async fn runtime(&self) -> RuntimeServiceClient<Channel> {
        self.try_runtime().await.expect("connect to concord")
    }

    pub async fn images(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(self.channel().await.expect("connect to concord"))
    }

    pub async fn introspection(
        &self,
    ) -> concord::proto::introspection_client::IntrospectionClient<Channel> {
        concord::proto::introspection_client::IntrospectionClient::new(
            self.channel().await.expect("connect to concord"),
        )
    }

    /// The /metrics text.
    pub async fn metrics(&self) -> String {
        http_get(self.metrics_port, "/metrics").await
    }

    /// Sum of a metric's samples whose line contains every one of `parts`.
    pub async fn metric(&self, name: &str, parts: &[&str]) -> f64 {
        metric_value(&self.metrics().await, name, parts)
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().ok();
            c.wait().ok();
        }
    }

    /// Version over CRI (it must answer).
    pub async fn version(&self) {
        self.runtime()
            .await
            .version(concord::cri::VersionRequest::default())
            .await
            .unwrap();
    }

    /// SIGHUP: the daemon reads its config again.
    pub fn hangup(&self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid() as i32),
            nix::sys::signal::Signal::SIGHUP,
        )
        .unwrap();
    }

    /// SIGTERM; answers the exit status.
    pub async fn terminate(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("started");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "concord did not exit after SIGTERM; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // A test that failed half-way left its pods: concord removes them (tasks, shims, CNI
        // addresses, netns) before it is killed, so no run leaves anything on the machine.
        if self.child.is_some() {
            remove_all_pods(&self.socket);
        }
        self.kill9();
        cleanup_namespace(&self.containerd, &self.namespace);
    }
}

/// RemovePodSandbox for every pod of the concord at `socket` (bounded; errors ignored).
fn remove_all_pods(socket: &Path) {
    use concord::cri;
    let socket = socket.to_owned();
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let bounded = |d: u64| Duration::from_secs(d);
            let Ok(Ok(ch)) = tokio::time::timeout(bounded(2), uds_channel(&socket)).await else {
                return;
            };
            let mut rt = RuntimeServiceClient::new(ch);
            let Ok(Ok(pods)) = tokio::time::timeout(
                bounded(5),
                rt.list_pod_sandbox(cri::ListPodSandboxRequest::default()),
            )
            .await
            else {
                return;
            };
            for p in pods.into_inner().items {
                let _ = tokio::time::timeout(
                    bounded(30),
                    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
                        pod_sandbox_id: p.id,
                    }),
                )
                .await;
            }
        });
    })
    .join();
}

/// Removes what a test left in its containerd namespace (images, then the namespace), so the
/// dev containerd does not accumulate test data.
pub fn cleanup_namespace(socket: &Path, namespace: &str) {
    use containerd_client::services::v1::{
        DeleteImageRequest, DeleteNamespaceRequest, ListImagesRequest,
    };
    let (socket, ns) = (socket.to_owned(), namespace.to_string());
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let ctd = concord::containerd::Containerd::new(&socket, &ns, Default::default());
            let Ok(list) = ctd
                .images()
                .list(ctd.request(ListImagesRequest { filters: vec![] }))
                .await
            else {
                return;
            };
            let images = list.into_inner().images;
            let n = images.len();
            for (i, img) in images.into_iter().enumerate() {
                let req = DeleteImageRequest {
                    name: img.name,
                    sync: i + 1 == n,
                    ..Default::default()
                };
                let _ = ctd.images().delete(ctd.request(req)).await;
            }
            let _ = ctd
                .namespaces()
                .delete(tonic::Request::new(DeleteNamespaceRequest {
                    name: ns.clone(),
                }))
                .await;
        });
    })
    .join();
}

/// A tonic channel over a unix socket.
pub async fn uds_channel(path: &Path) -> Result<Channel, tonic::transport::Error> {
    concord::uds::connect(path).await
}

/// GET on loopback with a plain HTTP/1.0 request.
pub async fn http_get(port: u16, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect metrics");
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    buf.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// Sum of the samples of `name` whose line contains every one of `parts`.
pub fn metric_value(text: &str, name: &str, parts: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            let metric = l.split(['{', ' ']).next().unwrap_or("");
            metric == name && parts.iter().all(|p| l.contains(p))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Polls `f` until it is true or `timeout` passes; answers the time it took.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if f().await {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A containerd of the test's own (CRI plugin disabled), for tests that stop and restart it.
pub struct OwnContainerd {
    pub dir: PathBuf,
    pub socket: PathBuf,
    child: Option<Child>,
    _tmp: tempfile::TempDir,
}

impl OwnContainerd {
    /// A containerd of the test's own (root, state, socket in a temp dir), CRI plugin disabled.
    pub fn start() -> OwnContainerd {
        Self::start_with_cri(false)
    }

    /// [`OwnContainerd::start`], with containerd's own CRI plugin enabled when `cri` (configured
    /// as the rig's reference containerd: hack/dev-up.sh's config-cri.toml).
    pub fn start_with_cri(cri: bool) -> OwnContainerd {
        let tmp = tempfile::Builder::new()
            .prefix("concord-ctd")
            .tempdir()
            .unwrap();
        let dir = tmp.path().to_owned();
        let socket = dir.join("containerd.sock");
        let mut c = OwnContainerd {
            dir,
            socket,
            child: None,
            _tmp: tmp,
        };
        c.write_config(cri);
        c.restart();
        c
    }

    /// Writes the config the next (re)start uses: with or without containerd's CRI plugin.
    pub fn write_config(&self, cri: bool) {
        let plugins = if cri {
            let rig = std::env::var("CONCORD_TEST_CTD_CRI_CONFIG")
                .unwrap_or_else(|_| "/tmp/rig/containerd/config-cri.toml".into());
            let text = std::fs::read_to_string(&rig)
                .unwrap_or_else(|e| panic!("{rig}: {e} (run hack/dev-up.sh)"));
            text[text.find("[plugins.").expect("a CRI plugin section")..].to_string()
        } else {
            String::new()
        };
        let disabled = if cri {
            "[]"
        } else {
            "[\"io.containerd.grpc.v1.cri\"]"
        };
        std::fs::write(
            self.dir.join("config.toml"),
            format!(
                "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\ndisabled_plugins = {disabled}\n[grpc]\n  address = \"{sock}\"\n{plugins}",
                root = self.dir.join("root").display(),
                state = self.dir.join("state").display(),
                sock = self.socket.display()
            ),
        )
        .unwrap();
    }

    /// Starts (again) and waits for the socket.
    pub fn restart(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("containerd.log"))
            .unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(self.dir.join("config.toml"))
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn containerd (run hack/dev-up.sh to install it)");
        self.child = Some(child);
        let start = Instant::now();
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "own containerd did not come up"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM and wait.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            )
            .ok();
            c.wait().ok();
        }
    }
}

impl Drop for OwnContainerd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How the fault proxy misbehaves on blob responses of more than 10 kB (layers).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// Answer 500 for every blob.
    Status500,
    /// Send the headers and half the body, then close the connection.
    CloseMidBlob,
    /// Flip bytes in the body (the digest no longer matches).
    Corrupt,
    /// Send half the body, then go silent.
    Stall,
}

/// A loopback proxy in front of the real local registry that injects one fault into layer
/// downloads (what a real registry cannot be made to do on demand). Manifests and configs pass
/// through untouched. Answers the port.
pub async fn fault_proxy(upstream: String, fault: Fault) -> u16 {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                break;
            };
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let Some(text) = read_head(&mut client).await else {
                    return;
                };
                let path = text.split(' ').nth(1).unwrap_or("").to_string();
                let Some(resp) = forward(&upstream, &text).await else {
                    return;
                };
                let split = resp
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .map(|p| p + 4)
                    .unwrap_or(resp.len());
                let (h, body) = resp.split_at(split);
                let is_layer = path.contains("/blobs/") && body.len() > 10_000;
                if !is_layer {
                    let _ = client.write_all(&resp).await;
                    return;
                }
                match fault {
                    Fault::Status500 => {
                        let _ = client
                            .write_all(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                            .await;
                    }
                    Fault::CloseMidBlob => {
                        let _ = client.write_all(h).await;
                        let _ = client.write_all(&body[..body.len() / 2]).await;
                    }
                    Fault::Corrupt => {
                        let mut body = body.to_vec();
                        let mid = body.len() / 2;
                        for b in &mut body[mid..mid + 16] {
                            *b ^= 0xff;
                        }
                        let _ = client.write_all(h).await;
                        let _ = client.write_all(&body).await;
                    }
                    Fault::Stall => {
                        let _ = client.write_all(h).await;
                        let _ = client.write_all(&body[..body.len() / 2]).await;
                        tokio::time::sleep(Duration::from_secs(60)).await;
                    }
                }
            });
        }
    });
    port
}

/// A loopback front for the real local registry that demands a Bearer token, and the token
/// server that issues it for `alice:wonderland` (docker-registry's own token auth needs a signing
/// PKI; this exercises the same client flow). Answers the port.
pub async fn bearer_front(upstream: String) -> u16 {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                break;
            };
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let Some(text) = read_head(&mut client).await else {
                    return;
                };
                let path = text.split(' ').nth(1).unwrap_or("").to_string();
                let auth = text
                    .lines()
                    .find(|l| l.to_ascii_lowercase().starts_with("authorization:"))
                    .map(|l| l.split_once(':').unwrap().1.trim().to_string())
                    .unwrap_or_default();
                let reply = |status: &str, extra: String, body: String| {
                    format!("HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
                };
                if path.starts_with("/token") {
                    use base64::Engine;
                    let good = format!(
                        "Basic {}",
                        base64::engine::general_purpose::STANDARD.encode("alice:wonderland")
                    );
                    let r = if auth == good && path.contains("scope=repository") {
                        reply(
                            "200 OK",
                            "Content-Type: application/json\r\n".into(),
                            r#"{"token":"tok-123"}"#.into(),
                        )
                    } else {
                        reply("401 Unauthorized", String::new(), String::new())
                    };
                    let _ = client.write_all(r.as_bytes()).await;
                    return;
                }
                if auth != "Bearer tok-123" {
                    let repo = path
                        .trim_start_matches("/v2/")
                        .split("/manifests/")
                        .next()
                        .unwrap_or("")
                        .split("/blobs/")
                        .next()
                        .unwrap_or("")
                        .to_string();
                    let challenge = format!(
                        "WWW-Authenticate: Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"concord-test\",scope=\"repository:{repo}:pull\"\r\n"
                    );
                    let _ = client
                        .write_all(reply("401 Unauthorized", challenge, String::new()).as_bytes())
                        .await;
                    return;
                }
                let Some(resp) = forward(&upstream, &text).await else {
                    return;
                };
                let _ = client.write_all(&resp).await;
            });
        }
    });
    port
}

/// The overlayfs snapshots in a daemon's containerd namespace.
async fn snapshots(d: &Daemon) -> Vec<containerd_client::services::v1::snapshots::Info> {
    use containerd_client::services::v1::snapshots::ListSnapshotsRequest;
    let ctd = concord::containerd::Containerd::new(&d.containerd, &d.namespace, Default::default());
    let req = ListSnapshotsRequest {
        snapshotter: "overlayfs".into(),
        ..Default::default()
    };
    let mut s = ctd
        .snapshots()
        .list(ctd.request(req))
        .await
        .unwrap()
        .into_inner();
    let mut all = Vec::new();
    while let Some(m) = s.message().await.unwrap() {
        all.extend(m.info);
    }
    all
}

/// The overlayfs snapshot keys in a daemon's containerd namespace.
pub async fn snapshot_keys(d: &Daemon) -> Vec<String> {
    snapshots(d).await.into_iter().map(|i| i.name).collect()
}

/// The keys of the active snapshots (image layers are committed; a sandbox's or a container's
/// rootfs is active).
pub async fn active_snapshot_keys(d: &Daemon) -> Vec<String> {
    use containerd_client::services::v1::snapshots::Kind;
    let active = snapshots(d).await.into_iter();
    active
        .filter(|i| i.kind == Kind::Active as i32)
        .map(|i| i.name)
        .collect()
}

/// (content blobs, snapshots, image records) in a daemon's containerd namespace.
pub async fn namespace_counts(d: &Daemon) -> (usize, usize, usize) {
    use containerd_client::services::v1::{ListContentRequest, ListImagesRequest};
    let ctd = concord::containerd::Containerd::new(&d.containerd, &d.namespace, Default::default());
    let mut content = 0;
    let mut s = ctd
        .content()
        .list(ctd.request(ListContentRequest { filters: vec![] }))
        .await
        .unwrap()
        .into_inner();
    while let Some(m) = s.message().await.unwrap() {
        content += m.info.len();
    }
    let snaps = snapshot_keys(d).await.len();
    let images = ctd
        .images()
        .list(ctd.request(ListImagesRequest { filters: vec![] }))
        .await
        .unwrap()
        .into_inner()
        .images
        .len();
    (content, snaps, images)
}

/// A docker-registry process of a test's own, killed when dropped.
pub struct RegistryProcess {
    child: Child,
    /// host:port it serves.
    pub addr: String,
}

impl Drop for RegistryProcess {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// A docker-registry of the test's own serving the dev environment's registry storage read-only,
/// with `http_extra` (indented YAML under `http:`) and `top_extra` (top-level YAML) added.
pub fn spawn_registry(dir: &Path, http_extra: &str, top_extra: &str) -> RegistryProcess {
    let storage = std::env::var("CONCORD_TEST_REGISTRY_STORAGE")
        .unwrap_or_else(|_| "/tmp/rig/registry".into());
    let addr = format!("127.0.0.1:{}", free_port());
    let config = dir.join("registry.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {storage}\n  maintenance:\n    uploadpurging:\n      enabled: false\n    readonly:\n      enabled: true\nhttp:\n  addr: {addr}\n{http_extra}{top_extra}"
        ),
    )
    .unwrap();
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("docker-registry (hack/dev-up.sh installs it)");
    for _ in 0..100 {
        if std::net::TcpStream::connect(&addr).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    RegistryProcess { child, addr }
}

/// Reads an HTTP request head; answers it as text (None when the client went away).
async fn read_head(client: &mut tokio::net::TcpStream) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match client.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// Sends a request head to `upstream` with `Connection: close`; answers the whole response.
async fn forward(upstream: &str, head: &str) -> Option<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = head.replacen("\r\n", "\r\nConnection: close\r\n", 1);
    let mut up = tokio::net::TcpStream::connect(upstream).await.ok()?;
    up.write_all(request.as_bytes()).await.ok()?;
    let mut resp = Vec::new();
    up.read_to_end(&mut resp).await.ok()?;
    Some(resp)
}

/// The daemon's runtime-config object as introspection shows it.
pub async fn runtime_config_object(d: &Daemon) -> concord::proto::ObjectStatus {
    let mut i = d.introspection().await;
    i.list_objects(concord::proto::ListObjectsRequest {
        kind: "runtime_config".into(),
        id_prefix: String::new(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .objects
    .remove(0)
}

/// Mount points a test made, unmounted (in order) when dropped: declared after the daemon, it
/// runs before the daemon's temp dir is removed, also when an assertion fails.
pub struct Unmount(pub Vec<PathBuf>);

impl Drop for Unmount {
    fn drop(&mut self) {
        for m in &self.0 {
            let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// Resident memory of process `pid` in kB (0 when unreadable).
pub fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// crictl: $CRICTL, the one hack/cri-tools.sh builds, or one on PATH.
pub fn crictl_binary() -> Option<PathBuf> {
    let candidates = [
        std::env::var("CRICTL").ok().map(PathBuf::from),
        Some(PathBuf::from("/usr/local/lib/cri-tools-v1.26.1/crictl")),
        Some(PathBuf::from("crictl")),
    ];
    candidates.into_iter().flatten().find(|p| {
        Command::new(p)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}
