//! No silent wrong numbers: each way a run could end with exit 0 and a number that
//! looks fine but is not what it seems, on the real binary and real files.

use crate::score::{digit_label_map, micro_model, score_args, small_dataset};
use crate::util::{self, read_json, run, stderr, tempdir};

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
    let data = small_dataset(t.path(), 2, 3);
    let lm = digit_label_map(t.path(), &data);
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
    // Every image is broken.
    let data = t.path().join("data");
    for c in 0..3 {
        for i in 0..4 {
            util::write(&data.join(format!("{c}/{i}.png")), b"not a png at all");
        }
    }
    let lm = digit_label_map(t.path(), &data);
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
    // 2 classes x 3 digits, one broken PNG (see small_dataset): 1 error of 8 images.
    let data = small_dataset(t.path(), 2, 3);
    let lm = digit_label_map(t.path(), &data);
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
    let data = small_dataset(t.path(), 2, 3);
    let lm = digit_label_map(t.path(), &data);
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

/// The scored rows and the figures of `metrics.json`, recomputed by hand.
#[test]
fn one_accuracy_definition_in_score_report_compare_and_merge() {
    let t = tempdir();
    // The trained fixture model (its labels are the digit folder names), so that
    // right and wrong both occur.
    let model = util::fixtures().join("models/vit-digits");
    // 3 classes x 12 digits + a broken PNG in class 1 (labeled, failed) + an
    // unmapped class folder.
    let data = small_dataset(t.path(), 3, 12);
    let lm = t.path().join("map.csv");
    std::fs::write(&lm, "0,0\n").unwrap();
    let out = t.path().join("run");
    let args = score_args(
        data.to_str().unwrap(),
        model.to_str().unwrap(),
        out.to_str().unwrap(),
        lm.to_str().unwrap(),
    );
    let loud: Vec<&str> = args.iter().copied().filter(|a| *a != "--quiet").collect();
    let o = run_owned(&with(&loud, &["--top-k", "3"]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let rows = vit_batch::record::read_parquet(&out.join("predictions.parquet")).unwrap();
    let labeled: Vec<_> = rows.iter().filter(|r| r.label_id.is_some()).collect();
    let right = labeled.iter().filter(|r| r.correct == Some(true)).count() as f64;
    let failed = labeled
        .iter()
        .filter(|r| r.status == vit_batch::record::Status::Error)
        .count();
    assert_eq!(failed, 1, "the broken PNG is labeled and failed");
    let m = read_json(&out.join("metrics.json"));
    assert_eq!(m["counts"]["labeled"], labeled.len());
    assert_eq!(m["counts"]["evaluated"], labeled.len() - failed);
    let top1 = m["top1"].as_f64().unwrap();
    let scored = m["top1_scored"].as_f64().unwrap();
    assert!(
        (top1 - right / labeled.len() as f64).abs() < 1e-12,
        "{top1}"
    );
    assert!((scored - right / (labeled.len() - failed) as f64).abs() < 1e-12);
    assert!(right > 0.0 && top1 < scored, "{top1} {scored}");
    // The CLI line shows both.
    let e = stderr(&o);
    assert!(
        e.contains(&format!("of {} labeled images", labeled.len()))
            && e.contains("failed images counted wrong"),
        "{e}"
    );
    // report.md: the same top-1, with the scored-only figure beside it.
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        md.contains(&format!("| Top-1 accuracy | {:.1}%", 100.0 * top1)),
        "{md}"
    );
    assert!(md.contains("| Top-1 of the scored images only |"), "{md}");
    // compare of the run with itself: its accuracy is exactly top1.
    let j = t.path().join("gate.json");
    let o = run(&[
        "compare",
        out.to_str().unwrap(),
        out.to_str().unwrap(),
        "--json",
        j.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let g = read_json(&j);
    assert_eq!(g["accuracy"]["baseline"], m["top1"]);
    assert_eq!(g["accuracy"]["candidate"], m["top1"]);
    // merge of two shards: the same figures.
    let mut shards = vec![];
    for k in 0..2 {
        let d = t.path().join(format!("s{k}"));
        let mut a = score_args(
            data.to_str().unwrap(),
            model.to_str().unwrap(),
            d.to_str().unwrap(),
            lm.to_str().unwrap(),
        );
        let shard = format!("{k}/2");
        a.extend(["--top-k", "3", "--shard", &shard, "--no-report"]);
        let o = run(&a);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        shards.push(d);
    }
    let merged = t.path().join("merged");
    let o = run(&[
        "merge",
        shards[0].to_str().unwrap(),
        shards[1].to_str().unwrap(),
        "--out",
        merged.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let mm = read_json(&merged.join("metrics.json"));
    for key in ["top1", "topk", "top1_scored", "topk_scored", "counts"] {
        assert_eq!(mm[key], m[key], "{key}");
    }
}

#[test]
fn label_maps_are_parsed_as_csv_and_never_quietly_ignored() {
    let t = tempdir();
    let model = micro_model(t.path());
    let data = small_dataset(t.path(), 2, 2);
    let (d, m) = (data.to_str().unwrap(), model.to_str().unwrap());
    let lm = t.path().join("map.csv");
    let score_with = |body: &[u8], out: &str| {
        std::fs::write(&lm, body).unwrap();
        run_owned(&with(
            &score_args(
                d,
                m,
                &t.path().join(out).display().to_string(),
                lm.to_str().unwrap(),
            ),
            &["--no-report"],
        ))
    };
    // A BOM, a header, quotes and spaces: every row applied.
    let o = score_with(
        b"\xEF\xBB\xBFfolder,label\n\"0\",\"LABEL_0\"\n 1 , LABEL_1\n",
        "ok",
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let mj = read_json(&t.path().join("ok/metrics.json"));
    let by = &mj["run"]["label_mapping"]["matched_by"];
    assert_eq!(by["0"], "label-map", "{by}");
    assert_eq!(by["1"], "label-map", "{by}");
    // The unmapped class's warning is in metrics.json too, not only on stderr.
    let warnings = mj["run"]["warnings"].to_string();
    assert!(warnings.contains("match no model label"), "{warnings}");
    // A row naming no class folder (a typo): refused before anything is written.
    let o = score_with(b"0,LABEL_0\n11,LABEL_1\n", "typo");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("'11'"), "{}", stderr(&o));
    assert!(!t.path().join("typo").exists());
    // A folder mapped twice.
    let o = score_with(b"0,LABEL_0\n1,LABEL_1\n0,LABEL_2\n", "twice");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(":3: folder '0' is mapped twice (first on line 1)"),
        "{}",
        stderr(&o)
    );
    assert!(!t.path().join("twice").exists());
}

#[test]
fn duplicate_id2label_names_need_a_label_map_naming_the_id() {
    let t = tempdir();
    let model = micro_model(t.path());
    // Give labels 1 and 7 the same name "1", so the folder "1" matches two ids.
    let cfg_path = model.join("config.json");
    let mut cfg = read_json(&cfg_path);
    for id in 0..10 {
        cfg["id2label"][id.to_string()] = serde_json::json!(id.to_string());
    }
    cfg["id2label"]["7"] = serde_json::json!("1");
    cfg["label2id"] = serde_json::json!({});
    std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    let data = small_dataset(t.path(), 2, 2);
    let out = t.path().join("run");
    let base = [
        "score",
        data.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--quiet",
        "--no-report",
    ];
    let o = run(&base);
    util::assert_no_panic(&o);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("ids 1, 7"), "{}", stderr(&o));
    assert!(!out.exists());
    // A label map naming the id disambiguates.
    let lm = t.path().join("map.csv");
    std::fs::write(&lm, "1,1\n").unwrap();
    let mut args = base.to_vec();
    args.extend(["--label-map", lm.to_str().unwrap()]);
    let o = run(&args);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let mj = read_json(&out.join("metrics.json"));
    assert_eq!(mj["run"]["label_mapping"]["class_to_id"]["1"], 1);
}

#[test]
fn sample_is_stratified_and_the_same_whatever_the_threads() {
    let t = tempdir();
    let model = micro_model(t.path());
    let data = util::fixtures().join("digits/test");
    let lm = digit_label_map(t.path(), &data);
    let (d, m, l) = (
        data.to_str().unwrap(),
        model.to_str().unwrap(),
        lm.to_str().unwrap(),
    );
    let mut runs = vec![];
    for (name, threads, batch) in [("a", "1", "3"), ("b", "2", "16")] {
        let out = t.path().join(name);
        let o = run_owned(&with(
            &score_args(d, m, out.to_str().unwrap(), l),
            &[
                "--sample",
                "30",
                "--seed",
                "5",
                "--threads",
                threads,
                "--batch-size",
                batch,
                "--no-report",
            ],
        ));
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        runs.push(vit_batch::record::read_parquet(&out.join("predictions.parquet")).unwrap());
        let mj = read_json(&out.join("metrics.json"));
        assert_eq!(
            mj["run"]["subset"], "stratified sample of 30 of 360 images (seed 5)",
            "{}",
            mj["run"]
        );
    }
    assert_eq!(runs[0], runs[1]);
    let classes: std::collections::BTreeSet<&str> =
        runs[0].iter().map(|r| r.label.as_str()).collect();
    assert_eq!(runs[0].len(), 30);
    assert_eq!(classes.len(), 10, "every class: {classes:?}");
    // --limit takes the first sorted paths and says what it missed.
    let out = t.path().join("limit");
    let o = run_owned(&with(
        &score_args(d, m, out.to_str().unwrap(), l),
        &["--limit", "30", "--no-report"],
    ));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let warnings = read_json(&out.join("metrics.json"))["run"]["warnings"].to_string();
    assert!(warnings.contains("1 of the 10 classes"), "{warnings}");
    // The two cannot be combined.
    let o = run_owned(&with(
        &score_args(d, m, t.path().join("both").to_str().unwrap(), l),
        &["--limit", "3", "--sample", "3"],
    ));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}
