//! `vit-batch train`: a short real training run on the digits fixture, exported with
//! `vit-batch export`'s library and scored by the real ONNX Runtime engine; candle vs
//! ORT logit parity on the trained weights; and the bad inputs `train` must refuse.
//!
//! The short run is shared (trained once per process) to keep CI time down; the two
//! tests that need ONNX Runtime in-process run in a child process (see `in_own_process`).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ndarray::Array4;
use ort::session::Session;
use ort::value::TensorRef;

use vit_batch::export::{export, ExportOptions, ExportSource};
use vit_batch::preprocess::{PreprocessConfig, Preprocessor};
use vit_batch::progress::Silent;
use vit_batch::score::ScoreOptions;
use vit_batch::train::{TrainOptions, TrainSummary};

/// `train` with no progress output.
fn train(o: &TrainOptions) -> vit_batch::Result<TrainSummary> {
    vit_batch::train::train(o, &mut Silent)
}

use crate::util;

struct Trained {
    _dir: tempfile::TempDir,
    checkpoint: PathBuf,
    model: PathBuf,
    summary: TrainSummary,
}

/// Options of the short run: 50 images per class (40 train + 10 val), 8 epochs of
/// batch 32 (104 steps). A ViT from scratch sits on a plateau near ln 10 for its first
/// ~50-80 steps (uniform attention sees only the amount of ink), so 2-3 epochs of a
/// smaller subset do not leave it; this is the shortest run that reliably learns.
fn short_options(out: &Path) -> TrainOptions {
    let mut o = TrainOptions::new(
        util::fixtures().join("digits/train"),
        "vit-digits",
        out.to_path_buf(),
    );
    o.epochs = 8;
    o.batch_size = 32;
    o.lr = 2e-3;
    o.seed = 1;
    o.threads = Some(1);
    o.limit_per_class = Some(50);
    o.val_split = 0.2;
    o
}

/// The short run, trained and exported once.
fn trained() -> &'static Trained {
    static T: OnceLock<Trained> = OnceLock::new();
    T.get_or_init(|| {
        let dir = util::tempdir();
        let checkpoint = dir.path().join("ck");
        let summary = train(&short_options(&checkpoint)).expect("short training run");
        let model = dir.path().join("onnx");
        export(&ExportOptions::new(
            ExportSource::Checkpoint(checkpoint.clone()),
            &model,
        ))
        .expect("export the trained checkpoint");
        Trained {
            _dir: dir,
            checkpoint,
            model,
            summary,
        }
    })
}

/// ONNX Runtime allows one environment per process, and other modules of this test
/// binary (the export tests) create their own. The tests that run ORT in-process
/// therefore re-run themselves alone in a child process of this binary, where
/// `vit_batch::runtime::init` is the first and only initialisation.
/// Returns true in the child (do the work), false in the parent (child passed).
fn in_own_process(test: &str) -> bool {
    const CHILD: &str = "VIT_BATCH_TRAIN_TEST_CHILD";
    if std::env::var_os(CHILD).is_some() {
        return true;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--test-threads=1", "--nocapture"])
        .env(CHILD, "1")
        .env("ORT_DYLIB_PATH", util::ort_lib())
        .output()
        .expect("spawn the test binary");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "child run of {test} failed:\n{text}");
    assert!(
        text.contains("1 passed"),
        "child did not run {test}:\n{text}"
    );
    false
}

#[test]
fn train_short_run_learns_and_exported_model_beats_chance() {
    if !in_own_process("train::train_short_run_learns_and_exported_model_beats_chance") {
        return;
    }
    let t = trained();
    let s = &t.summary;
    assert_eq!(
        s.classes,
        (0..10).map(|i| i.to_string()).collect::<Vec<_>>()
    );
    assert_eq!(s.num_train + s.num_val, 500);
    assert_eq!(s.num_val, 100, "stratified 20% of 50 per class");
    assert_eq!(s.epochs.len(), 8);
    let first = s.epochs.first().unwrap().train_loss;
    let last = s.epochs.last().unwrap().train_loss;
    assert!(last < first - 0.1, "loss did not fall: {first} -> {last}");
    assert!(s.epochs.iter().all(|e| e.val_accuracy.is_some()));

    // The checkpoint folder is an HF one.
    for f in [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ] {
        assert!(t.checkpoint.join(f).is_file(), "{f} missing");
    }
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(t.checkpoint.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["id2label"]["7"], "7");
    assert_eq!(cfg["label2id"]["3"], 3);
    assert_eq!(cfg["architectures"][0], "ViTForImageClassification");
    assert_eq!(cfg["layer_norm_eps"].as_f64(), Some(1e-12));
    let pp = PreprocessConfig::from_file(&t.checkpoint.join("preprocessor_config.json")).unwrap();
    assert_eq!(pp, PreprocessConfig::vit_default(32));

    // Scored by the real engine on the held-out test split (360 images, chance 10%;
    // 15% is 3 standard deviations above it). This run gets about 23%.
    let out = util::tempdir();
    let mut o = ScoreOptions::new(
        util::fixtures().join("digits/test"),
        t.model.clone(),
        out.path().join("run"),
    );
    o.ort_lib = Some(util::ort_lib());
    o.threads = Some(2);
    let r = vit_batch::score::score(&o, &mut Silent).expect("score the exported model");
    let m = &r.metrics.metrics;
    assert_eq!(m.counts.images, 360);
    assert!(
        m.top1 > 0.15,
        "exported short-run model is not better than chance: top-1 {}",
        m.top1
    );
}

#[test]
fn train_candle_forward_matches_ort_on_trained_weights() {
    if !in_own_process("train::train_candle_forward_matches_ort_on_trained_weights") {
        return;
    }
    let t = trained();
    let (cfg, model) = vit_batch::train::load_checkpoint(&t.checkpoint).unwrap();
    let pre = Preprocessor::new(PreprocessConfig::vit_default(cfg.image_size as u32)).unwrap();
    let test = util::fixtures().join("digits/test");
    let files: Vec<PathBuf> = ["0/0078.png", "1/0021.png", "7/0081.png", "8/0028.png"]
        .iter()
        .map(|f| test.join(f))
        .collect();
    let mut pixels = Vec::new();
    for f in &files {
        pixels.extend(
            pre.load(f)
                .unwrap_or_else(|e| panic!("{}: {e}", f.display())),
        );
    }
    let n = files.len();
    let side = cfg.image_size;
    let x = candle_core::Tensor::from_vec(
        pixels.clone(),
        (n, 3, side, side),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let ours = model.forward(&x).unwrap().to_vec2::<f32>().unwrap();

    vit_batch::runtime::init(Some(&util::ort_lib()), false).unwrap();
    let mut sess = Session::builder(vit_batch::runtime::environment().unwrap())
        .unwrap()
        .with_intra_threads(1)
        .unwrap()
        .commit_from_file(t.model.join("model.onnx"))
        .unwrap();
    let arr = Array4::from_shape_vec((n, 3, side, side), pixels).unwrap();
    let outs = sess
        .run(ort::inputs!["pixel_values" => TensorRef::from_array_view(&arr).unwrap()])
        .unwrap();
    let theirs = outs["logits"].try_extract_array::<f32>().unwrap();
    assert_eq!(theirs.shape(), &[n, 10]);
    let mut max = 0f32;
    for (i, row) in ours.iter().enumerate() {
        for (j, v) in row.iter().enumerate() {
            max = max.max((v - theirs[[i, j]]).abs());
        }
    }
    assert!(max <= 1e-4, "candle vs ORT logits differ by {max}");
    // Not a degenerate comparison: the logits do vary.
    let spread = ours[0].iter().cloned().fold(f32::MIN, f32::max)
        - ours[0].iter().cloned().fold(f32::MAX, f32::min);
    assert!(spread > 1e-3, "logits are (nearly) constant: {:?}", ours[0]);
}

#[test]
fn train_is_deterministic_for_a_seed() {
    let dir = util::tempdir();
    let run = |name: &str, seed: u64| {
        let mut o = short_options(&dir.path().join(name));
        o.epochs = 2;
        o.batch_size = 8;
        o.limit_per_class = Some(6);
        o.seed = seed;
        o.threads = Some(1);
        train(&o).unwrap();
        std::fs::read(dir.path().join(name).join("model.safetensors")).unwrap()
    };
    let a = run("a", 5);
    assert_eq!(a, run("b", 5), "same seed, different weights");
    assert_ne!(a, run("c", 6), "different seeds, same weights");
}

fn digit_png() -> Vec<u8> {
    std::fs::read(
        util::fixtures()
            .join("digits/train/0")
            .join(first_file("0")),
    )
    .unwrap()
}

fn first_file(class: &str) -> String {
    let mut v: Vec<String> = std::fs::read_dir(util::fixtures().join("digits/train").join(class))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v[0].clone()
}

fn quick(data: &Path, out: &Path) -> TrainOptions {
    let mut o = TrainOptions::new(data, "vit-digits", out);
    o.epochs = 1;
    o.batch_size = 4;
    o.val_split = 0.0;
    o
}

#[test]
fn train_refuses_bad_datasets_with_clear_errors() {
    let t = util::tempdir();
    let png = digit_png();
    let out = t.path().join("out");

    // One class only.
    let one = t.path().join("one");
    util::write(&one.join("a/x.png"), &png);
    util::write(&one.join("a/y.png"), &png);
    let e = train(&quick(&one, &out)).unwrap_err();
    assert!(matches!(e, vit_batch::Error::Train { .. }), "{e:?}");
    assert!(e.to_string().contains("at least 2"), "{e}");

    // An empty class folder.
    let empty = t.path().join("empty");
    util::write(&empty.join("a/x.png"), &png);
    util::write(&empty.join("b/y.png"), &png);
    std::fs::create_dir_all(empty.join("c")).unwrap();
    let e = train(&quick(&empty, &out)).unwrap_err();
    assert!(
        e.to_string().contains("no image") && e.to_string().contains('c'),
        "{e}"
    );

    // No images at all.
    let none = t.path().join("none");
    util::write(&none.join("a/readme.txt"), b"hello");
    let e = train(&quick(&none, &out)).unwrap_err();
    assert!(e.to_string().contains("no image"), "{e}");

    // Missing folder, unknown preset, bad numbers.
    assert!(train(&quick(&t.path().join("missing"), &out)).is_err());
    let mut o = quick(&empty, &out);
    o.preset = "vit-nope".into();
    assert!(train(&o)
        .unwrap_err()
        .to_string()
        .contains("unknown preset"));
    let mut o = quick(&one, &out);
    o.val_split = 1.5;
    assert!(
        matches!(
            train(&o).unwrap_err(),
            vit_batch::Error::InvalidOption {
                option: "val_split",
                ..
            }
        ),
        "bad val_split is named"
    );

    // Nothing was written for any of these.
    assert!(!out.exists());
}

#[test]
fn train_skips_and_reports_unreadable_images() {
    let t = util::tempdir();
    let png = digit_png();
    let data = t.path().join("data");
    for c in ["a", "b"] {
        for i in 0..3 {
            util::write(&data.join(format!("{c}/{i}.png")), &png);
        }
    }
    util::write(&data.join("b/broken.png"), b"not a png");
    let out = t.path().join("out");
    let s = train(&quick(&data, &out)).unwrap();
    assert_eq!(s.num_train, 6);
    assert_eq!(s.unreadable.len(), 1);
    assert_eq!(s.unreadable[0].rel, "b/broken.png");
    let log = std::fs::read_to_string(out.join("training_log.json")).unwrap();
    assert!(log.contains("b/broken.png"), "{log}");

    // A class whose every image is unreadable is refused.
    let bad = t.path().join("bad");
    util::write(&bad.join("a/0.png"), &png);
    util::write(&bad.join("b/0.png"), b"junk");
    let e = train(&quick(&bad, &t.path().join("out2"))).unwrap_err();
    assert!(e.to_string().contains("no readable image"), "{e}");
}

#[test]
fn train_cli_usage_and_errors_exit_2() {
    let t = util::tempdir();
    let o = util::run(&[
        "train",
        "/nonexistent/data",
        "--preset",
        "vit-digits",
        "--out",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let out = t.path().join("out");
    let o = util::run(&[
        "train",
        "/nonexistent/data",
        "--preset",
        "vit-digits",
        "--out",
        out.to_str().unwrap(),
    ]);
    util::assert_no_panic(&o);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        util::stderr(&o).contains("/nonexistent/data"),
        "{}",
        util::stderr(&o)
    );
}
