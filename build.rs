//! Generates the Open Inference Protocol's gRPC messages, client and server from
//! `src/serve/grpc/inference.proto`, with protox (a Rust protobuf compiler), so building needs
//! no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "src/serve/grpc/inference.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["src/serve/grpc"])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
