//! Bounds and provenance (issue #16): the model is loaded from its own folder (its
//! external-data files too, all of them in its SHA-256), and every size that comes
//! from the user's input is checked before anything is allocated or written.

use std::path::{Path, PathBuf};
use std::process::Output;

use prost::Message;
use vit_batch::onnx::{tensor_proto::DataLocation, ModelProto, StringStringEntryProto};
use vit_batch::onnx::{
    tensor_shape_proto::{dimension, Dimension},
    type_proto, AttributeProto, GraphProto, NodeProto, OperatorSetIdProto, TensorShapeProto,
    TypeProto, ValueInfoProto,
};
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

/// Score `data` with `model` into `out`, from the current directory `cwd` (batches
/// of 4 unless `extra` sets the batch size).
fn score_from(cwd: &Path, data: &Path, model: &Path, out: &Path, extra: &[&str]) -> Output {
    let o = bin()
        .current_dir(cwd)
        .args(["score", data.to_str().unwrap(), "--model"])
        .arg(model)
        .arg("--out")
        .arg(out)
        .arg("--quiet")
        .args(if extra.contains(&"--batch-size") {
            &[][..]
        } else {
            &["--batch-size", "4"][..]
        })
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

// ---- Bare ONNX graphs built here, with the crate's generated ONNX types. ----

/// A dimension: a fixed size, or a named dynamic one.
#[derive(Clone, Copy)]
enum D {
    V(i64),
    P(&'static str),
}

fn value_info(name: &str, elem_type: i32, dims: &[D]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match *d {
                D::V(v) => dimension::Value::DimValue(v),
                D::P(p) => dimension::Value::DimParam(p.into()),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(elem_type),
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn node(op: &str, inputs: &[&str], outputs: &[&str], attribute: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        op_type: Some(op.into()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        attribute,
        ..Default::default()
    }
}

fn write_model(path: &Path, graph: GraphProto) {
    let m = ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(13),
        }],
        producer_name: Some("vit-batch-tests".into()),
        graph: Some(graph),
        ..Default::default()
    };
    util::write(path, &m.encode_to_vec());
}

const FLOAT: i32 = 1;

/// pixel_values [batch, 3, h, w] -> GlobalAveragePool -> Flatten -> logits [batch, 3]:
/// a real, tiny classifier of 3 classes.
fn pooling_model(path: &Path, batch: D, h: D, w: D) {
    let graph = GraphProto {
        name: Some("pool".into()),
        node: vec![
            node("GlobalAveragePool", &["pixel_values"], &["pooled"], vec![]),
            node("Flatten", &["pooled"], &["logits"], vec![]),
        ],
        input: vec![value_info("pixel_values", FLOAT, &[batch, D::V(3), h, w])],
        output: vec![value_info("logits", FLOAT, &[batch, D::V(3)])],
        ..Default::default()
    };
    write_model(path, graph);
}

fn bare_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["--preprocess", "defaults", "--top-k", "1"];
    v.extend_from_slice(extra);
    v
}

#[test]
fn zero_sizes_in_preprocessor_config_are_refused_naming_the_field() {
    let t = tempdir();
    let data = small_dataset(t.path(), 2, 2);
    let base: serde_json::Value = serde_json::from_slice(
        &std::fs::read(digits_model().join("preprocessor_config.json")).unwrap(),
    )
    .unwrap();
    let cases = [
        (
            "size0x0",
            serde_json::json!({"size": {"height": 0, "width": 0}}),
            "size must be at least 1x1 pixels",
        ),
        (
            "shortest0",
            serde_json::json!({"size": {"shortest_edge": 0}, "do_center_crop": true,
                "crop_size": {"height": 32, "width": 32}}),
            "size.shortest_edge must be at least 1",
        ),
        (
            "crop0",
            serde_json::json!({"size": {"shortest_edge": 36}, "do_center_crop": true,
                "crop_size": {"height": 0, "width": 32}}),
            "crop_size must be at least 1x1 pixels",
        ),
    ];
    for (name, patch, msg) in cases {
        let m = t.path().join(name);
        std::fs::create_dir_all(&m).unwrap();
        for f in ["config.json", "model.onnx"] {
            std::fs::copy(digits_model().join(f), m.join(f)).unwrap();
        }
        let mut cfg = base.clone();
        for (k, v) in patch.as_object().unwrap() {
            cfg[k] = v.clone();
        }
        util::write(
            &m.join("preprocessor_config.json"),
            serde_json::to_string(&cfg).unwrap().as_bytes(),
        );
        let out = t.path().join(format!("{name}-run"));
        let o = score_from(t.path(), &data, &m, &out, &[]);
        assert_refused(&o, msg, &out);
        assert!(
            stderr(&o).contains("preprocessor_config.json"),
            "{}",
            stderr(&o)
        );
    }
}

#[test]
fn batch_tensor_bytes_are_bounded_before_anything_is_allocated() {
    let t = tempdir();
    let data = small_dataset(t.path(), 2, 2);
    // The graph builder makes a model that scores: the refusals below are the bound's.
    let ok = t.path().join("pool32.onnx");
    pooling_model(&ok, D::P("batch"), D::V(32), D::V(32));
    let out = t.path().join("ok-run");
    let o = score_from(t.path(), &data, &ok, &out, &bare_args(&[]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(rows(&out).iter().any(|r| r.pred_id.is_some()));

    // --batch-size 100000000 with a 32x32 input: 1.2 TB of input per batch.
    let out = t.path().join("huge-batch");
    let o = score_from(
        t.path(),
        &data,
        &ok,
        &out,
        &bare_args(&["--batch-size", "100000000"]),
    );
    assert_refused(
        &o,
        "--max-batch-bytes: one batch's input tensor would be 100000000 x 3 x 32 x 32",
        &out,
    );
    assert!(stderr(&o).contains("--batch-size"), "{}", stderr(&o));

    // A bare model with a fixed 100000x100000 input.
    let big = t.path().join("pool-huge.onnx");
    pooling_model(&big, D::P("batch"), D::V(100_000), D::V(100_000));
    let out = t.path().join("huge-input");
    let o = score_from(t.path(), &data, &big, &out, &bare_args(&[]));
    assert_refused(&o, "x 3 x 100000 x 100000 float32", &out);

    // A fixed batch axis of 1,000,000.
    let fixed = t.path().join("pool-fixed.onnx");
    pooling_model(&fixed, D::V(1_000_000), D::V(32), D::V(32));
    let out = t.path().join("fixed-batch");
    let o = score_from(t.path(), &data, &fixed, &out, &bare_args(&[]));
    assert_refused(&o, "the model's fixed batch axis of 1000000", &out);

    // The limit is the option: 4 x 3 x 32 x 32 x 4 = 49152 bytes.
    let out = t.path().join("limit");
    let o = score_from(
        t.path(),
        &data,
        &ok,
        &out,
        &bare_args(&["--max-batch-bytes", "49151"]),
    );
    assert_refused(&o, "= 49152 bytes, above the limit of 49151 bytes", &out);
    let o = score_from(
        t.path(),
        &data,
        &ok,
        &out,
        &bare_args(&["--max-batch-bytes", "49152"]),
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = score_from(
        t.path(),
        &data,
        &ok,
        &t.path().join("zero"),
        &bare_args(&["--max-batch-bytes", "0"]),
    );
    assert_refused(
        &o,
        "--max-batch-bytes: must be at least 1",
        &t.path().join("zero"),
    );
}

#[test]
fn a_file_over_max_file_bytes_is_an_error_row_and_is_not_read() {
    let t = tempdir();
    let data = small_dataset(t.path(), 2, 2);
    // A 2 GiB sparse "PNG": reading it whole would take 2 GiB of memory.
    let big = data.join("0/huge.png");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(2 << 30)
        .unwrap();
    let out = t.path().join("run");
    let started = std::time::Instant::now();
    let o = score_from(t.path(), &data, &digits_model(), &out, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(started.elapsed().as_secs() < 60, "{:?}", started.elapsed());
    let rs = rows(&out);
    let r = rs.iter().find(|r| r.path == "0/huge.png").unwrap();
    assert_eq!(
        r.error.as_deref(),
        Some("file is 2147483648 bytes, above the limit of 1073741824 bytes (--max-file-bytes); not read")
    );
    assert!(rs.iter().filter(|r| r.pred_id.is_some()).count() >= 4);

    // The limit is the option: the digit PNGs are larger than 100 bytes.
    let out = t.path().join("small-limit");
    let o = score_from(
        t.path(),
        &data,
        &digits_model(),
        &out,
        &["--max-file-bytes", "100", "--max-error-rate", "100"],
    );
    let rs = rows(&out);
    assert!(
        o.status.code() == Some(3),
        "nothing evaluated: {}",
        stderr(&o)
    );
    let png = rs
        .iter()
        .find(|r| r.path.starts_with("1/") && r.path != "1/broken.png")
        .unwrap();
    let len = std::fs::metadata(data.join(&png.path)).unwrap().len();
    assert_eq!(
        png.error.as_deref(),
        Some(
            format!(
                "file is {len} bytes, above the limit of 100 bytes (--max-file-bytes); not read"
            )
            .as_str()
        )
    );
}

// ---- merge checks every row it reads ----

/// Two shards of the digits fixture model over a small dataset, scored for real.
fn two_shards(t: &Path) -> (PathBuf, PathBuf) {
    let data = small_dataset(t, 4, 3);
    let dirs: Vec<PathBuf> = (0..2)
        .map(|k| {
            let out = t.join(format!("shard-{k}"));
            let o = score_from(
                t,
                &data,
                &digits_model(),
                &out,
                &["--shard", &format!("{k}/2")],
            );
            assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
            out
        })
        .collect();
    (dirs[0].clone(), dirs[1].clone())
}

fn merge(t: &Path, a: &Path, b: &Path, out: &Path) -> Output {
    let o = bin()
        .current_dir(t)
        .arg("merge")
        .args([a, b])
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    assert_no_panic(&o);
    o
}

#[test]
fn merge_refuses_rows_that_vit_batch_cannot_have_written() {
    let t = tempdir();
    let (s0, s1) = two_shards(t.path());
    let file = s1.join("predictions.parquet");
    let good = read_parquet(&file).unwrap();
    let ok = good
        .iter()
        .position(|r| r.pred_id.is_some())
        .expect("a scored row");
    let path = good[ok].path.clone();
    type Edit = fn(&mut Row);
    let cases: [(&str, Edit, &str); 6] = [
        (
            "nan",
            |r| r.score = Some(f32::NAN),
            "score NaN is not a probability in [0, 1]",
        ),
        (
            "big",
            |r| r.topk_scores.as_mut().unwrap()[1] = 1.5,
            "a topk_scores value 1.5 is not a probability",
        ),
        (
            "pred",
            |r| r.pred_id = Some(10),
            "pred_id 10 is out of range (the model has 10 classes)",
        ),
        (
            "label",
            |r| r.label_id = Some(4_000_000_000),
            "label_id 4000000000 is out of range",
        ),
        (
            "topk",
            |r| {
                r.topk_ids.as_mut().unwrap().pop();
            },
            "topk_ids has 4 values but topk_scores has 5",
        ),
        (
            "short",
            |r| {
                r.topk_ids.as_mut().unwrap().pop();
                r.topk_scores.as_mut().unwrap().pop();
            },
            "a scored row has 4 top-k values, the run keeps 5",
        ),
    ];
    for (name, edit, msg) in cases {
        let mut rows = good.clone();
        edit(&mut rows[ok]);
        vit_batch::record::write_parquet(&file, &rows).unwrap();
        let out = t.path().join(format!("merged-{name}"));
        let o = merge(t.path(), &s0, &s1, &out);
        assert_refused(&o, msg, &out);
        let e = stderr(&o);
        assert!(
            e.contains(&file.display().to_string())
                && e.contains(&format!("row {ok} (path '{path}')")),
            "{e}"
        );
    }
    // The shard as written merges.
    vit_batch::record::write_parquet(&file, &good).unwrap();
    let out = t.path().join("merged");
    let o = merge(t.path(), &s0, &s1, &out);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        rows(&out).len(),
        good.len() + read_parquet(&s0.join("predictions.parquet")).unwrap().len()
    );
}

// ---- a stuck batch ends the run, the committed parts kept ----

/// pixel_values [batch, 3, 32, 32] -> pooled logits [batch, 3], then a Loop of
/// 10^15 iterations (an Identity body) over the logits: a graph that never returns.
fn endless_model(path: &Path) {
    use vit_batch::onnx::{attribute_proto::AttributeType, TensorProto};
    let scalar = |name: &str, data_type: i32, int64: Vec<i64>, int32: Vec<i32>| TensorProto {
        name: Some(name.into()),
        data_type: Some(data_type),
        int64_data: int64,
        int32_data: int32,
        ..Default::default()
    };
    let body = GraphProto {
        name: Some("body".into()),
        node: vec![
            node("Identity", &["cond_in"], &["cond_out"], vec![]),
            node("Identity", &["v_in"], &["v_out"], vec![]),
        ],
        input: vec![
            value_info("i", 7, &[]),
            value_info("cond_in", 9, &[]),
            value_info("v_in", FLOAT, &[D::P("batch"), D::V(3)]),
        ],
        output: vec![
            value_info("cond_out", 9, &[]),
            value_info("v_out", FLOAT, &[D::P("batch"), D::V(3)]),
        ],
        ..Default::default()
    };
    let graph = GraphProto {
        name: Some("endless".into()),
        node: vec![
            node("GlobalAveragePool", &["pixel_values"], &["pooled"], vec![]),
            node("Flatten", &["pooled"], &["flat"], vec![]),
            node(
                "Loop",
                &["trips", "cond", "flat"],
                &["logits"],
                vec![AttributeProto {
                    name: Some("body".into()),
                    r#type: Some(AttributeType::Graph as i32),
                    g: Some(body),
                    ..Default::default()
                }],
            ),
        ],
        initializer: vec![
            scalar("trips", 7, vec![1_000_000_000_000_000], vec![]),
            scalar("cond", 9, vec![], vec![1]),
        ],
        input: vec![value_info(
            "pixel_values",
            FLOAT,
            &[D::P("batch"), D::V(3), D::V(32), D::V(32)],
        )],
        output: vec![value_info("logits", FLOAT, &[D::P("batch"), D::V(3)])],
        ..Default::default()
    };
    write_model(path, graph);
}

/// [`score_from`], but killed (and the test failed) if it has not exited after
/// `limit` seconds: without the timeout, the endless graph would hang the test.
fn score_within(limit: u64, data: &Path, model: &Path, out: &Path, extra: &[&str]) -> Output {
    use std::process::Stdio;
    let mut child = bin()
        .args(["score", data.to_str().unwrap(), "--model"])
        .arg(model)
        .arg("--out")
        .arg(out)
        .arg("--quiet")
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed().as_secs() >= limit {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("vit-batch score still running after {limit} s: not stopped");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let o = child.wait_with_output().unwrap();
    assert_no_panic(&o);
    o
}

#[test]
fn a_batch_that_never_returns_ends_the_run_and_keeps_the_parts() {
    let t = tempdir();
    let data = t.path().join("data");
    // Row 0 is a broken file (no inference: its part commits), row 1 hangs the graph.
    util::write(&data.join("0/a-broken.png"), b"\x89PNG\r\n\x1a\nnot really");
    let digit = std::fs::read_dir(util::fixtures().join("digits/test/0"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    util::write(&data.join("0/b.png"), &std::fs::read(&digit).unwrap());
    util::write(&data.join("1/c.png"), &std::fs::read(&digit).unwrap());
    let model = t.path().join("endless.onnx");
    endless_model(&model);
    let out = t.path().join("run");
    let args = bare_args(&[
        "--batch-size",
        "1",
        "--checkpoint-rows",
        "1",
        "--threads",
        "2",
        "--timeout-per-batch",
        "2",
    ]);
    let o = score_within(30, &data, &model, &out, &args);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(
        e.contains("inference of rows 1..2 did not finish within 2 s (--timeout-per-batch")
            && e.contains("rerun with --resume"),
        "{e}"
    );
    let parts: Vec<String> = std::fs::read_dir(out.join("parts"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(parts, vec!["part-0000000000-0000000001.parquet"]);
    assert!(out.join("run.json").is_file());
    assert!(!out.join("predictions.parquet").exists());

    // --resume takes the folder and continues from row 1 (and stops there again).
    let mut resume = args.clone();
    resume.push("--resume");
    let o = score_within(30, &data, &model, &out, &resume);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("inference of rows 1..2"),
        "{}",
        stderr(&o)
    );
    assert!(out
        .join("parts/part-0000000000-0000000001.parquet")
        .is_file());
}
