//! Seeded random initialisation of a preset architecture, for `export --preset`.
//!
//! Why it exists: a random-weight model is what tests, benchmarks and a first
//! `vit-batch score` smoke run need, without any download. The values are
//! [`crate::vit::init_weights`]'s, the one Hugging Face ViT initialisation that `train`
//! starts from too; here they become the exporter's [`Tensor`]s (HF ViT names), so they
//! go through the same reader as a checkpoint.

use std::collections::BTreeMap;

use super::weights::Tensor;
pub use crate::vit::INIT_STD;
use crate::vit::{init_weights, VitConfig};

/// Random HF-ViT-named tensors for `cfg` (which must validate), seeded
/// ([`init_weights`]).
pub fn random_init(cfg: &VitConfig, seed: u64) -> BTreeMap<String, Tensor<'static>> {
    init_weights(cfg, seed)
        .into_iter()
        .map(|(name, (shape, values))| (name, Tensor::from_f32(shape, &values)))
        .collect()
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
