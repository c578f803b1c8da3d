//! Attention rollout end to end: the trained digits checkpoint exported
//! `--with-attentions`, scored on the held-out digits with the real binary. The
//! `attn_rollout` column is checked against a rollout computed here from a fresh ORT
//! session's attention outputs with full matrix products (no code shared with
//! `vit_batch::attention`), predictions against the plain model, and the report's
//! overlays against the rollout values they draw.

use std::path::Path;

use base64::Engine as _;
use vit_batch::record::{read_parquet, Status};

use crate::util::{self, assert_no_panic, run, stderr, tempdir};

fn export(out: &Path, attentions: bool) {
    let ckpt = util::fixtures().join("models/vit-digits-checkpoint");
    let mut args = vec![
        "export",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    if attentions {
        args.push("--with-attentions");
    }
    let o = run(&args);
    assert!(o.status.success(), "export: {}", stderr(&o));
}

fn score(model: &Path, out: &Path) {
    let data = util::fixtures().join("digits/test");
    let o = run(&[
        "score",
        data.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--batch-size",
        "7",
        "--quiet",
    ]);
    assert_no_panic(&o);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

/// Rollout the long way: per layer the head mean, `0.5 A + 0.5 I` renormalized, full
/// T x T products with later layers on the left; the [CLS] row.
fn reference_rollout(layers: &[Vec<f32>], heads: usize, t: usize) -> Vec<f64> {
    let mut acc: Vec<f64> = (0..t * t)
        .map(|k| if k / t == k % t { 1.0 } else { 0.0 })
        .collect();
    for att in layers {
        let mut a = vec![0f64; t * t];
        for i in 0..t {
            for j in 0..t {
                let m: f64 = (0..heads)
                    .map(|h| att[(h * t + i) * t + j] as f64)
                    .sum::<f64>()
                    / heads as f64;
                a[i * t + j] = 0.5 * m + if i == j { 0.5 } else { 0.0 };
            }
            let s: f64 = a[i * t..(i + 1) * t].iter().sum();
            a[i * t..(i + 1) * t].iter_mut().for_each(|x| *x /= s);
        }
        let mut next = vec![0f64; t * t];
        for i in 0..t {
            for j in 0..t {
                next[i * t + j] = (0..t).map(|k| a[i * t + k] * acc[k * t + j]).sum();
            }
        }
        acc = next;
    }
    acc[..t].to_vec()
}

/// Attention outputs of one image from a fresh ORT session: (layers, heads, tokens).
fn attentions_of(model: &Path, file: &Path) -> (Vec<Vec<f32>>, usize, usize) {
    let (mut s, pre) = util::ort_session(model);
    let x = pre.load(file).unwrap();
    let t = ort::value::TensorRef::from_array_view((
        [1usize, 3, pre.height as usize, pre.width as usize],
        x.as_slice(),
    ))
    .unwrap();
    let out = s.run(ort::inputs!["pixel_values" => t]).unwrap();
    let mut layers = vec![];
    let (mut heads, mut tokens) = (0, 0);
    for i in 0.. {
        let name = format!("attentions.{i}");
        let Some(v) = out.get(name.as_str()) else {
            break;
        };
        let (shape, values) = v.try_extract_tensor::<f32>().unwrap();
        (heads, tokens) = (shape[1] as usize, shape[2] as usize);
        layers.push(values.to_vec());
    }
    (layers, heads, tokens)
}

/// Mean R+G (viridis: dark purple low, yellow high) of the overlay inside grid cell
/// `(gy, gx)`.
fn cell_brightness(img: &image::RgbImage, grid: [usize; 2], gy: usize, gx: usize) -> f64 {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (y0, y1) = (gy * h / grid[0], (gy + 1) * h / grid[0]);
    let (x0, x1) = (gx * w / grid[1], (gx + 1) * w / grid[1]);
    let (mut sum, mut n) = (0.0, 0.0);
    // The inner half of the cell, away from the interpolated edges.
    for y in y0 + (y1 - y0) / 4..y1 - (y1 - y0) / 4 {
        for x in x0 + (x1 - x0) / 4..x1 - (x1 - x0) / 4 {
            let p = img.get_pixel(x as u32, y as u32).0;
            sum += p[0] as f64 + p[1] as f64;
            n += 1.0;
        }
    }
    sum / n
}

#[test]
fn rollout_is_recorded_checked_and_drawn_in_the_report() {
    let t = tempdir();
    let (plain, with) = (t.path().join("plain"), t.path().join("with"));
    export(&plain, false);
    export(&with, true);
    let (run_plain, run_with) = (t.path().join("run-plain"), t.path().join("run-with"));
    score(&plain, &run_plain);
    score(&with, &run_with);

    // Attention outputs do not change the predictions.
    let a = read_parquet(&run_plain.join("predictions.parquet")).unwrap();
    let b = read_parquet(&run_with.join("predictions.parquet")).unwrap();
    assert_eq!(a.len(), 360);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!((&x.path, x.pred_id), (&y.path, y.pred_id));
        assert!((x.score.unwrap() - y.score.unwrap()).abs() < 1e-5);
        assert!(x.attn_rollout.is_none());
    }

    // metrics.json says how to lay the values out: 32x32 input, 4x4 patches.
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run_with.join("metrics.json")).unwrap()).unwrap();
    let att = &m["run"]["attention"];
    assert_eq!(att["grid"], serde_json::json!([8, 8]), "{att}");
    assert_eq!(
        (att["layers"].as_u64(), att["prefix_tokens"].as_u64()),
        (Some(4), Some(1))
    );
    let plain_m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run_plain.join("metrics.json")).unwrap()).unwrap();
    assert!(plain_m["run"].get("attention").is_none());

    // Every ok row carries 64 values; they match the reference rollout.
    let data = util::fixtures().join("digits/test");
    for (i, r) in b.iter().enumerate() {
        assert_eq!(r.status, Status::Ok);
        let v = r.attn_rollout.as_ref().expect("rollout on an ok row");
        assert_eq!(v.len(), 64, "{}", r.path);
        assert!(v.iter().all(|x| x.is_finite() && *x >= 0.0));
        if i % 45 == 0 {
            let (layers, heads, tokens) = attentions_of(&with, &data.join(&r.path));
            assert_eq!((layers.len(), heads, tokens), (4, 4, 65));
            let want = reference_rollout(&layers, heads, tokens);
            for (got, want) in v.iter().zip(&want[1..]) {
                assert!(
                    (*got as f64 - want).abs() < 1e-5,
                    "{}: {got} vs {want}",
                    r.path
                );
            }
        }
    }

    // The report draws one overlay per hardest-mistake card, hottest where the
    // rollout is highest.
    let html = std::fs::read_to_string(run_with.join("report.html")).unwrap();
    let wrong: Vec<_> = b.iter().filter(|r| r.correct == Some(false)).collect();
    assert!(!wrong.is_empty(), "the fixture model makes some mistakes");
    let overlays: Vec<&str> = html
        .split("<img class=\"rollout\"")
        .skip(1)
        .map(|s| {
            let start = s.find("base64,").unwrap() + 7;
            &s[start..start + s[start..].find('"').unwrap()]
        })
        .collect();
    assert_eq!(
        overlays.len(),
        wrong.len().min(vit_batch::report::MAX_MISTAKES)
    );
    assert!(html.contains("id=\"rollout-note\"") && html.contains("8x8 patch grid"));
    let plain_html = std::fs::read_to_string(run_plain.join("report.html")).unwrap();
    assert!(!plain_html.contains("<img class=\"rollout\""));
    assert!(plain_html.contains("--with-attentions"));

    // The first card is the most confident mistake.
    let mut sorted = wrong.clone();
    sorted.sort_by(|x, y| {
        y.score
            .unwrap()
            .total_cmp(&x.score.unwrap())
            .then_with(|| x.path.cmp(&y.path))
    });
    let top = sorted[0];
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(overlays[0])
        .unwrap();
    let img = image::load_from_memory(&bytes).unwrap().to_rgb8();
    let side = vit_batch::report::ROLLOUT_PX;
    assert_eq!((img.width(), img.height()), (side, side));
    let v = top.attn_rollout.as_ref().unwrap();
    let argmax = (0..64).max_by(|&i, &j| v[i].total_cmp(&v[j])).unwrap();
    let argmin = (0..64).min_by(|&i, &j| v[i].total_cmp(&v[j])).unwrap();
    let hot = cell_brightness(&img, [8, 8], argmax / 8, argmax % 8);
    let cold = cell_brightness(&img, [8, 8], argmin / 8, argmin % 8);
    assert!(
        hot > cold + 60.0,
        "overlay of {}: hottest cell {hot:.0} vs coldest {cold:.0}",
        top.path
    );
}
