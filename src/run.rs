//! The run folder: what `score` and `merge` write, and what `report`, `compare`,
//! `merge` and pipelines read.
//!
//! Why it exists: a run folder is a small on-disk format with rules of its own (file
//! names, the identity in `run.json` that `--resume` and `merge` check, the
//! `metrics.json` schema, when a folder may be written into, when a run is finished).
//! Every command that touches one goes through this module, so the rules exist once.
//!
//! Layout:
//! - `run.json`: [`RunIdentity`], written first, before any image is read;
//! - `parts/`: committed Parquet parts of an unfinished run (see `record::Parts`);
//! - `predictions.parquet` + `metrics.json` ([`MetricsFile`]): a finished run;
//! - `report.*`, `charts/`: the report rendered from the two files above.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::infer::Provider;
use crate::metrics::{self, Metrics};
use crate::model::LabelMapping;
use crate::preprocess::PreprocessConfig;
use crate::record::{self, Parts, Row};

/// The identity of a run, written first.
pub(crate) const RUN_JSON: &str = "run.json";
/// One row per image, in the dataset's sorted order.
pub(crate) const PREDICTIONS: &str = "predictions.parquet";
/// Metrics, throughput and provenance ([`MetricsFile`]).
pub(crate) const METRICS_JSON: &str = "metrics.json";
/// Committed parts of a run still being scored.
pub(crate) const PARTS_DIR: &str = "parts";
/// The report's chart images.
pub(crate) const CHARTS_DIR: &str = "charts";

/// Files a run folder holds; `--overwrite` removes exactly these.
pub(crate) const RUN_FILES: &[&str] = &[
    RUN_JSON,
    PREDICTIONS,
    METRICS_JSON,
    "report.html",
    "report.md",
    "report.json",
    CHARTS_DIR,
    PARTS_DIR,
];

/// This process's share of a sharded run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    /// 0-based index of this shard.
    pub index: usize,
    /// Number of shards.
    pub count: usize,
}

/// What a run depends on; `--resume` and `merge` refuse runs whose identity differs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunIdentity {
    /// vit-batch version that started the run.
    pub tool_version: String,
    /// SHA-256 of the model file.
    pub model_sha256: String,
    /// The preprocessing applied to every image.
    pub preprocess: PreprocessConfig,
    /// "preprocessor_config.json" or the defaults used for a bare model.
    pub preprocess_source: String,
    /// Fingerprint of the whole dataset (before sharding and `limit`).
    pub dataset_fingerprint: String,
    /// Images in the whole dataset.
    pub dataset_images: usize,
    /// The `limit` option, when set.
    pub limit: Option<usize>,
    /// The shard this run scores, when sharded.
    pub shard: Option<Shard>,
    /// Predictions kept per image.
    pub top_k: usize,
    /// The model's class names, by id.
    pub model_labels: Vec<String>,
    /// Rows this run (or shard) is responsible for.
    pub rows: usize,
    /// Rows per committed part.
    pub part_rows: usize,
}

/// Which parts of two identities must agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IdentityScope {
    /// Rows of the two runs can stand side by side (`merge` of shards): same model,
    /// preprocessing, dataset, `limit`, `top_k` and labels.
    Content,
    /// The same run continued (`--resume`): also the same shard, rows and parts.
    SameRun,
}

/// The first 12 characters of a hash (or all of a shorter string), for messages.
pub(crate) fn short_hash(s: &str) -> &str {
    s.char_indices().nth(12).map_or(s, |(i, _)| &s[..i])
}

impl RunIdentity {
    /// What differs between `self` (stored) and `other`, by the one rule of `scope`;
    /// empty when they agree. Each item names the option or input that differs.
    pub(crate) fn differences(&self, other: &RunIdentity, scope: IdentityScope) -> Vec<String> {
        let mut d = vec![];
        if self.model_sha256 != other.model_sha256 {
            d.push(format!(
                "model (sha256 {} vs {})",
                short_hash(&self.model_sha256),
                short_hash(&other.model_sha256)
            ));
        }
        if self.preprocess != other.preprocess {
            d.push("preprocessing".to_string());
        }
        if self.dataset_fingerprint != other.dataset_fingerprint {
            d.push("dataset (files or sizes changed)".to_string());
        }
        if self.limit != other.limit {
            d.push(format!("limit ({:?} vs {:?})", self.limit, other.limit));
        }
        if self.top_k != other.top_k {
            d.push(format!("top_k ({} vs {})", self.top_k, other.top_k));
        }
        if self.model_labels != other.model_labels {
            d.push("model labels".to_string());
        }
        if scope == IdentityScope::SameRun {
            if self.shard != other.shard || self.rows != other.rows {
                d.push("shard".to_string());
            }
            if self.part_rows != other.part_rows {
                d.push(format!(
                    "batch_size / checkpoint_rows (parts of {} vs {} rows)",
                    self.part_rows, other.part_rows
                ));
            }
        }
        d
    }

    /// Read `run.json` of `dir`.
    pub(crate) fn read(dir: &Path) -> Result<RunIdentity> {
        let p = dir.join(RUN_JSON);
        let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
        serde_json::from_str(&text).map_err(|e| Error::Corrupt {
            path: p,
            what: format!("not a vit-batch run.json: {e}"),
        })
    }

    /// Write `run.json` into `dir`, atomically.
    pub(crate) fn write(&self, dir: &Path) -> Result<()> {
        crate::fs::atomic_write_bytes(
            &dir.join(RUN_JSON),
            serde_json::to_string_pretty(self)?.as_bytes(),
        )
    }
}

/// Throughput of the process(es) that wrote a run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Throughput {
    /// Rows scored by the process(es) that wrote this run (resumed rows excluded).
    pub scored: u64,
    /// Wall-clock seconds of scoring.
    pub wall_s: f64,
    /// `scored / wall_s`.
    pub images_per_s: f64,
    /// Per shard, when the run was merged from shards.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shards: Vec<ShardThroughput>,
}

impl Throughput {
    /// `scored` rows in `wall_s` seconds.
    pub(crate) fn new(scored: u64, wall_s: f64, shards: Vec<ShardThroughput>) -> Self {
        Throughput {
            scored,
            wall_s,
            images_per_s: if wall_s > 0.0 {
                scored as f64 / wall_s
            } else {
                0.0
            },
            shards,
        }
    }
}

/// Throughput of one shard of a merged run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ShardThroughput {
    /// Which shard.
    pub shard: Shard,
    /// Rows it scored.
    pub scored: u64,
    /// Its wall-clock seconds.
    pub wall_s: f64,
    /// Its images per second.
    pub images_per_s: f64,
}

/// Provenance of a run, recorded in `metrics.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunInfo {
    /// Always "vit-batch".
    pub tool: String,
    /// vit-batch version.
    pub tool_version: String,
    /// Absolute path of the scored dataset.
    pub data_dir: String,
    /// The model as given.
    pub model: String,
    /// SHA-256 of the model file.
    pub model_sha256: String,
    /// Version of the ONNX Runtime library used.
    pub onnxruntime_version: String,
    /// Execution provider.
    pub provider: Provider,
    /// Total CPU threads.
    pub threads: usize,
    /// Images per inference batch.
    pub batch_size: usize,
    /// The preprocessing applied.
    pub preprocess: PreprocessConfig,
    /// Where the preprocessing came from.
    pub preprocess_source: String,
    /// Fingerprint of the dataset.
    pub dataset_fingerprint: String,
    /// The shard, when sharded.
    pub shard: Option<Shard>,
    /// How class folders map onto model labels.
    pub label_mapping: LabelMapping,
    /// Warnings of the run (also printed).
    pub warnings: Vec<String>,
    /// How `attn_rollout` maps onto the image, for a model with attention outputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention: Option<crate::attention::AttentionInfo>,
}

/// `metrics.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MetricsFile {
    /// The metrics themselves.
    #[serde(flatten)]
    pub metrics: Metrics,
    /// How fast the run went.
    pub throughput: Throughput,
    /// Where the numbers came from.
    pub run: RunInfo,
}

impl MetricsFile {
    /// Read a `metrics.json` file.
    pub(crate) fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::Corrupt {
            path: path.to_path_buf(),
            what: format!("not a vit-batch metrics.json: {e}"),
        })
    }
}

/// A finished run folder, opened for reading.
#[derive(Debug, Clone)]
pub struct Run {
    /// The run folder.
    pub dir: PathBuf,
    /// Its `metrics.json`.
    pub metrics: MetricsFile,
}

impl Run {
    /// The run folder a user-given path designates (a file inside it names its folder).
    pub(crate) fn dir_of(p: &Path) -> PathBuf {
        if p.is_file() {
            p.parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("."))
        } else {
            p.to_path_buf()
        }
    }

    /// Check that `dir` holds a finished run (both `metrics.json` and
    /// `predictions.parquet`), without reading it.
    pub(crate) fn check_finished(dir: &Path) -> Result<()> {
        if !dir.is_dir() {
            return Err(Error::NotARun {
                dir: dir.to_path_buf(),
                missing: "the folder",
            });
        }
        for f in [METRICS_JSON, PREDICTIONS] {
            if !dir.join(f).is_file() {
                return Err(Error::NotARun {
                    dir: dir.to_path_buf(),
                    missing: f,
                });
            }
        }
        Ok(())
    }

    /// Open the finished run at `p` (a run folder, or a file inside one).
    pub(crate) fn open(p: &Path) -> Result<Run> {
        let dir = Self::dir_of(p);
        Self::check_finished(&dir)?;
        let metrics = MetricsFile::read(&dir.join(METRICS_JSON))?;
        Ok(Run { dir, metrics })
    }

    /// Path of `predictions.parquet`.
    pub(crate) fn predictions_path(&self) -> PathBuf {
        self.dir.join(PREDICTIONS)
    }

    /// All rows of `predictions.parquet`, in order.
    pub(crate) fn rows(&self) -> Result<Vec<Row>> {
        record::read_parquet(&self.predictions_path())
    }
}

/// What to do with an output folder that already holds something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutPolicy {
    /// Refuse a folder that is not empty.
    Fresh,
    /// Replace a run already there (vit-batch's own files only, by name).
    Overwrite,
    /// Continue the unfinished run there.
    Resume,
}

/// Remove vit-batch's own files from a run folder (`overwrite`); nothing else.
pub(crate) fn clear_run_files(out: &Path) -> Result<()> {
    for f in RUN_FILES {
        let p = out.join(f);
        if p.is_dir() {
            std::fs::remove_dir_all(&p).map_err(|e| Error::io(&p, e))?;
        } else if p.exists() {
            std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
        }
    }
    Ok(())
}

/// Prepare `out` for a run under `policy`: the one output-folder rule of `score` and
/// `merge`. Refuses to mix runs unless asked, and fails now, not after an hour, when
/// the folder is not writable.
pub(crate) fn prepare_out_dir(out: &Path, policy: OutPolicy) -> Result<()> {
    if out.exists() {
        if !out.is_dir() {
            return Err(Error::OutDir {
                dir: out.to_path_buf(),
                what: "exists and is not a folder".into(),
            });
        }
        let holds_run = out.join(RUN_JSON).exists() || out.join(PREDICTIONS).exists();
        let non_empty = std::fs::read_dir(out)
            .map_err(|e| Error::io(out, e))?
            .next()
            .is_some();
        match policy {
            OutPolicy::Resume if !out.join(RUN_JSON).exists() => {
                return Err(Error::OutDir {
                    dir: out.to_path_buf(),
                    what: "holds no run to resume (no run.json)".into(),
                })
            }
            OutPolicy::Resume => return Ok(()),
            OutPolicy::Fresh if non_empty => {
                return Err(Error::OutDir {
                    dir: out.to_path_buf(),
                    what: format!(
                        "already holds {}; pass {} to replace it or {} to finish it",
                        if holds_run { "a run" } else { "other files" },
                        crate::error::option_name("overwrite"),
                        crate::error::option_name("resume"),
                    ),
                })
            }
            OutPolicy::Overwrite if non_empty => clear_run_files(out)?,
            OutPolicy::Fresh | OutPolicy::Overwrite => {}
        }
    } else if policy == OutPolicy::Resume {
        return Err(Error::OutDir {
            dir: out.to_path_buf(),
            what: "holds no run to resume (no such folder)".into(),
        });
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let probe = out.join(".vit-batch-write-test");
    std::fs::write(&probe, b"").map_err(|e| Error::OutDir {
        dir: out.to_path_buf(),
        what: format!("cannot write to it: {e}"),
    })?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

/// Merge committed parts into `predictions.parquet` and write `metrics.json`, both
/// atomically; metrics are computed from the parts in the same pass. The parts are
/// removed afterwards.
pub(crate) fn finalize(
    out: &Path,
    parts: &Parts,
    identity: &RunIdentity,
    skipped: u64,
    throughput: Throughput,
    run: RunInfo,
) -> Result<MetricsFile> {
    let files = parts.tiled(identity.rows)?;
    let batches = files.iter().map(|p| record::read_parquet(p));
    let mf = write_outputs(out, batches, identity, skipped, throughput, run)?;
    std::fs::remove_dir_all(&parts.dir).map_err(|e| Error::io(&parts.dir, e))?;
    Ok(mf)
}

/// The one way a run's outputs are written, shared by `score`, `--resume` and
/// `merge`: stream row batches (already in final order) into `predictions.parquet`,
/// computing the metrics in the same pass, then write `metrics.json`.
pub(crate) fn write_outputs(
    out: &Path,
    batches: impl Iterator<Item = Result<Vec<Row>>>,
    identity: &RunIdentity,
    skipped: u64,
    throughput: Throughput,
    run: RunInfo,
) -> Result<MetricsFile> {
    let mut acc = metrics::Accumulator::new(identity.top_k, skipped);
    let mut last: Option<String> = None;
    let acc_ref = &mut acc;
    let last_ref = &mut last;
    record::write_streamed(
        &out.join(PREDICTIONS),
        batches.map(|b| {
            let rows = b?;
            for r in &rows {
                if let Some(prev) = last_ref.as_deref() {
                    if prev.as_bytes() >= r.path.as_bytes() {
                        return Err(Error::Corrupt {
                            path: out.join(PREDICTIONS),
                            what: format!(
                                "rows out of order or duplicated: '{}' after '{prev}'",
                                r.path
                            ),
                        });
                    }
                }
                *last_ref = Some(r.path.clone());
                acc_ref.add(r);
            }
            Ok(rows)
        }),
    )?;
    let mf = MetricsFile {
        metrics: acc.finish(&identity.model_labels),
        throughput,
        run,
    };
    crate::fs::atomic_write_bytes(
        &out.join(METRICS_JSON),
        serde_json::to_string_pretty(&mf)?.as_bytes(),
    )?;
    Ok(mf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_hash_never_panics() {
        assert_eq!(short_hash("0123456789abcdef"), "0123456789ab");
        assert_eq!(short_hash("abc"), "abc");
        assert_eq!(short_hash("ééééééééééééé"), "éééééééééééé");
    }
}
