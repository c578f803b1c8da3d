//! The command line: clap's front door onto the library.
//!
//! Every command's options are the library's own structs (`vit_batch::options`),
//! flattened into clap; only presentation flags (`--quiet`, `--no-report`, `--check`)
//! are defined here. Each command calls one library function, prints a summary line
//! and maps the result to an exit code.
//!
//! Exit codes (documented in the README): 0 success (a run with per-image errors
//! still succeeded), 1 the regression gate failed, 2 usage, input or model error,
//! 3 a finished run failed a data-quality gate (nothing evaluated, too many errors).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use vit_batch::options::{
    CompareOptions, ExportOptions, MergeOptions, ReportOptions, ScoreOptions, TrainOptions,
};

use vit_batch::progress::Progress;

use crate::terminal::{clean, Terminal};

pub const EXIT_OK: i32 = 0;
pub const EXIT_REGRESSION: i32 = 1;
pub const EXIT_ERROR: i32 = 2;
pub const EXIT_DATA_QUALITY: i32 = 3;

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

// One command is parsed per process: the variants' size difference costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Cmd {
    /// Score a labeled image folder (DATA_DIR/<class>/<image>) or manifest with an ONNX ViT.
    Score(ScoreCmd),
    /// Build a ViT ONNX model folder from a checkpoint or a preset.
    Export(ExportCmd),
    /// Regression gate: compare a candidate run with a baseline run (exit 1 on regression).
    Compare(CompareOptions),
    /// Run a declared pipeline (train, export, score, report, gate); exit code of the gate.
    Run(RunCmd),
    /// Train a ViT preset on an ImageFolder dataset (CPU) and write an HF checkpoint.
    Train(TrainCmd),
    /// Merge shard run folders (scored with --shard K/N) into one run.
    Merge(MergeOptions),
    /// Render the evaluation report of a run folder (from predictions.parquet + metrics.json).
    Report(ReportOptions),
}

#[derive(Args)]
struct ScoreCmd {
    #[command(flatten)]
    opts: ScoreOptions,
    /// No progress output.
    #[arg(long)]
    quiet: bool,
    /// Do not render the report at the end of the run.
    #[arg(long)]
    no_report: bool,
}

#[derive(Args)]
struct ExportCmd {
    #[command(flatten)]
    opts: ExportOptions,
    /// No output.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
struct TrainCmd {
    #[command(flatten)]
    opts: TrainOptions,
    /// No progress output.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
struct RunCmd {
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

fn score(a: ScoreCmd) -> Result<i32> {
    let mut o = a.opts;
    o.shard_from_scheduler(|n| std::env::var(n).ok())?;
    let mut progress = Terminal::new(a.quiet, "vit-batch");
    let outcome = vit_batch::score::score(&o, &mut progress).context("score failed")?;
    let m = &outcome.metrics.metrics;
    progress.note(&format!(
        "{} images ({} ok, {} errors, {} unmapped, {} skipped); {}; {:.1} img/s; wrote {}",
        m.counts.images,
        m.counts.ok,
        m.counts.errors,
        m.counts.unmapped,
        m.counts.skipped,
        m.headline(),
        outcome.metrics.throughput.images_per_s,
        outcome.out_dir.display()
    ));
    if !a.no_report {
        render_report(&outcome.out_dir, &mut progress)?;
    }
    Ok(EXIT_OK)
}

/// `score` and `merge` render the report at the end of a run (unless --no-report).
fn render_report(run_dir: &Path, progress: &mut Terminal) -> Result<()> {
    vit_batch::report::render(&ReportOptions::new(run_dir))
        .with_context(|| format!("rendering the report of {}", run_dir.display()))?;
    progress.note(&format!(
        "report: {}",
        run_dir.join("report.html").display()
    ));
    Ok(())
}

fn merge(o: MergeOptions) -> Result<i32> {
    let m = vit_batch::merge::merge(&o).context("merge failed")?;
    let mut progress = Terminal::new(false, "vit-batch");
    render_report(&o.out, &mut progress)?;
    progress.note(&format!(
        "merged {} shards, {} images, {}; wrote {}",
        m.throughput.shards.len(),
        m.metrics.counts.images,
        m.metrics.headline(),
        o.out.display()
    ));
    Ok(EXIT_OK)
}

fn export(a: ExportCmd) -> Result<i32> {
    let s = vit_batch::export::export(&a.opts).context("export failed")?;
    let mut progress = Terminal::new(a.quiet, "vit-batch");
    for w in &s.warnings {
        progress.warn(w);
    }
    progress.note(&format!(
        "exported {} ({} parameters, {} labels, {} graph, opset {}) to {}",
        s.source,
        s.num_params,
        s.num_labels,
        s.variant.as_str(),
        s.opset,
        s.out_dir.display()
    ));
    Ok(EXIT_OK)
}

fn train(a: TrainCmd) -> Result<i32> {
    if let Some(t) = a.opts.threads {
        // candle splits its matmuls and sizes its elementwise thread pool from
        // RAYON_NUM_THREADS, read from the environment (the pool once per process).
        // The library sets no environment variable (it bounds the matmuls' threads
        // only); the binary, still single-threaded here, sets it so that `--threads`
        // bounds all of candle.
        std::env::set_var("RAYON_NUM_THREADS", t.to_string());
    }
    let mut progress = Terminal::new(a.quiet, "vit-batch");
    let s = vit_batch::train::train(&a.opts, &mut progress).context("train failed")?;
    let acc = s
        .final_val_accuracy()
        .map(|v| format!("val acc {:.2}%", 100.0 * v))
        .unwrap_or_else(|| "no validation set".into());
    progress.note(&format!(
        "trained {} on {} images ({} classes, {} unreadable) in {:.1}s; final loss {:.4}, {}; wrote {}",
        s.preset,
        s.num_train,
        s.classes.len(),
        s.unreadable.len(),
        s.wall_s,
        s.epochs.last().map(|e| e.train_loss).unwrap_or(f64::NAN),
        acc,
        s.out_dir.display()
    ));
    Ok(EXIT_OK)
}

fn report(o: ReportOptions) -> Result<i32> {
    let s = vit_batch::report::render(&o).context("report failed")?;
    let files: Vec<String> = s.files.iter().map(|f| f.display().to_string()).collect();
    Terminal::new(false, "vit-batch").note(&format!(
        "report of {} rows, {} classes written to {}: {}",
        s.rows,
        s.classes,
        s.out_dir.display(),
        files.join(", ")
    ));
    Ok(EXIT_OK)
}

/// Print the gate's verdict (a line per gate and the first broken images) on stdout
/// and give the exit code.
fn print_verdict(r: &vit_batch::compare::CompareReport) -> i32 {
    for w in &r.warnings {
        println!("vit-batch compare: WARNING: {}", clean(w));
    }
    for m in &r.metadata {
        let value = |v: &str| {
            let v = clean(v);
            if v.chars().count() > 48 {
                format!("{}...", v.chars().take(45).collect::<String>())
            } else {
                v
            }
        };
        println!(
            "  {:<20} {}{}",
            m.key,
            value(&m.baseline),
            if m.differs {
                format!("  ->  {}  (DIFFERS)", value(&m.candidate))
            } else {
                String::new()
            }
        );
    }
    println!("vit-batch compare: {}", clean(&r.one_line()));
    for g in &r.gates {
        println!(
            "  {:<12} {:<7} {}",
            g.name,
            g.verdict.as_str(),
            clean(&g.observed)
        );
    }
    let shown = 10;
    for f in r.regressions.iter().take(shown) {
        println!(
            "  right->wrong {} (label {}): {} -> {}",
            clean(&f.path),
            clean(&f.label),
            clean(f.baseline_pred.as_deref().unwrap_or("error")),
            clean(f.candidate_pred.as_deref().unwrap_or("error"))
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

fn compare(o: CompareOptions) -> Result<i32> {
    let r = vit_batch::compare::compare(&o).context("compare failed")?;
    r.write_files(&o).context("writing the gate's files")?;
    Ok(print_verdict(&r))
}

fn run_pipeline(a: RunCmd) -> Result<i32> {
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
            println!("  note: {}", clean(n));
        }
        return Ok(EXIT_OK);
    }
    let mut progress = Terminal::new(a.quiet, "vit-batch run");
    let out = vit_batch::pipeline::run(&plan, &mut progress)
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
            eprintln!("vit-batch: error: {}", clean(&error_chain(&e)));
            let quality = e.chain().any(|c| {
                matches!(
                    c.downcast_ref::<vit_batch::Error>(),
                    Some(vit_batch::Error::DataQuality { .. })
                )
            });
            if quality {
                EXIT_DATA_QUALITY
            } else {
                EXIT_ERROR
            }
        }
    }
}

/// The context chain of an error on one line, without repeating a cause that the
/// message before it already ends with (typed errors often show their source). An
/// invalid option is named by its flag, as the user typed it.
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = match cause.downcast_ref::<vit_batch::Error>() {
            Some(vit_batch::Error::InvalidOption { option, what }) => {
                format!("--{}: {what}", option.replace('_', "-"))
            }
            _ => cause.to_string(),
        };
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
