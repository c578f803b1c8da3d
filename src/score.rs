//! `vit-batch score`: the scoring pipeline, stage by stage.
//!
//! walk → (decode + preprocess on a rayon pool) → batch → infer (one ORT session on
//! this thread) → record (committed parts) → metrics → outputs. Preprocessing of the
//! next batch overlaps inference of the current one through a bounded channel, so
//! memory stays flat whatever the dataset size. Everything a run depends on is
//! written to `run.json` first; `--resume` checks it and scores only missing parts.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::infer::{Engine, EngineOptions, Provider};
use crate::metrics::{self, Metrics};
use crate::model::{self, LabelMapping, ModelBundle};
use crate::preprocess::{PreprocessConfig, Preprocessor};
use crate::record::{self, Parts, Row, Status};
use crate::walk::{self, Dataset, Entry};

/// Files a run folder holds; `--overwrite` removes exactly these.
pub const RUN_FILES: &[&str] = &[
    "run.json",
    "predictions.parquet",
    "metrics.json",
    "report.html",
    "report.md",
    "report.json",
    "charts",
    "parts",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Bar on a terminal, periodic lines otherwise.
    Auto,
    Quiet,
}

/// This process's share of a sharded run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

#[derive(Debug, Clone)]
pub struct ScoreOptions {
    pub data_dir: PathBuf,
    pub model: PathBuf,
    pub out_dir: PathBuf,
    pub batch_size: usize,
    /// Total CPU threads (ORT intra-op and preprocessing).
    pub threads: usize,
    pub provider: Provider,
    pub top_k: usize,
    pub label_map: Option<PathBuf>,
    pub limit: Option<usize>,
    pub ort_lib: Option<PathBuf>,
    pub max_pixels: u64,
    pub resume: bool,
    pub overwrite: bool,
    pub shard: Option<Shard>,
    /// Where the shard identity came from (flag or a scheduler's variables).
    pub shard_source: Option<String>,
    pub progress: Progress,
    /// Rows per committed part (rounded up to a whole number of batches).
    pub part_rows: usize,
    /// ONNX Runtime intra-op spinning (see [`EngineOptions::spinning`]).
    pub ort_spinning: bool,
}

impl ScoreOptions {
    pub fn new(data_dir: PathBuf, model: PathBuf, out_dir: PathBuf) -> Self {
        ScoreOptions {
            data_dir,
            model,
            out_dir,
            batch_size: 32,
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            provider: Provider::Cpu,
            top_k: 5,
            label_map: None,
            limit: None,
            ort_lib: None,
            max_pixels: crate::preprocess::DEFAULT_MAX_PIXELS,
            resume: false,
            overwrite: false,
            shard: None,
            shard_source: None,
            progress: Progress::Auto,
            part_rows: 1024,
            ort_spinning: true,
        }
    }
}

/// What a run depends on; `--resume` and `merge` refuse runs whose identity differs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunIdentity {
    pub tool_version: String,
    pub model_sha256: String,
    pub preprocess: PreprocessConfig,
    /// "preprocessor_config.json" or the defaults used for a bare model.
    pub preprocess_source: String,
    /// Fingerprint of the whole dataset (before sharding and --limit).
    pub dataset_fingerprint: String,
    pub dataset_images: usize,
    pub limit: Option<usize>,
    pub shard: Option<Shard>,
    pub top_k: usize,
    pub model_labels: Vec<String>,
    /// Rows this run (or shard) is responsible for.
    pub rows: usize,
    pub part_rows: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Throughput {
    /// Rows scored by the process(es) that wrote this run (resumed rows excluded).
    pub scored: u64,
    pub wall_s: f64,
    pub images_per_s: f64,
    /// Per shard, when the run was merged from shards.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shards: Vec<ShardThroughput>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ShardThroughput {
    pub shard: Shard,
    pub scored: u64,
    pub wall_s: f64,
    pub images_per_s: f64,
}

/// Provenance of a run, recorded in `metrics.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunInfo {
    pub tool: String,
    pub tool_version: String,
    pub data_dir: String,
    pub model: String,
    pub model_sha256: String,
    pub onnxruntime_version: String,
    pub provider: Provider,
    pub threads: usize,
    pub batch_size: usize,
    pub preprocess: PreprocessConfig,
    pub preprocess_source: String,
    pub dataset_fingerprint: String,
    pub shard: Option<Shard>,
    pub label_mapping: LabelMapping,
    pub warnings: Vec<String>,
    /// How `attn_rollout` maps onto the image, for a model with attention outputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention: Option<crate::attention::AttentionInfo>,
}

/// `metrics.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MetricsFile {
    #[serde(flatten)]
    pub metrics: Metrics,
    pub throughput: Throughput,
    pub run: RunInfo,
}

impl MetricsFile {
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::Output {
            what: format!("{}: not a vit-batch metrics.json: {e}", path.display()),
        })
    }
}

/// Result of a finished run.
pub struct ScoreOutcome {
    pub out_dir: PathBuf,
    pub metrics: MetricsFile,
}

fn progress_line(enabled: bool, msg: &str) {
    if enabled {
        eprintln!("vit-batch: {msg}");
    }
}

/// Remove vit-batch's own files from a run folder (`--overwrite`); nothing else.
pub fn clear_run_files(out: &Path) -> Result<()> {
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

/// Prepare OUT_DIR: refuse to mix runs unless asked.
fn prepare_out_dir(opts: &ScoreOptions) -> Result<()> {
    let out = &opts.out_dir;
    if out.exists() {
        let holds_run = out.join("run.json").exists() || out.join("predictions.parquet").exists();
        let non_empty = std::fs::read_dir(out)
            .map_err(|e| Error::io(out, e))?
            .next()
            .is_some();
        if opts.resume {
            if !out.join("run.json").exists() {
                return Err(Error::Output {
                    what: format!(
                        "--resume: {} holds no run to resume (no run.json)",
                        out.display()
                    ),
                });
            }
            return Ok(());
        }
        if holds_run || non_empty {
            if !opts.overwrite {
                return Err(Error::Output {
                    what: format!(
                        "{} already holds {}; pass --overwrite to replace it or --resume to finish it",
                        out.display(),
                        if holds_run { "a run" } else { "other files" }
                    ),
                });
            }
            clear_run_files(out)?;
        }
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    // Fail now, not after an hour, when the folder is not writable.
    let probe = out.join(".vit-batch-write-test");
    std::fs::write(&probe, b"").map_err(|e| Error::Output {
        what: format!("cannot write to {}: {e}", out.display()),
    })?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

/// Everything resolved before the first image is read (fail-fast checks live here).
pub struct Prepared {
    pub dataset: Dataset,
    pub bundle: ModelBundle,
    pub engine: Engine,
    pub pre: Preprocessor,
    pub mapping: LabelMapping,
    pub identity: RunIdentity,
    pub runtime: &'static crate::runtime::RuntimeInfo,
    pub attention: Option<crate::attention::AttentionInfo>,
}

pub fn prepare(opts: &ScoreOptions) -> Result<Prepared> {
    if opts.batch_size == 0 || opts.threads == 0 || opts.top_k == 0 {
        return Err(Error::Config {
            what: "--batch-size, --threads and --top-k must be at least 1".into(),
        });
    }
    let bundle = ModelBundle::open(&opts.model)?;
    let runtime = crate::runtime::init(opts.ort_lib.as_deref(), opts.provider == Provider::Cuda)?;
    let engine = Engine::open(
        &bundle.onnx,
        &EngineOptions {
            provider: opts.provider,
            intra_threads: opts.threads,
            spinning: opts.ort_spinning,
        },
    )?;
    let (pcfg, psource) = match &bundle.preprocess {
        Some(p) => (p.clone(), "preprocessor_config.json".to_string()),
        None => {
            let (Some(h), Some(w)) = (engine.io.height, engine.io.width) else {
                return Err(Error::Model {
                    what: "the model's input has a dynamic height/width and there is no preprocessor_config.json beside it; pass a model folder with one".into(),
                });
            };
            (
                PreprocessConfig::imagenet_default(h as u32, w as u32),
                format!("defaults: no preprocessor_config.json; resize to the model input {h}x{w}, bilinear, ImageNet mean/std"),
            )
        }
    };
    let mut pre = Preprocessor::new(pcfg)?;
    pre.max_pixels = opts.max_pixels;
    engine.check_input(pre.height, pre.width)?;
    let attention = attention_layout(&engine, &bundle, &pre)?;
    let labels = match (&bundle.labels, engine.io.num_classes) {
        (Some(l), Some(c)) if l.len() != c => {
            return Err(Error::Model {
                what: format!("config.json has {} labels but the model outputs {c} classes", l.len()),
            })
        }
        (Some(l), _) => l.clone(),
        (None, Some(c)) => (0..c).map(|i| i.to_string()).collect(),
        (None, None) => {
            return Err(Error::Model {
                what: "the model has no config.json with id2label and a dynamic class axis: cannot name its classes".into(),
            })
        }
    };
    let mut dataset = walk::walk(&opts.data_dir)?;
    let fingerprint = dataset.fingerprint();
    let dataset_images = dataset.entries.len();
    if let Some(n) = opts.limit {
        dataset.limit(n);
    }
    if let Some(s) = opts.shard {
        if s.count == 0 || s.index >= s.count {
            return Err(Error::Config {
                what: format!(
                    "shard {}/{} is out of range (K/N with 0 <= K < N)",
                    s.index, s.count
                ),
            });
        }
        dataset.shard(s.index, s.count);
    }
    let label_map = opts
        .label_map
        .as_deref()
        .map(model::read_label_map)
        .transpose()?;
    let mapping = model::map_labels(
        &dataset.classes,
        &labels,
        &bundle.label2id,
        label_map.as_ref(),
    )?;
    let part_rows = opts.part_rows.max(1).div_ceil(opts.batch_size) * opts.batch_size;
    let identity = RunIdentity {
        tool_version: env!("CARGO_PKG_VERSION").into(),
        model_sha256: bundle.sha256.clone(),
        preprocess: pre.config.clone(),
        preprocess_source: psource,
        dataset_fingerprint: fingerprint,
        dataset_images,
        limit: opts.limit,
        shard: opts.shard,
        top_k: opts.top_k,
        model_labels: labels,
        rows: dataset.entries.len(),
        part_rows,
    };
    Ok(Prepared {
        dataset,
        bundle,
        engine,
        pre,
        mapping,
        identity,
        runtime,
        attention,
    })
}

/// Lay a `--with-attentions` model's tokens onto the patch grid, or fail fast when
/// they do not fit the input size.
fn attention_layout(
    engine: &Engine,
    bundle: &ModelBundle,
    pre: &Preprocessor,
) -> Result<Option<crate::attention::AttentionInfo>> {
    let io = &engine.io;
    if io.attentions.is_empty() {
        return Ok(None);
    }
    let (Some(heads), Some(tokens)) = (io.attention_heads, io.attention_tokens) else {
        return Err(Error::Model {
            what: "the model's attention outputs have dynamic head or token axes; cannot lay them onto the image".into(),
        });
    };
    crate::attention::AttentionInfo::layout(
        io.attentions.len(),
        heads,
        tokens,
        pre.height as usize,
        pre.width as usize,
        bundle.patch_size,
    )
    .map(Some)
    .ok_or_else(|| Error::Model {
        what: format!(
            "attention outputs have {tokens} tokens, which do not fit a {}x{} input with patch size {:?}",
            pre.height, pre.width, bundle.patch_size
        ),
    })
}

/// Compare a stored identity with this run's; the message names what differs.
pub fn identity_mismatch(old: &RunIdentity, new: &RunIdentity) -> Option<String> {
    let mut diffs = vec![];
    if old.model_sha256 != new.model_sha256 {
        diffs.push(format!(
            "model (sha256 {} vs {})",
            &old.model_sha256[..12],
            &new.model_sha256[..12]
        ));
    }
    if old.preprocess != new.preprocess {
        diffs.push("preprocessing".to_string());
    }
    if old.dataset_fingerprint != new.dataset_fingerprint {
        diffs.push("dataset (files or sizes changed)".to_string());
    }
    if old.shard != new.shard || old.limit != new.limit || old.rows != new.rows {
        diffs.push("shard / --limit".to_string());
    }
    if old.top_k != new.top_k {
        diffs.push(format!("--top-k ({} vs {})", old.top_k, new.top_k));
    }
    if old.part_rows != new.part_rows {
        diffs.push(format!(
            "--batch-size (parts of {} vs {} rows)",
            old.part_rows, new.part_rows
        ));
    }
    if old.model_labels != new.model_labels {
        diffs.push("model labels".to_string());
    }
    (!diffs.is_empty()).then(|| diffs.join(", "))
}

/// A preprocessed batch on its way to the engine.
struct Batch {
    start: usize,
    /// Packed tensors of the images that preprocessed fine.
    data: Vec<f32>,
    /// Per entry: Ok(warning) with its slot in `data`, or the error message.
    items: Vec<std::result::Result<(usize, Option<String>), String>>,
}

/// Decode and preprocess `entries` in parallel, each image straight into its slot of
/// one batch buffer (`buf`, recycled from an earlier batch when there is one), then
/// close the gaps left by failed images so the good tensors are packed in order.
fn preprocess_batch(
    pre: &Preprocessor,
    entries: &[Entry],
    start: usize,
    mut buf: Vec<f32>,
) -> Batch {
    let per = pre.tensor_len();
    buf.clear();
    buf.resize(per * entries.len(), 0.0);
    let results: Vec<std::result::Result<Option<String>, String>> = buf
        .par_chunks_mut(per)
        .zip(entries.par_iter())
        .map(|(slot, e)| {
            if let Some(p) = &e.problem {
                return Err(p.clone());
            }
            // A panic in a decoder must not take the run down: it becomes this row's error.
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                pre.process_file(&e.path, slot)
            })) {
                Ok(r) => r,
                Err(_) => Err("decoder crashed on this file (internal panic caught)".into()),
            }
        })
        .collect();
    let mut items = Vec::with_capacity(entries.len());
    let mut packed = 0;
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Ok(w) => {
                if packed != i {
                    buf.copy_within(i * per..(i + 1) * per, packed * per);
                }
                items.push(Ok((packed, w)));
                packed += 1;
            }
            Err(m) => items.push(Err(m)),
        }
    }
    buf.truncate(packed * per);
    Batch {
        start,
        data: buf,
        items,
    }
}

/// Turn a batch's logits into rows.
fn rows_for_batch(
    batch: &Batch,
    entries: &[Entry],
    out: &crate::infer::BatchOutput,
    attention: Option<&crate::attention::AttentionInfo>,
    mapping: &LabelMapping,
    k: usize,
) -> Vec<Row> {
    let (logits, classes) = (&out.logits, out.classes);
    // The patch part of each image's [CLS] rollout row.
    let rollout = |slot: usize| {
        let (r, a) = (out.rollout.as_ref()?, attention?);
        let row = &r[slot * a.tokens..(slot + 1) * a.tokens];
        Some(row[a.prefix_tokens..].to_vec())
    };
    entries
        .iter()
        .zip(&batch.items)
        .map(|(e, item)| {
            let label_id = mapping.class_to_id.get(&e.class).map(|&i| i as u32);
            let base = Row {
                path: e.rel.clone(),
                label: e.class.clone(),
                label_id,
                pred: None,
                pred_id: None,
                score: None,
                topk_ids: None,
                topk_scores: None,
                correct: None,
                status: Status::Error,
                error: None,
                warning: None,
                attn_rollout: None,
            };
            match item {
                Err(msg) => Row {
                    error: Some(msg.clone()),
                    ..base
                },
                Ok((slot, warning)) => {
                    let l = &logits[slot * classes..(slot + 1) * classes];
                    if l.iter().any(|v| !v.is_finite()) {
                        return Row {
                            error: Some(
                                "model produced non-finite logits (NaN or infinity) for this image"
                                    .into(),
                            ),
                            warning: warning.clone(),
                            ..base
                        };
                    }
                    let probs = metrics::softmax(l);
                    let top = metrics::top_k(&probs, k);
                    let pred_id = top[0] as u32;
                    Row {
                        pred: Some(mapping.model_labels[top[0]].clone()),
                        pred_id: Some(pred_id),
                        score: Some(probs[top[0]]),
                        topk_ids: Some(top.iter().map(|&i| i as u32).collect()),
                        topk_scores: Some(top.iter().map(|&i| probs[i]).collect()),
                        correct: label_id.map(|t| t == pred_id),
                        status: Status::Ok,
                        warning: warning.clone(),
                        attn_rollout: rollout(*slot),
                        ..base
                    }
                }
            }
        })
        .collect()
}

struct Reporter {
    bar: Option<indicatif::ProgressBar>,
    plain: bool,
    total: usize,
    done: usize,
    last: Instant,
    started: Instant,
}

impl Reporter {
    fn new(progress: Progress, total: usize, done: usize) -> Self {
        let tty = std::io::stderr().is_terminal();
        let bar = (progress == Progress::Auto && tty).then(|| {
            let b = indicatif::ProgressBar::new(total as u64);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} images {per_sec} ETA {eta}",
                )
                .expect("valid template"),
            );
            b.set_position(done as u64);
            b
        });
        Reporter {
            bar,
            plain: progress == Progress::Auto && !tty,
            total,
            done,
            last: Instant::now(),
            started: Instant::now(),
        }
    }

    fn advance(&mut self, n: usize, scored_here: usize) {
        self.done += n;
        if let Some(b) = &self.bar {
            b.set_position(self.done as u64);
        } else if self.plain
            && (self.last.elapsed().as_secs_f64() >= 5.0 || self.done == self.total)
        {
            self.last = Instant::now();
            let rate = scored_here as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
            let eta = (self.total - self.done) as f64 / rate.max(1e-9);
            eprintln!(
                "vit-batch: {}/{} images ({:.1}%), {rate:.1} img/s, ETA {eta:.0}s",
                self.done,
                self.total,
                100.0 * self.done as f64 / self.total.max(1) as f64
            );
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// Run `score` end to end; returns the metrics written to `metrics.json`.
pub fn score(opts: &ScoreOptions) -> Result<ScoreOutcome> {
    let verbose = opts.progress != Progress::Quiet;
    let mut p = prepare(opts)?;
    prepare_out_dir(opts)?;
    let out = &opts.out_dir;
    let run_json = out.join("run.json");
    if opts.resume {
        let text = std::fs::read_to_string(&run_json).map_err(|e| Error::io(&run_json, e))?;
        let old: RunIdentity = serde_json::from_str(&text).map_err(|e| Error::Output {
            what: format!("{}: {e}", run_json.display()),
        })?;
        if let Some(d) = identity_mismatch(&old, &p.identity) {
            return Err(Error::Output {
                what: format!("--resume refused: the run in {} used a different {d}; start a new run (or --overwrite)", out.display()),
            });
        }
    } else {
        record::atomic_write_bytes(
            &run_json,
            serde_json::to_string_pretty(&p.identity)?.as_bytes(),
        )?;
    }
    for w in &p.dataset.warnings {
        progress_line(verbose, &format!("warning: {w}"));
    }
    if !p.mapping.unmapped.is_empty() {
        let n = p
            .dataset
            .entries
            .iter()
            .filter(|e| !p.mapping.class_to_id.contains_key(&e.class))
            .count();
        progress_line(
            verbose,
            &format!(
                "warning: {} class folder(s) match no model label ({}); their {n} image(s) are scored but not counted in accuracy",
                p.mapping.unmapped.len(),
                p.mapping.unmapped.join(", ")
            ),
        );
    }
    if let Some(s) = &opts.shard {
        progress_line(
            verbose,
            &format!(
                "shard {}/{} ({}): {} of {} images",
                s.index,
                s.count,
                opts.shard_source.as_deref().unwrap_or("--shard"),
                p.dataset.entries.len(),
                p.identity.dataset_images
            ),
        );
    }

    let parts = Parts::new(out)?;
    let done: Vec<(usize, usize)> = parts
        .ranges()?
        .into_iter()
        .map(|(a, b, _)| (a, b))
        .collect();
    let total = p.dataset.entries.len();
    let part_rows = p.identity.part_rows;
    let todo: Vec<(usize, usize)> = (0..total)
        .step_by(part_rows)
        .map(|a| (a, (a + part_rows).min(total)))
        .filter(|r| !done.contains(r))
        .collect();
    let already: usize = done.iter().map(|(a, b)| b - a).sum();
    if opts.resume {
        progress_line(
            verbose,
            &format!(
                "resuming: {already} of {total} rows already committed, {} to score",
                total - already
            ),
        );
    }

    let started = Instant::now();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.threads)
        .thread_name(|i| format!("vit-batch-decode-{i}"))
        .build()
        .map_err(|e| Error::Runtime {
            what: e.to_string(),
        })?;
    // One batch waits while one is in ONNX Runtime and the next is being decoded:
    // enough to keep ORT fed (decoding is ~5% of its cost), and memory stays flat.
    let (tx, rx) = crossbeam_channel::bounded::<Batch>(1);
    // Batch buffers go back to the decoder once ORT is done with them: the same few
    // large buffers serve the whole run instead of one fresh allocation per batch.
    let (recycle_tx, recycle_rx) = crossbeam_channel::bounded::<Vec<f32>>(2);
    let mut reporter = Reporter::new(opts.progress, total, already);
    let mut scored = 0usize;
    let (h, w) = (p.pre.height as usize, p.pre.width as usize);
    let bs = opts.batch_size;
    let k = opts.top_k.min(p.mapping.model_labels.len());
    let result: Result<()> = std::thread::scope(|scope| {
        let entries = &p.dataset.entries;
        let pre = &p.pre;
        let todo = &todo;
        let pool = &pool;
        scope.spawn(move || {
            for &(a, b) in todo {
                for s in (a..b).step_by(bs) {
                    let e = (s + bs).min(b);
                    let buf = recycle_rx.try_recv().unwrap_or_default();
                    let batch = pool.install(|| preprocess_batch(pre, &entries[s..e], s, buf));
                    if tx.send(batch).is_err() {
                        return;
                    }
                }
            }
        });
        // Owned here, so an early error return drops the receiver and the decoding
        // thread's next send fails instead of blocking forever.
        let rx = rx;
        let mut pending: Vec<Row> = Vec::with_capacity(part_rows);
        let mut part_start = None;
        for batch in rx.iter() {
            let n_ok = batch.items.iter().filter(|i| i.is_ok()).count();
            let output = if n_ok > 0 {
                p.engine.run(&batch.data, n_ok, h, w)?
            } else {
                crate::infer::BatchOutput {
                    logits: vec![],
                    classes: p.mapping.model_labels.len(),
                    rollout: None,
                }
            };
            if n_ok > 0 && output.classes != p.mapping.model_labels.len() {
                return Err(Error::Model {
                    what: format!(
                        "model returned {} classes, its labels name {}",
                        output.classes,
                        p.mapping.model_labels.len()
                    ),
                });
            }
            let ents = &entries[batch.start..batch.start + batch.items.len()];
            let rows = rows_for_batch(&batch, ents, &output, p.attention.as_ref(), &p.mapping, k);
            part_start.get_or_insert(batch.start);
            pending.extend(rows);
            scored += batch.items.len();
            let ps = part_start.expect("set above");
            let pe = (ps + part_rows).min(total);
            if ps + pending.len() == pe {
                parts.commit(ps, &pending).map_err(|e| {
                    let cause = match e {
                        Error::Output { what } => what,
                        other => other.to_string(),
                    };
                    Error::Output {
                        what: format!(
                            "{cause}; the parts committed so far are kept in {}: fix the cause (e.g. free disk space) and rerun with --resume",
                            out.join("parts").display()
                        ),
                    }
                })?;
                pending.clear();
                part_start = None;
            }
            reporter.advance(batch.items.len(), scored);
            let _ = recycle_tx.try_send(batch.data);
        }
        Ok(())
    });
    reporter.finish();
    result?;
    let wall = started.elapsed().as_secs_f64();
    let throughput = Throughput {
        scored: scored as u64,
        wall_s: wall,
        images_per_s: if wall > 0.0 {
            scored as f64 / wall
        } else {
            0.0
        },
        shards: vec![],
    };
    let run = RunInfo {
        tool: "vit-batch".into(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        // Absolute, so the report finds thumbnails from any working directory.
        data_dir: std::fs::canonicalize(&opts.data_dir)
            .unwrap_or_else(|_| opts.data_dir.clone())
            .display()
            .to_string(),
        model: opts.model.display().to_string(),
        model_sha256: p.bundle.sha256.clone(),
        onnxruntime_version: p.runtime.version.clone(),
        provider: p.engine.provider,
        threads: opts.threads,
        batch_size: opts.batch_size,
        preprocess: p.identity.preprocess.clone(),
        preprocess_source: p.identity.preprocess_source.clone(),
        dataset_fingerprint: p.identity.dataset_fingerprint.clone(),
        shard: opts.shard,
        label_mapping: p.mapping.clone(),
        warnings: p.dataset.warnings.clone(),
        attention: p.attention.clone(),
    };
    let metrics = finalize(
        out,
        &parts,
        total,
        &p.identity,
        p.dataset.skipped.len() as u64,
        throughput,
        run,
    )?;
    Ok(ScoreOutcome {
        out_dir: out.clone(),
        metrics,
    })
}

/// Merge committed parts into `predictions.parquet` and write `metrics.json`, both
/// atomically; metrics are computed from the parts in the same pass.
pub fn finalize(
    out: &Path,
    parts: &Parts,
    total: usize,
    identity: &RunIdentity,
    skipped: u64,
    throughput: Throughput,
    run: RunInfo,
) -> Result<MetricsFile> {
    let files = parts.tiled(total)?;
    let batches = files.iter().map(|p| record::read_parquet(p));
    let mf = write_outputs(out, batches, identity, skipped, throughput, run)?;
    std::fs::remove_dir_all(&parts.dir).map_err(|e| Error::io(&parts.dir, e))?;
    Ok(mf)
}

/// The one way a run's outputs are written, shared by `score`, `--resume` and
/// `merge`: stream row batches (already in final order) into `predictions.parquet`,
/// computing the metrics in the same pass, then write `metrics.json`.
pub fn write_outputs(
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
        &out.join("predictions.parquet"),
        batches.map(|b| {
            let rows = b?;
            for r in &rows {
                if let Some(prev) = last_ref.as_deref() {
                    if prev.as_bytes() >= r.path.as_bytes() {
                        return Err(Error::Output {
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
    record::atomic_write_bytes(
        &out.join("metrics.json"),
        serde_json::to_string_pretty(&mf)?.as_bytes(),
    )?;
    Ok(mf)
}
