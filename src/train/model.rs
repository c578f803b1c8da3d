//! The ViT image classifier in candle, the model `train` fits.
//!
//! Why it exists: training needs the model as differentiable candle operations (the
//! exporter builds an ONNX graph, which cannot be trained). It is Hugging Face's
//! `ViTForImageClassification`: pre-norm blocks, [CLS] token, learnable position
//! embeddings, exact erf GELU, final LayerNorm, classifier on [CLS], LayerNorm eps from
//! the config (1e-12 for HF ViT), the same architecture as the exporter's graph.
//!
//! Layout: one struct per module of the HF model, as in candle-transformers'
//! `models/vit.rs`, each built under its HF name, so a struct's path is the tensor
//! name: `VitForImageClassification.vit.encoder.layer[i].attention.attention.query` is
//! `vit.encoder.layer.{i}.attention.attention.query.{weight,bias}`. The parameters are
//! therefore a Hugging Face checkpoint as they stand ([`load_checkpoint`] reads one).
//!
//! Two candle details this module relies on: `candle_nn::LayerNorm` and
//! `candle_nn::ops::softmax_last_dim` are fused ops *without* a backward pass
//! (gradients silently stop there), so the model uses the composed `layer_norm_slow`
//! and `candle_nn::ops::softmax`, which candle differentiates. The patch embedding (a
//! Conv2d with kernel = stride = patch) is written as patchify + matmul, the same sums.

use std::path::Path;

use candle_core::{DType, Device, IndexOp, Module, Tensor, Var, D};
use candle_nn::{Linear, VarBuilder, VarMap};

use crate::error::{Error, Result};
use crate::vit::{init_weights, VitConfig};

type CResult<T> = candle_core::Result<T>;

/// LayerNorm over the last dimension, differentiable (see the module comment).
#[derive(Debug, Clone)]
struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
}

impl LayerNorm {
    fn new(vb: VarBuilder, d: usize, eps: f64) -> CResult<Self> {
        Ok(LayerNorm {
            weight: vb.get(d, "weight")?,
            bias: vb.get(d, "bias")?,
            eps: eps as f32,
        })
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        candle_nn::ops::layer_norm_slow(x, &self.weight, &self.bias, self.eps)
    }
}

/// `nn.Linear(in_d, out_d)`: `weight` `[out_d, in_d]`, and `bias` when `bias`.
fn linear(vb: VarBuilder, in_d: usize, out_d: usize, bias: bool) -> CResult<Linear> {
    let b = if bias {
        Some(vb.get(out_d, "bias")?)
    } else {
        None
    };
    Ok(Linear::new(vb.get((out_d, in_d), "weight")?, b))
}

/// `patch_embeddings.projection`: HF's Conv2d (kernel = stride = patch size).
#[derive(Debug, Clone)]
struct Projection {
    /// `[D, C, P, P]`.
    weight: Tensor,
    bias: Tensor,
}

impl Module for Projection {
    /// Pixels `[B, C, H, W]` to patch embeddings `[B, N, D]`.
    fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let (d, _, p, _) = self.weight.dims4()?;
        let (gh, gw) = (h / p, w / p);
        // [B,C,gh,P,gw,P] -> [B,gh,gw,C,P,P] -> [B,N,C*P*P], weight [D,C,P,P] -> [D,C*P*P].
        let patches = x
            .reshape((b, c, gh, p, gw, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b, gh * gw, c * p * p))?;
        let wflat = self.weight.reshape((d, c * p * p))?;
        patches
            .broadcast_matmul(&wflat.t()?)?
            .broadcast_add(&self.bias)
    }
}

/// `vit.embeddings.patch_embeddings`.
#[derive(Debug, Clone)]
struct PatchEmbeddings {
    projection: Projection,
}

impl PatchEmbeddings {
    fn new(vb: VarBuilder, cfg: &VitConfig) -> CResult<Self> {
        let (d, c, p) = (cfg.hidden_size, cfg.num_channels, cfg.patch_size);
        let vb = vb.pp("projection");
        Ok(PatchEmbeddings {
            projection: Projection {
                weight: vb.get((d, c, p, p), "weight")?,
                bias: vb.get(d, "bias")?,
            },
        })
    }
}

/// `vit.embeddings`: patch embeddings after a [CLS] token, plus position embeddings.
#[derive(Debug, Clone)]
struct Embeddings {
    cls_token: Tensor,
    patch_embeddings: PatchEmbeddings,
    position_embeddings: Tensor,
}

impl Embeddings {
    fn new(vb: VarBuilder, cfg: &VitConfig) -> CResult<Self> {
        let d = cfg.hidden_size;
        Ok(Embeddings {
            cls_token: vb.get((1, 1, d), "cls_token")?,
            patch_embeddings: PatchEmbeddings::new(vb.pp("patch_embeddings"), cfg)?,
            position_embeddings: vb.get((1, cfg.num_patches() + 1, d), "position_embeddings")?,
        })
    }
}

impl Module for Embeddings {
    /// Pixels `[B, C, H, W]` to hidden states `[B, 1 + N, D]`.
    fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        let emb = self.patch_embeddings.projection.forward(x)?;
        let (b, _, d) = emb.dims3()?;
        let cls = self.cls_token.broadcast_as((b, 1, d))?.contiguous()?;
        Tensor::cat(&[&cls, &emb], 1)?.broadcast_add(&self.position_embeddings)
    }
}

/// `attention.attention`: multi-head scaled dot-product self-attention.
#[derive(Debug, Clone)]
struct SelfAttention {
    query: Linear,
    key: Linear,
    value: Linear,
    num_attention_heads: usize,
}

impl SelfAttention {
    fn new(vb: VarBuilder, cfg: &VitConfig) -> CResult<Self> {
        let d = cfg.hidden_size;
        Ok(SelfAttention {
            query: linear(vb.pp("query"), d, d, cfg.qkv_bias)?,
            key: linear(vb.pp("key"), d, d, cfg.qkv_bias)?,
            value: linear(vb.pp("value"), d, d, cfg.qkv_bias)?,
            num_attention_heads: cfg.num_attention_heads,
        })
    }
}

impl Module for SelfAttention {
    /// Normalised hidden states `[B, S, D]` to the heads' context `[B, S, D]`.
    fn forward(&self, h: &Tensor) -> CResult<Tensor> {
        let (b, s, d) = h.dims3()?;
        let heads = self.num_attention_heads;
        let hd = d / heads;
        let split = |t: Tensor| -> CResult<Tensor> {
            t.reshape((b, s, heads, hd))?.transpose(1, 2)?.contiguous()
        };
        let q = split(self.query.forward(h)?)?;
        let k = split(self.key.forward(h)?)?;
        let v = split(self.value.forward(h)?)?;
        let scores = (q.matmul(&k.t()?.contiguous()?)? * (1.0 / (hd as f64).sqrt()))?;
        let probs = candle_nn::ops::softmax(&scores, D::Minus1)?;
        probs
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, s, d))
    }
}

/// `attention.output`: the projection after attention (HF's `ViTSelfOutput`).
#[derive(Debug, Clone)]
struct SelfOutput {
    dense: Linear,
}

/// `attention`: self-attention and its output projection (no residual: [`Layer`] adds it).
#[derive(Debug, Clone)]
struct Attention {
    attention: SelfAttention,
    output: SelfOutput,
}

impl Attention {
    fn new(vb: VarBuilder, cfg: &VitConfig) -> CResult<Self> {
        let d = cfg.hidden_size;
        Ok(Attention {
            attention: SelfAttention::new(vb.pp("attention"), cfg)?,
            output: SelfOutput {
                dense: linear(vb.pp("output").pp("dense"), d, d, true)?,
            },
        })
    }
}

impl Module for Attention {
    fn forward(&self, h: &Tensor) -> CResult<Tensor> {
        self.output.dense.forward(&self.attention.forward(h)?)
    }
}

/// `intermediate`: the MLP's first Linear and its exact (erf) GELU.
#[derive(Debug, Clone)]
struct Intermediate {
    dense: Linear,
}

impl Module for Intermediate {
    fn forward(&self, h: &Tensor) -> CResult<Tensor> {
        self.dense.forward(h)?.gelu_erf()
    }
}

/// `output`: the MLP's second Linear and the block's second residual.
#[derive(Debug, Clone)]
struct Output {
    dense: Linear,
}

impl Output {
    /// `input + dense(h)`.
    fn forward(&self, h: &Tensor, input: &Tensor) -> CResult<Tensor> {
        input + self.dense.forward(h)?
    }
}

/// `vit.encoder.layer.{i}`: one pre-norm transformer block.
#[derive(Debug, Clone)]
struct Layer {
    attention: Attention,
    intermediate: Intermediate,
    output: Output,
    layernorm_before: LayerNorm,
    layernorm_after: LayerNorm,
}

impl Layer {
    fn new(vb: VarBuilder, cfg: &VitConfig) -> CResult<Self> {
        let (d, i, eps) = (cfg.hidden_size, cfg.intermediate_size, cfg.layer_norm_eps);
        Ok(Layer {
            attention: Attention::new(vb.pp("attention"), cfg)?,
            intermediate: Intermediate {
                dense: linear(vb.pp("intermediate").pp("dense"), d, i, true)?,
            },
            output: Output {
                dense: linear(vb.pp("output").pp("dense"), i, d, true)?,
            },
            layernorm_before: LayerNorm::new(vb.pp("layernorm_before"), d, eps)?,
            layernorm_after: LayerNorm::new(vb.pp("layernorm_after"), d, eps)?,
        })
    }
}

impl Module for Layer {
    fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        let h = self.layernorm_before.forward(x)?;
        let x = (x + self.attention.forward(&h)?)?;
        let h = self
            .intermediate
            .forward(&self.layernorm_after.forward(&x)?)?;
        self.output.forward(&h, &x)
    }
}

/// `vit.encoder`: the blocks, in order.
#[derive(Debug, Clone)]
struct Encoder {
    layer: Vec<Layer>,
}

impl Encoder {
    fn new(vb: VarBuilder, cfg: &VitConfig) -> CResult<Self> {
        let vb = vb.pp("layer");
        let layer = (0..cfg.num_hidden_layers)
            .map(|i| Layer::new(vb.pp(i.to_string()), cfg))
            .collect::<CResult<Vec<_>>>()?;
        Ok(Encoder { layer })
    }
}

impl Module for Encoder {
    fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        let mut hs = x.clone();
        for layer in &self.layer {
            hs = layer.forward(&hs)?;
        }
        Ok(hs)
    }
}

/// `vit`: HF's `ViTModel` without its pooler (embeddings, encoder, final LayerNorm).
#[derive(Debug, Clone)]
struct VitModel {
    embeddings: Embeddings,
    encoder: Encoder,
    layernorm: LayerNorm,
}

impl VitModel {
    fn new(vb: VarBuilder, cfg: &VitConfig) -> CResult<Self> {
        Ok(VitModel {
            embeddings: Embeddings::new(vb.pp("embeddings"), cfg)?,
            encoder: Encoder::new(vb.pp("encoder"), cfg)?,
            layernorm: LayerNorm::new(vb.pp("layernorm"), cfg.hidden_size, cfg.layer_norm_eps)?,
        })
    }
}

impl Module for VitModel {
    fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        let hs = self.encoder.forward(&self.embeddings.forward(x)?)?;
        self.layernorm.forward(&hs)
    }
}

/// Hugging Face's `ViTForImageClassification` in candle, its parameters named as in HF
/// checkpoints (see the module comment).
#[derive(Debug, Clone)]
pub struct VitForImageClassification {
    vit: VitModel,
    classifier: Linear,
}

impl VitForImageClassification {
    /// Build the model over the variables of `vb`, named as in an HF checkpoint.
    pub fn new(vb: VarBuilder, cfg: &VitConfig) -> Result<Self> {
        Ok(VitForImageClassification {
            vit: VitModel::new(vb.pp("vit"), cfg)?,
            classifier: linear(vb.pp("classifier"), cfg.hidden_size, cfg.num_labels(), true)?,
        })
    }

    /// Logits `[B, C]` for pixel values `[B, 3, H, W]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let hs = self.vit.forward(x)?;
        Ok(self.classifier.forward(&hs.i((.., 0))?.contiguous()?)?)
    }
}

/// The seeded initial parameters ([`init_weights`], HF ViT's scheme) as candle tensors,
/// sorted by name.
pub(crate) fn init_parameters(cfg: &VitConfig, seed: u64) -> Result<Vec<(String, Tensor)>> {
    init_weights(cfg, seed)
        .into_iter()
        .map(|(name, (shape, values))| Ok((name, Tensor::from_vec(values, shape, &Device::Cpu)?)))
        .collect()
}

/// Whether AdamW's weight decay applies to this parameter (matrices only: not biases,
/// LayerNorms, [CLS] or position embeddings).
pub(crate) fn decays(name: &str) -> bool {
    name.ends_with(".weight") && !name.contains("layernorm")
}

/// A VarMap holding `params`, for building a [`VitForImageClassification`] over.
pub(crate) fn varmap_from(params: Vec<(String, Tensor)>) -> Result<VarMap> {
    let vm = VarMap::new();
    {
        let mut data = vm.data().lock().map_err(|_| Error::Train {
            what: "internal: variable map lock poisoned".into(),
        })?;
        for (name, t) in params {
            data.insert(name, Var::from_tensor(&t)?);
        }
    }
    Ok(vm)
}

/// Load a checkpoint written by [`train`](super::train) (or any HF ViT checkpoint with
/// the same names) into a candle model, e.g. to compare its logits with ONNX Runtime's.
pub fn load_checkpoint(dir: &Path) -> Result<(VitConfig, VitForImageClassification)> {
    let cfg = VitConfig::from_file(&dir.join("config.json"))?;
    cfg.validate()?;
    let st = dir.join("model.safetensors");
    let tensors =
        candle_core::safetensors::load(&st, &Device::Cpu).map_err(|e| Error::Checkpoint {
            what: format!("{}: {e}", st.display()),
        })?;
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    let model = VitForImageClassification::new(vb, &cfg).map_err(|e| Error::Checkpoint {
        what: format!("{}: {e}", dir.display()),
    })?;
    Ok((cfg, model))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_have_hf_names_and_seeded_values() {
        let cfg = VitConfig::preset("vit-digits", 10).unwrap();
        let a = init_parameters(&cfg, 7).unwrap();
        let b = init_parameters(&cfg, 7).unwrap();
        let names: Vec<&str> = a.iter().map(|(n, _)| n.as_str()).collect();
        for n in [
            "vit.embeddings.cls_token",
            "vit.embeddings.position_embeddings",
            "vit.embeddings.patch_embeddings.projection.weight",
            "vit.encoder.layer.3.attention.attention.query.bias",
            "vit.encoder.layer.0.attention.output.dense.weight",
            "vit.encoder.layer.2.intermediate.dense.weight",
            "vit.encoder.layer.1.output.dense.bias",
            "vit.encoder.layer.0.layernorm_after.weight",
            "vit.layernorm.bias",
            "classifier.weight",
        ] {
            assert!(names.contains(&n), "{n}");
        }
        assert_eq!(names.len(), 4 + 16 * 4 + 4);
        let w = |v: &[(String, Tensor)]| {
            v.iter()
                .find(|(n, _)| n == "classifier.weight")
                .unwrap()
                .1
                .to_vec2::<f32>()
                .unwrap()
        };
        assert_eq!(w(&a), w(&b));
        assert_ne!(w(&a), w(&init_parameters(&cfg, 8).unwrap()));
        assert!(w(&a).iter().flatten().all(|x| x.abs() <= 0.04));
    }

    #[test]
    fn model_builds_and_gradients_reach_every_parameter() {
        let cfg = VitConfig::preset("vit-digits", 3).unwrap();
        let vm = varmap_from(init_parameters(&cfg, 0).unwrap()).unwrap();
        let model = VitForImageClassification::new(
            VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu),
            &cfg,
        )
        .unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 3, 32, 32), &Device::Cpu).unwrap();
        let logits = model.forward(&x).unwrap();
        assert_eq!(logits.dims(), &[2, 3]);
        let y = Tensor::new(&[0u32, 2], &Device::Cpu).unwrap();
        let loss = candle_nn::loss::cross_entropy(&logits, &y).unwrap();
        let grads = loss.backward().unwrap();
        let data = vm.data().lock().unwrap();
        for (name, var) in data.iter() {
            let g = grads
                .get(var)
                .unwrap_or_else(|| panic!("no gradient for {name}"));
            let norm = g
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(norm > 0.0, "zero gradient for {name}");
        }
    }
}
