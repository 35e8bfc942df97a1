//! CreateContainer's request, structure-aware: the input is decoded as the protobuf kubelet
//! sends (`CreateContainerRequest`: container config and pod config), so mutations land in real
//! fields. Validation and OCI spec building never panic; a spec that is built mounts only at
//! absolute paths without `..`, runs a process with arguments from an absolute working dir, and
//! carries no annotation the handler did not allow (here: none but the CRI's own).
#![no_main]
use concord::cri;
use concord::image::manifest::ImageConfig;
use concord::oci::annotations::Passthrough;
use concord::oci::container::{container_spec, ContainerContext};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fn clean_abs(p: &str) -> bool {
    p.starts_with('/') && !p.split('/').any(|c| c == "..")
}

fuzz_target!(|data: &[u8]| {
    let Ok(req) = cri::CreateContainerRequest::decode(data) else {
        return;
    };
    let Some(config) = req.config else {
        return;
    };
    let sandbox = req.sandbox_config.unwrap_or_default();
    let image: ImageConfig = serde_json::from_value(serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"], "WorkingDir": "/",
                   "Volumes": {"/data": {}}},
        "rootfs": {"type": "layers", "diff_ids": []},
    }))
    .unwrap();
    let ctx = ContainerContext {
        id: "c0ffee",
        sandbox_id: "5a4db0c5",
        sandbox: &sandbox,
        sandbox_pid: 1,
        sandbox_files: "/run/concord-fuzz/sandboxes/5a4db0c5".into(),
        image_name: "busybox",
        target_pid: None,
        volumes_dir: "/run/concord-fuzz/containers/c0ffee/volumes".into(),
        image_volumes: Default::default(),
        cgroup_driver: concord::config::CgroupDriver::Cgroupfs,
        cdi: Vec::new(),
        passthrough: Passthrough {
            pod: &[],
            container: &[],
        },
    };
    let Ok(spec) = container_spec(&config, &image, &ctx, None) else {
        return;
    };
    let text = serde_json::to_string(&spec).expect("a spec serializes");
    assert!(text.len() < 64 << 20);
    for m in spec.mounts().iter().flatten() {
        let dest = m
            .destination()
            .to_str()
            .expect("a mount's destination is UTF-8");
        assert!(clean_abs(dest), "mount at {dest:?}");
    }
    let process = spec.process().as_ref().expect("a process");
    assert!(!process.args().as_deref().unwrap_or_default().is_empty());
    let cwd = process.cwd().to_str().expect("process.cwd is UTF-8");
    assert!(clean_abs(cwd), "cwd {cwd:?}");
    for k in spec.annotations().iter().flatten().map(|(k, _)| k) {
        assert!(
            k.starts_with("io.kubernetes.cri."),
            "annotation {k:?} passed"
        );
    }
});
