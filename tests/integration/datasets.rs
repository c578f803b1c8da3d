//! Datasets kept as users keep them: a CSV manifest over the fixture images gives the
//! same predictions and metrics as the folder run, carries its other columns into
//! `predictions.parquet`, and slices the metrics; `compare` gates per slice.

use std::path::Path;

use vit_batch::record::{read_parquet, Extra, Row};

use crate::util::{self, read_json, run, stderr, tempdir};

fn model() -> std::path::PathBuf {
    util::fixtures().join("models/vit-digits")
}

fn score(data: &Path, out: &Path, extra: &[&str]) {
    util::score_ok(data, &model(), out, extra);
}

fn without_extra(rows: &[Row]) -> Vec<Row> {
    rows.iter()
        .cloned()
        .map(|mut r| {
            r.extra.clear();
            r
        })
        .collect()
}

#[test]
fn a_csv_manifest_scores_like_the_folder_and_slices_the_metrics() {
    let t = tempdir();
    let folder = t.path().join("folder");
    let listed = t.path().join("manifest");
    let test = util::fixtures().join("digits/test");
    score(&test, &folder, &["--no-report"]);
    let manifest = util::fixtures().join("digits/test-manifest.csv");
    score(
        &manifest,
        &listed,
        &["--root", test.to_str().unwrap(), "--slice-by", "site"],
    );
    let a = read_parquet(&folder.join("predictions.parquet")).unwrap();
    let b = read_parquet(&listed.join("predictions.parquet")).unwrap();
    assert_eq!(a.len(), 360);
    assert_eq!(without_extra(&b), a, "same rows, same order");
    assert!(b
        .iter()
        .all(|r| matches!(&r.extra[..], [(n, Extra::Str(s))] if n == "site" && s.len() == 1)));
    let (ma, mb) = (
        read_json(&folder.join("metrics.json")),
        read_json(&listed.join("metrics.json")),
    );
    for key in [
        "counts",
        "top1",
        "topk",
        "per_class",
        "confusion",
        "calibration",
    ] {
        assert_eq!(ma[key], mb[key], "{key}");
    }
    // One slice per site; together they are the whole run.
    let slices = mb["slices"].as_array().unwrap();
    let sites: Vec<&str> = slices
        .iter()
        .map(|s| s["value"].as_str().unwrap())
        .collect();
    assert_eq!(sites, ["A", "B", "C"]);
    let images: u64 = slices.iter().map(|s| s["images"].as_u64().unwrap()).sum();
    assert_eq!(images, 360);
    let right: f64 = slices
        .iter()
        .map(|s| s["top1"].as_f64().unwrap() * s["labeled"].as_f64().unwrap())
        .sum();
    assert!((right / 360.0 - ma["top1"].as_f64().unwrap()).abs() < 1e-9);
    assert_eq!(mb["run"]["dataset_format"], "manifest");
    let md = std::fs::read_to_string(listed.join("report.md")).unwrap();
    assert!(
        md.contains("**Slices**") && md.contains("| site | A |"),
        "{md}"
    );
    let html = std::fs::read_to_string(listed.join("report.html")).unwrap();
    assert!(html.contains("id=\"slices\""));
    // A slice column that the manifest lacks is refused before anything is written.
    let bad = t.path().join("bad");
    let o = run(&[
        "score",
        manifest.to_str().unwrap(),
        "--model",
        model().to_str().unwrap(),
        "--out",
        bad.to_str().unwrap(),
        "--root",
        test.to_str().unwrap(),
        "--slice-by",
        "camera",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(
            "--slice-by: 'camera' is not a column of the manifest (its other columns: site)"
        ),
        "{}",
        stderr(&o)
    );
    assert!(!bad.exists());
}

#[test]
fn compare_fails_on_a_damaged_site_while_the_overall_drop_is_allowed() {
    let t = tempdir();
    let test = util::fixtures().join("digits/test");
    // Site D: every 15th image (24 of 360, above min_class_support); the rest site A.
    let mut paths: Vec<String> = vec![];
    for c in 0..10 {
        let mut names: Vec<String> = std::fs::read_dir(test.join(c.to_string()))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        paths.extend(names.into_iter().map(|n| format!("{c}/{n}")));
    }
    paths.sort();
    let site = |i: usize| if i.is_multiple_of(15) { "D" } else { "A" };
    let mut body = String::from("path,label,site\n");
    for (i, p) in paths.iter().enumerate() {
        body.push_str(&format!("{p},{},{}\n", &p[..1], site(i)));
    }
    // The candidate's copy of the data: site D's images inverted (a broken sensor).
    let damaged = t.path().join("damaged");
    for (i, p) in paths.iter().enumerate() {
        let src = test.join(p);
        let dst = damaged.join(p);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        if site(i) == "D" {
            let mut img = image::open(&src).unwrap();
            img.invert();
            img.save(&dst).unwrap();
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
    let good_list = t.path().join("good.csv");
    std::fs::write(&good_list, &body).unwrap();
    let bad_list = damaged.join("list.csv");
    std::fs::write(&bad_list, &body).unwrap();
    let (base, cand) = (t.path().join("base"), t.path().join("cand"));
    score(
        &good_list,
        &base,
        &[
            "--root",
            test.to_str().unwrap(),
            "--slice-by",
            "site",
            "--no-report",
        ],
    );
    score(&bad_list, &cand, &["--slice-by", "site", "--no-report"]);
    let j = t.path().join("gate.json");
    let o = run(&[
        "compare",
        base.to_str().unwrap(),
        cand.to_str().unwrap(),
        "--allow-different-data",
        "--max-accuracy-drop",
        "8",
        "--json",
        j.to_str().unwrap(),
    ]);
    util::assert_no_panic(&o);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let r = read_json(&j);
    let gate = |name: &str| {
        r["gates"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["name"] == name)
            .unwrap()
            .clone()
    };
    let drop = r["accuracy"]["drop_pp"].as_f64().unwrap();
    assert!(drop > 0.5 && drop <= 8.0, "overall drop {drop}");
    assert_eq!(gate("accuracy")["verdict"], "pass", "{}", gate("accuracy"));
    let s = gate("slices");
    assert_eq!(s["verdict"], "fail", "{s}");
    assert!(s["message"].as_str().unwrap().contains("site=D"), "{s}");
    let d = r["slices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["value"] == "D")
        .unwrap();
    assert!(d["drop_pp"].as_f64().unwrap() > 50.0, "{d}");
    assert_eq!(d["support"], 24);
    let a = r["slices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["value"] == "A")
        .unwrap();
    assert_eq!(a["regressed"], false, "{a}");
}

#[test]
fn webdataset_shards_score_like_the_folder_without_unpacking() {
    let t = tempdir();
    let folder = t.path().join("folder");
    let shards = t.path().join("wds");
    score(
        &util::fixtures().join("digits/test"),
        &folder,
        &["--no-report"],
    );
    // A folder of shards written by webdataset's ShardWriter (KEY.png + KEY.cls),
    // recognised as such; class ids map through the model's labels.
    score(
        &util::fixtures().join("digits/wds"),
        &shards,
        &["--no-report"],
    );
    let a = read_parquet(&folder.join("predictions.parquet")).unwrap();
    let b = read_parquet(&shards.join("predictions.parquet")).unwrap();
    assert_eq!(a.len(), b.len());
    // Same image (by content) -> same prediction: SHARD#<class>_<stem> is <class>/<stem>.png.
    let by_key: std::collections::BTreeMap<String, &Row> = b
        .iter()
        .map(|r| {
            let key = r.path.split_once('#').unwrap().1;
            (format!("{}.png", key.replacen('_', "/", 1)), r)
        })
        .collect();
    for r in &a {
        let w = by_key[&r.path];
        assert_eq!(
            (&w.label, w.label_id, w.pred_id, &w.topk_ids, w.score),
            (&r.label, r.label_id, r.pred_id, &r.topk_ids, r.score),
            "{} vs {}",
            r.path,
            w.path
        );
    }
    assert!(
        b[0].path.starts_with("digits-test-000000.tar#"),
        "{}",
        b[0].path
    );
    let (ma, mb) = (
        read_json(&folder.join("metrics.json")),
        read_json(&shards.join("metrics.json")),
    );
    for key in ["counts", "top1", "topk", "per_class", "confusion"] {
        assert_eq!(ma[key], mb[key], "{key}");
    }
    assert_eq!(mb["run"]["dataset_format"], "wds");
}
