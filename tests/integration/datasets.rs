//! Datasets kept as users keep them: a CSV manifest over the fixture images, WebDataset
//! shards and a Hugging Face `datasets` Parquet give the same predictions and metrics as
//! the folder run, carry their other columns into `predictions.parquet`, and slice the
//! metrics; `compare` gates per slice; `--shard`, `--resume` and `merge` work on every
//! source; bad rows become error rows and bad files exit 2.

use std::path::Path;

use vit_batch::record::{read_parquet, Extra, Row};

use crate::util::{self, read_json, run, stderr, tempdir};

fn model() -> std::path::PathBuf {
    util::fixtures().join("models/vit-digits")
}

fn score(data: &Path, out: &Path, extra: &[&str]) {
    util::score_ok(data, &model(), out, extra);
}

/// The report's mistake cards show the images, read again from the source (a file, a
/// tar member, a Parquet row), none "no thumbnail".
fn assert_thumbnails(run: &Path) {
    let html = std::fs::read_to_string(run.join("report.html")).unwrap();
    let cards = html.matches("<div class=\"mistake\">").count();
    assert!(cards >= 10, "{cards} mistake cards");
    assert!(
        !html.contains("<div class=\"thumb-missing\">"),
        "{}",
        &html[html.find("thumb-missing\">").unwrap_or(0)..][..300.min(html.len())]
    );
    assert!(html.matches("data:image/jpeg;base64,").count() >= 10);
}

/// The figures two runs of the same images must share.
const FIGURES: &[&str] = &[
    "counts",
    "top1",
    "topk",
    "per_class",
    "confusion",
    "calibration",
];

/// Both runs' `metrics.json`, asserting the `keys` equal.
fn same_metrics(a: &Path, b: &Path, keys: &[&str]) -> (serde_json::Value, serde_json::Value) {
    let (ma, mb) = (
        read_json(&a.join("metrics.json")),
        read_json(&b.join("metrics.json")),
    );
    for key in keys {
        assert_eq!(
            ma[key],
            mb[key],
            "{key}: {} vs {}",
            a.display(),
            b.display()
        );
    }
    (ma, mb)
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
    let (ma, mb) = same_metrics(&folder, &listed, FIGURES);
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
    assert!(html.contains("id=\"slices\"") && html.contains("id=\"slices-chart\""));
    util::assert_png_not_blank(&listed.join("charts/slices.png"), 300, 100);
    assert_thumbnails(&listed);
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
            "--slice-by: 'camera' is not a carried column of the dataset (its carried columns: site)"
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
    score(&util::fixtures().join("digits/wds"), &shards, &[]);
    assert_thumbnails(&shards);
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
    let (_, mb) = same_metrics(&folder, &shards, FIGURES);
    assert_eq!(mb["run"]["dataset_format"], "wds");

    // A truncated shard is exit 2 before anything is scored, naming the shard.
    let cut = t.path().join("cut");
    std::fs::create_dir_all(&cut).unwrap();
    let whole = std::fs::read(util::fixtures().join("digits/wds/digits-test-000000.tar")).unwrap();
    std::fs::write(cut.join("a.tar"), &whole[..100_000]).unwrap();
    let out = t.path().join("cut-out");
    let o = run(&[
        "score",
        cut.to_str().unwrap(),
        "--model",
        model().to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    util::assert_no_panic(&o);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("a.tar: truncated or corrupt after"),
        "{}",
        stderr(&o)
    );
    assert!(!out.exists());
}

/// Write a Parquet file as Hugging Face `datasets` does (`image` struct<bytes, path>,
/// `label` int64 with ClassLabel names in the `huggingface` schema metadata, then
/// `site`), with pyarrow from the project's venv. Each row: (image bytes or None,
/// image path or None, label id, site).
/// One row for [`write_hf`]: image bytes (None: null), the image's own path, label, site.
type HfRow<'a> = (Option<Vec<u8>>, Option<String>, i64, &'a str);

fn write_hf(path: &Path, rows: &[HfRow], row_group_size: usize, with_label: bool) {
    let spec: Vec<serde_json::Value> = rows
        .iter()
        .map(|(b, p, l, s)| {
            serde_json::json!({
                "bytes": b.as_ref().map(hex::encode),
                "path": p,
                "label": l,
                "site": s,
            })
        })
        .collect();
    let spec_file = path.with_extension("json");
    std::fs::write(&spec_file, serde_json::to_vec(&spec).unwrap()).unwrap();
    let script = r#"
import json, sys
import pyarrow as pa, pyarrow.parquet as pq
out, spec, rg, with_label = sys.argv[1], json.load(open(sys.argv[2])), int(sys.argv[3]), sys.argv[4] == "1"
image = pa.array(
    [None if r["bytes"] is None and r["path"] is None else
     {"bytes": None if r["bytes"] is None else bytes.fromhex(r["bytes"]), "path": r["path"]}
     for r in spec],
    type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
cols = {"image": image}
features = {"image": {"_type": "Image"}}
if with_label:
    cols["label"] = pa.array([r["label"] for r in spec], type=pa.int64())
    features["label"] = {"names": [str(i) for i in range(10)], "_type": "ClassLabel"}
cols["site"] = pa.array([r["site"] for r in spec], type=pa.string())
features["site"] = {"dtype": "string", "_type": "Value"}
t = pa.table(cols).replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})
pq.write_table(t, out, row_group_size=rg)
"#;
    let o = std::process::Command::new(util::venv_python())
        .args(["-c", script])
        .arg(path)
        .arg(&spec_file)
        .arg(row_group_size.to_string())
        .arg(if with_label { "1" } else { "0" })
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::remove_file(spec_file).unwrap();
}

/// The fixture test images, sorted by `class/name`: (relative path, bytes, class id).
fn test_images() -> Vec<(String, Vec<u8>, i64)> {
    let test = util::fixtures().join("digits/test");
    let mut v = vec![];
    for c in 0..10 {
        for e in std::fs::read_dir(test.join(c.to_string())).unwrap() {
            let e = e.unwrap();
            let rel = format!("{c}/{}", e.file_name().to_string_lossy());
            v.push((rel, std::fs::read(e.path()).unwrap(), c as i64));
        }
    }
    v.sort();
    v
}

#[test]
fn hugging_face_parquet_scores_like_the_folder() {
    let t = tempdir();
    let folder = t.path().join("folder");
    let hf = t.path().join("hf");
    score(
        &util::fixtures().join("digits/test"),
        &folder,
        &["--no-report"],
    );
    // The fixture written by `datasets` (Dataset.to_parquet), found by what it is.
    score(
        &util::fixtures().join("digits/hf"),
        &hf,
        &["--slice-by", "site"],
    );
    let a = read_parquet(&folder.join("predictions.parquet")).unwrap();
    let b = read_parquet(&hf.join("predictions.parquet")).unwrap();
    assert_eq!(a.len(), b.len());
    // The rows are named by the images' own paths (`datasets` kept the file names,
    // sorted): the same rows as the folder run, plus the carried `site`.
    assert_eq!(without_extra(&b), a, "same rows, same order");
    assert!(b
        .iter()
        .all(|r| matches!(&r.extra[..], [(n, Extra::Str(_))] if n == "site")));
    let (_, mb) = same_metrics(&folder, &hf, FIGURES);
    assert_eq!(mb["run"]["dataset_format"], "hf-parquet");
    let sites: Vec<&str> = mb["slices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["value"].as_str().unwrap())
        .collect();
    assert_eq!(sites, ["A", "B", "C"]);
    assert!(std::fs::read_to_string(hf.join("report.md"))
        .unwrap()
        .contains("| site | A |"));
    assert_thumbnails(&hf);
}

#[test]
fn hugging_face_parquet_bad_rows_become_error_rows_and_bad_files_exit_2() {
    let t = tempdir();
    let imgs = test_images();
    let data = t.path().join("data");
    std::fs::create_dir_all(data.join("sub")).unwrap();
    // 30 good rows in row groups of 7, then a null image, undecodable bytes, an
    // unlabeled row (-1) and a label outside the ClassLabel names; a second file in a
    // subfolder without image paths.
    let mut rows: Vec<HfRow> = imgs
        .iter()
        .step_by(12)
        .map(|(p, b, c)| (Some(b.clone()), Some(p.clone()), *c, "A"))
        .collect();
    assert_eq!(rows.len(), 30);
    rows.push((None, Some("x/null.png".into()), 3, "B"));
    rows.push((
        Some(b"not an image".to_vec()),
        Some("x/junk.png".into()),
        4,
        "B",
    ));
    rows.push((Some(imgs[0].1.clone()), None, -1, "B"));
    rows.push((Some(imgs[1].1.clone()), None, 12, "B"));
    write_hf(&data.join("train-00000.parquet"), &rows, 7, true);
    let more: Vec<_> = imgs[100..110]
        .iter()
        .map(|(_, b, c)| (Some(b.clone()), None, *c, "C"))
        .collect();
    write_hf(&data.join("sub/train-00001.parquet"), &more, 4, true);
    let out = t.path().join("out");
    score(&data, &out, &["--no-report", "--batch-size", "5"]);
    let r = read_parquet(&out.join("predictions.parquet")).unwrap();
    assert_eq!(r.len(), 44, "every row accounted for");
    assert_eq!(r[0].path, "sub/train-00001.parquet#row=0");
    assert_eq!(r[10].path, "train-00000.parquet#row=00");
    let row = |p: &str| r.iter().find(|x| x.path == p).unwrap();
    let err = |p: &str| {
        let x = row(p);
        assert_eq!(x.status, vit_batch::record::Status::Error, "{p}: {x:?}");
        x.error.clone().unwrap()
    };
    assert!(err("train-00000.parquet#row=30").contains("image bytes are null"));
    assert!(!err("train-00000.parquet#row=31").is_empty());
    assert!(err("train-00000.parquet#row=32").contains("no label (-1)"));
    assert!(err("train-00000.parquet#row=33").contains("not a class of the file's ClassLabel"));
    // The 40 good rows (across 5 + 3 row groups) score as the same images do alone.
    let ok: Vec<&Row> = r
        .iter()
        .filter(|x| x.status == vit_batch::record::Status::Ok)
        .collect();
    assert_eq!(ok.len(), 40);
    let folder = t.path().join("folder");
    score(
        &util::fixtures().join("digits/test"),
        &folder,
        &["--no-report"],
    );
    let f = read_parquet(&folder.join("predictions.parquet")).unwrap();
    let by_path: std::collections::BTreeMap<&str, &Row> =
        f.iter().map(|x| (x.path.as_str(), x)).collect();
    for (i, (p, _, _)) in imgs.iter().step_by(12).enumerate() {
        let w = row(&format!("train-00000.parquet#row={i:02}"));
        let x = by_path[p.as_str()];
        assert_eq!(
            (w.pred_id, w.score, &w.label),
            (x.pred_id, x.score, &x.label),
            "{p}"
        );
    }
    // A glob names files too: the same rows of the top-level file.
    let g = t.path().join("glob");
    score(
        Path::new(&format!("{}/train-*.parquet", data.display())),
        &g,
        &["--no-report", "--format", "hf-parquet"],
    );
    assert_eq!(
        read_parquet(&g.join("predictions.parquet")).unwrap().len(),
        34
    );

    // A file without a label column, or without an image column: exit 2, naming the
    // columns it has, nothing written.
    let nolabel = t.path().join("nolabel.parquet");
    write_hf(&nolabel, &rows[..3], 7, false);
    let o = run(&[
        "score",
        nolabel.to_str().unwrap(),
        "--model",
        model().to_str().unwrap(),
        "--out",
        t.path().join("x").to_str().unwrap(),
    ]);
    util::assert_no_panic(&o);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("no label column 'label' (columns: image (")
            && stderr(&o).contains("site ("),
        "{}",
        stderr(&o)
    );
    let o = run(&[
        "score",
        util::fixtures().join("digits/hf").to_str().unwrap(),
        "--model",
        model().to_str().unwrap(),
        "--out",
        t.path().join("y").to_str().unwrap(),
        "--label-column",
        "site",
        "--format",
        "hf-parquet",
    ]);
    // --label-column is honoured: the sites are taken for classes (and match none).
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("dataset classes (3): A, B, C"),
        "{}",
        stderr(&o)
    );
    let manifest_as_hf = util::fixtures().join("digits/test-manifest.csv");
    let o = run(&[
        "score",
        manifest_as_hf.to_str().unwrap(),
        "--model",
        model().to_str().unwrap(),
        "--out",
        t.path().join("z").to_str().unwrap(),
        "--format",
        "hf-parquet",
    ]);
    util::assert_no_panic(&o);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("not a readable Parquet file"),
        "{}",
        stderr(&o)
    );
    assert!(!t.path().join("z").exists());
}

/// 1,440 images (the fixture test set four times, renamed), with a site per image.
fn big_images() -> Vec<(String, Vec<u8>, i64, &'static str)> {
    let mut v = vec![];
    for copy in 0..4 {
        for (i, (rel, b, c)) in test_images().into_iter().enumerate() {
            let (class, name) = rel.split_once('/').unwrap();
            v.push((
                format!("{class}/{copy}_{name}"),
                b,
                c,
                ["A", "B", "C"][(i + copy) % 3],
            ));
        }
    }
    v.sort();
    v
}

/// The same 1,440 images as each source: a folder, a CSV manifest over it, one
/// WebDataset shard (KEY.png, KEY.cls, KEY.json with the site) and a Hugging Face
/// Parquet file (row groups of 100). Returns (name, dataset argument, extra flags).
fn every_source(dir: &Path) -> Vec<(&'static str, std::path::PathBuf, Vec<String>)> {
    let imgs = big_images();
    let folder = dir.join("data/folder");
    let mut csv = String::from("path,label,site\n");
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let tar_path = dir.join("data/shard-000000.tar");
    let mut tar = tar::Builder::new(std::fs::File::create(&tar_path).unwrap());
    let mut add = |name: String, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, name, data).unwrap();
    };
    for (rel, b, c, site) in &imgs {
        util::write(&folder.join(rel), b);
        csv.push_str(&format!("{rel},{c},{site}\n"));
        let key = rel.trim_end_matches(".png").replace('/', "_");
        add(format!("{key}.png"), b);
        add(format!("{key}.cls"), c.to_string().as_bytes());
        add(
            format!("{key}.json"),
            format!(r#"{{"site": "{site}"}}"#).as_bytes(),
        );
    }
    tar.finish().unwrap();
    drop(tar);
    let manifest = dir.join("data/list.csv");
    std::fs::write(&manifest, csv).unwrap();
    let hf = dir.join("data/data.parquet");
    let rows: Vec<_> = imgs
        .iter()
        .map(|(rel, b, c, site)| (Some(b.clone()), Some(rel.clone()), *c, *site))
        .collect();
    write_hf(&hf, &rows, 100, true);
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    vec![
        ("folder", folder.clone(), vec![]),
        (
            "manifest",
            manifest,
            s(&["--root", folder.to_str().unwrap(), "--slice-by", "site"]),
        ),
        ("wds", tar_path, s(&["--slice-by", "site"])),
        ("hf-parquet", hf, s(&["--slice-by", "site"])),
    ]
}

#[test]
fn every_source_shards_resumes_and_merges_like_one_run() {
    let t = tempdir();
    let sources = every_source(t.path());
    for (name, data, extra) in sources {
        let dir = t.path().join(format!("runs-{name}"));
        let args = |out: &Path, more: &[&str]| {
            let mut a: Vec<String> = vec![
                "score".into(),
                data.display().to_string(),
                "--model".into(),
                model().display().to_string(),
                "--out".into(),
                out.display().to_string(),
                "--quiet".into(),
                "--no-report".into(),
                "--threads".into(),
                "1".into(),
                "--batch-size".into(),
                "4".into(),
                "--checkpoint-rows".into(),
                "100".into(),
            ];
            a.extend(extra.iter().cloned());
            a.extend(more.iter().map(|s| s.to_string()));
            a
        };
        let ok = |a: Vec<String>| {
            let o = util::bin().args(&a).output().unwrap();
            util::assert_no_panic(&o);
            assert!(o.status.success(), "{name}: {:?}: {}", a, stderr(&o));
        };
        let single = dir.join("single");
        ok(args(&single, &[]));
        let a = read_parquet(&single.join("predictions.parquet")).unwrap();
        assert_eq!(a.len(), 1440, "{name}");
        let ma = read_json(&single.join("metrics.json"));
        assert_eq!(ma["run"]["dataset_format"], name);
        let same = |other: &Path, what: &str| {
            let b = read_parquet(&other.join("predictions.parquet")).unwrap();
            assert!(a == b, "{name} {what}: rows differ from the single run");
            same_metrics(&single, other, &[FIGURES, &["slices"]].concat());
        };

        // Three shards, merged in any order.
        let shards: Vec<_> = (0..3).map(|k| dir.join(format!("shard-{k}"))).collect();
        for (k, s) in shards.iter().enumerate() {
            ok(args(s, &["--shard", &format!("{k}/3")]));
        }
        let merged = dir.join("merged");
        let o = util::bin()
            .arg("merge")
            .args([&shards[2], &shards[0], &shards[1]])
            .arg("--out")
            .arg(&merged)
            .output()
            .unwrap();
        assert!(o.status.success(), "{name} merge: {}", stderr(&o));
        same(&merged, "merged");

        // Killed after a few checkpoint parts, then resumed.
        let killed = dir.join("killed");
        let mut child = util::bin().args(args(&killed, &[])).spawn().unwrap();
        let start = std::time::Instant::now();
        while std::fs::read_dir(killed.join("parts"))
            .map(|d| d.count())
            .unwrap_or(0)
            < 2
            && start.elapsed() < std::time::Duration::from_secs(60)
        {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(
            !killed.join("predictions.parquet").exists(),
            "{name}: the run finished before it could be killed"
        );
        ok(args(&killed, &["--resume"]));
        same(&killed, "resumed");
    }
}
