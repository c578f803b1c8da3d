//! Reading a model folder (`config.json` + `model.safetensors`) for export.
//!
//! Why it exists: users hand us Hugging Face folders written by transformers (ViT,
//! DeiT) or timm, and our own trainer writes HF-style ones. This module memory-maps
//! `model.safetensors` (weights are never copied, only borrowed into the graph
//! writer), hashes it, decides which naming scheme it follows, and turns the folder's
//! config into a [`VitConfig`].
//!
//! How a folder is recognised — by tensor names, because configs vary (timm's
//! `config.json` has none of HF's fields):
//! - `vit.embeddings.patch_embeddings.projection.weight` → HF `ViTForImageClassification`
//! - `deit.embeddings.patch_embeddings.projection.weight` → HF DeiT (with or without
//!   teacher: `cls_classifier` + `distillation_classifier`, or `classifier`)
//! - `patch_embed.proj.weight` and `blocks.0.attn.qkv.weight` → timm `VisionTransformer`
//!
//! For timm folders the architecture is read from the weights (hidden size, patch size,
//! depth, MLP size, sequence length → image size, classes); the number of heads, which
//! weights cannot tell, from `model_args.num_heads` in `config.json`, else from the
//! architecture name (tiny 3, small 6, base 12, large/huge 16). LayerNorm eps is timm's
//! 1e-6. timm features this graph does not implement (layer scale, pre-norm, average
//! pooling with `fc_norm`, register tokens) are refused rather than dropped.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use sha2::{Digest, Sha256};

use super::weights::{Scheme, Tensor};
use crate::error::{Error, Result};
use crate::vit::VitConfig;

/// An opened checkpoint folder. Tensors borrow from the memory map it owns.
pub(crate) struct Checkpoint {
    pub config: VitConfig,
    pub scheme: Scheme,
    /// Hex SHA-256 of `model.safetensors`.
    pub sha256: String,
    /// The folder's `preprocessor_config.json`, verbatim, when present.
    pub preprocessor: Option<Vec<u8>>,
    /// Image mean/std from a timm `pretrained_cfg`, used when there is no preprocessor file.
    pub norm_stats: Option<(Vec<f64>, Vec<f64>)>,
    mmap: Mmap,
}

fn ck(what: String) -> Error {
    Error::Checkpoint { what }
}

impl Checkpoint {
    pub(crate) fn open(dir: &Path) -> Result<Checkpoint> {
        let st_path = dir.join("model.safetensors");
        let cfg_path = dir.join("config.json");
        if !st_path.is_file() {
            return Err(ck(format!(
                "{} not found (a checkpoint folder needs model.safetensors and config.json)",
                st_path.display()
            )));
        }
        if !cfg_path.is_file() {
            return Err(ck(format!("{} not found", cfg_path.display())));
        }
        let file = std::fs::File::open(&st_path).map_err(|e| Error::io(&st_path, e))?;
        // SAFETY: the file is opened read-only and only read; a concurrent writer
        // truncating it could fault, as with any mmap-based reader (safetensors' own).
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&st_path, e))?;
        let sha256 = hex::encode(Sha256::digest(&mmap[..]));
        let st = SafeTensors::deserialize(&mmap[..]).map_err(|e| {
            ck(format!(
                "{}: not a valid safetensors file: {e}",
                st_path.display()
            ))
        })?;
        let has = |n: &str| st.tensor(n).is_ok();
        let scheme = if has("vit.embeddings.patch_embeddings.projection.weight") {
            Scheme::HfVit
        } else if has("deit.embeddings.patch_embeddings.projection.weight") {
            Scheme::HfDeit
        } else if has("patch_embed.proj.weight") && has("blocks.0.attn.qkv.weight") {
            Scheme::Timm
        } else {
            return Err(ck(format!(
                "{}: not a ViT classifier checkpoint: found none of \
                 'vit.embeddings.patch_embeddings.projection.weight' (HF ViT), \
                 'deit.embeddings.patch_embeddings.projection.weight' (HF DeiT), \
                 'patch_embed.proj.weight' + 'blocks.0.attn.qkv.weight' (timm)",
                st_path.display()
            )));
        };
        let cfg_text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
        let cfg_json: serde_json::Value =
            serde_json::from_str(&cfg_text).map_err(|e| Error::Config {
                what: format!("{}: {e}", cfg_path.display()),
            })?;
        let mut norm_stats = None;
        let config = if scheme == Scheme::Timm && cfg_json.get("hidden_size").is_none() {
            norm_stats = timm_norm_stats(&cfg_json);
            timm_config(&st, &cfg_json)?
        } else {
            serde_json::from_value::<VitConfig>(cfg_json).map_err(|e| Error::Config {
                what: format!("{}: {e}", cfg_path.display()),
            })?
        };
        let mut config = config;
        if config.id2label.is_empty() {
            // No labels in config.json (HF always writes them; a hand-made config may
            // not): take the class count from the head, named as HF would (LABEL_i).
            let head = ["classifier.weight", "cls_classifier.weight"]
                .iter()
                .find_map(|n| st.tensor(n).ok().map(|t| t.shape().to_vec()));
            if let Some(&[c, _]) = head.as_deref() {
                config.set_labels(&(0..c).map(|i| format!("LABEL_{i}")).collect::<Vec<_>>());
            }
        }
        config.validate()?;
        let pp_path = dir.join("preprocessor_config.json");
        let preprocessor = if pp_path.is_file() {
            Some(std::fs::read(&pp_path).map_err(|e| Error::io(&pp_path, e))?)
        } else {
            None
        };
        drop(st);
        Ok(Checkpoint {
            config,
            scheme,
            sha256,
            preprocessor,
            norm_stats,
            mmap,
        })
    }

    /// Every tensor of the file as float32: F32 ones borrowed from the map, F16 and
    /// BF16 ones converted (owned). Other dtypes are refused, naming the tensor.
    pub(crate) fn tensors(&self) -> Result<BTreeMap<String, Tensor<'_>>> {
        let st = SafeTensors::deserialize(&self.mmap[..]).map_err(|e| ck(e.to_string()))?;
        let mut out = BTreeMap::new();
        for (name, view) in st.iter() {
            let data: Cow<'_, [u8]> = match view.dtype() {
                Dtype::F32 => Cow::Borrowed(view.data()),
                Dtype::BF16 => Cow::Owned(
                    view.data()
                        .chunks_exact(2)
                        .flat_map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16).to_le_bytes())
                        .collect(),
                ),
                Dtype::F16 => Cow::Owned(
                    view.data()
                        .chunks_exact(2)
                        .flat_map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]])).to_le_bytes())
                        .collect(),
                ),
                other => {
                    return Err(ck(format!(
                        "tensor '{name}' has dtype {other:?}; only F32, F16 and BF16 weights can be exported"
                    )))
                }
            };
            out.insert(
                name.to_string(),
                Tensor {
                    shape: view.shape().to_vec(),
                    data,
                },
            );
        }
        Ok(out)
    }
}

fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let frac = (h & 0x3ff) as u32;
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, f) => {
            // subnormal: value = f * 2^-24
            let v = f as f32 * 2f32.powi(-24);
            return if sign != 0 { -v } else { v };
        }
        (0x1f, 0) => sign | 0x7f80_0000,
        (0x1f, f) => sign | 0x7f80_0000 | (f << 13),
        (e, f) => sign | ((e + 127 - 15) << 23) | (f << 13),
    };
    f32::from_bits(bits)
}

fn timm_norm_stats(cfg: &serde_json::Value) -> Option<(Vec<f64>, Vec<f64>)> {
    let pc = cfg.get("pretrained_cfg")?;
    let get = |k: &str| -> Option<Vec<f64>> {
        pc.get(k)?.as_array()?.iter().map(|v| v.as_f64()).collect()
    };
    Some((get("mean")?, get("std")?))
}

/// A [`VitConfig`] for a timm folder, read from the weights plus `config.json`.
fn timm_config(st: &SafeTensors<'_>, cfg: &serde_json::Value) -> Result<VitConfig> {
    timm_supported(st, cfg)?;
    let shape = |n: &str| -> Result<Vec<usize>> {
        st.tensor(n)
            .map(|t| t.shape().to_vec())
            .map_err(|_| Error::MissingTensor {
                name: n.to_string(),
            })
    };
    let pw = shape("patch_embed.proj.weight")?;
    if pw.len() != 4 || pw[2] != pw[3] {
        return Err(Error::TensorShape {
            name: "patch_embed.proj.weight".into(),
            expected: vec![0, 0, 0, 0],
            found: pw,
        });
    }
    let (d, channels, p) = (pw[0], pw[1], pw[2]);
    let depth = (0..)
        .take_while(|i| st.tensor(&format!("blocks.{i}.attn.qkv.weight")).is_ok())
        .count();
    let matrix = |n: &str| -> Result<Vec<usize>> {
        let s = shape(n)?;
        if s.len() != 2 {
            return Err(ck(format!(
                "tensor '{n}' has shape {s:?}, expected a matrix"
            )));
        }
        Ok(s)
    };
    let fc1 = matrix("blocks.0.mlp.fc1.weight")?;
    let pos = shape("pos_embed")?;
    let head = matrix("head.weight")?;
    if pos.len() != 3 || pos[1] < 2 {
        return Err(Error::TensorShape {
            name: "pos_embed".into(),
            expected: vec![1, 0, d],
            found: pos,
        });
    }
    let n = pos[1] - 1;
    let grid = (n as f64).sqrt().round() as usize;
    if grid * grid != n {
        return Err(ck(format!(
            "pos_embed has {} positions: not 1 + a square number of patches (no class token?)",
            pos[1]
        )));
    }
    let args = cfg.get("model_args");
    let arch = cfg
        .get("architecture")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    let heads = timm_heads(args, arch)?;
    let labels = timm_labels(cfg, head[0]);
    let mut extra = serde_json::Map::new();
    extra.insert("vit_batch_source_format".into(), "timm".into());
    if !arch.is_empty() {
        extra.insert("timm_architecture".into(), arch.into());
    }
    let mut out = VitConfig {
        model_type: "vit".into(),
        architectures: Some(vec!["ViTForImageClassification".into()]),
        image_size: grid * p,
        patch_size: p,
        num_channels: channels,
        hidden_size: d,
        num_hidden_layers: depth,
        num_attention_heads: heads,
        intermediate_size: fc1[0],
        hidden_act: "gelu".into(),
        layer_norm_eps: 1e-6,
        qkv_bias: st.tensor("blocks.0.attn.qkv.bias").is_ok(),
        id2label: BTreeMap::new(),
        label2id: BTreeMap::new(),
        extra,
    };
    out.set_labels(&labels);
    Ok(out)
}

/// Refuse timm variants whose forward pass differs from plain ViT.
fn timm_supported(st: &SafeTensors<'_>, cfg: &serde_json::Value) -> Result<()> {
    for (name, feature) in [
        ("fc_norm.weight", "average pooling with fc_norm"),
        ("norm_pre.weight", "pre-norm (norm_pre)"),
        ("blocks.0.ls1.gamma", "layer scale (ls1/ls2)"),
        ("reg_token", "register tokens"),
    ] {
        if st.tensor(name).is_ok() {
            return Err(ck(format!("timm checkpoint uses {feature} (tensor '{name}'), which this exporter does not implement")));
        }
    }
    if let Some(gp) = cfg.get("global_pool").and_then(|v| v.as_str()) {
        if gp != "token" {
            return Err(ck(format!(
                "timm global_pool '{gp}' is not supported (only 'token')"
            )));
        }
    }
    Ok(())
}

/// Attention heads of a timm ViT: `model_args.num_heads`, else from the
/// architecture's size name.
fn timm_heads(args: Option<&serde_json::Value>, arch: &str) -> Result<usize> {
    if let Some(h) = args
        .and_then(|a| a.get("num_heads"))
        .and_then(|v| v.as_u64())
    {
        return Ok(h as usize);
    }
    let table = [
        ("tiny", 3),
        ("small", 6),
        ("base", 12),
        ("large", 16),
        ("huge", 16),
    ];
    table
        .iter()
        .find(|(k, _)| arch.contains(k))
        .map(|&(_, h)| h)
        .ok_or_else(|| Error::Config {
            what: format!(
                "timm config.json: cannot tell the number of attention heads of architecture \
                 '{arch}'; add \"model_args\": {{\"num_heads\": H}}"
            ),
        })
}

/// Class names of a timm checkpoint (`label_names`), else `LABEL_i`.
fn timm_labels(cfg: &serde_json::Value, classes: usize) -> Vec<String> {
    let names: Option<Vec<String>> = cfg
        .get("label_names")
        .or_else(|| cfg.get("pretrained_cfg").and_then(|p| p.get("label_names")))
        .and_then(|v| v.as_array())
        .and_then(|a| a.iter().map(|v| v.as_str().map(String::from)).collect());
    match names {
        Some(n) if n.len() == classes => n,
        _ => (0..classes).map(|i| format!("LABEL_{i}")).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::f16_to_f32;

    #[test]
    fn f16_conversion() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x3555), 0.333_251_95);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert!(f16_to_f32(0x7c00).is_infinite());
    }
}
