//! Generates the gRPC code of the push system's internal calls from `proto/goim`.
//! protoc comes from the `protoc-bin-vendored` crate, so building needs no
//! system package.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY of intent: build scripts are single-threaded; prost-build reads PROTOC.
    unsafe { std::env::set_var("PROTOC", protoc) };
    println!("cargo:rerun-if-changed=proto");
    // goim's Logic service has an rpc named Connect, which would clash with the
    // generated client's `connect` constructor: build clients with
    // `LogicClient::new(channel)` instead.
    tonic_prost_build::configure()
        .build_transport(false)
        .compile_protos(
            &[
                "proto/goim/protocol.proto",
                "proto/goim/comet.proto",
                "proto/goim/logic.proto",
            ],
            &["proto"],
        )?;
    Ok(())
}
