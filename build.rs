//! Generates the Open Inference Protocol's gRPC messages, client and server from
//! `src/serve/grpc/inference.proto`, with protox (a Rust protobuf compiler), so building needs
//! no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "src/serve/grpc/inference.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["src/serve/grpc"])?;
    // Every method has a default (UNIMPLEMENTED), so that a service implementing the trait (a
    // test's or a bench's stand-in server) need not change when a method is added.
    tonic_prost_build::configure().generate_default_stubs(true).compile_fds(descriptors)?;
    Ok(())
}
