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
    let v = vit_batch::runtime::PINNED_ORT_VERSION;
    let p = repo().join(format!(".ort/{v}/libonnxruntime.so.{v}"));
    assert!(
        p.exists(),
        "ONNX Runtime {v} is not installed at {}: run scripts/setup first (the README's test command does)",
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

/// Compare `actual` with the committed snapshot `tests/snapshots/<name>` exactly.
/// `UPDATE_SNAPSHOTS=1` rewrites the snapshot instead (review the diff, then commit).
pub fn assert_snapshot(name: &str, actual: &str) {
    let path = repo().join("tests/snapshots").join(name);
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        write(&path, actual.as_bytes());
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "snapshot {} unreadable ({e}); run with UPDATE_SNAPSHOTS=1 to create it",
            path.display()
        )
    });
    if expected == actual {
        return;
    }
    let (el, al): (Vec<&str>, Vec<&str>) = (expected.lines().collect(), actual.lines().collect());
    let mut diff = String::new();
    let mut shown = 0;
    for i in 0..el.len().max(al.len()) {
        let (e, a) = (el.get(i), al.get(i));
        if e != a {
            diff.push_str(&format!(
                "line {}:\n  - expected: {}\n  + actual:   {}\n",
                i + 1,
                e.copied().unwrap_or("<missing>"),
                a.copied().unwrap_or("<missing>")
            ));
            shown += 1;
            if shown == 10 {
                diff.push_str("  ...\n");
                break;
            }
        }
    }
    if diff.is_empty() {
        diff.push_str("  (line endings or a trailing newline differ)\n");
    }
    panic!(
        "output differs from snapshot {} ({} vs {} lines):\n{diff}If the change is intended, rerun with UPDATE_SNAPSHOTS=1 and commit the snapshot.",
        path.display(),
        el.len(),
        al.len()
    );
}

/// Decoded RGB image and a blankness check: at least `min_colours` distinct
/// colours and `min_ink` of the pixels not white.
pub fn assert_png_not_blank(path: &Path, min_w: u32, min_h: u32) -> image::RgbImage {
    let img = image::open(path)
        .unwrap_or_else(|e| panic!("{} is not a decodable image: {e}", path.display()))
        .to_rgb8();
    assert!(
        img.width() >= min_w && img.height() >= min_h,
        "{} is {}x{}, expected at least {min_w}x{min_h}",
        path.display(),
        img.width(),
        img.height()
    );
    let mut colours = std::collections::HashSet::new();
    let mut ink = 0usize;
    for p in img.pixels() {
        colours.insert(p.0);
        if p.0.iter().any(|&c| c < 235) {
            ink += 1;
        }
    }
    let frac = ink as f64 / (img.width() * img.height()) as f64;
    assert!(
        colours.len() >= 8 && frac > 0.01,
        "{} looks blank: {} colours, {:.2}% non-white pixels",
        path.display(),
        colours.len(),
        100.0 * frac
    );
    img
}

/// A fresh ORT session on `model_dir/model.onnx` made by the test itself (not by
/// vit-batch's engine), with the folder's preprocessing, for independent checks.
pub fn ort_session(
    model_dir: &Path,
) -> (ort::session::Session, vit_batch::preprocess::Preprocessor) {
    vit_batch::runtime::init(Some(&ort_lib()), false).unwrap();
    let env = vit_batch::runtime::environment().unwrap();
    let s = ort::session::Session::builder(env)
        .unwrap()
        .commit_from_file(model_dir.join("model.onnx"))
        .unwrap();
    let cfg = vit_batch::preprocess::PreprocessConfig::from_file(
        &model_dir.join("preprocessor_config.json"),
    )
    .unwrap();
    (s, vit_batch::preprocess::Preprocessor::new(cfg).unwrap())
}

/// A JSON file, parsed.
pub fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

/// `vit-batch score DATA --model MODEL --out OUT --quiet EXTRA...`, asserting success.
pub fn score_ok(data: &Path, model: &Path, out: &Path, extra: &[&str]) {
    let o = bin()
        .arg("score")
        .arg(data)
        .arg("--model")
        .arg(model)
        .arg("--out")
        .arg(out)
        .arg("--quiet")
        .args(extra)
        .output()
        .unwrap();
    assert_no_panic(&o);
    assert!(o.status.success(), "score failed: {}", stderr(&o));
}
