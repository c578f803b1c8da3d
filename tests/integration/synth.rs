//! Synthetic-but-real run folders: rows are generated deterministically, then go
//! through the real code path (`metrics::compute`, `record::write_parquet`, the
//! `MetricsFile` serde form), so `vit-batch report` reads exactly what `score`
//! writes. Shared by the report tests and `examples/report_bench_run.rs`
//! (included there with `#[path]`).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use vit_batch::infer::Provider;
use vit_batch::metrics;
use vit_batch::model::LabelMapping;
use vit_batch::preprocess::PreprocessConfig;
use vit_batch::record::{self, Row, Status};
use vit_batch::run::{MetricsFile, RunInfo, Throughput};

pub struct Spec {
    pub rows: usize,
    /// Model class names (the dataset's class folders are the same names).
    pub classes: Vec<String>,
    /// Every `error_every`-th row failed to decode (0: none).
    pub error_every: usize,
    /// Dataset class folders that match no model label.
    pub unmapped: Vec<String>,
    /// Rows in unmapped folders.
    pub unmapped_rows: usize,
    pub k: usize,
    /// Recorded as `run.data_dir` (thumbnails are read from here).
    pub data_dir: PathBuf,
    /// Write a small PNG for each ok row under `data_dir` (for thumbnails).
    pub write_images: bool,
}

impl Spec {
    pub fn new(rows: usize, classes: usize) -> Self {
        Spec {
            rows,
            classes: (0..classes).map(|i| format!("class_{i:04}")).collect(),
            error_every: 0,
            unmapped: vec![],
            unmapped_rows: 0,
            k: 5,
            data_dir: PathBuf::from("/nonexistent/vit-batch-synthetic-data"),
            write_images: false,
        }
    }
}

/// SplitMix64 step: deterministic pseudo-random numbers without a dependency.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn unit(x: u64) -> f64 {
    (mix(x) >> 11) as f64 / (1u64 << 53) as f64
}

/// The rows of `spec`, in a fixed order.
pub fn rows(spec: &Spec) -> Vec<Row> {
    let n = spec.classes.len();
    let k = spec.k.min(n);
    let mut out = Vec::with_capacity(spec.rows + spec.unmapped_rows);
    for i in 0..spec.rows {
        let t = i % n;
        let label = spec.classes[t].clone();
        let path = format!("{label}/img_{i:06}.png");
        if spec.error_every > 0 && i % spec.error_every == spec.error_every - 1 {
            out.push(Row {
                path,
                label,
                label_id: Some(t as u32),
                pred: None,
                pred_id: None,
                score: None,
                topk_ids: None,
                topk_scores: None,
                correct: None,
                status: Status::Error,
                error: Some(format!("decode failed: truncated PNG <chunk {i}>")),
                warning: None,
                attn_rollout: None,
                extra: vec![],
            });
            continue;
        }
        // Per-class difficulty: classes get harder with their id; confusions go
        // mostly to the next class, sometimes anywhere.
        let difficulty = 0.05 + 0.4 * (t as f64 / n.max(1) as f64);
        let u = unit(i as u64 * 3 + 1);
        let right = u >= difficulty;
        let p = if right {
            t
        } else if unit(i as u64 * 3 + 2) < 0.7 {
            (t + 1) % n
        } else {
            (mix(i as u64 * 7 + 5) % n as u64) as usize
        };
        let conf = if right {
            0.55 + 0.45 * unit(i as u64 * 5 + 3)
        } else {
            0.2 + 0.75 * unit(i as u64 * 5 + 4)
        } as f32;
        let mut ids = vec![p as u32];
        let mut j = 1u64;
        while ids.len() < k {
            let cand = if !ids.contains(&(t as u32)) && unit(i as u64 * 11 + j) < 0.6 {
                t as u32
            } else {
                (mix(i as u64 * 13 + j) % n as u64) as u32
            };
            if !ids.contains(&cand) {
                ids.push(cand);
            }
            j += 1;
        }
        let mut scores = vec![conf];
        let mut rest = 1.0 - conf;
        for _ in 1..ids.len() {
            rest /= 2.0;
            scores.push(rest.min(conf));
        }
        out.push(Row {
            path,
            label,
            label_id: Some(t as u32),
            pred: Some(spec.classes[p].clone()),
            pred_id: Some(p as u32),
            score: Some(conf),
            topk_ids: Some(ids),
            topk_scores: Some(scores),
            correct: Some(right),
            status: Status::Ok,
            error: None,
            warning: None,
            attn_rollout: None,
            extra: vec![],
        });
    }
    for i in 0..spec.unmapped_rows {
        let label = spec.unmapped[i % spec.unmapped.len()].clone();
        out.push(Row {
            path: format!("{label}/extra_{i:04}.png"),
            label,
            label_id: None,
            pred: Some(spec.classes[0].clone()),
            pred_id: Some(0),
            score: Some(0.5),
            topk_ids: Some(vec![0]),
            topk_scores: Some(vec![0.5]),
            correct: None,
            status: Status::Ok,
            error: None,
            warning: None,
            attn_rollout: None,
            extra: vec![],
        });
    }
    out
}

/// Write `predictions.parquet` and `metrics.json` for `spec` into `dir`.
pub fn write_run(dir: &Path, spec: &Spec) -> MetricsFile {
    std::fs::create_dir_all(dir).unwrap();
    let rows = rows(spec);
    let metrics = metrics::compute(&rows, &spec.classes, spec.k.min(spec.classes.len()), 3);
    record::write_parquet(&dir.join("predictions.parquet"), &rows).unwrap();
    if spec.write_images {
        for (i, r) in rows
            .iter()
            .enumerate()
            .filter(|(_, r)| r.status == Status::Ok)
        {
            let p = spec.data_dir.join(&r.path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            let shade = (37 * i % 200) as u8 + 30;
            let img = image::RgbImage::from_fn(48, 32, |x, y| {
                image::Rgb([shade, (x * 5) as u8, (y * 7) as u8])
            });
            img.save(&p).unwrap();
        }
    }
    let class_to_id: BTreeMap<String, usize> = spec
        .classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.clone(), i))
        .collect();
    let matched_by = spec
        .classes
        .iter()
        .map(|c| (c.clone(), "name".to_string()))
        .collect();
    let file = MetricsFile {
        schema_version: vit_batch::run::METRICS_SCHEMA_VERSION,
        metrics,
        throughput: Throughput {
            scored: rows.len() as u64,
            wall_s: 12.5,
            images_per_s: rows.len() as f64 / 12.5,
            shards: vec![],
        },
        run: RunInfo {
            tool: "vit-batch".into(),
            tool_version: "0.0.0-synthetic".into(),
            data_dir: spec.data_dir.display().to_string(),
            model: "fixtures/models/synthetic-vit".into(),
            model_sha256: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef".into(),
            onnxruntime_version: vit_batch::runtime::PINNED_ORT_VERSION.into(),
            provider: Provider::Cpu,
            precision: Default::default(),
            engine: Default::default(),
            threads: 2,
            batch_size: 32,
            preprocess: PreprocessConfig::imagenet_default(224, 224),
            preprocess_source: "preprocessor_config.json".into(),
            dataset_fingerprint: "synthetic".into(),
            shard: None,
            subset: None,
            dataset_format: "folder".into(),
            image_root: None,
            label_column: None,
            label_mapping: LabelMapping {
                model_labels: spec.classes.clone(),
                class_to_id,
                unmapped: spec.unmapped.clone(),
                matched_by,
            },
            warnings: vec![],
            attention: None,
        },
    };
    vit_batch::fs::atomic_write_bytes(
        &dir.join("metrics.json"),
        serde_json::to_string_pretty(&file).unwrap().as_bytes(),
    )
    .unwrap();
    file
}
