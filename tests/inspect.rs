//! `concord inspect` and the client listings, against a real node: a pod whose CNI plugin times
//! out is explained after it is gone (why, and its history), a running pod is summarized with
//! its steps, containers and history, env values stay redacted unless asked, and the listings
//! print headers, `-o json` and `-q`.

mod common;

use std::process::Command;

use common::Daemon;
use common::{container_config, pod, pod_config, pod_flags, pod_info, run_pod};

/// Runs `concord <args> -r <socket>`; answers stdout (the command must succeed).
fn concord(d: &Daemon, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_concord"))
        .args(args)
        .arg("-r")
        .arg(&d.socket)
        .arg("--timeout=20s")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "concord {args:?}: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A CNI plugin that hangs on ADD (and succeeds at everything else).
fn hanging_plugin(d: &mut Daemon) {
    let bin = d.dir.join("cni-bin");
    let conf = d.dir.join("cni-conf");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&conf).unwrap();
    let plugin = bin.join("hang");
    std::fs::write(
        &plugin,
        "#!/bin/sh\ncase \"$CNI_COMMAND\" in\n  ADD) exec sleep 60 ;;\n  VERSION) echo '{\"cniVersion\":\"1.0.0\",\"supportedVersions\":[\"0.4.0\",\"1.0.0\"]}' ;;\nesac\nexit 0\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        conf.join("10-hang.conflist"),
        r#"{"cniVersion": "1.0.0", "name": "hang", "plugins": [{"type": "hang"}]}"#,
    )
    .unwrap();
    d.extra.retain(|e| !e.starts_with("--cni-conf-dir"));
    d.extra.push(format!("--cni-conf-dir={}", conf.display()));
    d.extra.push(format!("--cni-bin-dir={}", bin.display()));
    d.extra.push("--cni-plugin-timeout-seconds=2".into());
}

#[tokio::test]
async fn a_pod_whose_cni_plugin_times_out_is_explained_after_it_is_gone() {
    let mut d = Daemon::new();
    pod_flags(&mut d);
    hanging_plugin(&mut d);
    d.start().await;
    let err = run_pod(&d, &pod_config(&d, "web-0")).await.unwrap_err();
    assert!(err.message().contains("CNI ADD"), "{}", err.message());

    // The sandbox failed and was torn down; inspect still says why, with its history.
    let mut text = String::new();
    common::eventually(
        std::time::Duration::from_secs(20),
        "the failed pod removed",
        || {
            text = concord(&d, &["inspect", "web-0"]);
            let done = text.contains("removed:");
            async move { done }
        },
    )
    .await;
    for part in [
        "pod default/web-0 (uid uid-web-0)",
        "failed:",
        "did not finish within 2s",
        "history:",
        "run requested",
        "reconcile",
        "removed",
    ] {
        assert!(text.contains(part), "{part:?} missing from:\n{text}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&concord(&d, &["inspect", "default/web-0", "-o", "json"])).unwrap();
    let o = &json["objects"][0];
    assert_eq!(o["state"], "REMOVED", "{json}");
    assert!(
        o["last_error"].as_str().unwrap().contains("CNI ADD"),
        "{json}"
    );
    let events: Vec<(&str, &str)> = o["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["source"].as_str().unwrap(), h["what"].as_str().unwrap()))
        .collect();
    assert_eq!(
        events.first(),
        Some(&("journal", "run requested")),
        "{events:?}"
    );
    assert!(events.contains(&("journal", "removed")), "{events:?}");
    assert!(events.contains(&("reconcile", "failed")), "{events:?}");
    // YAML says the same.
    let yaml = concord(&d, &["inspect", "web-0", "-o", "yaml"]);
    assert!(yaml.contains("state: REMOVED"), "{yaml}");
}

#[tokio::test]
async fn a_running_pod_is_summarized_with_its_steps_containers_and_history() {
    let mut d = Daemon::new();
    pod_flags(&mut d);
    d.start().await;
    let p = pod(&d, "insp-web").await;
    let mut c = container_config("app", "busybox", &["sleep", "3600"]);
    c.envs = vec![concord::cri::KeyValue {
        key: "API_TOKEN".into(),
        value: "s3cr3t-value".into(),
    }];
    let cid = p.run_container(&d, c).await;

    let text = concord(&d, &["inspect", "insp-web"]);
    for part in [
        "pod default/insp-web",
        "state:       SANDBOX_READY",
        "status:      converged",
        "steps:",
        "cni_add",
        &format!("container:   app {}", &cid[..13]),
        "container app of pod default/insp-web",
        "CONTAINER_RUNNING",
        "history:",
        "run requested",
        "network ready",
        "started",
    ] {
        assert!(text.contains(part), "{part:?} missing from:\n{text}");
    }
    // Env values are redacted unless asked for.
    let redacted = concord(&d, &["inspect", &cid, "-o", "json"]);
    assert!(redacted.contains("API_TOKEN") && redacted.contains("<redacted>"));
    assert!(!redacted.contains("s3cr3t-value"), "{redacted}");
    let shown = concord(&d, &["inspect", &cid, "-o", "json", "--show-config"]);
    assert!(shown.contains("s3cr3t-value"), "{shown}");

    // The table of every object, and --failing (nothing fails).
    let table = concord(&d, &["inspect"]);
    let header = table.lines().next().unwrap();
    assert!(
        header.starts_with("KIND") && header.contains("POD") && header.contains("LAST ERROR"),
        "{table}"
    );
    assert!(table.contains("default/insp-web"), "{table}");
    assert_eq!(concord(&d, &["inspect", "--failing"]).lines().count(), 3);

    // The same reconcile status in the verbose info crictl shows.
    let info = pod_info(&d, &p.id).await;
    let steps = info["reconcile"]["steps"].as_array().unwrap();
    assert!(steps
        .iter()
        .any(|s| s["name"] == "cni_add" && s["ok"] == true));

    // Listings: headers, -q, -o json.
    let pods = concord(&d, &["pods"]);
    assert!(pods.starts_with("POD ID"), "{pods}");
    assert!(
        pods.contains("insp-web") && pods.contains("Ready"),
        "{pods}"
    );
    assert_eq!(concord(&d, &["pods", "-q"]).trim(), p.id);
    let listed: serde_json::Value =
        serde_json::from_str(&concord(&d, &["containers", "-o", "json"])).unwrap();
    assert_eq!(listed[0]["id"], cid.as_str());
    let containers = concord(&d, &["containers"]);
    assert!(containers.starts_with("CONTAINER"), "{containers}");
    let images = concord(&d, &["images"]);
    assert!(
        images.starts_with("IMAGE") && images.contains("busybox"),
        "{images}"
    );
    assert!(
        images.contains(" MiB") || images.contains(" KiB"),
        "{images}"
    );
}
