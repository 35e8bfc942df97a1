//! The stock crictl v1.26.1 (kubelet 1.26's CRI client code; it sends the socket path as the
//! HTTP/2 authority) drives concord: every command an operator uses on a node. Skipped, saying
//! so, where no crictl is found (hack/test.sh builds it when the cri-tools source is at hand).

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::{crictl_binary, pod_daemon, Daemon};
use serde_json::Value;

struct Crictl {
    bin: PathBuf,
    socket: String,
    dir: PathBuf,
}

impl Crictl {
    fn new(d: &Daemon) -> Option<Crictl> {
        let Some(bin) = crictl_binary() else {
            eprintln!("SKIPPED: crictl not found (set CRICTL, or run hack/cri-tools.sh)");
            return None;
        };
        Some(Crictl {
            bin,
            socket: format!("unix://{}", d.socket.display()),
            dir: d.dir.clone(),
        })
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(["-r", &self.socket, "-i", &self.socket, "-t", "60s"])
            .args(args)
            .stdin(Stdio::null());
        c
    }

    fn output(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run crictl")
    }

    /// stdout of a command that must succeed.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.output(args);
        assert!(
            out.status.success(),
            "crictl {}: {}\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// stderr of a command that must fail.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.output(args);
        assert!(
            !out.status.success(),
            "crictl {} succeeded: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn json(&self, args: &[&str]) -> Value {
        let text = self.ok(args);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("crictl {args:?}: {e}: {text}"))
    }

    /// A JSON file in the test dir.
    fn file(&self, name: &str, v: Value) -> String {
        let p = self.dir.join(name);
        std::fs::write(&p, v.to_string()).unwrap();
        p.display().to_string()
    }

    fn pod(&self, name: &str, labels: Value) -> String {
        self.file(
            &format!("pod-{name}.json"),
            serde_json::json!({
                "metadata": {"name": name, "namespace": "crictl-test", "uid": format!("{name}-uid"), "attempt": 0},
                "labels": labels,
                "log_directory": self.dir.join("logs").join(name),
                "linux": {},
            }),
        )
    }

    fn container(&self, file: &str, name: &str, attempt: u32, command: &[&str]) -> String {
        self.file(
            file,
            serde_json::json!({
                "metadata": {"name": name, "attempt": attempt},
                "image": {"image": BUSYBOX},
                "command": command,
                "log_path": format!("{name}/{attempt}.log"),
                "linux": {},
            }),
        )
    }
}

const BUSYBOX: &str = "registry.k8s.io/e2e-test-images/busybox:1.29-2";
const HTTPD: &str = "registry.k8s.io/e2e-test-images/httpd:2.4.39-4";

/// Rows of a crictl table whose first column is `first` (headers excluded).
fn rows(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().map(String::from).collect())
        .collect()
}

fn kill(mut c: Child) -> Output {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(c.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    std::thread::sleep(Duration::from_millis(200));
    let _ = c.kill();
    c.wait_with_output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crictl_version_info_and_images() {
    let d = pod_daemon(&[]).await;
    let Some(c) = Crictl::new(&d) else { return };
    let version = c.ok(&["version"]);
    assert!(version.contains("RuntimeName:  concord"), "{version}");
    assert!(version.contains("RuntimeApiVersion:  v1"), "{version}");

    // info: containerd's keys kubeadm and operators read, and concord's loop health.
    let info = c.json(&["info"]);
    let conditions = info["status"]["conditions"].as_array().unwrap();
    assert!(conditions.iter().all(|x| x["status"] == true), "{info}");
    assert_eq!(
        info["config"]["sandboxImage"],
        "registry.k8s.io/pause:3.10.1"
    );
    assert_eq!(
        info["config"]["pinned_images"]["sandbox"],
        "registry.k8s.io/pause:3.10.1"
    );
    assert_eq!(info["config"]["maxContainerLogSize"], 16384);
    assert_eq!(info["config"]["enableTLSStreaming"], false);
    assert_eq!(info["config"]["imagePullProgressTimeout"], "60s");
    assert_eq!(info["lastCNILoadStatus"], "OK");
    assert_eq!(info["lastCNILoadStatus.default"], "OK");
    assert!(info["cniconfig"]["PluginConfDir"].is_string(), "{info}");
    assert!(!info["cniconfig"]["Networks"].as_array().unwrap().is_empty());
    assert_eq!(info["reconcile"]["failing"], 0);
    assert_eq!(
        info["config"]["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"],
        false
    );
    assert_eq!(info["cniconfig"]["Networks"][0]["IFName"], "lo");
    assert!(
        info["config"]["streamServerPort"]
            .as_str()
            .unwrap()
            .parse::<u16>()
            .unwrap()
            > 0
    );
    assert!(info["journal"]["path"]
        .as_str()
        .unwrap()
        .ends_with("journal.redb"));

    // pull (through the hosts.toml mirror), images, inspecti, imagefsinfo.
    assert!(c
        .ok(&["pull", BUSYBOX])
        .contains("Image is up to date for sha256:"));
    let images = c.ok(&["images"]);
    assert!(images.starts_with("IMAGE"), "{images}");
    let row = rows(&images)
        .into_iter()
        .find(|r| r[0] == "registry.k8s.io/e2e-test-images/busybox")
        .unwrap_or_else(|| panic!("{images}"));
    assert_eq!(row[1], "1.29-2");
    assert_eq!(row[2].len(), 13, "short image id: {row:?}");
    let quiet = c.ok(&["images", "-q"]);
    assert!(quiet.lines().all(|l| l.starts_with("sha256:")), "{quiet}");
    let image = c.json(&["inspecti", BUSYBOX]);
    assert!(image["status"]["id"]
        .as_str()
        .unwrap()
        .starts_with("sha256:"));
    assert_eq!(image["status"]["repoTags"][0], BUSYBOX);
    assert!(
        image["status"]["size"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 0
    );
    let fs = c.json(&["imagefsinfo"]);
    assert!(!fs["status"]["fsId"]["mountpoint"]
        .as_str()
        .unwrap()
        .is_empty());
    // (measured by the snapshot syncer every image.fs_sync_interval_seconds, as containerd's)
    let used = fs["status"]["usedBytes"]["value"].as_str().unwrap();
    assert!(used.parse::<u64>().is_ok(), "{fs}");

    // pull --creds: a registry that wants a bearer token for alice:wonderland.
    let port = common::bearer_front(common::registry()).await;
    let private = format!("127.0.0.1:{port}/library/busybox:latest");
    let refused = c.fails(&["pull", &private]);
    assert!(
        refused.contains("Unauthenticated") || refused.contains("401"),
        "{refused}"
    );
    assert!(c
        .fails(&["pull", "--creds", "alice:wrong", &private])
        .contains("401"));
    c.ok(&["pull", "--creds", "alice:wonderland", &private]);

    // rmi, and rmi --prune: the image a container uses stays, the unused ones go.
    c.ok(&["rmi", &private]);
    assert!(!c
        .ok(&["images"])
        .contains(&format!("127.0.0.1:{port}/library/busybox")));
    c.ok(&["pull", HTTPD]);
    let pod = c
        .ok(&["runp", &c.pod("prune", serde_json::json!({}))])
        .trim()
        .to_string();
    let spec = c.container("prune.json", "keep", 0, &["sleep", "1000"]);
    let pod_file = c.dir.join("pod-prune.json").display().to_string();
    c.ok(&["create", &pod, &spec, &pod_file]);
    c.ok(&["rmi", "--prune"]);
    let left = c.ok(&["images"]);
    assert!(left.contains("e2e-test-images/busybox"), "{left}");
    assert!(!left.contains("e2e-test-images/httpd"), "{left}");
    c.ok(&["rmp", "-f", &pod]);
    // An unknown image: an error naming it.
    assert!(c
        .fails(&["rmi", "example.test/nothing:1"])
        .contains("nothing"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crictl_pods_containers_logs_exec_and_stats() {
    let d = pod_daemon(&[]).await;
    let Some(c) = Crictl::new(&d) else { return };
    c.ok(&["pull", BUSYBOX]);
    let web_file = c.pod("web", serde_json::json!({"app": "web"}));
    let other_file = c.pod("other", serde_json::json!({"app": "other"}));
    let web = c.ok(&["runp", &web_file]).trim().to_string();
    let other = c.ok(&["runp", &other_file]).trim().to_string();
    assert_eq!(web.len(), 64);

    // pods, with each filter.
    let pods = c.ok(&["pods"]);
    assert!(pods.starts_with("POD ID"), "{pods}");
    assert_eq!(rows(&pods).len(), 2, "{pods}");
    let by = |args: &[&str]| -> Vec<String> {
        let mut a = vec!["pods", "-q"];
        a.extend_from_slice(args);
        c.ok(&a).lines().map(String::from).collect()
    };
    assert_eq!(by(&["--name", "web"]), vec![web.clone()]);
    assert_eq!(by(&["--namespace", "crictl-test"]).len(), 2);
    assert!(by(&["--namespace", "elsewhere"]).is_empty());
    assert_eq!(by(&["--label", "app=other"]), vec![other.clone()]);
    assert_eq!(by(&["--state", "ready"]).len(), 2);
    assert!(by(&["--state", "notready"]).is_empty());
    assert_eq!(by(&["--id", &web[..12]]), vec![web.clone()]);

    // inspectp: the status and the loop's view of the pod.
    let p = c.json(&["inspectp", &web]);
    assert_eq!(p["status"]["state"], "SANDBOX_READY");
    assert!(!p["status"]["network"]["ip"].as_str().unwrap().is_empty());
    assert_eq!(p["status"]["metadata"]["name"], "web");
    let rec = &p["info"]["reconcile"];
    assert_eq!(rec["converged"], true, "{p}");
    assert_eq!(rec["desired"]["desired"], "Ready");
    assert_eq!(rec["retries"], 0);
    assert_eq!(rec["lastError"], "");
    assert!(p["info"]["pid"].as_u64().unwrap() > 0);
    // Fields containerd fills: namespace modes spelled out, the pause image, process status.
    assert_eq!(
        p["status"]["linux"]["namespaces"]["options"]["network"], "POD",
        "{p}"
    );
    assert_eq!(p["info"]["image"], "registry.k8s.io/pause:3.10.1");
    assert_eq!(p["info"]["processStatus"], "running");
    assert_eq!(p["info"]["runtimeType"], "io.containerd.runc.v2");

    // create, start, ps, inspect.
    let script = "i=0; while true; do echo line $i; i=$((i+1)); sleep 0.2; done";
    let spec = c.container("logger.json", "logger", 0, &["sh", "-c", script]);
    let logger = c.ok(&["create", &web, &spec, &web_file]).trim().to_string();
    let ps = c.ok(&["ps", "-a"]);
    assert!(ps.contains("Created"), "{ps}");
    c.ok(&["start", &logger]);
    let ps = c.ok(&["ps"]);
    let row = rows(&ps)
        .into_iter()
        .find(|r| logger.starts_with(&r[0]))
        .unwrap();
    assert!(row.contains(&"Running".to_string()), "{ps}");
    assert!(row.contains(&"logger".to_string()), "{ps}");
    let i = c.json(&["inspect", &logger]);
    assert_eq!(i["status"]["state"], "CONTAINER_RUNNING");
    assert!(i["status"]["logPath"]
        .as_str()
        .unwrap()
        .ends_with("logger/0.log"));
    assert_eq!(i["info"]["reconcile"]["converged"], true, "{i}");
    assert_eq!(i["info"]["sandboxID"], web);
    // As containerd: the repo digest as imageRef, resources spelled out even when none were set.
    assert!(
        i["status"]["imageRef"]
            .as_str()
            .unwrap()
            .starts_with("registry.k8s.io/e2e-test-images/busybox@sha256:"),
        "{i}"
    );
    assert_eq!(
        i["status"]["resources"]["linux"]["memoryLimitInBytes"], "0",
        "{i}"
    );

    // logs: --tail, --timestamps, --since, -f.
    std::thread::sleep(Duration::from_millis(1500));
    let tail = c.ok(&["logs", "--tail", "2", &logger]);
    assert_eq!(tail.lines().count(), 2, "{tail:?}");
    assert!(tail.lines().all(|l| l.starts_with("line ")), "{tail:?}");
    let stamped = c.ok(&["logs", "--timestamps", "--tail", "1", &logger]);
    assert!(stamped.contains("Z line "), "{stamped:?}");
    std::thread::sleep(Duration::from_millis(1500));
    let since = c.ok(&["logs", "--timestamps", "--since", "1s", &logger]);
    let all = c.ok(&["logs", "--timestamps", &logger]);
    let (n_since, n_all) = (since.lines().count(), all.lines().count());
    assert!(
        n_since > 0 && n_since + 5 < n_all,
        "--since 1s: {since:?}\nall: {all:?}"
    );
    let follow = c
        .command(&["logs", "-f", "--tail", "0", &logger])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    let followed = String::from_utf8_lossy(&kill(follow).stdout).into_owned();
    assert!(followed.lines().count() >= 2, "logs -f: {followed:?}");

    // exec -s (with a timeout), exec -i, exec -it through a pseudo-terminal.
    assert_eq!(c.ok(&["exec", "-s", &logger, "echo", "hi"]).trim(), "hi");
    let timed_out = c.fails(&["exec", "-s", "--timeout", "1", &logger, "sleep", "5"]);
    assert!(timed_out.contains("timed out"), "{timed_out}");
    let mut cat = c
        .command(&["exec", "-i", &logger, "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    cat.stdin
        .take()
        .unwrap()
        .write_all(b"through stdin\n")
        .unwrap();
    let out = cat.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "through stdin\n");
    let tty = tty_session(
        &c,
        &["exec", "-it", &logger, "sh"],
        "echo tty-$((6*7))\nexit\n",
    );
    assert!(tty.contains("tty-42"), "exec -it: {tty:?}");

    // attach: a stdin container answers what is typed.
    let shell = c.file(
        "shell.json",
        serde_json::json!({
            "metadata": {"name": "shell", "attempt": 0},
            "image": {"image": BUSYBOX}, "command": ["sh"],
            "stdin": true, "stdin_once": true, "log_path": "shell/0.log", "linux": {},
        }),
    );
    let sh = c
        .ok(&["create", &web, &shell, &web_file])
        .trim()
        .to_string();
    c.ok(&["start", &sh]);
    let attached = tty_session(&c, &["attach", "-i", &sh], "echo attached-$((1+1))\n");
    assert!(attached.contains("attached-2"), "attach: {attached:?}");

    // port-forward: a server in the pod through a local port.
    let port = common::free_port();
    let serve = c.container(
        "serve.json",
        "serve",
        0,
        &[
            "sh",
            "-c",
            "echo served > /tmp/index.html; httpd -f -p 8080 -h /tmp",
        ],
    );
    let server = c
        .ok(&["create", &web, &serve, &web_file])
        .trim()
        .to_string();
    c.ok(&["start", &server]);
    let forward = c
        .command(&["port-forward", &web, &format!("{port}:8080")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut body = String::new();
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(200));
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::Read;
            let _ = s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n");
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            body.clear();
            let _ = s.read_to_string(&mut body);
            if body.contains("served") {
                break;
            }
        }
    }
    kill(forward);
    assert!(body.contains("served"), "port-forward: {body:?}");

    // stats and statsp (two samples a second apart: CPU must move on), with --watch.
    let stats = c.ok(&["stats", &logger]);
    assert!(
        stats.contains("CPU %") && stats.contains("logger"),
        "{stats}"
    );
    let js = c.json(&["stats", "-o", "json", &logger]);
    let s = &js["stats"][0];
    assert!(
        s["cpu"]["usageCoreNanoSeconds"]["value"].is_string(),
        "{js}"
    );
    assert!(s["memory"]["workingSetBytes"]["value"].is_string(), "{js}");
    assert!(s["cpu"]["usageNanoCores"]["value"].is_string(), "{js}");
    assert!(s["memory"]["availableBytes"]["value"].is_string(), "{js}");
    let all_stats = c.ok(&["stats", "-a"]);
    assert!(
        all_stats.contains("shell") && all_stats.contains("logger"),
        "{all_stats}"
    );
    let podstats = c.ok(&["statsp"]);
    assert!(
        podstats.contains("web") && podstats.contains("other"),
        "{podstats}"
    );
    let pj = c.json(&["statsp", "-o", "json", "--id", &web]);
    assert!(
        pj["stats"][0]["linux"]["cpu"]["usageCoreNanoSeconds"].is_object(),
        "{pj}"
    );
    for cmd in [["stats", "--watch"], ["statsp", "--watch"]] {
        let watch = c
            .command(&cmd)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(3500));
        let out = kill(watch);
        let text = String::from_utf8_lossy(&out.stdout);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            text.matches("CPU %").count() >= 2,
            "{cmd:?}: {text:?} {err}"
        );
        assert!(!err.contains("not updated"), "{cmd:?}: {err}");
    }

    // update: new limits reach the container.
    c.ok(&[
        "update",
        "--memory",
        "123456789",
        "--cpu-share",
        "512",
        &logger,
    ]);
    let i = c.json(&["inspect", &logger]);
    let res = &i["status"]["resources"]["linux"];
    assert_eq!(res["memoryLimitInBytes"], "123456789", "{i}");
    assert_eq!(res["cpuShares"], "512", "{i}");
    // Swap limited to the memory limit where the host accounts swap (as containerd).
    if std::path::Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists() {
        assert_eq!(res["memorySwapLimitInBytes"], "123456789", "{i}");
    }

    // stop, logs --previous (kubelet's attempt layout), rm, stopp, rmp.
    c.ok(&["stop", "--timeout", "2", &logger]);
    assert_eq!(
        c.json(&["inspect", &logger])["status"]["state"],
        "CONTAINER_EXITED"
    );
    let again = c.container("logger1.json", "logger", 1, &["sh", "-c", "echo second"]);
    let logger1 = c
        .ok(&["create", &web, &again, &web_file])
        .trim()
        .to_string();
    let previous = c.ok(&["logs", "--previous", "--tail", "1", &logger1]);
    assert!(previous.starts_with("line "), "{previous:?}");
    assert!(c
        .fails(&["logs", "--previous", &logger])
        .contains("Previous terminated container"));
    c.ok(&["rm", &logger]);
    c.fails(&["inspect", &logger]);
    c.ok(&["stopp", &other]);
    let stopped = c.json(&["inspectp", &other]);
    assert_eq!(stopped["status"]["state"], "SANDBOX_NOTREADY");
    assert_eq!(stopped["status"]["network"]["ip"], "", "{stopped}");
    assert_eq!(stopped["info"]["pid"], 0);
    assert_eq!(stopped["info"]["netNamespaceClosed"], true);
    assert_eq!(by(&["--state", "notready"]), vec![other.clone()]);
    c.ok(&["rmp", &other]);
    c.ok(&["rmp", "-f", &web]);
    assert!(c.ok(&["pods", "-q"]).trim().is_empty());
    assert!(c.ok(&["ps", "-aq"]).trim().is_empty());
}

/// Runs crictl under a pseudo-terminal (util-linux `script`), typing `input` after a moment;
/// answers what the terminal showed.
fn tty_session(c: &Crictl, args: &[&str], input: &str) -> String {
    let mut line = vec![c.bin.display().to_string()];
    line.extend(["-r", &c.socket, "-i", &c.socket].map(String::from));
    line.extend(args.iter().map(|s| s.to_string()));
    let mut child = Command::new("script")
        .args(["-qec", &line.join(" "), "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("script (util-linux)");
    let mut stdin = child.stdin.take().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    use std::io::Write;
    stdin.write_all(input.as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    drop(stdin);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    String::from_utf8_lossy(&kill(child).stdout).into_owned()
}
