//! Writes the seed corpora of the fuzz targets in `fuzz/` (run from the repository root:
//! `cargo run --example fuzz_seeds -- fuzz/seeds`). Seeds are built with concord's own
//! encoders, so they are valid inputs the fuzzers mutate from.

use std::io::Write;
use std::path::Path;

use concord::cri;
use concord::stream::spdy::{self, HeaderEncoder};
use prost::Message;

fn put(dir: &Path, target: &str, name: &str, bytes: &[u8]) {
    let d = dir.join(target);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join(name), bytes).unwrap();
}

fn spdy_session() -> Vec<u8> {
    let mut enc = HeaderEncoder::default();
    let mut out = Vec::new();
    out.extend(spdy::control(
        spdy::SETTINGS,
        0,
        &[0, 0, 0, 1, 0, 0, 0, 7, 0, 1, 0, 0],
    ));
    for (id, kind) in [(1u32, "error"), (3, "stdin"), (5, "stdout"), (7, "resize")] {
        let block = enc.encode(&vec![
            ("streamtype".to_string(), kind.to_string()),
            ("port".to_string(), "8080".to_string()),
            ("requestid".to_string(), "0".to_string()),
        ]);
        let mut body = id.to_be_bytes().to_vec();
        body.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        body.extend_from_slice(&block);
        out.extend(spdy::control(spdy::SYN_STREAM, 0, &body));
    }
    out.extend(spdy::data_frame(3, 0, b"echo hello\n"));
    out.extend(spdy::data_frame(7, 0, br#"{"Width":80,"Height":24}"#));
    out.extend(spdy::control(
        spdy::WINDOW_UPDATE,
        0,
        &[0, 0, 0, 5, 0, 1, 0, 0],
    ));
    out.extend(spdy::control(spdy::PING, 0, &[0, 0, 0, 1]));
    out.extend(spdy::data_frame(3, spdy::FLAG_FIN, b""));
    out.extend(spdy::control(
        spdy::RST_STREAM,
        0,
        &[0, 0, 0, 5, 0, 0, 0, 5],
    ));
    out.extend(spdy::control(spdy::GOAWAY, 0, &[0, 0, 0, 7, 0, 0, 0, 0]));
    out
}

/// A masked client WebSocket frame.
fn ws_frame(op: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x80 | op];
    let key = [0x12, 0x34, 0x56, 0x78];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n < 65536 => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&key);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    f
}

fn tar(entries: &[(&str, &[u8], Option<&str>)], gzip: bool) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data, link) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        match link {
            Some(target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, name, target).unwrap();
            }
            None => {
                h.set_size(data.len() as u64);
                b.append_data(&mut h, name, *data).unwrap();
            }
        }
    }
    let bytes = b.into_inner().unwrap();
    if !gzip {
        return bytes;
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&bytes).unwrap();
    gz.finish().unwrap()
}

const MANIFEST: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":2},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":3}]}"#;
const INDEX: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":7,"platform":{"architecture":"amd64","os":"linux"}},{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":7,"platform":{"architecture":"arm","os":"linux","variant":"v7"}}]}"#;
const CONFIG: &str = r#"{"architecture":"amd64","os":"linux","config":{"User":"nobody","Env":["PATH=/bin"],"Cmd":["/bin/sh"],"Volumes":{"/data":{}}},"rootfs":{"type":"layers","diff_ids":["sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"]}}"#;

fn main() {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "fuzz/seeds".to_string());
    let dir = Path::new(&dir);

    let session = spdy_session();
    put(dir, "spdy_frames", "session", &session);
    put(dir, "spdy_conn", "session", &session);

    let mut ws = vec![0u8];
    ws.extend(ws_frame(0x2, b"\x00echo hi\n"));
    ws.extend(ws_frame(0x2, b"\x04{\"Width\":80,\"Height\":24}"));
    ws.extend(ws_frame(0x9, b"ping"));
    ws.extend(ws_frame(0x2, b"\xff\x00"));
    ws.extend(ws_frame(0x8, b"\x03\xe8"));
    put(dir, "ws_frames", "binary", &ws);
    let mut ws64 = vec![1u8];
    ws64.extend(ws_frame(0x1, b"0ZWNobyBoaQo="));
    ws64.extend(ws_frame(0x1, &vec![b'A'; 300]));
    put(dir, "ws_frames", "base64", &ws64);

    for (i, (hint, doc)) in [(1u8, MANIFEST), (2, INDEX), (0, CONFIG), (4, INDEX)]
        .iter()
        .enumerate()
    {
        let mut b = vec![*hint];
        b.extend_from_slice(doc.as_bytes());
        put(dir, "manifest", &format!("doc{i}"), &b);
    }

    for (i, r) in [
        "busybox",
        "registry.k8s.io/pause:3.9",
        "localhost:5000/a/b@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "[::1]:5000/x:tag",
    ]
    .iter()
    .enumerate()
    {
        put(dir, "reference", &format!("ref{i}"), r.as_bytes());
    }

    put(
        dir,
        "userdb",
        "db",
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/sbin/nologin\n\0root:x:0:\nwheel:x:10:root,nobody\n\0nobody:wheel\x001000",
    );
    put(
        dir,
        "userdb",
        "byname",
        b"app:x:1000:1000::/:/bin/sh\n\0app:x:1000:app\n\0app\0app",
    );

    let layer = tar(&[("etc/passwd", b"root:x:0:0::/:/bin/sh\n", None)], false);
    let docker = tar(
        &[
            ("config.json", CONFIG.as_bytes(), None),
            ("l1/layer.tar", &layer, None),
            ("l2/layer.tar", b"", Some("../l1/layer.tar")),
            (
                "manifest.json",
                br#"[{"Config":"config.json","RepoTags":["example.test/a:1"],"Layers":["l1/layer.tar"]}]"#,
                None,
            ),
        ],
        false,
    );
    put(dir, "archive", "docker-save", &docker);
    let oci = tar(
        &[
            ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#, None),
            ("index.json", INDEX.as_bytes(), None),
            (
                "blobs/sha256/e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                b"",
                None,
            ),
            ("blobs/sha256/outside", b"", Some("/etc/hostname")),
        ],
        true,
    );
    put(dir, "archive", "oci-gz", &oci);

    put(
        dir,
        "hosts_toml",
        "mirror",
        br#"server = "https://registry.test"

[host."https://mirror.test:5000"]
  capabilities = ["pull", "resolve"]
  ca = "ca.pem"
  skip_verify = false

[host."http://127.0.0.1:5000"]
  capabilities = ["pull"]
  client = [["client.pem", "client.key"]]
"#,
    );
    put(
        dir,
        "hosts_toml",
        "plain",
        b"server = \"http://localhost:5000\"\n",
    );

    put(
        dir,
        "auth_challenge",
        "bearer",
        br#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
    );
    put(
        dir,
        "auth_challenge",
        "basic",
        br#"Basic realm="Registry Realm""#,
    );

    let req = cri::CreateContainerRequest {
        pod_sandbox_id: "5a4db0c5".into(),
        config: Some(cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: "app".into(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: "busybox".into(),
                ..Default::default()
            }),
            command: vec!["/bin/sh".into()],
            args: vec!["-c".into(), "sleep 1000".into()],
            working_dir: "/work".into(),
            envs: vec![cri::KeyValue {
                key: "A".into(),
                value: "b".into(),
            }],
            mounts: vec![cri::Mount {
                container_path: "/data".into(),
                host_path: "/tmp".into(),
                readonly: true,
                ..Default::default()
            }],
            labels: [("app".to_string(), "x".to_string())].into(),
            annotations: [("run.oci.keep_original_groups".to_string(), "1".to_string())].into(),
            log_path: "app/0.log".into(),
            tty: true,
            linux: Some(cri::LinuxContainerConfig {
                resources: Some(cri::LinuxContainerResources {
                    cpu_shares: 512,
                    cpu_quota: 50000,
                    cpu_period: 100000,
                    memory_limit_in_bytes: 64 << 20,
                    oom_score_adj: 100,
                    ..Default::default()
                }),
                security_context: Some(cri::LinuxContainerSecurityContext {
                    run_as_user: Some(cri::Int64Value { value: 1000 }),
                    readonly_rootfs: true,
                    no_new_privs: true,
                    capabilities: Some(cri::Capability {
                        add_capabilities: vec!["NET_ADMIN".into()],
                        drop_capabilities: vec!["ALL".into()],
                        ..Default::default()
                    }),
                    masked_paths: vec!["/proc/kcore".into()],
                    readonly_paths: vec!["/proc/sys".into()],
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
        sandbox_config: Some(cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: "pod".into(),
                namespace: "default".into(),
                uid: "u1".into(),
                attempt: 0,
            }),
            hostname: "pod".into(),
            log_directory: "/var/log/pods/x".into(),
            annotations: [("org.systemd.property.x".to_string(), "y".to_string())].into(),
            ..Default::default()
        }),
    };
    put(dir, "container_spec", "typical", &req.encode_to_vec());

    put(
        dir,
        "log_framing",
        "lines",
        b"\x10\x05hello\nworld\n\npartial line that is long enough to split",
    );
    put(dir, "log_framing", "cut", b"\x03\x00abcdef");

    put(
        dir,
        "journal_fold",
        "lifecycle",
        &[
            3, 0, 0, 1, 1, 0, 0, 3, 1, 0, 0, 2, 0, 0, 10, 0, 1, 0, 0, 0, 11, 0, 0, 12, 0, 0, 13, 7,
            5, 0, 0, 15, 1, 3, 0, 0, 14, 9, 2, 0, 0, 16, 0, 0, 17, 0, 0, 6, 0, 0, 7, 0, 0, 8, 0, 0,
            9,
        ],
    );
}
