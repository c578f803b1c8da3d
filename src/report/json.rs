//! `report.json`: the machine-readable summary of a run, for dashboards and scripts
//! that should not parse the HTML or re-derive intervals from the Parquet file.
//!
//! Why a separate file from `metrics.json`: metrics.json is the run's full record
//! (every class, the whole confusion matrix, provenance); report.json is the small,
//! stable digest a CI step reads (headline numbers with their bootstrap intervals,
//! the worst classes and pairs, failure counts). Keys are sorted and there are no
//! timestamps, so the file is byte-identical across renders of one run.

use serde_json::{json, Value};

use super::{charts, Exporter, Format, Output, ReportData};
use crate::error::Result;

/// Version of this file's layout; bump on incompatible changes.
pub(crate) const SCHEMA: &str = "vit-batch-report/1";
/// Classes listed under `lowest_recall`.
pub(crate) const JSON_WORST: usize = 10;
/// Failed files listed (the total is `failures.count`).
pub(crate) const JSON_FAILURES: usize = 100;

/// The `json` format: `report.json`.
pub(crate) struct JsonExporter;

impl Exporter for JsonExporter {
    fn format(&self) -> Format {
        Format::Json
    }
    fn render(&self, data: &ReportData, _charts: &charts::Charts) -> Result<Vec<Output>> {
        let mut text = serde_json::to_string_pretty(&summary(data))?;
        text.push('\n');
        Ok(vec![Output {
            rel: "report.json".into(),
            bytes: text.into_bytes(),
        }])
    }
}

fn ci(c: Option<super::Interval>) -> Value {
    match c {
        Some(c) => json!([c.lo, c.hi]),
        None => Value::Null,
    }
}

/// The report.json value.
pub(crate) fn summary(data: &ReportData) -> Value {
    let m = data.metrics();
    let run = &data.file.run;
    let t = &data.file.throughput;
    let worst: Vec<Value> = charts::recall_order(&m.per_class)
        .into_iter()
        .take(JSON_WORST)
        .map(|c| {
            json!({"class": c.class, "id": c.id, "recall": c.recall, "precision": c.precision,
                   "f1": c.f1, "support": c.support})
        })
        .collect();
    let pairs: Vec<Value> = data
        .pairs
        .iter()
        .map(|p| {
            json!({"true": p.true_label, "pred": p.pred_label, "count": p.count, "share": p.share})
        })
        .collect();
    let failures: Vec<Value> = data
        .failures
        .iter()
        .take(JSON_FAILURES)
        .map(|f| json!({"path": f.path, "label": f.label, "error": f.error}))
        .collect();
    let mistakes: Vec<Value> = data
        .mistakes
        .iter()
        .map(|x| {
            json!({"path": x.path, "label": x.label, "pred": x.pred, "score": x.score,
                   "true_rank": x.true_rank, "attention_rollout": x.rollout_b64.is_some()})
        })
        .collect();
    json!({
        "schema": SCHEMA,
        "model": run.model,
        "model_sha256": run.model_sha256,
        "dataset": run.data_dir,
        "counts": m.counts,
        "top1": {"value": m.top1, "ci95": ci(data.top1_ci), "scored_only": m.top1_scored},
        "topk": {"k": m.k, "value": m.topk, "ci95": ci(data.topk_ci), "scored_only": m.topk_scored},
        "bootstrap": {"resamples": super::BOOTSTRAP_RESAMPLES, "seed": super::BOOTSTRAP_SEED,
                      "method": "percentile, over labeled rows (failed ones wrong)"},
        "macro_avg": m.macro_avg,
        "weighted_avg": m.weighted_avg,
        "ece": m.calibration.ece,
        "ece_bins": m.calibration.bins.len(),
        "classes": m.per_class.len(),
        "lowest_recall": worst,
        "top_confusions": pairs,
        "wrong": data.wrong_total,
        "hardest_mistakes": mistakes,
        "failures": {"count": data.failures_total, "listed": failures},
        "unmapped_classes": run.label_mapping.unmapped,
        "warnings": run.warnings,
        "throughput": {"images_per_s": t.images_per_s, "wall_s": t.wall_s, "scored": t.scored},
        "runtime": {"onnxruntime": run.onnxruntime_version, "provider": run.provider,
                    "precision": run.precision, "engine": run.engine,
                    "threads": run.threads, "batch_size": run.batch_size,
                    "tool_version": run.tool_version},
    })
}
