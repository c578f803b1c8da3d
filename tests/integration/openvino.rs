//! `--provider openvino` and `--precision bf16` on the real plugin EP
//! (`scripts/setup --openvino`, which `scripts/test` runs), the real fixture model and
//! the real digits test set: the same predictions as ONNX Runtime's CPU provider in
//! fp32, bf16 that really computes in bf16 and still passes the nightly gate against
//! the committed fp32 baseline, versions and CPU flags recorded, no silent fall-back.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use vit_batch::record::{read_parquet, Row};
use vit_batch::runtime::{CpuInfo, PINNED_OPENVINO_EP_VERSION};

use crate::util::{self, assert_no_panic, read_json, score_ok, stderr, tempdir};

fn digits() -> PathBuf {
    util::fixtures().join("digits/test")
}

fn model() -> PathBuf {
    util::fixtures().join("models/vit-digits")
}

/// The plugin `scripts/setup --openvino` installs; its absence fails the test (the
/// suite's set-up installs it), it is not a skip.
fn plugin() -> PathBuf {
    let p = util::repo().join(format!(
        ".ort/openvino-ep-{PINNED_OPENVINO_EP_VERSION}/libonnxruntime_providers_openvino_plugin.so"
    ));
    assert!(
        p.is_file(),
        "the OpenVINO plugin EP is not installed at {}: run scripts/setup --openvino (scripts/test does)",
        p.display()
    );
    p
}

/// The fixture scored once per (provider, precision), shared by the tests.
struct Runs {
    _dir: tempfile::TempDir,
    cpu: PathBuf,
    ov32: PathBuf,
}

fn runs() -> &'static Runs {
    static R: OnceLock<Runs> = OnceLock::new();
    R.get_or_init(|| {
        plugin();
        let t = tempdir();
        let cpu = t.path().join("cpu");
        let ov32 = t.path().join("ov32");
        score_ok(&digits(), &model(), &cpu, &["--threads", "2"]);
        score_ok(
            &digits(),
            &model(),
            &ov32,
            &["--threads", "2", "--provider", "openvino"],
        );
        Runs { _dir: t, cpu, ov32 }
    })
}

fn rows(run: &Path) -> Vec<Row> {
    read_parquet(&run.join("predictions.parquet")).unwrap()
}

/// Largest difference of the top-k probabilities, row by row.
fn max_score_diff(a: &[Row], b: &[Row]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| {
            assert_eq!(x.path, y.path);
            let (p, q) = (
                x.topk_scores.clone().unwrap(),
                y.topk_scores.clone().unwrap(),
            );
            assert_eq!(p.len(), q.len());
            p.into_iter()
                .zip(q)
                .map(|(p, q)| (p - q).abs())
                .collect::<Vec<f32>>()
        })
        .fold(0.0, f32::max)
}

#[test]
fn openvino_fp32_gives_the_cpu_providers_predictions_and_records_what_ran() {
    let r = runs();
    let (a, b) = (rows(&r.cpu), rows(&r.ov32));
    assert_eq!(a.len(), 360);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.pred_id, y.pred_id, "{}", x.path);
        assert_eq!(x.topk_ids, y.topk_ids, "{}", x.path);
    }
    let d = max_score_diff(&a, &b);
    assert!(d < 1e-4, "OpenVINO fp32 moved a probability by {d}");

    let m = read_json(&r.ov32.join("metrics.json"));
    let run = &m["run"];
    assert_eq!(run["provider"], "openvino");
    assert_eq!(run["precision"], "fp32");
    let ov = &run["engine"]["openvino"];
    assert_eq!(ov["plugin_version"], PINNED_OPENVINO_EP_VERSION);
    let ovv = ov["openvino_version"].as_str().unwrap();
    assert!(
        ovv.starts_with("20") && ovv.split('-').next().unwrap().split('.').count() == 3,
        "{ovv}"
    );
    let cpu = CpuInfo::detect();
    assert_eq!(run["engine"]["cpu"]["model"], cpu.model.as_str());
    assert_eq!(
        run["engine"]["cpu"]["flags"],
        serde_json::json!(cpu.flags),
        "the CPU flags are recorded"
    );
    let id = read_json(&r.ov32.join("run.json"));
    assert_eq!(id["provider"], "openvino");
    // A CPU fp32 run's identity is what it was before these were recorded.
    let id_cpu = read_json(&r.cpu.join("run.json"));
    assert!(id_cpu.get("provider").is_none() && id_cpu.get("precision").is_none());
    let cpu_run = &read_json(&r.cpu.join("metrics.json"))["run"];
    assert_eq!(cpu_run["provider"], "cpu");
    assert!(cpu_run["engine"].get("openvino").is_none());

    // (Markdown-escaped in the file: compare without the backslashes.)
    let md = std::fs::read_to_string(r.ov32.join("report.md"))
        .unwrap()
        .replace('\\', "");
    let want =
        format!("| Engine | openvino fp32 (OpenVINO EP {PINNED_OPENVINO_EP_VERSION}, OpenVINO 20");
    assert!(md.contains(&want), "{md}");
    assert!(md.contains(&format!("| CPU | {}", cpu.model)), "{md}");
    let html = std::fs::read_to_string(r.ov32.join("report.html")).unwrap();
    assert!(
        html.contains("OpenVINO EP"),
        "the HTML header names the plugin"
    );
}

#[test]
fn openvino_bf16_computes_in_bf16_and_passes_the_nightly_gate_against_the_fp32_baseline() {
    let cpu = CpuInfo::detect();
    let t = tempdir();
    let out = t.path().join("bf16");
    if !cpu.has_bf16() {
        // The documented behaviour on such a CPU: exit 2, nothing scored.
        let o = util::bin()
            .arg("score")
            .arg(digits())
            .args(["--model", model().to_str().unwrap(), "--out"])
            .arg(&out)
            .args(["--provider", "openvino", "--precision", "bf16"])
            .output()
            .unwrap();
        assert_no_panic(&o);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains("neither avx512_bf16 nor amx_bf16"));
        eprintln!(
            "SKIPPED the bf16 gate: this CPU ({}) has no bf16 arithmetic; checked that bf16 exits 2 instead",
            cpu.summary()
        );
        return;
    }
    plugin();
    // The nightly pipeline, with the candidate in bf16.
    let p = t.path().join("p.toml");
    std::fs::write(
        &p,
        format!(
            r#"name = "bf16"
[score]
data_dir = "{data}"
model = "{model}"
out = "{out}"
threads = 2
batch_size = 32
provider = "openvino"
precision = "bf16"

[gate]
baseline = "{base}"
max_accuracy_drop_pp = 0.5
max_class_recall_drop_pp = 5.0
min_class_support = 20
alpha = 0.05
json = "{dir}/gate.json"
markdown = "{dir}/gate.md"
"#,
            data = digits().display(),
            model = model().display(),
            out = out.display(),
            base = util::repo().join("reports/baselines/digits").display(),
            dir = t.path().display(),
        ),
    )
    .unwrap();
    let o = util::bin().arg("run").arg(&p).output().unwrap();
    assert_no_panic(&o);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let g = read_json(&t.path().join("gate.json"));
    assert_eq!(g["verdict"], "pass");
    assert_eq!(g["coverage"]["compared"], 360);
    let gate_md = std::fs::read_to_string(t.path().join("gate.md")).unwrap();
    assert!(
        gate_md.contains("bf16"),
        "the gate names the precision: {gate_md}"
    );

    let m = read_json(&out.join("metrics.json"));
    assert_eq!(m["run"]["precision"], "bf16");
    assert_eq!(read_json(&out.join("run.json"))["precision"], "bf16");
    // bf16 really ran: probabilities move well beyond fp32 rounding (OpenVINO fp32
    // stays within 1e-4 of the CPU provider, see above), but not far.
    let d = max_score_diff(&rows(&runs().cpu), &rows(&out));
    assert!(d > 1e-3 && d < 0.2, "bf16 moved probabilities by {d}");
}

#[test]
fn missing_plugin_or_impossible_precision_exits_2_before_any_image() {
    let t = tempdir();
    let garbage = t.path().join("libonnxruntime_providers_openvino_plugin.so");
    std::fs::write(&garbage, b"not an ELF").unwrap();
    let missing = t
        .path()
        .join("nope/libonnxruntime_providers_openvino_plugin.so");
    let cases: Vec<(Vec<String>, Option<&Path>, &str)> = vec![
        (
            vec![
                "--provider".into(),
                "openvino".into(),
                "--openvino-lib".into(),
                missing.display().to_string(),
            ],
            None,
            "scripts/setup --openvino",
        ),
        (
            vec!["--provider".into(), "openvino".into()],
            Some(&garbage),
            "cannot register",
        ),
        (
            vec!["--precision".into(), "bf16".into()],
            None,
            "bf16 needs --provider",
        ),
    ];
    for (i, (args, env, needle)) in cases.into_iter().enumerate() {
        let out = t.path().join(format!("out{i}"));
        let mut c = util::bin();
        c.arg("score")
            .arg(digits())
            .arg("--model")
            .arg(model())
            .arg("--out")
            .arg(&out)
            .args(&args);
        if let Some(e) = env {
            c.env(vit_batch::runtime::OPENVINO_ENV, e);
        }
        let o = c.output().unwrap();
        assert_no_panic(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
        assert!(!out.join("run.json").exists(), "nothing written: {args:?}");
    }
}

#[test]
fn resume_and_merge_refuse_to_mix_providers_or_precisions() {
    plugin();
    let t = tempdir();
    // Two halves, one per provider: merge refuses them, naming the provider.
    let a = t.path().join("a");
    let b = t.path().join("b");
    score_ok(
        &digits(),
        &model(),
        &a,
        &["--threads", "2", "--shard", "0/2"],
    );
    score_ok(
        &digits(),
        &model(),
        &b,
        &["--threads", "2", "--shard", "1/2", "--provider", "openvino"],
    );
    let o = util::run(&[
        "merge",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--out",
        t.path().join("m").to_str().unwrap(),
    ]);
    assert_no_panic(&o);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("provider (cpu vs openvino)")
            || stderr(&o).contains("provider (openvino vs cpu)"),
        "{}",
        stderr(&o)
    );

    // An interrupted OpenVINO fp32 run (its outputs removed) resumed in another
    // precision or provider is refused; in its own, it finishes.
    let r = t.path().join("r");
    score_ok(
        &digits(),
        &model(),
        &r,
        &[
            "--threads",
            "2",
            "--provider",
            "openvino",
            "--checkpoint-rows",
            "64",
        ],
    );
    for f in ["predictions.parquet", "metrics.json"] {
        std::fs::remove_file(r.join(f)).unwrap();
    }
    let resume = |extra: &[&str]| {
        let o = util::bin()
            .arg("score")
            .arg(digits())
            .arg("--model")
            .arg(model())
            .arg("--out")
            .arg(&r)
            .args([
                "--quiet",
                "--resume",
                "--threads",
                "2",
                "--checkpoint-rows",
                "64",
            ])
            .args(extra)
            .output()
            .unwrap();
        assert_no_panic(&o);
        o
    };
    let o = resume(&[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("cannot resume") && stderr(&o).contains("provider (openvino vs cpu)"),
        "{}",
        stderr(&o)
    );
    if CpuInfo::detect().has_bf16() {
        let o = resume(&["--provider", "openvino", "--precision", "bf16"]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(
            stderr(&o).contains("precision (fp32 vs bf16)"),
            "{}",
            stderr(&o)
        );
    }
    let o = resume(&["--provider", "openvino"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(rows(&r).len(), 360);

    // compare of CPU fp32 with OpenVINO fp32 is allowed, and says what differs.
    let o = util::run(&["compare", runs().cpu.to_str().unwrap(), r.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with("provider"))
        .unwrap_or_else(|| panic!("no provider line: {out}"));
    assert!(
        line.contains("cpu") && line.contains("openvino") && line.contains("DIFFERS"),
        "{out}"
    );
    assert!(
        out.lines().any(|l| l.trim_start().starts_with("precision")),
        "{out}"
    );
}
