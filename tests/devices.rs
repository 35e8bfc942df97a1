//! Devices on the real node: CDI devices (as device plugins and DRA drivers hand them over, in
//! `cdi_devices` or `cdi.k8s.io/*` annotations) resolved against spec files and seen inside the
//! container; an unknown device refused at CreateContainer naming the field; a privileged
//! container given the host's device nodes, as containerd gives them.

mod common;

use common::{
    container_config, exec_out, list_containers, pod, pod_config, pod_daemon, pull_ok, remove_pod,
    Pod,
};
use concord::cri;

const SPEC: &str = r#"
cdiVersion: "0.6.0"
kind: concord.test/dev
containerEdits:
  env: ["CDI_VENDOR=concord-test"]
devices:
  - name: null0
    containerEdits:
      env: ["CDI_DEVICE=null0"]
      deviceNodes:
        - path: /dev/cdi-null0
          hostPath: /dev/null
          permissions: rw
      mounts:
        - hostPath: HOSTDIR
          containerPath: /cdi-data
          options: [rbind, ro]
  - name: zero
    containerEdits:
      deviceNodes:
        - path: /dev/cdi-zero
          hostPath: /dev/zero
"#;

/// A daemon whose CDI spec dirs are two directories of the test's own.
async fn cdi_daemon() -> (common::Daemon, std::path::PathBuf, std::path::PathBuf) {
    let base = tempfile::tempdir().unwrap().keep();
    let (low, high) = (base.join("etc-cdi"), base.join("run-cdi"));
    std::fs::create_dir_all(&low).unwrap();
    std::fs::create_dir_all(&high).unwrap();
    let data = base.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("hello"), "from the CDI mount\n").unwrap();
    let spec = SPEC.replace("HOSTDIR", &data.display().to_string());
    std::fs::write(low.join("concord-test.yaml"), spec).unwrap();
    let dirs = format!("--cdi-spec-dirs={}:{}", low.display(), high.display());
    (pod_daemon(&[&dirs]).await, low, high)
}

#[tokio::test]
async fn cdi_devices_from_the_field_and_annotations_reach_the_container() {
    let (d, _low, high) = cdi_daemon().await;
    let pod = pod(&d, "cdi").await;
    let mut c = container_config("gpu", "busybox", &["sleep", "300"]);
    c.cdi_devices = vec![cri::CdiDevice {
        name: "concord.test/dev=null0".into(),
    }];
    c.annotations.insert(
        "cdi.k8s.io/concord.test_zero".into(),
        "concord.test/dev=zero".into(),
    );
    let id = pod.run_container(&d, c).await;
    let out = exec_out(&d, &id, &["sh", "-c", "env | grep ^CDI_ | sort; ls -l /dev/cdi-null0 /dev/cdi-zero; cat /cdi-data/hello; echo x > /dev/cdi-null0 && echo written"]).await;
    assert!(out.contains("CDI_DEVICE=null0"), "{out}");
    assert!(out.contains("CDI_VENDOR=concord-test"), "{out}");
    assert!(out.contains("from the CDI mount"), "{out}");
    assert!(out.contains("written"), "{out}");
    // The nodes carry the host devices' numbers: null is 1, 3; zero is 1, 5.
    assert!(out.contains("1,   3") && out.contains("1,   5"), "{out}");

    // A spec in the higher-priority directory overrides the device.
    let over = r#"{"cdiVersion":"0.5.0","kind":"concord.test/dev","devices":[
        {"name":"null0","containerEdits":{"env":["CDI_DEVICE=overridden"]}}]}"#;
    std::fs::write(high.join("override.json"), over).unwrap();
    let mut c = container_config("gpu2", "busybox", &["sleep", "300"]);
    c.cdi_devices = vec![cri::CdiDevice {
        name: "concord.test/dev=null0".into(),
    }];
    let id = pod.run_container(&d, c).await;
    let out = exec_out(
        &d,
        &id,
        &[
            "sh",
            "-c",
            "env | grep ^CDI_DEVICE; ls /dev/cdi-null0 || true",
        ],
    )
    .await;
    assert!(out.contains("CDI_DEVICE=overridden"), "{out}");
    remove_pod(&d, &pod.id).await;
}

#[tokio::test]
async fn an_unknown_or_malformed_cdi_device_is_refused_naming_the_field() {
    let (d, _low, _high) = cdi_daemon().await;
    let pod = pod(&d, "cdi-bad").await;
    let before = list_containers(&d).await.len();
    let cases = [
        (
            vec!["concord.test/dev=nope"],
            vec![],
            "config.cdi_devices",
            "unresolvable CDI devices concord.test/dev=nope",
        ),
        (
            vec!["nope"],
            vec![],
            "config.cdi_devices",
            "not a qualified CDI device name",
        ),
        (
            vec![],
            vec![("cdi.k8s.io/x", "concord.test/dev=null0,bad")],
            "config.annotations",
            "cdi.k8s.io/x",
        ),
    ];
    for (names, annotations, field, why) in cases {
        let mut c = container_config("bad", "busybox", &["true"]);
        c.cdi_devices = names
            .iter()
            .map(|n| cri::CdiDevice {
                name: n.to_string(),
            })
            .collect();
        c.annotations.extend(
            annotations
                .iter()
                .map(|(k, v): &(&str, &str)| (k.to_string(), v.to_string())),
        );
        let err = pod.create(&d, c).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(
            err.message().contains(field) && err.message().contains(why),
            "{err:?}"
        );
    }
    // Nothing half-created.
    let after = list_containers(&d).await.len();
    assert_eq!(before, after);
    remove_pod(&d, &pod.id).await;
}

#[tokio::test]
async fn a_privileged_container_gets_the_hosts_devices() {
    let d = pod_daemon(&[]).await;
    pull_ok(&d, "busybox").await;
    let mut config = pod_config(&d, "privileged-devices");
    config.linux = Some(cri::LinuxPodSandboxConfig {
        security_context: Some(cri::LinuxSandboxSecurityContext {
            privileged: true,
            ..Default::default()
        }),
        ..Default::default()
    });
    let pod = Pod::run(&d, config).await;
    let host: Vec<String> = concord::oci::devices::host_devices(std::path::Path::new("/dev"))
        .iter()
        .map(|d| d.path().display().to_string())
        .collect();
    let mut c = container_config("priv", "busybox", &["sleep", "300"]);
    c.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            privileged: true,
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = pod.run_container(&d, c).await;
    let listing = exec_out(&d, &id, &["find", "/dev", "-type", "c", "-o", "-type", "b"]).await;
    let seen: Vec<&str> = listing.lines().collect();
    // runc makes /dev/ptmx a link to the container's own pts/ptmx.
    let missing: Vec<&String> = host
        .iter()
        .filter(|p| !seen.contains(&p.as_str()) && *p != "/dev/ptmx")
        .collect();
    assert!(
        missing.is_empty(),
        "host devices missing in the container: {missing:?}\n{listing}"
    );
    // Beyond runc's default set: e.g. the loop devices a CSI driver would use.
    assert!(host.len() > 10, "{host:?}");

    // An unprivileged container gets only the default nodes.
    let id = pod
        .run_container(&d, container_config("plain", "busybox", &["sleep", "300"]))
        .await;
    let listing = exec_out(&d, &id, &["find", "/dev", "-type", "c", "-o", "-type", "b"]).await;
    assert!(listing.lines().count() < 12, "{listing}");
    assert!(!listing.contains("/dev/loop-control"), "{listing}");
    remove_pod(&d, &pod.id).await;
}
