//! Pod user namespaces (`hostUsers: false`) on the real node: the pause container makes the
//! pod's user namespace with the kubelet's mappings, containers join it, their root file
//! systems are owned by the mapped ids, and bad mappings are refused naming the field.

mod common;

use std::os::unix::fs::MetadataExt;

use common::{
    container_config, exec_out, pod_config, pod_daemon, pull_ok, remove_pod, Daemon, Pod,
};
use concord::cri;

const FIELD: &str = "config.linux.security_context.namespace_options.userns_options";

fn userns(mode: cri::NamespaceMode, host: u32, len: u32) -> cri::NamespaceOption {
    let map = || {
        vec![cri::IdMapping {
            host_id: host,
            container_id: 0,
            length: len,
        }]
    };
    cri::NamespaceOption {
        userns_options: Some(cri::UserNamespace {
            mode: mode as i32,
            uids: map(),
            gids: map(),
        }),
        ..Default::default()
    }
}

fn pod_in_userns(d: &Daemon, name: &str, ns: cri::NamespaceOption) -> cri::PodSandboxConfig {
    let mut config = pod_config(d, name);
    config.linux = Some(cri::LinuxPodSandboxConfig {
        security_context: Some(cri::LinuxSandboxSecurityContext {
            namespace_options: Some(ns),
            ..Default::default()
        }),
        ..Default::default()
    });
    config
}

fn in_userns(mut c: cri::ContainerConfig, ns: cri::NamespaceOption) -> cri::ContainerConfig {
    c.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            namespace_options: Some(ns),
            ..Default::default()
        }),
        ..Default::default()
    });
    c
}

/// Bytes allocated under `dir` (not following links, hard links counted once per name).
fn allocated(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(p) = stack.pop() {
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        total += m.blocks() * 512;
        if m.is_dir() {
            stack.extend(std::fs::read_dir(&p).unwrap().flatten().map(|e| e.path()));
        }
    }
    total
}

#[tokio::test]
async fn a_pod_user_namespace_maps_root_to_the_host_range() {
    let d = pod_daemon(&[]).await;
    pull_ok(&d, "busybox").await;
    let ns = userns(cri::NamespaceMode::Pod, 200000, 65536);
    let pod = Pod::run(&d, pod_in_userns(&d, "userns", ns.clone())).await;
    let pause = common::pod_info(&d, &pod.id).await["pid"].as_u64().unwrap();
    let map = std::fs::read_to_string(format!("/proc/{pause}/uid_map")).unwrap();
    assert_eq!(
        map.split_whitespace().collect::<Vec<_>>(),
        ["0", "200000", "65536"]
    );
    let c = container_config("shell", "busybox", &["sleep", "300"]);
    let id = pod.run_container(&d, in_userns(c, ns)).await;
    let uid_map = exec_out(&d, &id, &["cat", "/proc/self/uid_map"]).await;
    assert_eq!(
        uid_map.split_whitespace().collect::<Vec<_>>(),
        ["0", "200000", "65536"]
    );
    assert_eq!(exec_out(&d, &id, &["id", "-u"]).await, "0");
    // The image's files are root's inside: the root file system was shifted.
    assert_eq!(
        exec_out(&d, &id, &["stat", "-c", "%u:%g", "/bin"]).await,
        "0:0"
    );
    exec_out(&d, &id, &["touch", "/tmp/made-inside"]).await;
    let pid = common::container_info(&d, &id).await["pid"]
        .as_u64()
        .unwrap();
    let own = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/user")).unwrap();
    assert_eq!(own(&pid.to_string()), own(&pause.to_string()));
    assert_ne!(own(&pid.to_string()), own("self"));
    let made = std::fs::metadata(format!("/proc/{pid}/root/tmp/made-inside")).unwrap();
    assert_eq!((made.uid(), made.gid()), (200000, 200000));
    // The pod's files are its root's.
    let hosts = exec_out(&d, &id, &["stat", "-c", "%u", "/etc/hosts"]).await;
    assert_eq!(hosts, "0");
    // What the shift cost (overlayfs copies every entry up).
    let root = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let upper = root
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some("/"))
        .and_then(|l| l.split("upperdir=").nth(1))
        .map(|u| u.split(',').next().unwrap().to_string());
    if let Some(upper) = upper {
        eprintln!(
            "upper dir {upper}: {} bytes allocated",
            allocated(upper.as_ref())
        );
    }
    // /sys is the host's, read-only (a user namespace cannot mount the pod's netns's sysfs).
    let w = common::exec_sync(&d, &id, &["touch", "/sys/x"]).await;
    assert_ne!(w.exit_code, 0);
    let containers = d.state_dir.join("containers").join(&id);
    assert!(containers.join("rootfs-shifted").exists());
    let sandbox = d.state_dir.join("sandboxes").join(&pod.id);
    assert!(sandbox.join("userns").exists());
    remove_pod(&d, &pod.id).await;
    assert!(!containers.exists(), "{} is left", containers.display());
    assert!(!sandbox.exists(), "{} is left", sandbox.display());
    let left: Vec<_> = std::fs::read_dir(d.state_dir.join("tmp"))
        .map(|it| it.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "scratch holds {left:?}");
}

#[tokio::test]
async fn bad_user_namespaces_are_refused_naming_the_field() {
    let d = pod_daemon(&[]).await;
    pull_ok(&d, "busybox").await;
    use cri::NamespaceMode::*;
    for (name, ns) in [
        ("empty", userns(Pod, 200000, 0)),
        ("overflow", userns(Pod, u32::MAX - 10, 65536)),
        ("container", userns(Container, 200000, 65536)),
        ("target", userns(Target, 200000, 65536)),
        ("node-maps", userns(Node, 200000, 65536)),
    ] {
        let e = common::run_pod(&d, &pod_in_userns(&d, name, ns))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{name}: {e:?}");
        assert!(e.message().contains(FIELD), "{name}: {}", e.message());
    }
    let mut host = userns(Pod, 200000, 65536);
    host.network = Node as i32;
    let e = common::run_pod(&d, &pod_in_userns(&d, "hostnet", host))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    // A container must carry its pod's mappings.
    let pod = common::Pod::run(&d, pod_in_userns(&d, "mine", userns(Pod, 300000, 65536))).await;
    let c = container_config("other", "busybox", &["sleep", "300"]);
    let e = pod
        .create(&d, in_userns(c, userns(Pod, 400000, 65536)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains(FIELD), "{}", e.message());
    remove_pod(&d, &pod.id).await;
}
