//! PNG charts of the report, drawn with plotters into an RGB buffer and encoded with
//! `image` (no `bitmap_encoder`, which would pull a second `image`).
//!
//! Why this file: charts are what reviewers paste into a PR, so they must be readable
//! on their own (title, axis names, units) and must render the same on any machine.
//! Text is drawn with DejaVu Sans compiled into the binary (`assets/fonts/`), never a
//! system font, so a bare CI container draws the same labels. Large label sets are
//! reduced to what a reader can use (the most-confused / lowest-recall classes) and
//! the chart title says so.

use std::sync::Once;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, VPos};

use super::label::Label;
use super::{Exporter, Format, Output, ReportData, HIST_BINS};
use crate::error::{Error, Result};
use crate::metrics::{ClassStats, Confusion};

/// DejaVu Sans 2.37 (Bitstream Vera license, see assets/fonts/LICENSE-DejaVu.txt).
pub(crate) static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";

/// Classes drawn in a confusion heatmap; above this the most-confused are shown.
pub(crate) const MAX_HEATMAP_CLASSES: usize = 30;
/// Classes drawn in the recall bar chart; above this the lowest-recall are shown.
pub(crate) const MAX_BAR_CLASSES: usize = 40;

/// Longest label drawn on an axis (longer ones end with an ellipsis).
const MAX_LABEL_CHARS: usize = 22;

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The bytes are compiled in and checked by a unit test; a failure here would
        // only make text disappear, never crash a run.
        let _ = plotters::style::register_font(FAMILY, FontStyle::Normal, FONT);
    });
}

fn chart_err(e: impl std::fmt::Display) -> Error {
    Error::Output {
        what: format!("drawing a chart: {e}"),
    }
}

/// Every file name a chart can have under `charts/`: what `--overwrite` removes
/// there (and nothing else).
pub(crate) const CHART_FILES: &[&str] = &[
    "confusion.png",
    "confusion_normalized.png",
    "recall_by_class.png",
    "confidence.png",
    "reliability.png",
    "slices.png",
];

/// One chart: its file under `charts/`, a title and caption for the page, the PNG.
#[derive(Debug, Clone)]
pub struct Chart {
    pub(crate) file: &'static str,
    pub(crate) title: String,
    pub(crate) caption: String,
    pub(crate) width: u32,
    pub(crate) height: u32,
    /// The encoded PNG.
    pub png: Vec<u8>,
}

/// Every chart of a report.
#[derive(Debug, Clone, Default)]
pub struct Charts {
    pub(crate) list: Vec<Chart>,
    /// Geometry of the two heatmaps (raw, normalised), for tests and image maps.
    pub heatmaps: Vec<HeatmapLayout>,
}

impl Charts {
    /// The chart written as `charts/<file>`.
    pub fn get(&self, file: &str) -> Option<&Chart> {
        self.list.iter().find(|c| c.file == file)
    }

    /// Draw every chart of `data`.
    pub fn render(data: &ReportData) -> Result<Self> {
        let m = data.metrics();
        let mut list = Vec::new();
        let mut heatmaps = Vec::new();
        let n = m.confusion.ids.len();
        let shown = select_classes(&m.confusion, MAX_HEATMAP_CLASSES);
        let subset = if shown.len() < n {
            format!(" ({} of {n} classes with the most errors)", shown.len())
        } else {
            String::new()
        };
        if n > 0 {
            let (png, w, h, lay) = confusion_heatmap(&m.confusion, &shown, false)?;
            list.push(Chart {
                file: "confusion.png",
                title: format!("Confusion matrix, counts{subset}"),
                caption: "Rows: true class; columns: predicted class; darker = more images.".into(),
                width: w,
                height: h,
                png,
            });
            heatmaps.push(lay);
            let (png, w, h, lay) = confusion_heatmap(&m.confusion, &shown, true)?;
            list.push(Chart {
                file: "confusion_normalized.png",
                title: format!("Confusion matrix, row-normalised (recall){subset}"),
                caption: "Each row sums to 1 over all classes: the share of a true class's images given each prediction.".into(),
                width: w,
                height: h,
                png,
            });
            heatmaps.push(lay);
        }
        if !m.per_class.is_empty() {
            let (png, w, h, title) = recall_bars(&m.per_class)?;
            list.push(Chart {
                file: "recall_by_class.png",
                title,
                caption: "Recall (accuracy on the class's own images), lowest first; n = support."
                    .into(),
                width: w,
                height: h,
                png,
            });
        }
        if !m.slices.is_empty() {
            let (png, w, h) = slice_bars(&m.slices)?;
            list.push(Chart {
                file: "slices.png",
                title: "Top-1 by slice".into(),
                caption: "Top-1 (failed images counted wrong) per value of each sliced column, lowest first; n = labeled images.".into(),
                width: w,
                height: h,
                png,
            });
        }
        let (png, w, h) = confidence_histogram(&data.hist.right, &data.hist.wrong)?;
        list.push(Chart {
            file: "confidence.png",
            title: "Top-1 confidence, right vs wrong".into(),
            caption: format!(
                "Top-1 softmax score of the {} evaluated images, {HIST_BINS} bins; each group's bars are shares of that group's images (right and wrong sum to 100% each), so rare errors stay visible.",
                m.counts.evaluated
            ),
            width: w,
            height: h,
            png,
        });
        let (png, w, h) = reliability_diagram(data)?;
        list.push(Chart {
            file: "reliability.png",
            title: format!(
                "Reliability diagram (ECE {:.4}, {} bins)",
                m.calibration.ece,
                m.calibration.bins.len()
            ),
            caption: "Accuracy per confidence bin against the diagonal of perfect calibration; bar shade shows how many images a bin holds.".into(),
            width: w,
            height: h,
            png,
        });
        debug_assert!(list.iter().all(|c| CHART_FILES.contains(&c.file)));
        Ok(Charts { list, heatmaps })
    }
}

/// The PNG format: every chart under `charts/`.
pub(crate) struct PngExporter;

impl Exporter for PngExporter {
    fn format(&self) -> Format {
        Format::Png
    }
    fn render(&self, _data: &ReportData, charts: &Charts) -> Result<Vec<Output>> {
        Ok(charts
            .list
            .iter()
            .map(|c| Output {
                rel: std::path::Path::new("charts").join(c.file),
                bytes: c.png.clone(),
            })
            .collect())
    }
}

/// Encode an RGB8 buffer as PNG.
pub(crate) fn encode_png(buf: &[u8], w: u32, h: u32) -> Result<Vec<u8>> {
    use image::ImageEncoder as _;
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(buf, w, h, image::ExtendedColorType::Rgb8)
        .map_err(chart_err)?;
    Ok(out)
}

/// The series legend, upper left, the same on every chart that has one.
fn legend<'a, DB: DrawingBackend + 'a, CT: plotters::coord::CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
) -> Result<()> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(font(13.0))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(chart_err)
}

/// Draw into a fresh white `w`×`h` canvas and return the PNG.
fn draw_png(
    w: u32,
    h: u32,
    f: impl FnOnce(&DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>) -> Result<()>,
) -> Result<Vec<u8>> {
    register_font();
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(chart_err)?;
        f(&root)?;
        root.present().map_err(chart_err)?;
    }
    encode_png(&buf, w, h)
}

fn font(size: f64) -> TextStyle<'static> {
    (FAMILY, size).into_font().color(&BLACK)
}

fn short(s: &str) -> String {
    if s.chars().count() <= MAX_LABEL_CHARS {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(MAX_LABEL_CHARS - 1).collect();
        t.push('…');
        t
    }
}

/// Width in pixels of `s` at `size` (DejaVu Sans).
fn text_width(s: &str, size: f64) -> u32 {
    super::label::width(s, size).ceil() as u32
}

/// Sequential colour map (white → dark blue, like matplotlib's "Blues"): `v` in 0..=1.
pub(crate) fn blues(v: f64) -> RGBColor {
    const STOPS: [(f64, [u8; 3]); 5] = [
        (0.0, [247, 251, 255]),
        (0.25, [198, 219, 239]),
        (0.5, [107, 174, 214]),
        (0.75, [33, 113, 181]),
        (1.0, [8, 48, 107]),
    ];
    let v = if v.is_finite() {
        v.clamp(0.0, 1.0)
    } else {
        0.0
    };
    for w in STOPS.windows(2) {
        let ((a, ca), (b, cb)) = (w[0], w[1]);
        if v <= b {
            let t = (v - a) / (b - a);
            let mix = |i: usize| (ca[i] as f64 + t * (cb[i] as f64 - ca[i] as f64)).round() as u8;
            return RGBColor(mix(0), mix(1), mix(2));
        }
    }
    RGBColor(8, 48, 107)
}

/// Diverging colour for a share in 0..=1: red (0) → amber (0.5) → green (1).
pub(crate) fn red_to_green(v: f64) -> RGBColor {
    let v = if v.is_finite() {
        v.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let (a, b, t) = if v < 0.5 {
        ([215.0, 48.0, 39.0], [244.0, 177.0, 62.0], v / 0.5)
    } else {
        ([244.0, 177.0, 62.0], [26.0, 152.0, 80.0], (v - 0.5) / 0.5)
    };
    let mix = |i: usize| (a[i] + t * (b[i] - a[i])).round() as u8;
    RGBColor(mix(0), mix(1), mix(2))
}

/// Row/column indices of the confusion matrix to draw: all when they fit, else the
/// `max` classes with the most errors (off-diagonal mass as true or predicted class),
/// in class-id order. Ties go to the lower id.
pub(crate) fn select_classes(c: &Confusion, max: usize) -> Vec<usize> {
    let n = c.ids.len();
    if n <= max {
        return (0..n).collect();
    }
    let mut err = vec![0u64; n];
    for i in 0..n {
        for j in 0..n {
            if i != j {
                err[i] += c.matrix[i][j];
                err[j] += c.matrix[i][j];
            }
        }
    }
    let mut idx: Vec<usize> = (0..n).collect();
    idx.sort_by(|&a, &b| err[b].cmp(&err[a]).then(a.cmp(&b)));
    idx.truncate(max);
    idx.sort();
    idx
}

/// Where a heatmap's cells are: cell (r, c) covers
/// `x0 + c*cell .. x0 + (c+1)*cell` × `y0 + r*cell .. y0 + (r+1)*cell`.
#[derive(Debug, Clone, PartialEq)]
pub struct HeatmapLayout {
    /// Left edge of the grid, pixels.
    pub x0: u32,
    /// Top edge of the grid, pixels.
    pub y0: u32,
    /// Side of a cell, pixels.
    pub cell: u32,
    /// Confusion-matrix indices of the rows/columns drawn.
    pub shown: Vec<usize>,
    /// Row-normalised (else counts).
    pub normalized: bool,
}

/// Confusion heatmap of the classes `shown` (indices into the matrix): counts, or
/// row-normalised over the full row. Returns PNG, width, height and the geometry.
pub(crate) fn confusion_heatmap(
    c: &Confusion,
    shown: &[usize],
    normalized: bool,
) -> Result<(Vec<u8>, u32, u32, HeatmapLayout)> {
    let hm = Heatmap::new(c, shown, normalized);
    let title = if normalized {
        "Confusion matrix (row-normalised)"
    } else {
        "Confusion matrix (counts)"
    };
    let png = draw_png(hm.w, hm.h, |root| {
        root.draw(&Label::new(title, (hm.x0 as i32, 14), 18.0))
            .map_err(chart_err)?;
        hm.draw_cells(root)?;
        hm.draw_labels(root)?;
        hm.draw_colour_bar(root)
    })?;
    Ok((
        png,
        hm.w,
        hm.h,
        HeatmapLayout {
            x0: hm.x0,
            y0: hm.y0,
            cell: hm.cell,
            shown: shown.to_vec(),
            normalized,
        },
    ))
}

/// The canvas charts draw on.
type Root<'b> = DrawingArea<BitMapBackend<'b>, plotters::coord::Shift>;

/// A heatmap's geometry and scale, computed before anything is drawn.
struct Heatmap<'a> {
    c: &'a Confusion,
    shown: &'a [usize],
    normalized: bool,
    /// The row-normalised matrix (used when `normalized`).
    norm: Vec<Vec<f64>>,
    /// The value drawn darkest.
    vmax: f64,
    /// Axis labels of the shown classes, shortened.
    labels: Vec<String>,
    label_size: f64,
    x0: u32,
    y0: u32,
    cell: u32,
    /// Side of the whole grid.
    grid: u32,
    w: u32,
    h: u32,
}

impl<'a> Heatmap<'a> {
    fn new(c: &'a Confusion, shown: &'a [usize], normalized: bool) -> Self {
        let n = shown.len().max(1);
        let cell = (640 / n as u32).clamp(14, 56);
        let label_size = if cell >= 20 { 13.0 } else { 11.0 };
        let labels: Vec<String> = shown.iter().map(|&i| short(&c.labels[i])).collect();
        let label_w = labels
            .iter()
            .map(|l| text_width(l, label_size))
            .max()
            .unwrap_or(0);
        let grid = cell * n as u32;
        let x0 = 40 + label_w + 10;
        let y0 = 50;
        let bar_w = 90;
        let w = (x0 + grid + bar_w).max(420);
        let h = y0 + grid + 10 + label_w + 40;
        let vmax = if normalized {
            1.0
        } else {
            shown
                .iter()
                .flat_map(|&r| shown.iter().map(move |&col| (r, col)))
                .map(|(r, col)| c.matrix[r][col])
                .max()
                .unwrap_or(0)
                .max(1) as f64
        };
        Heatmap {
            c,
            shown,
            normalized,
            norm: c.normalized(),
            vmax,
            labels,
            label_size,
            x0,
            y0,
            cell,
            grid,
            w,
            h,
        }
    }

    fn value(&self, r: usize, col: usize) -> f64 {
        if self.normalized {
            self.norm[r][col]
        } else {
            self.c.matrix[r][col] as f64
        }
    }

    /// Cells and their numbers, then the frame around the grid.
    fn draw_cells(&self, root: &Root<'_>) -> Result<()> {
        let (x0, y0, cell, grid) = (self.x0, self.y0, self.cell, self.grid);
        let d = |e| chart_err(e);
        let num_size = (cell as f64 * 0.42).clamp(9.0, 14.0);
        for (ri, &r) in self.shown.iter().enumerate() {
            for (ci, &col) in self.shown.iter().enumerate() {
                let v = self.value(r, col);
                let t = v / self.vmax;
                let (cx, cy) = (x0 + ci as u32 * cell, y0 + ri as u32 * cell);
                root.draw(&Rectangle::new(
                    [
                        (cx as i32, cy as i32),
                        ((cx + cell) as i32, (cy + cell) as i32),
                    ],
                    blues(t).filled(),
                ))
                .map_err(d)?;
                let text = if self.normalized {
                    if v == 0.0 {
                        "0".to_string()
                    } else {
                        format!("{:.2}", v).trim_start_matches('0').to_string()
                    }
                } else {
                    self.c.matrix[r][col].to_string()
                };
                // Zeros only where there is room: at many classes they are noise.
                let room = if v == 0.0 { cell >= 30 } else { cell >= 16 };
                if room && text_width(&text, num_size) + 4 <= cell {
                    let color = if t > 0.55 {
                        WHITE
                    } else if v == 0.0 {
                        RGBColor(170, 170, 170)
                    } else {
                        BLACK
                    };
                    root.draw(
                        &Label::new(
                            text,
                            ((cx + cell / 2) as i32, (cy + cell / 2) as i32),
                            num_size,
                        )
                        .color(color)
                        .anchor(HPos::Center, VPos::Center),
                    )
                    .map_err(d)?;
                }
            }
        }
        root.draw(&Rectangle::new(
            [
                (x0 as i32, y0 as i32),
                ((x0 + grid) as i32, (y0 + grid) as i32),
            ],
            BLACK.stroke_width(1),
        ))
        .map_err(d)?;
        Ok(())
    }

    /// Axis labels: true classes left of the rows, predicted classes below the
    /// columns (rotated, reading upwards), then the two axis names.
    fn draw_labels(&self, root: &Root<'_>) -> Result<()> {
        let (x0, y0, cell, grid) = (self.x0, self.y0, self.cell, self.grid);
        let d = |e| chart_err(e);
        for (i, l) in self.labels.iter().enumerate() {
            let mid = (i as u32 * cell + cell / 2) as i32;
            root.draw(
                &Label::new(
                    l.clone(),
                    ((x0 - 6) as i32, y0 as i32 + mid),
                    self.label_size,
                )
                .anchor(HPos::Right, VPos::Center),
            )
            .map_err(d)?;
            root.draw(
                &Label::new(
                    l.clone(),
                    (x0 as i32 + mid, (y0 + grid + 6) as i32),
                    self.label_size,
                )
                .rotate270()
                .anchor(HPos::Right, VPos::Center),
            )
            .map_err(d)?;
        }
        root.draw(
            &Label::new("True class", (12, (y0 + grid / 2) as i32), 14.0)
                .rotate270()
                .anchor(HPos::Center, VPos::Center),
        )
        .map_err(d)?;
        root.draw(
            &Label::new(
                "Predicted class",
                ((x0 + grid / 2) as i32, (self.h - 16) as i32),
                14.0,
            )
            .anchor(HPos::Center, VPos::Center),
        )
        .map_err(d)?;
        Ok(())
    }

    /// The colour bar right of the grid, labelled with its top value and 0.
    fn draw_colour_bar(&self, root: &Root<'_>) -> Result<()> {
        let y0 = self.y0 as i32;
        let d = |e| chart_err(e);
        let bx = (self.x0 + self.grid + 20) as i32;
        let bh = self.grid.clamp(60, 300) as i32;
        for k in 0..bh {
            let t = 1.0 - k as f64 / (bh - 1).max(1) as f64;
            root.draw(&Rectangle::new(
                [(bx, y0 + k), (bx + 16, y0 + k + 1)],
                blues(t).filled(),
            ))
            .map_err(d)?;
        }
        root.draw(&Rectangle::new(
            [(bx, y0), (bx + 16, y0 + bh)],
            BLACK.stroke_width(1),
        ))
        .map_err(d)?;
        let top = if self.normalized {
            "1.0".to_string()
        } else {
            format!("{}", self.vmax as u64)
        };
        root.draw(&Label::new(top, (bx + 20, y0), 12.0).anchor(HPos::Left, VPos::Center))
            .map_err(d)?;
        root.draw(&Label::new("0", (bx + 20, y0 + bh), 12.0).anchor(HPos::Left, VPos::Center))
            .map_err(d)?;
        Ok(())
    }
}

/// Classes for the recall chart: lowest recall first (ties: larger support first,
/// then id); at most [`MAX_BAR_CLASSES`].
pub(crate) fn recall_order(per_class: &[ClassStats]) -> Vec<&ClassStats> {
    let mut v: Vec<&ClassStats> = per_class.iter().filter(|c| c.support > 0).collect();
    v.sort_by(|a, b| {
        a.recall
            .total_cmp(&b.recall)
            .then(b.support.cmp(&a.support))
            .then(a.id.cmp(&b.id))
    });
    v.truncate(MAX_BAR_CLASSES);
    v
}

fn recall_bars(per_class: &[ClassStats]) -> Result<(Vec<u8>, u32, u32, String)> {
    let with_support = per_class.iter().filter(|c| c.support > 0).count();
    let shown = recall_order(per_class);
    let title = if shown.len() < with_support {
        format!(
            "Recall by class: the {} lowest of {with_support} classes",
            shown.len()
        )
    } else {
        "Recall by class".to_string()
    };
    let bars: Vec<(String, f64)> = shown
        .iter()
        .map(|c| (format!("{} (n={})", short(&c.class), c.support), c.recall))
        .collect();
    let (png, w, h) = share_bars(&title, &bars)?;
    Ok((png, w, h, title))
}

/// Top-1 of each slice (column=value, n = labeled images), lowest first per column.
fn slice_bars(slices: &[crate::metrics::SliceStats]) -> Result<(Vec<u8>, u32, u32)> {
    let bars: Vec<(String, f64)> = super::slice_order(slices)
        .into_iter()
        .take(MAX_BAR_CLASSES)
        .map(|s| {
            (
                format!("{}={} (n={})", short(&s.column), short(&s.value), s.labeled),
                s.top1,
            )
        })
        .collect();
    share_bars("Top-1 by slice", &bars)
}

/// Horizontal bars of shares in [0, 1], one per labelled row, red to green.
fn share_bars(title: &str, bars: &[(String, f64)]) -> Result<(Vec<u8>, u32, u32)> {
    let title = title.to_string();
    let size = 13.0;
    let label_w = bars
        .iter()
        .map(|(l, _)| text_width(l, size))
        .max()
        .unwrap_or(0);
    let row = 22u32;
    let x0 = 20 + label_w + 8;
    let bar_max = 520u32;
    let y0 = 50u32;
    let w = x0 + bar_max + 70;
    let h = y0 + row * bars.len().max(1) as u32 + 40;
    let png = draw_png(w, h, |root| {
        let d = |e| chart_err(e);
        root.draw(&Label::new(title.clone(), (20, 14), 18.0))
            .map_err(d)?;
        for (i, (l, v)) in bars.iter().enumerate() {
            let y = (y0 + i as u32 * row) as i32;
            let len = (v.clamp(0.0, 1.0) * bar_max as f64).round() as i32;
            let color = red_to_green(*v);
            root.draw(&Rectangle::new(
                [(x0 as i32, y + 3), (x0 as i32 + len, y + row as i32 - 3)],
                color.filled(),
            ))
            .map_err(d)?;
            root.draw(
                &Label::new(l.clone(), ((x0 - 6) as i32, y + row as i32 / 2), size)
                    .anchor(HPos::Right, VPos::Center),
            )
            .map_err(d)?;
            root.draw(
                &Label::new(
                    super::pct(*v),
                    (x0 as i32 + len + 4, y + row as i32 / 2),
                    12.0,
                )
                .anchor(HPos::Left, VPos::Center),
            )
            .map_err(d)?;
        }
        let yb = (y0 + row * bars.len().max(1) as u32) as i32;
        root.draw(&PathElement::new(
            vec![(x0 as i32, y0 as i32 - 2), (x0 as i32, yb)],
            BLACK.stroke_width(1),
        ))
        .map_err(d)?;
        root.draw(&PathElement::new(
            vec![(x0 as i32, yb), ((x0 + bar_max) as i32, yb)],
            BLACK.stroke_width(1),
        ))
        .map_err(d)?;
        for q in 0..=4 {
            let x = x0 as i32 + (bar_max as i32 * q) / 4;
            root.draw(&PathElement::new(
                vec![(x, yb), (x, yb + 4)],
                BLACK.stroke_width(1),
            ))
            .map_err(d)?;
            root.draw(
                &Label::new(format!("{}%", q * 25), (x, yb + 6), 11.0)
                    .anchor(HPos::Center, VPos::Top),
            )
            .map_err(d)?;
        }
        Ok(())
    })?;
    Ok((png, w, h))
}

const RIGHT: RGBColor = RGBColor(46, 139, 87);
const WRONG: RGBColor = RGBColor(214, 39, 40);

fn confidence_histogram(right: &[u64], wrong: &[u64]) -> Result<(Vec<u8>, u32, u32)> {
    let (w, h) = (620u32, 420u32);
    let bins = right.len().max(1);
    // Each group as a share of its own images: with rare errors (13 wrong beside 347
    // right) counts on one axis would leave the wrong bars a pixel high.
    let share = |counts: &[u64]| -> Vec<f64> {
        let n = counts.iter().sum::<u64>().max(1) as f64;
        counts.iter().map(|&c| c as f64 / n).collect()
    };
    let (nr, nw): (u64, u64) = (right.iter().sum(), wrong.iter().sum());
    let (right_s, wrong_s) = (share(right), share(wrong));
    let ymax = right_s
        .iter()
        .chain(&wrong_s)
        .copied()
        .fold(0.0, f64::max)
        .max(0.01);
    let png = draw_png(w, h, |root| {
        let d = |e| chart_err(e);
        let mut chart = ChartBuilder::on(root)
            .caption("Top-1 confidence: right vs wrong", font(18.0))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d(0f64..1f64, 0f64..(ymax * 1.08))
            .map_err(d)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .light_line_style(WHITE)
            .bold_line_style(RGBColor(225, 225, 225))
            .x_desc("top-1 score")
            .y_desc("share of the group's images")
            .label_style(font(12.0))
            .axis_desc_style(font(14.0))
            .y_label_formatter(&|v| format!("{:.0}%", v * 100.0))
            .draw()
            .map_err(d)?;
        let bw = 1.0 / bins as f64;
        let series = |shares: &[f64], offset: f64, color: RGBColor| {
            shares
                .iter()
                .enumerate()
                .filter(|(_, &c)| c > 0.0)
                .map(|(i, &c)| {
                    let x = i as f64 * bw + offset * bw;
                    Rectangle::new([(x + 0.04 * bw, 0.0), (x + 0.5 * bw, c)], color.filled())
                })
                .collect::<Vec<_>>()
        };
        chart
            .draw_series(series(&right_s, 0.0, RIGHT))
            .map_err(d)?
            .label(format!("right (n={nr})"))
            .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], RIGHT.filled()));
        chart
            .draw_series(series(&wrong_s, 0.46, WRONG))
            .map_err(d)?
            .label(format!("wrong (n={nw})"))
            .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], WRONG.filled()));
        legend(&mut chart)
    })?;
    Ok((png, w, h))
}

fn reliability_diagram(data: &ReportData) -> Result<(Vec<u8>, u32, u32)> {
    let cal = &data.metrics().calibration;
    let (w, h) = (560u32, 520u32);
    let maxc = cal.bins.iter().map(|b| b.count).max().unwrap_or(0).max(1);
    let png = draw_png(w, h, |root| {
        let d = |e| chart_err(e);
        let mut chart = ChartBuilder::on(root)
            .caption(
                format!("Reliability (ECE {:.4}, {} bins)", cal.ece, cal.bins.len()),
                font(18.0),
            )
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(56)
            .build_cartesian_2d(0f64..1f64, 0f64..1f64)
            .map_err(d)?;
        chart
            .configure_mesh()
            .x_desc("confidence (top-1 score)")
            .y_desc("accuracy")
            .label_style(font(12.0))
            .axis_desc_style(font(14.0))
            .light_line_style(WHITE)
            .bold_line_style(RGBColor(225, 225, 225))
            .draw()
            .map_err(d)?;
        chart
            .draw_series(cal.bins.iter().filter(|b| b.count > 0).map(|b| {
                // Shade by how many images the bin holds (sparse bins are pale).
                let t = 0.2 + 0.5 * (b.count as f64 / maxc as f64).sqrt();
                Rectangle::new([(b.lo, 0.0), (b.hi, b.accuracy)], blues(t).filled())
            }))
            .map_err(d)?
            .label("accuracy in bin")
            .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], blues(0.6).filled()));
        chart
            .draw_series(
                cal.bins.iter().filter(|b| b.count > 0).map(|b| {
                    Rectangle::new([(b.lo, 0.0), (b.hi, b.accuracy)], BLACK.stroke_width(1))
                }),
            )
            .map_err(d)?;
        chart
            .draw_series(LineSeries::new(
                vec![(0.0, 0.0), (1.0, 1.0)],
                RGBColor(120, 120, 120).stroke_width(2),
            ))
            .map_err(d)?
            .label("perfect calibration")
            .legend(|(x, y)| {
                PathElement::new(
                    vec![(x, y), (x + 12, y)],
                    RGBColor(120, 120, 120).stroke_width(2),
                )
            });
        chart
            .draw_series(
                cal.bins
                    .iter()
                    .filter(|b| b.count > 0)
                    .map(|b| Circle::new((b.confidence, b.accuracy), 3, WRONG.filled())),
            )
            .map_err(d)?
            .label("mean confidence vs accuracy")
            .legend(|(x, y)| Circle::new((x + 6, y), 3, WRONG.filled()));
        legend(&mut chart)
    })?;
    Ok((png, w, h))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn confusion(m: Vec<Vec<u64>>) -> Confusion {
        let n = m.len();
        Confusion {
            ids: (0..n).collect(),
            labels: (0..n).map(|i| format!("class-{i}")).collect(),
            matrix: m,
        }
    }

    fn luminance(p: &image::Rgb<u8>) -> u32 {
        (p[0] as u32 * 299 + p[1] as u32 * 587 + p[2] as u32 * 114) / 1000
    }

    #[test]
    fn font_parses() {
        assert!(plotters::style::register_font("test-font", FontStyle::Normal, FONT).is_ok());
        assert!(text_width("Predicted class", 14.0) > 50);
    }

    #[test]
    fn colour_map_is_monotone_dark_at_the_top() {
        let l = |v: f64| {
            let c = blues(v);
            luminance(&image::Rgb([c.0, c.1, c.2]))
        };
        let mut prev = u32::MAX;
        for i in 0..=100 {
            let v = l(i as f64 / 100.0);
            assert!(v <= prev, "luminance rises at {i}");
            prev = v;
        }
        assert!(l(1.0) < 60 && l(0.0) > 240);
    }

    #[test]
    fn heatmap_cells_follow_the_counts() {
        let c = confusion(vec![
            vec![50, 3, 0, 1],
            vec![7, 20, 2, 0],
            vec![0, 0, 33, 9],
            vec![4, 0, 0, 12],
        ]);
        let shown: Vec<usize> = (0..4).collect();
        let (png, w, h, lay) = confusion_heatmap(&c, &shown, false).unwrap();
        let img = image::load_from_memory(&png).unwrap().to_rgb8();
        assert_eq!((img.width(), img.height()), (w, h));
        // Sample each cell near its corner (away from the number in the middle).
        let sample = |r: usize, col: usize| {
            let x = lay.x0 + col as u32 * lay.cell + 3;
            let y = lay.y0 + r as u32 * lay.cell + 3;
            luminance(img.get_pixel(x, y))
        };
        let mut cells: Vec<(u64, u32)> = vec![];
        for r in 0..4 {
            for col in 0..4 {
                cells.push((c.matrix[r][col], sample(r, col)));
            }
        }
        let darkest = cells.iter().min_by_key(|x| x.1).unwrap();
        assert_eq!(
            darkest.0, 50,
            "darkest cell must be the max count: {cells:?}"
        );
        // Larger counts are never lighter.
        for a in &cells {
            for b in &cells {
                if a.0 > b.0 {
                    assert!(
                        a.1 <= b.1,
                        "count {} lighter than count {}: {cells:?}",
                        a.0,
                        b.0
                    );
                }
            }
        }
        // Zero cells are (near) white.
        assert!(sample(0, 2) > 240);
        // Normalised: row 3 (4, 0, 0, 12) has recall .75 -> darker than row 1's .69.
        let (png, _, _, lay) = confusion_heatmap(&c, &shown, true).unwrap();
        let img = image::load_from_memory(&png).unwrap().to_rgb8();
        let at = |r: usize, col: usize| {
            luminance(img.get_pixel(
                lay.x0 + col as u32 * lay.cell + 3,
                lay.y0 + r as u32 * lay.cell + 3,
            ))
        };
        assert!(at(3, 3) < at(1, 1));
        assert!(at(0, 0) < at(3, 3));
    }

    #[test]
    fn many_classes_show_the_most_confused() {
        let n = 100;
        let mut m = vec![vec![0u64; n]; n];
        for (i, row) in m.iter_mut().enumerate() {
            row[i] = 10;
        }
        m[17][42] = 5;
        m[99][3] = 2;
        let c = confusion(m);
        let s = select_classes(&c, 30);
        assert_eq!(s.len(), 30);
        for i in [3, 17, 42, 99] {
            assert!(s.contains(&i), "{i} missing from {s:?}");
        }
        let (png, w, h, _) = confusion_heatmap(&c, &s, false).unwrap();
        assert!(w < 1400 && h < 1400, "{w}x{h}");
        assert!(!png.is_empty());
    }
}
