//! The regression gate's outputs: what `vit-batch compare` (and a pipeline's gate
//! stage) writes from a [`CompareReport`]: the full report as JSON, a Markdown
//! summary for CI job summaries (`$GITHUB_STEP_SUMMARY`) and JUnit XML (one testcase
//! per gate, for CI test reporters), plus the one line printed on the terminal.
//!
//! Why here and not in `compare`: `compare` decides (statistics and verdicts); this
//! module only presents, like the report's exporters beside it. Each file format is
//! a [`GateExporter`] (the hyperfine style the report uses), the writes go through
//! the report's one file writer, and every name from the data goes through
//! [`super::escape`], so a class name reads the same here as in `report.md`.

use std::fmt::Write as _;
use std::path::PathBuf;

use super::escape;
use crate::compare::{fmt_p, pct, signed_pp, CompareReport, Flip, Verdict};
use crate::error::Result;
use crate::options::CompareOptions;

/// Flips listed in the Markdown summary (all of them are in the JSON).
pub(crate) const MARKDOWN_MAX_FLIPS: usize = 25;
/// Right → wrong images listed in a failed gate's JUnit failure body.
const JUNIT_MAX_FLIPS: usize = 100;

/// One file format of the gate's report: turns it into text (no I/O of its own).
pub(crate) trait GateExporter {
    /// The file's contents.
    fn render(&self, r: &CompareReport) -> String;
}

/// The whole report, pretty-printed JSON.
pub(crate) struct JsonGate;
/// The Markdown summary.
pub(crate) struct MarkdownGate;
/// JUnit XML.
pub(crate) struct JunitGate;

impl GateExporter for JsonGate {
    fn render(&self, r: &CompareReport) -> String {
        serde_json::to_string_pretty(r).expect("report serializes")
    }
}

impl GateExporter for MarkdownGate {
    fn render(&self, r: &CompareReport) -> String {
        markdown(r)
    }
}

impl GateExporter for JunitGate {
    fn render(&self, r: &CompareReport) -> String {
        junit(r)
    }
}

impl CompareReport {
    /// Write the files `opts` asks for (`json`, `markdown`, `junit`, in that order),
    /// each atomically, creating missing parent folders.
    pub fn write_files(&self, opts: &CompareOptions) -> Result<()> {
        let outputs: [(&Option<PathBuf>, &dyn GateExporter); 3] = [
            (&opts.json, &JsonGate),
            (&opts.markdown, &MarkdownGate),
            (&opts.junit, &JunitGate),
        ];
        for (path, exporter) in outputs {
            if let Some(p) = path {
                super::write_file(p, exporter.render(self).as_bytes())?;
            }
        }
        Ok(())
    }

    /// One line for a terminal: the verdict (and the failed gates), top-1 of both
    /// runs, the flips both ways, McNemar's p and, for a partial comparison, the
    /// coverage.
    pub fn one_line(&self) -> String {
        let failed: Vec<&str> = self
            .gates
            .iter()
            .filter(|g| g.verdict == Verdict::Fail)
            .map(|g| g.name.as_str())
            .collect();
        format!(
            "{}: top-1 {} → {} ({}), {} right→wrong, {} wrong→right, McNemar p = {}{}",
            if failed.is_empty() {
                "PASS".to_string()
            } else {
                format!("FAIL ({})", failed.join(", "))
            },
            pct(self.accuracy.baseline),
            pct(self.accuracy.candidate),
            signed_pp(-self.accuracy.drop_pp),
            self.mcnemar.b,
            self.mcnemar.c,
            fmt_p(self.mcnemar.p_value),
            if self.coverage.partial {
                format!(
                    "; partial: {} common images ({:.1}% coverage)",
                    self.coverage.matched,
                    100.0 * self.coverage.fraction
                )
            } else {
                String::new()
            }
        )
    }
}

// ---------------------------------------------------------------------------
// Markdown

/// The Markdown summary, e.g. for `$GITHUB_STEP_SUMMARY`.
pub(crate) fn markdown(r: &CompareReport) -> String {
    let mut s = String::new();
    markdown_header(&mut s, r);
    markdown_metadata(&mut s, r);
    markdown_gates(&mut s, r);
    markdown_flips(&mut s, "Right → wrong", &r.regressions);
    markdown_flips(&mut s, "Wrong → right", &r.fixes);
    markdown_per_class(&mut s, r);
    s
}

/// How a model is named in the summary: a short prefix of its hash.
fn short_sha(s: &str) -> String {
    if s.is_empty() {
        "model ?".into()
    } else {
        format!("sha256 {}", crate::run::short_hash(s))
    }
}

/// Title, the two runs, and the coverage notes.
fn markdown_header(s: &mut String, r: &CompareReport) {
    let _ = writeln!(
        s,
        "## vit-batch compare: {}\n",
        if r.passed() {
            "✅ PASS"
        } else {
            "❌ REGRESSION"
        }
    );
    let _ = writeln!(
        s,
        "Baseline `{}` ({}) vs candidate `{}` ({}), {} images compared.\n",
        escape::markdown_code(&r.baseline.dir),
        escape::markdown(&short_sha(&r.baseline.model_sha256)),
        escape::markdown_code(&r.candidate.dir),
        escape::markdown(&short_sha(&r.candidate.model_sha256)),
        r.coverage.compared
    );
    let c = &r.coverage;
    if c.partial {
        let _ = writeln!(
            s,
            "> ⚠️ Partial comparison: {} common images ({:.1}% of all), {} only in the baseline, {} only in the candidate.\n",
            c.matched,
            100.0 * c.fraction,
            c.only_baseline,
            c.only_candidate
        );
    }
    if c.baseline_errors + c.candidate_errors > 0 {
        let _ = writeln!(
            s,
            "> Failed rows (counted as wrong): {} in the baseline, {} in the candidate.\n",
            c.baseline_errors, c.candidate_errors
        );
    }
}

/// The warnings, then the two runs' metadata side by side, differences in bold.
fn markdown_metadata(s: &mut String, r: &CompareReport) {
    for w in &r.warnings {
        let _ = writeln!(s, "> ⚠️ **{}**\n", escape::markdown(w));
    }
    let _ = writeln!(s, "| | baseline | candidate |\n|---|---|---|");
    for m in &r.metadata {
        let cell = |v: &str| {
            let v = escape::markdown_code(v);
            if m.differs {
                format!("**`{v}`**")
            } else {
                format!("`{v}`")
            }
        };
        let _ = writeln!(
            s,
            "| {}{} | {} | {} |",
            escape::markdown(&m.key),
            if m.differs { " (differs)" } else { "" },
            cell(&m.baseline),
            cell(&m.candidate)
        );
    }
    s.push('\n');
}

/// The table of gates, then why each failed gate failed.
fn markdown_gates(s: &mut String, r: &CompareReport) {
    let icon = |v: Verdict| match v {
        Verdict::Pass => "✅ pass",
        Verdict::Fail => "❌ fail",
        Verdict::Skipped => "⏭️ skipped",
    };
    s.push_str("| gate | verdict | rule | observed |\n| --- | --- | --- | --- |\n");
    for g in &r.gates {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} |",
            escape::markdown(&g.name),
            icon(g.verdict),
            escape::markdown(&g.threshold),
            escape::markdown(&g.observed)
        );
    }
    s.push('\n');
    for g in r.gates.iter().filter(|g| g.verdict == Verdict::Fail) {
        let _ = writeln!(
            s,
            "- **{}**: {}",
            escape::markdown(&g.name),
            escape::markdown(&g.message)
        );
    }
    if !r.passed() {
        s.push('\n');
    }
}

/// A run's prediction in a flip table: the label and score, or the row's error.
fn markdown_pred(p: &Option<String>, score: Option<f32>, e: &Option<String>) -> String {
    match (p, e) {
        (Some(p), _) => match score {
            Some(sc) => format!("{} ({sc:.2})", escape::markdown(p)),
            None => escape::markdown(p),
        },
        (None, Some(e)) => format!("error: {}", escape::markdown(e)),
        (None, None) => "—".into(),
    }
}

/// The first [`MARKDOWN_MAX_FLIPS`] images of `v` under `title` (nothing when empty).
fn markdown_flips(s: &mut String, title: &str, v: &[Flip]) {
    if v.is_empty() {
        return;
    }
    let _ = writeln!(s, "### {title} ({})\n", v.len());
    s.push_str("| image | label | baseline | candidate |\n| --- | --- | --- | --- |\n");
    for f in v.iter().take(MARKDOWN_MAX_FLIPS) {
        let _ = writeln!(
            s,
            "| `{}` | {} | {} | {} |",
            escape::markdown_code(&f.path),
            escape::markdown(&f.label),
            markdown_pred(&f.baseline_pred, f.baseline_score, &f.baseline_error),
            markdown_pred(&f.candidate_pred, f.candidate_score, &f.candidate_error)
        );
    }
    if v.len() > MARKDOWN_MAX_FLIPS {
        let _ = writeln!(
            s,
            "\n… and {} more (see the JSON report).",
            v.len() - MARKDOWN_MAX_FLIPS
        );
    }
    s.push('\n');
}

/// Per-class recall of both runs, folded away.
fn markdown_per_class(s: &mut String, r: &CompareReport) {
    if r.per_class.is_empty() {
        return;
    }
    s.push_str("<details><summary>Per-class recall</summary>\n\n");
    s.push_str(
        "| class | images | baseline | candidate | change | gated |\n| --- | ---: | ---: | ---: | ---: | --- |\n",
    );
    for c in &r.per_class {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            escape::markdown(&c.class),
            c.support,
            pct(c.baseline_recall),
            pct(c.candidate_recall),
            signed_pp(-c.drop_pp),
            if c.regressed {
                "❌"
            } else if c.gated {
                "yes"
            } else {
                "no"
            }
        );
    }
    s.push_str("\n</details>\n");
}

// ---------------------------------------------------------------------------
// JUnit

/// JUnit XML: one `<testcase>` per gate in suite `vit-batch compare`, a `<failure>`
/// for a failed gate, `<skipped>` for one that is off.
pub(crate) fn junit(r: &CompareReport) -> String {
    let n = r.gates.len();
    let count = |v: Verdict| r.gates.iter().filter(|g| g.verdict == v).count();
    let (failures, skipped) = (count(Verdict::Fail), count(Verdict::Skipped));
    let mut s = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        s,
        "<testsuites name=\"vit-batch compare\" tests=\"{n}\" failures=\"{failures}\" errors=\"0\" skipped=\"{skipped}\">"
    );
    let _ = writeln!(
        s,
        "  <testsuite name=\"vit-batch compare\" tests=\"{n}\" failures=\"{failures}\" errors=\"0\" skipped=\"{skipped}\" time=\"0\">"
    );
    let _ = writeln!(s, "    <properties>");
    let mut props = vec![
        ("baseline".to_string(), r.baseline.dir.as_str()),
        ("candidate".to_string(), r.candidate.dir.as_str()),
    ];
    for m in &r.metadata {
        props.push((format!("baseline_{}", m.key), m.baseline.as_str()));
        props.push((format!("candidate_{}", m.key), m.candidate.as_str()));
    }
    for (i, w) in r.warnings.iter().enumerate() {
        props.push((format!("warning_{i}"), w.as_str()));
    }
    for (k, v) in &props {
        let _ = writeln!(
            s,
            "      <property name=\"{}\" value=\"{}\"/>",
            escape::xml(k),
            escape::xml(v)
        );
    }
    let _ = writeln!(s, "    </properties>");
    for g in &r.gates {
        let _ = write!(
            s,
            "    <testcase classname=\"vit-batch.compare\" name=\"{}\" time=\"0\">",
            escape::xml(&g.name)
        );
        let detail = format!("rule: {}\nobserved: {}", g.threshold, g.observed);
        match g.verdict {
            Verdict::Pass => {}
            Verdict::Skipped => {
                let _ = write!(
                    s,
                    "\n      <skipped message=\"{}\"/>",
                    escape::xml(&g.message)
                );
            }
            Verdict::Fail => {
                let mut body = detail.clone();
                if g.name == "mcnemar" || g.name == "accuracy" || g.name == "class_recall" {
                    junit_regressions(&mut body, &r.regressions);
                }
                let _ = write!(
                    s,
                    "\n      <failure message=\"{}\" type=\"regression\">{}</failure>",
                    escape::xml(&g.message),
                    escape::xml(&body)
                );
            }
        }
        let _ = writeln!(
            s,
            "\n      <system-out>{}</system-out>\n    </testcase>",
            escape::xml(&format!("{}\n{detail}", g.message))
        );
    }
    s.push_str("  </testsuite>\n</testsuites>\n");
    s
}

/// The right → wrong images listed in the failure of an accuracy, class_recall or
/// mcnemar gate (plain text; the caller escapes it).
fn junit_regressions(body: &mut String, regressions: &[Flip]) {
    let _ = write!(body, "\nright → wrong ({}):", regressions.len());
    for f in regressions.iter().take(JUNIT_MAX_FLIPS) {
        let _ = write!(
            body,
            "\n  {} label={} baseline={} candidate={}",
            f.path,
            f.label,
            f.baseline_pred.as_deref().unwrap_or("error"),
            f.candidate_pred.as_deref().unwrap_or("error")
        );
    }
    if regressions.len() > JUNIT_MAX_FLIPS {
        let _ = write!(
            body,
            "\n  ... and {} more",
            regressions.len() - JUNIT_MAX_FLIPS
        );
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::compare::{compare_runs, LoadedRun};
    use crate::record::{Row, Status};
    use crate::report::ReportData;
    use crate::run::{MetricsFile, RunInfo, Throughput};

    /// A class folder name with HTML, a table pipe and Markdown punctuation.
    const NASTY: &str = "<b>dog</b> | *d* [x](y) #h_1";

    fn row(i: usize, labels: &[String], t: usize, p: usize) -> Row {
        Row {
            path: format!("{}/img_{i:03}.png", labels[t]),
            label: labels[t].clone(),
            label_id: Some(t as u32),
            pred: Some(labels[p].clone()),
            pred_id: Some(p as u32),
            score: Some(0.9),
            topk_ids: Some(vec![p as u32]),
            topk_scores: Some(vec![0.9]),
            correct: Some(p == t),
            status: Status::Ok,
            error: None,
            warning: None,
            attn_rollout: None,
            extra: vec![],
        }
    }

    fn run(dir: &str, rows: Vec<Row>, labels: &[String]) -> LoadedRun {
        let class_to_id: BTreeMap<String, usize> = labels
            .iter()
            .enumerate()
            .map(|(i, c)| (c.clone(), i))
            .collect();
        let metrics = MetricsFile {
            schema_version: crate::run::METRICS_SCHEMA_VERSION,
            metrics: crate::metrics::compute(&rows, labels, 1, 0),
            throughput: Throughput::new(rows.len() as u64, 1.0, vec![]),
            run: RunInfo {
                tool: "vit-batch".into(),
                tool_version: "0.0.0-test".into(),
                data_dir: "/nonexistent".into(),
                model: "model.onnx".into(),
                model_sha256: "0123456789abcdef".into(),
                onnxruntime_version: "1.31.1".into(),
                provider: crate::infer::Provider::Cpu,
                precision: Default::default(),
                engine: Default::default(),
                threads: 1,
                batch_size: 1,
                preprocess: crate::preprocess::PreprocessConfig::imagenet_default(224, 224),
                preprocess_source: "defaults".into(),
                dataset_fingerprint: "test".into(),
                shard: None,
                subset: None,
                dataset_format: "folder".into(),
                image_root: None,
                label_column: None,
                label_mapping: crate::model::LabelMapping {
                    model_labels: labels.to_vec(),
                    matched_by: class_to_id
                        .keys()
                        .map(|c| (c.clone(), "name".into()))
                        .collect(),
                    class_to_id,
                    unmapped: vec![],
                },
                warnings: vec![],
                attention: None,
            },
        };
        LoadedRun {
            dir: dir.into(),
            metrics,
            rows,
        }
    }

    #[test]
    fn a_class_name_is_escaped_the_same_in_report_md_and_gate_md() {
        let labels = vec!["cat".to_string(), NASTY.to_string()];
        // Class 1 is right 15 of 20 times in the baseline, 5 of 20 in the candidate.
        let rows = |right_of_nasty: usize| -> Vec<Row> {
            (0..40)
                .map(|i| {
                    let t = i % 2;
                    let p = if t == 1 && i / 2 >= right_of_nasty {
                        0
                    } else {
                        t
                    };
                    row(i, &labels, t, p)
                })
                .collect()
        };
        let base = run("base", rows(15), &labels);
        let cand = run("cand", rows(5), &labels);
        let r = compare_runs(&CompareOptions::new("base", "cand"), &base, &cand).unwrap();
        let gate_md = markdown(&r);
        let data = ReportData::build(&base.rows, base.metrics.clone(), false);
        let report_md = super::super::markdown::markdown(&data);

        let escaped = escape::markdown(NASTY);
        assert_eq!(
            escaped,
            "&lt;b&gt;dog&lt;/b&gt; \\| \\*d\\* \\[x\\]\\(y\\) \\#h\\_1"
        );
        // report.md: lowest recall; gate.md: the per-class table and the failed
        // class_recall gate's message, which quotes the name.
        assert!(report_md.contains(&format!("- {escaped}: ")), "{report_md}");
        assert!(
            gate_md.contains(&format!("| {escaped} | 20 |")),
            "{gate_md}"
        );
        assert!(gate_md.contains(&format!("'{escaped}'")), "{gate_md}");
        // Outside code spans (image paths are shown as code, where text is inert),
        // the raw name never appears.
        let outside_code = |md: &str| md.split('`').step_by(2).collect::<String>();
        for md in [outside_code(&report_md), outside_code(&gate_md)] {
            assert!(!md.contains(NASTY) && !md.contains("<b>") && !md.contains("*d*"));
        }
    }

    #[test]
    fn short_sha_never_panics() {
        assert_eq!(short_sha("0123456789abcdef"), "sha256 0123456789ab");
        assert_eq!(short_sha("abc"), "sha256 abc");
        assert_eq!(short_sha(""), "model ?");
        assert_eq!(short_sha("ééééééééééééé"), "sha256 éééééééééééé");
    }
}
