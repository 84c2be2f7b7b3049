//! Compiles `proto/syncfleet/v1/*.proto` with protox (a pure-Rust protobuf compiler), so a clean
//! checkout builds without a system `protoc`. The encoded descriptor set is kept for gRPC
//! server reflection.

use std::path::PathBuf;

const FILES: &[&str] = &[
    "syncfleet/v1/common.proto",
    "syncfleet/v1/agent.proto",
    "syncfleet/v1/fleet.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for f in FILES {
        println!("cargo:rerun-if-changed=proto/{f}");
    }
    let fds = protox::compile(FILES, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("syncfleet_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
