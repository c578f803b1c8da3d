//! Seeded random initialisation of a preset architecture, for `export --preset`.
//!
//! Why it exists: a random-weight model is what tests, benchmarks and a first
//! `vit-batch score` smoke run need, without any download. The init follows Hugging
//! Face's `ViTPreTrainedModel._init_weights`: Linear / Conv weights, [CLS] and
//! position embeddings from a normal with std 0.02 (truncated at 2 std, resampled),
//! biases 0, LayerNorm weight 1 and bias 0. The tensors carry HF ViT names, so they
//! go through the same reader as a checkpoint. Determinism: the same (preset, seed,
//! labels) gives the same weights bit for bit with the pinned `rand` 0.9 (`StdRng`
//! is ChaCha12 there; another major version of `rand` may change the stream).

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};

use super::weights::Tensor;
use crate::vit::VitConfig;

/// HF's `initializer_range`.
pub const INIT_STD: f32 = 0.02;

/// Random HF-ViT-named tensors for `cfg` (which must validate), seeded.
pub fn random_init(cfg: &VitConfig, seed: u64) -> BTreeMap<String, Tensor<'static>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let normal = Normal::new(0.0f32, INIT_STD).expect("valid std");
    let mut trunc = |shape: Vec<usize>| -> Tensor<'static> {
        let n: usize = shape.iter().product();
        let mut bytes = Vec::with_capacity(n * 4);
        for _ in 0..n {
            let v = loop {
                let v = normal.sample(&mut rng);
                if v.abs() <= 2.0 * INIT_STD {
                    break v;
                }
            };
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        Tensor {
            shape,
            data: bytes.into(),
        }
    };
    let fill = |shape: Vec<usize>, v: f32| -> Tensor<'static> {
        let n: usize = shape.iter().product();
        Tensor::from_f32(shape, &vec![v; n])
    };
    let d = cfg.hidden_size;
    let i = cfg.intermediate_size;
    let p = cfg.patch_size;
    let c = cfg.num_labels();
    let mut m = BTreeMap::new();
    let e = "vit.embeddings";
    m.insert(format!("{e}.cls_token"), trunc(vec![1, 1, d]));
    m.insert(
        format!("{e}.position_embeddings"),
        trunc(vec![1, cfg.num_patches() + 1, d]),
    );
    m.insert(
        format!("{e}.patch_embeddings.projection.weight"),
        trunc(vec![d, cfg.num_channels, p, p]),
    );
    m.insert(
        format!("{e}.patch_embeddings.projection.bias"),
        fill(vec![d], 0.0),
    );
    for li in 0..cfg.num_hidden_layers {
        let l = format!("vit.encoder.layer.{li}");
        for ln in ["layernorm_before", "layernorm_after"] {
            m.insert(format!("{l}.{ln}.weight"), fill(vec![d], 1.0));
            m.insert(format!("{l}.{ln}.bias"), fill(vec![d], 0.0));
        }
        for (name, out, inp) in [
            ("attention.attention.query", d, d),
            ("attention.attention.key", d, d),
            ("attention.attention.value", d, d),
            ("attention.output.dense", d, d),
            ("intermediate.dense", i, d),
            ("output.dense", d, i),
        ] {
            m.insert(format!("{l}.{name}.weight"), trunc(vec![out, inp]));
            let is_qkv = name.starts_with("attention.attention");
            if !is_qkv || cfg.qkv_bias {
                m.insert(format!("{l}.{name}.bias"), fill(vec![out], 0.0));
            }
        }
    }
    m.insert("vit.layernorm.weight".into(), fill(vec![d], 1.0));
    m.insert("vit.layernorm.bias".into(), fill(vec![d], 0.0));
    m.insert("classifier.weight".into(), trunc(vec![c, d]));
    m.insert("classifier.bias".into(), fill(vec![c], 0.0));
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_and_deterministic() {
        let cfg = VitConfig::preset("vit-micro", 3).unwrap();
        let a = random_init(&cfg, 7);
        let b = random_init(&cfg, 7);
        let c = random_init(&cfg, 8);
        let key = "vit.encoder.layer.1.attention.attention.key.weight";
        assert_eq!(a[key].data, b[key].data);
        assert_ne!(a[key].data, c[key].data);
        let v = a[key].to_f32();
        let mean = v.iter().sum::<f32>() / v.len() as f32;
        let std = (v.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / v.len() as f32).sqrt();
        assert!(
            mean.abs() < 0.002 && (0.015..0.02).contains(&std),
            "mean {mean} std {std}"
        );
        assert!(v.iter().all(|x| x.abs() <= 0.04));
    }
}
