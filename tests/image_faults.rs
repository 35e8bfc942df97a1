//! Registry faults and credentials: each pull fails with a clear error naming the reference and
//! the step, and leaves no content, snapshot or image record behind.

mod common;

use std::process::{Command, Stdio};

use common::{
    bearer_front, fault_proxy, namespace_counts, pull, pull_with_auth, registry, Daemon, Fault,
};
use concord::cri;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_faults_fail_clearly_and_leave_nothing_behind() {
    let mut d = Daemon::new();
    d.extra
        .push("--image-pull-progress-timeout-seconds=2".into());
    d.start().await;
    let cases = [
        (Fault::Status500, tonic::Code::Unavailable, "HTTP 500"),
        (Fault::CloseMidBlob, tonic::Code::Unavailable, "downloading"),
        (Fault::Corrupt, tonic::Code::DataLoss, "expected sha256:"),
        (Fault::Stall, tonic::Code::DeadlineExceeded, "no progress"),
    ];
    for (fault, code, needle) in cases {
        let port = fault_proxy(registry(), fault).await;
        let image = format!("127.0.0.1:{port}/library/busybox:latest");
        let err = pull(&d, &image).await.unwrap_err();
        println!("{fault:?}: {} {}", err.code(), err.message());
        assert_eq!(err.code(), code, "{fault:?}: {}", err.message());
        assert!(
            err.message().contains(needle),
            "{fault:?}: {}",
            err.message()
        );
        assert!(
            err.message().contains(&image),
            "names the reference: {}",
            err.message()
        );
        assert_eq!(
            namespace_counts(&d).await,
            (0, 0, 0),
            "{fault:?} left something behind"
        );
    }
    // Through a healthy path the same image pulls.
    let id = pull(&d, &format!("{}/library/busybox:latest", registry()))
        .await
        .unwrap();
    assert!(id.starts_with("sha256:"));
}

/// A docker-registry of the test's own with htpasswd (Basic) auth, serving the dev
/// environment's registry storage.
struct AuthRegistry {
    registry: common::RegistryProcess,
    _dir: tempfile::TempDir,
}

impl AuthRegistry {
    fn start() -> AuthRegistry {
        let dir = tempfile::tempdir().unwrap();
        let htpasswd = dir.path().join("htpasswd");
        let st = Command::new("htpasswd")
            .args(["-Bbc"])
            .arg(&htpasswd)
            .args(["alice", "wonderland"])
            .stderr(Stdio::null())
            .status()
            .expect("htpasswd (apache2-utils; hack/dev-up.sh installs it)");
        assert!(st.success());
        let auth = format!(
            "auth:\n  htpasswd:\n    realm: concord-test\n    path: {}\n",
            htpasswd.display()
        );
        let registry = common::spawn_registry(dir.path(), "", &auth);
        AuthRegistry {
            registry,
            _dir: dir,
        }
    }
}

#[tokio::test]
async fn credentials_from_the_request_are_used_and_wrong_ones_refused() {
    let reg = AuthRegistry::start();
    let mut d = Daemon::new();
    d.start().await;
    let image = format!("{}/library/busybox:latest", reg.registry.addr);

    let err = pull(&d, &image).await.unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::Unauthenticated,
        "{}",
        err.message()
    );
    assert!(
        err.message().contains("needs credentials"),
        "{}",
        err.message()
    );

    let wrong = cri::AuthConfig {
        username: "alice".into(),
        password: "nope".into(),
        ..Default::default()
    };
    let err = pull_with_auth(&d, &image, Some(wrong)).await.unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::Unauthenticated,
        "{}",
        err.message()
    );
    assert!(
        err.message().contains(&reg.registry.addr),
        "{}",
        err.message()
    );
    assert_eq!(namespace_counts(&d).await, (0, 0, 0));

    let right = cri::AuthConfig {
        username: "alice".into(),
        password: "wonderland".into(),
        ..Default::default()
    };
    pull_with_auth(&d, &image, Some(right)).await.unwrap();
    // The `auth` field (base64 user:password) works too.
    use base64::Engine;
    let auth = base64::engine::general_purpose::STANDARD.encode("alice:wonderland");
    let encoded = cri::AuthConfig {
        auth,
        ..Default::default()
    };
    pull_with_auth(
        &d,
        &format!("{}/library/busybox:1.36", reg.registry.addr),
        Some(encoded),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn the_bearer_token_flow_gets_a_token_with_the_request_credentials() {
    let port = bearer_front(registry()).await;
    let mut d = Daemon::new();
    d.start().await;
    let image = format!("127.0.0.1:{port}/library/busybox:latest");
    let err = pull(&d, &image).await.unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::Unauthenticated,
        "{}",
        err.message()
    );
    let wrong = cri::AuthConfig {
        username: "alice".into(),
        password: "x".into(),
        ..Default::default()
    };
    let err = pull_with_auth(&d, &image, Some(wrong)).await.unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::Unauthenticated,
        "{}",
        err.message()
    );
    assert!(
        err.message().contains("token server answered HTTP 401"),
        "{}",
        err.message()
    );
    let right = cri::AuthConfig {
        username: "alice".into(),
        password: "wonderland".into(),
        ..Default::default()
    };
    pull_with_auth(&d, &image, Some(right)).await.unwrap();
    // A registry token from the request is used as the bearer token directly.
    let token = cri::AuthConfig {
        registry_token: "tok-123".into(),
        ..Default::default()
    };
    pull_with_auth(
        &d,
        &format!("127.0.0.1:{port}/library/busybox:1.36"),
        Some(token),
    )
    .await
    .unwrap();
}

/// A docker-registry of the test's own serving HTTPS with a self-signed certificate.
struct TlsRegistry {
    registry: common::RegistryProcess,
    /// The CA that signed the registry's certificate.
    cert: std::path::PathBuf,
    dir: tempfile::TempDir,
}

impl TlsRegistry {
    fn start() -> TlsRegistry {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n).display().to_string();
        let (ca, cert, key) = (
            dir.path().join("ca.pem"),
            dir.path().join("cert.pem"),
            dir.path().join("key.pem"),
        );
        std::fs::write(
            dir.path().join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
        )
        .unwrap();
        let script = format!(
            "set -e; openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=concord-test-ca -keyout {cakey} -out {ca}; \
             openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout {key} -out {csr}; \
             openssl x509 -req -in {csr} -CA {ca} -CAkey {cakey} -CAcreateserial -days 2 -extfile {ext} -out {cert}",
            cakey = p("ca.key"),
            ca = p("ca.pem"),
            key = p("key.pem"),
            csr = p("leaf.csr"),
            ext = p("ext.cnf"),
            cert = p("cert.pem"),
        );
        let st = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("openssl");
        assert!(st.success(), "making test certificates with openssl");
        let tls = format!(
            "  tls:\n    certificate: {}\n    key: {}\n",
            cert.display(),
            key.display()
        );
        let registry = common::spawn_registry(dir.path(), &tls, "");
        TlsRegistry {
            registry,
            cert: ca,
            dir,
        }
    }

    /// A hosts dir with `hosts.toml` for this registry holding `body`.
    fn hosts_dir(&self, name: &str, body: &str) -> std::path::PathBuf {
        let d = self.dir.path().join(name);
        std::fs::create_dir_all(d.join(&self.registry.addr)).unwrap();
        std::fs::write(d.join(&self.registry.addr).join("hosts.toml"), body).unwrap();
        d
    }
}

#[tokio::test]
async fn hosts_toml_ca_and_skip_verify_reach_a_tls_registry() {
    let reg = TlsRegistry::start();
    let image = format!("{}/library/busybox:latest", reg.registry.addr);

    // HTTPS without the CA: the self-signed certificate is refused.
    let no_ca = reg.hosts_dir(
        "no-ca",
        &format!("server = \"https://{}\"\n", reg.registry.addr),
    );
    let mut d = Daemon::new();
    d.extra
        .push(format!("--registry-config-path={}", no_ca.display()));
    d.start().await;
    let err = pull(&d, &image).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{}", err.message());
    assert!(
        err.message().to_lowercase().contains("certificate"),
        "{}",
        err.message()
    );
    drop(d);

    // ca = the registry's certificate.
    let with_ca = reg.hosts_dir(
        "ca",
        &format!("server = \"https://{a}\"\n[host.\"https://{a}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = \"{c}\"\n", a = reg.registry.addr, c = reg.cert.display()),
    );
    let mut d = Daemon::new();
    d.extra
        .push(format!("--registry-config-path={}", with_ca.display()));
    d.start().await;
    pull(&d, &image).await.unwrap();
    drop(d);

    // skip_verify.
    let skip = reg.hosts_dir(
        "skip",
        &format!("[host.\"https://{a}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  skip_verify = true\n", a = reg.registry.addr),
    );
    let mut d = Daemon::new();
    d.extra
        .push(format!("--registry-config-path={}", skip.display()));
    d.start().await;
    pull(&d, &image).await.unwrap();
}

/// Docker's certs.d layout (`<dir>/<host>/ca.crt`, no hosts.toml) in the second directory of
/// `registry_config_path`: the first has nothing for the host, so the second is searched, and its
/// CA makes the upstream an HTTPS endpoint that verifies.
#[tokio::test]
async fn a_docker_certs_dir_later_in_the_path_list_gives_the_registry_its_ca() {
    let reg = TlsRegistry::start();
    let image = format!("{}/library/busybox:latest", reg.registry.addr);
    let empty = reg.dir.path().join("empty-root");
    let certs = reg.dir.path().join("docker-certs.d");
    std::fs::create_dir_all(empty.join("other.example")).unwrap();
    std::fs::create_dir_all(certs.join(&reg.registry.addr)).unwrap();
    std::fs::copy(&reg.cert, certs.join(&reg.registry.addr).join("ca.crt")).unwrap();
    let mut d = Daemon::new();
    d.extra.push(format!(
        "--registry-config-path={}:{}",
        empty.display(),
        certs.display()
    ));
    d.start().await;
    pull(&d, &image).await.unwrap();
}
