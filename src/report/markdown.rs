//! `report.md`: a short Markdown summary for CI job summaries
//! (`$GITHUB_STEP_SUMMARY`) and PR comments.
//!
//! Why: reviewers see the headline in the PR without opening an artifact. It stays
//! short (a table of headline numbers, the top confusions, the lowest-recall
//! classes, failures) and every name from the dataset is escaped, since class
//! folders and file names are user data that GitHub would otherwise render as
//! Markdown or HTML.

use std::fmt::Write as _;

use super::escape;
use super::{charts, pct, pct_ci, Exporter, Format, Output, ReportData};
use crate::error::Result;

/// Items in each short list (confusions, classes, failures).
pub(crate) const MD_ITEMS: usize = 5;

/// The `md` format: `report.md`.
pub(crate) struct MarkdownExporter;

impl Exporter for MarkdownExporter {
    fn format(&self) -> Format {
        Format::Markdown
    }
    fn render(&self, data: &ReportData, _charts: &charts::Charts) -> Result<Vec<Output>> {
        Ok(vec![Output {
            rel: "report.md".into(),
            bytes: markdown(data).into_bytes(),
        }])
    }
}

/// Thousands separators for counts.
pub(crate) fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The text of `report.md`.
pub(crate) fn markdown(data: &ReportData) -> String {
    let m = data.metrics();
    let run = &data.file.run;
    let c = &m.counts;
    let mut s = String::new();
    let _ = writeln!(s, "## vit-batch report: {}\n", escape::markdown(&run.model));
    let _ = writeln!(s, "Dataset: {}\n", escape::markdown(&run.data_dir));
    let _ = writeln!(s, "| Metric | Value |\n|---|---|");
    let _ = writeln!(
        s,
        "| Images | {} ({} ok, {} errors, {} unmapped; {} non-image files skipped) |",
        thousands(c.images),
        thousands(c.ok),
        thousands(c.errors),
        thousands(c.unmapped),
        thousands(c.skipped)
    );
    let _ = writeln!(
        s,
        "| Labeled / evaluated | {} with a model class / {} of them scored |",
        thousands(c.labeled),
        thousands(c.evaluated)
    );
    let acc = |x: f64, ci| {
        if c.evaluated == 0 {
            "n/a (no image evaluated)".to_string()
        } else {
            pct_ci(x, ci)
        }
    };
    let _ = writeln!(s, "| Top-1 accuracy | {} |", acc(m.top1, data.top1_ci));
    if c.labeled != c.evaluated && c.evaluated > 0 {
        let _ = writeln!(
            s,
            "| Top-1 of the scored images only | {} (the {} failed labeled images left out) |",
            super::pct(m.top1_scored),
            thousands(c.labeled - c.evaluated)
        );
    }
    let _ = writeln!(
        s,
        "| Top-{} accuracy | {} |",
        m.k,
        acc(m.topk, data.topk_ci)
    );
    let _ = writeln!(s, "| Macro F1 | {:.4} |", m.macro_avg.f1);
    let _ = writeln!(
        s,
        "| ECE ({} bins) | {:.4} |",
        m.calibration.bins.len(),
        m.calibration.ece
    );
    if let Some(sub) = &data.file.run.subset {
        let _ = writeln!(s, "| Subset | {} |", escape::markdown(sub));
    }
    let _ = writeln!(
        s,
        "| Preprocessing | {} |",
        escape::markdown(&data.file.run.preprocess_source)
    );
    let t = &data.file.throughput;
    let _ = writeln!(
        s,
        "| Throughput | {:.1} images/s ({}, {} threads, batch {}) |",
        t.images_per_s,
        escape::markdown(&format!("{:?}", run.provider).to_lowercase()),
        run.threads,
        run.batch_size
    );
    let _ = writeln!(
        s,
        "| Engine | {} |",
        escape::markdown(&run.engine_summary())
    );
    let _ = writeln!(s, "| CPU | {} |", escape::markdown(&run.cpu_summary()));
    let _ = writeln!(s);
    if !data.pairs.is_empty() {
        let _ = writeln!(s, "**Most confused (true → predicted):**\n");
        for p in data.pairs.iter().take(MD_ITEMS) {
            let _ = writeln!(
                s,
                "- {} → {}: {} ({} of the class)",
                escape::markdown(&p.true_label),
                escape::markdown(&p.pred_label),
                thousands(p.count),
                pct(p.share)
            );
        }
        let _ = writeln!(s);
    }
    let worst = charts::recall_order(&m.per_class);
    if !worst.is_empty() {
        let _ = writeln!(s, "**Lowest recall:**\n");
        for cs in worst.iter().take(MD_ITEMS) {
            let _ = writeln!(
                s,
                "- {}: {} of {}",
                escape::markdown(&cs.class),
                pct(cs.recall),
                thousands(cs.support)
            );
        }
        let _ = writeln!(s);
    }
    if !m.slices.is_empty() {
        let _ = writeln!(
            s,
            "**Slices** (top-1, lowest first):\n\n| Column | Value | Images | Top-1 |\n|---|---|---|---|"
        );
        for sl in super::slice_order(&m.slices) {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} |",
                escape::markdown(&sl.column),
                escape::markdown(&sl.value),
                thousands(sl.images),
                pct(sl.top1)
            );
        }
        let _ = writeln!(s);
    }
    if data.failures_total > 0 {
        let _ = writeln!(
            s,
            "**{} file(s) failed to score**{}:\n",
            thousands(data.failures_total as u64),
            if data.failures_total > MD_ITEMS {
                format!(" (first {MD_ITEMS})")
            } else {
                String::new()
            }
        );
        for f in data.failures.iter().take(MD_ITEMS) {
            let _ = writeln!(
                s,
                "- {}: {}",
                escape::markdown(&f.path),
                escape::markdown(&f.error)
            );
        }
        let _ = writeln!(s);
    }
    if !run.label_mapping.unmapped.is_empty() {
        let names: Vec<String> = run
            .label_mapping
            .unmapped
            .iter()
            .map(|u| escape::markdown(u))
            .collect();
        let _ = writeln!(
            s,
            "**Unmapped class folders** (scored, not in accuracy): {}\n",
            names.join(", ")
        );
    }
    let _ = writeln!(
        s,
        "Accuracy = right / labeled images (class folder maps to a model label); a failed image counts as wrong. Intervals: 95% percentile bootstrap, {} resamples of the labeled images (seeded). Full report: `report.html`.",
        super::BOOTSTRAP_RESAMPLES
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(thousands(12), "12");
    }
}
