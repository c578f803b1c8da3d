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
    /// Render the evaluation report of a run folder (from predictions.parquet + metrics.json).
    Report(ReportArgs),
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

// --- `vit-batch report` (owned by the report module) ---------------------------

#[derive(Args)]
struct ReportArgs {
    /// Run folder written by `vit-batch score` (predictions.parquet + metrics.json).
    run_dir: PathBuf,
    /// Where to write the report (default: RUN_DIR).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Comma-separated outputs: html, png, md, json (default: all).
    #[arg(long, value_delimiter = ',', default_value = "html,png,md,json")]
    format: Vec<String>,
}

fn report(a: ReportArgs) -> Result<i32> {
    let formats = a
        .format
        .iter()
        .filter(|f| !f.trim().is_empty())
        .map(|f| f.parse::<vit_batch::report::Format>())
        .collect::<std::result::Result<Vec<_>, String>>()
        .map_err(anyhow::Error::msg)?;
    let opts = vit_batch::report::ReportOptions {
        run_dir: a.run_dir,
        out_dir: a.out,
        formats,
    };
    let s = vit_batch::report::render(&opts).context("report failed")?;
    let files: Vec<String> = s.files.iter().map(|f| f.display().to_string()).collect();
    eprintln!(
        "vit-batch: report of {} rows, {} classes written to {}: {}",
        s.rows,
        s.classes,
        s.out_dir.display(),
        files.join(", ")
    );
    Ok(EXIT_OK)
}

// --- end `vit-batch report` ----------------------------------------------------

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
        Cmd::Report(a) => report(a),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vit-batch: error: {e:#}");
            EXIT_ERROR
        }
    }
}
