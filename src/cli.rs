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
    /// Build a ViT ONNX model folder from a checkpoint or a preset.
    Export(ExportArgs),
    /// Regression gate: compare a candidate run with a baseline run (exit 1 on regression).
    Compare(CompareArgs),
    /// Run a declared pipeline (train, export, score, report, gate); exit code of the gate.
    Run(RunArgs),
    /// Train a ViT preset on an ImageFolder dataset (CPU) and write an HF checkpoint.
    Train(TrainArgs),
    /// Merge shard run folders (scored with --shard K/N) into one run.
    Merge(MergeArgs),
    /// Render the evaluation report of a run folder (from predictions.parquet + metrics.json).
    Report(ReportArgs),
}

#[derive(Args)]
struct MergeArgs {
    /// Shard run folders, one per shard, in any order.
    #[arg(required = true)]
    shards: Vec<PathBuf>,
    /// Output run folder.
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    overwrite: bool,
}

fn merge(a: MergeArgs) -> Result<i32> {
    let o = vit_batch::merge::MergeOptions {
        shards: a.shards,
        out: a.out.clone(),
        overwrite: a.overwrite,
    };
    let m = vit_batch::merge::merge(&o).context("merge failed")?;
    render_report(&a.out, false)?;
    eprintln!(
        "vit-batch: merged {} shards, {} images, top-1 {:.2}%; wrote {}",
        m.throughput.shards.len(),
        m.metrics.counts.images,
        100.0 * m.metrics.top1,
        a.out.display()
    );
    Ok(EXIT_OK)
}

#[derive(Args)]
struct ExportArgs {
    /// Hugging Face checkpoint folder (config.json + model.safetensors): ViT, DeiT or timm.
    #[arg(long, conflicts_with = "preset", required_unless_present = "preset")]
    checkpoint: Option<PathBuf>,
    /// Preset architecture with random weights (needs --random-init).
    #[arg(long, requires = "random_init")]
    preset: Option<String>,
    /// Initialise the preset's weights randomly (seeded).
    #[arg(long)]
    random_init: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 1000)]
    num_labels: usize,
    /// Output model folder (model.onnx, config.json, preprocessor_config.json).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 18)]
    opset: i64,
    /// Add every layer's attention probabilities as outputs `attentions.{i}`.
    #[arg(long)]
    with_attentions: bool,
    /// Graph variant: fused (ONNX Runtime contrib ops) or standard (portable ONNX).
    /// Default: the variant measured fastest (see BENCHMARKS.md).
    #[arg(long, value_parser = ["standard", "fused"])]
    variant: Option<String>,
    #[arg(long)]
    quiet: bool,
}

fn export(a: ExportArgs) -> Result<i32> {
    use vit_batch::export::{ExportOptions, ExportSource, GraphVariant};
    let source = match (a.checkpoint, a.preset) {
        (Some(c), _) => ExportSource::Checkpoint(c),
        (None, Some(name)) => ExportSource::Preset {
            name,
            seed: a.seed,
            num_labels: a.num_labels,
        },
        (None, None) => bail!("pass --checkpoint DIR or --preset NAME --random-init"),
    };
    let mut o = ExportOptions::new(source, a.out);
    o.opset = a.opset;
    o.with_attentions = a.with_attentions;
    match a.variant.as_deref() {
        Some("standard") => o.variant = GraphVariant::Standard,
        Some("fused") => o.variant = GraphVariant::Fused,
        _ => {}
    }
    let s = vit_batch::export::export(&o).context("export failed")?;
    if !a.quiet {
        for w in &s.warnings {
            eprintln!("vit-batch: warning: {w}");
        }
        eprintln!(
            "vit-batch: exported {} ({} parameters, {} labels, {} graph, opset {}) to {}",
            s.source,
            s.num_params,
            s.num_labels,
            s.variant.as_str(),
            s.opset,
            s.out_dir.display()
        );
    }
    Ok(EXIT_OK)
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
    /// ONNX Runtime intra-op spinning: on (ORT's default, measured faster here) or off
    /// (idle ORT threads sleep at once, leaving the cores to other work).
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    ort_spin: String,
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
    /// Commit progress every N rows (what a killed run can lose at most; --resume).
    #[arg(long, default_value_t = 1024)]
    checkpoint_rows: usize,
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
    o.part_rows = a.checkpoint_rows;
    o.ort_spinning = a.ort_spin == "on";
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
    if !a.no_report {
        render_report(&outcome.out_dir, a.quiet)?;
    }
    Ok(EXIT_OK)
}

/// `score` and `merge` render the report at the end of a run (unless --no-report).
fn render_report(run_dir: &std::path::Path, quiet: bool) -> Result<()> {
    let r = vit_batch::report::render(&vit_batch::report::ReportOptions::new(run_dir))
        .with_context(|| format!("rendering the report of {}", run_dir.display()))?;
    if !quiet {
        eprintln!(
            "vit-batch: report: {}",
            run_dir.join("report.html").display()
        );
    }
    let _ = r;
    Ok(())
}

// ---- compare / run (owner: gate) -------------------------------------------------

#[derive(Args)]
struct CompareArgs {
    /// Baseline run folder (written by `vit-batch score`).
    baseline_run: PathBuf,
    /// Candidate run folder.
    candidate_run: PathBuf,
    /// Largest allowed top-1 accuracy drop, in percentage points.
    #[arg(long = "max-accuracy-drop", value_name = "PP", default_value_t = vit_batch::compare::DEFAULT_MAX_ACCURACY_DROP_PP)]
    max_accuracy_drop: f64,
    /// Largest allowed per-class recall drop, in percentage points.
    #[arg(long = "max-class-recall-drop", value_name = "PP", default_value_t = vit_batch::compare::DEFAULT_MAX_CLASS_RECALL_DROP_PP)]
    max_class_recall_drop: f64,
    /// Classes with fewer compared images are not gated on recall.
    #[arg(long, value_name = "N", default_value_t = vit_batch::compare::DEFAULT_MIN_CLASS_SUPPORT)]
    min_class_support: u64,
    /// Significance level of McNemar's exact test.
    #[arg(long, value_name = "A", default_value_t = vit_batch::compare::DEFAULT_ALPHA)]
    alpha: f64,
    /// Enable the throughput gate: largest allowed images/s drop, in percent.
    #[arg(long = "max-throughput-drop", value_name = "PCT")]
    max_throughput_drop: Option<f64>,
    /// Compare only the images common to both runs (else differing image sets are an error).
    #[arg(long)]
    allow_partial: bool,
    /// Write JUnit XML (one testcase per gate).
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// Write a Markdown summary (e.g. for $GITHUB_STEP_SUMMARY).
    #[arg(long, value_name = "FILE")]
    markdown: Option<PathBuf>,
    /// Write the full report as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// Print the gate's verdict (a line per gate and the first broken images) on stdout
/// and give the exit code.
fn print_verdict(r: &vit_batch::compare::CompareReport) -> i32 {
    println!("vit-batch compare: {}", r.one_line());
    for g in &r.gates {
        println!("  {:<12} {:<7} {}", g.name, g.verdict.as_str(), g.observed);
    }
    let shown = 10;
    for f in r.regressions.iter().take(shown) {
        println!(
            "  right->wrong {} (label {}): {} -> {}",
            f.path,
            f.label,
            f.baseline_pred.as_deref().unwrap_or("error"),
            f.candidate_pred.as_deref().unwrap_or("error")
        );
    }
    if r.regressions.len() > shown {
        println!(
            "  ... and {} more right->wrong",
            r.regressions.len() - shown
        );
    }
    if r.passed() {
        EXIT_OK
    } else {
        EXIT_REGRESSION
    }
}

fn compare(a: CompareArgs) -> Result<i32> {
    let mut o = vit_batch::compare::CompareOptions::new(a.baseline_run, a.candidate_run);
    o.max_accuracy_drop_pp = a.max_accuracy_drop;
    o.max_class_recall_drop_pp = a.max_class_recall_drop;
    o.min_class_support = a.min_class_support;
    o.alpha = a.alpha;
    o.max_throughput_drop_pct = a.max_throughput_drop;
    o.allow_partial = a.allow_partial;
    let r = vit_batch::compare::compare(&o).context("compare failed")?;
    if let Some(p) = &a.json {
        r.write_json(p).context("writing the JSON report")?;
    }
    if let Some(p) = &a.markdown {
        r.write_markdown(p)
            .context("writing the Markdown summary")?;
    }
    if let Some(p) = &a.junit {
        r.write_junit(p).context("writing the JUnit XML")?;
    }
    Ok(print_verdict(&r))
}

#[derive(Args)]
struct RunArgs {
    /// Pipeline file (TOML). Relative paths inside it are resolved against the
    /// current directory: run from the repository root.
    pipeline: PathBuf,
    /// Validate the pipeline and print its stages without running them.
    #[arg(long)]
    check: bool,
    /// No progress output (the verdict is still printed).
    #[arg(long)]
    quiet: bool,
}

fn run_pipeline(a: RunArgs) -> Result<i32> {
    let plan = vit_batch::pipeline::load(&a.pipeline)?;
    if a.check {
        println!(
            "vit-batch run: {} is valid: {}",
            a.pipeline.display(),
            plan.stages
                .iter()
                .map(|s| s.name())
                .collect::<Vec<_>>()
                .join(" -> ")
        );
        for n in &plan.notes {
            println!("  note: {n}");
        }
        return Ok(EXIT_OK);
    }
    let out = vit_batch::pipeline::run(&plan, a.quiet)
        .with_context(|| format!("pipeline {} failed", plan.name))?;
    Ok(match &out.gate {
        Some(r) => print_verdict(r),
        None => {
            println!(
                "vit-batch run: {} done ({})",
                plan.name,
                out.ran.join(" -> ")
            );
            EXIT_OK
        }
    })
}

// ---- end compare / run -----------------------------------------------------------

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

// ---- end train ------------------------------------------------------------

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
        Cmd::Compare(a) => compare(a),
        Cmd::Run(a) => run_pipeline(a),
        Cmd::Export(a) => export(a),
        Cmd::Merge(a) => merge(a),
        Cmd::Train(a) => train(a),

        Cmd::Report(a) => report(a),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vit-batch: error: {}", error_chain(&e));
            EXIT_ERROR
        }
    }
}

/// The context chain of an error on one line, without repeating a cause that the
/// message before it already ends with (typed errors often show their source).
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.ends_with(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}
