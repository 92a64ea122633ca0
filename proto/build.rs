//! Generates the wire types and the gRPC service from `proto/chrysalis.proto`. `protoc` comes from
//! the `protoc-bin-vendored` crate unless `PROTOC` names one.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        // SAFETY of set_var: build scripts are single-threaded here.
        std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    }
    println!("cargo:rerun-if-changed=proto/chrysalis.proto");
    tonic_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&["proto/chrysalis.proto"], &["proto"])?;
    Ok(())
}
