//! Compiles the official `onnx.proto` (vendored from the `onnx` 1.23.2 PyPI package,
//! Apache-2.0) into prost types with protox, a pure-Rust protobuf compiler, so that
//! building vit-batch needs no `protoc` install.
fn main() {
    println!("cargo:rerun-if-changed=proto/onnx.proto");
    let fds = protox::compile(["proto/onnx.proto"], ["proto"]).expect("compile onnx.proto");
    prost_build::Config::new()
        .compile_fds(fds)
        .expect("generate prost types for onnx.proto");
}
