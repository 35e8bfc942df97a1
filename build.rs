//! Compiles the CRI v1 API (proto/runtime/v1/api.proto: Kubernetes 1.36, cri-api v0.36.3) and
//! concord's own gRPC API (proto/concord/v1) with tonic: servers for the daemon, clients for the
//! CLI, the tests and the bench program.
//!
//! api.proto marks the registry credentials of `AuthConfig` `[debug_redact = true]`, an option
//! protoc learned in 22.0; Debian's protoc 3.21 refuses it. The option has no wire meaning: the
//! file is compiled from a copy without it, and `AuthConfig` gets no derived Debug (src/lib.rs
//! writes one that redacts those fields, as the option asks).
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
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
