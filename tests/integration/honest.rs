//! No silent wrong numbers: each way a run could end with exit 0 and a number that
//! looks fine but is not what it seems, on the real binary and real files.

use std::path::Path;

use crate::score::{digit_label_map, micro_model, score_args, small_dataset};
use crate::util::{self, run, stderr, tempdir};

fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

/// `args` plus `extra`, as owned strings.
fn with(args: &[&str], extra: &[&str]) -> Vec<String> {
    args.iter().chain(extra).map(|s| s.to_string()).collect()
}

fn run_owned(args: &[String]) -> std::process::Output {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = run(&a);
    util::assert_no_panic(&o);
    o
}

#[test]
fn a_model_without_preprocessor_config_needs_an_explicit_choice() {
    let t = tempdir();
    let model = micro_model(t.path());
    std::fs::remove_file(model.join("preprocessor_config.json")).unwrap();
    let lm = digit_label_map(t.path());
    let data = small_dataset(t.path(), 2, 3);
    let out = t.path().join("run");
    let base = score_args(
        data.to_str().unwrap(),
        model.to_str().unwrap(),
        out.to_str().unwrap(),
        lm.to_str().unwrap(),
    );
    let o = run_owned(&with(&base, &[]));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("preprocessor_config.json is missing") && e.contains("--preprocess"),
        "{e}"
    );
    assert!(!out.exists(), "nothing written");

    // Asked for: scored, and the choice is recorded and shown.
    let o = run_owned(&with(&base, &["--preprocess", "defaults"]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let m = read_json(&out.join("metrics.json"));
    let src = m["run"]["preprocess_source"].as_str().unwrap();
    assert!(
        src.starts_with("defaults") && src.contains("preprocess = defaults"),
        "{src}"
    );
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("| Preprocessing | defaults"), "{md}");
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains(">Preprocessing<"), "summary card");

    // Overrides are an explicit choice too, and are applied and recorded.
    let out2 = t.path().join("run2");
    let mut args = score_args(
        data.to_str().unwrap(),
        model.to_str().unwrap(),
        out2.to_str().unwrap(),
        lm.to_str().unwrap(),
    );
    args.extend([
        "--mean",
        "0.5,0.5,0.5",
        "--std",
        "0.5,0.5,0.5",
        "--resample",
        "bicubic",
    ]);
    let o = run(&args);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let m = read_json(&out2.join("metrics.json"));
    assert_eq!(
        m["run"]["preprocess"]["image_mean"],
        serde_json::json!([0.5, 0.5, 0.5])
    );
    assert_eq!(m["run"]["preprocess"]["resample"], 3);
    let src = m["run"]["preprocess_source"].as_str().unwrap();
    assert!(src.contains("overridden: resample, mean, std"), "{src}");

    // A dangling preprocessor_config.json is an error, not a silent fallback.
    std::os::unix::fs::symlink(
        t.path().join("nowhere.json"),
        model.join("preprocessor_config.json"),
    )
    .unwrap();
    let out3 = t.path().join("run3");
    let o = run(&score_args(
        data.to_str().unwrap(),
        model.to_str().unwrap(),
        out3.to_str().unwrap(),
        lm.to_str().unwrap(),
    ));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("dangling"), "{}", stderr(&o));
}

#[test]
fn a_run_that_evaluates_nothing_fails_with_exit_3() {
    let t = tempdir();
    let model = micro_model(t.path());
    let lm = digit_label_map(t.path());
    // Every image is broken.
    let data = t.path().join("data");
    for c in 0..3 {
        for i in 0..4 {
            util::write(&data.join(format!("{c}/{i}.png")), b"not a png at all");
        }
    }
    let out = t.path().join("run");
    let o = run(&score_args(
        data.to_str().unwrap(),
        model.to_str().unwrap(),
        out.to_str().unwrap(),
        lm.to_str().unwrap(),
    ));
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("no image was evaluated"),
        "{}",
        stderr(&o)
    );
    // The run's files are kept for a look, and its report says n/a, not 0%.
    let o = run(&["report", out.to_str().unwrap(), "--format", "md"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("| Top-1 accuracy | n/a"), "{md}");
    assert!(!md.contains("| Top-1 accuracy | 0.0%"), "{md}");
}

#[test]
fn error_rate_and_evaluated_count_gates() {
    let t = tempdir();
    let model = micro_model(t.path());
    let lm = digit_label_map(t.path());
    // 2 classes x 3 digits, one broken PNG (see small_dataset): 1 error of 8 images.
    let data = small_dataset(t.path(), 2, 3);
    let out = |n: &str| t.path().join(n).display().to_string();
    let args = |o: &str, extra: &[&str]| {
        with(
            &score_args(
                data.to_str().unwrap(),
                model.to_str().unwrap(),
                o,
                lm.to_str().unwrap(),
            ),
            extra,
        )
    };
    let o = run_owned(&args(&out("a"), &["--max-error-rate", "5"]));
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("above max_error_rate 5%"),
        "{}",
        stderr(&o)
    );
    let o = run_owned(&args(&out("b"), &["--max-error-rate", "50"]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = run_owned(&args(&out("c"), &["--min-evaluated", "100"]));
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("below min_evaluated 100"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn uri_outputs_top_k_and_resume_of_a_finished_run() {
    let t = tempdir();
    let model = micro_model(t.path());
    let lm = digit_label_map(t.path());
    let data = small_dataset(t.path(), 2, 3);
    let (d, m, l) = (
        data.to_str().unwrap(),
        model.to_str().unwrap(),
        lm.to_str().unwrap(),
    );
    // A URI is refused before anything is written (no ./s3:/ folder).
    let o = util::bin()
        .current_dir(t.path())
        .args(score_args(d, m, "s3://bucket/out", l))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("is a URI (s3://)"), "{}", stderr(&o));
    assert!(!t.path().join("s3:").exists());

    // top-k above the class count.
    let out = t.path().join("run");
    let o = run_owned(&with(
        &score_args(d, m, out.to_str().unwrap(), l),
        &["--top-k", "50"],
    ));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--top-k: 50 is more than the model's 10 classes"),
        "{}",
        stderr(&o)
    );
    let o = run_owned(&with(
        &score_args(d, m, out.to_str().unwrap(), l),
        &["--top-k", "0"],
    ));
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("--top-k: must be at least 1"),
        "{}",
        stderr(&o)
    );

    // Resume of a finished run: nothing rescored, nothing rewritten.
    let o = run(&score_args(d, m, out.to_str().unwrap(), l));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let before = std::fs::metadata(out.join("predictions.parquet"))
        .unwrap()
        .modified()
        .unwrap();
    let mut again: Vec<&str> = score_args(d, m, out.to_str().unwrap(), l)
        .into_iter()
        .filter(|a| *a != "--quiet")
        .collect();
    again.push("--resume");
    let o = run(&again);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("already complete"), "{}", stderr(&o));
    let after = std::fs::metadata(out.join("predictions.parquet"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(before, after, "predictions untouched");
    assert!(!out.join("parts").exists());
}
