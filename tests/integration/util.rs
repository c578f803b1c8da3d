//! Shared helpers: a temp dir, the built binary, the ONNX Runtime library path.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Repository root (where Cargo.toml is).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixtures() -> PathBuf {
    repo().join("fixtures")
}

/// A fresh temporary directory, removed when dropped.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("vit-batch-test-")
        .tempdir()
        .expect("create temp dir")
}

/// Path of the ONNX Runtime library installed by `scripts/setup`.
pub fn ort_lib() -> PathBuf {
    if let Ok(p) = std::env::var("ORT_DYLIB_PATH") {
        return PathBuf::from(p);
    }
    let p = repo().join(".ort/1.31.1/libonnxruntime.so.1.31.1");
    assert!(
        p.exists(),
        "ONNX Runtime missing at {}: run scripts/setup",
        p.display()
    );
    p
}

/// The `vit-batch` binary built by cargo for this test run.
pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vit-batch"));
    c.env("ORT_DYLIB_PATH", ort_lib());
    c
}

/// Run the binary with `args`, returning its output (never panics on non-zero exit).
pub fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("spawn vit-batch")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn assert_no_panic(o: &Output) {
    let e = stderr(o);
    assert!(
        !e.contains("panicked") && o.status.code() != Some(101),
        "vit-batch panicked: {e}"
    );
}

/// Python of the project's venv (made by scripts/setup), for the onnx checker etc.
pub fn venv_python() -> PathBuf {
    let p = repo().join(".venv/bin/python");
    assert!(p.exists(), "{} missing: run scripts/setup", p.display());
    p
}

pub fn write(path: &Path, bytes: &[u8]) {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(path, bytes).unwrap();
}
