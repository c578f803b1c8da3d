//! The fuzzer's inputs, replayed in the normal test suite: every file in
//! `fuzz/regressions/` (what the fuzzer or a bug report found, kept after the fix) goes
//! through the fuzz harness again, and every seed in `fuzz/seeds/` (tiny valid images
//! of each format and mode) must still decode and preprocess.

use std::path::{Path, PathBuf};

fn inputs(dir: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz")
        .join(dir);
    let mut v: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_none_or(|e| e != "md"))
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no inputs in {}", dir.display());
    v
}

#[test]
fn fuzz_regressions_stay_fixed() {
    for (path, data) in inputs("regressions") {
        let outcome = std::panic::catch_unwind(|| vit_batch_preprocess::fuzzing::check(&data));
        assert!(outcome.is_ok(), "{} fails again", path.display());
    }
}

#[test]
fn config_fuzz_regressions_stay_fixed() {
    for (path, data) in inputs("regressions-config") {
        let outcome =
            std::panic::catch_unwind(|| vit_batch_preprocess::fuzzing::check_config(&data));
        assert!(outcome.is_ok(), "{} fails again", path.display());
    }
}

#[test]
fn config_fuzz_seeds_are_accepted_configs() {
    for (path, data) in inputs("seeds-config") {
        let text = std::str::from_utf8(&data).unwrap();
        if let Err(e) = vit_batch_preprocess::PreprocessConfig::from_json(text) {
            panic!("{}: {e}", path.display());
        }
        vit_batch_preprocess::fuzzing::check_config(&data);
    }
}

#[test]
fn config_regressions_are_refused_not_crashes() {
    // The zero sizes and the infinite normalization in regressions-config/ were
    // accepted before (a panic, or the same tensor for every image): now refused.
    for (path, data) in inputs("regressions-config") {
        let text = std::str::from_utf8(&data).unwrap();
        let r = vit_batch_preprocess::PreprocessConfig::from_json(text)
            .and_then(vit_batch_preprocess::Preprocessor::new);
        assert!(r.is_err(), "{} is accepted", path.display());
    }
}

#[test]
fn fuzz_seeds_are_valid_images() {
    for (path, data) in inputs("seeds") {
        let p = vit_batch_preprocess::fuzzing::preprocessor(data[1]);
        let mut out = vec![f32::NAN; p.tensor_len()];
        if let Err(e) = p.process_bytes(&data[2..], Some("png"), &mut out) {
            panic!("{}: {e}", path.display());
        }
        assert!(out.iter().all(|v| v.is_finite()), "{}", path.display());
    }
}

#[test]
fn model_config_fuzz_seeds_parse_and_hold_the_harness() {
    for (path, data) in inputs("seeds-model-config") {
        let text = std::str::from_utf8(&data).unwrap();
        if let Err(e) = vit_batch_preprocess::model_config::parse_model_config(text) {
            panic!("{}: {e}", path.display());
        }
        let outcome =
            std::panic::catch_unwind(|| vit_batch_preprocess::fuzzing::check_model_config(&data));
        assert!(outcome.is_ok(), "{}", path.display());
    }
}
