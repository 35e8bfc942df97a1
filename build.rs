//! Compiles the CRI v1 API (proto/runtime/v1/api.proto: Kubernetes 1.36, cri-api v0.36.3) and
//! concord's own gRPC API (proto/concord/v1) with tonic: servers for the daemon, clients for the
//! CLI, the tests and the bench program.
//!
//! api.proto marks the registry credentials of `AuthConfig` `[debug_redact = true]`, an option
//! protoc learned in 22.0; Debian's protoc 3.21 refuses it. The option has no wire meaning: the
//! file is compiled from a copy without it, and `AuthConfig` gets no derived Debug (src/lib.rs
//! writes one that redacts those fields, as the option asks).
//!
//! It also names the build for `concord_build_info`: CONCORD_GIT_REVISION (`git rev-parse
//! --short HEAD`, "unknown" outside a git checkout) and CONCORD_RUSTC_VERSION (`rustc --version`).
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    build_info();
    let out = PathBuf::from(std::env::var("OUT_DIR")?).join("proto");
    let cri = std::fs::read_to_string("proto/runtime/v1/api.proto")?;
    let redacted = cri.matches(" [debug_redact = true]").count();
    if redacted != 4 {
        return Err(format!(
            "api.proto: expected 4 debug_redact fields of AuthConfig, found {redacted}"
        )
        .into());
    }
    std::fs::create_dir_all(out.join("runtime/v1"))?;
    std::fs::write(
        out.join("runtime/v1/api.proto"),
        cri.replace(" [debug_redact = true]", ""),
    )?;
    // Serialize (never Deserialize): the verbose `info` of the Status RPCs shows the configs as
    // JSON, as containerd's does. The journal stores CRI messages as protobuf (src/journal/codec.rs).
    tonic_prost_build::configure()
        .type_attribute(".runtime.v1", "#[derive(serde::Serialize)]")
        .skip_debug(["runtime.v1.AuthConfig"])
        // ListContainers answers with entries encoded once (src/api/container_list.rs).
        .extern_path(
            ".runtime.v1.ListContainersResponse",
            "crate::cri::ListContainersResponse",
        )
        .compile_protos(
            &[out.join("runtime/v1/api.proto")],
            std::slice::from_ref(&out),
        )?;
    // concord's own API serializes for `concord inspect -o json|yaml`.
    tonic_prost_build::configure()
        .type_attribute(".concord.v1", "#[derive(serde::Serialize)]")
        .compile_protos(
            &[
                "proto/concord/v1/images.proto",
                "proto/concord/v1/introspection.proto",
            ],
            &["proto"],
        )?;
    Ok(())
}

/// The output of `program args`, trimmed (None: it failed or is absent).
fn output(program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_string())
}

/// Sets CONCORD_GIT_REVISION and CONCORD_RUSTC_VERSION; reruns when HEAD moves (a commit, a
/// checkout: HEAD, the branch's ref, packed-refs).
fn build_info() {
    let revision = output("git", &["rev-parse", "--short", "HEAD"]);
    println!(
        "cargo:rustc-env=CONCORD_GIT_REVISION={}",
        revision.as_deref().unwrap_or("unknown")
    );
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    println!(
        "cargo:rustc-env=CONCORD_RUSTC_VERSION={}",
        output(rustc, &["--version"]).unwrap_or_else(|| "unknown".into())
    );
    if revision.is_none() {
        return;
    }
    // In a worktree HEAD lives in its own git dir, branches and packed-refs in the common one.
    let git_dir = output("git", &["rev-parse", "--git-dir"]).map(PathBuf::from);
    let common = output("git", &["rev-parse", "--git-common-dir"]).map(PathBuf::from);
    let head_ref = output("git", &["symbolic-ref", "-q", "HEAD"]);
    let mut watched: Vec<PathBuf> = Vec::new();
    if let Some(dir) = &git_dir {
        watched.push(dir.join("HEAD"));
    }
    if let Some(common) = &common {
        watched.push(common.join("packed-refs"));
        if let Some(r) = &head_ref {
            watched.push(common.join(r));
        }
    }
    // A path that does not exist would rerun this script on every build.
    for path in watched.iter().filter(|p| Path::new(p).exists()) {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}
