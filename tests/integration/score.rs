//! `vit-batch score` end to end: the real binary, a real exported ViT, real images.
//! Expected values are computed here independently: a fresh ONNX Runtime session run
//! by the test on the same tensors, softmax/top-k/accuracy by hand.

use std::path::{Path, PathBuf};

use vit_batch::record::{read_parquet, Row, Status};

use crate::util::{self, assert_no_panic, run, stderr, tempdir};

/// Export a seeded random-init vit-micro with 10 labels into `dir/model`.
pub fn micro_model(dir: &Path) -> PathBuf {
    let m = dir.join("model");
    let o = run(&[
        "export",
        "--preset",
        "vit-micro",
        "--random-init",
        "--seed",
        "7",
        "--num-labels",
        "10",
        "--out",
        m.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "export failed: {}", stderr(&o));
    m
}

/// `folder,label` map from the digit folders of `data` to the preset's LABEL_i names
/// (a label map may only name folders the dataset has).
pub fn digit_label_map(dir: &Path, data: &Path) -> PathBuf {
    let p = dir.join("labels.csv");
    let body: String = (0..10)
        .filter(|i| data.join(i.to_string()).is_dir())
        .map(|i| format!("{i},LABEL_{i}\n"))
        .collect();
    assert!(!body.is_empty(), "no digit folder in {}", data.display());
    std::fs::write(&p, format!("folder,label\n{body}")).unwrap();
    p
}

/// A small dataset: `per_class` digits of classes 0..n from the fixture test split,
/// plus a broken PNG, a text file and a class folder the model does not know.
pub fn small_dataset(dir: &Path, classes: usize, per_class: usize) -> PathBuf {
    let root = dir.join("data");
    for c in 0..classes {
        let src = util::fixtures().join(format!("digits/test/{c}"));
        let mut files: Vec<_> = std::fs::read_dir(&src)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for f in files.iter().take(per_class) {
            util::write(
                &root.join(format!("{c}/{}", f.file_name().unwrap().to_str().unwrap())),
                &std::fs::read(f).unwrap(),
            );
        }
    }
    util::write(&root.join("1/broken.png"), b"\x89PNG\r\n\x1a\nnot really");
    util::write(&root.join("2/readme.txt"), b"not an image");
    let f = util::fixtures().join("digits/test/3");
    let one = std::fs::read_dir(&f)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    util::write(&root.join("zebra/z.png"), &std::fs::read(one).unwrap());
    root
}

/// `score DATA --model MODEL --out OUT --label-map LM --quiet`.
pub fn score_args<'a>(data: &'a str, model: &'a str, out: &'a str, lm: &'a str) -> Vec<&'a str> {
    vec![
        "score",
        data,
        "--model",
        model,
        "--out",
        out,
        "--label-map",
        lm,
        "--quiet",
    ]
}

fn softmax(l: &[f32]) -> Vec<f64> {
    let m = l.iter().cloned().fold(f32::MIN, f32::max) as f64;
    let e: Vec<f64> = l.iter().map(|&x| (x as f64 - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|v| v / s).collect()
}

/// Logits for `files` from a fresh ORT session created by the test itself.
fn independent_logits(model: &Path, files: &[PathBuf]) -> Vec<Vec<f32>> {
    let (mut s, pre) = util::ort_session(model);
    files
        .iter()
        .map(|f| {
            let x = pre.load(f).unwrap();
            let t = ort::value::TensorRef::from_array_view((
                [1usize, 3, pre.height as usize, pre.width as usize],
                x.as_slice(),
            ))
            .unwrap();
            let out = s.run(ort::inputs!["pixel_values" => t]).unwrap();
            out["logits"]
                .try_extract_tensor::<f32>()
                .unwrap()
                .1
                .to_vec()
        })
        .collect()
}

#[test]
fn rows_and_metrics_match_an_independent_computation() {
    let t = tempdir();
    let model = micro_model(t.path());
    let data = small_dataset(t.path(), 4, 6);
    let lm = digit_label_map(t.path(), &data);
    let out = t.path().join("run");
    let o = run(&score_args(
        data.to_str().unwrap(),
        model.to_str().unwrap(),
        out.to_str().unwrap(),
        lm.to_str().unwrap(),
    ));
    assert_no_panic(&o);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let rows = read_parquet(&out.join("predictions.parquet")).unwrap();
    // 4 classes x 6 digits + broken.png + zebra/z.png; readme.txt skipped.
    assert_eq!(rows.len(), 26);
    let mut sorted: Vec<&str> = rows.iter().map(|r| r.path.as_str()).collect();
    sorted.sort();
    assert_eq!(
        sorted,
        rows.iter().map(|r| r.path.as_str()).collect::<Vec<_>>(),
        "rows sorted by path"
    );
    let broken = rows.iter().find(|r| r.path == "1/broken.png").unwrap();
    assert_eq!(broken.status, Status::Error);
    assert!(
        broken.error.as_deref().unwrap().contains("PNG"),
        "{:?}",
        broken.error
    );
    let zebra = rows.iter().find(|r| r.path == "zebra/z.png").unwrap();
    assert_eq!(
        (zebra.status, zebra.label_id, zebra.correct),
        (Status::Ok, None, None)
    );

    let ok: Vec<&Row> = rows.iter().filter(|r| r.status == Status::Ok).collect();
    let files: Vec<PathBuf> = ok.iter().map(|r| data.join(&r.path)).collect();
    let logits = independent_logits(&model, &files);
    let mut correct = 0;
    let mut evaluated = 0;
    for (r, l) in ok.iter().zip(&logits) {
        let p = softmax(l);
        let mut idx: Vec<usize> = (0..p.len()).collect();
        idx.sort_by(|&a, &b| p[b].partial_cmp(&p[a]).unwrap().then(a.cmp(&b)));
        assert_eq!(r.pred_id, Some(idx[0] as u32), "{}", r.path);
        assert_eq!(
            r.pred.as_deref(),
            Some(format!("LABEL_{}", idx[0]).as_str())
        );
        assert!((r.score.unwrap() as f64 - p[idx[0]]).abs() < 1e-5);
        let topk: Vec<u32> = idx[..5].iter().map(|&i| i as u32).collect();
        assert_eq!(r.topk_ids.as_ref().unwrap(), &topk);
        if let Some(t) = r.label_id {
            let expect_t: u32 = r.label.parse().unwrap();
            assert_eq!(t, expect_t);
            evaluated += 1;
            correct += (t == idx[0] as u32) as usize;
            assert_eq!(r.correct, Some(t == idx[0] as u32));
        }
    }
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(m["counts"]["images"], 26);
    assert_eq!(m["counts"]["errors"], 1);
    assert_eq!(m["counts"]["skipped"], 1);
    assert_eq!(m["counts"]["unmapped"], 1);
    assert_eq!(m["counts"]["evaluated"], evaluated);
    assert!((m["top1"].as_f64().unwrap() - correct as f64 / evaluated as f64).abs() < 1e-12);
    assert_eq!(
        m["run"]["onnxruntime_version"],
        vit_batch::runtime::PINNED_ORT_VERSION
    );
    assert_eq!(m["run"]["model_sha256"].as_str().unwrap().len(), 64);
    assert!(m["throughput"]["images_per_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn rows_do_not_depend_on_threads_or_batch_size() {
    let t = tempdir();
    let model = micro_model(t.path());
    let data = small_dataset(t.path(), 10, 4);
    let lm = digit_label_map(t.path(), &data);
    let mut runs = vec![];
    for (threads, batch) in [("1", "1"), ("2", "7"), ("2", "64")] {
        let out = t.path().join(format!("run-{threads}-{batch}"));
        let mut args = score_args(
            data.to_str().unwrap(),
            model.to_str().unwrap(),
            out.to_str().unwrap(),
            lm.to_str().unwrap(),
        );
        args.extend(["--threads", threads, "--batch-size", batch]);
        let o = run(&args);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        runs.push((
            read_parquet(&out.join("predictions.parquet")).unwrap(),
            std::fs::read(out.join("metrics.json")).unwrap(),
        ));
    }
    let (base, base_m) = &runs[0];
    let base_m: serde_json::Value = serde_json::from_slice(base_m).unwrap();
    for (rows, m) in &runs[1..] {
        assert_eq!(rows.len(), base.len());
        for (a, b) in rows.iter().zip(base) {
            assert_eq!(
                (&a.path, a.pred_id, &a.topk_ids, a.status, &a.error),
                (&b.path, b.pred_id, &b.topk_ids, b.status, &b.error)
            );
            if let (Some(x), Some(y)) = (a.score, b.score) {
                assert!((x - y).abs() < 1e-5);
            }
        }
        let m: serde_json::Value = serde_json::from_slice(m).unwrap();
        for key in ["counts", "top1", "topk", "per_class", "confusion"] {
            assert_eq!(m[key], base_m[key], "{key} differs");
        }
    }
}

#[test]
fn bad_model_and_flags_fail_fast_with_exit_2() {
    let t = tempdir();
    let data = small_dataset(t.path(), 2, 2);
    let d = data.to_str().unwrap();
    let fake = t.path().join("fake.onnx");
    std::fs::write(&fake, b"this is not an onnx file").unwrap();
    let out = t.path().join("o");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "score".into(),
                d.into(),
                "--model".into(),
                fake.display().to_string(),
                "--out".into(),
                out.display().to_string(),
            ],
            "not a loadable ONNX model",
        ),
        (
            vec![
                "score".into(),
                "/no/such/dir".into(),
                "--model".into(),
                micro_model(t.path()).display().to_string(),
                "--out".into(),
                out.display().to_string(),
            ],
            "cannot open dataset folder",
        ),
        (
            vec![
                "score".into(),
                d.into(),
                "--model".into(),
                t.path().join("model").display().to_string(),
                "--out".into(),
                out.display().to_string(),
            ],
            "no dataset class matches a model label",
        ),
        (
            vec![
                "score".into(),
                d.into(),
                "--model".into(),
                "/nope".into(),
                "--out".into(),
                out.display().to_string(),
            ],
            "not found",
        ),
        (
            vec![
                "score".into(),
                d.into(),
                "--model".into(),
                t.path().join("model").display().to_string(),
                "--out".into(),
                out.display().to_string(),
                "--batch-size".into(),
                "0".into(),
            ],
            "at least 1",
        ),
        (
            vec![
                "score".into(),
                d.into(),
                "--model".into(),
                t.path().join("model").display().to_string(),
                "--out".into(),
                out.display().to_string(),
                "--shard".into(),
                "4/4".into(),
            ],
            "0 <= K < N",
        ),
        (
            vec!["score".into(), d.into(), "--bogus".into()],
            "unexpected argument",
        ),
    ];
    for (args, needle) in cases {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = run(&a);
        assert_no_panic(&o);
        assert_eq!(o.status.code(), Some(2), "{a:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains(needle),
            "{a:?}: expected '{needle}' in: {}",
            stderr(&o)
        );
    }
    // The "no class matches" message shows both lists.
    let o = run(&[
        "score",
        d,
        "--model",
        t.path().join("model").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let e = stderr(&o);
    assert!(
        e.contains("dataset classes (4): 0, 1, 2, zebra") && e.contains("LABEL_0"),
        "{e}"
    );
}

#[test]
fn an_existing_run_is_never_overwritten_silently() {
    let t = tempdir();
    let model = micro_model(t.path());
    let data = small_dataset(t.path(), 2, 2);
    let lm = digit_label_map(t.path(), &data);
    let out = t.path().join("run");
    let args = score_args(
        data.to_str().unwrap(),
        model.to_str().unwrap(),
        out.to_str().unwrap(),
        lm.to_str().unwrap(),
    );
    assert_eq!(run(&args).status.code(), Some(0));
    let before = std::fs::read(out.join("predictions.parquet")).unwrap();
    let o = run(&args);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--overwrite"), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(out.join("predictions.parquet")).unwrap(),
        before
    );
    let mut ow = args.clone();
    ow.push("--overwrite");
    assert_eq!(run(&ow).status.code(), Some(0));
}

#[test]
fn cuda_on_a_cpu_library_is_a_clear_error_not_a_silent_cpu_run() {
    let t = tempdir();
    let model = micro_model(t.path());
    let data = small_dataset(t.path(), 2, 2);
    let lm = digit_label_map(t.path(), &data);
    let out = t.path().join("run");
    let mut args = score_args(
        data.to_str().unwrap(),
        model.to_str().unwrap(),
        out.to_str().unwrap(),
        lm.to_str().unwrap(),
    );
    args.extend(["--provider", "cuda"]);
    let o = run(&args);
    assert_no_panic(&o);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("no CUDA execution provider") && e.contains("scripts/setup --gpu"),
        "{e}"
    );
    assert!(
        !out.exists(),
        "nothing is written when the provider is refused"
    );
}

#[test]
fn progress_is_plain_lines_off_a_terminal_and_nothing_with_quiet() {
    let t = tempdir();
    let model = micro_model(t.path());
    let data = small_dataset(t.path(), 3, 4);
    let lm = digit_label_map(t.path(), &data);
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    let loud: Vec<&str> = score_args(
        data.to_str().unwrap(),
        model.to_str().unwrap(),
        a.to_str().unwrap(),
        lm.to_str().unwrap(),
    )
    .into_iter()
    .filter(|&s| s != "--quiet")
    .collect();
    // stderr is a pipe here, not a terminal: periodic plain lines, no bar.
    let o = run(&loud);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let e = stderr(&o);
    let progress: Vec<&str> = e
        .lines()
        .filter(|l| l.contains("images (") && l.contains("img/s, ETA"))
        .collect();
    assert!(!progress.is_empty(), "no progress line: {e}");
    assert!(
        !e.contains('\r') && !e.contains('\u{1b}'),
        "terminal control codes off a terminal: {e:?}"
    );
    let o = run(&score_args(
        data.to_str().unwrap(),
        model.to_str().unwrap(),
        b.to_str().unwrap(),
        lm.to_str().unwrap(),
    ));
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(stderr(&o), "", "--quiet prints nothing");
}
