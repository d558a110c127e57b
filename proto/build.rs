//! Compiles `atoll/v1/*.proto` with the protoc shipped in `protoc-bin-vendored`,
//! so no system protoc is needed, and writes a descriptor set for gRPC
//! reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        // SAFETY-free: build scripts are single threaded at this point.
        let protoc = protoc_bin_vendored::protoc_bin_path()?;
        std::env::set_var("PROTOC", protoc);
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = [
        "atoll/v1/kv.proto",
        "atoll/v1/cluster.proto",
        "atoll/v1/raft.proto",
        "atoll/v1/error.proto",
    ];
    for proto in &protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("atoll_descriptor.bin"))
        .compile_protos(&protos, &["."])?;
    Ok(())
}
