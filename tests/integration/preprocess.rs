//! Preprocessing fidelity: our tensors against the ones Pillow + transformers'
//! processors made for the same files (`fixtures/preprocess/`, made by
//! `scripts/fixtures/make_preprocess_refs.py`), before normalization, in 8-bit
//! levels. Decoding is exact: JPEGs go through libjpeg-turbo, the library Pillow
//! bundles, and their pixels are Pillow's bit for bit (`jpeg_pixels_are_pillows_exactly`),
//! so PNG and JPEG inputs share one bound; what differences remain come from the resize
//! (fast_image_resize vs Pillow's filters), which is why bicubic has its own.

use std::path::PathBuf;

use vit_batch::preprocess::{PreprocessConfig, Preprocessor};

use crate::util::fixtures;

/// Largest per-element difference for a bilinear config, any input (measured: 1).
const BILINEAR_MAX_LEVELS: f32 = 1.0;
/// Bicubic (measured: 2-3), and bicubic upscaling of a tiny image, which magnifies
/// the filters' rounding (64x48 to 224: measured 8).
const BICUBIC_MAX_LEVELS: f32 = 3.0;
const BICUBIC_UPSCALE_MAX_LEVELS: f32 = 8.0;
/// Mean absolute difference, any input and config (measured: <= 0.19; with zune-jpeg
/// decoding it was up to 0.37).
const MEAN_LEVELS: f32 = 0.2;

struct Stat {
    max: f32,
    mean: f32,
}

fn source_of(meta: &std::collections::HashMap<String, String>, name: &str) -> PathBuf {
    let s = &meta[name];
    let rel = s.split(' ').next().unwrap();
    crate::util::repo().join(rel)
}

/// Rows of one config: (file, rescaled stat, normalized stat, source smaller than
/// the output), and whether the config resizes bicubically.
fn compare_config(config: &str) -> (Vec<(String, Stat, Stat, bool)>, bool) {
    let dir = fixtures().join("preprocess");
    let cfg = PreprocessConfig::from_file(&dir.join(format!("{config}.preprocessor_config.json")))
        .unwrap();
    let bytes = std::fs::read(dir.join(format!("{config}.safetensors"))).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = header.metadata().clone().unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let bicubic = cfg.resample == 3;
    let mut rescale_only = cfg.clone();
    rescale_only.do_normalize = false;
    let pre = Preprocessor::new(cfg).unwrap();
    let pre_r = Preprocessor::new(rescale_only).unwrap();
    let mut names: Vec<String> = st
        .names()
        .iter()
        .filter_map(|n| n.strip_suffix("/rescaled").map(str::to_string))
        .collect();
    names.sort();
    assert!(!names.is_empty());
    let mut out = vec![];
    for name in names {
        let path = source_of(&meta, &name);
        let stat = |p: &Preprocessor, key: &str, unit: f32| {
            let ours = p.load(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
            let t = st.tensor(&format!("{name}/{key}")).unwrap();
            let refv: Vec<f32> = t
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            assert_eq!(ours.len(), refv.len(), "{name}: tensor size");
            let d: Vec<f32> = ours
                .iter()
                .zip(&refv)
                .map(|(a, b)| (a - b).abs() / unit)
                .collect();
            Stat {
                max: d.iter().cloned().fold(0.0, f32::max),
                mean: d.iter().sum::<f32>() / d.len() as f32,
            }
        };
        let r = stat(&pre_r, "rescaled", 1.0 / 255.0);
        let n = stat(&pre, "normalized", 1.0);
        let img = image::open(&path).unwrap();
        let upscaled = img.width().min(img.height()) < pre.width.min(pre.height);
        out.push((name, r, n, upscaled));
    }
    (out, bicubic)
}

fn check(config: &str) {
    let (rows, bicubic) = compare_config(config);
    for (name, r, n, _) in &rows {
        eprintln!(
            "{config} {name}: max {:.3} mean {:.4} levels; normalized max {:.2e}",
            r.max, r.mean, n.max
        );
    }
    for (name, r, _, upscaled) in rows {
        let bound = match (bicubic, upscaled) {
            (false, _) => BILINEAR_MAX_LEVELS,
            (true, false) => BICUBIC_MAX_LEVELS,
            (true, true) => BICUBIC_UPSCALE_MAX_LEVELS,
        };
        assert!(
            r.max <= bound + 1e-3,
            "{config}/{name}: differs by {} levels (> {bound})",
            r.max
        );
        assert!(
            r.mean <= MEAN_LEVELS,
            "{config}/{name}: mean diff {} levels (> {MEAN_LEVELS})",
            r.mean
        );
    }
}

/// Decoded RGB bytes against the sha256 of what `transformers.image_utils.load_image`
/// (Pillow 13, EXIF transpose, `convert("RGB")`) gave for each fixture photo
/// (`fixtures/photos/manifest.json`, made by `scripts/fixtures/make_photos.py`).
#[test]
fn jpeg_pixels_are_pillows_exactly() {
    use sha2::Digest;
    let dir = fixtures().join("photos");
    let m = crate::util::read_json(&dir.join("manifest.json"));
    let files = m["files"].as_object().unwrap();
    let (mut jpegs, mut zune_differs) = (0, 0);
    for (name, f) in files {
        let bytes = std::fs::read(dir.join(name)).unwrap();
        let want = f["load_image_rgb_sha256"].as_str().unwrap();
        let d = vit_batch::preprocess::decode(&bytes, None, u64::MAX).unwrap();
        let wh = [d.rgb.width() as u64, d.rgb.height() as u64];
        assert_eq!(serde_json::json!(wh), f["load_image_size_wh"], "{name}");
        if f["format"] != "JPEG" {
            continue;
        }
        jpegs += 1;
        assert_eq!(d.decoder, vit_batch::preprocess::JPEG_DECODER, "{name}");
        assert!(d.warning().is_none(), "{name}: {:?}", d.warning());
        let got = hex::encode(sha2::Sha256::digest(d.rgb.as_raw()));
        assert_eq!(got, want, "{name}: pixels differ from Pillow's");
        let z = vit_batch::preprocess::decode_with_zune_jpeg(&bytes, None, u64::MAX).unwrap();
        if hex::encode(sha2::Sha256::digest(z.rgb.as_raw())) != want {
            zune_differs += 1;
        }
    }
    assert_eq!(jpegs, 8, "every fixture JPEG case is checked");
    // What the test guards against: the previous decoder is not exact.
    eprintln!("zune-jpeg differs from Pillow on {zune_differs} of {jpegs} JPEGs");
    assert!(zune_differs > 0);
}

#[test]
fn matches_transformers_vit_32_bilinear_every_decode_case() {
    check("vit_32_bilinear_half");
}

#[test]
fn matches_transformers_vit_224_bilinear() {
    check("vit_224_bilinear_half");
}

#[test]
fn matches_transformers_vit_224_bicubic_imagenet() {
    check("vit_224_bicubic_imagenet");
}

#[test]
fn matches_transformers_deit_crop() {
    check("deit_256_crop224_bicubic_imagenet");
}

#[test]
fn matches_transformers_shortest_edge_crop() {
    check("shortest256_crop224_bicubic_imagenet");
}
