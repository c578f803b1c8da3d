//! The ViT model configuration, shared by `export`, `train` and `score`.
//!
//! [`VitConfig`] mirrors Hugging Face's `config.json` for `ViTForImageClassification`
//! (and the DeiT / timm variants we read), so a folder written by transformers, optimum
//! or `vit-batch train` round-trips through serde unchanged. Unknown keys are kept in
//! `extra` so re-writing a user's config loses nothing.
//!
//! [`init_weights`] is the one seeded initialisation of a ViT's weights: `export
//! --preset --random-init` and `train` both start from it, so a preset and seed give
//! the same initial tensors in both.

use std::collections::BTreeMap;
use std::path::Path;

use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

fn default_model_type() -> String {
    "vit".into()
}
fn default_channels() -> usize {
    3
}
fn default_act() -> String {
    "gelu".into()
}
fn default_eps() -> f64 {
    1e-12
}
fn default_true() -> bool {
    true
}

/// `config.json` of a Hugging Face ViT checkpoint (field names are HF's).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VitConfig {
    /// "vit" (or "deit").
    #[serde(default = "default_model_type")]
    pub model_type: String,
    /// Model classes that can load this config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architectures: Option<Vec<String>>,
    /// Input height and width, in pixels.
    pub image_size: usize,
    /// Side of a square patch, in pixels.
    pub patch_size: usize,
    /// Input channels (3).
    #[serde(default = "default_channels")]
    pub num_channels: usize,
    /// Width D of the token embeddings.
    pub hidden_size: usize,
    /// Encoder blocks L.
    pub num_hidden_layers: usize,
    /// Attention heads per block.
    pub num_attention_heads: usize,
    /// Width of the MLP's hidden layer (4D for ViT).
    pub intermediate_size: usize,
    /// "gelu" (exact, erf) or a tanh approximation.
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// LayerNorm epsilon (1e-12 for HF ViT, 1e-6 for timm).
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Whether the Q, K, V projections have biases.
    #[serde(default = "default_true")]
    pub qkv_bias: bool,
    /// Class index (as a decimal string, HF's convention) to class name.
    #[serde(default)]
    pub id2label: BTreeMap<String, String>,
    /// Class name to id, as transformers writes it.
    #[serde(default)]
    pub label2id: BTreeMap<String, serde_json::Value>,
    /// Every other key of the file, preserved verbatim.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// Named architecture sizes for `export --preset` and `train --preset`.
pub const PRESETS: &[(&str, usize, usize, usize, usize, usize)] = &[
    // name, image, patch, hidden, layers, heads
    ("vit-micro", 32, 4, 64, 4, 4),
    ("vit-digits", 32, 4, 64, 4, 4),
    ("vit-tiny-patch16-224", 224, 16, 192, 12, 3),
    ("vit-small-patch16-224", 224, 16, 384, 12, 6),
    ("vit-base-patch16-224", 224, 16, 768, 12, 12),
];

impl VitConfig {
    /// A preset architecture with `num_labels` classes named `LABEL_0..` (HF default).
    pub fn preset(name: &str, num_labels: usize) -> Result<Self> {
        let &(_, image, patch, hidden, layers, heads) = PRESETS
            .iter()
            .find(|p| p.0 == name)
            .ok_or_else(|| Error::Config {
                what: format!(
                    "unknown preset '{name}'; known presets: {}",
                    PRESETS.iter().map(|p| p.0).collect::<Vec<_>>().join(", ")
                ),
            })?;
        let labels: Vec<String> = (0..num_labels).map(|i| format!("LABEL_{i}")).collect();
        let mut cfg = VitConfig {
            model_type: "vit".into(),
            architectures: Some(vec!["ViTForImageClassification".into()]),
            image_size: image,
            patch_size: patch,
            num_channels: 3,
            hidden_size: hidden,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            intermediate_size: 4 * hidden,
            hidden_act: "gelu".into(),
            layer_norm_eps: 1e-12,
            qkv_bias: true,
            id2label: BTreeMap::new(),
            label2id: BTreeMap::new(),
            extra: serde_json::Map::new(),
        };
        cfg.set_labels(&labels);
        cfg.validate()?;
        Ok(cfg)
    }

    /// Replace the label maps with `labels` (index = class id).
    pub fn set_labels(&mut self, labels: &[String]) {
        self.id2label = labels
            .iter()
            .enumerate()
            .map(|(i, l)| (i.to_string(), l.clone()))
            .collect();
        self.label2id = labels
            .iter()
            .enumerate()
            .map(|(i, l)| (l.clone(), serde_json::Value::from(i)))
            .collect();
    }

    /// Class names ordered by id. Fails when ids are not exactly `0..C`.
    pub fn labels(&self) -> Result<Vec<String>> {
        labels_from_id2label(&self.id2label)
    }

    /// Number of classes (entries of `id2label`).
    pub fn num_labels(&self) -> usize {
        self.id2label.len()
    }

    /// Patches per image side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Number of patches (sequence length without the [CLS] token).
    pub fn num_patches(&self) -> usize {
        self.grid() * self.grid()
    }

    /// Width of one attention head (D / heads).
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Check the numbers fit together; every message names the fields involved.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::Config { what });
        if self.patch_size == 0
            || self.image_size == 0
            || !self.image_size.is_multiple_of(self.patch_size)
        {
            return bad(format!(
                "image_size {} is not a positive multiple of patch_size {}",
                self.image_size, self.patch_size
            ));
        }
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return bad(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.num_channels == 0 || self.intermediate_size == 0 || self.num_hidden_layers == 0 {
            return bad("num_channels, intermediate_size and num_hidden_layers must be > 0".into());
        }
        if !matches!(
            self.hidden_act.as_str(),
            "gelu" | "gelu_new" | "gelu_pytorch_tanh"
        ) {
            return bad(format!(
                "unsupported hidden_act '{}' (supported: gelu, gelu_new, gelu_pytorch_tanh)",
                self.hidden_act
            ));
        }
        self.labels()?;
        Ok(())
    }

    /// Read a `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::Config {
            what: format!("{}: {e}", path.display()),
        })
    }

    /// This config as `config.json` text.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("config serializes")
    }
}

/// HF's `initializer_range`: the std of the initial weights.
pub const INIT_STD: f32 = 0.02;

/// One initial tensor: its shape and its values, row-major.
pub type InitTensor = (Vec<usize>, Vec<f32>);

/// Seeded initial weights for `cfg` (which must validate), named as in an HF ViT
/// checkpoint, following Hugging Face's `ViTPreTrainedModel._init_weights`: Linear and
/// Conv weights, [CLS] and position embeddings from a normal with std [`INIT_STD`],
/// truncated at 2 std (resampled); biases 0; LayerNorm weight 1, bias 0. Query / key /
/// value biases exist when `cfg.qkv_bias` (every preset).
///
/// The draws are made in a fixed order (cls token, position embeddings, patch
/// projection, then per layer query, key, value, attention output, intermediate,
/// output, then the classifier), so the same (cfg, seed) gives the same values bit for
/// bit with the pinned `rand` 0.9 (`StdRng` is ChaCha12 there; another major version of
/// `rand` may change the stream).
pub fn init_weights(cfg: &VitConfig, seed: u64) -> BTreeMap<String, InitTensor> {
    let mut rng = StdRng::seed_from_u64(seed);
    let normal = Normal::new(0.0f32, INIT_STD).expect("valid std");
    let mut trunc = |shape: Vec<usize>| -> InitTensor {
        let n: usize = shape.iter().product();
        let values = (0..n)
            .map(|_| loop {
                let v = normal.sample(&mut rng);
                if v.abs() <= 2.0 * INIT_STD {
                    break v;
                }
            })
            .collect();
        (shape, values)
    };
    let fill = |shape: Vec<usize>, v: f32| -> InitTensor {
        let n: usize = shape.iter().product();
        (shape, vec![v; n])
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

/// Class names ordered by id from an `id2label` map with keys "0".."C-1".
pub fn labels_from_id2label(map: &BTreeMap<String, String>) -> Result<Vec<String>> {
    crate::preprocess::model_config::labels_from_id2label(map)
        .map_err(|what| Error::Config { what })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_validate_and_round_trip() {
        for p in PRESETS {
            let cfg = VitConfig::preset(p.0, 10).unwrap();
            let back: VitConfig = serde_json::from_str(&cfg.to_json()).unwrap();
            assert_eq!(cfg, back);
            assert_eq!(back.labels().unwrap()[3], "LABEL_3");
        }
        assert!(VitConfig::preset("nope", 2).is_err());
    }

    #[test]
    fn init_is_seeded_truncated_and_follows_qkv_bias() {
        let mut cfg = VitConfig::preset("vit-micro", 3).unwrap();
        let a = init_weights(&cfg, 7);
        let key = "vit.encoder.layer.1.attention.attention.key.weight";
        assert_eq!(a[key], init_weights(&cfg, 7)[key]);
        assert_ne!(a[key], init_weights(&cfg, 8)[key]);
        let v = &a[key].1;
        let mean = v.iter().sum::<f32>() / v.len() as f32;
        let std = (v.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / v.len() as f32).sqrt();
        assert!(
            mean.abs() < 0.002 && (0.015..0.02).contains(&std),
            "mean {mean} std {std}"
        );
        assert!(v.iter().all(|x| x.abs() <= 2.0 * INIT_STD));
        assert_eq!(a["vit.layernorm.weight"].1, vec![1.0; 64]);
        assert!(a["classifier.bias"].1.iter().all(|&x| x == 0.0));
        assert!(a.contains_key("vit.encoder.layer.0.attention.attention.query.bias"));
        cfg.qkv_bias = false;
        let b = init_weights(&cfg, 7);
        assert!(!b.contains_key("vit.encoder.layer.0.attention.attention.query.bias"));
        assert_eq!(b[key], a[key], "biases draw nothing");
    }

    /// The stream `train` and `export --preset` start from (the committed digits
    /// checkpoint was trained from it): a change here changes every seeded model.
    #[test]
    fn init_values_are_pinned() {
        let cfg = VitConfig::preset("vit-digits", 10).unwrap();
        let w = init_weights(&cfg, 0);
        let first = |k: &str| w[k].1[..3].to_vec();
        assert_eq!(
            first("vit.embeddings.cls_token"),
            [0.01425626, 0.017166628, 0.0032668852]
        );
        assert_eq!(
            first("classifier.weight"),
            [-0.015235911, 0.0041871485, 0.023521887]
        );
        let bits: u64 = w
            .values()
            .flat_map(|t| &t.1)
            .map(|v| v.to_bits() as u64)
            .sum();
        assert_eq!(bits, 426576147948308, "the sum of every value's bits");
    }

    #[test]
    fn hf_config_keeps_unknown_keys() {
        let text = r#"{"image_size":224,"patch_size":16,"hidden_size":192,
            "num_hidden_layers":12,"num_attention_heads":3,"intermediate_size":768,
            "id2label":{"0":"cat","1":"dog"},"torch_dtype":"float32"}"#;
        let cfg: VitConfig = serde_json::from_str(text).unwrap();
        assert_eq!(cfg.labels().unwrap(), vec!["cat", "dog"]);
        assert_eq!(cfg.layer_norm_eps, 1e-12);
        assert!(cfg.to_json().contains("torch_dtype"));
        let mut bad = cfg.clone();
        bad.hidden_act = "relu".into();
        assert!(bad.validate().unwrap_err().to_string().contains("relu"));
    }
}
