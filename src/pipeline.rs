//! `vit-batch run PIPELINE.toml`: a whole evaluation job declared in one file.
//!
//! Why it exists: CI and nightly jobs want one command, checked into the repository,
//! that trains (optionally), exports, scores, reports and gates — with the same
//! library calls as the individual subcommands, and the gate's exit code at the end.
//!
//! File format (TOML; every table is optional, every key is checked). Each table
//! takes exactly the options of its command, with the same names and defaults
//! (`--batch-size` is `batch_size`; see `crate::options`), plus `enabled`:
//!
//! ```toml
//! name = "digits"   # optional, for messages
//! [train]           # `vit-batch train` options (data_dir, preset, out, epochs, ...)
//! [export]          # `vit-batch export` options (out, checkpoint | preset, variant, ...)
//! [score]           # `vit-batch score` options (data_dir, model, out, batch_size, ...)
//! [report]          # `vit-batch report` options (run_dir, out, format)
//! [gate]            # `vit-batch compare` options (baseline, candidate, thresholds, junit, ...)
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
//!   keys, bad values, input paths that do not exist (each named), a score output
//!   that would overwrite the gate's baseline, a score output that is, is inside or
//!   contains its data_dir or holds files vit-batch did not write, and gate files
//!   (json, markdown, junit) inside either compared run folder.
//! - `score.overwrite` defaults to false, as on the command line: a pipeline that is
//!   meant to be re-run into the same folder says `overwrite = true`.
//! - The result is the gate's verdict (pass / regression); without a gate, success.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::compare::{self, CompareReport};
use crate::error::{Error, Result};
use crate::options::{
    CompareOptions, ExportOptions, ExportSource, ReportOptions, ScoreOptions, TrainOptions,
};
use crate::progress::Progress;

/// The pipeline file as written: each stage is kept as a TOML table until the
/// artifacts of the stages before it have been filled in.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PipelineFile {
    name: Option<String>,
    train: Option<toml::Table>,
    export: Option<toml::Table>,
    score: Option<toml::Table>,
    report: Option<toml::Table>,
    gate: Option<toml::Table>,
}

/// One resolved stage, ready to run.
// A pipeline holds at most five stages: the size difference of the variants costs
// nothing worth a Box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Stage {
    /// `vit-batch train`.
    Train(TrainOptions),
    /// `vit-batch export`.
    Export(ExportOptions),
    /// `vit-batch score`.
    Score(ScoreOptions),
    /// `vit-batch report`.
    Report(ReportOptions),
    /// `vit-batch compare`.
    Gate(CompareOptions),
}

impl Stage {
    /// The stage's table name.
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

/// A validated pipeline: its stages in run order.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The pipeline file.
    pub file: PathBuf,
    /// Its `name`, else the file's stem.
    pub name: String,
    /// The stages to run, in order.
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

/// serde's words for TOML's: a pipeline file has keys, not fields.
fn toml_words(e: impl std::fmt::Display) -> String {
    e.to_string()
        .replace("unknown field", "unknown key")
        .replace("missing field", "missing key")
        .trim_end()
        .to_string()
}

/// Read and validate a pipeline file (nothing runs).
pub fn load(file: &Path) -> Result<Plan> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        perr(
            file,
            format!("cannot read the pipeline file: {e} (cwd {})", cwd_display()),
        )
    })?;
    let pf: PipelineFile = toml::from_str(&text).map_err(|e| perr(file, toml_words(e)))?;
    Planner::new(file).plan(pf)
}

fn cwd_display() -> String {
    std::env::current_dir()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "?".into())
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

/// Turns the tables of a pipeline file into stages, naming the table, the key and
/// the path in every error.
struct Planner<'a> {
    file: &'a Path,
    stages: Vec<Stage>,
    notes: Vec<String>,
}

impl<'a> Planner<'a> {
    fn new(file: &'a Path) -> Self {
        Planner {
            file,
            stages: vec![],
            notes: vec![],
        }
    }

    fn err(&self, what: impl std::fmt::Display) -> Error {
        perr(self.file, what)
    }

    /// A table's options, or `None` when it is absent or has `enabled = false`.
    fn enabled(&self, table: &'static str, t: Option<toml::Table>) -> Result<Option<toml::Table>> {
        let Some(mut t) = t else { return Ok(None) };
        match t.remove("enabled") {
            None | Some(toml::Value::Boolean(true)) => Ok(Some(t)),
            Some(toml::Value::Boolean(false)) => Ok(None),
            Some(v) => Err(self.err(format!("[{table}] enabled = {v}: expected true or false"))),
        }
    }

    /// Deserialize a table into the command's options and check their values.
    fn options<T: DeserializeOwned>(
        &self,
        table: &'static str,
        t: toml::Table,
        validate: impl Fn(&T) -> Result<()>,
    ) -> Result<T> {
        let o: T = t
            .try_into()
            .map_err(|e| self.err(format!("[{table}]: {}", toml_words(e))))?;
        validate(&o).map_err(|e| match e {
            Error::InvalidOption { option, what } => {
                self.err(format!("[{table}] {option}: {what}"))
            }
            other => self.err(format!("[{table}]: {other}")),
        })?;
        Ok(o)
    }

    fn missing(&self, key: &str, p: &Path, what: &str) -> Error {
        let resolved = if p.is_absolute() {
            String::new()
        } else {
            format!(
                " (resolved against the current directory: {})",
                Path::new(&cwd_display()).join(p).display()
            )
        };
        self.err(format!("{key} = \"{}\": {what}{resolved}", p.display()))
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

    fn finished_run(&self, key: &str, p: &Path) -> Result<()> {
        self.dir(key, p)?;
        crate::run::Run::check_finished(p).map_err(|e| match e {
            Error::NotARun { missing, .. } => self.missing(
                key,
                p,
                &format!("holds no {missing} (not a finished `vit-batch score` run)"),
            ),
            other => self.err(format!("{key}: {other}")),
        })
    }

    /// Fill `key` of a stage's table with an artifact of an earlier stage. When the
    /// table names another path there, keep the artifact and say so.
    fn flow(
        &mut self,
        t: &mut toml::Table,
        keys: &[&str],
        artifact: &Path,
        note: impl Fn(&str) -> String,
    ) {
        let given = keys.iter().find_map(|k| t.remove(*k));
        if let Some(toml::Value::String(g)) = &given {
            if !same_path(Path::new(g), artifact) {
                self.notes.push(note(g));
            }
        }
        t.insert(
            keys[0].to_string(),
            toml::Value::String(artifact.to_string_lossy().into_owned()),
        );
    }

    fn plan(mut self, pf: PipelineFile) -> Result<Plan> {
        let train = self.train(pf.train)?;
        let export = self.export(pf.export, train.as_ref())?;
        let score = self.score(pf.score, export.as_ref())?;
        self.report(pf.report, score.as_ref())?;
        self.gate(pf.gate, score.as_ref())?;
        if self.stages.is_empty() {
            return Err(
                self.err("no stage to run (add [score], [gate], ... or set enabled = true)")
            );
        }
        let name = pf.name.clone().unwrap_or_else(|| {
            self.file
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "pipeline".into())
        });
        Ok(Plan {
            file: self.file.to_path_buf(),
            name,
            stages: self.stages,
            notes: self.notes,
        })
    }

    fn train(&mut self, t: Option<toml::Table>) -> Result<Option<TrainOptions>> {
        let Some(t) = self.enabled("train", t)? else {
            return Ok(None);
        };
        let o: TrainOptions = self.options("train", t, TrainOptions::validate)?;
        self.dir("[train] data_dir", &o.data_dir)?;
        if let Some(v) = &o.val {
            self.dir("[train] val", v)?;
        }
        self.stages.push(Stage::Train(o.clone()));
        Ok(Some(o))
    }

    fn export(
        &mut self,
        t: Option<toml::Table>,
        train: Option<&TrainOptions>,
    ) -> Result<Option<ExportOptions>> {
        let Some(mut t) = self.enabled("export", t)? else {
            return Ok(None);
        };
        if let Some(tr) = train {
            if let Some(p) = t.get("preset") {
                return Err(self.err(format!(
                    "[export] preset = {p} but [train] runs: the trained checkpoint is exported; remove preset or disable [train]"
                )));
            }
            self.flow(&mut t, &["checkpoint"], &tr.out, |c| {
                format!(
                    "export: exporting the trained checkpoint {} ([export] checkpoint = {c} is used only when [train] is off)",
                    tr.out.display()
                )
            });
        }
        let o: ExportOptions = self.options("export", t, ExportOptions::validate)?;
        if train.is_none() {
            if let Ok(ExportSource::Checkpoint(c)) = o.source() {
                self.dir("[export] checkpoint", &c)?;
            }
        }
        self.stages.push(Stage::Export(o.clone()));
        Ok(Some(o))
    }

    fn score(
        &mut self,
        t: Option<toml::Table>,
        export: Option<&ExportOptions>,
    ) -> Result<Option<ScoreOptions>> {
        let Some(mut t) = self.enabled("score", t)? else {
            return Ok(None);
        };
        match export {
            Some(e) => self.flow(&mut t, &["model"], &e.out, |m| {
                format!(
                    "score: scoring the exported model {} ([score] model = {m} is used only when [export] is off)",
                    e.out.display()
                )
            }),
            None if !t.contains_key("model") => {
                return Err(self.err(
                    "[score]: missing key model (needed when [export] does not run)",
                ))
            }
            None => {}
        }
        let o: ScoreOptions = self.options("score", t, ScoreOptions::validate)?;
        self.dir("[score] data_dir", &o.data_dir)?;
        if export.is_none() {
            self.exists("[score] model", &o.model)?;
        }
        if let Some(l) = &o.label_map {
            self.exists("[score] label_map", l)?;
        }
        if let Some(l) = &o.ort_lib {
            self.exists("[score] ort_lib", l)?;
        }
        if let Some(l) = &o.openvino_lib {
            self.exists("[score] openvino_lib", l)?;
        }
        crate::score::check_out_apart(&o)
            .and_then(|()| crate::run::check_out_dir(&o.out, o.out_policy()))
            .map_err(|e| self.err(format!("[score]: {e}")))?;
        self.stages.push(Stage::Score(o.clone()));
        Ok(Some(o))
    }

    /// The run a `[report]` or `[gate]` reads: the score stage's output unless the
    /// table names another finished run.
    fn consumed_run(
        &mut self,
        table: &'static str,
        t: &mut toml::Table,
        keys: &[&str],
        score: Option<&ScoreOptions>,
    ) -> Result<()> {
        let given = keys.iter().find_map(|k| t.get(*k)).cloned();
        match (given, score) {
            (Some(toml::Value::String(p)), Some(s)) if !same_path(Path::new(&p), &s.out) => {
                self.finished_run(&format!("[{table}] {}", keys[0]), Path::new(&p))
            }
            (_, Some(s)) => {
                for k in keys {
                    t.remove(*k);
                }
                t.insert(
                    keys[0].to_string(),
                    toml::Value::String(s.out.to_string_lossy().into_owned()),
                );
                Ok(())
            }
            (Some(toml::Value::String(p)), None) => {
                self.finished_run(&format!("[{table}] {}", keys[0]), Path::new(&p))
            }
            (Some(_), None) => Ok(()), // a wrong type: deserializing names it
            (None, None) => Err(self.err(format!(
                "[{table}]: missing key {} (needed when [score] does not run)",
                keys[0]
            ))),
        }
    }

    fn report(&mut self, t: Option<toml::Table>, score: Option<&ScoreOptions>) -> Result<()> {
        let Some(mut t) = self.enabled("report", t)? else {
            return Ok(());
        };
        self.consumed_run("report", &mut t, &["run_dir", "run"], score)?;
        let o: ReportOptions = self.options("report", t, |_| Ok(()))?;
        self.stages.push(Stage::Report(o));
        Ok(())
    }

    fn gate(&mut self, t: Option<toml::Table>, score: Option<&ScoreOptions>) -> Result<()> {
        let Some(mut t) = self.enabled("gate", t)? else {
            return Ok(());
        };
        if let Some(toml::Value::String(b)) = t.get("baseline") {
            self.finished_run("[gate] baseline", Path::new(b))?;
        }
        self.consumed_run("gate", &mut t, &["candidate"], score)?;
        let o: CompareOptions = self.options("gate", t, CompareOptions::validate)?;
        if same_path(&o.baseline, &o.candidate) {
            return Err(self.err(format!(
                "[gate] baseline = \"{}\" is also the candidate run{}",
                o.baseline.display(),
                if score.is_some() {
                    " ([score] out): scoring would overwrite the baseline"
                } else {
                    ""
                }
            )));
        }
        crate::run::check_gate_outputs(&o).map_err(|e| self.err(format!("[gate]: {e}")))?;
        self.stages.push(Stage::Gate(o));
        Ok(())
    }
}

fn stage_err(stage: &'static str, e: Error) -> Error {
    Error::Stage {
        stage,
        cause: Box::new(e),
    }
}

/// Run a validated plan; stage progress and notes go to `progress`.
pub fn run(plan: &Plan, progress: &mut dyn Progress) -> Result<PipelineOutcome> {
    for n in &plan.notes {
        progress.note(&format!("note: {n}"));
    }
    let total = plan.stages.len();
    let mut out = PipelineOutcome {
        ran: vec![],
        gate: None,
    };
    for (i, st) in plan.stages.iter().enumerate() {
        let name = st.name();
        let head = format!("[{}/{total}] {name}", i + 1);
        run_stage(st, &head, progress, &mut out).map_err(|e| stage_err(name, e))?;
        out.ran.push(name);
    }
    Ok(out)
}

fn run_stage(
    st: &Stage,
    head: &str,
    progress: &mut dyn Progress,
    out: &mut PipelineOutcome,
) -> Result<()> {
    match st {
        Stage::Train(o) => {
            progress.note(&format!(
                "{head}: {} on {} -> {}",
                o.preset,
                o.data_dir.display(),
                o.out.display()
            ));
            let s = crate::train::train(o, progress)?;
            progress.note(&format!(
                "{head}: done in {:.1}s ({} images, {} classes)",
                s.wall_s,
                s.num_train,
                s.classes.len()
            ));
        }
        Stage::Export(o) => {
            progress.note(&format!("{head}: -> {}", o.out.display()));
            let s = crate::export::export(o)?;
            for w in &s.warnings {
                progress.warn(&format!("{head}: {w}"));
            }
            progress.note(&format!("{head}: wrote {}", s.model_path.display()));
        }
        Stage::Score(o) => {
            progress.note(&format!(
                "{head}: {} with {} -> {}",
                o.data_dir.display(),
                o.model.display(),
                o.out.display()
            ));
            let s = crate::score::score(o, progress)?;
            let m = &s.metrics.metrics;
            progress.note(&format!(
                "{head}: {} images, {}, {:.1} img/s",
                m.counts.images,
                m.headline(),
                s.metrics.throughput.images_per_s
            ));
        }
        Stage::Report(r) => {
            progress.note(&format!("{head}: {}", r.run_dir.display()));
            let s = crate::report::render(r)?;
            progress.note(&format!(
                "{head}: wrote {} file(s) to {}",
                s.files.len(),
                s.out_dir.display()
            ));
        }
        Stage::Gate(g) => {
            progress.note(&format!(
                "{head}: {} vs baseline {}",
                g.candidate.display(),
                g.baseline.display()
            ));
            let r = compare::compare(g)?;
            r.write_files(g)?;
            out.gate = Some(r);
        }
    }
    Ok(())
}
