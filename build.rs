//! Compiles concord's own gRPC API (proto/concord/v1) with tonic.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure().compile_protos(
        &[
            "proto/concord/v1/images.proto",
            "proto/concord/v1/introspection.proto",
        ],
        &["proto"],
    )?;
    Ok(())
}
