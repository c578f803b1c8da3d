//! `vit-batch report`: renders real run folders (synthetic rows through the real
//! metrics/Parquet code, see synth.rs) with the real binary, then checks the files:
//! PNGs decode and show the data, names are escaped, Markdown/JSON match committed
//! snapshots, renders are deterministic, the page loads in headless Chromium with no
//! console errors, and a 50,000-row / 1,000-class run renders in seconds.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::synth::{self, Spec};
use crate::util;

use vit_batch::options::ReportOptions;
use vit_batch::report::{self, charts};

const XSS: &str = "<script>alert(1)</script>";
const IMG_XSS: &str = "<img src=x onerror=alert(2)>";

fn render_cli(run: &Path, out: &Path, formats: &str) {
    let o = util::run(&[
        "report",
        run.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--format",
        formats,
    ]);
    util::assert_no_panic(&o);
    assert_eq!(
        o.status.code(),
        Some(0),
        "report failed: {}",
        util::stderr(&o)
    );
}

fn small_spec(data: &Path) -> Spec {
    let mut s = Spec::new(600, 10);
    s.error_every = 50;
    s.unmapped = vec!["stray".into()];
    s.unmapped_rows = 4;
    s.data_dir = data.to_path_buf();
    s.write_images = true;
    s
}

#[test]
fn renders_every_format_with_charts_that_show_the_data() {
    let t = util::tempdir();
    let run = t.path().join("run");
    let out = t.path().join("out");
    let mf = synth::write_run(&run, &small_spec(&t.path().join("data")));
    render_cli(&run, &out, "html,png,md,json");
    for f in ["report.html", "report.md", "report.json"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    // No temporary files left behind by the atomic writes.
    for e in std::fs::read_dir(&out).unwrap() {
        let n = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!n.starts_with(".tmp"), "leftover {n}");
    }
    for (f, w, h) in [
        ("confusion.png", 400, 400),
        ("confusion_normalized.png", 400, 400),
        ("recall_by_class.png", 400, 200),
        ("confidence.png", 400, 300),
        ("reliability.png", 400, 300),
    ] {
        util::assert_png_not_blank(&out.join("charts").join(f), w, h);
    }

    // The heatmap on disk: sample every cell near its corner (the number sits in the
    // middle); the darkest cell is the largest count and larger counts are never
    // lighter.
    let (_, data) = report::load(&run).unwrap();
    let ch = charts::Charts::render(&data).unwrap();
    let on_disk = std::fs::read(out.join("charts/confusion.png")).unwrap();
    assert_eq!(on_disk, ch.get("confusion.png").unwrap().png);
    let img = image::load_from_memory(&on_disk).unwrap().to_rgb8();
    let lay = &ch.heatmaps[0];
    let m = &mf.metrics.confusion.matrix;
    assert_eq!(lay.shown.len(), 10);
    let lum = |p: &image::Rgb<u8>| p[0] as u32 * 299 + p[1] as u32 * 587 + p[2] as u32 * 114;
    let mut cells = vec![];
    for (ri, &r) in lay.shown.iter().enumerate() {
        for (ci, &c) in lay.shown.iter().enumerate() {
            let x = lay.x0 + ci as u32 * lay.cell + 2;
            let y = lay.y0 + ri as u32 * lay.cell + 2;
            cells.push((m[r][c], lum(img.get_pixel(x, y))));
        }
    }
    let max = cells.iter().map(|c| c.0).max().unwrap();
    let darkest = cells.iter().min_by_key(|c| c.1).unwrap();
    assert_eq!(
        darkest.0, max,
        "darkest cell is not the max count: {cells:?}"
    );
    for a in &cells {
        for b in &cells {
            if a.0 > b.0 {
                assert!(a.1 <= b.1, "count {} drawn lighter than {}", a.0, b.0);
            }
        }
    }

    // The page embeds the charts and the thumbnails of the hardest mistakes.
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert_eq!(html.matches("data:image/png;base64,").count(), 5);
    assert!(html.matches("data:image/jpeg;base64,").count() >= 10);
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "page must not reference the network"
    );
    for id in [
        "summary",
        "confusion",
        "per-class",
        "calibration",
        "mistakes",
        "failures",
    ] {
        assert!(
            html.contains(&format!("id=\"{id}\"")),
            "section {id} missing"
        );
    }
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        md.contains("Top-1 accuracy") && md.contains("95% CI"),
        "{md}"
    );
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(j["counts"]["errors"], 12);
    assert_eq!(j["counts"]["unmapped"], 4);
    let (lo, hi) = (
        j["top1"]["ci95"][0].as_f64().unwrap(),
        j["top1"]["ci95"][1].as_f64().unwrap(),
    );
    let top1 = j["top1"]["value"].as_f64().unwrap();
    assert!(lo < top1 && top1 < hi && hi - lo < 0.12, "{lo} {top1} {hi}");
}

#[test]
fn only_the_asked_formats_are_written_and_default_out_is_the_run() {
    let t = util::tempdir();
    let run = t.path().join("run");
    synth::write_run(&run, &Spec::new(100, 4));
    let o = util::run(&["report", run.to_str().unwrap(), "--format", "md"]);
    assert_eq!(o.status.code(), Some(0), "{}", util::stderr(&o));
    assert!(run.join("report.md").is_file());
    assert!(!run.join("report.html").exists() && !run.join("charts").exists());
    // The library's default: everything into the run folder.
    let s = report::render(&ReportOptions::new(&run)).unwrap();
    assert_eq!(s.out_dir, run);
    assert!(run.join("report.html").is_file() && run.join("charts/reliability.png").is_file());
}

#[test]
fn usage_and_input_errors_exit_2() {
    let t = util::tempdir();
    let o = util::run(&["report", t.path().join("nope").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        util::stderr(&o).contains("nope: not a finished vit-batch run: the folder is missing"),
        "{}",
        util::stderr(&o)
    );
    std::fs::create_dir_all(t.path().join("empty")).unwrap();
    let o = util::run(&["report", t.path().join("empty").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        util::stderr(&o).contains("metrics.json is missing"),
        "{}",
        util::stderr(&o)
    );
    let run = t.path().join("run");
    synth::write_run(&run, &Spec::new(20, 3));
    let o = util::run(&["report", run.to_str().unwrap(), "--format", "html,pdf"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        util::stderr(&o).contains("invalid value 'pdf' for '--format")
            && util::stderr(&o).contains("html, png, md, json"),
        "{}",
        util::stderr(&o)
    );
    std::fs::write(run.join("metrics.json"), "{}").unwrap();
    let o = util::run(&["report", run.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        util::stderr(&o).contains("not a vit-batch metrics.json"),
        "{}",
        util::stderr(&o)
    );
}

fn xss_spec(data: &Path) -> Spec {
    let mut s = Spec::new(300, 4);
    s.classes = vec![
        XSS.to_string(),
        "cat".into(),
        IMG_XSS.to_string(),
        "a\"b'c&d | *e* [f](g)".into(),
    ];
    s.error_every = 40;
    s.unmapped = vec!["<b>stray</b>".into()];
    s.unmapped_rows = 2;
    s.data_dir = data.to_path_buf();
    s
}

#[test]
fn names_and_paths_are_escaped_everywhere() {
    let t = util::tempdir();
    let run = t.path().join("run");
    let out = t.path().join("out");
    synth::write_run(&run, &xss_spec(&t.path().join("<data & \"dir\">")));
    render_cli(&run, &out, "html,md,json");
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert_eq!(
        html.matches("<script").count(),
        1,
        "only the page's own script"
    );
    assert!(!html.contains("<img src=x"));
    assert!(!html.contains("<b>stray"));
    assert!(!html.contains("<chunk"), "error messages are escaped");
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(html.contains("&lt;img src=x onerror=alert(2)&gt;"));
    assert!(html.contains("a&quot;b&#39;c&amp;d"));
    assert!(html.contains("&lt;data &amp; &quot;dir&quot;&gt;"));
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(!md.contains("<script") && !md.contains("<img") && !md.contains("<b>"));
    assert!(
        md.contains("&lt;script&gt;alert\\(1\\)&lt;/script&gt;"),
        "{md}"
    );
    // JSON carries the names verbatim (it is data, escaped by the JSON encoder).
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let names: Vec<&str> = j["lowest_recall"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["class"].as_str().unwrap())
        .collect();
    assert!(names.contains(&XSS), "{names:?}");
}

fn snapshot_spec() -> Spec {
    let mut s = Spec::new(240, 6);
    s.classes = vec![
        "airplane".into(),
        "bird".into(),
        "cat".into(),
        "dog".into(),
        "frog".into(),
        "<b>ship</b> | *truck*".into(),
    ];
    s.error_every = 37;
    s.unmapped = vec!["horse".into()];
    s.unmapped_rows = 3;
    s.k = 3;
    s
}

#[test]
fn markdown_and_json_match_snapshots() {
    let t = util::tempdir();
    let run = t.path().join("run");
    synth::write_run(&run, &snapshot_spec());
    render_cli(&run, &run, "md,json");
    util::assert_snapshot(
        "report.md",
        &std::fs::read_to_string(run.join("report.md")).unwrap(),
    );
    util::assert_snapshot(
        "report.json",
        &std::fs::read_to_string(run.join("report.json")).unwrap(),
    );
}

fn read_all(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut v: Vec<(PathBuf, Vec<u8>)> = walkdir::WalkDir::new(dir)
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file())
        // The writer's lock (it holds the pid of the last render), not an output.
        .filter(|e| e.file_name() != ".vit-batch.lock")
        .map(|e| {
            (
                e.path().strip_prefix(dir).unwrap().to_path_buf(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn renders_are_byte_identical() {
    let t = util::tempdir();
    let run = t.path().join("run");
    synth::write_run(&run, &small_spec(&t.path().join("data")));
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    render_cli(&run, &a, "html,png,md,json");
    render_cli(&run, &b, "html,png,md,json");
    let (fa, fb) = (read_all(&a), read_all(&b));
    assert_eq!(fa.len(), 8);
    for ((pa, ba), (pb, bb)) in fa.iter().zip(&fb) {
        assert_eq!(pa, pb);
        assert!(ba == bb, "{} differs between two renders", pa.display());
    }
}

#[test]
fn unreadable_source_images_get_a_note_not_an_error() {
    let t = util::tempdir();
    let run = t.path().join("run");
    let data = t.path().join("data");
    let rows = synth::rows(&small_spec(&data));
    synth::write_run(&run, &small_spec(&data));
    // Remove the source files of all wrong predictions but keep the rest.
    for r in rows.iter().filter(|r| r.correct == Some(false)) {
        std::fs::remove_file(data.join(&r.path)).unwrap();
    }
    render_cli(&run, &run, "html");
    let html = std::fs::read_to_string(run.join("report.html")).unwrap();
    assert_eq!(html.matches("data:image/jpeg;base64,").count(), 0);
    assert!(
        html.contains("thumbnail(s) could not be made"),
        "note missing"
    );
    assert!(html.contains("no thumbnail: not readable any more"));
}

/// Chromium, installed by `scripts/setup --browser` (Debian package `chromium`).
fn chromium() -> PathBuf {
    for c in ["chromium", "chromium-browser", "google-chrome"] {
        if let Ok(o) = std::process::Command::new("which").arg(c).output() {
            if o.status.success() {
                return PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
            }
        }
    }
    panic!("chromium is not installed: this test needs a real browser; run `scripts/setup --browser` (or `apt-get install -y chromium`)");
}

fn chromium_run(html: &Path, extra: &[String]) -> std::process::Output {
    let profile = util::tempdir();
    let mut c = std::process::Command::new(chromium());
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--enable-logging=stderr",
        "--v=0",
    ]);
    c.arg(format!("--user-data-dir={}", profile.path().display()));
    c.args(extra);
    c.arg(format!("file://{}", html.display()));
    c.output().expect("spawn chromium")
}

fn console_errors(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| {
            l.contains("CONSOLE") || l.contains("Uncaught") || l.contains("Content Security Policy")
        })
        .collect()
}

#[test]
fn page_loads_in_headless_chromium() {
    let t = util::tempdir();
    let run = t.path().join("run");
    let mut spec = small_spec(&t.path().join("data"));
    spec.classes[3] = XSS.to_string();
    synth::write_run(&run, &spec);
    render_cli(&run, &run, "html");
    let html = run.join("report.html");

    let o = chromium_run(&html, &["--dump-dom".into()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "chromium failed: {err}");
    let errs = console_errors(&err);
    assert!(errs.is_empty(), "console errors: {errs:#?}");
    let dom = String::from_utf8_lossy(&o.stdout);
    for id in [
        "summary",
        "confusion",
        "per-class",
        "calibration",
        "mistakes",
        "failures",
        "per-class-table",
    ] {
        assert!(dom.contains(&format!("id=\"{id}\"")), "DOM lacks #{id}");
    }
    // The class named <script>… is text in the DOM, not an element.
    assert!(dom.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert_eq!(
        dom.matches("<script").count(),
        1,
        "only the page's own script"
    );
    assert!(dom.matches("<tr>").count() >= 10);

    let shot = t.path().join("shot.png");
    let o = chromium_run(
        &html,
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1280,2400".into(),
            "--hide-scrollbars".into(),
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "chromium screenshot failed: {err}");
    let errs = console_errors(&err);
    assert!(errs.is_empty(), "console errors: {errs:#?}");
    util::assert_png_not_blank(&shot, 1280, 2400);
    if let Ok(keep) = std::env::var("VIT_BATCH_KEEP_SCREENSHOT") {
        std::fs::copy(&shot, keep).unwrap();
    }
}

#[test]
fn fifty_thousand_rows_and_a_thousand_classes_render_in_seconds() {
    let t = util::tempdir();
    let run = t.path().join("run");
    let mut spec = Spec::new(50_000, 1000);
    spec.error_every = 21; // 2,380 failures: more than the page lists
    synth::write_run(&run, &spec);
    let start = Instant::now();
    render_cli(&run, &run, "html,png,md,json");
    let secs = start.elapsed().as_secs_f64();
    eprintln!("report of 50,000 rows / 1,000 classes: {secs:.2} s");
    assert!(secs < 30.0, "report took {secs:.1} s");
    let html = std::fs::read_to_string(run.join("report.html")).unwrap();
    assert!(html.len() < 8_000_000, "page is {} bytes", html.len());
    assert!(html.contains("Showing the first 1,000"));
    assert!(html.contains("the heatmaps show the 30 classes with the most errors"));
    let rows = html.matches("<td class=\"path\">").count();
    assert_eq!(rows, 1000, "failure rows listed");
    util::assert_png_not_blank(&run.join("charts/confusion.png"), 400, 400);
}
