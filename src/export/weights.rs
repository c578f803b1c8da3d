//! The canonical in-memory weight set of a ViT classifier, independent of where it
//! came from (HF ViT, DeiT or timm checkpoint, or random init).
//!
//! Why it exists: the graph builder must not know checkpoint naming schemes, and the
//! checkpoint readers must not know ONNX. Everything meets here, in Hugging Face's
//! layout (Linear weights `[out, in]`, Conv weight `[D, C, P, P]`), as little-endian
//! float32 bytes that are either borrowed (from a memory-mapped file) or owned.
//! [`VitWeights::from_hf_tensors`] checks every shape against the [`VitConfig`] and
//! names the tensor and both shapes when one does not fit.

use std::borrow::Cow;
use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::vit::VitConfig;

/// One float32 tensor: shape plus little-endian bytes.
#[derive(Debug, Clone)]
pub struct Tensor<'a> {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Little-endian float32 payload, borrowed from a memory-mapped checkpoint or owned.
    pub data: Cow<'a, [u8]>,
}

impl<'a> Tensor<'a> {
    pub(crate) fn from_f32(shape: Vec<usize>, values: &[f32]) -> Tensor<'static> {
        assert_eq!(shape.iter().product::<usize>(), values.len());
        Tensor {
            shape,
            data: Cow::Owned(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        }
    }

    pub(crate) fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The values as f32 (a copy).
    pub fn to_f32(&self) -> Vec<f32> {
        self.data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    /// A borrowed view of this tensor.
    pub(crate) fn view(&self) -> Tensor<'_> {
        Tensor {
            shape: self.shape.clone(),
            data: Cow::Borrowed(&self.data),
        }
    }
}

/// Weights of one pre-norm encoder block (HF names in comments).
#[derive(Debug, Clone)]
pub(crate) struct LayerWeights<'a> {
    /// layernorm_before
    pub ln1_w: Tensor<'a>,
    pub ln1_b: Tensor<'a>,
    /// attention.attention.{query,key,value}: `[D, D]`, biases `[D]` (absent when
    /// `qkv_bias` is false)
    pub q_w: Tensor<'a>,
    pub q_b: Option<Tensor<'a>>,
    pub k_w: Tensor<'a>,
    pub k_b: Option<Tensor<'a>>,
    pub v_w: Tensor<'a>,
    pub v_b: Option<Tensor<'a>>,
    /// attention.output.dense
    pub o_w: Tensor<'a>,
    pub o_b: Tensor<'a>,
    /// layernorm_after
    pub ln2_w: Tensor<'a>,
    pub ln2_b: Tensor<'a>,
    /// intermediate.dense `[I, D]`
    pub fc1_w: Tensor<'a>,
    pub fc1_b: Tensor<'a>,
    /// output.dense `[D, I]`
    pub fc2_w: Tensor<'a>,
    pub fc2_b: Tensor<'a>,
}

/// A complete ViT classifier.
#[derive(Debug, Clone)]
pub(crate) struct VitWeights<'a> {
    /// Conv2d `[D, C, P, P]` and `[D]`.
    pub patch_w: Tensor<'a>,
    pub patch_b: Tensor<'a>,
    /// `[1, 1, D]`
    pub cls_token: Tensor<'a>,
    /// DeiT's distillation token `[1, 1, D]`; when present the sequence is N+2.
    pub dist_token: Option<Tensor<'a>>,
    /// `[1, S, D]`, S = N + 1 (+1 with a distillation token).
    pub pos_embed: Tensor<'a>,
    pub layers: Vec<LayerWeights<'a>>,
    pub final_ln_w: Tensor<'a>,
    pub final_ln_b: Tensor<'a>,
    /// One head on token 0, or (DeiT with teacher) two heads on tokens 0 and 1 whose
    /// logits are averaged. Weights `[C, D]`, biases `[C]`.
    pub heads: Vec<(Tensor<'a>, Tensor<'a>)>,
}

/// Which naming scheme [`VitWeights::from_hf_tensors`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scheme {
    /// `ViTForImageClassification`: prefix `vit.`, head `classifier`.
    HfVit,
    /// `DeiTForImageClassification[WithTeacher]`: prefix `deit.`, distillation token.
    HfDeit,
    /// timm `VisionTransformer`: fused `qkv`, `blocks.{i}`, head `head`.
    Timm,
}

/// Looks tensors up by name, checks shapes, and records which names were used.
pub struct TensorTable<'m, 'a> {
    map: &'m BTreeMap<String, Tensor<'a>>,
    used: std::collections::BTreeSet<String>,
}

impl<'m, 'a> TensorTable<'m, 'a> {
    pub(crate) fn new(map: &'m BTreeMap<String, Tensor<'a>>) -> Self {
        TensorTable {
            map,
            used: Default::default(),
        }
    }

    pub(crate) fn has(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    /// The tensor `name` (borrowed), which must have exactly `shape`.
    pub(crate) fn get(&mut self, name: &str, shape: &[usize]) -> Result<Tensor<'m>> {
        let t = self.map.get(name).ok_or_else(|| Error::MissingTensor {
            name: name.to_string(),
        })?;
        if t.shape != shape {
            return Err(Error::TensorShape {
                name: name.to_string(),
                expected: shape.to_vec(),
                found: t.shape.clone(),
            });
        }
        self.used.insert(name.to_string());
        Ok(t.view())
    }

    /// Like [`get`](Self::get) but `None` when absent (a wrong shape is still an error).
    pub(crate) fn get_opt(&mut self, name: &str, shape: &[usize]) -> Result<Option<Tensor<'m>>> {
        if self.has(name) {
            self.get(name, shape).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Names present in the file that no reader asked for, sorted.
    pub(crate) fn unused(&self) -> Vec<String> {
        self.map
            .keys()
            .filter(|k| !self.used.contains(*k))
            .cloned()
            .collect()
    }
}

impl<'m> VitWeights<'m> {
    /// Number of float parameters (what PyTorch's `numel` sum reports).
    pub(crate) fn num_params(&self) -> usize {
        let mut n = self.patch_w.numel() + self.patch_b.numel() + self.cls_token.numel();
        n += self.dist_token.as_ref().map_or(0, |t| t.numel());
        n += self.pos_embed.numel() + self.final_ln_w.numel() + self.final_ln_b.numel();
        for l in &self.layers {
            for t in [
                &l.ln1_w, &l.ln1_b, &l.q_w, &l.k_w, &l.v_w, &l.o_w, &l.o_b, &l.ln2_w, &l.ln2_b,
                &l.fc1_w, &l.fc1_b, &l.fc2_w, &l.fc2_b,
            ] {
                n += t.numel();
            }
            for t in [&l.q_b, &l.k_b, &l.v_b].into_iter().flatten() {
                n += t.numel();
            }
        }
        for (w, b) in &self.heads {
            n += w.numel() + b.numel();
        }
        n
    }

    /// Read a weight set from `tensors` named after `scheme`, checking every shape
    /// against `cfg`. The result borrows from `tensors` (no weight is copied).
    /// Returns the weights and the names that were not used.
    pub(crate) fn from_hf_tensors<'a>(
        cfg: &VitConfig,
        scheme: Scheme,
        tensors: &'m BTreeMap<String, Tensor<'a>>,
    ) -> Result<(VitWeights<'m>, Vec<String>)> {
        cfg.validate()?;
        let mut t = TensorTable::new(tensors);
        let w = match scheme {
            Scheme::HfVit | Scheme::HfDeit => Self::hf(cfg, scheme, &mut t)?,
            Scheme::Timm => Self::timm(cfg, &mut t)?,
        };
        let unused = t.unused();
        // Blocks beyond num_hidden_layers mean config.json and the weights disagree:
        // exporting would silently drop layers, so refuse.
        let layer_re = match scheme {
            Scheme::HfVit => "vit.encoder.layer.",
            Scheme::HfDeit => "deit.encoder.layer.",
            Scheme::Timm => "blocks.",
        };
        if let Some(extra) = unused.iter().find(|k| {
            k.strip_prefix(layer_re)
                .and_then(|r| r.split('.').next())
                .and_then(|i| i.parse::<usize>().ok())
                .is_some_and(|i| i >= cfg.num_hidden_layers)
        }) {
            return Err(Error::Checkpoint {
                what: format!(
                    "config.json has num_hidden_layers = {} but the weights have more layers \
                     (found tensor '{extra}')",
                    cfg.num_hidden_layers
                ),
            });
        }
        Ok((w, unused))
    }

    /// The weights of a Hugging Face `ViTForImageClassification` (`vit.`) or DeiT
    /// (`deit.`, with its distillation token and heads) checkpoint.
    fn hf<'a>(
        cfg: &VitConfig,
        scheme: Scheme,
        t: &mut TensorTable<'m, 'a>,
    ) -> Result<VitWeights<'m>> {
        let d = cfg.hidden_size;
        let i_size = cfg.intermediate_size;
        let p = cfg.patch_size;
        let c = cfg.num_labels();
        let n = cfg.num_patches();

        let pre = if scheme == Scheme::HfVit {
            "vit"
        } else {
            "deit"
        };
        let e = format!("{pre}.embeddings");
        let dist_token = if scheme == Scheme::HfDeit {
            Some(t.get(&format!("{e}.distillation_token"), &[1, 1, d])?)
        } else {
            None
        };
        let seq = n + 1 + dist_token.is_some() as usize;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for li in 0..cfg.num_hidden_layers {
            let l = format!("{pre}.encoder.layer.{li}");
            let a = format!("{l}.attention.attention");
            let bias = |t: &mut TensorTable<'m, 'a>, name: String| -> Result<Option<Tensor<'m>>> {
                if cfg.qkv_bias {
                    t.get(&name, &[d]).map(Some)
                } else {
                    t.get_opt(&name, &[d])
                }
            };
            layers.push(LayerWeights {
                ln1_w: t.get(&format!("{l}.layernorm_before.weight"), &[d])?,
                ln1_b: t.get(&format!("{l}.layernorm_before.bias"), &[d])?,
                q_w: t.get(&format!("{a}.query.weight"), &[d, d])?,
                q_b: bias(t, format!("{a}.query.bias"))?,
                k_w: t.get(&format!("{a}.key.weight"), &[d, d])?,
                k_b: bias(t, format!("{a}.key.bias"))?,
                v_w: t.get(&format!("{a}.value.weight"), &[d, d])?,
                v_b: bias(t, format!("{a}.value.bias"))?,
                o_w: t.get(&format!("{l}.attention.output.dense.weight"), &[d, d])?,
                o_b: t.get(&format!("{l}.attention.output.dense.bias"), &[d])?,
                ln2_w: t.get(&format!("{l}.layernorm_after.weight"), &[d])?,
                ln2_b: t.get(&format!("{l}.layernorm_after.bias"), &[d])?,
                fc1_w: t.get(&format!("{l}.intermediate.dense.weight"), &[i_size, d])?,
                fc1_b: t.get(&format!("{l}.intermediate.dense.bias"), &[i_size])?,
                fc2_w: t.get(&format!("{l}.output.dense.weight"), &[d, i_size])?,
                fc2_b: t.get(&format!("{l}.output.dense.bias"), &[d])?,
            });
        }
        let heads = if scheme == Scheme::HfDeit && t.has("cls_classifier.weight") {
            vec![
                (
                    t.get("cls_classifier.weight", &[c, d])?,
                    t.get("cls_classifier.bias", &[c])?,
                ),
                (
                    t.get("distillation_classifier.weight", &[c, d])?,
                    t.get("distillation_classifier.bias", &[c])?,
                ),
            ]
        } else {
            vec![(
                t.get("classifier.weight", &[c, d])?,
                t.get("classifier.bias", &[c])?,
            )]
        };
        Ok(VitWeights {
            patch_w: t.get(
                &format!("{e}.patch_embeddings.projection.weight"),
                &[d, cfg.num_channels, p, p],
            )?,
            patch_b: t.get(&format!("{e}.patch_embeddings.projection.bias"), &[d])?,
            cls_token: t.get(&format!("{e}.cls_token"), &[1, 1, d])?,
            dist_token,
            pos_embed: t.get(&format!("{e}.position_embeddings"), &[1, seq, d])?,
            layers,
            final_ln_w: t.get(&format!("{pre}.layernorm.weight"), &[d])?,
            final_ln_b: t.get(&format!("{pre}.layernorm.bias"), &[d])?,
            heads,
        })
    }

    /// The weights of a timm `VisionTransformer` checkpoint (one fused qkv Linear per
    /// block, split here into borrowed row blocks).
    fn timm<'a>(cfg: &VitConfig, t: &mut TensorTable<'m, 'a>) -> Result<VitWeights<'m>> {
        let d = cfg.hidden_size;
        let i_size = cfg.intermediate_size;
        let p = cfg.patch_size;
        let c = cfg.num_labels();
        let n = cfg.num_patches();

        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for li in 0..cfg.num_hidden_layers {
            let b = format!("blocks.{li}");
            let qkv_w = t.get(&format!("{b}.attn.qkv.weight"), &[3 * d, d])?;
            let qkv_b_name = format!("{b}.attn.qkv.bias");
            let qkv_b = if cfg.qkv_bias {
                Some(t.get(&qkv_b_name, &[3 * d])?)
            } else {
                t.get_opt(&qkv_b_name, &[3 * d])?
            };
            let part = |x: &Tensor<'m>, k: usize| -> Tensor<'m> { borrowed_rows(x, k * d, d) };
            layers.push(LayerWeights {
                ln1_w: t.get(&format!("{b}.norm1.weight"), &[d])?,
                ln1_b: t.get(&format!("{b}.norm1.bias"), &[d])?,
                q_w: part(&qkv_w, 0),
                q_b: qkv_b.as_ref().map(|x| part(x, 0)),
                k_w: part(&qkv_w, 1),
                k_b: qkv_b.as_ref().map(|x| part(x, 1)),
                v_w: part(&qkv_w, 2),
                v_b: qkv_b.as_ref().map(|x| part(x, 2)),
                o_w: t.get(&format!("{b}.attn.proj.weight"), &[d, d])?,
                o_b: t.get(&format!("{b}.attn.proj.bias"), &[d])?,
                ln2_w: t.get(&format!("{b}.norm2.weight"), &[d])?,
                ln2_b: t.get(&format!("{b}.norm2.bias"), &[d])?,
                fc1_w: t.get(&format!("{b}.mlp.fc1.weight"), &[i_size, d])?,
                fc1_b: t.get(&format!("{b}.mlp.fc1.bias"), &[i_size])?,
                fc2_w: t.get(&format!("{b}.mlp.fc2.weight"), &[d, i_size])?,
                fc2_b: t.get(&format!("{b}.mlp.fc2.bias"), &[d])?,
            });
        }
        Ok(VitWeights {
            patch_w: t.get("patch_embed.proj.weight", &[d, cfg.num_channels, p, p])?,
            patch_b: t.get("patch_embed.proj.bias", &[d])?,
            cls_token: t.get("cls_token", &[1, 1, d])?,
            dist_token: None,
            pos_embed: t.get("pos_embed", &[1, n + 1, d])?,
            layers,
            final_ln_w: t.get("norm.weight", &[d])?,
            final_ln_b: t.get("norm.bias", &[d])?,
            heads: vec![(t.get("head.weight", &[c, d])?, t.get("head.bias", &[c])?)],
        })
    }
}

/// Rows of a borrowed tensor, keeping the outer lifetime (the checkpoint's).
fn borrowed_rows<'m>(x: &Tensor<'m>, start: usize, len: usize) -> Tensor<'m> {
    let row: usize = x.shape[1..].iter().product::<usize>() * 4;
    let mut shape = x.shape.clone();
    shape[0] = len;
    let data = match &x.data {
        Cow::Borrowed(b) => {
            let b: &'m [u8] = b;
            Cow::Borrowed(&b[start * row..(start + len) * row])
        }
        Cow::Owned(v) => Cow::Owned(v[start * row..(start + len) * row].to_vec()),
    };
    Tensor { shape, data }
}
