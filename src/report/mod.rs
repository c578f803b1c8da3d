//! `vit-batch report`: the evaluation report of a run folder.
//!
//! Why this shape: a report must be re-renderable long after the run, from the two
//! files a run keeps (`predictions.parquet` + `metrics.json`), with no model and no
//! network. This module is the manager: it reads those files once, derives
//! everything the outputs share into one [`ReportData`] (bootstrap intervals, top
//! confusions, hardest mistakes with thumbnails, capped failure list), and owns all
//! file I/O (atomic writes: temporary file + rename). Each output format lives in its
//! own file behind the small [`Exporter`] trait (as hyperfine's exporters do) and only
//! turns `ReportData` into bytes:
//!
//! - `html.rs`: `report.html`, one self-contained page (inline CSS, a small inline
//!   sorting script, charts and thumbnails embedded as `data:` URIs, so the single
//!   file can be uploaded as a CI artifact and opened anywhere);
//! - `charts.rs`: the PNG charts (plotters, text drawn with the embedded DejaVu Sans),
//!   also written beside the page under `charts/` for pasting into reviews;
//! - `markdown.rs`: `report.md`, a short summary for CI job summaries / PR comments;
//! - `json.rs`: `report.json`, the machine-readable summary.
//!
//! Beside them: `gate.rs` renders the regression gate's report (`vit-batch
//! compare`) as JSON, Markdown and JUnit the same way, and `escape.rs` is the one
//! place user data is escaped for HTML, Markdown and XML.
//!
//! Every output is a pure function of the run folder: no timestamps, seeded
//! resampling, stable orderings, so two renders of one run are byte-identical.

pub mod charts;
pub(crate) mod escape;
pub(crate) mod gate;
pub(crate) mod html;
pub(crate) mod json;
pub(crate) mod label;
pub(crate) mod markdown;

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::options::ReportOptions;
use crate::record::{Row, Status};
use crate::run::{MetricsFile, Run};

/// Bootstrap resamples for the confidence intervals.
pub(crate) const BOOTSTRAP_RESAMPLES: usize = 1000;
/// Seed of the bootstrap generator: intervals are the same on every render.
pub(crate) const BOOTSTRAP_SEED: u64 = 0x005E_ED0F_B007;
/// Failed files listed in the page (the total is always shown).
pub(crate) const MAX_FAILURES: usize = 1000;
/// Most confidently wrong images shown with thumbnails.
pub const MAX_MISTAKES: usize = 24;
/// Confused (true, predicted) pairs listed.
pub(crate) const MAX_PAIRS: usize = 20;
/// Thumbnail bounding box, pixels.
pub(crate) const THUMB_PX: u32 = 96;
/// Bins of the right-vs-wrong confidence histogram.
pub(crate) const HIST_BINS: usize = 20;

/// One kind of report output.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// `report.html`, self-contained.
    Html,
    /// `charts/*.png`.
    Png,
    /// `report.md`.
    #[value(name = "md", alias = "markdown")]
    #[serde(rename = "md", alias = "markdown")]
    Markdown,
    /// `report.json`.
    Json,
}

impl Format {
    /// Every format, in render order.
    pub const ALL: [Format; 4] = [Format::Html, Format::Png, Format::Markdown, Format::Json];
}

/// What [`render`] wrote.
#[derive(Debug, Clone)]
pub struct ReportSummary {
    /// The folder written into.
    pub out_dir: PathBuf,
    /// Files written, relative to `out_dir`, in write order.
    pub files: Vec<PathBuf>,
    /// Rows of the run.
    pub rows: usize,
    /// Classes of the run's metrics.
    pub classes: usize,
}

/// One file an exporter produced, relative to the output folder.
pub(crate) struct Output {
    /// Path relative to the output folder.
    pub(crate) rel: PathBuf,
    /// The file's contents.
    pub(crate) bytes: Vec<u8>,
}

/// An output format: turns the shared report data into files (no I/O of its own).
pub(crate) trait Exporter {
    /// The format this exporter writes.
    fn format(&self) -> Format;
    /// The files of this format.
    fn render(&self, data: &ReportData, charts: &charts::Charts) -> Result<Vec<Output>>;
}

fn exporter(f: Format) -> Box<dyn Exporter> {
    match f {
        Format::Html => Box::new(html::HtmlExporter),
        Format::Png => Box::new(charts::PngExporter),
        Format::Markdown => Box::new(markdown::MarkdownExporter),
        Format::Json => Box::new(json::JsonExporter),
    }
}

/// A 95% percentile-bootstrap interval.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub(crate) struct Interval {
    pub(crate) lo: f64,
    pub(crate) hi: f64,
}

/// A (true, predicted) cell of the confusion matrix off its diagonal.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ConfusedPair {
    pub(crate) true_id: usize,
    pub(crate) true_label: String,
    pub(crate) pred_id: usize,
    pub(crate) pred_label: String,
    pub(crate) count: u64,
    /// Share of the true class's images that went to `pred`.
    pub(crate) share: f64,
}

/// A row that failed to score.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Failure {
    pub(crate) path: String,
    pub(crate) label: String,
    pub(crate) error: String,
}

/// One of the most confidently wrong predictions, with its card images.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Mistake {
    pub(crate) path: String,
    pub(crate) label: String,
    pub(crate) pred: String,
    pub(crate) score: f32,
    /// Rank of the true class in the model's top-k (1-based), if it was there.
    pub(crate) true_rank: Option<usize>,
    /// Small JPEG thumbnail, base64.
    pub(crate) thumb_b64: Option<String>,
    /// Why there is no thumbnail.
    pub(crate) thumb_note: Option<String>,
    /// The image as the model saw it (after resize and crop) with the attention
    /// rollout drawn over it, JPEG base64; only for runs of an attention model.
    pub(crate) rollout_b64: Option<String>,
}

/// Top-1 scores of the evaluated rows, binned, split by right and wrong.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ScoreHistogram {
    pub(crate) right: Vec<u64>,
    pub(crate) wrong: Vec<u64>,
}

/// Everything the exporters share, derived once from the run folder ([`load`]).
pub struct ReportData {
    pub(crate) file: MetricsFile,
    pub(crate) top1_ci: Option<Interval>,
    pub(crate) topk_ci: Option<Interval>,
    pub(crate) pairs: Vec<ConfusedPair>,
    pub(crate) failures: Vec<Failure>,
    pub(crate) failures_total: usize,
    pub(crate) mistakes: Vec<Mistake>,
    /// Wrong evaluated predictions in all.
    pub(crate) wrong_total: usize,
    pub(crate) hist: ScoreHistogram,
    /// Ok rows that carry a warning.
    pub(crate) row_warnings: usize,
}

impl ReportData {
    pub(crate) fn metrics(&self) -> &Metrics {
        &self.file.metrics
    }

    /// Build the report data from rows and the metrics file; with `thumbnails`, the
    /// mistake cards' images are read again from the run's recorded source.
    #[cfg(test)]
    pub(crate) fn build(rows: &[Row], file: MetricsFile, thumbnails: bool) -> Self {
        let mut b = Builder::new(file.metrics.k);
        for r in rows {
            b.add(r);
        }
        b.finish(file, thumbnails)
    }
}

/// [`ReportData`] built from rows streamed in order, one at a time: what it keeps
/// grows with the rows only by two flags per labeled row (for the bootstrap); the
/// failure list and the mistake candidates are bounded. So a report of a million
/// rows never holds the rows themselves.
pub(crate) struct Builder {
    k: usize,
    /// (top-1 right, in top k) of each labeled row, in order (a failed one neither).
    labeled_flags: Vec<(bool, bool)>,
    evaluated: usize,
    hist: ScoreHistogram,
    failures: Vec<Failure>,
    failures_total: usize,
    /// The most confidently wrong rows seen so far (at most 2 x [`MAX_MISTAKES`]).
    wrong: Vec<Row>,
    wrong_total: usize,
    row_warnings: usize,
    rows: usize,
}

/// Most confident first, ties by path: the order of the mistake cards.
fn mistake_order(a: &Row, b: &Row) -> std::cmp::Ordering {
    b.score
        .unwrap_or(0.0)
        .total_cmp(&a.score.unwrap_or(0.0))
        .then_with(|| a.path.cmp(&b.path))
}

impl Builder {
    pub(crate) fn new(k: usize) -> Self {
        Builder {
            k,
            labeled_flags: Vec::new(),
            evaluated: 0,
            hist: ScoreHistogram {
                right: vec![0; HIST_BINS],
                wrong: vec![0; HIST_BINS],
            },
            failures: Vec::new(),
            failures_total: 0,
            wrong: Vec::new(),
            wrong_total: 0,
            row_warnings: 0,
            rows: 0,
        }
    }

    pub(crate) fn add(&mut self, r: &Row) {
        self.rows += 1;
        // The intervals are of `top1` / `topk`: over the labeled rows, a failed one
        // counted wrong (see `metrics::Metrics::top1`).
        if r.label_id.is_some() {
            self.labeled_flags.push(right_flag(r, self.k));
        }
        if r.status == Status::Error {
            self.failures_total += 1;
            if self.failures.len() < MAX_FAILURES {
                self.failures.push(Failure {
                    path: r.path.clone(),
                    label: r.label.clone(),
                    error: r.error.clone().unwrap_or_default(),
                });
            }
        }
        if r.status == Status::Ok && r.warning.is_some() {
            self.row_warnings += 1;
        }
        if !is_evaluated(r) {
            return;
        }
        self.evaluated += 1;
        let (right, _) = right_flag(r, self.k);
        let s = r.score.unwrap_or(0.0).clamp(0.0, 1.0) as f64;
        let bin = ((s * HIST_BINS as f64).floor() as usize).min(HIST_BINS - 1);
        if right {
            self.hist.right[bin] += 1;
            return;
        }
        self.hist.wrong[bin] += 1;
        self.wrong_total += 1;
        let full = self.wrong.len() >= MAX_MISTAKES;
        if full
            && self
                .wrong
                .iter()
                .all(|w| mistake_order(w, r) == std::cmp::Ordering::Less)
        {
            // Every kept candidate comes before r: r is not among the top.
            return;
        }
        self.wrong.push(r.clone());
        if self.wrong.len() >= 2 * MAX_MISTAKES {
            self.wrong.sort_by(mistake_order);
            self.wrong.truncate(MAX_MISTAKES);
        }
    }

    pub(crate) fn finish(self, file: MetricsFile, thumbnails: bool) -> ReportData {
        let resample = if self.evaluated == 0 {
            &[][..]
        } else {
            &self.labeled_flags[..]
        };
        let (top1_ci, topk_ci) = match bootstrap(resample, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED) {
            Some((a, b)) => (Some(a), Some(b)),
            None => (None, None),
        };
        let pairs = confused_pairs(&file.metrics, MAX_PAIRS);
        let mistakes = hardest_mistakes(self.wrong.iter().collect(), &file, thumbnails);
        ReportData {
            file,
            top1_ci,
            topk_ci,
            pairs,
            failures: self.failures,
            failures_total: self.failures_total,
            mistakes,
            wrong_total: self.wrong_total,
            hist: self.hist,
            row_warnings: self.row_warnings,
        }
    }
}

/// (top-1 right, true class in the top k) of a labeled row; a failed row is neither.
fn right_flag(r: &Row, k: usize) -> (bool, bool) {
    let t = r.label_id.expect("labeled");
    if r.status != Status::Ok {
        return (false, false);
    }
    let right = r.pred_id == Some(t);
    let in_k = r
        .topk_ids
        .as_deref()
        .map(|ids| ids.iter().take(k).any(|&i| i == t))
        .unwrap_or(right);
    (right, in_k)
}

/// The [`MAX_MISTAKES`] most confidently wrong of `wrong` (ties by path), each with
/// its thumbnail and, for an attention model, its rollout overlay.
fn hardest_mistakes(mut wrong: Vec<&Row>, file: &MetricsFile, thumbnails: bool) -> Vec<Mistake> {
    wrong.sort_by(|a, b| mistake_order(a, b));
    wrong.truncate(MAX_MISTAKES);
    // Rollout overlays need the run's preprocessing (to show the model's view).
    let overlay = file.run.attention.as_ref().and_then(|a| {
        let pre = crate::preprocess::Preprocessor::new(file.run.preprocess.clone()).ok()?;
        Some((pre, a))
    });
    // The source images, read as scoring read them (a file, a tar member, a row).
    let images: Vec<crate::source::ImageBytes> = if thumbnails {
        let run = &file.run;
        let src = crate::source::RecordedSource {
            format: &run.dataset_format,
            data_dir: Path::new(&run.data_dir),
            image_root: run.image_root.as_deref().map(Path::new),
            label_column: run.label_column.as_deref(),
        };
        let paths: Vec<&str> = wrong.iter().map(|r| r.path.as_str()).collect();
        crate::source::recorded_images(&src, &paths, crate::preprocess::DEFAULT_MAX_FILE_BYTES)
    } else {
        wrong
            .iter()
            .map(|_| Err("no data folder recorded".to_string()))
            .collect()
    };
    wrong
        .par_iter()
        .zip(images.into_par_iter())
        .map(|(r, img)| mistake(r, file, img, overlay.as_ref()))
        .collect()
}

/// One mistake card: the row's names and its card images (or why there is none).
fn mistake(
    r: &Row,
    file: &MetricsFile,
    image: crate::source::ImageBytes,
    overlay: Option<&(
        crate::preprocess::Preprocessor,
        &crate::attention::AttentionInfo,
    )>,
) -> Mistake {
    let name = |id: Option<u32>| {
        id.and_then(|i| file.run.label_mapping.model_labels.get(i as usize))
            .cloned()
    };
    // The source file is read and decoded once, for both card images.
    let source = image.and_then(|(bytes, ext)| source_image(&bytes, ext));
    let (thumb_b64, thumb_note) = match source.as_ref().map_err(|e| e.clone()).and_then(thumbnail) {
        Ok(b) => (Some(b), None),
        Err(e) => (None, Some(e)),
    };
    let rollout_b64 = match (&source, overlay, &r.attn_rollout) {
        (Ok(rgb), Some((pre, a)), Some(v)) => rollout_image(rgb, pre, a, v)
            .and_then(|img| jpeg_b64(&img))
            .ok(),
        _ => None,
    };
    let t = r.label_id.expect("evaluated");
    Mistake {
        path: r.path.clone(),
        label: name(r.label_id).unwrap_or_else(|| r.label.clone()),
        pred: r
            .pred
            .clone()
            .or_else(|| name(r.pred_id))
            .unwrap_or_default(),
        score: r.score.unwrap_or(0.0),
        true_rank: r
            .topk_ids
            .as_deref()
            .and_then(|ids| ids.iter().position(|&i| i == t))
            .map(|p| p + 1),
        thumb_b64,
        thumb_note,
        rollout_b64,
    }
}

fn is_evaluated(r: &Row) -> bool {
    r.status == Status::Ok && r.label_id.is_some() && r.pred_id.is_some()
}

/// The `n` largest off-diagonal cells of the confusion matrix (ties: by true label
/// id, then predicted id).
pub(crate) fn confused_pairs(m: &Metrics, n: usize) -> Vec<ConfusedPair> {
    let c = &m.confusion;
    let mut out = Vec::new();
    for (i, row) in c.matrix.iter().enumerate() {
        let support: u64 = row.iter().sum();
        for (j, &v) in row.iter().enumerate() {
            if i != j && v > 0 {
                out.push(ConfusedPair {
                    true_id: c.ids[i],
                    true_label: c.labels[i].clone(),
                    pred_id: c.ids[j],
                    pred_label: c.labels[j].clone(),
                    count: v,
                    share: v as f64 / support as f64,
                });
            }
        }
    }
    out.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then(a.true_id.cmp(&b.true_id))
            .then(a.pred_id.cmp(&b.pred_id))
    });
    out.truncate(n);
    out
}

/// SplitMix64: a tiny, fully specified generator, so the intervals never change with
/// a dependency's version.
struct SplitMix64(u64);

impl SplitMix64 {
    const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

    /// The generator seeded with `seed` after `draws` calls of `next`.
    fn at(seed: u64, draws: u64) -> Self {
        SplitMix64(seed.wrapping_add(Self::GAMMA.wrapping_mul(draws)))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(Self::GAMMA);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in 0..n (multiply-shift; the bias is below 2^-40 for n < 2^24).
    fn below(&mut self, n: usize) -> usize {
        ((self.next() as u128 * n as u128) >> 64) as usize
    }
}

/// Percentile bootstrap (95%) of top-1 and top-k accuracy over the labeled rows:
/// `resamples` draws of n rows with replacement. None when there are no rows.
pub(crate) fn bootstrap(
    flags: &[(bool, bool)],
    resamples: usize,
    seed: u64,
) -> Option<(Interval, Interval)> {
    let n = flags.len();
    if n == 0 || resamples == 0 {
        return None;
    }
    // One generator draws every index of every resample in turn. SplitMix64's state
    // after j draws is seed + j * GAMMA, so resample r starts at draw r * n: the
    // resamples run in parallel and the intervals are exactly the sequential ones.
    let (a, b): (Vec<f64>, Vec<f64>) = (0..resamples)
        .into_par_iter()
        .map(|r| {
            let mut rng = SplitMix64::at(seed, r as u64 * n as u64);
            let (mut r1, mut rk) = (0u64, 0u64);
            for _ in 0..n {
                let (x, y) = flags[rng.below(n)];
                r1 += x as u64;
                rk += y as u64;
            }
            (r1 as f64 / n as f64, rk as f64 / n as f64)
        })
        .unzip();
    let (mut a, mut b) = (a, b);
    Some((percentile_interval(&mut a), percentile_interval(&mut b)))
}

fn percentile_interval(v: &mut [f64]) -> Interval {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let i = ((v.len() - 1) as f64 * q).round() as usize;
        v[i]
    };
    Interval {
        lo: at(0.025),
        hi: at(0.975),
    }
}

/// A card's source image, decoded as the scoring run decoded it (by content, EXIF
/// orientation applied, RGB like Pillow's `convert("RGB")`), or why not.
fn source_image(bytes: &[u8], ext: Option<&str>) -> std::result::Result<image::RgbImage, String> {
    crate::preprocess::decode(bytes, ext, crate::preprocess::DEFAULT_MAX_PIXELS)
        .map(|d| d.rgb)
        .map_err(|e| format!("could not be decoded ({e})"))
}

/// `img` scaled to `side` pixels on its long side.
fn fit(img: &image::RgbImage, side: u32) -> image::RgbImage {
    let scale = side as f64 / img.width().max(img.height()) as f64;
    let w = ((img.width() as f64 * scale).round() as u32).max(1);
    let h = ((img.height() as f64 * scale).round() as u32).max(1);
    image::imageops::resize(img, w, h, image::imageops::FilterType::Triangle)
}

fn jpeg_b64(img: &image::RgbImage) -> std::result::Result<String, String> {
    use base64::Engine as _;
    let mut buf = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, 85)
        .encode_image(img)
        .map_err(|e| format!("JPEG encoding failed ({e})"))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(buf))
}

/// A small JPEG thumbnail (base64) of a card's source image.
fn thumbnail(rgb: &image::RgbImage) -> std::result::Result<String, String> {
    jpeg_b64(&fit(rgb, THUMB_PX))
}

/// Side of an attention-rollout overlay (the model's view, scaled).
pub const ROLLOUT_PX: u32 = THUMB_PX;

/// The image as the model saw it (`rgb` resized and cropped by the run's own
/// preprocessing `pre`) with the rollout over its patch grid blended on top in
/// viridis (dark = little attention, yellow = most), `ROLLOUT_PX` on its long side.
pub(crate) fn rollout_image(
    rgb: &image::RgbImage,
    pre: &crate::preprocess::Preprocessor,
    attention: &crate::attention::AttentionInfo,
    rollout: &[f32],
) -> std::result::Result<image::RgbImage, String> {
    use plotters::style::colors::colormaps::{ColorMap, ViridisRGB};
    let [gh, gw] = attention.grid;
    if rollout.len() != gh * gw {
        return Err(format!(
            "rollout has {} values for a {gh}x{gw} grid",
            rollout.len()
        ));
    }
    let view = fit(&pre.geometry(rgb)?, ROLLOUT_PX);
    let (w, h) = (view.width(), view.height());
    let (lo, hi) = rollout
        .iter()
        .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    let span = (hi - lo).max(f32::MIN_POSITIVE);
    // Bilinear interpolation between patch centres.
    let at = |gy: f64, gx: f64| -> f64 {
        let (y0, x0) = (gy.floor().max(0.0), gx.floor().max(0.0));
        let (y0u, x0u) = ((y0 as usize).min(gh - 1), (x0 as usize).min(gw - 1));
        let (y1u, x1u) = ((y0u + 1).min(gh - 1), (x0u + 1).min(gw - 1));
        let (fy, fx) = ((gy - y0).clamp(0.0, 1.0), (gx - x0).clamp(0.0, 1.0));
        let v = |y: usize, x: usize| ((rollout[y * gw + x] - lo) / span) as f64;
        (v(y0u, x0u) * (1.0 - fx) + v(y0u, x1u) * fx) * (1.0 - fy)
            + (v(y1u, x0u) * (1.0 - fx) + v(y1u, x1u) * fx) * fy
    };
    Ok(image::RgbImage::from_fn(w, h, |x, y| {
        let gy = (y as f64 + 0.5) / h as f64 * gh as f64 - 0.5;
        let gx = (x as f64 + 0.5) / w as f64 * gw as f64 - 0.5;
        let c = ViridisRGB.get_color_normalized(at(gy, gx), 0.0, 1.0);
        let p = view.get_pixel(x, y).0;
        let blend = |a: u8, b: u8| (0.35 * a as f64 + 0.65 * b as f64).round() as u8;
        image::Rgb([blend(p[0], c.0), blend(p[1], c.1), blend(p[2], c.2)])
    }))
}

/// Rows read at a time by [`load`].
const LOAD_CHUNK: usize = 16 * 1024;

/// Read a run folder into report data, streaming its predictions in slices (memory
/// stays flat in the number of rows); also returns the number of rows.
pub fn load(run_dir: &Path) -> Result<(usize, ReportData)> {
    let run = Run::open(run_dir)?;
    let path = run.predictions_path();
    let file = run.metrics;
    let total = crate::record::parquet_rows(&path)?;
    let mut b = Builder::new(file.metrics.k);
    for offset in (0..total).step_by(LOAD_CHUNK) {
        for r in &crate::record::read_parquet_slice(&path, offset, LOAD_CHUNK)? {
            b.add(r);
        }
    }
    if b.rows != total || b.rows as u64 != file.metrics.counts.images {
        return Err(Error::Corrupt {
            path,
            what: format!(
                "holds {} rows but metrics.json counts {} images: the run folder is inconsistent",
                b.rows, file.metrics.counts.images
            ),
        });
    }
    let rows = b.rows;
    Ok((rows, b.finish(file, true)))
}

/// Render the report of a run folder from `predictions.parquet` + `metrics.json`.
pub fn render(opts: &ReportOptions) -> Result<ReportSummary> {
    let (rows, data) = load(&opts.run_dir)?;
    let out_dir = opts.out.clone().unwrap_or_else(|| opts.run_dir.clone());
    let mut formats = if opts.format.is_empty() {
        Format::ALL.to_vec()
    } else {
        opts.format.clone()
    };
    formats.sort();
    formats.dedup();
    let need_charts = formats
        .iter()
        .any(|f| matches!(f, Format::Html | Format::Png));
    let charts = if need_charts {
        charts::Charts::render(&data)?
    } else {
        charts::Charts::default()
    };
    let mut outputs = Vec::new();
    for f in &formats {
        let e = exporter(*f);
        debug_assert_eq!(e.format(), *f);
        outputs.extend(e.render(&data, &charts)?);
    }
    let _lock = crate::run::lock_report_dir(&out_dir)?;
    let mut files = Vec::with_capacity(outputs.len());
    for o in outputs {
        write_file(&out_dir.join(&o.rel), &o.bytes)?;
        files.push(o.rel);
    }
    Ok(ReportSummary {
        out_dir,
        files,
        rows,
        classes: data.metrics().per_class.len(),
    })
}

/// The one way the report and the gate write a file: its parent folders are
/// created, then the file is written atomically (temporary file + rename).
pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(d) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
    }
    crate::fs::atomic_write_bytes(path, bytes)
}

/// Slices in the order the reports list them: by column, then lowest top-1 first
/// (ties by value).
pub(crate) fn slice_order(
    slices: &[crate::metrics::SliceStats],
) -> Vec<&crate::metrics::SliceStats> {
    let mut v: Vec<_> = slices.iter().collect();
    v.sort_by(|a, b| {
        a.column
            .cmp(&b.column)
            .then(a.top1.total_cmp(&b.top1))
            .then(a.value.cmp(&b.value))
    });
    v
}

/// Percent with one decimal.
pub(crate) fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

/// Percent with one decimal and its interval, when there is one.
pub(crate) fn pct_ci(x: f64, ci: Option<Interval>) -> String {
    match ci {
        Some(c) => format!(
            "{} (95% CI {:.1}–{:.1})",
            pct(x),
            100.0 * c.lo,
            100.0 * c.hi
        ),
        None => pct(x),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_is_seeded_and_brackets_the_estimate() {
        let flags: Vec<(bool, bool)> = (0..500).map(|i| (i % 10 < 8, i % 10 < 9)).collect();
        let a = bootstrap(&flags, 1000, 7).unwrap();
        let b = bootstrap(&flags, 1000, 7).unwrap();
        assert_eq!(a, b, "same seed, same interval");
        let (t1, tk) = a;
        assert!(t1.lo < 0.8 && 0.8 < t1.hi, "{t1:?}");
        assert!(tk.lo < 0.9 && 0.9 < tk.hi, "{tk:?}");
        // Binomial standard error at n=500, p=0.8 is 0.0179: the 95% interval spans
        // about 4 of them (0.07); allow generous slack, but not a degenerate one.
        let w = t1.hi - t1.lo;
        assert!((0.04..0.10).contains(&w), "width {w}");
        assert!(bootstrap(&[], 1000, 7).is_none());
        // All right: the interval collapses onto 1.
        let all = vec![(true, true); 50];
        let (c, _) = bootstrap(&all, 100, 1).unwrap();
        assert_eq!((c.lo, c.hi), (1.0, 1.0));
    }

    #[test]
    fn streamed_mistakes_are_the_top_of_all_wrong_rows() {
        let row = |i: u64| {
            // Scores with many ties (20 values), so ties by path matter.
            let score = (SplitMix64(i).next() % 20) as f32 / 20.0;
            let right = i.is_multiple_of(3);
            Row {
                path: format!("c/{:05}.png", SplitMix64(i + 99).next() % 100_000),
                label: "c".into(),
                label_id: Some(0),
                pred: None,
                pred_id: Some(if right { 0 } else { 1 }),
                score: Some(score),
                topk_ids: Some(vec![if right { 0 } else { 1 }]),
                topk_scores: Some(vec![score]),
                correct: Some(right),
                status: Status::Ok,
                error: None,
                warning: None,
                attn_rollout: None,
                extra: vec![],
            }
        };
        let rows: Vec<Row> = (0..2000).map(row).collect();
        let mut b = Builder::new(1);
        for r in &rows {
            b.add(r);
        }
        assert!(b.wrong.len() < 2 * MAX_MISTAKES);
        let mut kept = b.wrong.clone();
        kept.sort_by(mistake_order);
        kept.truncate(MAX_MISTAKES);
        let mut all: Vec<&Row> = rows.iter().filter(|r| r.correct == Some(false)).collect();
        assert_eq!(b.wrong_total, all.len());
        all.sort_by(|a, b| mistake_order(a, b));
        let want: Vec<&str> = all[..MAX_MISTAKES]
            .iter()
            .map(|r| r.path.as_str())
            .collect();
        let got: Vec<&str> = kept.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn bootstrap_in_parallel_equals_the_sequential_draws() {
        let flags: Vec<(bool, bool)> = (0..97).map(|i| (i % 7 < 4, i % 7 < 6)).collect();
        let n = flags.len();
        let mut rng = SplitMix64(7);
        let (mut a, mut b) = (vec![], vec![]);
        for _ in 0..200 {
            let (mut r1, mut rk) = (0u64, 0u64);
            for _ in 0..n {
                let (x, y) = flags[rng.below(n)];
                r1 += x as u64;
                rk += y as u64;
            }
            a.push(r1 as f64 / n as f64);
            b.push(rk as f64 / n as f64);
        }
        let sequential = (percentile_interval(&mut a), percentile_interval(&mut b));
        assert_eq!(bootstrap(&flags, 200, 7).unwrap(), sequential);
        let mut s = SplitMix64(7);
        for _ in 0..1000 {
            s.next();
        }
        assert_eq!(SplitMix64::at(7, 1000).next(), s.next());
    }

    #[test]
    fn formats_parse() {
        use clap::ValueEnum;
        assert_eq!(Format::from_str("MD", true).unwrap(), Format::Markdown);
        assert_eq!(
            Format::from_str("markdown", false).unwrap(),
            Format::Markdown
        );
        assert_eq!(Format::from_str("png", false).unwrap(), Format::Png);
        assert!(Format::from_str("pdf", false).unwrap_err().contains("pdf"));
        let t: std::collections::BTreeMap<String, Vec<Format>> =
            toml::from_str("f = [\"md\", \"html\"]").unwrap();
        assert_eq!(t["f"], vec![Format::Markdown, Format::Html]);
    }
}
