//! `vit-batch compare` (the regression gate), tested on real run folders.
//!
//! Why it exists: the gate decides CI outcomes, so its statistics are checked against
//! an independent implementation (statsmodels, via `fixtures/mcnemar_cases.csv`) and
//! its verdicts against real runs of the real binary: an identical re-run, a change
//! that flips a couple of images both ways, and a degraded model (two rows of the
//! classifier head swapped in `model.onnx`) that must fail with exit 1 and name the
//! images it broke — exactly those, computed independently from the baseline rows.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

use prost::Message;
use vit_batch::compare::mcnemar_exact_p;
use vit_batch::export::{export, ExportOptions, ExportSource};
use vit_batch::onnx::ModelProto;
use vit_batch::record::{read_parquet, write_parquet, Row};

use crate::util::{self, read_json};

// ---------------------------------------------------------------------------
// (a) McNemar vs statsmodels

#[test]
fn mcnemar_matches_statsmodels_table() {
    let path = util::fixtures().join("mcnemar_cases.csv");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut n = 0;
    let mut seen = BTreeSet::new();
    for line in text.lines() {
        if line.starts_with('#') || line.starts_with("b,") || line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(',').collect();
        let (b, c, p): (u64, u64, f64) = (
            f[0].parse().unwrap(),
            f[1].parse().unwrap(),
            f[2].parse().unwrap(),
        );
        let got = mcnemar_exact_p(b, c);
        assert!(
            (got - p).abs() <= 1e-9,
            "McNemar b={b} c={c}: vit-batch {got:e}, statsmodels {p:e}"
        );
        // Relative agreement too, where the reference is not underflowed.
        if p > 1e-290 {
            assert!(
                ((got - p) / p).abs() < 1e-7,
                "McNemar b={b} c={c}: relative error, vit-batch {got:e}, statsmodels {p:e}"
            );
        }
        seen.insert((b, c));
        n += 1;
    }
    assert!(n >= 30, "only {n} cases in {}", path.display());
    // The table covers the cases the brief names.
    for must in [(0, 0), (5000, 5200), (2, 10), (1000, 1)] {
        assert!(seen.contains(&must), "table lacks {must:?}");
    }
}

// ---------------------------------------------------------------------------
// Real runs: a seeded preset model exported by the library, scored by the binary.

const CLASSES: usize = 10;

/// Export the `vit-micro` preset (seeded random init) with class names "0".."9".
fn export_model(dir: &Path, seed: u64) {
    export(&ExportOptions::new(
        ExportSource::Preset {
            name: "vit-micro".into(),
            seed,
            num_labels: CLASSES,
        },
        dir,
    ))
    .expect("export preset");
    let cfg_path = dir.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    let id2label: serde_json::Map<String, serde_json::Value> = (0..CLASSES)
        .map(|i| (i.to_string(), serde_json::Value::String(i.to_string())))
        .collect();
    let label2id: serde_json::Map<String, serde_json::Value> = (0..CLASSES)
        .map(|i| (i.to_string(), serde_json::json!(i)))
        .collect();
    cfg["id2label"] = serde_json::Value::Object(id2label);
    cfg["label2id"] = serde_json::Value::Object(label2id);
    std::fs::write(&cfg_path, serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
}

/// Copy a model folder and swap classes `a` and `b` in its classifier head (rows of
/// the weight and entries of the bias feeding the `logits` output), in the ONNX
/// initializers themselves. Every image the original predicts as `a` is then
/// predicted as `b` and vice versa; nothing else changes.
pub fn swap_head_classes(src: &Path, dst: &Path, a: usize, b: usize) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
        }
    }
    let bytes = std::fs::read(src.join("model.onnx")).unwrap();
    let mut m = ModelProto::decode(bytes.as_slice()).unwrap();
    let g = m.graph.as_mut().unwrap();
    let node = g
        .node
        .iter()
        .find(|n| n.output.iter().any(|o| o == "logits"))
        .expect("a node producing logits");
    assert_eq!(node.op_type(), "Gemm", "head is {:?}", node.op_type());
    let trans_b = node
        .attribute
        .iter()
        .any(|at| at.name() == "transB" && at.i() == 1);
    let (wname, bname) = (node.input[1].clone(), node.input[2].clone());
    let mut swapped = 0;
    for t in g.initializer.iter_mut() {
        let name = t.name().to_string();
        if name != wname && name != bname {
            continue;
        }
        let dims: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
        let mut vals: Vec<f32> = if !t.raw_data().is_empty() {
            t.raw_data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect()
        } else {
            t.float_data.clone()
        };
        if name == bname {
            assert_eq!(dims, vec![CLASSES]);
            vals.swap(a, b);
        } else if trans_b {
            // [C, hidden]: swap rows.
            let h = dims[1];
            for j in 0..h {
                vals.swap(a * h + j, b * h + j);
            }
        } else {
            // [hidden, C]: swap columns.
            let c = dims[1];
            for i in 0..dims[0] {
                vals.swap(i * c + a, i * c + b);
            }
        }
        if !t.raw_data().is_empty() {
            t.raw_data = Some(vals.iter().flat_map(|v| v.to_le_bytes()).collect());
        } else {
            t.float_data = vals;
        }
        swapped += 1;
    }
    assert_eq!(swapped, 2, "classifier weight and bias initializers");
    std::fs::write(dst.join("model.onnx"), m.encode_to_vec()).unwrap();
}

/// `vit-batch score DATA --model MODEL --out OUT`, asserting success.
pub fn score(data: &Path, model: &Path, out: &Path) {
    util::score_ok(data, model, out, &["--threads", "2", "--overwrite"]);
}

fn digits_test() -> PathBuf {
    util::fixtures().join("digits/test")
}

/// One model, two runs of it on the digits test set, and a run on a relabelled copy
/// of the test set that the model mostly gets right; shared by the tests below
/// (scoring is the slow part).
struct Shared {
    _tmp: tempfile::TempDir,
    model: PathBuf,
    run1: PathBuf,
    run2: PathBuf,
    /// The relabelled dataset and the model's run on it.
    data: PathBuf,
    base: PathBuf,
}

fn shared() -> &'static Shared {
    static S: OnceLock<Shared> = OnceLock::new();
    S.get_or_init(|| {
        let tmp = util::tempdir();
        let root = tmp.path().to_path_buf();
        let model = root.join("model");
        export_model(&model, 7);
        let (run1, run2) = (root.join("run1"), root.join("run2"));
        score(&digits_test(), &model, &run1);
        score(&digits_test(), &model, &run2);
        // A seeded random init is no digit classifier (it may predict one class for
        // nearly everything), so build data it is good at: the fixture images filed
        // under the class it predicts for them (same pixels, same predictions),
        // except every 10th, filed under the next class (so some rows are wrong).
        let data = root.join("data");
        let rows = read_parquet(&run1.join("predictions.parquet")).unwrap();
        for (i, r) in rows.iter().enumerate() {
            let mut class = r.pred_id.expect("scored") as usize;
            if i % 10 == 9 {
                class = (class + 1) % CLASSES;
            }
            let dst = data.join(class.to_string()).join(r.path.replace('/', "_"));
            std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
            std::fs::copy(digits_test().join(&r.path), &dst).unwrap();
        }
        let base = root.join("base");
        score(&data, &model, &base);
        Shared {
            _tmp: tmp,
            model,
            run1,
            run2,
            data,
            base,
        }
    })
}

pub fn compare_cmd(base: &Path, cand: &Path, extra: &[&str]) -> Output {
    let o = util::bin()
        .arg("compare")
        .arg(base)
        .arg(cand)
        .args(extra)
        .output()
        .unwrap();
    util::assert_no_panic(&o);
    o
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn paths(v: &serde_json::Value) -> BTreeSet<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap().to_string())
        .collect()
}

/// Check JUnit XML with Python's XML parser (well-formedness) and return
/// (testcase name, has failure, has skipped) per testcase.
pub fn junit_cases(path: &Path) -> Vec<(String, bool, bool)> {
    let script = r#"
import sys, xml.dom.minidom as m
d = m.parse(sys.argv[1])
suites = d.getElementsByTagName("testsuite")
assert len(suites) == 1, len(suites)
s = suites[0]
cases = s.getElementsByTagName("testcase")
assert int(s.getAttribute("tests")) == len(cases)
assert int(s.getAttribute("failures")) == sum(1 for c in cases if c.getElementsByTagName("failure"))
for c in cases:
    f = 1 if c.getElementsByTagName("failure") else 0
    k = 1 if c.getElementsByTagName("skipped") else 0
    print(c.getAttribute("name"), f, k)
"#;
    let o = std::process::Command::new(util::venv_python())
        .arg("-c")
        .arg(script)
        .arg(path)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "JUnit XML {} is not well-formed: {}\n{}",
        path.display(),
        util::stderr(&o),
        std::fs::read_to_string(path).unwrap_or_default()
    );
    stdout(&o)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f[0].to_string(), f[1] == "1", f[2] == "1")
        })
        .collect()
}

const GATES: [&str; 6] = [
    "accuracy",
    "class_recall",
    "mcnemar",
    "throughput",
    "labels",
    "slices",
];

fn assert_one_testcase_per_gate(cases: &[(String, bool, bool)]) {
    let names: Vec<&str> = cases.iter().map(|c| c.0.as_str()).collect();
    assert_eq!(names, GATES, "one testcase per gate");
}

/// Copy a run folder's metrics.json and write `rows` as its predictions.
fn write_run(src: &Path, dst: &Path, rows: &[Row]) {
    std::fs::create_dir_all(dst).unwrap();
    std::fs::copy(src.join("metrics.json"), dst.join("metrics.json")).unwrap();
    write_parquet(&dst.join("predictions.parquet"), rows).unwrap();
}

// ---------------------------------------------------------------------------
// (b) gate behaviour

#[test]
fn identical_rerun_passes() {
    let s = shared();
    let out = util::tempdir();
    let (j, md, x) = (
        out.path().join("r.json"),
        out.path().join("r.md"),
        out.path().join("r.xml"),
    );
    let o = compare_cmd(
        &s.run1,
        &s.run2,
        &[
            "--json",
            j.to_str().unwrap(),
            "--markdown",
            md.to_str().unwrap(),
            "--junit",
            x.to_str().unwrap(),
        ],
    );
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}{}",
        stdout(&o),
        util::stderr(&o)
    );
    assert!(stdout(&o).contains("PASS"), "{}", stdout(&o));
    let r = read_json(&j);
    assert_eq!(r["verdict"], "pass");
    assert_eq!(r["mcnemar"]["b"], 0);
    assert_eq!(r["mcnemar"]["c"], 0);
    assert_eq!(r["mcnemar"]["p_value"], 1.0);
    assert_eq!(r["coverage"]["compared"], 360);
    assert_eq!(r["coverage"]["partial"], false);
    assert_eq!(r["accuracy"]["drop_pp"], 0.0);
    // Same numbers as the runs' own metrics.json (no failed rows here).
    let m = read_json(&s.run1.join("metrics.json"));
    assert_eq!(r["accuracy"]["baseline"], m["top1"]);
    let cases = junit_cases(&x);
    assert_one_testcase_per_gate(&cases);
    assert!(cases.iter().all(|c| !c.1), "no failure: {cases:?}");
    // The throughput gate is off by default.
    assert!(cases[3].2, "throughput skipped: {cases:?}");
    let md = std::fs::read_to_string(&md).unwrap();
    assert!(md.contains("PASS") && md.contains("| mcnemar |"), "{md}");
}

/// Right → wrong for `bad` rows and wrong → right for `good` rows of `rows`.
fn flip_rows(rows: &mut [Row], bad: &[usize], good: &[usize]) {
    for &i in bad {
        let r = &mut rows[i];
        let wrong = (r.label_id.unwrap() + 1) % CLASSES as u32;
        r.pred_id = Some(wrong);
        r.pred = Some(wrong.to_string());
        r.correct = Some(false);
    }
    for &i in good {
        let r = &mut rows[i];
        r.pred_id = r.label_id;
        r.pred = Some(r.label.clone());
        r.correct = Some(true);
    }
}

/// Indices of `n` rows that are right (or wrong), in distinct classes where possible.
fn pick(rows: &[Row], right: bool, n: usize) -> Vec<usize> {
    let cands: Vec<usize> = (0..rows.len())
        .filter(|&i| rows[i].correct == Some(right))
        .collect();
    let mut classes = BTreeSet::new();
    let mut out: Vec<usize> = cands
        .iter()
        .copied()
        .filter(|&i| classes.insert(rows[i].label.clone()))
        .take(n)
        .collect();
    for &i in &cands {
        if out.len() == n {
            break;
        }
        if !out.contains(&i) {
            out.push(i);
        }
    }
    assert_eq!(out.len(), n, "not enough rows with correct = {right}");
    out
}

#[test]
fn a_couple_of_flips_both_ways_pass_and_are_listed() {
    let s = shared();
    let mut rows = read_parquet(&s.base.join("predictions.parquet")).unwrap();
    let bad = pick(&rows, true, 2);
    let good = pick(&rows, false, 2);
    let want_bad: BTreeSet<String> = bad.iter().map(|&i| rows[i].path.clone()).collect();
    let want_good: BTreeSet<String> = good.iter().map(|&i| rows[i].path.clone()).collect();
    flip_rows(&mut rows, &bad, &good);
    let t = util::tempdir();
    let cand = t.path().join("cand");
    write_run(&s.base, &cand, &rows);
    let j = t.path().join("r.json");
    let o = compare_cmd(&s.base, &cand, &["--json", j.to_str().unwrap()]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}{}",
        stdout(&o),
        util::stderr(&o)
    );
    let r = read_json(&j);
    assert_eq!(paths(&r["regressions"]), want_bad);
    assert_eq!(paths(&r["fixes"]), want_good);
    assert_eq!(r["mcnemar"]["b"], 2);
    assert_eq!(r["mcnemar"]["c"], 2);
    for f in r["regressions"].as_array().unwrap() {
        assert_ne!(f["baseline_pred"], f["candidate_pred"]);
        assert_eq!(f["baseline_pred"], f["label"]);
    }

    // Two flips one way only on 360 images: 0.56 pp > 0.5 pp allowed -> accuracy
    // fails; McNemar does not (p = 0.5); no class loses 5 pp (distinct classes, or
    // one big class).
    let mut rows = read_parquet(&s.base.join("predictions.parquet")).unwrap();
    flip_rows(&mut rows, &bad, &[]);
    let cand2 = t.path().join("cand2");
    write_run(&s.base, &cand2, &rows);
    let x = t.path().join("r.xml");
    let o = compare_cmd(&s.base, &cand2, &["--junit", x.to_str().unwrap()]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}{}",
        stdout(&o),
        util::stderr(&o)
    );
    let cases = junit_cases(&x);
    assert_one_testcase_per_gate(&cases);
    let failed: Vec<&str> = cases.iter().filter(|c| c.1).map(|c| c.0.as_str()).collect();
    assert_eq!(failed, ["accuracy"]);
    // ...and passes with a looser allowance.
    let o = compare_cmd(&s.base, &cand2, &["--max-accuracy-drop", "1"]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
}

#[test]
fn degraded_model_fails_and_names_the_broken_images() {
    let s = shared();
    let t = util::tempdir();
    let (data, base) = (&s.data, &s.base);
    let base_rows = read_parquet(&base.join("predictions.parquet")).unwrap();
    let right = base_rows.iter().filter(|r| r.correct == Some(true)).count();
    assert!(
        right * 100 >= base_rows.len() * 85,
        "baseline should be mostly right on its relabelled data: {right}/{}",
        base_rows.len()
    );
    // Degrade: swap the two classes the model predicts most in its head.
    let mut counts = [0usize; CLASSES];
    for r in &base_rows {
        counts[r.pred_id.unwrap() as usize] += 1;
    }
    let mut order: Vec<usize> = (0..CLASSES).collect();
    order.sort_by_key(|&c| std::cmp::Reverse(counts[c]));
    let (a, b) = (order[0], order[1]);
    let degraded = t.path().join("degraded");
    swap_head_classes(&s.model, &degraded, a, b);
    let cand = t.path().join("cand");
    score(data, &degraded, &cand);
    // Independent expectation: exactly the right rows the baseline predicted as a or b.
    let want: BTreeSet<String> = base_rows
        .iter()
        .filter(|r| {
            r.correct == Some(true)
                && matches!(r.pred_id, Some(p) if p as usize == a || p as usize == b)
        })
        .map(|r| r.path.clone())
        .collect();
    assert!(want.len() >= 20, "swap affects {} images", want.len());

    let (j, md, x) = (
        t.path().join("r.json"),
        t.path().join("r.md"),
        t.path().join("r.xml"),
    );
    let o = compare_cmd(
        base,
        &cand,
        &[
            "--json",
            j.to_str().unwrap(),
            "--markdown",
            md.to_str().unwrap(),
            "--junit",
            x.to_str().unwrap(),
        ],
    );
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}{}", util::stderr(&o));
    assert!(out.contains("FAIL"), "{out}");
    let first = want.iter().next().unwrap();
    assert!(out.contains(first.as_str()), "stdout names {first}: {out}");
    let r = read_json(&j);
    assert_eq!(r["verdict"], "fail");
    assert_eq!(paths(&r["regressions"]), want, "flipped images");
    for f in r["regressions"].as_array().unwrap() {
        let (bp, cp) = (
            f["baseline_pred"].as_str().unwrap(),
            f["candidate_pred"].as_str().unwrap(),
        );
        let (sa, sb) = (a.to_string(), b.to_string());
        assert!(
            (bp == sa && cp == sb) || (bp == sb && cp == sa),
            "{bp} -> {cp}"
        );
    }
    assert_eq!(r["mcnemar"]["b"], want.len());
    assert!(r["mcnemar"]["p_value"].as_f64().unwrap() < 1e-5);
    let cases = junit_cases(&x);
    assert_one_testcase_per_gate(&cases);
    for name in ["accuracy", "class_recall", "mcnemar"] {
        assert!(
            cases.iter().any(|c| c.0 == name && c.1),
            "{name} fails: {cases:?}"
        );
    }
    let xml = std::fs::read_to_string(&x).unwrap();
    assert!(xml.contains(first.as_str()), "JUnit names {first}");
    let md = std::fs::read_to_string(&md).unwrap();
    assert!(
        md.contains("REGRESSION") && md.contains(first.as_str()),
        "{md}"
    );
}

#[test]
fn throughput_gate_is_opt_in() {
    let s = shared();
    let t = util::tempdir();
    let cand = t.path().join("slow");
    std::fs::create_dir_all(&cand).unwrap();
    std::fs::copy(
        s.run1.join("predictions.parquet"),
        cand.join("predictions.parquet"),
    )
    .unwrap();
    let mut m = read_json(&s.run1.join("metrics.json"));
    let ips = m["throughput"]["images_per_s"].as_f64().unwrap();
    assert!(ips > 0.0);
    m["throughput"]["images_per_s"] = serde_json::json!(ips * 0.5);
    std::fs::write(cand.join("metrics.json"), m.to_string()).unwrap();
    let o = compare_cmd(&s.run1, &cand, &[]);
    assert_eq!(o.status.code(), Some(0), "off by default: {}", stdout(&o));
    let x = t.path().join("r.xml");
    let o = compare_cmd(
        &s.run1,
        &cand,
        &[
            "--max-throughput-drop",
            "20",
            "--junit",
            x.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let failed: Vec<String> = junit_cases(&x)
        .into_iter()
        .filter(|c| c.1)
        .map(|c| c.0)
        .collect();
    assert_eq!(failed, ["throughput"]);
    let o = compare_cmd(&s.run1, &cand, &["--max-throughput-drop", "60"]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
}

#[test]
fn different_image_sets_need_allow_partial() {
    let s = shared();
    let t = util::tempdir();
    let rows = read_parquet(&s.run1.join("predictions.parquet")).unwrap();
    let cand = t.path().join("part");
    write_run(&s.run1, &cand, &rows[..300]);
    let o = compare_cmd(&s.run1, &cand, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    let e = util::stderr(&o);
    assert!(
        e.contains("60 only in the baseline") && e.contains("--allow-partial"),
        "{e}"
    );
    assert!(e.contains(&rows[300].path), "names an example: {e}");
    let j = t.path().join("r.json");
    let o = compare_cmd(
        &s.run1,
        &cand,
        &["--allow-partial", "--json", j.to_str().unwrap()],
    );
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}{}",
        stdout(&o),
        util::stderr(&o)
    );
    assert!(stdout(&o).contains("partial"), "{}", stdout(&o));
    let r = read_json(&j);
    assert_eq!(r["coverage"]["matched"], 300);
    assert_eq!(r["coverage"]["only_baseline"], 60);
    assert_eq!(r["coverage"]["partial"], true);
    let frac = r["coverage"]["fraction"].as_f64().unwrap();
    assert!((frac - 300.0 / 360.0).abs() < 1e-12);
}

#[test]
fn bad_inputs_exit_2_and_say_why() {
    let s = shared();
    let t = util::tempdir();
    let missing = t.path().join("no-such-run");
    let o = compare_cmd(&s.run1, &missing, &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        util::stderr(&o).contains("no-such-run"),
        "{}",
        util::stderr(&o)
    );

    let empty = t.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let o = compare_cmd(&empty, &s.run1, &[]);
    assert_eq!(o.status.code(), Some(2));
    let e = util::stderr(&o);
    assert!(e.contains("baseline") && e.contains("metrics.json"), "{e}");

    // The same image under a different label: the dataset changed.
    let mut rows = read_parquet(&s.run1.join("predictions.parquet")).unwrap();
    rows[5].label = "elsewhere".into();
    let cand = t.path().join("relabelled");
    write_run(&s.run1, &cand, &rows);
    let o = compare_cmd(&s.run1, &cand, &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        util::stderr(&o).contains(&rows[5].path),
        "{}",
        util::stderr(&o)
    );

    let o = compare_cmd(&s.run1, &s.run2, &["--alpha", "1.5"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(util::stderr(&o).contains("alpha"), "{}", util::stderr(&o));
}

// ---------------------------------------------------------------------------
// The trained fixture model, degraded, end to end through `vit-batch run`.

fn fixture_model() -> PathBuf {
    util::fixtures().join("models/vit-digits")
}

fn baseline() -> PathBuf {
    util::repo().join("reports/baselines/digits")
}

/// A pipeline file scoring `model` on the digits test set into `dir/run` and gating
/// against the committed baseline (all paths absolute).
fn gate_pipeline(dir: &Path, model: &Path) -> PathBuf {
    let p = dir.join("p.toml");
    let text = format!(
        r#"name = "t"
[score]
data_dir = "{data}"
model = "{model}"
out = "{run}"
threads = 2

[gate]
baseline = "{base}"
junit = "{dir}/gate.xml"
markdown = "{dir}/gate.md"
json = "{dir}/gate.json"
"#,
        data = digits_test().display(),
        model = model.display(),
        run = dir.join("run").display(),
        dir = dir.display(),
        base = baseline().display(),
    );
    std::fs::write(&p, text).unwrap();
    p
}

fn run_pipeline(cwd: &Path, file: &Path) -> Output {
    let o = util::bin()
        .current_dir(cwd)
        .arg("run")
        .arg(file)
        .output()
        .unwrap();
    util::assert_no_panic(&o);
    o
}

#[test]
fn pipeline_fixture_model_passes_against_committed_baseline() {
    let t = util::tempdir();
    let p = gate_pipeline(t.path(), &fixture_model());
    let o = run_pipeline(t.path(), &p);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}{}",
        stdout(&o),
        util::stderr(&o)
    );
    let r = read_json(&t.path().join("gate.json"));
    assert_eq!(r["verdict"], "pass");
    assert_eq!(
        r["mcnemar"]["b"], 0,
        "the committed baseline is reproducible"
    );
    assert_eq!(r["mcnemar"]["c"], 0);
    assert_eq!(r["coverage"]["compared"], 360);
    assert_one_testcase_per_gate(&junit_cases(&t.path().join("gate.xml")));
}

#[test]
fn pipeline_degraded_fixture_model_fails_with_exit_1_naming_images() {
    let t = util::tempdir();
    let base_rows = read_parquet(&baseline().join("predictions.parquet")).unwrap();
    let (a, b) = (3u32, 8u32);
    let degraded = t.path().join("degraded");
    swap_head_classes(&fixture_model(), &degraded, a as usize, b as usize);
    // Independent expectation from the baseline rows: predictions a and b trade places.
    let swapped = |p: u32| match p {
        p if p == a => b,
        p if p == b => a,
        p => p,
    };
    let mut want_bad = BTreeSet::new();
    let mut want_good = BTreeSet::new();
    for r in &base_rows {
        let (t, p) = (r.label_id.unwrap(), r.pred_id.unwrap());
        match (p == t, swapped(p) == t) {
            (true, false) => want_bad.insert(r.path.clone()),
            (false, true) => want_good.insert(r.path.clone()),
            _ => false,
        };
    }
    assert!(want_bad.len() >= 60, "{}", want_bad.len());
    let p = gate_pipeline(t.path(), &degraded);
    let o = run_pipeline(t.path(), &p);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}{}", util::stderr(&o));
    assert!(out.contains("FAIL"), "{out}");
    let first = want_bad.iter().next().unwrap();
    assert!(out.contains(first.as_str()), "names {first}: {out}");
    let r = read_json(&t.path().join("gate.json"));
    assert_eq!(paths(&r["regressions"]), want_bad);
    assert_eq!(paths(&r["fixes"]), want_good);
    let cases = junit_cases(&t.path().join("gate.xml"));
    assert_one_testcase_per_gate(&cases);
    for name in ["accuracy", "class_recall", "mcnemar"] {
        assert!(
            cases.iter().any(|c| c.0 == name && c.1),
            "{name}: {cases:?}"
        );
    }
    // Per-class: exactly the two swapped classes regressed.
    let regressed: BTreeSet<String> = r["per_class"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["regressed"] == true)
        .map(|c| c["class"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        regressed,
        [a.to_string(), b.to_string()].into_iter().collect()
    );
    let md = std::fs::read_to_string(t.path().join("gate.md")).unwrap();
    assert!(md.contains("REGRESSION") && md.contains(first.as_str()));
}

// ---------------------------------------------------------------------------
// (c) pipeline validation

fn expect_pipeline_error(text: &str, needles: &[&str]) {
    let t = util::tempdir();
    let p = t.path().join("bad.toml");
    std::fs::write(&p, text).unwrap();
    let o = run_pipeline(t.path(), &p);
    let e = util::stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{text}\n{}{e}", stdout(&o));
    for n in needles {
        assert!(e.contains(n), "error names {n:?}: {e}");
    }
    // Validation happens before any stage: nothing was written.
    let left: Vec<_> = std::fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("bad.toml")], "{e}");
}

fn score_table(model: &str) -> String {
    format!(
        "[score]\ndata_dir = \"{}\"\nmodel = \"{model}\"\nout = \"out\"\n",
        digits_test().display()
    )
}

#[test]
fn pipeline_validation_errors_exit_2_and_name_the_key_or_path() {
    let model = fixture_model().display().to_string();
    // Unknown key in a table, and an unknown table.
    expect_pipeline_error(
        &format!("{}batchsize = 3\n", score_table(&model)),
        &["unknown key", "batchsize", "bad.toml"],
    );
    expect_pipeline_error(
        &format!("{}[scoring]\nx = 1\n", score_table(&model)),
        &["unknown key", "scoring"],
    );
    // A missing key.
    expect_pipeline_error(
        "[score]\nmodel = \"m\"\nout = \"o\"\n",
        &["missing key", "data_dir"],
    );
    // Missing paths, each named with its key.
    expect_pipeline_error(
        &score_table("no/such/model"),
        &["[score] model", "no/such/model", "current directory"],
    );
    expect_pipeline_error(
        &format!(
            "{}[gate]\nbaseline = \"no/such/baseline\"\n",
            score_table(&model)
        ),
        &["[gate] baseline", "no/such/baseline"],
    );
    expect_pipeline_error(
        "[score]\ndata_dir = \"nope-data\"\nmodel = \"m\"\nout = \"o\"\n",
        &["[score] data_dir", "nope-data"],
    );
    // Scoring into the baseline would overwrite it.
    expect_pipeline_error(
        &format!(
            "[score]\ndata_dir = \"{}\"\nmodel = \"{model}\"\nout = \"{b}\"\n[gate]\nbaseline = \"{b}\"\n",
            digits_test().display(),
            b = baseline().display()
        ),
        &["overwrite the baseline"],
    );
    // Bad values.
    expect_pipeline_error(
        &format!(
            "{}[gate]\nbaseline = \"{}\"\nalpha = 2.0\n",
            score_table(&model),
            baseline().display()
        ),
        &["[gate]", "alpha"],
    );
    expect_pipeline_error("name = \"x\"\n", &["no stage to run"]);
    expect_pipeline_error("[score\n", &["bad.toml"]);
}

#[test]
fn committed_pipelines_validate() {
    for p in ["pipelines/digits.toml", "pipelines/nightly.toml"] {
        let o = util::bin()
            .current_dir(util::repo())
            .args(["run", "--check", p])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "{p}: {}", util::stderr(&o));
        assert!(stdout(&o).contains("gate"), "{}", stdout(&o));
    }
}

#[test]
fn pipeline_runs_every_stage_in_order() {
    // A tiny but real train -> export -> score -> report -> gate chain, from a cwd
    // that makes the pipeline's relative paths resolve into the temp folder.
    let t = util::tempdir();
    let cwd = t.path();
    let text = format!(
        r#"name = "chain"
[train]
data_dir = "{train}"
preset = "vit-micro"
out = "ck"
epochs = 1
limit_per_class = 8
threads = 1

[export]
out = "model"

[score]
data_dir = "{test}"
model = "ignored-when-export-runs"
out = "run"
limit = 40
threads = 2

[report]
formats = ["md", "json"]

[gate]
baseline = "base"
max_accuracy_drop_pp = 100
max_class_recall_drop_pp = 100
json = "gate.json"
"#,
        train = util::fixtures().join("digits/train").display(),
        test = digits_test().display(),
    );
    std::fs::write(cwd.join("p.toml"), text).unwrap();
    // The baseline: the same 40 images, shared run rows with metrics.
    let base_rows = read_parquet(&baseline().join("predictions.parquet")).unwrap();
    write_run(&baseline(), &cwd.join("base"), &base_rows[..40]);
    let o = run_pipeline(cwd, Path::new("p.toml"));
    let e = util::stderr(&o);
    assert!(
        matches!(o.status.code(), Some(0) | Some(1)),
        "{}{e}",
        stdout(&o)
    );
    let order: Vec<usize> = ["] train", "] export", "] score", "] report", "] gate"]
        .iter()
        .map(|s| e.find(s).unwrap_or_else(|| panic!("stage {s} ran: {e}")))
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "stage order: {e}");
    assert!(
        e.contains("ignored-when-export-runs"),
        "note about score.model: {e}"
    );
    assert!(cwd.join("ck/model.safetensors").is_file());
    assert!(cwd.join("model/model.onnx").is_file());
    assert!(cwd.join("run/report.md").is_file() && cwd.join("run/report.json").is_file());
    assert!(
        !cwd.join("run/report.html").exists(),
        "only the formats asked for"
    );
    let r = read_json(&cwd.join("gate.json"));
    assert_eq!(r["coverage"]["compared"], 40);
    let m = read_json(&cwd.join("run/metrics.json"));
    assert!(m["run"]["model"].as_str().unwrap().ends_with("model"));
}

// ---------------------------------------------------------------------------
// (d) no way around the gate

/// The trained fixture model with the labels of `renamed` classes renamed in its
/// `config.json` (`id2label` and `label2id`), as a candidate might ship it.
fn model_with_renamed_labels(dst: &Path, renamed: &[usize]) -> PathBuf {
    std::fs::create_dir_all(dst).unwrap();
    for f in ["model.onnx", "preprocessor_config.json"] {
        std::fs::copy(fixture_model().join(f), dst.join(f)).unwrap();
    }
    let mut cfg = read_json(&fixture_model().join("config.json"));
    let mut label2id = serde_json::Map::new();
    for i in 0..CLASSES {
        let name = if renamed.contains(&i) {
            format!("renamed-{i}")
        } else {
            cfg["id2label"][i.to_string()].as_str().unwrap().to_string()
        };
        cfg["id2label"][i.to_string()] = serde_json::json!(name);
        label2id.insert(name, serde_json::json!(i));
    }
    cfg["label2id"] = serde_json::Value::Object(label2id);
    std::fs::write(dst.join("config.json"), cfg.to_string()).unwrap();
    dst.to_path_buf()
}

fn gate_json(cand: &Path, extra: &[&str], j: &Path) -> (Output, serde_json::Value) {
    let mut args = vec!["--json", j.to_str().unwrap()];
    args.extend_from_slice(extra);
    let o = compare_cmd(&baseline(), cand, &args);
    let r = read_json(j);
    (o, r)
}

fn gate_verdict<'a>(r: &'a serde_json::Value, name: &str) -> &'a str {
    r["gates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == name)
        .unwrap_or_else(|| panic!("gate {name}: {r}"))["verdict"]
        .as_str()
        .unwrap()
}

#[test]
fn renamed_labels_cannot_take_images_out_of_the_gate() {
    let t = util::tempdir();
    // Nine of ten labels renamed: those images are unmapped for the candidate.
    let model = model_with_renamed_labels(&t.path().join("m9"), &(1..CLASSES).collect::<Vec<_>>());
    let cand = t.path().join("cand9");
    score(&digits_test(), &model, &cand);
    let j = t.path().join("r9.json");
    let (o, r) = gate_json(&cand, &[], &j);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}{}",
        stdout(&o),
        util::stderr(&o)
    );
    assert_eq!(
        r["coverage"]["compared"], 360,
        "every image stays in the comparison"
    );
    assert_eq!(gate_verdict(&r, "labels"), "fail");
    assert_eq!(gate_verdict(&r, "accuracy"), "fail");
    let right = r["accuracy"]["candidate_right"].as_u64().unwrap();
    assert!(right <= 36, "only class 0 can be right: {right}");
    let cases = junit_cases(&{
        let x = t.path().join("r9.xml");
        compare_cmd(&baseline(), &cand, &["--junit", x.to_str().unwrap()]);
        x
    });
    assert!(cases.iter().any(|c| c.0 == "labels" && c.1), "{cases:?}");

    // One label renamed: the label gate still fails, nothing is dropped.
    let model = model_with_renamed_labels(&t.path().join("m1"), &[4]);
    let cand = t.path().join("cand1");
    score(&digits_test(), &model, &cand);
    let (o, r) = gate_json(&cand, &[], &t.path().join("r1.json"));
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert_eq!(r["coverage"]["compared"], 360);
    assert_eq!(gate_verdict(&r, "labels"), "fail");
    assert!(
        r["gates"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["name"] == "labels"
                && g["observed"].as_str().unwrap().contains("1 of 10 classes")),
        "{r}"
    );

    // Allowed: the labels gate passes, loudly, and the renamed class still counts
    // as wrong for the candidate (36 right→wrong images at least for class 4).
    let (o, r) = gate_json(&cand, &["--allow-label-change"], &t.path().join("r1a.json"));
    assert_eq!(gate_verdict(&r, "labels"), "pass");
    assert!(
        r["warnings"][0]
            .as_str()
            .unwrap()
            .contains("LABELS CHANGED"),
        "{r}"
    );
    assert!(
        stdout(&o).contains("WARNING: LABELS CHANGED"),
        "{}",
        stdout(&o)
    );
    assert_eq!(o.status.code(), Some(1), "class 4 is lost: {}", stdout(&o));
}

#[test]
fn same_paths_other_images_are_refused_unless_allowed() {
    let t = util::tempdir();
    // The test set with the first three images of each class replaced by training
    // images of that class under the test images' names.
    let data = t.path().join("data");
    for c in 0..CLASSES {
        let (src, dst) = (digits_test().join(c.to_string()), data.join(c.to_string()));
        std::fs::create_dir_all(&dst).unwrap();
        let mut names: Vec<_> = std::fs::read_dir(&src)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        let mut train: Vec<_> =
            std::fs::read_dir(util::fixtures().join(format!("digits/train/{c}")))
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
        train.sort();
        for (i, n) in names.iter().enumerate() {
            let from = if i < 3 { train[i].clone() } else { src.join(n) };
            std::fs::copy(from, dst.join(n)).unwrap();
        }
    }
    let cand = t.path().join("cand");
    score(&data, &fixture_model(), &cand);
    let fp = |d: &Path| read_json(&d.join("metrics.json"))["run"]["dataset_fingerprint"].clone();
    assert_ne!(
        fp(&cand),
        fp(&baseline()),
        "the swapped images change the fingerprint"
    );

    let o = compare_cmd(&baseline(), &cand, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    let e = util::stderr(&o);
    assert!(
        e.contains("different data") && e.contains("--allow-different-data"),
        "{e}"
    );

    let md = t.path().join("g.md");
    let j = t.path().join("g.json");
    let o = compare_cmd(
        &baseline(),
        &cand,
        &[
            "--allow-different-data",
            "--json",
            j.to_str().unwrap(),
            "--markdown",
            md.to_str().unwrap(),
        ],
    );
    assert!(
        matches!(o.status.code(), Some(0) | Some(1)),
        "{}",
        util::stderr(&o)
    );
    assert!(
        stdout(&o).starts_with("vit-batch compare: WARNING: DIFFERENT DATA"),
        "{}",
        stdout(&o)
    );
    let r = read_json(&j);
    assert!(
        r["warnings"][0]
            .as_str()
            .unwrap()
            .contains("DIFFERENT DATA"),
        "{r}"
    );
    let m = r["metadata"].as_array().unwrap();
    let fpd = m
        .iter()
        .find(|x| x["key"] == "dataset_fingerprint")
        .unwrap();
    assert_eq!(fpd["differs"], true);
    let same = m.iter().find(|x| x["key"] == "model_sha256").unwrap();
    assert_eq!(same["differs"], false);
    let text = std::fs::read_to_string(&md).unwrap();
    assert!(
        text.contains("DIFFERENT DATA") && text.contains("dataset\\_fingerprint (differs)"),
        "{text}"
    );
}
