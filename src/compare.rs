//! `vit-batch compare`: the regression gate between two scored runs.
//!
//! Why it exists: a CI job (or a person) needs a yes/no answer to "is the candidate
//! model worse than the baseline on this dataset?", with the evidence. This module
//! pairs the two runs' prediction rows by `path` and evaluates a fixed set of gates,
//! each with its own verdict, into a [`CompareReport`]. It decides and does not
//! present: `report::gate` writes the report as JSON, a Markdown summary (for CI job
//! summaries) and JUnit XML (one testcase per gate, for CI test reporters).
//!
//! Definitions (also in the README):
//! - A run is a folder written by `vit-batch score` (`metrics.json` +
//!   `predictions.parquet`); a path to either file selects its folder.
//! - Rows are matched by `path` (relative to the dataset folder). Images present in
//!   only one run are an error unless `allow_partial`; then only the common images are
//!   compared and the coverage is reported. The same path with a different `label` in
//!   the two runs is always an error (the data changed under the gate).
//! - Compared images: matched rows whose class folder maps to a model label in both
//!   runs (`label_id` set). A row that failed (`status = error`) counts as *not right*:
//!   a candidate must not pass by failing to produce predictions. This is the one
//!   accuracy definition of `metrics.json`'s `top1` (failed images count as wrong), so
//!   when both runs map the same classes the accuracy here is exactly each run's `top1`.
//! - Gates (all drops are baseline − candidate; a gate fails when the drop is strictly
//!   above the allowance):
//!   1. `accuracy`: top-1 accuracy drop in percentage points.
//!   2. `class_recall`: per-class recall drop in percentage points, for classes with at
//!      least `min_class_support` compared images.
//!   3. `mcnemar`: McNemar's exact test on the discordant pairs, b = right only in the
//!      baseline, c = right only in the candidate. Two-sided exact binomial p-value
//!      p = min(1, 2·P(X ≤ min(b, c))), X ~ Binomial(b + c, 1/2) — the variant of
//!      statsmodels' `mcnemar(table, exact=True)`; b + c = 0 gives p = 1. It fails when
//!      the candidate is significantly worse: c < b and p < alpha.
//!   4. `throughput` (off unless `max_throughput_drop_pct` is set): drop of
//!      `throughput.images_per_s` in percent of the baseline's.
//!   5. `labels`: both runs map the class folders onto the same model labels.
//!   6. `slices`: per value of a sliced column (support ≥ `min_class_support`), the
//!      top-1 drop within `max_slice_drop_pp` and McNemar (as gate 3) not significant.
//! - Overall verdict: fail when any gate fails (a skipped gate never fails).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::record::{Row, Status};
use crate::run::{MetricsFile, Run};

/// Slack for float noise when comparing a drop with its allowance.
const EPS: f64 = 1e-9;

use crate::options::CompareOptions;

/// A gate's (or the whole comparison's) outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Within the allowance.
    Pass,
    /// Beyond the allowance (overall: some gate failed).
    Fail,
    /// The gate is off (or had nothing to evaluate); never fails the overall verdict.
    Skipped,
}

impl Verdict {
    /// `pass`, `fail` or `skipped`, as in the JSON report.
    pub fn as_str(&self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::Skipped => "skipped",
        }
    }
}

/// One gate's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gate {
    /// `accuracy`, `class_recall`, `mcnemar` or `throughput`.
    pub name: String,
    /// Whether it passed.
    pub verdict: Verdict,
    /// The rule, e.g. "drop <= 0.50 pp".
    pub threshold: String,
    /// What was measured, e.g. "97.22% -> 96.94% (drop 0.28 pp)".
    pub observed: String,
    /// One sentence for humans (why it passed or failed).
    pub message: String,
}

/// Where a run came from (from its `metrics.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    /// The run folder.
    pub dir: String,
    /// The model as given to `score`.
    pub model: String,
    /// SHA-256 of the model file.
    pub model_sha256: String,
    /// The scored dataset.
    pub data_dir: String,
    /// Rows in `predictions.parquet`.
    pub rows: u64,
    /// `top1` as recorded in `metrics.json` (over all its evaluated rows).
    pub recorded_top1: f64,
    /// `throughput.images_per_s` of `metrics.json`.
    pub images_per_s: f64,
}

/// How well the two runs' image sets overlap.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Coverage {
    /// Paths in both runs.
    pub matched: u64,
    /// Matched paths with a mapped label in both runs (the compared images).
    pub compared: u64,
    /// Paths only in the baseline.
    pub only_baseline: u64,
    /// Paths only in the candidate.
    pub only_candidate: u64,
    /// Up to 10 examples of paths only in the baseline.
    pub only_baseline_examples: Vec<String>,
    /// Up to 10 examples of paths only in the candidate.
    pub only_candidate_examples: Vec<String>,
    /// Matched paths without a mapped label in at least one run (not compared).
    pub unmapped: u64,
    /// Compared rows that failed (status error) in the baseline; they count as wrong.
    pub baseline_errors: u64,
    /// Compared rows that failed in the candidate; they count as wrong.
    pub candidate_errors: u64,
    /// `matched` / paths in either run.
    pub fraction: f64,
    /// True when the image sets differ (only possible with `allow_partial`).
    pub partial: bool,
}

/// Top-1 accuracy of both runs over the compared images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Accuracy {
    /// Baseline top-1 accuracy (0..=1).
    pub baseline: f64,
    /// Candidate top-1 accuracy (0..=1).
    pub candidate: f64,
    /// baseline − candidate, in percentage points (positive = worse).
    pub drop_pp: f64,
    /// Compared images right in the baseline.
    pub baseline_right: u64,
    /// Compared images right in the candidate.
    pub candidate_right: u64,
    /// Compared images.
    pub compared: u64,
}

/// McNemar's exact test on the images whose correctness changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct McNemar {
    /// Right in the baseline only (regressions).
    pub b: u64,
    /// Right in the candidate only (fixes).
    pub c: u64,
    /// Two-sided exact p-value ([`mcnemar_exact_p`]).
    pub p_value: f64,
    /// The significance level the gate used.
    pub alpha: f64,
    /// The variant used, spelled out.
    pub test: String,
}

/// Recall of one class in both runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassDelta {
    /// Class folder name.
    pub class: String,
    /// Compared images of the class.
    pub support: u64,
    /// Recall in the baseline (0..=1).
    pub baseline_recall: f64,
    /// Recall in the candidate (0..=1).
    pub candidate_recall: f64,
    /// baseline − candidate, in percentage points (positive = worse).
    pub drop_pp: f64,
    /// support >= min_class_support.
    pub gated: bool,
    /// gated and the drop is above the allowance.
    pub regressed: bool,
}

/// Top-1 of one slice (one value of a sliced manifest column) in both runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SliceDelta {
    /// The column.
    pub column: String,
    /// Its value ("" for null).
    pub value: String,
    /// Compared images in the slice.
    pub support: u64,
    /// Top-1 in the baseline (0..=1).
    pub baseline_top1: f64,
    /// Top-1 in the candidate (0..=1).
    pub candidate_top1: f64,
    /// baseline − candidate, in percentage points (positive = worse).
    pub drop_pp: f64,
    /// Right in the baseline only.
    pub b: u64,
    /// Right in the candidate only.
    pub c: u64,
    /// McNemar's exact p on (b, c).
    pub p_value: f64,
    /// support >= min_class_support.
    pub gated: bool,
    /// gated, and the drop is above the allowance or McNemar finds the candidate
    /// significantly worse on the slice.
    pub regressed: bool,
}

/// An image whose correctness changed between the runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Flip {
    /// Image path, relative to the dataset folder.
    pub path: String,
    /// Its class folder.
    pub label: String,
    /// Baseline's predicted label; None when the row failed.
    pub baseline_pred: Option<String>,
    /// Candidate's predicted label; None when the row failed.
    pub candidate_pred: Option<String>,
    /// Baseline's top-1 score.
    pub baseline_score: Option<f32>,
    /// Candidate's top-1 score.
    pub candidate_score: Option<f32>,
    /// The failure message of a baseline row that errored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_error: Option<String>,
    /// The failure message of a candidate row that errored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate_error: Option<String>,
}

/// Everything `compare` found; `verdict` is the overall one. `report::gate` writes
/// it out ([`CompareReport::write_files`], [`CompareReport::one_line`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompareReport {
    /// Fail when any gate failed.
    pub verdict: Verdict,
    /// Every gate, in a fixed order (accuracy, class_recall, mcnemar, throughput,
    /// labels, slices).
    pub gates: Vec<Gate>,
    /// The options compared with.
    pub options: CompareOptions,
    /// The baseline run.
    pub baseline: RunSummary,
    /// The candidate run.
    pub candidate: RunSummary,
    /// How the image sets overlap.
    pub coverage: Coverage,
    /// Top-1 accuracy of both runs.
    pub accuracy: Accuracy,
    /// McNemar's test.
    pub mcnemar: McNemar,
    /// Recall per class (sorted by class).
    pub per_class: Vec<ClassDelta>,
    /// Top-1 per slice (sorted by column, then value); empty when not sliced.
    #[serde(default)]
    pub slices: Vec<SliceDelta>,
    /// Right in the baseline, wrong in the candidate (sorted by path).
    pub regressions: Vec<Flip>,
    /// Wrong in the baseline, right in the candidate (sorted by path).
    pub fixes: Vec<Flip>,
    /// What the two runs were made with, side by side (model, preprocessing,
    /// provider, ONNX Runtime, top-k, dataset); every output shows it first.
    pub metadata: Vec<MetaDiff>,
    /// Loud notes: what was allowed that makes the comparison weaker (different
    /// data, changed labels, a partial image set).
    pub warnings: Vec<String>,
}

/// One line of the metadata diff.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetaDiff {
    /// What is compared (`model_sha256`, `preprocess`, ...).
    pub key: String,
    /// The baseline's value.
    pub baseline: String,
    /// The candidate's value.
    pub candidate: String,
    /// The two differ.
    pub differs: bool,
}

impl CompareReport {
    /// True unless the overall verdict is fail.
    pub fn passed(&self) -> bool {
        self.verdict != Verdict::Fail
    }
}

/// Name of McNemar's variant, recorded in every report.
pub(crate) const MCNEMAR_VARIANT: &str = "McNemar exact test: two-sided binomial, p = min(1, 2*P(X <= min(b,c))), X ~ Bin(b+c, 0.5) (statsmodels mcnemar(exact=True))";

/// Two-sided exact McNemar p-value for discordant counts `b` and `c`:
/// `min(1, 2 · BinomCDF(min(b, c); b + c, 1/2))`, as statsmodels'
/// `mcnemar([[_, b], [c, _]], exact=True).pvalue`. `b + c = 0` gives 1.
///
/// Computed in log space without lgamma: with m = min(b, c) and n = b + c, the
/// largest term of the CDF is t_m = C(n, m) / 2^n, with ln C(n, m) summed as
/// Σ ln((n − m + i) / i) (compensated summation), and the CDF is t_m · Σ_{k ≤ m}
/// t_k / t_m with the ratios from the recurrence t_{k−1} / t_k = k / (n − k + 1),
/// summed from the largest term down until they no longer change the sum.
pub fn mcnemar_exact_p(b: u64, c: u64) -> f64 {
    let n = b + c;
    if n == 0 {
        return 1.0;
    }
    let m = b.min(c);
    // 2·P(X <= m) >= 1 whenever m >= n/2 (i.e. b == c).
    if 2 * m >= n {
        return 1.0;
    }
    let mut ln_c = Neumaier::default();
    for i in 1..=m {
        ln_c.add((((n - m + i) as f64) / (i as f64)).ln());
    }
    let ln_tm = ln_c.sum() - (n as f64) * std::f64::consts::LN_2;
    // Ratios t_k / t_m for k = m, m−1, ..., 0 (decreasing, since m < n/2).
    let mut s = Neumaier::default();
    let mut r = 1.0f64;
    s.add(r);
    let mut k = m;
    while k > 0 {
        r *= k as f64 / (n - k + 1) as f64;
        if r < 1e-18 * s.sum() {
            break;
        }
        s.add(r);
        k -= 1;
    }
    let p = 2.0 * (ln_tm + s.sum().ln()).exp();
    p.min(1.0)
}

/// Neumaier's compensated summation.
#[derive(Default)]
struct Neumaier {
    sum: f64,
    comp: f64,
}

impl Neumaier {
    fn add(&mut self, x: f64) {
        let t = self.sum + x;
        if self.sum.abs() >= x.abs() {
            self.comp += (self.sum - t) + x;
        } else {
            self.comp += (x - t) + self.sum;
        }
        self.sum = t;
    }
    fn sum(&self) -> f64 {
        self.sum + self.comp
    }
}

/// A run folder read back.
pub(crate) struct LoadedRun {
    pub(crate) dir: PathBuf,
    pub(crate) metrics: MetricsFile,
    pub(crate) rows: Vec<Row>,
}

/// Read `metrics.json` and `predictions.parquet` of a run folder.
pub(crate) fn load_run(p: &Path, which: &str) -> Result<LoadedRun> {
    let wrap = |e: Error| Error::Compare {
        what: format!("{which} run: {e}"),
    };
    let run = Run::open(p).map_err(wrap)?;
    let rows = run.rows().map_err(wrap)?;
    Ok(LoadedRun {
        dir: run.dir,
        metrics: run.metrics,
        rows,
    })
}

fn summary(r: &LoadedRun) -> RunSummary {
    RunSummary {
        dir: r.dir.display().to_string(),
        model: r.metrics.run.model.clone(),
        model_sha256: r.metrics.run.model_sha256.clone(),
        data_dir: r.metrics.run.data_dir.clone(),
        rows: r.rows.len() as u64,
        recorded_top1: r.metrics.metrics.top1,
        images_per_s: r.metrics.throughput.images_per_s,
    }
}

/// Row index of each path; a path listed twice is an error.
fn index<'a>(rows: &'a [Row], which: &str) -> Result<BTreeMap<&'a str, usize>> {
    let mut m = BTreeMap::new();
    for (i, r) in rows.iter().enumerate() {
        if m.insert(r.path.as_str(), i).is_some() {
            return Err(Error::Compare {
                what: format!("{which} run lists image {} twice", r.path),
            });
        }
    }
    Ok(m)
}

/// Right = scored, mapped and top-1 equal to the label (in that run's own label space).
fn right(r: &Row) -> bool {
    r.status == Status::Ok && r.label_id.is_some() && r.pred_id == r.label_id
}

fn flip(b: &Row, c: &Row) -> Flip {
    Flip {
        path: b.path.clone(),
        label: b.label.clone(),
        baseline_pred: b.pred.clone(),
        candidate_pred: c.pred.clone(),
        baseline_score: b.score,
        candidate_score: c.score,
        baseline_error: b.error.clone(),
        candidate_error: c.error.clone(),
    }
}

/// A share as a percentage with two decimals.
pub(crate) fn pct(x: f64) -> String {
    format!("{:.2}%", 100.0 * x)
}

/// A signed change in percentage points, without "-0.00".
pub(crate) fn signed_pp(x: f64) -> String {
    let x = if x.abs() < 0.005 { 0.0 } else { x };
    format!("{x:+.2} pp")
}

/// A p-value for humans.
pub(crate) fn fmt_p(p: f64) -> String {
    if p >= 1e-3 {
        format!("{p:.4}")
    } else {
        format!("{p:.3e}")
    }
}

/// Compare two runs and evaluate the gates. Errors (exit 2 in the CLI) are bad input:
/// missing or unreadable runs, image sets that differ without `allow_partial`, labels
/// that changed, or nothing to compare. A regression is *not* an error: it is the
/// report's verdict.
pub fn compare(opts: &CompareOptions) -> Result<CompareReport> {
    opts.validate()?;
    crate::run::check_gate_outputs(opts)?;
    let base = load_run(&opts.baseline, "baseline")?;
    let cand = load_run(&opts.candidate, "candidate")?;
    compare_runs(opts, &base, &cand)
}

/// The metadata diff of two runs.
fn metadata(base: &LoadedRun, cand: &LoadedRun) -> Vec<MetaDiff> {
    let field = |r: &LoadedRun| {
        let run = &r.metrics.run;
        vec![
            ("model_sha256", run.model_sha256.clone()),
            (
                "preprocess",
                serde_json::to_string(&run.preprocess).unwrap_or_default(),
            ),
            ("preprocess_source", run.preprocess_source.clone()),
            ("provider", format!("{:?}", run.provider).to_lowercase()),
            ("precision", run.precision.name().to_string()),
            ("engine", run.engine_summary()),
            ("cpu", run.cpu_summary()),
            ("onnxruntime_version", run.onnxruntime_version.clone()),
            ("top_k", r.metrics.metrics.k.to_string()),
            ("dataset_fingerprint", run.dataset_fingerprint.clone()),
            (
                "subset",
                run.subset.clone().unwrap_or_else(|| "all images".into()),
            ),
            ("tool_version", run.tool_version.clone()),
        ]
    };
    field(base)
        .into_iter()
        .zip(field(cand))
        .map(|((key, b), (_, c))| MetaDiff {
            key: key.to_string(),
            differs: b != c,
            baseline: b,
            candidate: c,
        })
        .collect()
}

/// Class folder -> model label name, of the classes a run maps.
fn mapped_classes(r: &LoadedRun) -> BTreeMap<String, String> {
    let m = &r.metrics.run.label_mapping;
    m.class_to_id
        .iter()
        .map(|(class, &id)| {
            let name = m
                .model_labels
                .get(id)
                .cloned()
                .unwrap_or_else(|| id.to_string());
            (class.clone(), name)
        })
        .collect()
}

/// Refuse runs of different datasets (unless allowed) and collect the warnings of
/// whatever was allowed.
fn check_same_data(
    opts: &CompareOptions,
    base: &LoadedRun,
    cand: &LoadedRun,
) -> Result<Vec<String>> {
    let (fb, fc) = (
        &base.metrics.run.dataset_fingerprint,
        &cand.metrics.run.dataset_fingerprint,
    );
    if fb == fc {
        return Ok(vec![]);
    }
    let what = format!(
        "the runs scored different data (dataset fingerprint {} vs {}): same paths may be other images",
        crate::run::short_hash(fb),
        crate::run::short_hash(fc)
    );
    if !opts.allow_different_data {
        return Err(Error::Compare {
            what: format!(
                "{what}; pass {} to compare them anyway",
                crate::error::option_name("allow_different_data")
            ),
        });
    }
    Ok(vec![format!(
        "DIFFERENT DATA (allowed by allow_different_data): {what}"
    )])
}

/// [`compare`] on runs already in memory, step by step: pair the rows by path,
/// count them, then derive coverage, accuracy, per-class recall and the gates.
pub(crate) fn compare_runs(
    opts: &CompareOptions,
    base: &LoadedRun,
    cand: &LoadedRun,
) -> Result<CompareReport> {
    opts.validate()?;
    let mut warnings = check_same_data(opts, base, cand)?;
    let aligned = align(base, cand, opts.allow_partial)?;
    let tally = tally(&aligned)?;
    let coverage = coverage(&aligned, &tally);
    if coverage.partial {
        let pct = 100.0 * coverage.fraction;
        if let Some(min) = opts.min_coverage {
            if pct + EPS < min {
                return Err(Error::Compare {
                    what: format!(
                        "partial comparison covers {pct:.1}% of the images, below min_coverage {min}%"
                    ),
                });
            }
        }
        warnings.push(format!(
            "PARTIAL: {} common images ({pct:.1}% of all), {} only in the baseline, {} only in the candidate",
            coverage.matched, coverage.only_baseline, coverage.only_candidate
        ));
    }
    let (labels, labels_changed) = labels_gate(&mapped_classes(base), &mapped_classes(cand), opts);
    if labels_changed && opts.allow_label_change {
        warnings.push(format!(
            "LABELS CHANGED (allowed by allow_label_change): {}",
            labels.observed
        ));
    }
    let accuracy = accuracy(&tally);
    let per_class = class_deltas(&tally.classes, opts);
    let (b, c) = (tally.regressions.len() as u64, tally.fixes.len() as u64);
    let mcnemar = McNemar {
        b,
        c,
        p_value: mcnemar_exact_p(b, c),
        alpha: opts.alpha,
        test: MCNEMAR_VARIANT.into(),
    };
    let slice_columns: Vec<String> = if opts.slice_by.is_empty() {
        let mut c: Vec<String> = base
            .metrics
            .metrics
            .slices
            .iter()
            .map(|s| s.column.clone())
            .collect();
        c.dedup();
        c
    } else {
        opts.slice_by.clone()
    };
    let slices = slice_deltas(&aligned, &slice_columns, opts)?;
    let gates = vec![
        accuracy_gate(&accuracy, opts),
        class_recall_gate(&per_class, opts),
        mcnemar_gate(&mcnemar),
        throughput_gate(
            base.metrics.throughput.images_per_s,
            cand.metrics.throughput.images_per_s,
            opts.max_throughput_drop_pct,
        ),
        labels,
        slices_gate(&slices, &slice_columns, opts),
    ];
    let verdict = if gates.iter().any(|g| g.verdict == Verdict::Fail) {
        Verdict::Fail
    } else {
        Verdict::Pass
    };
    Ok(CompareReport {
        verdict,
        gates,
        options: opts.clone(),
        baseline: summary(base),
        candidate: summary(cand),
        coverage,
        accuracy,
        mcnemar,
        per_class,
        slices,
        regressions: tally.regressions,
        fixes: tally.fixes,
        metadata: metadata(base, cand),
        warnings,
    })
}

/// The label-set gate: both runs must map the same class folders onto the same
/// model label names, or a candidate could drop the classes it gets wrong out of the
/// comparison by renaming them. Fails on any difference unless `allow_label_change`.
fn labels_gate(
    b: &BTreeMap<String, String>,
    c: &BTreeMap<String, String>,
    opts: &CompareOptions,
) -> (Gate, bool) {
    let changed: Vec<&str> = b
        .keys()
        .chain(c.keys())
        .filter(|k| b.get(*k) != c.get(*k))
        .map(|k| k.as_str())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let observed = if changed.is_empty() {
        format!("{} classes mapped the same way", b.len())
    } else {
        let shown: Vec<&str> = changed.iter().take(10).copied().collect();
        format!(
            "{} of {} classes mapped differently ({}{})",
            changed.len(),
            b.len().max(c.len()),
            shown.join(", "),
            if changed.len() > shown.len() {
                ", ..."
            } else {
                ""
            }
        )
    };
    let (verdict, message) = match (changed.is_empty(), opts.allow_label_change) {
        (true, _) => (Verdict::Pass, "both runs map every class to the same model label".to_string()),
        (false, true) => (
            Verdict::Pass,
            "the label sets differ; allowed by allow_label_change (rows unmapped in one run count as wrong for it)".to_string(),
        ),
        (false, false) => (
            Verdict::Fail,
            "the label sets differ: a class mapped in one run and not (or elsewhere) in the other; rows unmapped in one run count as wrong for it".to_string(),
        ),
    };
    let gate = Gate {
        name: "labels".into(),
        verdict,
        threshold: "same class -> label mapping".into(),
        observed,
        message,
    };
    (gate, !changed.is_empty())
}

/// The two runs' rows paired by path.
struct Aligned<'a> {
    /// (baseline, candidate) rows of every path in both runs, sorted by path.
    pairs: Vec<(&'a Row, &'a Row)>,
    /// Paths only in the baseline, sorted.
    only_baseline: Vec<&'a str>,
    /// Paths only in the candidate, sorted.
    only_candidate: Vec<&'a str>,
    /// Paths in either run.
    union: u64,
}

/// Pair the rows by path; differing image sets are an error unless `allow_partial`.
fn align<'a>(base: &'a LoadedRun, cand: &'a LoadedRun, allow_partial: bool) -> Result<Aligned<'a>> {
    let bi = index(&base.rows, "baseline")?;
    let ci = index(&cand.rows, "candidate")?;
    let only_baseline: Vec<&str> = bi.keys().copied().filter(|p| !ci.contains_key(p)).collect();
    let only_candidate: Vec<&str> = ci.keys().copied().filter(|p| !bi.contains_key(p)).collect();
    if (!only_baseline.is_empty() || !only_candidate.is_empty()) && !allow_partial {
        let mut what = format!(
            "the runs scored different images: {} only in the baseline, {} only in the candidate",
            only_baseline.len(),
            only_candidate.len()
        );
        if let Some(p) = only_baseline.first() {
            let _ = write!(what, " (e.g. baseline only: {p})");
        }
        if let Some(p) = only_candidate.first() {
            let _ = write!(what, " (e.g. candidate only: {p})");
        }
        what.push_str("; pass --allow-partial to compare the common images");
        return Err(Error::Compare { what });
    }
    let pairs = bi
        .iter()
        .filter_map(|(path, &i)| ci.get(path).map(|&j| (&base.rows[i], &cand.rows[j])))
        .collect();
    Ok(Aligned {
        pairs,
        union: bi.len() as u64 + only_candidate.len() as u64,
        only_baseline,
        only_candidate,
    })
}

/// Compared images of one class and how many each run got right.
#[derive(Debug, Clone, Copy, Default)]
struct ClassTally {
    support: u64,
    baseline_right: u64,
    candidate_right: u64,
}

/// The counts every later step derives from.
#[derive(Default)]
struct Tally {
    unmapped: u64,
    compared: u64,
    baseline_errors: u64,
    candidate_errors: u64,
    baseline_right: u64,
    candidate_right: u64,
    classes: BTreeMap<String, ClassTally>,
    regressions: Vec<Flip>,
    fixes: Vec<Flip>,
}

/// Count the paired rows: a label that changed is an error (the data changed under
/// the gate), and so is having nothing to compare.
fn tally(a: &Aligned) -> Result<Tally> {
    let mut t = Tally::default();
    for &(b, c) in &a.pairs {
        if b.label != c.label {
            return Err(Error::Compare {
                what: format!(
                    "image {} has label '{}' in the baseline but '{}' in the candidate: the dataset changed",
                    b.path, b.label, c.label
                ),
            });
        }
        // Unmapped in both: neither model knows the class. Unmapped in one run only:
        // compared, and wrong for that run (`right` needs a label id), so that a
        // renamed label cannot take images out of the comparison.
        if b.label_id.is_none() && c.label_id.is_none() {
            t.unmapped += 1;
            continue;
        }
        t.compared += 1;
        t.baseline_errors += (b.status == Status::Error) as u64;
        t.candidate_errors += (c.status == Status::Error) as u64;
        let (rb, rc) = (right(b), right(c));
        t.baseline_right += rb as u64;
        t.candidate_right += rc as u64;
        let e = t.classes.entry(b.label.clone()).or_default();
        e.support += 1;
        e.baseline_right += rb as u64;
        e.candidate_right += rc as u64;
        match (rb, rc) {
            (true, false) => t.regressions.push(flip(b, c)),
            (false, true) => t.fixes.push(flip(b, c)),
            _ => {}
        }
    }
    if t.compared == 0 {
        let matched = a.pairs.len();
        return Err(Error::Compare {
            what: if matched == 0 {
                "the runs have no image in common".to_string()
            } else {
                format!("none of the {matched} common images has a class the models know (all unmapped): nothing to compare")
            },
        });
    }
    Ok(t)
}

fn coverage(a: &Aligned, t: &Tally) -> Coverage {
    let examples = |v: &[&str]| v.iter().take(10).map(|s| s.to_string()).collect();
    let matched = a.pairs.len() as u64;
    Coverage {
        matched,
        compared: t.compared,
        only_baseline: a.only_baseline.len() as u64,
        only_candidate: a.only_candidate.len() as u64,
        only_baseline_examples: examples(&a.only_baseline),
        only_candidate_examples: examples(&a.only_candidate),
        unmapped: t.unmapped,
        baseline_errors: t.baseline_errors,
        candidate_errors: t.candidate_errors,
        fraction: matched as f64 / a.union as f64,
        partial: !a.only_baseline.is_empty() || !a.only_candidate.is_empty(),
    }
}

fn accuracy(t: &Tally) -> Accuracy {
    let baseline = t.baseline_right as f64 / t.compared as f64;
    let candidate = t.candidate_right as f64 / t.compared as f64;
    Accuracy {
        baseline,
        candidate,
        drop_pp: 100.0 * (baseline - candidate),
        baseline_right: t.baseline_right,
        candidate_right: t.candidate_right,
        compared: t.compared,
    }
}

/// Recall of each class in both runs, and whether it is gated and regressed.
fn class_deltas(classes: &BTreeMap<String, ClassTally>, opts: &CompareOptions) -> Vec<ClassDelta> {
    classes
        .iter()
        .map(|(class, t)| {
            let n = t.support;
            let br = t.baseline_right as f64 / n as f64;
            let cr = t.candidate_right as f64 / n as f64;
            let drop_pp = 100.0 * (br - cr);
            let gated = n >= opts.min_class_support;
            ClassDelta {
                class: class.clone(),
                support: n,
                baseline_recall: br,
                candidate_recall: cr,
                drop_pp,
                gated,
                regressed: gated && drop_pp > opts.max_class_recall_drop_pp + EPS,
            }
        })
        .collect()
}

/// Top-1 of both runs per value of each of `columns` (a carried column of the
/// baseline's rows), over the compared pairs, with McNemar's test per slice.
fn slice_deltas(a: &Aligned, columns: &[String], opts: &CompareOptions) -> Result<Vec<SliceDelta>> {
    // (support, baseline right, candidate right, b, c) of one slice.
    type Counts = (u64, u64, u64, u64, u64);
    let mut t: BTreeMap<(String, String), Counts> = BTreeMap::new();
    for col in columns {
        let mut found = false;
        for &(b, c) in &a.pairs {
            if b.label_id.is_none() && c.label_id.is_none() {
                continue;
            }
            let Some((_, v)) = b.extra.iter().find(|(n, _)| n == col) else {
                continue;
            };
            found = true;
            let e = t.entry((col.clone(), v.display())).or_default();
            let (rb, rc) = (right(b), right(c));
            e.0 += 1;
            e.1 += rb as u64;
            e.2 += rc as u64;
            e.3 += (rb && !rc) as u64;
            e.4 += (!rb && rc) as u64;
        }
        if !found {
            return Err(Error::Compare {
                what: format!("the baseline's predictions have no column '{col}' to slice by"),
            });
        }
    }
    Ok(t.into_iter()
        .map(|((column, value), (n, rb, rc, b, c))| {
            let (bt, ct) = (rb as f64 / n as f64, rc as f64 / n as f64);
            let drop_pp = 100.0 * (bt - ct);
            let p_value = mcnemar_exact_p(b, c);
            let gated = n >= opts.min_class_support;
            SliceDelta {
                column,
                value,
                support: n,
                baseline_top1: bt,
                candidate_top1: ct,
                drop_pp,
                b,
                c,
                p_value,
                gated,
                regressed: gated
                    && (drop_pp > opts.max_slice_drop_pp + EPS || (c < b && p_value < opts.alpha)),
            }
        })
        .collect())
}

/// Gate 6, `slices`: no slice may lose more top-1 than allowed, nor be significantly
/// worse by McNemar's test (skipped when the runs are not sliced).
fn slices_gate(slices: &[SliceDelta], columns: &[String], opts: &CompareOptions) -> Gate {
    let gated: Vec<&SliceDelta> = slices.iter().filter(|s| s.gated).collect();
    let regressed: Vec<&SliceDelta> = gated.iter().copied().filter(|s| s.regressed).collect();
    let worst = gated
        .iter()
        .max_by(|a, b| a.drop_pp.total_cmp(&b.drop_pp).then(b.value.cmp(&a.value)));
    let name = |s: &SliceDelta| format!("{}={}", s.column, s.value);
    Gate {
        name: "slices".into(),
        verdict: gated_verdict(gated.len(), regressed.len()),
        threshold: format!(
            "per-slice top-1 drop ≤ {:.2} pp and McNemar not significant (slices with ≥ {} images)",
            opts.max_slice_drop_pp, opts.min_class_support
        ),
        observed: match worst {
            Some(w) => format!(
                "{} of {} slices gated; worst: {} {} → {} ({}, p = {})",
                gated.len(),
                slices.len(),
                name(w),
                pct(w.baseline_top1),
                pct(w.candidate_top1),
                signed_pp(-w.drop_pp),
                fmt_p(w.p_value)
            ),
            None if columns.is_empty() => "the runs are not sliced".into(),
            None => format!("no slice has {} or more images", opts.min_class_support),
        },
        message: if columns.is_empty() {
            "skipped: no slice_by column (score with slice_by, or pass slice_by here)".into()
        } else if gated.is_empty() {
            format!(
                "skipped: no slice has at least {} compared images",
                opts.min_class_support
            )
        } else if regressed.is_empty() {
            "no gated slice lost more top-1 than allowed".into()
        } else {
            format!(
                "top-1 regressed on {}",
                regressed
                    .iter()
                    .map(|s| format!(
                        "{} ({:.2} pp, p = {})",
                        name(s),
                        s.drop_pp,
                        fmt_p(s.p_value)
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        },
    }
}

/// The verdict of a gate over groups (classes, slices): skipped when none is gated,
/// failed when any gated one regressed.
fn gated_verdict(gated: usize, regressed: usize) -> Verdict {
    match (gated, regressed) {
        (0, _) => Verdict::Skipped,
        (_, 0) => Verdict::Pass,
        _ => Verdict::Fail,
    }
}

/// Gate 1, `accuracy`: the top-1 accuracy drop.
fn accuracy_gate(a: &Accuracy, opts: &CompareOptions) -> Gate {
    let fail = a.drop_pp > opts.max_accuracy_drop_pp + EPS;
    Gate {
        name: "accuracy".into(),
        verdict: if fail { Verdict::Fail } else { Verdict::Pass },
        threshold: format!("top-1 drop ≤ {:.2} pp", opts.max_accuracy_drop_pp),
        observed: format!(
            "{} → {} ({}) on {} images",
            pct(a.baseline),
            pct(a.candidate),
            signed_pp(-a.drop_pp),
            a.compared
        ),
        message: if fail {
            format!(
                "top-1 accuracy dropped by {:.2} pp, more than the allowed {:.2} pp",
                a.drop_pp, opts.max_accuracy_drop_pp
            )
        } else {
            "top-1 accuracy is within the allowed drop".into()
        },
    }
}

/// Gate 2, `class_recall`: the per-class recall drop over the gated classes
/// (skipped when there are none).
fn class_recall_gate(per_class: &[ClassDelta], opts: &CompareOptions) -> Gate {
    let gated: Vec<&ClassDelta> = per_class.iter().filter(|c| c.gated).collect();
    let regressed: Vec<&ClassDelta> = gated.iter().copied().filter(|c| c.regressed).collect();
    let worst = gated
        .iter()
        .max_by(|a, b| a.drop_pp.total_cmp(&b.drop_pp).then(b.class.cmp(&a.class)));
    Gate {
        name: "class_recall".into(),
        verdict: gated_verdict(gated.len(), regressed.len()),
        threshold: format!(
            "per-class recall drop ≤ {:.2} pp (classes with ≥ {} images)",
            opts.max_class_recall_drop_pp, opts.min_class_support
        ),
        observed: match worst {
            Some(w) => format!(
                "{} of {} classes gated; worst: '{}' {} → {} ({})",
                gated.len(),
                per_class.len(),
                w.class,
                pct(w.baseline_recall),
                pct(w.candidate_recall),
                signed_pp(-w.drop_pp)
            ),
            None => format!("no class has {} or more images", opts.min_class_support),
        },
        message: if gated.is_empty() {
            format!(
                "skipped: no class has at least {} compared images",
                opts.min_class_support
            )
        } else if regressed.is_empty() {
            "no gated class lost more recall than allowed".into()
        } else {
            format!(
                "recall dropped by more than {:.2} pp for {}",
                opts.max_class_recall_drop_pp,
                regressed
                    .iter()
                    .map(|c| format!("'{}' ({:.2} pp)", c.class, c.drop_pp))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        },
    }
}

/// Gate 3, `mcnemar`: fails when the candidate is significantly worse.
fn mcnemar_gate(m: &McNemar) -> Gate {
    let (b, c, p, alpha) = (m.b, m.c, m.p_value, m.alpha);
    let fail = c < b && p < alpha;
    Gate {
        name: "mcnemar".into(),
        verdict: if fail { Verdict::Fail } else { Verdict::Pass },
        threshold: format!("fails if c < b and p < {alpha}"),
        observed: format!("b = {b} right→wrong, c = {c} wrong→right, p = {}", fmt_p(p)),
        message: if fail {
            format!(
                "the candidate is significantly worse: {b} images became wrong, {c} became right (McNemar exact p = {} < {alpha})",
                fmt_p(p)
            )
        } else if b + c == 0 {
            "no image changed correctness".into()
        } else if c >= b {
            format!("{c} images became right, {b} became wrong: no regression")
        } else {
            format!(
                "{b} images became wrong, {c} became right: not significant (p = {} ≥ {alpha})",
                fmt_p(p)
            )
        },
    }
}

/// Gate 4, `throughput`: the candidate's (`tc` images/s) drop from the baseline's
/// (`tb`); off unless `max_drop_pct` is set.
fn throughput_gate(tb: f64, tc: f64, max_drop_pct: Option<f64>) -> Gate {
    match max_drop_pct {
        None => Gate {
            name: "throughput".into(),
            verdict: Verdict::Skipped,
            threshold: "off (set a maximum throughput drop to enable)".into(),
            observed: format!("{tb:.1} → {tc:.1} images/s"),
            message: "skipped: the throughput gate is off".into(),
        },
        Some(max) if !(tb > 0.0 && tb.is_finite() && tc.is_finite()) => Gate {
            name: "throughput".into(),
            verdict: Verdict::Skipped,
            threshold: format!("images/s drop ≤ {max:.2}%"),
            observed: format!("{tb:.1} → {tc:.1} images/s"),
            message: "skipped: the baseline records no throughput".into(),
        },
        Some(max) => {
            let drop = 100.0 * (1.0 - tc / tb);
            let fail = drop > max + EPS;
            Gate {
                name: "throughput".into(),
                verdict: if fail { Verdict::Fail } else { Verdict::Pass },
                threshold: format!("images/s drop ≤ {max:.2}%"),
                observed: format!("{tb:.1} → {tc:.1} images/s ({:+.2}%)", -drop),
                message: if fail {
                    format!("throughput dropped by {drop:.2}%, more than the allowed {max:.2}%")
                } else {
                    "throughput is within the allowed drop".into()
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct (slow, exact for small n) binomial CDF with u128 coefficients.
    fn exact(b: u64, c: u64) -> f64 {
        let n = b + c;
        if n == 0 {
            return 1.0;
        }
        let m = b.min(c);
        let mut coef: u128 = 1;
        let mut sum: u128 = 0;
        for k in 0..=m {
            if k > 0 {
                coef = coef * (n - k + 1) as u128 / k as u128;
            }
            sum += coef;
        }
        (2.0 * sum as f64 / 2f64.powi(n as i32)).min(1.0)
    }

    #[test]
    fn mcnemar_small_cases_exact() {
        assert_eq!(mcnemar_exact_p(0, 0), 1.0);
        assert_eq!(mcnemar_exact_p(3, 3), 1.0);
        // b=0,c=1 -> 2*0.5 = 1
        assert_eq!(mcnemar_exact_p(0, 1), 1.0);
        // b=5,c=0 -> 2/32
        assert!((mcnemar_exact_p(5, 0) - 0.0625).abs() < 1e-15);
        for b in 0..60u64 {
            for c in 0..60u64 {
                let (p, q) = (mcnemar_exact_p(b, c), exact(b, c));
                assert!((p - q).abs() < 1e-12, "b={b} c={c}: {p} vs {q}");
                assert_eq!(p, mcnemar_exact_p(c, b));
            }
        }
    }
}
