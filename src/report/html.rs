//! `report.html`: the full evaluation report as one self-contained page.
//!
//! Why it looks like this: the page is a CI artifact that must open anywhere, offline,
//! years later. So: inline CSS, one small inline script (table sorting and a class
//! filter; no external scripts, a Content-Security-Policy that forbids any network
//! fetch), and charts and thumbnails embedded as `data:` URIs rather than linked
//! (the PNGs are also written under `charts/` when the png format is asked for).
//! Every string that comes from the dataset, the model or the file system (class
//! names, paths, error messages) goes through [`escape::html`]: a class folder named
//! `<script>…` shows up as text. Long lists are capped (failed files) so a run with
//! 50,000 images and 1,000 classes stays a page a browser opens instantly.

use std::fmt::Write as _;

use base64::Engine as _;

use super::escape;
use super::markdown::thousands;
use super::{charts, pct, Exporter, Format, Output, ReportData, MAX_FAILURES};
use crate::error::Result;

/// The `html` format: `report.html`.
pub(crate) struct HtmlExporter;

impl Exporter for HtmlExporter {
    fn format(&self) -> Format {
        Format::Html
    }
    fn render(&self, data: &ReportData, charts: &charts::Charts) -> Result<Vec<Output>> {
        Ok(vec![Output {
            rel: "report.html".into(),
            bytes: page(data, charts).into_bytes(),
        }])
    }
}

const CSS: &str = r#"
:root{--fg:#1b1f24;--mut:#57606a;--bd:#d0d7de;--bg2:#f6f8fa;--acc:#0b4f9c;--bad:#b42318}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:var(--fg);margin:0;padding:0 24px 48px;max-width:1280px}
h1{font-size:22px;margin:20px 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid var(--bd);padding-bottom:4px}
h3{font-size:15px;margin:16px 0 6px}
.mut{color:var(--mut)}.bad{color:var(--bad)}
nav a{margin-right:12px;color:var(--acc);text-decoration:none}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:12px 0}
.card{border:1px solid var(--bd);border-radius:6px;padding:8px 12px;min-width:150px;background:#fff}
.card .v{font-size:20px;font-weight:600}.card .l{color:var(--mut);font-size:12px}
table{border-collapse:collapse;margin:6px 0 12px}
th,td{border:1px solid var(--bd);padding:3px 8px;text-align:left;vertical-align:top}
th{background:var(--bg2)}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
table.sortable th{cursor:pointer;user-select:none}
table.sortable th[data-dir=asc]::after{content:" \25B2"}table.sortable th[data-dir=desc]::after{content:" \25BC"}
.scroll{max-height:560px;overflow:auto;border:1px solid var(--bd);display:inline-block;max-width:100%}
.scroll table{margin:0}
.scroll thead th{position:sticky;top:0}
td.path{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;word-break:break-all;max-width:520px}
figure{margin:10px 0 18px}figcaption{color:var(--mut);font-size:12px}
img.chart{max-width:100%;height:auto;border:1px solid var(--bd)}
.charts{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:12px}
.mistake{border:1px solid var(--bd);border-radius:6px;padding:6px;font-size:12px;word-break:break-all}
.mistake img{display:block;margin:0 auto 4px;image-rendering:auto}
.mistake img.rollout{border-radius:3px}
.thumb-missing{height:96px;display:flex;align-items:center;justify-content:center;background:var(--bg2);color:var(--mut);text-align:center;padding:4px}
input[type=search]{padding:4px 8px;border:1px solid var(--bd);border-radius:4px;width:260px}
"#;

/// Sorting (click a header; numeric columns sort by `data-v`) and the class filter.
const SCRIPT: &str = r#"
(function () {
  document.querySelectorAll('table.sortable').forEach(function (t) {
    var heads = t.tHead.rows[0].cells;
    Array.prototype.forEach.call(heads, function (th, i) {
      th.addEventListener('click', function () {
        var tb = t.tBodies[0];
        var rows = Array.prototype.slice.call(tb.rows);
        var asc = th.getAttribute('data-dir') !== 'asc';
        Array.prototype.forEach.call(heads, function (h) { h.removeAttribute('data-dir'); });
        th.setAttribute('data-dir', asc ? 'asc' : 'desc');
        var num = th.classList.contains('n');
        var key = function (r) {
          var c = r.cells[i];
          var v = c.hasAttribute('data-v') ? c.getAttribute('data-v') : c.textContent;
          return num ? parseFloat(v) : v;
        };
        rows.sort(function (a, b) {
          var x = key(a), y = key(b);
          var c = num ? x - y : String(x).localeCompare(String(y));
          return asc ? c : -c;
        });
        rows.forEach(function (r) { tb.appendChild(r); });
      });
    });
  });
  var f = document.getElementById('class-filter');
  if (f) {
    f.addEventListener('input', function () {
      var q = f.value.toLowerCase();
      var rows = document.getElementById('per-class-table').tBodies[0].rows;
      Array.prototype.forEach.call(rows, function (r) {
        r.style.display = r.cells[0].textContent.toLowerCase().indexOf(q) >= 0 ? '' : 'none';
      });
    });
  }
})();
"#;

fn card(s: &mut String, label: &str, value: &str, note: &str) {
    let _ = write!(
        s,
        "<div class=\"card\"><div class=\"l\">{}</div><div class=\"v\">{}</div><div class=\"l\">{}</div></div>",
        escape::html(label),
        escape::html(value),
        escape::html(note)
    );
}

fn chart_img(s: &mut String, c: &charts::Chart, id: &str) {
    let b64 = base64::engine::general_purpose::STANDARD.encode(&c.png);
    let _ = write!(
        s,
        "<figure id=\"{id}\"><img class=\"chart\" alt=\"{}\" width=\"{}\" height=\"{}\" src=\"data:image/png;base64,{b64}\"><figcaption>{}. {}</figcaption></figure>",
        escape::html(&c.title),
        c.width,
        c.height,
        escape::html(&c.title),
        escape::html(&c.caption)
    );
}

fn num_td(s: &mut String, v: f64, shown: &str) {
    let _ = write!(
        s,
        "<td class=\"n\" data-v=\"{v}\">{}</td>",
        escape::html(shown)
    );
}

fn meta_row(s: &mut String, k: &str, v: &str) {
    let _ = write!(
        s,
        "<tr><th>{}</th><td>{}</td></tr>",
        escape::html(k),
        escape::html(v)
    );
}

/// The whole page: the head, then one renderer per section, in page order.
pub(crate) fn page(data: &ReportData, charts: &charts::Charts) -> String {
    let mut s = String::with_capacity(256 * 1024);
    head(&mut s, data);
    summary_section(&mut s, data);
    confusion_section(&mut s, data, charts);
    per_class_section(&mut s, data, charts);
    slices_section(&mut s, data, charts);
    calibration_section(&mut s, data, charts);
    mistakes_section(&mut s, data);
    failures_section(&mut s, data);
    run_section(&mut s, data);
    let _ = writeln!(s, "<script>{SCRIPT}</script></body></html>");
    s
}

/// `<head>` (styles, the Content-Security-Policy) and the page header with its
/// navigation.
fn head(s: &mut String, data: &ReportData) {
    let run = &data.file.run;
    let _ = write!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>vit-batch report: {}</title><style>{CSS}</style></head><body>\n",
        escape::html(&run.model)
    );
    let _ = write!(
        s,
        "<header><h1>vit-batch evaluation report</h1><div class=\"mut\">Model <b>{}</b> on <b>{}</b></div>\
<nav><a href=\"#summary\">Summary</a><a href=\"#confusion\">Confusion</a><a href=\"#per-class\">Per class</a>\
<a href=\"#calibration\">Calibration</a><a href=\"#mistakes\">Hardest mistakes</a><a href=\"#failures\">Failures</a><a href=\"#run\">Run</a></nav></header>",
        escape::html(&run.model),
        escape::html(&run.data_dir)
    );
}

/// Headline cards, counts, the unmapped classes and the warnings.
fn summary_section(s: &mut String, data: &ReportData) {
    let m = data.metrics();
    let run = &data.file.run;
    let t = &data.file.throughput;
    let c = &m.counts;
    s.push_str("\n<section id=\"summary\"><h2>Summary</h2><div class=\"cards\">");
    let ci = |x: Option<super::Interval>| match x {
        Some(i) => format!("95% CI {:.1}–{:.1}%", 100.0 * i.lo, 100.0 * i.hi),
        None => "no evaluated images".into(),
    };
    let acc = |x: f64| {
        if c.evaluated == 0 {
            "n/a".to_string()
        } else {
            pct(x)
        }
    };
    let top1_note = if c.labeled != c.evaluated && c.evaluated > 0 {
        format!(
            "{}; {} of the {} scored",
            ci(data.top1_ci),
            pct(m.top1_scored),
            thousands(c.evaluated)
        )
    } else {
        ci(data.top1_ci)
    };
    card(s, "Top-1 accuracy", &acc(m.top1), &top1_note);
    card(
        s,
        &format!("Top-{} accuracy", m.k),
        &acc(m.topk),
        &ci(data.topk_ci),
    );
    card(
        s,
        "Macro F1",
        &format!("{:.4}", m.macro_avg.f1),
        &format!("weighted {:.4}", m.weighted_avg.f1),
    );
    let (pp, pp_note) = match run.preprocess_source.split_once(": ") {
        Some((head, rest)) => (head, rest),
        None => (run.preprocess_source.as_str(), ""),
    };
    card(s, "Preprocessing", pp, pp_note);
    card(
        s,
        "ECE",
        &format!("{:.4}", m.calibration.ece),
        &format!("{} bins", m.calibration.bins.len()),
    );
    card(
        s,
        "Throughput",
        &format!("{:.1} img/s", t.images_per_s),
        &format!("{} scored in {:.1} s", thousands(t.scored), t.wall_s),
    );
    s.push_str("</div><table id=\"counts\"><thead><tr><th>Images</th><th>Ok</th><th>Errors</th><th>Skipped (non-image)</th><th>Unmapped</th><th>Labeled</th><th>Evaluated</th><th>Wrong</th></tr></thead><tbody><tr>");
    for v in [
        c.images,
        c.ok,
        c.errors,
        c.skipped,
        c.unmapped,
        c.labeled,
        c.evaluated,
        data.wrong_total as u64,
    ] {
        let _ = write!(s, "<td class=\"n\">{}</td>", thousands(v));
    }
    s.push_str("</tr></tbody></table>");
    let _ = write!(
        s,
        "<p class=\"mut\">Accuracy = right / labeled images (those whose class folder maps to a model label); \
a labeled image that failed counts as wrong. Evaluated = labeled and scored: the per-class figures, confusion matrix and calibration cover these. \
Intervals: 95% percentile bootstrap, {} resamples of the labeled images, fixed seed.</p>",
        super::BOOTSTRAP_RESAMPLES
    );
    if !run.label_mapping.unmapped.is_empty() {
        let names: Vec<String> = run
            .label_mapping
            .unmapped
            .iter()
            .map(|u| escape::html(u))
            .collect();
        let _ = write!(
            s,
            "<p class=\"bad\">Class folders matching no model label (scored, not in accuracy): {}</p>",
            names.join(", ")
        );
    }
    if !run.warnings.is_empty() || data.row_warnings > 0 {
        s.push_str("<h3>Warnings</h3><ul>");
        for w in &run.warnings {
            let _ = write!(s, "<li>{}</li>", escape::html(w));
        }
        if data.row_warnings > 0 {
            let _ = write!(
                s,
                "<li>{} scored image(s) carry a warning (see the <code>warning</code> column of predictions.parquet)</li>",
                thousands(data.row_warnings as u64)
            );
        }
        s.push_str("</ul>");
    }
    s.push_str("</section>\n");
}

/// The two heatmaps and the top confused pairs.
fn confusion_section(s: &mut String, data: &ReportData, charts: &charts::Charts) {
    let m = data.metrics();
    s.push_str("<section id=\"confusion\"><h2>Confusion</h2>");
    let shown = charts.heatmaps.first().map(|h| h.shown.len()).unwrap_or(0);
    if shown > 0 && shown < m.confusion.ids.len() {
        let _ = write!(
            s,
            "<p class=\"mut\">{} classes are too many to draw: the heatmaps show the {shown} classes with the most errors (as true or predicted class). The full matrix is in metrics.json.</p>",
            m.confusion.ids.len()
        );
    }
    s.push_str("<div class=\"charts\">");
    for (file, id) in [
        ("confusion.png", "confusion-raw"),
        ("confusion_normalized.png", "confusion-normalized"),
    ] {
        if let Some(ch) = charts.get(file) {
            chart_img(s, ch, id);
        }
    }
    s.push_str("</div>");
    s.push_str("<h3 id=\"confused-pairs\">Top confused pairs</h3>");
    if data.pairs.is_empty() {
        s.push_str("<p>No confusions.</p>");
    } else {
        s.push_str("<table class=\"sortable\"><thead><tr><th>True class</th><th>Predicted as</th><th class=\"n\">Images</th><th class=\"n\">Share of true class</th></tr></thead><tbody>");
        for p in &data.pairs {
            let _ = write!(
                s,
                "<tr><td>{}</td><td>{}</td>",
                escape::html(&p.true_label),
                escape::html(&p.pred_label)
            );
            num_td(s, p.count as f64, &thousands(p.count));
            num_td(s, p.share, &pct(p.share));
            s.push_str("</tr>");
        }
        s.push_str("</tbody></table>");
    }
    s.push_str("</section>\n");
}

/// The recall chart and the sortable, filterable per-class table.
fn per_class_section(s: &mut String, data: &ReportData, charts: &charts::Charts) {
    let m = data.metrics();
    s.push_str("<section id=\"per-class\"><h2>Per class</h2>");
    if let Some(ch) = charts.get("recall_by_class.png") {
        chart_img(s, ch, "recall-chart");
    }
    let _ = write!(
        s,
        "<p><input type=\"search\" id=\"class-filter\" placeholder=\"Filter {} classes by name\" aria-label=\"Filter classes\"> <span class=\"mut\">Click a column header to sort.</span></p>",
        m.per_class.len()
    );
    s.push_str("<div class=\"scroll\"><table class=\"sortable\" id=\"per-class-table\"><thead><tr><th>Class</th><th class=\"n\">Id</th><th class=\"n\">Precision</th><th class=\"n\">Recall</th><th class=\"n\">F1</th><th class=\"n\">Support</th><th class=\"n\">Predicted</th></tr></thead><tbody>");
    for cs in &m.per_class {
        let _ = write!(s, "<tr><td>{}</td>", escape::html(&cs.class));
        num_td(s, cs.id as f64, &cs.id.to_string());
        num_td(s, cs.precision, &format!("{:.4}", cs.precision));
        num_td(s, cs.recall, &format!("{:.4}", cs.recall));
        num_td(s, cs.f1, &format!("{:.4}", cs.f1));
        num_td(s, cs.support as f64, &thousands(cs.support));
        num_td(s, cs.predicted as f64, &thousands(cs.predicted));
        s.push_str("</tr>");
    }
    s.push_str("</tbody><tfoot>");
    for (name, a) in [
        ("macro avg", &m.macro_avg),
        ("weighted avg", &m.weighted_avg),
    ] {
        let _ = write!(
            s,
            "<tr><th>{name}</th><td></td><td class=\"n\">{:.4}</td><td class=\"n\">{:.4}</td><td class=\"n\">{:.4}</td><td class=\"n\">{}</td><td></td></tr>",
            a.precision,
            a.recall,
            a.f1,
            thousands(a.support)
        );
    }
    s.push_str("</tfoot></table></div></section>\n");
}

/// Top-1 per value of each sliced column, lowest first, with its worst class.
fn slices_section(s: &mut String, data: &ReportData, charts: &charts::Charts) {
    let m = data.metrics();
    if m.slices.is_empty() {
        return;
    }
    s.push_str("<section id=\"slices\"><h2>Slices</h2>");
    if let Some(ch) = charts.get("slices.png") {
        chart_img(s, ch, "slices-chart");
    }
    s.push_str("<div class=\"scroll\"><table class=\"sortable\"><thead><tr><th>Column</th><th>Value</th><th class=\"n\">Images</th><th class=\"n\">Labeled</th><th class=\"n\">Top-1</th><th class=\"n\">Top-1 (scored)</th><th>Lowest recall</th></tr></thead><tbody>");
    for sl in super::slice_order(&m.slices) {
        let worst = sl
            .recall
            .iter()
            .min_by(|a, b| a.1.total_cmp(b.1).then(a.0.cmp(b.0)))
            .map(|(c, r)| format!("{} {}", escape::html(c), pct(*r)))
            .unwrap_or_default();
        let _ = write!(
            s,
            "<tr><td>{}</td><td>{}</td>",
            escape::html(&sl.column),
            escape::html(&sl.value)
        );
        num_td(s, sl.images as f64, &thousands(sl.images));
        num_td(s, sl.labeled as f64, &thousands(sl.labeled));
        num_td(s, sl.top1, &pct(sl.top1));
        num_td(s, sl.top1_scored, &pct(sl.top1_scored));
        let _ = write!(s, "<td>{worst}</td></tr>");
    }
    s.push_str("</tbody></table></div></section>\n");
}

/// The confidence histogram, the reliability diagram and the calibration bins.
fn calibration_section(s: &mut String, data: &ReportData, charts: &charts::Charts) {
    let m = data.metrics();
    s.push_str(
        "<section id=\"calibration\"><h2>Confidence and calibration</h2><div class=\"charts\">",
    );
    if let Some(ch) = charts.get("confidence.png") {
        chart_img(s, ch, "confidence-chart");
    }
    if let Some(ch) = charts.get("reliability.png") {
        chart_img(s, ch, "reliability-chart");
    }
    s.push_str("</div><details><summary>Calibration bins</summary><table><thead><tr><th class=\"n\">Confidence bin</th><th class=\"n\">Images</th><th class=\"n\">Mean confidence</th><th class=\"n\">Accuracy</th></tr></thead><tbody>");
    for b in &m.calibration.bins {
        let _ = write!(
            s,
            "<tr><td class=\"n\">{:.3}–{:.3}</td><td class=\"n\">{}</td><td class=\"n\">{:.4}</td><td class=\"n\">{:.4}</td></tr>",
            b.lo,
            b.hi,
            thousands(b.count),
            b.confidence,
            b.accuracy
        );
    }
    s.push_str("</tbody></table></details></section>\n");
}

/// Cards of the hardest mistakes, with thumbnails and rollout overlays.
fn mistakes_section(s: &mut String, data: &ReportData) {
    let m = data.metrics();
    let run = &data.file.run;
    let _ = write!(
        s,
        "<section id=\"mistakes\"><h2>Hardest mistakes</h2><p class=\"mut\">The {} most confidently wrong of {} wrong predictions, highest top-1 score first.</p>",
        data.mistakes.len(),
        thousands(data.wrong_total as u64)
    );
    let missing = data
        .mistakes
        .iter()
        .filter(|x| x.thumb_b64.is_none())
        .count();
    if missing > 0 {
        let _ = write!(
            s,
            "<p class=\"mut\">{missing} thumbnail(s) could not be made from the source files under {} (the reason is on each card).</p>",
            escape::html(&run.data_dir)
        );
    }
    s.push_str("<div class=\"grid\">");
    for x in &data.mistakes {
        mistake_card(s, x, m.k);
    }
    s.push_str("</div>");
    match &run.attention {
        Some(a) => {
            let drawn = data.mistakes.iter().filter(|x| x.rollout_b64.is_some()).count();
            let _ = write!(
                s,
                "<p class=\"mut\" id=\"rollout-note\">Second image on each card: attention rollout (Abnar &amp; Zuidema, 2020) over the {}x{} patch grid of the image as the model saw it, dark = little attention, yellow = most; all {} layers, {} heads. Drawn for {drawn} of {} cards.</p>",
                a.grid[0],
                a.grid[1],
                a.layers,
                a.heads,
                data.mistakes.len()
            );
        }
        None => s.push_str("<p class=\"mut\" id=\"rollout-note\">No attention maps: the model has no attention outputs (export it with <code>vit-batch export --with-attentions</code> to get rollout overlays here).</p>"),
    }
    s.push_str("</section>\n");
}

/// One card: thumbnail (or why there is none), rollout overlay, labels and path.
fn mistake_card(s: &mut String, x: &super::Mistake, k: usize) {
    s.push_str("<div class=\"mistake\">");
    match &x.thumb_b64 {
        Some(b) => {
            let _ = write!(
                s,
                "<img alt=\"{}\" src=\"data:image/jpeg;base64,{b}\">",
                escape::html(&x.path)
            );
        }
        None => {
            let _ = write!(
                s,
                "<div class=\"thumb-missing\">no thumbnail: {}</div>",
                escape::html(x.thumb_note.as_deref().unwrap_or(""))
            );
        }
    }
    if let Some(b) = &x.rollout_b64 {
        let _ = write!(
            s,
            "<img class=\"rollout\" alt=\"attention rollout of {}\" title=\"attention rollout (the model's view, after resize and crop)\" src=\"data:image/jpeg;base64,{b}\">",
            escape::html(&x.path)
        );
    }
    let rank = match x.true_rank {
        Some(r) => format!("true class ranked {r}"),
        None => format!("true class not in top-{k}"),
    };
    let _ = write!(
        s,
        "<div>true <b>{}</b></div><div>pred <b class=\"bad\">{}</b> ({:.3})</div><div class=\"mut\">{}</div><div class=\"mut\">{}</div></div>",
        escape::html(&x.label),
        escape::html(&x.pred),
        x.score,
        escape::html(&rank),
        escape::html(&x.path)
    );
}

/// The failed files (capped at [`MAX_FAILURES`]).
fn failures_section(s: &mut String, data: &ReportData) {
    let _ = write!(
        s,
        "<section id=\"failures\"><h2>Failed files</h2><p>{} file(s) could not be scored.",
        thousands(data.failures_total as u64)
    );
    if data.failures_total > data.failures.len() {
        let _ = write!(
            s,
            " Showing the first {} (all are in predictions.parquet, <code>status = 'error'</code>).",
            thousands(MAX_FAILURES as u64)
        );
    }
    s.push_str("</p>");
    if !data.failures.is_empty() {
        s.push_str("<div class=\"scroll\"><table class=\"sortable\" id=\"failures-table\"><thead><tr><th>Path</th><th>Class</th><th>Error</th></tr></thead><tbody>");
        for f in &data.failures {
            let _ = write!(
                s,
                "<tr><td class=\"path\">{}</td><td>{}</td><td>{}</td></tr>",
                escape::html(&f.path),
                escape::html(&f.label),
                escape::html(&f.error)
            );
        }
        s.push_str("</tbody></table></div>");
    }
    s.push_str("</section>\n");
}

/// Where the numbers came from: model, dataset, runtime, preprocessing, labels.
fn run_section(s: &mut String, data: &ReportData) {
    let run = &data.file.run;
    s.push_str("<section id=\"run\"><h2>Run</h2><table>");
    meta_row(s, "Model", &run.model);
    meta_row(s, "Model sha256", &run.model_sha256);
    meta_row(s, "Dataset", &run.data_dir);
    meta_row(s, "Dataset fingerprint", &run.dataset_fingerprint);
    if let Some(sub) = &run.subset {
        meta_row(s, "Subset", sub);
    }
    meta_row(s, "Tool", &format!("{} {}", run.tool, run.tool_version));
    meta_row(s, "ONNX Runtime", &run.onnxruntime_version);
    meta_row(
        s,
        "Provider / threads / batch",
        &format!(
            "{} / {} / {}",
            format!("{:?}", run.provider).to_lowercase(),
            run.threads,
            run.batch_size
        ),
    );
    meta_row(s, "Engine", &run.engine_summary());
    meta_row(s, "CPU", &run.cpu_summary());
    meta_row(s, "Preprocessing source", &run.preprocess_source);
    meta_row(
        s,
        "Preprocessing",
        &serde_json::to_string(&run.preprocess).unwrap_or_default(),
    );
    let by: std::collections::BTreeMap<&str, usize> =
        run.label_mapping
            .matched_by
            .values()
            .fold(Default::default(), |mut acc, v| {
                *acc.entry(v.as_str()).or_default() += 1;
                acc
            });
    let by: Vec<String> = by.iter().map(|(k, v)| format!("{v} by {k}")).collect();
    meta_row(
        s,
        "Label mapping",
        &format!(
            "{} model labels; {} class folders mapped ({}); {} unmapped",
            run.label_mapping.model_labels.len(),
            run.label_mapping.class_to_id.len(),
            by.join(", "),
            run.label_mapping.unmapped.len()
        ),
    );
    if let Some(sh) = &run.shard {
        meta_row(s, "Shard", &format!("{}/{}", sh.index, sh.count));
    }
    s.push_str("</table></section>\n");
}
