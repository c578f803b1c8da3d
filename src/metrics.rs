//! Stage 6: metrics from the prediction rows.
//!
//! Everything here is a pure function of the rows (plus the label names), so the
//! same code serves a live run, `report` (re-reading Parquet), `merge` (shards) and
//! `--resume`, and they agree by construction. Conventions follow the field:
//! sklearn's classification_report (precision, recall, F1, support; macro and
//! weighted averages over the labels present in truth or predictions), a raw and a
//! row-normalised confusion matrix, and torchmetrics' expected calibration error
//! (15 equal-width bins, L1).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::record::{Row, Status};

pub(crate) const ECE_BINS: usize = 15;

/// How many rows of each kind a run holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Counts {
    /// Image files found (one row each).
    pub images: u64,
    /// Rows scored.
    pub ok: u64,
    /// Rows that failed (unreadable image, non-finite logits...).
    pub errors: u64,
    /// Non-image files skipped by the walk.
    pub skipped: u64,
    /// Rows whose class folder matches no model label (scored, not in accuracy).
    pub unmapped: u64,
    /// Rows whose class folder maps to a model label, failed ones included: the
    /// denominator of `top1` / `topk` (a failed image counts as wrong).
    #[serde(default)]
    pub labeled: u64,
    /// Rows that scored and whose class maps to a model label: the denominator of
    /// `top1_scored` / `topk_scored`, the per-class figures, the confusion matrix
    /// and calibration (a failed image has no prediction to put there).
    pub evaluated: u64,
}

/// sklearn-style per-class figures.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClassStats {
    /// Model class id.
    pub id: usize,
    /// Class name.
    pub class: String,
    /// Of the evaluated rows predicted as this class, the share that are.
    pub precision: f64,
    /// Of the evaluated rows of this class, the share predicted as it.
    pub recall: f64,
    /// Harmonic mean of precision and recall.
    pub f1: f64,
    /// Evaluated rows of this class.
    pub support: u64,
    /// Images predicted as this class.
    pub predicted: u64,
}

/// Macro or support-weighted average of the per-class figures.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Average {
    /// Average precision.
    pub precision: f64,
    /// Average recall.
    pub recall: f64,
    /// Average F1.
    pub f1: f64,
    /// Evaluated rows.
    pub support: u64,
}

/// One equal-width confidence bin of the reliability diagram.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CalibrationBin {
    /// Lower confidence bound.
    pub lo: f64,
    /// Upper confidence bound.
    pub hi: f64,
    /// Rows whose top-1 score falls in the bin.
    pub count: u64,
    /// Mean top-1 confidence in the bin (0 when empty).
    pub confidence: f64,
    /// Fraction correct in the bin (0 when empty).
    pub accuracy: f64,
}

/// Calibration of the top-1 scores.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Calibration {
    /// Expected calibration error (15 equal-width bins, L1).
    pub ece: f64,
    /// The bins.
    pub bins: Vec<CalibrationBin>,
}

/// The confusion matrix of the evaluated rows. Dense in memory; in `metrics.json` it is
/// sparse: `cells` lists `[true index, predicted index, count]` for the non-zero cells
/// (indices into `ids`), row by row, so 1,000 classes take kilobytes, not megabytes. A
/// dense `matrix` (metrics.json schema 1) is still read.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(try_from = "ConfusionFile", into = "ConfusionFile")]
pub struct Confusion {
    /// Model class ids of the rows/columns (labels present in truth or predictions).
    pub ids: Vec<usize>,
    /// Class names of `ids`.
    pub labels: Vec<String>,
    /// `matrix[true][pred]` counts.
    pub matrix: Vec<Vec<u64>>,
}

/// [`Confusion`] as `metrics.json` stores it.
#[derive(Serialize, Deserialize)]
struct ConfusionFile {
    ids: Vec<usize>,
    labels: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cells: Option<Vec<[u64; 3]>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    matrix: Option<Vec<Vec<u64>>>,
}

impl From<Confusion> for ConfusionFile {
    fn from(c: Confusion) -> Self {
        let cells = c
            .matrix
            .iter()
            .enumerate()
            .flat_map(|(t, row)| {
                row.iter()
                    .enumerate()
                    .filter(|(_, &n)| n > 0)
                    .map(move |(p, &n)| [t as u64, p as u64, n])
            })
            .collect();
        ConfusionFile {
            ids: c.ids,
            labels: c.labels,
            cells: Some(cells),
            matrix: None,
        }
    }
}

impl TryFrom<ConfusionFile> for Confusion {
    type Error = String;
    fn try_from(f: ConfusionFile) -> std::result::Result<Self, String> {
        let n = f.ids.len();
        if f.labels.len() != n {
            return Err(format!(
                "confusion: {} ids but {} labels",
                n,
                f.labels.len()
            ));
        }
        let matrix = match (f.cells, f.matrix) {
            (Some(cells), None) => {
                let mut m = vec![vec![0u64; n]; n];
                for [t, p, c] in cells {
                    let (t, p) = (t as usize, p as usize);
                    if t >= n || p >= n {
                        return Err(format!("confusion cell [{t}, {p}] is outside {n} classes"));
                    }
                    m[t][p] += c;
                }
                m
            }
            (None, Some(m)) if m.len() == n && m.iter().all(|r| r.len() == n) => m,
            (None, Some(_)) => return Err(format!("confusion matrix is not {n} x {n}")),
            (None, None) => vec![vec![0; n]; n],
            (Some(_), Some(_)) => return Err("confusion has both cells and matrix".into()),
        };
        Ok(Confusion {
            ids: f.ids,
            labels: f.labels,
            matrix,
        })
    }
}

impl Confusion {
    /// Row-normalised matrix: recall per true class (rows with no support are 0).
    pub(crate) fn normalized(&self) -> Vec<Vec<f64>> {
        self.matrix
            .iter()
            .map(|r| {
                let s: u64 = r.iter().sum();
                r.iter()
                    .map(|&v| if s == 0 { 0.0 } else { v as f64 / s as f64 })
                    .collect()
            })
            .collect()
    }
}

/// Every metric of a run (the flattened body of `metrics.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Metrics {
    /// Row counts.
    pub counts: Counts,
    /// Top-1 accuracy: right / `counts.labeled` (failed images count as wrong). The
    /// one accuracy of a run: `score`, `report`, `compare` and `merge` all use it.
    pub top1: f64,
    /// Top-k accuracy, same denominator as `top1`.
    pub topk: f64,
    /// Top-1 accuracy of the scored images only: right / `counts.evaluated`, shown
    /// beside `top1` (equal when no labeled image failed).
    #[serde(default)]
    pub top1_scored: f64,
    /// Top-k accuracy of the scored images only.
    #[serde(default)]
    pub topk_scored: f64,
    /// The k of `topk`.
    pub k: usize,
    /// Per-class figures, by class id.
    pub per_class: Vec<ClassStats>,
    /// Unweighted mean over classes with support.
    pub macro_avg: Average,
    /// Support-weighted mean.
    pub weighted_avg: Average,
    /// The confusion matrix.
    pub confusion: Confusion,
    /// Calibration.
    pub calibration: Calibration,
    /// The same figures per value of each `slice_by` column, by column then value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub slices: Vec<SliceStats>,
}

/// The metrics of the rows sharing one value of a sliced column.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SliceStats {
    /// The column sliced on.
    pub column: String,
    /// Its value ("" for null).
    pub value: String,
    /// Images with this value.
    pub images: u64,
    /// Of them, labeled (the denominator of `top1`).
    pub labeled: u64,
    /// Of them, labeled and scored.
    pub evaluated: u64,
    /// Top-1 accuracy, the run's definition (failed images count as wrong).
    pub top1: f64,
    /// Top-1 of the scored images only.
    pub top1_scored: f64,
    /// Recall per class name over the slice's evaluated images.
    pub recall: std::collections::BTreeMap<String, f64>,
}

/// Counts of one slice while the rows stream by.
#[derive(Debug, Clone, Default)]
struct SliceAcc {
    images: u64,
    labeled: u64,
    evaluated: u64,
    right: u64,
    /// class id -> (evaluated, right)
    classes: std::collections::BTreeMap<usize, (u64, u64)>,
}

impl Metrics {
    /// The accuracy as every command prints it: `top1` and `topk` (over the labeled
    /// images, failed ones counted wrong), with the scored-only figure beside it
    /// when some labeled image failed; "n/a" when nothing was scored.
    pub fn headline(&self) -> String {
        let c = &self.counts;
        if c.evaluated == 0 {
            return format!(
                "top-1 n/a (no image evaluated: {} labeled, {} failed)",
                c.labeled, c.errors
            );
        }
        let mut s = format!(
            "top-1 {:.2}%, top-{} {:.2}% of {} labeled images",
            100.0 * self.top1,
            self.k,
            100.0 * self.topk,
            c.labeled
        );
        if c.labeled != c.evaluated {
            s.push_str(&format!(
                " (failed images counted wrong; of the {} scored: top-1 {:.2}%)",
                c.evaluated,
                100.0 * self.top1_scored
            ));
        }
        s
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// Compute all metrics from `rows`. `labels` are the model's class names by id.
pub fn compute(rows: &[Row], labels: &[String], k: usize, skipped: u64) -> Metrics {
    let mut acc = Accumulator::new(k, skipped);
    for r in rows {
        acc.add(r);
    }
    acc.finish(labels)
}

/// Streaming form of [`compute`]: memory is O(classes + confusion cells), not rows.
#[derive(Debug, Clone)]
pub struct Accumulator {
    k: usize,
    slice_by: Vec<String>,
    /// (index into `slice_by`, value) -> counts.
    slices: std::collections::BTreeMap<(usize, String), SliceAcc>,
    counts: Counts,
    cells: std::collections::BTreeMap<(usize, usize), u64>,
    top1: u64,
    topk: u64,
    bins: Vec<(u64, f64, u64)>,
}

impl Accumulator {
    pub(crate) fn new(k: usize, skipped: u64) -> Self {
        Accumulator {
            k,
            slice_by: vec![],
            slices: Default::default(),
            counts: Counts {
                skipped,
                ..Default::default()
            },
            cells: Default::default(),
            top1: 0,
            topk: 0,
            bins: vec![(0, 0.0, 0); ECE_BINS],
        }
    }

    /// Also compute the metrics per value of these carried columns.
    pub(crate) fn with_slices(mut self, slice_by: &[String]) -> Self {
        self.slice_by = slice_by.to_vec();
        self
    }

    fn add_to_slices(&mut self, r: &Row) {
        for (ci, col) in self.slice_by.iter().enumerate() {
            let value = r
                .extra
                .iter()
                .find(|(n, _)| n == col)
                .map(|(_, v)| v.display())
                .unwrap_or_default();
            let s = self.slices.entry((ci, value)).or_default();
            s.images += 1;
            let Some(t) = r.label_id else { continue };
            s.labeled += 1;
            if let (Status::Ok, Some(p)) = (r.status, r.pred_id) {
                s.evaluated += 1;
                let right = t == p;
                s.right += right as u64;
                let e = s.classes.entry(t as usize).or_default();
                e.0 += 1;
                e.1 += right as u64;
            }
        }
    }

    pub(crate) fn add(&mut self, r: &Row) {
        if !self.slice_by.is_empty() {
            self.add_to_slices(r);
        }
        let c = &mut self.counts;
        c.images += 1;
        match r.status {
            Status::Ok => c.ok += 1,
            Status::Error => c.errors += 1,
        }
        if r.label_id.is_none() {
            c.unmapped += 1;
        } else {
            c.labeled += 1;
        }
        let (Status::Ok, Some(t), Some(p)) = (r.status, r.label_id, r.pred_id) else {
            return;
        };
        c.evaluated += 1;
        let (t, p) = (t as usize, p as usize);
        *self.cells.entry((t, p)).or_default() += 1;
        let right = t == p;
        self.top1 += right as u64;
        let in_k = r
            .topk_ids
            .as_deref()
            .map(|ids| ids.iter().take(self.k).any(|&i| i as usize == t))
            .unwrap_or(right);
        self.topk += in_k as u64;
        let conf = r.score.unwrap_or(0.0).clamp(0.0, 1.0) as f64;
        // torchmetrics: bucketize(right=True) - 1, clamped: bin i holds [i/B, (i+1)/B).
        let b = ((conf * ECE_BINS as f64).floor() as usize).min(ECE_BINS - 1);
        self.bins[b].0 += 1;
        self.bins[b].1 += conf;
        self.bins[b].2 += right as u64;
    }

    pub(crate) fn finish(self, labels: &[String]) -> Metrics {
        let name = |id: usize| labels.get(id).cloned().unwrap_or_else(|| format!("#{id}"));
        let present: BTreeSet<usize> = self.cells.keys().flat_map(|&(t, p)| [t, p]).collect();
        let ids: Vec<usize> = present.into_iter().collect();
        let pos = |id: usize| ids.binary_search(&id).expect("id collected above");
        let n = ids.len();
        let mut matrix = vec![vec![0u64; n]; n];
        for (&(t, p), &v) in &self.cells {
            matrix[pos(t)][pos(p)] = v;
        }
        let total = self.counts.evaluated;
        let mut per_class = Vec::with_capacity(n);
        for (i, &id) in ids.iter().enumerate() {
            let tp = matrix[i][i];
            let support: u64 = matrix[i].iter().sum();
            let predicted: u64 = matrix.iter().map(|r| r[i]).sum();
            let precision = ratio(tp, predicted);
            let recall = ratio(tp, support);
            let f1 = if precision + recall == 0.0 {
                0.0
            } else {
                2.0 * precision * recall / (precision + recall)
            };
            per_class.push(ClassStats {
                id,
                class: name(id),
                precision,
                recall,
                f1,
                support,
                predicted,
            });
        }
        let avg = |weighted: bool| {
            let wsum: f64 = if weighted { total as f64 } else { n as f64 };
            let w = |c: &ClassStats| if weighted { c.support as f64 } else { 1.0 };
            let f = |get: fn(&ClassStats) -> f64| {
                if wsum == 0.0 {
                    0.0
                } else {
                    per_class.iter().map(|c| get(c) * w(c)).sum::<f64>() / wsum
                }
            };
            Average {
                precision: f(|c| c.precision),
                recall: f(|c| c.recall),
                f1: f(|c| c.f1),
                support: total,
            }
        };
        let bins: Vec<CalibrationBin> = self
            .bins
            .iter()
            .enumerate()
            .map(|(i, &(c, conf, right))| CalibrationBin {
                lo: i as f64 / ECE_BINS as f64,
                hi: (i + 1) as f64 / ECE_BINS as f64,
                count: c,
                confidence: if c == 0 { 0.0 } else { conf / c as f64 },
                accuracy: ratio(right, c),
            })
            .collect();
        let ece = bins
            .iter()
            .map(|b| ratio(b.count, total) * (b.accuracy - b.confidence).abs())
            .sum();
        let labeled = self.counts.labeled;
        let slices = self
            .slices
            .iter()
            .map(|((ci, value), a)| SliceStats {
                column: self.slice_by[*ci].clone(),
                value: value.clone(),
                images: a.images,
                labeled: a.labeled,
                evaluated: a.evaluated,
                top1: ratio(a.right, a.labeled),
                top1_scored: ratio(a.right, a.evaluated),
                recall: a
                    .classes
                    .iter()
                    .map(|(&id, &(n, r))| (name(id), ratio(r, n)))
                    .collect(),
            })
            .collect();
        Metrics {
            slices,
            counts: self.counts,
            top1: ratio(self.top1, labeled),
            topk: ratio(self.topk, labeled),
            top1_scored: ratio(self.top1, total),
            topk_scored: ratio(self.topk, total),
            k: self.k,
            macro_avg: avg(false),
            weighted_avg: avg(true),
            per_class,
            confusion: Confusion {
                labels: ids.iter().map(|&id| name(id)).collect(),
                ids,
                matrix,
            },
            calibration: Calibration { ece, bins },
        }
    }
}

/// Numerically stable softmax.
pub(crate) fn softmax(logits: &[f32]) -> Vec<f32> {
    let m = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f64> = logits.iter().map(|&x| ((x - m) as f64).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| (v / s) as f32).collect()
}

/// Indices of the `k` largest values, highest first; ties go to the lower index, so
/// the order is deterministic.
pub(crate) fn top_k(probs: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..probs.len()).collect();
    idx.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
    idx.truncate(k.min(probs.len()));
    idx
}

#[cfg(test)]
mod tests {
    #[test]
    fn confusion_is_stored_sparse_and_dense_files_still_read() {
        let c = Confusion {
            ids: vec![0, 3],
            labels: vec!["a".into(), "d".into()],
            matrix: vec![vec![5, 0], vec![2, 7]],
        };
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(
            v["cells"],
            serde_json::json!([[0, 0, 5], [1, 0, 2], [1, 1, 7]])
        );
        assert!(v.get("matrix").is_none());
        assert_eq!(serde_json::from_value::<Confusion>(v).unwrap(), c);
        let dense =
            serde_json::json!({"ids": [0, 3], "labels": ["a", "d"], "matrix": [[5, 0], [2, 7]]});
        assert_eq!(serde_json::from_value::<Confusion>(dense).unwrap(), c);
        let bad = serde_json::json!({"ids": [0, 3], "labels": ["a", "d"], "cells": [[0, 2, 1]]});
        assert!(serde_json::from_value::<Confusion>(bad).is_err());
    }

    use super::*;
    use crate::record::Row;
    use proptest::prelude::*;

    fn row(t: Option<u32>, p: u32, score: f32) -> Row {
        Row {
            path: String::new(),
            label: String::new(),
            label_id: t,
            pred: None,
            pred_id: Some(p),
            score: Some(score),
            topk_ids: Some(vec![p, (p + 1) % 3]),
            topk_scores: None,
            correct: t.map(|t| t == p),
            status: Status::Ok,
            error: None,
            warning: None,
            attn_rollout: None,
            extra: vec![],
        }
    }

    #[test]
    fn hand_checked_example() {
        let labels: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        // truth a a b b c ; pred a b b b a
        let rows = vec![
            row(Some(0), 0, 0.9),
            row(Some(0), 1, 0.6),
            row(Some(1), 1, 0.8),
            row(Some(1), 1, 0.7),
            row(Some(2), 0, 0.5),
            row(None, 2, 0.5),
        ];
        let m = compute(&rows, &labels, 2, 3);
        assert_eq!(m.counts.evaluated, 5);
        assert_eq!(m.counts.unmapped, 1);
        assert_eq!(m.counts.skipped, 3);
        assert!((m.top1 - 0.6).abs() < 1e-12);
        // top-2 adds row 2 (pred b, then c? no: [1,2]) -> truth a not in; row 5 pred a,[0,1] no.
        assert!((m.topk - 0.6).abs() < 1e-12);
        assert_eq!(
            m.confusion.matrix,
            vec![vec![1, 1, 0], vec![0, 2, 0], vec![1, 0, 0]]
        );
        let a = &m.per_class[0];
        assert!((a.precision - 0.5).abs() < 1e-12 && (a.recall - 0.5).abs() < 1e-12);
        let b = &m.per_class[1];
        assert!((b.precision - 2.0 / 3.0).abs() < 1e-12 && b.recall == 1.0);
        assert_eq!(m.per_class[2].f1, 0.0);
        // ECE by hand: bins 0.9->13, 0.6->9, 0.8->12, 0.7->10, 0.5->7.
        let ece = (0.1 + 0.6 + 0.2 + 0.3 + 0.5) / 5.0;
        assert!(
            (m.calibration.ece - ece).abs() < 1e-6,
            "{}",
            m.calibration.ece
        );
        assert!((m.macro_avg.f1 - (0.5 + 0.8 + 0.0) / 3.0).abs() < 1e-12);
    }

    #[test]
    fn a_failed_labeled_image_counts_as_wrong_in_top1_not_in_top1_scored() {
        let labels: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let mut failed = row(Some(1), 0, 0.0);
        failed.status = Status::Error;
        failed.pred_id = None;
        failed.topk_ids = None;
        let mut failed_unmapped = failed.clone();
        failed_unmapped.label_id = None;
        let rows = vec![
            row(Some(0), 0, 0.9),
            row(Some(1), 1, 0.8),
            row(Some(2), 0, 0.7),
            failed,
            failed_unmapped,
        ];
        let m = compute(&rows, &labels, 2, 0);
        assert_eq!((m.counts.labeled, m.counts.evaluated), (4, 3));
        assert_eq!((m.counts.errors, m.counts.unmapped), (2, 1));
        assert!((m.top1 - 2.0 / 4.0).abs() < 1e-12, "{}", m.top1);
        assert!((m.top1_scored - 2.0 / 3.0).abs() < 1e-12);
        // The confusion matrix holds the three scored rows only.
        let cells: u64 = m.confusion.matrix.iter().flatten().sum();
        assert_eq!(cells, 3);
    }

    #[test]
    fn topk_ties_are_deterministic() {
        assert_eq!(top_k(&[0.2, 0.4, 0.4, 0.0], 3), vec![1, 2, 0]);
        let s = softmax(&[1.0, 1.0]);
        assert!((s[0] - 0.5).abs() < 1e-7);
    }

    proptest! {
        #[test]
        fn invariants(pairs in proptest::collection::vec((0u32..6, 0u32..6, 0.0f32..1.0), 0..200)) {
            let labels: Vec<String> = (0..6).map(|i| i.to_string()).collect();
            let rows: Vec<Row> = pairs.iter().map(|&(t, p, s)| row(Some(t), p, s)).collect();
            let m = compute(&rows, &labels, 5, 0);
            let total: u64 = m.confusion.matrix.iter().flatten().sum();
            prop_assert_eq!(total, rows.len() as u64);
            prop_assert!((0.0..=1.0).contains(&m.top1) && m.topk >= m.top1);
            prop_assert!((0.0..=1.0).contains(&m.calibration.ece));
            let diag: u64 = (0..m.confusion.ids.len()).map(|i| m.confusion.matrix[i][i]).sum();
            prop_assert_eq!(diag, (m.top1 * rows.len() as f64).round() as u64);
            for c in &m.per_class {
                prop_assert!(c.f1 <= c.precision.max(c.recall) + 1e-12);
            }
        }
    }
}
