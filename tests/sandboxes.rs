//! Pod sandboxes with the real containerd, runc and CNI plugins (the dev environment's bridge
//! network): run, status, list, retry, stop, remove, host network, bad input, pause exit.

mod common;

use std::time::Duration;

use common::{
    container_config, eventually, pod_base, pod_flags, pull_ok, remove_pod, run_pod, Daemon,
};
use concord::cri;

async fn daemon() -> Daemon {
    daemon_with(Daemon::new()).await
}

async fn daemon_with(mut d: Daemon) -> Daemon {
    pod_flags(&mut d);
    d.extra
        .push("--sandbox-image=registry.k8s.io/pause:3.9".into());
    d.start().await;
    d
}

fn config(name: &str, host_network: bool) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        labels: [("app".to_string(), name.to_string())].into(),
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network: if host_network {
                        cri::NamespaceMode::Node as i32
                    } else {
                        cri::NamespaceMode::Pod as i32
                    },
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..pod_base(name)
    }
}

async fn status(d: &Daemon, id: &str) -> Result<cri::PodSandboxStatus, tonic::Status> {
    d.runtime()
        .await
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: true,
        })
        .await
        .map(|r| r.into_inner().status.unwrap())
}

async fn list(d: &Daemon) -> Vec<cri::PodSandbox> {
    d.runtime()
        .await
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items
}

fn netns_files(d: &Daemon) -> usize {
    std::fs::read_dir(d.dir.join("netns"))
        .map(|r| r.count())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_pod_runs_with_an_ip_is_listed_retried_stopped_and_removed_leaving_nothing() {
    let d = daemon().await;
    let id = run_pod(&d, &config("web", false)).await.unwrap();
    let s = status(&d, &id).await.unwrap();
    assert_eq!(s.state, cri::PodSandboxState::SandboxReady as i32);
    let ip = s.network.unwrap().ip;
    assert!(
        ip.starts_with(&pod_subnet()),
        "bridge network address: {ip}"
    );
    assert_eq!(list(&d).await.len(), 1);
    assert_eq!(netns_files(&d), 1);

    // kubelet's retry with the same metadata: the same sandbox.
    assert_eq!(run_pod(&d, &config("web", false)).await.unwrap(), id);
    assert_eq!(list(&d).await.len(), 1);

    // The sandbox image was pulled on demand and is pinned while the pod uses it.
    let pause = cri::ImageSpec {
        image: "registry.k8s.io/pause:3.9".into(),
        ..Default::default()
    };
    let err = d
        .images()
        .await
        .remove_image(cri::RemoveImageRequest {
            image: Some(pause.clone()),
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::FailedPrecondition,
        "{}",
        err.message()
    );
    assert!(err.message().contains(&id), "{}", err.message());

    let mut rt = d.runtime().await;
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .unwrap();
    assert_eq!(
        status(&d, &id).await.unwrap().state,
        cri::PodSandboxState::SandboxNotready as i32
    );
    assert_eq!(netns_files(&d), 0, "netns gone after stop");
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .unwrap();
    remove_pod(&d, &id).await;
    remove_pod(&d, &id).await;
    let err = status(&d, &id).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(list(&d).await.is_empty());
    // Unknown ids are fine for stop and remove.
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: "nope".into(),
    })
    .await
    .unwrap();
    remove_pod(&d, "nope").await;

    // Nothing left: no container, no sandbox snapshot, no IP allocation for the id.
    let (_, snaps, _) = common::namespace_counts(&d).await;
    assert_eq!(snaps, 1, "only the pause image's layer snapshot remains");
    assert!(!allocated_to(&id), "host-local released the address");
    // With no sandbox left the pinned image can go.
    d.images()
        .await
        .remove_image(cri::RemoveImageRequest { image: Some(pause) })
        .await
        .unwrap();
}

#[tokio::test]
async fn a_host_network_pod_has_no_netns_and_the_pause_exit_turns_it_not_ready() {
    let d = daemon().await;
    let id = run_pod(&d, &config("hostnet", true)).await.unwrap();
    let s = status(&d, &id).await.unwrap();
    assert_eq!(s.state, cri::PodSandboxState::SandboxReady as i32);
    assert_eq!(s.network.unwrap().ip, "");
    assert_eq!(netns_files(&d), 0);

    // Kill the pause process behind concord's back: the exit event turns the sandbox NotReady.
    let pid = pause_pid(&d, &id).await as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    eventually(
        Duration::from_secs(10),
        "NotReady after the pause exit",
        || async {
            status(&d, &id).await.unwrap().state == cri::PodSandboxState::SandboxNotready as i32
        },
    )
    .await;
    remove_pod(&d, &id).await;
    assert!(list(&d).await.is_empty());
    // The operator's log says so, once (the loop's later passes do not repeat it).
    let not_ready = d
        .log()
        .lines()
        .filter(|l| l.contains("pod not ready") && l.contains(&format!("pod_id=\"{id}\"")))
        .count();
    assert_eq!(not_ready, 1, "{}", d.log());
}

#[tokio::test]
async fn a_sandbox_survives_a_concord_restart() {
    let mut d = daemon().await;
    let id = run_pod(&d, &config("survivor", false)).await.unwrap();
    assert!(d.terminate().await.success());
    d.start().await;
    let s = status(&d, &id).await.unwrap();
    assert_eq!(s.state, cri::PodSandboxState::SandboxReady as i32);
    remove_pod(&d, &id).await;
    assert_eq!(netns_files(&d), 0);
}

#[tokio::test]
async fn bad_sandbox_requests_name_the_field_and_create_nothing() {
    let d = daemon().await;
    let mut cases: Vec<(cri::PodSandboxConfig, &str)> = Vec::new();
    let mut c = config("x", false);
    c.metadata = None;
    cases.push((c, "config.metadata"));
    let mut c = config("x", false);
    c.metadata.as_mut().unwrap().name = "a/b".into();
    cases.push((c, "config.metadata.name"));
    let mut c = config("x", false);
    c.metadata.as_mut().unwrap().namespace = "..".into();
    cases.push((c, "config.metadata.namespace"));
    let mut c = config("x", false);
    c.port_mappings = vec![cri::PortMapping {
        protocol: 0,
        container_port: 0,
        host_port: 80,
        host_ip: String::new(),
    }];
    cases.push((c, "container_port"));
    let mut c = config("x", false);
    c.port_mappings = vec![cri::PortMapping {
        protocol: 9,
        container_port: 80,
        host_port: 80,
        host_ip: String::new(),
    }];
    cases.push((c, "protocol"));
    let mut c = config("x", false);
    c.dns_config = Some(cri::DnsConfig {
        servers: vec!["1.1.1.1".into(); 4],
        ..Default::default()
    });
    cases.push((c, "dns_config.servers"));
    for (c, field) in cases {
        let err = run_pod(&d, &c).await.unwrap_err();
        assert_eq!(
            err.code(),
            tonic::Code::InvalidArgument,
            "{field}: {}",
            err.message()
        );
        assert!(err.message().contains(field), "{field}: {}", err.message());
    }
    let err = d
        .runtime()
        .await
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config("x", false)),
            runtime_handler: "kata".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("runtime_handler"));
    assert!(list(&d).await.is_empty());
    assert_eq!(netns_files(&d), 0);
}

/// The pause process's pid, from the verbose status.
async fn pause_pid(d: &Daemon, id: &str) -> u32 {
    let mut rt = d.runtime().await;
    let s = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&s.info["info"]).unwrap();
    info["pid"].as_u64().expect("a running sandbox has a pid") as u32
}

/// The inode of a namespace file (two processes share a namespace iff these agree).
fn ns_inode(path: impl AsRef<std::path::Path>) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path.as_ref())
        .unwrap_or_else(|e| panic!("{}: {e}", path.as_ref().display()))
        .ino()
}

/// Runs `f` on a thread that joined the namespaces `nss` (path, kind) first: sockets it opens
/// live in that network namespace, /proc/sys/net and gethostname answer for it.
fn inside<T: Send + 'static>(
    nss: Vec<(String, nix::sched::CloneFlags)>,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    std::thread::spawn(move || {
        for (path, kind) in nss {
            let fd = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            nix::sched::setns(fd, kind).unwrap_or_else(|e| panic!("setns {path}: {e}"));
        }
        f()
    })
}

fn net_of(d: &Daemon, id: &str) -> Vec<(String, nix::sched::CloneFlags)> {
    vec![(
        d.dir.join("netns").join(id).display().to_string(),
        nix::sched::CloneFlags::CLONE_NEWNET,
    )]
}

/// A TCP server on `port` in the pod's network namespace: answers "pong <what it read>" once.
fn serve_once(d: &Daemon, id: &str, port: u16) -> std::thread::JoinHandle<()> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let h = inside(net_of(d, id), move || {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind(("0.0.0.0", port)).unwrap();
        ready_tx.send(()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        let mut buf = [0u8; 16];
        let n = s.read(&mut buf).unwrap();
        s.write_all(format!("pong {}", String::from_utf8_lossy(&buf[..n])).as_bytes())
            .unwrap();
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("server listening");
    h
}

fn ping(addr: std::net::SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"ping").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

async fn remove_all(d: &Daemon) {
    for s in list(d).await {
        remove_pod(d, &s.id).await;
    }
}

#[tokio::test]
async fn two_pods_reach_each_other_and_a_host_port_reaches_a_pod_from_the_host() {
    let d = daemon().await;
    let a = run_pod(&d, &config("net-a", false)).await.unwrap();
    let host_port = 30000 + fastrand::u16(..20000);
    let mut cb = config("net-b", false);
    cb.port_mappings = vec![cri::PortMapping {
        protocol: cri::Protocol::Tcp as i32,
        container_port: 8080,
        host_port: host_port as i32,
        host_ip: String::new(),
    }];
    let b = run_pod(&d, &cb).await.unwrap();
    let ip_b: std::net::IpAddr = status(&d, &b)
        .await
        .unwrap()
        .network
        .unwrap()
        .ip
        .parse()
        .unwrap();

    // Pod a → pod b over the bridge.
    let server = serve_once(&d, &b, 8080);
    let target = std::net::SocketAddr::new(ip_b, 8080);
    let answer = inside(net_of(&d, &a), move || ping(target)).join().unwrap();
    assert_eq!(answer, "pong ping");
    server.join().unwrap();

    // The host → hostPort on a host address (the bridge's gateway) → pod b's 8080 (portmap DNAT).
    let gateway: std::net::IpAddr = format!("{}0.1", pod_subnet()).parse().unwrap();
    let server = serve_once(&d, &b, 8080);
    let answer =
        tokio::task::spawn_blocking(move || ping(std::net::SocketAddr::new(gateway, host_port)))
            .await
            .unwrap();
    assert_eq!(answer, "pong ping");
    server.join().unwrap();
    remove_all(&d).await;
}

#[tokio::test]
async fn namespace_options_hostname_sysctls_and_dns_are_applied() {
    use nix::sched::CloneFlags;
    let d = daemon().await;
    let own = |kind: &str| ns_inode(format!("/proc/self/ns/{kind}"));

    // A pod of its own: own net, pid, ipc and uts; hostname, sysctls and DNS as asked.
    let mut c = config("own-ns", false);
    c.hostname = "own-host".into();
    let linux = c.linux.as_mut().unwrap();
    linux.sysctls = [
        ("kernel.shm_rmid_forced".to_string(), "1".to_string()),
        (
            "net.ipv4.ip_local_port_range".to_string(),
            "20000 21000".to_string(),
        ),
    ]
    .into();
    c.dns_config = Some(cri::DnsConfig {
        servers: vec!["10.96.0.10".into()],
        searches: vec!["default.svc.cluster.local".into()],
        options: vec!["ndots:5".into()],
    });
    let id = run_pod(&d, &c).await.unwrap();
    let pid = pause_pid(&d, &id).await;
    let proc_ns = |kind: &str| format!("/proc/{pid}/ns/{kind}");
    for kind in ["net", "pid", "ipc", "uts"] {
        assert_ne!(
            ns_inode(proc_ns(kind)),
            own(kind),
            "{kind} namespace is the pod's"
        );
    }
    assert_eq!(
        ns_inode(proc_ns("net")),
        ns_inode(d.dir.join("netns").join(&id)),
        "the pause joined the pinned netns"
    );
    let read = |p: &'static str| move || std::fs::read_to_string(p).unwrap().trim().to_string();
    let (hostname, shm, range, unpriv) = inside(
        vec![
            (proc_ns("uts"), CloneFlags::CLONE_NEWUTS),
            (proc_ns("ipc"), CloneFlags::CLONE_NEWIPC),
            (proc_ns("net"), CloneFlags::CLONE_NEWNET),
        ],
        move || {
            (
                nix::unistd::gethostname().unwrap().into_string().unwrap(),
                read("/proc/sys/kernel/shm_rmid_forced")(),
                read("/proc/sys/net/ipv4/ip_local_port_range")(),
                read("/proc/sys/net/ipv4/ip_unprivileged_port_start")(),
            )
        },
    )
    .join()
    .unwrap();
    assert_eq!(hostname, "own-host");
    assert_eq!(shm, "1");
    assert_eq!(
        range.split_whitespace().collect::<Vec<_>>(),
        ["20000", "21000"]
    );
    assert_eq!(unpriv, "0", "containerd's default for pod-network pods");
    let files = d.state_dir.join("sandboxes").join(&id);
    assert_eq!(
        std::fs::read_to_string(files.join("resolv.conf")).unwrap(),
        "search default.svc.cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
    );
    assert_eq!(
        std::fs::read_to_string(files.join("hostname")).unwrap(),
        "own-host\n"
    );
    assert_eq!(
        std::fs::read(files.join("hosts")).unwrap(),
        std::fs::read("/etc/hosts").unwrap()
    );

    // Host network, PID and IPC: the host's namespaces (UTS too, with the network), the host's
    // resolv.conf without a DNS config.
    let mut c = config("host-ns", true);
    let opts = c
        .linux
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap()
        .namespace_options
        .as_mut()
        .unwrap();
    opts.pid = cri::NamespaceMode::Node as i32;
    opts.ipc = cri::NamespaceMode::Node as i32;
    let host = run_pod(&d, &c).await.unwrap();
    let pid = pause_pid(&d, &host).await;
    for kind in ["net", "pid", "ipc", "uts"] {
        assert_eq!(
            ns_inode(format!("/proc/{pid}/ns/{kind}")),
            own(kind),
            "{kind} namespace is the host's"
        );
    }
    let files = d.state_dir.join("sandboxes").join(&host);
    assert_eq!(
        std::fs::read(files.join("resolv.conf")).unwrap(),
        std::fs::read("/etc/resolv.conf").unwrap_or_default()
    );
    remove_all(&d).await;
    assert!(!files.exists(), "the sandbox's files go with it");
}

/// The first octets of the pod network's addresses (the rig's bridge: `10.88.`; override with
/// CONCORD_TEST_POD_SUBNET, e.g. on hack/systemd-node.sh's node).
fn pod_subnet() -> String {
    std::env::var("CONCORD_TEST_POD_SUBNET").unwrap_or_else(|_| "10.88.".into())
}

/// Whether host-local IPAM holds an address for `id` (its store: the rig's, or
/// CONCORD_TEST_IPAM_DIR).
fn allocated_to(id: &str) -> bool {
    let dir = std::env::var("CONCORD_TEST_IPAM_DIR")
        .unwrap_or_else(|_| "/var/lib/cni/networks/rig-bridge".into());
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| std::fs::read_to_string(e.unwrap().path()).ok())
                .any(|c| c.contains(id))
        })
        .unwrap_or(false)
}

#[tokio::test]
async fn a_configured_runtime_handler_runs_the_pod_with_its_runc_binary_and_root() {
    let mut d = Daemon::new();
    // A runc wrapper that notes each call, and a runc root of the handler's own.
    let calls = d.dir.join("runc-calls");
    let wrapper = d.dir.join("runc-wrapper");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho \"$@\" >> {}\nexec /usr/sbin/runc \"$@\"\n",
            calls.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let root = d.dir.join("runc-root");
    let toml = d.dir.join("concord.toml");
    std::fs::write(
        &toml,
        format!(
            "[runtime.handlers.runc]\nruntime_type = \"io.containerd.runc.v2\"\n\n\
             [runtime.handlers.traced]\nruntime_type = \"io.containerd.runc.v2\"\n\
             binary_name = {:?}\nroot = {:?}\n",
            wrapper.display().to_string(),
            root.display().to_string()
        ),
    )
    .unwrap();
    d.extra.push(format!("--config={}", toml.display()));
    let d = daemon_with(d).await;
    let id = d
        .runtime()
        .await
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config("traced", false)),
            runtime_handler: "traced".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    let s = status(&d, &id).await.unwrap();
    assert_eq!(s.state, cri::PodSandboxState::SandboxReady as i32);
    assert_eq!(s.runtime_handler, "traced");
    assert!(
        std::fs::read_to_string(&calls)
            .unwrap_or_default()
            .contains(&id),
        "the handler's runc binary ran the pause container"
    );
    assert!(
        root.join(&d.namespace).join(&id).exists(),
        "runc state under the handler's root"
    );
    // The default handler still answers; an unknown one names the configured ones.
    let plain = run_pod(&d, &config("plain", false)).await.unwrap();
    assert_eq!(status(&d, &plain).await.unwrap().runtime_handler, "");
    let err = d
        .runtime()
        .await
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config("x", false)),
            runtime_handler: "kata".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("runc, traced"), "{}", err.message());
    remove_all(&d).await;
    assert!(!root.join(&d.namespace).join(&id).exists());
}

#[tokio::test]
async fn what_a_lost_journal_left_behind_is_found_and_removed() {
    left_behind_is_found_and_removed(false).await;
}

/// The state dir lost whole (the CNI results cached there too): the pod's address is released
/// through the network configured now.
#[tokio::test]
async fn what_a_lost_state_dir_left_behind_is_found_and_removed() {
    left_behind_is_found_and_removed(true).await;
}

/// A pod with a running container, then a crash that loses the journal (`whole`: the whole
/// state dir): the restarted daemon finds what they left and removes it.
async fn left_behind_is_found_and_removed(whole: bool) {
    let mut d = daemon().await;
    let mut pod = config("orphan", false);
    pod.log_directory = d.dir.join("logs").display().to_string();
    let id = run_pod(&d, &pod).await.unwrap();
    assert!(allocated_to(&id));
    // A running container in the pod too.
    pull_ok(&d, "busybox").await;
    let mut rt = d.runtime().await;
    let cid = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: id.clone(),
            config: Some(container_config("app", "busybox", &["sleep", "1000"])),
            sandbox_config: None,
        })
        .await
        .unwrap()
        .into_inner()
        .container_id;
    rt.start_container(cri::StartContainerRequest { container_id: cid })
        .await
        .unwrap();
    // A crash that lost the journal: the pod's task, container, snapshot, netns, CNI result and
    // IP exist, and no record names them.
    d.kill9();
    if whole {
        // The pod's /dev/shm is mounted in it.
        let shm = d.state_dir.join("sandboxes").join(&id).join("shm");
        nix::mount::umount2(&shm, nix::mount::MntFlags::MNT_DETACH).unwrap();
        std::fs::remove_dir_all(&d.state_dir).unwrap();
    } else {
        for f in std::fs::read_dir(&d.state_dir).unwrap() {
            let f = f.unwrap().path();
            if f.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("journal")
            {
                std::fs::remove_file(f).unwrap();
            }
        }
    }
    d.start().await;
    assert!(list(&d).await.is_empty());
    eventually(
        Duration::from_secs(30),
        "the orphans' netns, CNI result, IP, containers and snapshots removed",
        || async {
            let ctd = concord::containerd::Containerd::new(
                &d.containerd,
                &d.namespace,
                Default::default(),
            );
            let owned = ctd.list_owned("overlayfs", "").await.unwrap();
            netns_files(&d) == 0
                && std::fs::read_dir(d.state_dir.join("cni-cache"))
                    .map(|r| r.count() == 0)
                    .unwrap_or(true)
                && !allocated_to(&id)
                && owned.is_empty()
        },
    )
    .await;
    let shims = std::process::Command::new("pgrep")
        .args(["-f", &format!("-namespace {} ", d.namespace)])
        .output()
        .unwrap();
    assert!(shims.stdout.is_empty(), "the orphan's shim is gone");
    assert!(d.log().contains("orphaned resources found"));
}

/// The `Seccomp:` mode of a process (0 none, 2 filter).
fn seccomp_mode(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .unwrap()
        .trim()
        .to_string()
}

#[tokio::test]
async fn seccomp_follows_the_security_context_and_a_bad_profile_is_refused() {
    use cri::security_profile::ProfileType;
    let d = daemon().await;
    let with = |name: &str, profile: Option<(ProfileType, String)>, privileged: bool| {
        let mut c = config(name, false);
        let sc = c.linux.as_mut().unwrap().security_context.as_mut().unwrap();
        sc.seccomp = profile.map(|(t, r)| cri::SecurityProfile {
            profile_type: t as i32,
            localhost_ref: r,
        });
        sc.privileged = privileged;
        c
    };
    let custom = d.dir.join("profile.json");
    std::fs::write(
        &custom,
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["reboot"], "action": "SCMP_ACT_ERRNO"}]}"#,
    )
    .unwrap();
    let custom = custom.display().to_string();
    for (name, profile, privileged, mode) in [
        (
            "sc-default",
            Some((ProfileType::RuntimeDefault, String::new())),
            false,
            "2",
        ),
        ("sc-unset", None, false, "0"),
        (
            "sc-unconfined",
            Some((ProfileType::Unconfined, String::new())),
            false,
            "0",
        ),
        (
            "sc-localhost",
            Some((ProfileType::Localhost, custom.clone())),
            false,
            "2",
        ),
        (
            "sc-privileged",
            Some((ProfileType::RuntimeDefault, String::new())),
            true,
            "0",
        ),
    ] {
        let id = run_pod(&d, &with(name, profile, privileged)).await.unwrap();
        assert_eq!(seccomp_mode(pause_pid(&d, &id).await), mode, "{name}");
    }
    for bad in ["relative.json", "/nonexistent/profile.json"] {
        let err = run_pod(
            &d,
            &with("sc-bad", Some((ProfileType::Localhost, bad.into())), false),
        )
        .await
        .unwrap_err();
        assert_eq!(
            err.code(),
            tonic::Code::InvalidArgument,
            "{}",
            err.message()
        );
        assert!(
            err.message()
                .contains("config.linux.security_context.seccomp"),
            "{}",
            err.message()
        );
    }
    assert_eq!(list(&d).await.len(), 5, "nothing made for the refused ones");
    remove_all(&d).await;
}

#[tokio::test]
async fn no_or_a_broken_cni_config_fails_the_run_clearly_and_creates_nothing() {
    let mut d = Daemon::new();
    let conf = d.dir.join("cni-conf");
    std::fs::create_dir_all(&conf).unwrap();
    d.extra.retain(|e| !e.starts_with("--cni-conf-dir"));
    d.extra.push(format!("--cni-conf-dir={}", conf.display()));
    let d = daemon_with(d).await;
    // No config at all.
    let err = run_pod(&d, &config("nonet", false)).await.unwrap_err();
    assert!(
        err.message().contains("CNI ADD") && err.message().contains("network not ready"),
        "{}",
        err.message()
    );
    // The pause container the concurrent half was making may still be going away.
    eventually(
        Duration::from_secs(10),
        "the failed sandbox gone",
        || async { list(&d).await.is_empty() },
    )
    .await;
    assert_eq!(netns_files(&d), 0);
    // A broken one is not usable either, and says why in Status.
    std::fs::write(conf.join("10-broken.conflist"), "{ not json").unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let err = run_pod(&d, &config("nonet", false)).await.unwrap_err();
    assert!(
        err.message().contains("network not ready"),
        "{}",
        err.message()
    );
    let s = d
        .runtime()
        .await
        .status(cri::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    let net = s
        .conditions
        .iter()
        .find(|c| c.r#type == "NetworkReady")
        .unwrap();
    assert!(!net.status && !net.message.is_empty(), "{net:?}");
    eventually(
        Duration::from_secs(10),
        "the failed sandbox gone",
        || async { list(&d).await.is_empty() },
    )
    .await;
    assert_eq!(netns_files(&d), 0);
    // Oversized labels are refused by name.
    let mut c = config("big", false);
    c.labels = [("big".to_string(), "x".repeat(300 << 10))].into();
    let err = run_pod(&d, &c).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("config.labels"), "{}", err.message());
}

#[tokio::test]
async fn bandwidth_annotations_reach_the_bandwidth_plugin() {
    let mut d = Daemon::new();
    let conf = d.dir.join("cni-conf");
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::write(
        conf.join("10-bw.conflist"),
        r#"{"cniVersion": "0.4.0", "name": "bw-test", "plugins": [
            {"type": "bridge", "bridge": "cni-bw", "isGateway": true,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.95.0.0/24"}]]}},
            {"type": "bandwidth", "capabilities": {"bandwidth": true}}]}"#,
    )
    .unwrap();
    d.extra.retain(|e| !e.starts_with("--cni-conf-dir"));
    d.extra.push(format!("--cni-conf-dir={}", conf.display()));
    let d = daemon_with(d).await;
    let mut c = config("shaped", false);
    c.annotations = [(
        "kubernetes.io/egress-bandwidth".to_string(),
        "10M".to_string(),
    )]
    .into();
    let id = run_pod(&d, &c).await.unwrap();
    // The plugin shapes the pod's egress on the host end of its veth: a tbf qdisc at 10 Mbit.
    let qdiscs = std::process::Command::new("tc")
        .args(["qdisc", "show"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&qdiscs.stdout);
    assert!(
        text.lines()
            .any(|l| l.contains("tbf") && l.contains("rate 10Mbit")),
        "{text}"
    );
    let mut bad = config("badbw", false);
    bad.annotations = [(
        "kubernetes.io/ingress-bandwidth".to_string(),
        "fast".to_string(),
    )]
    .into();
    let err = run_pod(&d, &bad).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("ingress-bandwidth"),
        "{}",
        err.message()
    );
    remove_pod(&d, &id).await;
}
