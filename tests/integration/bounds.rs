//! Bounds and provenance (issue #16): the model is loaded from its own folder (its
//! external-data files too, all of them in its SHA-256), and every size that comes
//! from the user's input is checked before anything is allocated or written.

use std::path::{Path, PathBuf};
use std::process::Output;

use prost::Message;
use vit_batch::onnx::{tensor_proto::DataLocation, ModelProto, StringStringEntryProto};
use vit_batch::record::{read_parquet, Row};

use crate::score::small_dataset;
use crate::util::{self, assert_no_panic, bin, stderr, tempdir};

fn digits_model() -> PathBuf {
    util::fixtures().join("models/vit-digits")
}

/// Copy the fixture model folder to `dst`, with every initializer's bytes moved into
/// the external-data file `dst/<location>` (as optimum does for models over 2 GB).
/// Returns the number of tensors moved.
fn externalize(dst: &Path, location: &str) -> usize {
    let src = digits_model();
    std::fs::create_dir_all(dst).unwrap();
    for f in ["config.json", "preprocessor_config.json"] {
        std::fs::copy(src.join(f), dst.join(f)).unwrap();
    }
    let mut m =
        ModelProto::decode(std::fs::read(src.join("model.onnx")).unwrap().as_slice()).unwrap();
    let mut data: Vec<u8> = vec![];
    let mut moved = 0;
    for t in &mut m.graph.as_mut().unwrap().initializer {
        // As onnx's convert_model_to_external_data: float weights of 1 KiB and more
        // move out; small tensors (shapes, which shape inference reads) stay inline.
        let n: i64 = t.dims.iter().product();
        if t.data_type != Some(1) || n * 4 < 1024 {
            continue;
        }
        let bytes: Vec<u8> = if let Some(raw) = t.raw_data.take() {
            raw
        } else {
            std::mem::take(&mut t.float_data)
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect()
        };
        // Page-aligned offsets, as onnx's save_model writes them.
        data.resize(data.len().div_ceil(4096) * 4096, 0);
        let kv = |k: &str, v: String| StringStringEntryProto {
            key: Some(k.into()),
            value: Some(v),
        };
        t.external_data = vec![
            kv("location", location.into()),
            kv("offset", data.len().to_string()),
            kv("length", bytes.len().to_string()),
        ];
        t.data_location = Some(DataLocation::External as i32);
        data.extend_from_slice(&bytes);
        moved += 1;
    }
    std::fs::write(dst.join("model.onnx"), m.encode_to_vec()).unwrap();
    if !location.contains("..") && !Path::new(location).is_absolute() {
        std::fs::write(dst.join(location), &data).unwrap();
    }
    moved
}

/// Score `data` with `model` into `out`, from the current directory `cwd`.
fn score_from(cwd: &Path, data: &Path, model: &Path, out: &Path, extra: &[&str]) -> Output {
    let o = bin()
        .current_dir(cwd)
        .args(["score", data.to_str().unwrap(), "--model"])
        .arg(model)
        .arg("--out")
        .arg(out)
        .args(["--quiet", "--batch-size", "4"])
        .args(extra)
        .output()
        .unwrap();
    assert_no_panic(&o);
    o
}

fn rows(out: &Path) -> Vec<Row> {
    read_parquet(&out.join("predictions.parquet")).unwrap()
}

fn run_sha(out: &Path) -> String {
    let id: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("run.json")).unwrap()).unwrap();
    id["model_sha256"].as_str().unwrap().to_string()
}

/// A user error: exit 2, `needle` in the message, and no output folder left behind
/// (nothing that would block the next plain run).
fn assert_refused(o: &Output, needle: &str, out: &Path) {
    let e = stderr(o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(e.contains(needle), "expected '{needle}' in: {e}");
    assert!(
        !out.exists() || std::fs::read_dir(out).unwrap().next().is_none(),
        "{} was left behind: {:?}",
        out.display(),
        std::fs::read_dir(out).map(|d| d.count())
    );
}

#[test]
fn external_data_resolves_against_the_model_folder_and_is_hashed() {
    let t = tempdir();
    let data = small_dataset(t.path(), 4, 3);
    let ext = t.path().join("ext");
    assert!(externalize(&ext, "model.onnx_data") > 10, "weights moved");
    assert!(std::fs::metadata(ext.join("model.onnx")).unwrap().len() < 100_000);

    // The in-file model, for reference.
    let plain_out = t.path().join("plain");
    let o = score_from(t.path(), &data, &digits_model(), &plain_out, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let plain = rows(&plain_out);
    assert!(plain.iter().filter(|r| r.pred_id.is_some()).count() >= 12);

    // Run from another folder, which holds a decoy `model.onnx_data` (other weights).
    let elsewhere = t.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let real = std::fs::read(ext.join("model.onnx_data")).unwrap();
    let decoy: Vec<u8> = real.iter().map(|b| b.wrapping_add(1)).collect();
    std::fs::write(elsewhere.join("model.onnx_data"), &decoy).unwrap();
    let ext_out = t.path().join("ext-run");
    let o = score_from(&elsewhere, &data, &ext, &ext_out, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        rows(&ext_out),
        plain,
        "same predictions as the in-file model"
    );

    // The hash covers the weights file: other weights, other model_sha256.
    let sha_ext = run_sha(&ext_out);
    assert_ne!(sha_ext, run_sha(&plain_out));
    let mut changed = real.clone();
    let last = changed.len() - 1;
    changed[last] ^= 0x01;
    let ext2 = t.path().join("ext2");
    externalize(&ext2, "model.onnx_data");
    std::fs::write(ext2.join("model.onnx_data"), &changed).unwrap();
    let out2 = t.path().join("ext2-run");
    let o = score_from(&elsewhere, &data, &ext2, &out2, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_ne!(
        run_sha(&out2),
        sha_ext,
        "model_sha256 follows model.onnx_data"
    );
    // And it is stable: the same files, the same hash.
    let out3 = t.path().join("ext3-run");
    let o = score_from(t.path(), &data, &ext.join("model.onnx"), &out3, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(run_sha(&out3), sha_ext);
}

#[test]
fn external_data_missing_or_outside_the_model_folder_is_refused() {
    let t = tempdir();
    let data = small_dataset(t.path(), 2, 2);
    let cases = [
        ("missing", "model.onnx_data", "is missing"),
        ("dotdot", "../model.onnx_data", "leaves the model's folder"),
        ("absolute", "/etc/hostname", "is an absolute path"),
    ];
    for (name, loc, msg) in cases {
        let m = t.path().join(name);
        externalize(&m, loc);
        if name == "missing" {
            std::fs::remove_file(m.join(loc)).unwrap();
        }
        // A same-named file where a lax loader would look for it.
        std::fs::write(t.path().join("model.onnx_data"), b"decoy").unwrap();
        let out = t.path().join(format!("{name}-run"));
        let o = score_from(t.path(), &data, &m, &out, &[]);
        assert_refused(&o, msg, &out);
        assert!(stderr(&o).contains(loc), "{}", stderr(&o));
    }
}
