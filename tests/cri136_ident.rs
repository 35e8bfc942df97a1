//! CRI 1.36's identity fields against the real node: the config's stop signal (sent by
//! StopContainer, reported by ContainerStatus), SupplementalGroupsPolicy Merge and Strict with
//! the identity reported in ContainerStatus.user, recursive read-only mounts refused, the
//! features Status reports per runtime handler, and the image names ContainerStatus gives.

mod common;

use std::time::{Duration, Instant};

use common::{
    container_config, container_status, eventually, list_containers, pod, pod_daemon,
    pod_daemon_with_config, pull_ok, remove_pod, Daemon, Pod,
};
use concord::cri;

/// A container named `name` of `image` running `script` with sh, logging to `<name>.log`.
fn sh(name: &str, image: &str, script: &str) -> cri::ContainerConfig {
    cri::ContainerConfig {
        log_path: format!("{name}.log"),
        ..container_config(name, image, &["sh", "-c", script])
    }
}

/// The raw CRI log of container `name` of pod `p` (empty until written).
fn log_of(d: &Daemon, p: &Pod, name: &str) -> String {
    let pod_name = &p.config.metadata.as_ref().unwrap().name;
    let path = d
        .dir
        .join("logs")
        .join(pod_name)
        .join(format!("{name}.log"));
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Waits until container `name`'s log has a complete stdout line `line`.
async fn wait_for_line(d: &Daemon, p: &Pod, name: &str, line: &str) {
    let want = format!(" stdout F {line}\n");
    eventually(Duration::from_secs(20), line, || async {
        log_of(d, p, name).contains(&want)
    })
    .await;
}

/// The names of the daemon's containers.
async fn container_names(d: &Daemon) -> Vec<String> {
    list_containers(d)
        .await
        .into_iter()
        .filter_map(|c| c.metadata.map(|m| m.name))
        .collect()
}

#[tokio::test]
async fn the_configs_stop_signal_is_sent_by_stop_and_reported() {
    let d = pod_daemon(&[]).await;
    let p = pod(&d, "stopsig").await;
    let mut c = sh(
        "usr1",
        "busybox",
        "trap 'echo got-usr1; exit 0' USR1; echo ready; while true; do sleep 0.1; done",
    );
    c.stop_signal = cri::Signal::Sigusr1 as i32;
    let id = p.run_container(&d, c).await;
    wait_for_line(&d, &p, "usr1", "ready").await;
    let s = container_status(&d, &id).await;
    assert_eq!(s.stop_signal, cri::Signal::Sigusr1 as i32);

    // A long grace: the container leaves on SIGUSR1 itself, well before SIGKILL would come.
    let started = Instant::now();
    d.runtime()
        .await
        .stop_container(cri::StopContainerRequest {
            container_id: id.clone(),
            timeout: 60,
        })
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    let s = container_status(&d, &id).await;
    assert_eq!(s.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!(s.exit_code, 0, "{} {}", s.reason, s.message);
    assert!(log_of(&d, &p, "usr1").contains(" stdout F got-usr1\n"));
    assert_eq!(s.stop_signal, cri::Signal::Sigusr1 as i32);

    // RUNTIME_DEFAULT: busybox names no StopSignal, so SIGTERM.
    let plain = p
        .create(&d, sh("plain", "busybox", "sleep 1000"))
        .await
        .unwrap();
    let s = container_status(&d, &plain).await;
    assert_eq!(s.stop_signal, cri::Signal::Sigterm as i32);

    // A value the enum does not name: refused, naming the field, nothing made.
    let mut bad = sh("badsig", "busybox", "sleep 1000");
    bad.stop_signal = 99;
    let err = p.create(&d, bad).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("config.stop_signal"),
        "{}",
        err.message()
    );
    assert!(!container_names(&d).await.contains(&"badsig".to_string()));
    remove_pod(&d, &p.id).await;
}

#[tokio::test]
async fn strict_supplemental_groups_leave_out_the_images_groups() {
    let d = pod_daemon(&[]).await;
    let p = pod(&d, "groups").await;
    // USER 1000 of this image is listed in its /etc/group's group 50000.
    let image = "gcr.io/k8s-staging-cri-tools/test-image-predefined-group:latest";
    pull_ok(&d, image).await;
    let groups = |name: &str, policy: cri::SupplementalGroupsPolicy| {
        let sc = cri::LinuxContainerSecurityContext {
            run_as_user: Some(cri::Int64Value { value: 1000 }),
            supplemental_groups: vec![1234],
            supplemental_groups_policy: policy as i32,
            ..Default::default()
        };
        cri::ContainerConfig {
            linux: Some(cri::LinuxContainerConfig {
                security_context: Some(sc),
                ..Default::default()
            }),
            ..sh(name, image, "id -G; sleep 1000")
        }
    };
    let merge = p
        .run_container(&d, groups("merge", cri::SupplementalGroupsPolicy::Merge))
        .await;
    let strict = p
        .run_container(&d, groups("strict", cri::SupplementalGroupsPolicy::Strict))
        .await;
    wait_for_line(&d, &p, "merge", "1000 1234 50000").await;
    wait_for_line(&d, &p, "strict", "1000 1234").await;
    let user = |s: cri::ContainerStatus| {
        let mut u = s.user.and_then(|u| u.linux).expect("ContainerStatus.user");
        u.supplemental_groups.sort();
        (u.uid, u.gid, u.supplemental_groups)
    };
    assert_eq!(
        user(container_status(&d, &merge).await),
        (1000, 1000, vec![1000, 1234, 50000])
    );
    assert_eq!(
        user(container_status(&d, &strict).await),
        (1000, 1000, vec![1000, 1234])
    );

    let mut bad = groups("badpolicy", cri::SupplementalGroupsPolicy::Merge);
    let sc = bad.linux.as_mut().and_then(|l| l.security_context.as_mut());
    sc.unwrap().supplemental_groups_policy = 5;
    let err = p.create(&d, bad).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message()
            .contains("config.linux.security_context.supplemental_groups_policy"),
        "{}",
        err.message()
    );
    remove_pod(&d, &p.id).await;
}

#[tokio::test]
async fn recursive_read_only_mounts_are_refused_naming_the_field() {
    let d = pod_daemon(&[]).await;
    let p = pod(&d, "rro").await;
    let host = d.dir.join("rro-src");
    std::fs::create_dir_all(&host).unwrap();
    let with_mount = |name: &str, readonly: bool| cri::ContainerConfig {
        mounts: vec![cri::Mount {
            container_path: "/data".into(),
            host_path: host.display().to_string(),
            readonly,
            recursive_read_only: true,
            ..Default::default()
        }],
        ..sh(name, "busybox", "sleep 1000")
    };
    let err = p.create(&d, with_mount("rro-ro", true)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("config.mounts.recursive_read_only")
            && err.message().contains("RROUnsupported"),
        "{}",
        err.message()
    );
    let err = p.create(&d, with_mount("rro-rw", false)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("config.mounts.recursive_read_only")
            && err.message().contains("readonly"),
        "{}",
        err.message()
    );
    let names = container_names(&d).await;
    assert!(names.is_empty(), "{names:?}");
    remove_pod(&d, &p.id).await;
}

#[tokio::test]
async fn status_reports_the_features_of_each_runtime_handler() {
    let config = "[runtime.handlers.runc]\nruntime_type = \"io.containerd.runc.v2\"\n\n\
                  [runtime.handlers.other]\nruntime_type = \"io.containerd.runc.v2\"\n";
    let d = pod_daemon_with_config(&[], config).await;
    let s = d
        .runtime()
        .await
        .status(cri::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    let handlers: Vec<(String, bool, bool)> = s
        .runtime_handlers
        .iter()
        .map(|h| {
            let f = h.features.expect("features");
            (
                h.name.clone(),
                f.recursive_read_only_mounts,
                f.user_namespaces,
            )
        })
        .collect();
    let want = |name: &str| (name.to_string(), false, true);
    assert_eq!(handlers, [want(""), want("other"), want("runc")]);
    let features = s.features.expect("Status.features");
    assert!(features.supplemental_groups_policy);
    assert!(!features.user_namespaces_host_network);
}

#[tokio::test]
async fn container_status_names_the_image_by_tag_and_repo_digest() {
    let d = pod_daemon(&[]).await;
    let p = pod(&d, "imgref").await;
    let image_status = |name: &str| {
        let name = name.to_string();
        let d = &d;
        async move {
            d.images()
                .await
                .image_status(cri::ImageStatusRequest {
                    image: Some(cri::ImageSpec {
                        image: name,
                        ..Default::default()
                    }),
                    verbose: false,
                })
                .await
                .unwrap()
                .into_inner()
                .image
                .expect("image known")
        }
    };
    // Pulled: its repo tag, and its repo digest as image_ref (kubelet's imageID).
    let pulled = p
        .create(&d, sh("pulled", "busybox", "sleep 1000"))
        .await
        .unwrap();
    let img = image_status("busybox").await;
    let s = container_status(&d, &pulled).await;
    let spec = s.image.clone().unwrap();
    assert_eq!(spec.image, "docker.io/library/busybox:latest");
    assert!(
        s.image_ref.starts_with("docker.io/library/busybox@sha256:"),
        "{}",
        s.image_ref
    );
    assert_eq!(spec.image_ref, s.image_ref);
    assert_eq!(s.image_id, img.id);
    assert_eq!(img.repo_digests.first(), Some(&s.image_ref));

    // Loaded from an archive: its name, and whatever ImageStatus gives as its digest (else
    // its id): the two RPCs kubelet reads agree.
    let archive = d.dir.join("httpd.tar");
    let oci = std::env::var("CONCORD_TEST_OCI_LAYOUT").unwrap_or_else(|_| "/tmp/rig/oci".into());
    let st = std::process::Command::new("skopeo")
        .args(["copy", "--quiet", &format!("oci:{oci}:httpd")])
        .arg(format!(
            "oci-archive:{}:example.test/ident/httpd:oci",
            archive.display()
        ))
        .status()
        .expect("skopeo (hack/dev-up.sh installs it)");
    assert!(st.success());
    let mut images = concord::proto::images_client::ImagesClient::new(d.channel().await.unwrap());
    images
        .load_image(concord::proto::LoadImageRequest {
            file_path: archive.display().to_string(),
        })
        .await
        .unwrap();
    let loaded = p
        .create(
            &d,
            container_config("loaded", "example.test/ident/httpd:oci", &[]),
        )
        .await
        .unwrap();
    let img = image_status("example.test/ident/httpd:oci").await;
    let s = container_status(&d, &loaded).await;
    assert_eq!(
        s.image.clone().unwrap().image,
        "example.test/ident/httpd:oci"
    );
    let want = img.repo_digests.first().cloned().unwrap_or(img.id.clone());
    assert_eq!(s.image_ref, want);
    assert_eq!(s.image.unwrap().image_ref, want);
    assert_eq!(s.image_id, img.id);

    // ListContainers: the ImageSpec the container was created with, and the image id.
    let listed = list_containers(&d).await;
    let c = listed.iter().find(|c| c.id == pulled).unwrap();
    assert_eq!(c.image.as_ref().unwrap().image, "busybox");
    assert_eq!(c.image_ref, c.image_id);
    remove_pod(&d, &p.id).await;
}
