//! Command-line flags and their translation into library options.
//!
//! Exit codes (documented in the README): 0 success (a run with per-image errors
//! still succeeded), 1 the regression gate failed, 2 usage, input or model error.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use vit_batch::infer::Provider;
use vit_batch::score::{Progress, ScoreOptions, Shard};

pub const EXIT_OK: i32 = 0;
#[allow(dead_code)] // returned by the regression gate (gate subcommand, another branch)
pub const EXIT_REGRESSION: i32 = 1;
pub const EXIT_ERROR: i32 = 2;

#[derive(Parser)]
#[command(
    name = "vit-batch",
    version,
    about = "Evaluate Vision Transformer image classifiers at scale"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Score a labeled image folder (DATA_DIR/<class>/<image>) with an ONNX ViT.
    Score(ScoreArgs),
    /// Train a ViT preset on an ImageFolder dataset (CPU) and write an HF checkpoint.
    Train(TrainArgs),
    /// Write a ViT as an ONNX model folder (model.onnx, config.json, preprocessor_config.json).
    Export(ExportArgs),
}

#[derive(Args)]
struct ScoreArgs {
    /// ImageFolder dataset: DATA_DIR/<class>/.../<image>.
    data_dir: PathBuf,
    /// A .onnx file or a model folder (model.onnx, config.json, preprocessor_config.json).
    #[arg(long)]
    model: PathBuf,
    /// Output run folder.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Total CPU threads for preprocessing and ONNX Runtime (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long, default_value = "cpu", value_parser = ["cpu", "cuda"])]
    provider: String,
    #[arg(long, default_value_t = 5)]
    top_k: usize,
    /// CSV `folder,label` mapping class folders to model labels.
    #[arg(long)]
    label_map: Option<PathBuf>,
    /// Score only the first N images (in sorted order).
    #[arg(long)]
    limit: Option<usize>,
    /// No progress output.
    #[arg(long)]
    quiet: bool,
    /// Path of libonnxruntime.so.<version> (else ORT_DYLIB_PATH, else the project's .ort/).
    #[arg(long)]
    ort_lib: Option<PathBuf>,
    /// Refuse images with more pixels than this (decompression bombs).
    #[arg(long, default_value_t = vit_batch::preprocess::DEFAULT_MAX_PIXELS)]
    max_pixels: u64,
    /// Finish an interrupted run in OUT, scoring only what is missing.
    #[arg(long, conflicts_with = "overwrite")]
    resume: bool,
    /// Replace a run already in OUT.
    #[arg(long)]
    overwrite: bool,
    /// Score shard K of N (0-based), e.g. --shard 3/8.
    #[arg(long)]
    shard: Option<String>,
    /// Total shards when the index comes from JOB_COMPLETION_INDEX (Kubernetes).
    #[arg(long, env = "VIT_BATCH_SHARDS")]
    shards: Option<usize>,
    /// Do not render the report at the end of the run.
    #[arg(long)]
    no_report: bool,
}

fn parse_shard(s: &str) -> Result<Shard> {
    let (k, n) = s.split_once('/').context("--shard takes K/N, e.g. 0/4")?;
    let index: usize = k.trim().parse().context("--shard K/N: K is not a number")?;
    let count: usize = n.trim().parse().context("--shard K/N: N is not a number")?;
    if count == 0 || index >= count {
        bail!("--shard {index}/{count}: need 0 <= K < N");
    }
    Ok(Shard { index, count })
}

/// The shard from the flag, else from the scheduler's variables (logged by the caller).
fn resolve_shard(flag: Option<&str>, shards: Option<usize>) -> Result<Option<(Shard, String)>> {
    if let Some(s) = flag {
        return Ok(Some((parse_shard(s)?, "--shard".into())));
    }
    let var = |n: &str| std::env::var(n).ok().filter(|v| !v.is_empty());
    if let (Some(id), Some(count)) = (var("SLURM_ARRAY_TASK_ID"), var("SLURM_ARRAY_TASK_COUNT")) {
        let s = parse_shard(&format!("{id}/{count}"))
            .context("SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT")?;
        return Ok(Some((s, format!("Slurm array task {id} of {count}"))));
    }
    if let Some(idx) = var("JOB_COMPLETION_INDEX") {
        let Some(n) = shards else {
            bail!("JOB_COMPLETION_INDEX={idx} is set but the number of shards is not: pass --shards N (or VIT_BATCH_SHARDS)");
        };
        let s = parse_shard(&format!("{idx}/{n}")).context("JOB_COMPLETION_INDEX")?;
        return Ok(Some((
            s,
            format!("Kubernetes JOB_COMPLETION_INDEX={idx} of {n}"),
        )));
    }
    Ok(None)
}

fn score(a: ScoreArgs) -> Result<i32> {
    let mut o = ScoreOptions::new(a.data_dir, a.model, a.out);
    o.batch_size = a.batch_size;
    if let Some(t) = a.threads {
        o.threads = t;
    }
    o.provider = a.provider.parse::<Provider>().map_err(anyhow::Error::msg)?;
    o.top_k = a.top_k;
    o.label_map = a.label_map;
    o.limit = a.limit;
    o.ort_lib = a.ort_lib;
    o.max_pixels = a.max_pixels;
    o.resume = a.resume;
    o.overwrite = a.overwrite;
    if let Some((s, source)) = resolve_shard(a.shard.as_deref(), a.shards)? {
        o.shard = Some(s);
        o.shard_source = Some(source);
    }
    o.progress = if a.quiet {
        Progress::Quiet
    } else {
        Progress::Auto
    };
    let outcome = vit_batch::score::score(&o).context("score failed")?;
    let m = &outcome.metrics.metrics;
    if !a.quiet {
        eprintln!(
            "vit-batch: {} images ({} ok, {} errors, {} unmapped, {} skipped); top-1 {:.2}%, top-{} {:.2}%; {:.1} img/s; wrote {}",
            m.counts.images,
            m.counts.ok,
            m.counts.errors,
            m.counts.unmapped,
            m.counts.skipped,
            100.0 * m.top1,
            m.k,
            100.0 * m.topk,
            outcome.metrics.throughput.images_per_s,
            outcome.out_dir.display()
        );
    }
    let _ = a.no_report;
    Ok(EXIT_OK)
}

// ---- train (owner: train) ------------------------------------------------------

#[derive(Args)]
struct TrainArgs {
    /// ImageFolder dataset: DATA_DIR/<class>/.../<image>.
    data_dir: PathBuf,
    /// Architecture preset (e.g. vit-digits).
    #[arg(long)]
    preset: String,
    /// Checkpoint folder to write (config.json, model.safetensors, preprocessor_config.json).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 30)]
    epochs: usize,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Peak learning rate (linear warm-up, then cosine decay).
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    #[arg(long, default_value_t = 0.05)]
    weight_decay: f64,
    /// Warm-up as a fraction of all steps.
    #[arg(long, default_value_t = 0.1)]
    warmup: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Hold out this fraction of each class for validation (0 = none).
    #[arg(long, default_value_t = 0.1, conflicts_with = "val")]
    val_split: f64,
    /// Validation ImageFolder instead of a split of DATA_DIR.
    #[arg(long)]
    val: Option<PathBuf>,
    /// Use only the first N images of each class (e.g. a short CI run).
    #[arg(long)]
    limit_per_class: Option<usize>,
    /// Random shifts of up to N input pixels during training (0 = no augmentation).
    #[arg(long, default_value_t = 0)]
    augment_shift: usize,
    /// CPU threads (default: RAYON_NUM_THREADS, else the physical cores).
    #[arg(long)]
    threads: Option<usize>,
    /// No progress output.
    #[arg(long)]
    quiet: bool,
}

fn train(a: TrainArgs) -> Result<i32> {
    use vit_batch::train::{TrainOptions, TrainProgress, ValSplit};
    let mut o = TrainOptions::new(a.data_dir, a.preset, a.out);
    o.epochs = a.epochs;
    o.batch_size = a.batch_size;
    o.lr = a.lr;
    o.weight_decay = a.weight_decay;
    o.warmup_fraction = a.warmup;
    o.seed = a.seed;
    o.val = match a.val {
        Some(d) => ValSplit::Dir(d),
        None => ValSplit::Fraction(a.val_split),
    };
    o.limit_per_class = a.limit_per_class;
    o.augment_shift = a.augment_shift;
    o.threads = a.threads;
    o.progress = if a.quiet {
        TrainProgress::Quiet
    } else {
        TrainProgress::Auto
    };
    let s = vit_batch::train::train(&o).context("train failed")?;
    if !a.quiet {
        let acc = s
            .final_val_accuracy()
            .map(|v| format!("val acc {:.2}%", 100.0 * v))
            .unwrap_or_else(|| "no validation set".into());
        eprintln!(
            "vit-batch: trained {} on {} images ({} classes, {} unreadable) in {:.1}s; final loss {:.4}, {}; wrote {}",
            s.preset,
            s.num_train,
            s.classes.len(),
            s.unreadable.len(),
            s.wall_s,
            s.epochs.last().map(|e| e.train_loss).unwrap_or(f64::NAN),
            acc,
            s.out_dir.display()
        );
    }
    Ok(EXIT_OK)
}

// ---- export (wiring of the export branch's library; owner: export) --------------

#[derive(Args)]
struct ExportArgs {
    /// Checkpoint folder (config.json + model.safetensors): HF ViT/DeiT, timm, or `train`'s.
    #[arg(long, conflicts_with_all = ["preset", "random_init"], required_unless_present = "preset")]
    checkpoint: Option<PathBuf>,
    /// Output model folder.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 18)]
    opset: i64,
    /// Also output attentions.{i} [batch, heads, S, S].
    #[arg(long)]
    with_attentions: bool,
    /// Graph operators: standard (portable) or fused (ONNX Runtime contrib ops);
    /// default: the exporter's default variant.
    #[arg(long, value_parser = ["standard", "fused"])]
    variant: Option<String>,
    /// Preset architecture with seeded random weights (needs --random-init).
    #[arg(long, requires = "random_init")]
    preset: Option<String>,
    #[arg(long, requires = "preset")]
    random_init: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 10)]
    num_labels: usize,
    #[arg(long)]
    quiet: bool,
}

fn export(a: ExportArgs) -> Result<i32> {
    use vit_batch::export::{ExportOptions, ExportSource, GraphVariant};
    let source = match (a.checkpoint, a.preset) {
        (Some(dir), _) => ExportSource::Checkpoint(dir),
        (None, Some(name)) => ExportSource::Preset {
            name,
            seed: a.seed,
            num_labels: a.num_labels,
        },
        (None, None) => bail!("give --checkpoint DIR or --preset NAME --random-init"),
    };
    let mut o = ExportOptions::new(source, a.out);
    o.opset = a.opset;
    o.with_attentions = a.with_attentions;
    o.variant = match a.variant.as_deref() {
        Some("fused") => GraphVariant::Fused,
        Some(_) => GraphVariant::Standard,
        None => GraphVariant::default(),
    };
    let s = vit_batch::export::export(&o).context("export failed")?;
    if !a.quiet {
        for w in &s.warnings {
            eprintln!("vit-batch: warning: {w}");
        }
        eprintln!(
            "vit-batch: exported {} ({} params, {} labels, opset {}, {}) to {} ({} bytes)",
            s.source,
            s.num_params,
            s.num_labels,
            s.opset,
            s.variant.as_str(),
            s.model_path.display(),
            s.model_bytes
        );
    }
    Ok(EXIT_OK)
}

// ---- end train / export ------------------------------------------------------------

pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_ERROR } else { EXIT_OK };
            let _ = e.print();
            return code;
        }
    };
    let r = match cli.cmd {
        Cmd::Score(a) => score(a),
        Cmd::Train(a) => train(a),
        Cmd::Export(a) => export(a),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vit-batch: error: {e:#}");
            EXIT_ERROR
        }
    }
}
