//! `vit-batch score`: the scoring pipeline, stage by stage.
//!
//! walk → (decode + preprocess on a rayon pool) → batch → infer (one ORT session on
//! this thread) → record (committed parts) → metrics → outputs. Preprocessing of the
//! next batch overlaps inference of the current one through a bounded channel, so
//! memory stays flat whatever the dataset size. Everything a run depends on is
//! written to `run.json` first; `--resume` checks it and scores only missing parts.

use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::infer::{Engine, EngineOptions, Provider};
use crate::metrics;
use crate::model::{self, LabelMapping, ModelBundle};
pub use crate::options::ScoreOptions;
use crate::preprocess::{PreprocessConfig, Preprocessor};
use crate::progress::Progress;
use crate::record::{Parts, Row, Status};
use crate::run::{self, IdentityScope, RunIdentity, RunInfo, Throughput};
use crate::walk::{Dataset, Entry, Member};

/// Result of a finished run.
pub struct ScoreOutcome {
    /// The run folder.
    pub out_dir: PathBuf,
    /// What `metrics.json` holds.
    pub metrics: run::MetricsFile,
}

/// Everything resolved before the first image is read (fail-fast checks live here).
pub(crate) struct Prepared {
    pub dataset: Dataset,
    pub bundle: ModelBundle,
    pub engine: Engine,
    pub pre: Preprocessor,
    pub mapping: LabelMapping,
    pub identity: RunIdentity,
    pub runtime: &'static crate::runtime::RuntimeInfo,
    pub attention: Option<crate::attention::AttentionInfo>,
}

pub(crate) fn prepare(opts: &ScoreOptions) -> Result<Prepared> {
    opts.validate()?;
    let bundle = ModelBundle::open(&opts.model)?;
    let runtime = crate::runtime::init(opts.ort_lib.as_deref(), opts.provider == Provider::Cuda)?;
    let engine = Engine::open(
        &bundle.onnx,
        &EngineOptions {
            provider: opts.provider,
            precision: opts.precision,
            openvino_lib: opts.openvino_lib.clone(),
            intra_threads: opts.threads(),
            spinning: opts.ort_spin,
            timeout: Some(std::time::Duration::from_secs(opts.timeout_per_batch)),
        },
    )?;
    let (pcfg, psource) = resolve_preprocess(opts, &bundle, &engine)?;
    let mut pre = Preprocessor::new(pcfg)?;
    pre.max_pixels = opts.max_pixels;
    pre.max_file_bytes = opts.max_file_bytes;
    engine.check_input(pre.height, pre.width)?;
    check_batch_bytes(opts, &engine, &pre)?;
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
    if opts.top_k > labels.len() {
        return Err(Error::InvalidOption {
            option: "top_k",
            what: format!(
                "{} is more than the model's {} classes (top-{} accuracy would be 100% by construction)",
                opts.top_k,
                labels.len(),
                opts.top_k
            ),
        });
    }
    let mut dataset = crate::source::list(&opts.source_spec(), Some(&labels))?;
    if let Some(first) = dataset.entries.first() {
        let carried: Vec<&str> = first.extra.iter().map(|(n, _)| &**n).collect();
        for c in &opts.slice_by {
            if !carried.contains(&c.as_str()) {
                return Err(Error::InvalidOption {
                    option: "slice_by",
                    what: format!(
                        "'{c}' is not a carried column of the dataset (its carried columns: {})",
                        if carried.is_empty() {
                            "none".to_string()
                        } else {
                            carried.join(", ")
                        }
                    ),
                });
            }
        }
    }
    let fingerprint = dataset.fingerprint();
    let dataset_images = dataset.entries.len();
    if let Some(n) = opts.limit {
        dataset.limit(n);
    }
    if let Some(n) = opts.sample {
        dataset.sample(n, opts.seed);
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
    let part_rows = opts.checkpoint_rows.max(1).div_ceil(opts.batch_size) * opts.batch_size;
    let identity = RunIdentity {
        tool_version: env!("CARGO_PKG_VERSION").into(),
        model_sha256: bundle.sha256.clone(),
        provider: engine.provider,
        precision: engine.precision,
        preprocess: pre.config.clone(),
        preprocess_source: psource,
        dataset_fingerprint: fingerprint,
        dataset_images,
        limit: opts.limit,
        sample: opts.sample.map(|n| (n, opts.seed)),
        slice_by: opts.slice_by.clone(),
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

/// One batch's input tensor (batch x 3 x H x W float32, the batch being the larger of
/// the batch size and a fixed batch axis) must fit `max_batch_bytes`: checked here,
/// before the output folder is touched and before anything that size is allocated.
fn check_batch_bytes(opts: &ScoreOptions, engine: &Engine, pre: &Preprocessor) -> Result<()> {
    let fixed = engine.io.fixed_batch.filter(|&f| f > opts.batch_size);
    let n = fixed.unwrap_or(opts.batch_size) as u64;
    let (h, w) = (pre.height as u64, pre.width as u64);
    let bytes = [3, h, w, 4]
        .iter()
        .try_fold(n, |acc, &x| acc.checked_mul(x));
    if bytes.is_some_and(|b| b <= opts.max_batch_bytes) {
        return Ok(());
    }
    let size = bytes.map_or_else(|| "more than 2^64".to_string(), |b| b.to_string());
    let cause = match fixed {
        Some(f) => format!("the model's fixed batch axis of {f}"),
        None => format!("{} {n}", crate::error::option_name("batch_size")),
    };
    Err(Error::InvalidOption {
        option: "max_batch_bytes",
        what: format!(
            "one batch's input tensor would be {n} x 3 x {h} x {w} float32 = {size} bytes, above the limit of {} bytes (from {cause} and the {h}x{w} input); lower the batch size or the input size, or raise the limit",
            opts.max_batch_bytes
        ),
    })
}

/// The preprocessing of the run and where it came from, in words. Never a silent
/// guess: a model without `preprocessor_config.json` needs `preprocess = defaults` or
/// explicit overrides, since ImageNet defaults on a model trained otherwise give
/// numbers that look fine and are wrong.
fn resolve_preprocess(
    opts: &ScoreOptions,
    bundle: &ModelBundle,
    engine: &Engine,
) -> Result<(PreprocessConfig, String)> {
    use crate::options::PreprocessMode;
    use crate::preprocess::SizeSpec;
    let overrides: Vec<&str> = [
        ("size", opts.size.is_some()),
        ("resample", opts.resample.is_some()),
        ("mean", opts.mean.is_some()),
        ("std", opts.std.is_some()),
        ("crop_pct", opts.crop_pct.is_some()),
    ]
    .iter()
    .filter(|(_, set)| *set)
    .map(|(n, _)| *n)
    .collect();
    let defaults = |why: &str| -> Result<(PreprocessConfig, String)> {
        let (Some(h), Some(w)) = (engine.io.height, engine.io.width) else {
            return Err(Error::Model {
                what: format!("{why}, and the model's input has a dynamic height/width: set size (--size) too"),
            });
        };
        Ok((
            PreprocessConfig::imagenet_default(h as u32, w as u32),
            format!(
                "defaults: resize to the model input {h}x{w}, bilinear, ImageNet mean/std ({why})"
            ),
        ))
    };
    let (mut cfg, mut source) = match (&bundle.preprocess, opts.preprocess) {
        (_, PreprocessMode::Defaults) => defaults("preprocess = defaults")?,
        (Some(p), PreprocessMode::Model) => (p.clone(), "preprocessor_config.json".to_string()),
        (None, PreprocessMode::Model) if !overrides.is_empty() => {
            defaults("no preprocessor_config.json; overrides given")?
        }
        (None, PreprocessMode::Model) => {
            let dir = if opts.model.is_dir() {
                opts.model.clone()
            } else {
                opts.model
                    .parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_default()
            };
            return Err(Error::Model {
                what: format!(
                    "{} is missing: the model's preprocessing is unknown, and guessing it gives wrong numbers without a warning. Put the file beside the model, or choose: {} defaults (ImageNet mean/std, bilinear, resize to the model input), or set {} / {} / {} / {} / {}",
                    dir.join("preprocessor_config.json").display(),
                    crate::error::option_name("preprocess"),
                    crate::error::option_name("size"),
                    crate::error::option_name("resample"),
                    crate::error::option_name("mean"),
                    crate::error::option_name("std"),
                    crate::error::option_name("crop_pct"),
                ),
            });
        }
    };
    if let Some(r) = opts.resample {
        cfg.resample = r.pil_code();
    }
    if let Some(m) = &opts.mean {
        cfg.image_mean = m.clone();
    }
    if let Some(s) = &opts.std {
        cfg.image_std = s.clone();
    }
    if opts.size.is_some() || opts.crop_pct.is_some() {
        let current = match (cfg.do_center_crop, cfg.crop_size, cfg.size) {
            (true, Some(SizeSpec::Exact { height, .. }), _) => height,
            (_, _, SizeSpec::Exact { height, .. }) => height,
            (_, _, SizeSpec::ShortestEdge { shortest_edge }) => shortest_edge,
        };
        let side = opts.size.unwrap_or(current);
        match opts.crop_pct {
            Some(pct) => {
                let edge = (side as f64 / pct).floor() as u32;
                cfg.size = SizeSpec::ShortestEdge {
                    shortest_edge: edge,
                };
                cfg.do_center_crop = true;
                cfg.crop_size = Some(SizeSpec::Exact {
                    height: side,
                    width: side,
                });
            }
            None => {
                cfg.size = SizeSpec::Exact {
                    height: side,
                    width: side,
                };
                cfg.do_center_crop = false;
                cfg.crop_size = None;
            }
        }
    }
    if !overrides.is_empty() {
        source = format!("{source}; overridden: {}", overrides.join(", "));
    }
    Ok((cfg, source))
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
    reader: &mut crate::source::ImageReader,
) -> Result<Batch> {
    let per = pre.tensor_len();
    // Images inside Parquet row groups are fetched here, in order, before the
    // parallel decode: one row group is read once for all its rows in the batch.
    let fetched: Vec<Option<crate::source::ImageBytes>> = entries
        .iter()
        .map(|e| match &e.member {
            Some(Member::ParquetRow { .. }) => Some(reader.read(e, pre.max_file_bytes)),
            _ => None,
        })
        .collect();
    buf.clear();
    let len = per * entries.len();
    buf.try_reserve_exact(len).map_err(|_| Error::Output {
        what: format!(
            "cannot allocate {} bytes for a batch of {} images: lower {}",
            len as u64 * 4,
            entries.len(),
            crate::error::option_name("batch_size")
        ),
    })?;
    buf.resize(len, 0.0);
    let results: Vec<std::result::Result<Option<String>, String>> = buf
        .par_chunks_mut(per)
        .zip(entries.par_iter().zip(fetched.into_par_iter()))
        .map(|(slot, (e, fetched))| {
            if let Some(p) = &e.problem {
                return Err(p.clone());
            }
            // A panic in a decoder must not take the run down: it becomes this row's error.
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                // Files and tar members are read here, in parallel; Parquet rows above.
                let (bytes, ext) = match fetched {
                    Some(f) => f,
                    None => crate::source::ImageReader::default().read(e, pre.max_file_bytes),
                }?;
                pre.process_bytes(&bytes, ext, slot)
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
    Ok(Batch {
        start,
        data: buf,
        items,
    })
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
            let label_id = mapping.class_to_id.get(&*e.class).map(|&i| i as u32);
            let base = Row {
                path: e.rel.clone(),
                label: e.class.to_string(),
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
                extra: e
                    .extra
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.clone()))
                    .collect(),
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

/// Run `score` end to end; returns the metrics written to `metrics.json`.
pub fn score(opts: &ScoreOptions, progress: &mut dyn Progress) -> Result<ScoreOutcome> {
    check_out_apart(opts)?;
    let mut p = prepare(opts)?;
    let _lock = open_run(opts, &p.identity)?;
    if opts.resume && run::Run::check_finished(&opts.out).is_ok() {
        progress.note(&format!(
            "{} is already complete: nothing to score",
            opts.out.display()
        ));
        let metrics = run::MetricsFile::read(&opts.out.join(run::METRICS_JSON))?;
        check_quality(opts, &metrics)?;
        return Ok(ScoreOutcome {
            out_dir: opts.out.clone(),
            metrics,
        });
    }
    let warnings = announce(opts, &p, progress);
    let parts = Parts::new(&opts.out, p.identity.part_key())?;
    parts.check_own()?;
    let total = p.dataset.entries.len();
    let (todo, already) = parts_to_score(&parts, total, p.identity.part_rows)?;
    if opts.resume {
        progress.note(&format!(
            "resuming: {already} of {total} rows already committed, {} to score",
            total - already
        ));
    }
    let started = Instant::now();
    progress.start("images", total as u64, already as u64);
    let scored = score_parts(opts, &mut p, &parts, &todo, progress);
    progress.finish();
    let throughput = Throughput::new(scored? as u64, started.elapsed().as_secs_f64(), vec![]);
    let run = run_info(opts, &p, warnings);
    let metrics = run::finalize(
        &opts.out,
        &parts,
        &p.identity,
        p.dataset.skipped.len() as u64,
        throughput,
        run,
    )?;
    check_quality(opts, &metrics)?;
    Ok(ScoreOutcome {
        out_dir: opts.out.clone(),
        metrics,
    })
}

/// The data-quality gates of a finished run (its outputs are kept for a look): a
/// run that evaluated nothing always fails; `max_error_rate` and `min_evaluated`
/// when set.
fn check_quality(opts: &ScoreOptions, mf: &run::MetricsFile) -> Result<()> {
    let c = &mf.metrics.counts;
    let mut failed = vec![];
    if c.evaluated == 0 {
        failed.push(format!(
            "no image was evaluated ({} images: {} errors, {} unmapped)",
            c.images, c.errors, c.unmapped
        ));
    }
    if let Some(max) = opts.max_error_rate {
        let rate = 100.0 * c.errors as f64 / c.images.max(1) as f64;
        if rate > max {
            failed.push(format!(
                "{rate:.2}% of the images failed ({} of {}), above max_error_rate {max}%",
                c.errors, c.images
            ));
        }
    }
    if let Some(min) = opts.min_evaluated {
        if c.evaluated < min {
            failed.push(format!(
                "{} images evaluated, below min_evaluated {min}",
                c.evaluated
            ));
        }
    }
    if failed.is_empty() {
        return Ok(());
    }
    Err(Error::DataQuality {
        run: opts.out.clone(),
        what: failed.join("; "),
    })
}

/// OUT_DIR may not be DATA_DIR, be inside it or contain it (checked before anything
/// is read; pipelines check it at plan time).
pub(crate) fn check_out_apart(opts: &ScoreOptions) -> Result<()> {
    run::check_apart(&opts.out, "the output folder", &opts.data_dir, "DATA_DIR")
}

/// Prepare and lock the output folder; a new run records its identity first, a
/// resumed one must match the identity already there.
fn open_run(opts: &ScoreOptions, identity: &RunIdentity) -> Result<run::RunLock> {
    let out = &opts.out;
    let lock = run::prepare_out_dir(out, opts.out_policy())?;
    if !opts.resume {
        identity.write(out)?;
        return Ok(lock);
    }
    let old = RunIdentity::read(out)?;
    let diffs = old.differences(identity, IdentityScope::SameRun);
    if diffs.is_empty() {
        return Ok(lock);
    }
    Err(Error::OutDir {
        dir: out.clone(),
        what: format!(
            "cannot resume: the run there used a different {}; start a new run (or {})",
            diffs.join(", "),
            crate::error::option_name("overwrite")
        ),
    })
}

/// Tell the user what the run will do and what looks wrong; returns the warnings,
/// which `metrics.json` records too.
fn announce(opts: &ScoreOptions, p: &Prepared, progress: &mut dyn Progress) -> Vec<String> {
    let mut warnings = p.dataset.warnings.clone();
    if !p.mapping.unmapped.is_empty() {
        let n = p
            .dataset
            .entries
            .iter()
            .filter(|e| !p.mapping.class_to_id.contains_key(&*e.class))
            .count();
        warnings.push(format!(
            "{} class folder(s) match no model label ({}); their {n} image(s) are scored but not counted in accuracy",
            p.mapping.unmapped.len(),
            p.mapping.unmapped.join(", ")
        ));
    }
    if let Some(n) = opts.limit {
        let covered: std::collections::BTreeSet<&str> =
            p.dataset.entries.iter().map(|e| &*e.class).collect();
        let all = p.dataset.classes.len() - p.dataset.empty_classes.len();
        if covered.len() < all {
            warnings.push(format!(
                "limit {n} takes the first {n} paths in sorted order: {} of the {all} classes; `sample` takes a stratified sample of every class",
                covered.len()
            ));
        }
    }
    for w in &warnings {
        progress.warn(w);
    }
    if let Some(n) = opts.sample {
        progress.note(&format!(
            "sample of {} of {} images (stratified by class, seed {})",
            p.dataset.entries.len().min(n),
            p.identity.dataset_images,
            opts.seed
        ));
    }
    if let Some(s) = &opts.shard {
        progress.note(&format!(
            "shard {}/{} ({}): {} of {} images",
            s.index,
            s.count,
            opts.shard_source.as_deref().unwrap_or("--shard"),
            p.dataset.entries.len(),
            p.identity.dataset_images
        ));
    }
    warnings
}

/// The part ranges still to score, and how many rows earlier runs committed.
fn parts_to_score(
    parts: &Parts,
    total: usize,
    part_rows: usize,
) -> Result<(Vec<(usize, usize)>, usize)> {
    let done: Vec<(usize, usize)> = parts
        .ranges()?
        .into_iter()
        .map(|(a, b, _)| (a, b))
        .collect();
    let todo = (0..total)
        .step_by(part_rows)
        .map(|a| (a, (a + part_rows).min(total)))
        .filter(|r| !done.contains(r))
        .collect();
    let already = done.iter().map(|(a, b)| b - a).sum();
    Ok((todo, already))
}

/// Decode `todo` on a rayon pool while this thread runs ONNX Runtime on the batch
/// before, and commit each finished part; returns the rows scored.
fn score_parts(
    opts: &ScoreOptions,
    p: &mut Prepared,
    parts: &Parts,
    todo: &[(usize, usize)],
    progress: &mut dyn Progress,
) -> Result<usize> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.threads())
        .thread_name(|i| format!("vit-batch-decode-{i}"))
        .build()
        .map_err(|e| Error::Runtime {
            what: e.to_string(),
        })?;
    // One batch waits while one is in ONNX Runtime and the next is being decoded:
    // enough to keep ORT fed (decoding is ~5% of its cost), and memory stays flat.
    let (tx, rx) = crossbeam_channel::bounded::<Result<Batch>>(1);
    // Batch buffers go back to the decoder once ORT is done with them: the same few
    // large buffers serve the whole run instead of one fresh allocation per batch.
    let (recycle_tx, recycle_rx) = crossbeam_channel::bounded::<Vec<f32>>(2);
    let bs = opts.batch_size;
    let k = opts.top_k.min(p.mapping.model_labels.len());
    let total = p.dataset.entries.len();
    let part_rows = p.identity.part_rows;
    let Prepared {
        dataset,
        engine,
        pre,
        mapping,
        attention,
        ..
    } = p;
    let (h, w) = (pre.height as usize, pre.width as usize);
    std::thread::scope(|scope| {
        let entries = &dataset.entries;
        let pre = &*pre;
        let pool = &pool;
        scope.spawn(move || {
            // Parquet rows' images, one row group at a time (see hf::RowGroupCache).
            let mut reader = crate::source::ImageReader::default();
            for &(a, b) in todo {
                for s in (a..b).step_by(bs) {
                    let e = (s + bs).min(b);
                    let buf = recycle_rx.try_recv().unwrap_or_default();
                    let batch =
                        pool.install(|| preprocess_batch(pre, &entries[s..e], s, buf, &mut reader));
                    let failed = batch.is_err();
                    if tx.send(batch).is_err() || failed {
                        return;
                    }
                }
            }
        });
        // Owned here, so an early error return drops the receiver and the decoding
        // thread's next send fails instead of blocking forever.
        let rx = rx;
        let mut scored = 0;
        let mut pending: Vec<Row> = Vec::with_capacity(part_rows.min(total));
        let mut part_start = None;
        for batch in rx.iter() {
            let batch = batch?;
            let output = infer_batch(engine, &batch, mapping.model_labels.len(), h, w).map_err(
                |e| match e {
                    Error::BatchTimeout { seconds, .. } => Error::BatchTimeout {
                        seconds,
                        start: batch.start,
                        end: batch.start + batch.items.len(),
                        parts: parts.dir.clone(),
                    },
                    e => e,
                },
            )?;
            let ents = &entries[batch.start..batch.start + batch.items.len()];
            let rows = rows_for_batch(&batch, ents, &output, attention.as_ref(), mapping, k);
            let ps = *part_start.get_or_insert(batch.start);
            pending.extend(rows);
            scored += batch.items.len();
            if ps + pending.len() == (ps + part_rows).min(total) {
                parts.commit(ps, &pending).map_err(|e| Error::PartCommit {
                    parts: parts.dir.clone(),
                    cause: Box::new(e),
                })?;
                pending.clear();
                part_start = None;
            }
            progress.advance(batch.items.len() as u64);
            let _ = recycle_tx.try_send(batch.data);
        }
        Ok(scored)
    })
}

/// ONNX Runtime on the images of `batch` that preprocessed fine.
fn infer_batch(
    engine: &mut Engine,
    batch: &Batch,
    classes: usize,
    h: usize,
    w: usize,
) -> Result<crate::infer::BatchOutput> {
    let n_ok = batch.items.iter().filter(|i| i.is_ok()).count();
    if n_ok == 0 {
        return Ok(crate::infer::BatchOutput {
            logits: vec![],
            classes,
            rollout: None,
        });
    }
    let output = engine.run(&batch.data, n_ok, h, w)?;
    if output.classes != classes {
        return Err(Error::Model {
            what: format!(
                "model returned {} classes, its labels name {classes}",
                output.classes
            ),
        });
    }
    Ok(output)
}

/// Provenance of the run, for `metrics.json`.
/// Which images of the dataset the run covers, when not all (before sharding).
fn subset(opts: &ScoreOptions, p: &Prepared) -> Option<String> {
    let of = p.identity.dataset_images;
    if let Some(n) = opts.sample.filter(|&n| n < of) {
        Some(format!(
            "stratified sample of {n} of {of} images (seed {})",
            opts.seed
        ))
    } else {
        opts.limit
            .filter(|&n| n < of)
            .map(|n| format!("first {n} of {of} images (limit)"))
    }
}

fn run_info(opts: &ScoreOptions, p: &Prepared, warnings: Vec<String>) -> RunInfo {
    RunInfo {
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
        precision: p.engine.precision,
        engine: p.engine.info.clone(),
        threads: opts.threads(),
        batch_size: opts.batch_size,
        preprocess: p.identity.preprocess.clone(),
        preprocess_source: p.identity.preprocess_source.clone(),
        dataset_fingerprint: p.identity.dataset_fingerprint.clone(),
        dataset_format: p.dataset.source.to_string(),
        image_root: (p.dataset.source == "manifest").then(|| {
            let r = crate::source::manifest_root(&opts.data_dir, opts.root.as_deref());
            std::fs::canonicalize(&r).unwrap_or(r).display().to_string()
        }),
        label_column: matches!(p.dataset.source, "manifest" | "hf-parquet")
            .then(|| opts.label_column.clone()),
        shard: opts.shard,
        subset: subset(opts, p),
        label_mapping: p.mapping.clone(),
        warnings,
        attention: p.attention.clone(),
    }
}
