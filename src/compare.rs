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
//!   a candidate must not pass by failing to produce predictions. When no row failed,
//!   the accuracy here is exactly `top1` of `metrics.json`.
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

pub use crate::options::CompareOptions;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Fail,
    /// The gate is off (or had nothing to evaluate); never fails the overall verdict.
    Skipped,
}

impl Verdict {
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
    pub dir: String,
    pub model: String,
    pub model_sha256: String,
    pub data_dir: String,
    /// Rows in `predictions.parquet`.
    pub rows: u64,
    /// `top1` as recorded in `metrics.json` (over all its evaluated rows).
    pub recorded_top1: f64,
    pub images_per_s: f64,
}

/// How well the two runs' image sets overlap.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Coverage {
    /// Paths in both runs.
    pub matched: u64,
    /// Matched paths with a mapped label in both runs (the compared images).
    pub compared: u64,
    pub only_baseline: u64,
    pub only_candidate: u64,
    /// Up to 10 examples of each.
    pub only_baseline_examples: Vec<String>,
    pub only_candidate_examples: Vec<String>,
    /// Matched paths without a mapped label in at least one run (not compared).
    pub unmapped: u64,
    /// Compared rows that failed (status error) in each run; they count as wrong.
    pub baseline_errors: u64,
    pub candidate_errors: u64,
    /// `matched` / paths in either run.
    pub fraction: f64,
    /// True when the image sets differ (only possible with `allow_partial`).
    pub partial: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Accuracy {
    pub baseline: f64,
    pub candidate: f64,
    /// baseline − candidate, in percentage points (positive = worse).
    pub drop_pp: f64,
    pub baseline_right: u64,
    pub candidate_right: u64,
    pub compared: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct McNemar {
    /// Right in the baseline only (regressions).
    pub b: u64,
    /// Right in the candidate only (fixes).
    pub c: u64,
    pub p_value: f64,
    pub alpha: f64,
    /// The variant used, spelled out.
    pub test: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassDelta {
    /// Class folder name.
    pub class: String,
    /// Compared images of the class.
    pub support: u64,
    pub baseline_recall: f64,
    pub candidate_recall: f64,
    /// baseline − candidate, in percentage points (positive = worse).
    pub drop_pp: f64,
    /// support >= min_class_support.
    pub gated: bool,
    /// gated and the drop is above the allowance.
    pub regressed: bool,
}

/// An image whose correctness changed between the runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Flip {
    pub path: String,
    pub label: String,
    /// Predicted label; None when the row failed.
    pub baseline_pred: Option<String>,
    pub candidate_pred: Option<String>,
    pub baseline_score: Option<f32>,
    pub candidate_score: Option<f32>,
    /// The failure message of a row that errored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate_error: Option<String>,
}

/// Everything `compare` found; `verdict` is the overall one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompareReport {
    pub verdict: Verdict,
    pub gates: Vec<Gate>,
    pub options: CompareOptions,
    pub baseline: RunSummary,
    pub candidate: RunSummary,
    pub coverage: Coverage,
    pub accuracy: Accuracy,
    pub mcnemar: McNemar,
    pub per_class: Vec<ClassDelta>,
    /// Right in the baseline, wrong in the candidate (sorted by path).
    pub regressions: Vec<Flip>,
    /// Wrong in the baseline, right in the candidate (sorted by path).
    pub fixes: Vec<Flip>,
}

impl CompareReport {
    pub fn passed(&self) -> bool {
        self.verdict != Verdict::Fail
    }

    pub fn gate(&self, name: &str) -> Option<&Gate> {
        self.gates.iter().find(|g| g.name == name)
    }
}

/// Name of McNemar's variant, recorded in every report.
pub const MCNEMAR_VARIANT: &str = "McNemar exact test: two-sided binomial, p = min(1, 2*P(X <= min(b,c))), X ~ Bin(b+c, 0.5) (statsmodels mcnemar(exact=True))";

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
pub struct LoadedRun {
    pub dir: PathBuf,
    pub metrics: MetricsFile,
    pub rows: Vec<Row>,
}

/// Read `metrics.json` and `predictions.parquet` of a run folder.
pub fn load_run(p: &Path, which: &str) -> Result<LoadedRun> {
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

fn index(rows: &[Row], which: &str) -> Result<BTreeMap<String, usize>> {
    let mut m = BTreeMap::new();
    for (i, r) in rows.iter().enumerate() {
        if m.insert(r.path.clone(), i).is_some() {
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
    let base = load_run(&opts.baseline, "baseline")?;
    let cand = load_run(&opts.candidate, "candidate")?;
    compare_runs(opts, &base, &cand)
}

/// [`compare`] on runs already in memory.
pub fn compare_runs(
    opts: &CompareOptions,
    base: &LoadedRun,
    cand: &LoadedRun,
) -> Result<CompareReport> {
    opts.validate()?;
    let bi = index(&base.rows, "baseline")?;
    let ci = index(&cand.rows, "candidate")?;
    let only_b: Vec<&String> = bi.keys().filter(|p| !ci.contains_key(*p)).collect();
    let only_c: Vec<&String> = ci.keys().filter(|p| !bi.contains_key(*p)).collect();
    let examples = |v: &[&String]| v.iter().take(10).map(|s| s.to_string()).collect::<Vec<_>>();
    if (!only_b.is_empty() || !only_c.is_empty()) && !opts.allow_partial {
        let mut what = format!(
            "the runs scored different images: {} only in the baseline, {} only in the candidate",
            only_b.len(),
            only_c.len()
        );
        if let Some(p) = only_b.first() {
            let _ = write!(what, " (e.g. baseline only: {p})");
        }
        if let Some(p) = only_c.first() {
            let _ = write!(what, " (e.g. candidate only: {p})");
        }
        what.push_str("; pass --allow-partial to compare the common images");
        return Err(Error::Compare { what });
    }

    let mut matched = 0u64;
    let mut unmapped = 0u64;
    let (mut b_err, mut c_err) = (0u64, 0u64);
    let (mut b_right, mut c_right, mut compared) = (0u64, 0u64, 0u64);
    // class -> (support, baseline right, candidate right)
    let mut classes: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
    let mut regressions = vec![];
    let mut fixes = vec![];
    for (path, &i) in &bi {
        let Some(&j) = ci.get(path) else { continue };
        matched += 1;
        let (b, c) = (&base.rows[i], &cand.rows[j]);
        if b.label != c.label {
            return Err(Error::Compare {
                what: format!(
                    "image {path} has label '{}' in the baseline but '{}' in the candidate: the dataset changed",
                    b.label, c.label
                ),
            });
        }
        if b.label_id.is_none() || c.label_id.is_none() {
            unmapped += 1;
            continue;
        }
        compared += 1;
        b_err += (b.status == Status::Error) as u64;
        c_err += (c.status == Status::Error) as u64;
        let (rb, rc) = (right(b), right(c));
        b_right += rb as u64;
        c_right += rc as u64;
        let e = classes.entry(b.label.clone()).or_default();
        e.0 += 1;
        e.1 += rb as u64;
        e.2 += rc as u64;
        match (rb, rc) {
            (true, false) => regressions.push(flip(b, c)),
            (false, true) => fixes.push(flip(b, c)),
            _ => {}
        }
    }
    if compared == 0 {
        return Err(Error::Compare {
            what: if matched == 0 {
                "the runs have no image in common".to_string()
            } else {
                format!("none of the {matched} common images has a class the models know (all unmapped): nothing to compare")
            },
        });
    }
    let union = bi.len() as u64 + only_c.len() as u64;
    let coverage = Coverage {
        matched,
        compared,
        only_baseline: only_b.len() as u64,
        only_candidate: only_c.len() as u64,
        only_baseline_examples: examples(&only_b),
        only_candidate_examples: examples(&only_c),
        unmapped,
        baseline_errors: b_err,
        candidate_errors: c_err,
        fraction: matched as f64 / union as f64,
        partial: !only_b.is_empty() || !only_c.is_empty(),
    };
    let acc_b = b_right as f64 / compared as f64;
    let acc_c = c_right as f64 / compared as f64;
    let accuracy = Accuracy {
        baseline: acc_b,
        candidate: acc_c,
        drop_pp: 100.0 * (acc_b - acc_c),
        baseline_right: b_right,
        candidate_right: c_right,
        compared,
    };

    let mut gates = vec![];
    // 1. accuracy
    let acc_fail = accuracy.drop_pp > opts.max_accuracy_drop_pp + EPS;
    gates.push(Gate {
        name: "accuracy".into(),
        verdict: if acc_fail {
            Verdict::Fail
        } else {
            Verdict::Pass
        },
        threshold: format!("top-1 drop ≤ {:.2} pp", opts.max_accuracy_drop_pp),
        observed: format!(
            "{} → {} ({}) on {} images",
            pct(acc_b),
            pct(acc_c),
            signed_pp(-accuracy.drop_pp),
            compared
        ),
        message: if acc_fail {
            format!(
                "top-1 accuracy dropped by {:.2} pp, more than the allowed {:.2} pp",
                accuracy.drop_pp, opts.max_accuracy_drop_pp
            )
        } else {
            "top-1 accuracy is within the allowed drop".into()
        },
    });

    // 2. per-class recall
    let mut per_class = vec![];
    for (class, &(n, rb, rc)) in &classes {
        let br = rb as f64 / n as f64;
        let cr = rc as f64 / n as f64;
        let drop_pp = 100.0 * (br - cr);
        let gated = n >= opts.min_class_support;
        per_class.push(ClassDelta {
            class: class.clone(),
            support: n,
            baseline_recall: br,
            candidate_recall: cr,
            drop_pp,
            gated,
            regressed: gated && drop_pp > opts.max_class_recall_drop_pp + EPS,
        });
    }
    let gated: Vec<&ClassDelta> = per_class.iter().filter(|c| c.gated).collect();
    let regressed: Vec<&ClassDelta> = gated.iter().copied().filter(|c| c.regressed).collect();
    let worst = gated
        .iter()
        .max_by(|a, b| a.drop_pp.total_cmp(&b.drop_pp).then(b.class.cmp(&a.class)));
    gates.push(Gate {
        name: "class_recall".into(),
        verdict: if gated.is_empty() {
            Verdict::Skipped
        } else if regressed.is_empty() {
            Verdict::Pass
        } else {
            Verdict::Fail
        },
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
    });

    // 3. McNemar
    let (b, c) = (regressions.len() as u64, fixes.len() as u64);
    let p = mcnemar_exact_p(b, c);
    let mc_fail = c < b && p < opts.alpha;
    gates.push(Gate {
        name: "mcnemar".into(),
        verdict: if mc_fail { Verdict::Fail } else { Verdict::Pass },
        threshold: format!("fails if c < b and p < {}", opts.alpha),
        observed: format!(
            "b = {b} right→wrong, c = {c} wrong→right, p = {}",
            fmt_p(p)
        ),
        message: if mc_fail {
            format!(
                "the candidate is significantly worse: {b} images became wrong, {c} became right (McNemar exact p = {} < {})",
                fmt_p(p),
                opts.alpha
            )
        } else if b + c == 0 {
            "no image changed correctness".into()
        } else if c >= b {
            format!("{c} images became right, {b} became wrong: no regression")
        } else {
            format!(
                "{b} images became wrong, {c} became right: not significant (p = {} ≥ {})",
                fmt_p(p),
                opts.alpha
            )
        },
    });
    let mcnemar = McNemar {
        b,
        c,
        p_value: p,
        alpha: opts.alpha,
        test: MCNEMAR_VARIANT.into(),
    };

    // 4. throughput
    let (tb, tc) = (
        base.metrics.throughput.images_per_s,
        cand.metrics.throughput.images_per_s,
    );
    gates.push(match opts.max_throughput_drop_pct {
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
    });

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
        regressions,
        fixes,
    })
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
