//! `vit-batch run PIPELINE.toml`: a whole evaluation job declared in one file.
//!
//! Why it exists: CI and nightly jobs want one command, checked into the repository,
//! that trains (optionally), exports, scores, reports and gates — with the same
//! library calls as the individual subcommands, and the gate's exit code at the end.
//!
//! File format (TOML; every table is optional, every key is checked):
//!
//! ```toml
//! name = "digits"                      # optional, for messages
//! [train]   # enabled (default true), data_dir, preset, out, epochs, batch_size, lr,
//!           # weight_decay, warmup, seed, val_split | val_dir, limit_per_class,
//!           # augment_shift, threads
//! [export]  # enabled, out, checkpoint | preset (+ seed, num_labels), opset, variant
//! [score]   # enabled, data_dir, model, out, batch_size, threads, provider, top_k,
//!           # label_map, limit, overwrite (default true), ort_lib
//! [report]  # enabled, run, out, formats
//! [gate]    # enabled, baseline, candidate, max_accuracy_drop_pp,
//!           # max_class_recall_drop_pp, min_class_support, alpha,
//!           # max_throughput_drop_pct, allow_partial, junit, markdown, json
//! ```
//!
//! Rules:
//! - **Relative paths are resolved against the current working directory** (not the
//!   pipeline file's folder): run `vit-batch run pipelines/x.toml` from the repository
//!   root. Error messages show the path as written and as resolved.
//! - Stages run in the fixed order train → export → score → report → gate; a table
//!   that is absent or has `enabled = false` is skipped.
//! - Artifacts flow forward: when `[train]` runs, `[export]` exports its `out` (an
//!   explicit `export.checkpoint` is for when training is off); when `[export]` runs,
//!   `[score]` scores the exported folder and `score.model` is only the fallback used
//!   when export is off; `[report]` and `[gate]` default to `score.out` as their run.
//! - Everything is validated before the first stage starts: unknown keys, missing
//!   keys, input paths that do not exist (each named), bad thresholds, and a score
//!   output that would overwrite the gate's baseline.
//! - `score.overwrite` defaults to true: re-running a pipeline replaces the run it
//!   wrote before (only the run files listed in `score::RUN_FILES`).
//! - The result is the gate's verdict (pass / regression); without a gate, success.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::compare::{self, CompareOptions, CompareReport};
use crate::error::{Error, Result};
use crate::export::{ExportOptions, ExportSource, GraphVariant};
use crate::infer::Provider;
use crate::score::{Progress, ScoreOptions};
use crate::train::{TrainOptions, TrainProgress, ValSplit};

fn yes() -> bool {
    true
}

/// The pipeline file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineFile {
    pub name: Option<String>,
    pub train: Option<TrainStage>,
    pub export: Option<ExportStage>,
    pub score: Option<ScoreStage>,
    pub report: Option<ReportStage>,
    pub gate: Option<GateStage>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainStage {
    #[serde(default = "yes")]
    pub enabled: bool,
    pub data_dir: PathBuf,
    pub preset: String,
    pub out: PathBuf,
    pub epochs: Option<usize>,
    pub batch_size: Option<usize>,
    pub lr: Option<f64>,
    pub weight_decay: Option<f64>,
    /// Warm-up as a fraction of all steps.
    pub warmup: Option<f64>,
    pub seed: Option<u64>,
    pub val_split: Option<f64>,
    pub val_dir: Option<PathBuf>,
    pub limit_per_class: Option<usize>,
    pub augment_shift: Option<usize>,
    pub threads: Option<usize>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportStage {
    #[serde(default = "yes")]
    pub enabled: bool,
    pub out: PathBuf,
    /// Checkpoint folder (default: `train.out` when training runs).
    pub checkpoint: Option<PathBuf>,
    /// A preset with seeded random weights instead of a checkpoint.
    pub preset: Option<String>,
    pub seed: Option<u64>,
    pub num_labels: Option<usize>,
    pub opset: Option<i64>,
    /// "standard" (default) or "fused".
    pub variant: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreStage {
    #[serde(default = "yes")]
    pub enabled: bool,
    pub data_dir: PathBuf,
    /// Model folder or .onnx file; used when `[export]` does not run.
    pub model: Option<PathBuf>,
    pub out: PathBuf,
    pub batch_size: Option<usize>,
    pub threads: Option<usize>,
    /// "cpu" (default) or "cuda".
    pub provider: Option<String>,
    pub top_k: Option<usize>,
    pub label_map: Option<PathBuf>,
    pub limit: Option<usize>,
    #[serde(default = "yes")]
    pub overwrite: bool,
    pub ort_lib: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportStage {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Run folder to report on (default: `score.out`).
    pub run: Option<PathBuf>,
    /// Where to write the report (default: the run folder).
    pub out: Option<PathBuf>,
    /// Outputs, e.g. ["html", "md"] (default: all).
    pub formats: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateStage {
    #[serde(default = "yes")]
    pub enabled: bool,
    pub baseline: PathBuf,
    /// Candidate run (default: `score.out`).
    pub candidate: Option<PathBuf>,
    pub max_accuracy_drop_pp: Option<f64>,
    pub max_class_recall_drop_pp: Option<f64>,
    pub min_class_support: Option<u64>,
    pub alpha: Option<f64>,
    pub max_throughput_drop_pct: Option<f64>,
    #[serde(default)]
    pub allow_partial: bool,
    pub junit: Option<PathBuf>,
    pub markdown: Option<PathBuf>,
    pub json: Option<PathBuf>,
}

/// One resolved stage, ready to run.
#[derive(Debug, Clone)]
pub enum Stage {
    Train(TrainOptions),
    Export(ExportOptions),
    Score(ScoreOptions),
    Report(ReportPlan),
    Gate(GatePlan),
}

impl Stage {
    pub fn name(&self) -> &'static str {
        match self {
            Stage::Train(_) => "train",
            Stage::Export(_) => "export",
            Stage::Score(_) => "score",
            Stage::Report(_) => "report",
            Stage::Gate(_) => "gate",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ReportPlan {
    pub run_dir: PathBuf,
    pub out_dir: Option<PathBuf>,
    /// Empty = all formats.
    pub formats: Vec<crate::report::Format>,
}

#[derive(Debug, Clone)]
pub struct GatePlan {
    pub options: CompareOptions,
    pub junit: Option<PathBuf>,
    pub markdown: Option<PathBuf>,
    pub json: Option<PathBuf>,
}

/// A validated pipeline: its stages in run order.
#[derive(Debug, Clone)]
pub struct Plan {
    pub file: PathBuf,
    pub name: String,
    pub stages: Vec<Stage>,
    /// Notes for the user (e.g. which model the score stage uses and why).
    pub notes: Vec<String>,
}

/// What a pipeline run did.
pub struct PipelineOutcome {
    /// Names of the stages that ran, in order.
    pub ran: Vec<&'static str>,
    /// The gate's report, when the pipeline has a gate.
    pub gate: Option<CompareReport>,
}

impl PipelineOutcome {
    /// False only when the gate found a regression.
    pub fn passed(&self) -> bool {
        self.gate.as_ref().is_none_or(|g| g.passed())
    }
}

fn perr(file: &Path, what: impl std::fmt::Display) -> Error {
    Error::Pipeline {
        what: format!("{}: {what}", file.display()),
    }
}

/// Parse a pipeline file; unknown and missing keys are errors naming the key.
pub fn parse(file: &Path, text: &str) -> Result<PipelineFile> {
    toml::from_str(text).map_err(|e| {
        let msg = e
            .to_string()
            .replace("unknown field", "unknown key")
            .replace("missing field", "missing key");
        perr(file, msg.trim_end())
    })
}

/// Read and validate a pipeline file (nothing runs).
pub fn load(file: &Path) -> Result<Plan> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        perr(
            file,
            format!("cannot read the pipeline file: {e} (cwd {})", cwd_display()),
        )
    })?;
    let pf = parse(file, &text)?;
    plan(file, &pf)
}

fn cwd_display() -> String {
    std::env::current_dir()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// Checks that an input path exists, naming the key, the path and where it was looked for.
struct Checker<'a> {
    file: &'a Path,
}

impl Checker<'_> {
    fn missing(&self, key: &str, p: &Path, what: &str) -> Error {
        let resolved = if p.is_absolute() {
            String::new()
        } else {
            format!(
                " (resolved against the current directory: {})",
                Path::new(&cwd_display()).join(p).display()
            )
        };
        perr(
            self.file,
            format!("{key} = \"{}\": {what}{resolved}", p.display()),
        )
    }
    fn dir(&self, key: &str, p: &Path) -> Result<()> {
        if p.is_dir() {
            Ok(())
        } else if p.exists() {
            Err(self.missing(key, p, "is not a folder"))
        } else {
            Err(self.missing(key, p, "no such folder"))
        }
    }
    fn exists(&self, key: &str, p: &Path) -> Result<()> {
        if p.exists() {
            Ok(())
        } else {
            Err(self.missing(key, p, "no such file or folder"))
        }
    }
    fn run(&self, key: &str, p: &Path) -> Result<()> {
        self.dir(key, p)?;
        for f in ["metrics.json", "predictions.parquet"] {
            if !p.join(f).is_file() {
                return Err(self.missing(
                    key,
                    p,
                    &format!("holds no {f} (not a finished `vit-batch score` run)"),
                ));
            }
        }
        Ok(())
    }
}

fn same_path(a: &Path, b: &Path) -> bool {
    let canon = |p: &Path| {
        std::fs::canonicalize(p).unwrap_or_else(|_| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                Path::new(&cwd_display()).join(p)
            }
        })
    };
    canon(a) == canon(b)
}

/// Resolve and validate a parsed pipeline into the stages to run.
pub fn plan(file: &Path, pf: &PipelineFile) -> Result<Plan> {
    let ck = Checker { file };
    let mut stages = vec![];
    let mut notes = vec![];
    let on = |e: bool| e;

    let train = pf.train.as_ref().filter(|t| on(t.enabled));
    if let Some(t) = train {
        ck.dir("[train] data_dir", &t.data_dir)?;
        if let Some(v) = &t.val_dir {
            ck.dir("[train] val_dir", v)?;
            if t.val_split.is_some() {
                return Err(perr(file, "[train]: give val_split or val_dir, not both"));
            }
        }
        let mut o = TrainOptions::new(&t.data_dir, &t.preset, &t.out);
        if let Some(v) = t.epochs {
            o.epochs = v;
        }
        if let Some(v) = t.batch_size {
            o.batch_size = v;
        }
        if let Some(v) = t.lr {
            o.lr = v;
        }
        if let Some(v) = t.weight_decay {
            o.weight_decay = v;
        }
        if let Some(v) = t.warmup {
            o.warmup_fraction = v;
        }
        if let Some(v) = t.seed {
            o.seed = v;
        }
        o.val = match (&t.val_dir, t.val_split) {
            (Some(d), _) => ValSplit::Dir(d.clone()),
            (None, Some(f)) => ValSplit::Fraction(f),
            (None, None) => o.val,
        };
        o.limit_per_class = t.limit_per_class;
        if let Some(v) = t.augment_shift {
            o.augment_shift = v;
        }
        o.threads = t.threads;
        o.progress = TrainProgress::Plain;
        stages.push(Stage::Train(o));
    }

    let export = pf.export.as_ref().filter(|e| on(e.enabled));
    if let Some(e) = export {
        let source = match (&e.checkpoint, &e.preset, train) {
            (Some(_), Some(_), _) => {
                return Err(perr(
                    file,
                    "[export]: give checkpoint or preset, not both",
                ))
            }
            (_, Some(p), Some(_)) => {
                return Err(perr(
                    file,
                    format!("[export] preset = \"{p}\" but [train] runs: the trained checkpoint is exported; remove preset or disable [train]"),
                ))
            }
            (_, None, Some(t)) => {
                if let Some(c) = &e.checkpoint {
                    if !same_path(c, &t.out) {
                        notes.push(format!(
                            "export: exporting the trained checkpoint {} ([export] checkpoint = {} is used only when [train] is off)",
                            t.out.display(),
                            c.display()
                        ));
                    }
                }
                ExportSource::Checkpoint(t.out.clone())
            }
            (Some(c), None, None) => {
                ck.dir("[export] checkpoint", c)?;
                ExportSource::Checkpoint(c.clone())
            }
            (None, Some(p), None) => ExportSource::Preset {
                name: p.clone(),
                seed: e.seed.unwrap_or(0),
                num_labels: e.num_labels.unwrap_or(10),
            },
            (None, None, None) => {
                return Err(perr(
                    file,
                    "[export]: missing key checkpoint (or preset); with [train] off there is nothing to export",
                ))
            }
        };
        let mut o = ExportOptions::new(source, &e.out);
        if let Some(v) = e.opset {
            o.opset = v;
        }
        o.variant = match e.variant.as_deref() {
            None | Some("standard") => GraphVariant::Standard,
            Some("fused") => GraphVariant::Fused,
            Some(v) => {
                return Err(perr(
                    file,
                    format!("[export] variant = \"{v}\": expected \"standard\" or \"fused\""),
                ))
            }
        };
        stages.push(Stage::Export(o));
    }

    let score = pf.score.as_ref().filter(|s| on(s.enabled));
    if let Some(s) = score {
        ck.dir("[score] data_dir", &s.data_dir)?;
        let model = match (export, &s.model) {
            (Some(e), m) => {
                if let Some(m) = m {
                    if !same_path(m, &e.out) {
                        notes.push(format!(
                            "score: scoring the exported model {} ([score] model = {} is used only when [export] is off)",
                            e.out.display(),
                            m.display()
                        ));
                    }
                }
                e.out.clone()
            }
            (None, Some(m)) => {
                ck.exists("[score] model", m)?;
                m.clone()
            }
            (None, None) => {
                return Err(perr(
                    file,
                    "[score]: missing key model (needed when [export] does not run)",
                ))
            }
        };
        if let Some(l) = &s.label_map {
            ck.exists("[score] label_map", l)?;
        }
        if let Some(l) = &s.ort_lib {
            ck.exists("[score] ort_lib", l)?;
        }
        let mut o = ScoreOptions::new(s.data_dir.clone(), model, s.out.clone());
        if let Some(v) = s.batch_size {
            o.batch_size = v;
        }
        if let Some(v) = s.threads {
            o.threads = v;
        }
        if let Some(p) = &s.provider {
            o.provider = p
                .parse::<Provider>()
                .map_err(|e| perr(file, format!("[score] provider = \"{p}\": {e}")))?;
        }
        if let Some(v) = s.top_k {
            o.top_k = v;
        }
        o.label_map = s.label_map.clone();
        o.limit = s.limit;
        o.ort_lib = s.ort_lib.clone();
        o.overwrite = s.overwrite;
        o.progress = Progress::Auto;
        stages.push(Stage::Score(o));
    }

    let report = pf.report.as_ref().filter(|r| on(r.enabled));
    if let Some(r) = report {
        let run_dir = match (&r.run, score) {
            (Some(p), Some(s)) if !same_path(p, &s.out) => {
                ck.run("[report] run", p)?;
                p.clone()
            }
            (_, Some(s)) => s.out.clone(),
            (Some(p), None) => {
                ck.run("[report] run", p)?;
                p.clone()
            }
            (None, None) => {
                return Err(perr(
                    file,
                    "[report]: missing key run (needed when [score] does not run)",
                ))
            }
        };
        let formats = r
            .formats
            .iter()
            .flatten()
            .map(|x| {
                x.parse::<crate::report::Format>()
                    .map_err(|e| perr(file, format!("[report] formats: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        stages.push(Stage::Report(ReportPlan {
            run_dir,
            out_dir: r.out.clone(),
            formats,
        }));
    }

    let gate = pf.gate.as_ref().filter(|g| on(g.enabled));
    if let Some(g) = gate {
        ck.run("[gate] baseline", &g.baseline)?;
        let candidate = match (&g.candidate, score) {
            (Some(c), Some(s)) if !same_path(c, &s.out) => {
                ck.run("[gate] candidate", c)?;
                c.clone()
            }
            (_, Some(s)) => s.out.clone(),
            (Some(c), None) => {
                ck.run("[gate] candidate", c)?;
                c.clone()
            }
            (None, None) => {
                return Err(perr(
                    file,
                    "[gate]: missing key candidate (needed when [score] does not run)",
                ))
            }
        };
        if same_path(&g.baseline, &candidate) {
            return Err(perr(
                file,
                format!(
                    "[gate] baseline = \"{}\" is also the candidate run{}",
                    g.baseline.display(),
                    if score.is_some() {
                        " ([score] out): scoring would overwrite the baseline"
                    } else {
                        ""
                    }
                ),
            ));
        }
        let mut o = CompareOptions::new(&g.baseline, candidate);
        if let Some(v) = g.max_accuracy_drop_pp {
            o.max_accuracy_drop_pp = v;
        }
        if let Some(v) = g.max_class_recall_drop_pp {
            o.max_class_recall_drop_pp = v;
        }
        if let Some(v) = g.min_class_support {
            o.min_class_support = v;
        }
        if let Some(v) = g.alpha {
            o.alpha = v;
        }
        o.max_throughput_drop_pct = g.max_throughput_drop_pct;
        o.allow_partial = g.allow_partial;
        o.validate()
            .map_err(|e| perr(file, format!("[gate]: {e}")))?;
        stages.push(Stage::Gate(GatePlan {
            options: o,
            junit: g.junit.clone(),
            markdown: g.markdown.clone(),
            json: g.json.clone(),
        }));
    }
    if stages.is_empty() {
        return Err(perr(
            file,
            "no stage to run (add [score], [gate], ... or set enabled = true)",
        ));
    }
    Ok(Plan {
        file: file.to_path_buf(),
        name: pf.name.clone().unwrap_or_else(|| {
            file.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "pipeline".into())
        }),
        stages,
        notes,
    })
}

fn stage_err(stage: &str, e: Error) -> Error {
    Error::Pipeline {
        what: format!("stage {stage} failed: {e}"),
    }
}

/// Run a validated plan; stage progress goes to stderr unless `quiet`.
pub fn run(plan: &Plan, quiet: bool) -> Result<PipelineOutcome> {
    let say = |m: String| {
        if !quiet {
            eprintln!("vit-batch run: {m}");
        }
    };
    for n in &plan.notes {
        say(format!("note: {n}"));
    }
    let total = plan.stages.len();
    let mut out = PipelineOutcome {
        ran: vec![],
        gate: None,
    };
    for (i, st) in plan.stages.iter().enumerate() {
        let name = st.name();
        let head = format!("[{}/{total}] {name}", i + 1);
        match st {
            Stage::Train(o) => {
                let mut o = o.clone();
                if quiet {
                    o.progress = TrainProgress::Quiet;
                }
                say(format!(
                    "{head}: {} on {} -> {}",
                    o.preset,
                    o.data_dir.display(),
                    o.out_dir.display()
                ));
                let s = crate::train::train(&o).map_err(|e| stage_err(name, e))?;
                say(format!(
                    "{head}: done in {:.1}s ({} images, {} classes)",
                    s.wall_s,
                    s.num_train,
                    s.classes.len()
                ));
            }
            Stage::Export(o) => {
                say(format!("{head}: -> {}", o.out_dir.display()));
                let s = crate::export::export(o).map_err(|e| stage_err(name, e))?;
                for w in &s.warnings {
                    say(format!("{head}: warning: {w}"));
                }
                say(format!("{head}: wrote {}", s.model_path.display()));
            }
            Stage::Score(o) => {
                let mut o = o.clone();
                if quiet {
                    o.progress = Progress::Quiet;
                }
                say(format!(
                    "{head}: {} with {} -> {}",
                    o.data_dir.display(),
                    o.model.display(),
                    o.out_dir.display()
                ));
                let s = crate::score::score(&o).map_err(|e| stage_err(name, e))?;
                let m = &s.metrics.metrics;
                say(format!(
                    "{head}: {} images, top-1 {:.2}%, {:.1} img/s",
                    m.counts.images,
                    100.0 * m.top1,
                    s.metrics.throughput.images_per_s
                ));
            }
            Stage::Report(r) => {
                say(format!("{head}: {}", r.run_dir.display()));
                let s = run_report(r).map_err(|e| stage_err(name, e))?;
                say(format!(
                    "{head}: wrote {} file(s) to {}",
                    s.files.len(),
                    s.out_dir.display()
                ));
            }
            Stage::Gate(g) => {
                say(format!(
                    "{head}: {} vs baseline {}",
                    g.options.candidate.display(),
                    g.options.baseline.display()
                ));
                let r = compare::compare(&g.options).map_err(|e| stage_err(name, e))?;
                if let Some(p) = &g.json {
                    r.write_json(p).map_err(|e| stage_err(name, e))?;
                }
                if let Some(p) = &g.markdown {
                    r.write_markdown(p).map_err(|e| stage_err(name, e))?;
                }
                if let Some(p) = &g.junit {
                    r.write_junit(p).map_err(|e| stage_err(name, e))?;
                }
                out.gate = Some(r);
            }
        }
        out.ran.push(name);
    }
    Ok(out)
}

/// The report stage: `report::render` on the run folder.
fn run_report(r: &ReportPlan) -> Result<crate::report::ReportSummary> {
    crate::report::render(&crate::report::ReportOptions {
        run_dir: r.run_dir.clone(),
        out_dir: r.out_dir.clone(),
        formats: r.formats.clone(),
    })
}
