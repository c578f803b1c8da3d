//! `vit-batch train`: train a small ViT classifier on an ImageFolder dataset, on CPU.
//!
//! Why it exists: the project needs a real trained model to test scoring against (the
//! bundled `fixtures/models/vit-digits/`), and users with a small labelled folder can
//! get a baseline without Python. Training uses candle (autodiff + AdamW); no backprop
//! is written by hand here. The model is the same architecture as the exporter's graph
//! (HF `ViTForImageClassification`: pre-norm blocks, [CLS] token, learnable position
//! embeddings, exact erf GELU, final LayerNorm, classifier on [CLS], LayerNorm eps from
//! the config, 1e-12 for HF ViT), and its parameters carry Hugging Face's tensor names,
//! so the saved folder (`config.json`, `model.safetensors`, `preprocessor_config.json`)
//! is an HF checkpoint that `vit-batch export --checkpoint` (and transformers) read.
//!
//! Images go through the same walk ([`crate::walk`]) and preprocessing
//! ([`crate::preprocess`], `PreprocessConfig::vit_default(image_size)`) as `score`, so
//! what the model is trained on is exactly what it is scored on. All tensors are
//! decoded once and cached in memory (meant for small datasets such as the digits).
//!
//! Determinism: parameter init and per-epoch shuffling come from a seeded `StdRng`, so
//! a run is reproducible for a given seed *and thread count*. candle's CPU kernels
//! (gemm) may split reductions differently with another number of threads, which can
//! change the last bits of the results and then the trajectory; `threads` (or
//! `RAYON_NUM_THREADS`) pins it.
//!
//! Two candle details this module relies on: `candle_nn::LayerNorm` and
//! `candle_nn::ops::softmax_last_dim` are fused ops *without* a backward pass (gradients
//! silently stop there), so the model uses the composed `layer_norm_slow` and
//! `candle_nn::ops::softmax`, which candle differentiates.

use std::collections::BTreeMap;
use std::f64::consts::PI;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, IndexOp, Module, Tensor, Var, D};
use candle_nn::{AdamW, Linear, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::preprocess::{PreprocessConfig, Preprocessor};
use crate::progress::Progress;
use crate::vit::VitConfig;
use crate::walk;

pub use crate::options::TrainOptions;

/// Loss and accuracy of one epoch.
#[derive(Debug, Clone, Serialize)]
pub struct EpochStats {
    /// 1-based.
    pub epoch: usize,
    /// Mean cross-entropy over the epoch's training batches (weighted by batch size).
    pub train_loss: f64,
    /// Training accuracy over the epoch (on the augmented batches, as seen in training).
    pub train_accuracy: f64,
    pub val_loss: Option<f64>,
    pub val_accuracy: Option<f64>,
    /// Learning rate of the epoch's last step.
    pub lr: f64,
    pub seconds: f64,
}

/// An image that could not be used, with the reason.
#[derive(Debug, Clone, Serialize)]
pub struct Unreadable {
    pub rel: String,
    pub reason: String,
    /// `train` or `val`.
    pub split: String,
}

/// What `train` did.
#[derive(Debug, Clone, Serialize)]
pub struct TrainSummary {
    pub out_dir: PathBuf,
    pub preset: String,
    /// Class names, index = class id (the sorted class folder names).
    pub classes: Vec<String>,
    pub num_train: usize,
    pub num_val: usize,
    pub num_params: usize,
    pub steps: usize,
    pub epochs: Vec<EpochStats>,
    /// Images skipped because they could not be read or decoded.
    pub unreadable: Vec<Unreadable>,
    /// Files in the data folder(s) that are not images (counted, not used).
    pub skipped_files: usize,
    pub threads: usize,
    pub seed: u64,
    pub wall_s: f64,
}

impl TrainSummary {
    pub fn final_val_accuracy(&self) -> Option<f64> {
        self.epochs.last().and_then(|e| e.val_accuracy)
    }
}

fn terr(what: impl Into<String>) -> Error {
    Error::Train { what: what.into() }
}

// ---------------------------------------------------------------------------------
// The model.

/// LayerNorm over the last dimension, differentiable (see the module comment).
#[derive(Debug, Clone)]
struct Ln {
    w: Tensor,
    b: Tensor,
    eps: f32,
}

impl Ln {
    fn new(vb: VarBuilder, d: usize, eps: f64) -> candle_core::Result<Self> {
        Ok(Ln {
            w: vb.get(d, "weight")?,
            b: vb.get(d, "bias")?,
            eps: eps as f32,
        })
    }
}

impl Module for Ln {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::layer_norm_slow(x, &self.w, &self.b, self.eps)
    }
}

fn linear(vb: VarBuilder, in_d: usize, out_d: usize) -> candle_core::Result<Linear> {
    Ok(Linear::new(
        vb.get((out_d, in_d), "weight")?,
        Some(vb.get(out_d, "bias")?),
    ))
}

#[derive(Debug, Clone)]
struct Block {
    ln_before: Ln,
    q: Linear,
    k: Linear,
    v: Linear,
    attn_out: Linear,
    ln_after: Ln,
    fc1: Linear,
    fc2: Linear,
    heads: usize,
}

impl Block {
    fn new(vb: VarBuilder, cfg: &VitConfig) -> candle_core::Result<Self> {
        let d = cfg.hidden_size;
        let eps = cfg.layer_norm_eps;
        let att = vb.pp("attention");
        Ok(Block {
            ln_before: Ln::new(vb.pp("layernorm_before"), d, eps)?,
            q: linear(att.pp("attention").pp("query"), d, d)?,
            k: linear(att.pp("attention").pp("key"), d, d)?,
            v: linear(att.pp("attention").pp("value"), d, d)?,
            attn_out: linear(att.pp("output").pp("dense"), d, d)?,
            ln_after: Ln::new(vb.pp("layernorm_after"), d, eps)?,
            fc1: linear(vb.pp("intermediate").pp("dense"), d, cfg.intermediate_size)?,
            fc2: linear(vb.pp("output").pp("dense"), cfg.intermediate_size, d)?,
            heads: cfg.num_attention_heads,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, s, d) = x.dims3()?;
        let hd = d / self.heads;
        let h = self.ln_before.forward(x)?;
        let split = |t: Tensor| -> candle_core::Result<Tensor> {
            t.reshape((b, s, self.heads, hd))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split(self.q.forward(&h)?)?;
        let k = split(self.k.forward(&h)?)?;
        let v = split(self.v.forward(&h)?)?;
        let scores = (q.matmul(&k.t()?.contiguous()?)? * (1.0 / (hd as f64).sqrt()))?;
        let probs = candle_nn::ops::softmax(&scores, D::Minus1)?;
        let ctx = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, s, d))?;
        let x = (x + self.attn_out.forward(&ctx)?)?;
        let h = self.ln_after.forward(&x)?;
        let h = self.fc2.forward(&self.fc1.forward(&h)?.gelu_erf()?)?;
        x + h
    }
}

/// `ViTForImageClassification` in candle, parameters named as in HF checkpoints.
#[derive(Debug, Clone)]
pub struct VitModel {
    cfg: VitConfig,
    patch_w: Tensor,
    patch_b: Tensor,
    cls_token: Tensor,
    pos_emb: Tensor,
    blocks: Vec<Block>,
    final_ln: Ln,
    classifier: Linear,
}

impl VitModel {
    /// Build the model over the variables of `vb` (created there if missing).
    pub fn new(vb: VarBuilder, cfg: &VitConfig) -> Result<Self> {
        let d = cfg.hidden_size;
        let p = cfg.patch_size;
        let c = cfg.num_channels;
        let emb = vb.pp("vit").pp("embeddings");
        let proj = emb.pp("patch_embeddings").pp("projection");
        let enc = vb.pp("vit").pp("encoder").pp("layer");
        let blocks = (0..cfg.num_hidden_layers)
            .map(|i| Block::new(enc.pp(i.to_string()), cfg))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(VitModel {
            cfg: cfg.clone(),
            patch_w: proj.get((d, c, p, p), "weight")?,
            patch_b: proj.get(d, "bias")?,
            cls_token: emb.get((1, 1, d), "cls_token")?,
            pos_emb: emb.get((1, cfg.num_patches() + 1, d), "position_embeddings")?,
            blocks,
            final_ln: Ln::new(vb.pp("vit").pp("layernorm"), d, cfg.layer_norm_eps)?,
            classifier: linear(vb.pp("classifier"), d, cfg.num_labels())?,
        })
    }

    /// Logits `[B, C]` for pixel values `[B, 3, H, W]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.forward_inner(x)?)
    }

    fn forward_inner(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let p = self.cfg.patch_size;
        let d = self.cfg.hidden_size;
        let (gh, gw) = (h / p, w / p);
        // Conv2d with kernel = stride = P, written as patchify + matmul (the same sums):
        // [B,C,gh,P,gw,P] -> [B,gh,gw,C,P,P] -> [B,N,C*P*P], weight [D,C,P,P] -> [D,C*P*P].
        let patches = x
            .reshape((b, c, gh, p, gw, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b, gh * gw, c * p * p))?;
        let wflat = self.patch_w.reshape((d, c * p * p))?;
        let emb = patches
            .broadcast_matmul(&wflat.t()?)?
            .broadcast_add(&self.patch_b)?;
        let cls = self.cls_token.broadcast_as((b, 1, d))?.contiguous()?;
        let mut hs = Tensor::cat(&[&cls, &emb], 1)?.broadcast_add(&self.pos_emb)?;
        for blk in &self.blocks {
            hs = blk.forward(&hs)?;
        }
        let hs = self.final_ln.forward(&hs)?;
        self.classifier.forward(&hs.i((.., 0))?.contiguous()?)
    }
}

/// Seeded initial values with HF ViT's scheme: truncated normal (std 0.02, cut at
/// 2 std) for matrices, [CLS] and position embeddings; zero biases; LayerNorm 1 / 0.
pub fn init_parameters(cfg: &VitConfig, seed: u64) -> Result<Vec<(String, Tensor)>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let dev = Device::Cpu;
    let d = cfg.hidden_size;
    let (c, p, i4) = (cfg.num_channels, cfg.patch_size, cfg.intermediate_size);
    let mut out: Vec<(String, Tensor)> = Vec::new();
    let mut trunc = |name: String, shape: Vec<usize>, rng: &mut StdRng| -> Result<()> {
        let n: usize = shape.iter().product();
        let normal = rand_distr::Normal::new(0.0f32, 1.0).expect("valid normal");
        let v: Vec<f32> = (0..n)
            .map(|_| loop {
                let z: f32 = rng.sample(normal);
                if z.abs() <= 2.0 {
                    break 0.02 * z;
                }
            })
            .collect();
        out.push((name, Tensor::from_vec(v, shape, &dev)?));
        Ok(())
    };
    let e = "vit.embeddings";
    trunc(format!("{e}.cls_token"), vec![1, 1, d], &mut rng)?;
    trunc(
        format!("{e}.position_embeddings"),
        vec![1, cfg.num_patches() + 1, d],
        &mut rng,
    )?;
    trunc(
        format!("{e}.patch_embeddings.projection.weight"),
        vec![d, c, p, p],
        &mut rng,
    )?;
    let mut mats = Vec::new();
    for l in 0..cfg.num_hidden_layers {
        let pre = format!("vit.encoder.layer.{l}");
        for n in ["query", "key", "value"] {
            mats.push((format!("{pre}.attention.attention.{n}"), d, d));
        }
        mats.push((format!("{pre}.attention.output.dense"), d, d));
        mats.push((format!("{pre}.intermediate.dense"), i4, d));
        mats.push((format!("{pre}.output.dense"), d, i4));
    }
    mats.push(("classifier".to_string(), cfg.num_labels(), d));
    for (name, o, i) in &mats {
        trunc(format!("{name}.weight"), vec![*o, *i], &mut rng)?;
    }
    let zeros = |n: usize| Tensor::zeros(n, DType::F32, &dev);
    let ones = |n: usize| Tensor::ones(n, DType::F32, &dev);
    out.push((format!("{e}.patch_embeddings.projection.bias"), zeros(d)?));
    for (name, o, _) in &mats {
        out.push((format!("{name}.bias"), zeros(*o)?));
    }
    let mut lns = vec!["vit.layernorm".to_string()];
    for l in 0..cfg.num_hidden_layers {
        lns.push(format!("vit.encoder.layer.{l}.layernorm_before"));
        lns.push(format!("vit.encoder.layer.{l}.layernorm_after"));
    }
    for n in lns {
        out.push((format!("{n}.weight"), ones(d)?));
        out.push((format!("{n}.bias"), zeros(d)?));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Whether AdamW's weight decay applies to this parameter (matrices only).
fn decays(name: &str) -> bool {
    name.ends_with(".weight") && !name.contains("layernorm")
}

/// A VarMap holding `params`, for building a [`VitModel`] over.
fn varmap_from(params: Vec<(String, Tensor)>) -> Result<VarMap> {
    let vm = VarMap::new();
    {
        let mut data = vm
            .data()
            .lock()
            .map_err(|_| terr("internal: variable map lock poisoned"))?;
        for (name, t) in params {
            data.insert(name, Var::from_tensor(&t)?);
        }
    }
    Ok(vm)
}

/// Load a checkpoint written by [`train`] (or any HF ViT checkpoint with the same
/// names) into a candle model, e.g. to compare its logits with ONNX Runtime's.
pub fn load_checkpoint(dir: &Path) -> Result<(VitConfig, VitModel)> {
    let cfg = VitConfig::from_file(&dir.join("config.json"))?;
    cfg.validate()?;
    let st = dir.join("model.safetensors");
    let tensors =
        candle_core::safetensors::load(&st, &Device::Cpu).map_err(|e| Error::Checkpoint {
            what: format!("{}: {e}", st.display()),
        })?;
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    let model = VitModel::new(vb, &cfg).map_err(|e| Error::Checkpoint {
        what: format!("{}: {e}", dir.display()),
    })?;
    Ok((cfg, model))
}

// ---------------------------------------------------------------------------------
// Data.

/// Decoded images of one split: CHW tensors back to back, labels by index.
struct Split {
    pixels: Vec<f32>,
    labels: Vec<u32>,
}

impl Split {
    fn len(&self) -> usize {
        self.labels.len()
    }
}

struct Loaded {
    /// (rel, class id, tensor) of each readable image.
    items: Vec<(String, u32, Vec<f32>)>,
    unreadable: Vec<Unreadable>,
    skipped: usize,
}

fn load_folder(
    dir: &Path,
    classes: Option<&[String]>,
    limit_per_class: Option<usize>,
    pre: &Preprocessor,
    split: &str,
) -> Result<(Vec<String>, Loaded)> {
    let ds = walk::walk(dir)?;
    if !ds.empty_classes.is_empty() {
        return Err(terr(format!(
            "{}: class folder(s) with no image: {} (remove them or add images; every class \
             folder is a class of the model)",
            dir.display(),
            ds.empty_classes.join(", ")
        )));
    }
    let class_ids: BTreeMap<String, u32> = match classes {
        Some(cs) => cs
            .iter()
            .enumerate()
            .map(|(i, c)| (c.clone(), i as u32))
            .collect(),
        None => ds
            .classes
            .iter()
            .enumerate()
            .map(|(i, c)| (c.clone(), i as u32))
            .collect(),
    };
    if let Some(cs) = classes {
        let extra: Vec<&String> = ds.classes.iter().filter(|c| !cs.contains(c)).collect();
        if !extra.is_empty() {
            return Err(terr(format!(
                "{}: validation class folder(s) not in the training data: {}",
                dir.display(),
                extra
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    let mut per_class: BTreeMap<&str, usize> = BTreeMap::new();
    let mut loaded = Loaded {
        items: Vec::new(),
        unreadable: Vec::new(),
        skipped: ds.skipped.len(),
    };
    for e in &ds.entries {
        let n = per_class.entry(e.class.as_str()).or_default();
        if limit_per_class.is_some_and(|l| *n >= l) {
            continue;
        }
        *n += 1;
        let res = match &e.problem {
            Some(p) => Err(p.clone()),
            None => pre.load(&e.path),
        };
        match res {
            Ok(t) => loaded.items.push((e.rel.clone(), class_ids[&e.class], t)),
            Err(reason) => loaded.unreadable.push(Unreadable {
                rel: e.rel.clone(),
                reason,
                split: split.into(),
            }),
        }
    }
    Ok((ds.classes, loaded))
}

fn to_split(items: &[(String, u32, Vec<f32>)], idx: &[usize]) -> Split {
    let mut s = Split {
        pixels: Vec::new(),
        labels: Vec::new(),
    };
    for &i in idx {
        s.pixels.extend_from_slice(&items[i].2);
        s.labels.push(items[i].1);
    }
    s
}

/// Stratified split: per class, a seeded shuffle, then `round(frac * n)` held out
/// (at least one when `frac > 0`, never the class's last image).
fn stratified(labels: &[u32], frac: f64, rng: &mut StdRng) -> (Vec<usize>, Vec<usize>) {
    let mut by_class: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (i, l) in labels.iter().enumerate() {
        by_class.entry(*l).or_default().push(i);
    }
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (_, mut idx) in by_class {
        idx.shuffle(rng);
        let n = idx.len();
        let mut k = (frac * n as f64).round() as usize;
        if frac > 0.0 {
            k = k.max(1);
        }
        k = k.min(n - 1);
        val.extend_from_slice(&idx[..k]);
        train.extend_from_slice(&idx[k..]);
    }
    train.sort_unstable();
    val.sort_unstable();
    (train, val)
}

/// Shift a CHW image by (dy, dx) pixels, filling with each channel's value for black.
fn shift_into(src: &[f32], dst: &mut [f32], side: usize, dy: i64, dx: i64, fill: &[f32; 3]) {
    let plane = side * side;
    for ch in 0..3 {
        for y in 0..side {
            for x in 0..side {
                let (sy, sx) = (y as i64 - dy, x as i64 - dx);
                dst[ch * plane + y * side + x] =
                    if sy >= 0 && sx >= 0 && (sy as usize) < side && (sx as usize) < side {
                        src[ch * plane + sy as usize * side + sx as usize]
                    } else {
                        fill[ch]
                    };
            }
        }
    }
}

/// Learning rate at `step` (0-based): linear warm-up to `base`, then cosine to 0.
pub fn lr_at(step: usize, total: usize, warmup: usize, base: f64) -> f64 {
    if step < warmup {
        return base * (step + 1) as f64 / warmup as f64;
    }
    let rest = (total - warmup).max(1) as f64;
    let t = (step - warmup) as f64 / rest;
    base * 0.5 * (1.0 + (PI * t).cos())
}

/// Mean loss and accuracy of `model` on `split`, in batches.
fn evaluate(model: &VitModel, split: &Split, side: usize, bs: usize) -> Result<(f64, f64)> {
    let per = 3 * side * side;
    let (mut loss, mut correct) = (0.0f64, 0usize);
    let n = split.len();
    let mut start = 0;
    while start < n {
        let end = (start + bs).min(n);
        let x = Tensor::from_slice(
            &split.pixels[start * per..end * per],
            (end - start, 3, side, side),
            &Device::Cpu,
        )?;
        let y = Tensor::from_slice(&split.labels[start..end], end - start, &Device::Cpu)?;
        let logits = model.forward(&x)?.detach();
        let l = candle_nn::loss::cross_entropy(&logits, &y)?.to_scalar::<f32>()? as f64;
        loss += l * (end - start) as f64;
        let pred = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
        correct += pred
            .iter()
            .zip(&split.labels[start..end])
            .filter(|(a, b)| a == b)
            .count();
        start = end;
    }
    Ok((loss / n as f64, correct as f64 / n as f64))
}

/// Prepare the output folder: created if missing; an existing folder must be empty or
/// hold a previous checkpoint (`model.safetensors`), whose files are replaced.
fn prepare_out(out: &Path, data_dir: &Path) -> Result<()> {
    if let (Ok(a), Ok(b)) = (out.canonicalize(), data_dir.canonicalize()) {
        if a == b || a.starts_with(&b) {
            return Err(Error::Output {
                what: format!(
                    "refusing to write the checkpoint inside the data folder ({})",
                    out.display()
                ),
            });
        }
    }
    if out.exists() {
        if !out.is_dir() {
            return Err(Error::Output {
                what: format!("{} exists and is not a folder", out.display()),
            });
        }
        let empty = std::fs::read_dir(out)
            .map_err(|e| Error::io(out, e))?
            .next()
            .is_none();
        if !empty && !out.join("model.safetensors").exists() {
            return Err(Error::Output {
                what: format!(
                    "{} is not empty and holds no model.safetensors from a previous run; \
                     choose an empty or new folder",
                    out.display()
                ),
            });
        }
    } else {
        std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    }
    Ok(())
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|e| Error::io(path, e))
}

/// Train according to `opts` and write the checkpoint folder. Bad input (no images,
/// one class, an empty class folder, bad numbers) is an [`Error`], never a panic.
pub fn train(opts: &TrainOptions, progress: &mut dyn Progress) -> Result<TrainSummary> {
    let t0 = Instant::now();
    opts.validate()?;
    if let Some(t) = opts.threads {
        // candle's CPU kernels read this for their parallelism (see the module comment).
        std::env::set_var("RAYON_NUM_THREADS", t.to_string());
    }
    let threads = candle_core::utils::get_num_threads();
    // The architecture (labels filled in below); fails early on an unknown preset.
    VitConfig::preset(&opts.preset, 2)?;
    let side0 = VitConfig::preset(&opts.preset, 2)?.image_size;
    let pp_cfg = PreprocessConfig::vit_default(side0 as u32);
    let pre = Preprocessor::new(pp_cfg.clone())?;

    let (classes, train_loaded) =
        load_folder(&opts.data_dir, None, opts.limit_per_class, &pre, "train")?;
    if classes.len() < 2 {
        return Err(terr(format!(
            "{}: found {} class folder(s) ({}); a classifier needs at least 2",
            opts.data_dir.display(),
            classes.len(),
            classes.join(", ")
        )));
    }
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let mut unreadable = train_loaded.unreadable.clone();
    let mut skipped = train_loaded.skipped;
    let items = train_loaded.items;
    for (ci, c) in classes.iter().enumerate() {
        if !items.iter().any(|it| it.1 == ci as u32) {
            return Err(terr(format!(
                "class '{c}' has no readable image ({} unreadable)",
                unreadable
                    .iter()
                    .filter(|u| u.rel.starts_with(&format!("{c}/")))
                    .count()
            )));
        }
    }
    let labels: Vec<u32> = items.iter().map(|it| it.1).collect();
    let (train_set, val_set) = match &opts.val {
        None => {
            let (tr, va) = stratified(&labels, opts.val_split, &mut rng);
            (to_split(&items, &tr), to_split(&items, &va))
        }
        Some(dir) => {
            let (_, vl) = load_folder(dir, Some(&classes), None, &pre, "val")?;
            unreadable.extend(vl.unreadable);
            skipped += vl.skipped;
            let all: Vec<usize> = (0..items.len()).collect();
            let vidx: Vec<usize> = (0..vl.items.len()).collect();
            (to_split(&items, &all), to_split(&vl.items, &vidx))
        }
    };
    drop(items);

    let mut cfg = VitConfig::preset(&opts.preset, classes.len())?;
    cfg.set_labels(&classes);
    cfg.validate()?;
    let side = cfg.image_size;
    let per = 3 * side * side;

    let params = init_parameters(&cfg, rng.random())?;
    let num_params = params.iter().map(|(_, t)| t.elem_count()).sum();
    let varmap = varmap_from(params)?;
    let (decay, no_decay): (Vec<Var>, Vec<Var>) = {
        let data = varmap.data().lock().map_err(|_| terr("lock poisoned"))?;
        let mut names: Vec<&String> = data.keys().collect();
        names.sort();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for n in names {
            if decays(n) {
                a.push(data[n].clone());
            } else {
                b.push(data[n].clone());
            }
        }
        (a, b)
    };
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let model = VitModel::new(vb, &cfg)?;
    let mut opt_decay = AdamW::new(
        decay,
        ParamsAdamW {
            lr: opts.lr,
            weight_decay: opts.weight_decay,
            ..Default::default()
        },
    )?;
    let mut opt_plain = AdamW::new(
        no_decay,
        ParamsAdamW {
            lr: opts.lr,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;

    let n = train_set.len();
    let steps_per_epoch = n.div_ceil(opts.batch_size);
    let total = steps_per_epoch * opts.epochs;
    let warmup = opts
        .warmup_steps
        .unwrap_or((opts.warmup * total as f64).round() as usize)
        .min(total.saturating_sub(1));
    // Black in the normalized space (what the digits' background and shifts fill with).
    let fill = [
        (0.0 - pp_cfg.image_mean[0]) / pp_cfg.image_std[0],
        (0.0 - pp_cfg.image_mean[1]) / pp_cfg.image_std[1],
        (0.0 - pp_cfg.image_mean[2]) / pp_cfg.image_std[2],
    ];

    progress.note(&format!(
        "train: {} classes, {} train / {} val images, {} unreadable; {} params; \
         {} epochs x {} steps, batch {}, lr {}, {} thread(s)",
        classes.len(),
        n,
        val_set.len(),
        unreadable.len(),
        num_params,
        opts.epochs,
        steps_per_epoch,
        opts.batch_size,
        opts.lr,
        threads
    ));
    for u in &unreadable {
        progress.note(&format!(
            "  unreadable ({}): {}: {}",
            u.split, u.rel, u.reason
        ));
    }

    progress.start("steps", total as u64, 0);
    let mut order: Vec<usize> = (0..n).collect();
    let mut batch = Vec::with_capacity(opts.batch_size * per);
    let mut epochs = Vec::new();
    let mut step = 0usize;
    let shift = opts.augment_shift as i64;
    for epoch in 1..=opts.epochs {
        let te = Instant::now();
        order.shuffle(&mut rng);
        let (mut loss_sum, mut correct) = (0.0f64, 0usize);
        let mut lr = opts.lr;
        for chunk in order.chunks(opts.batch_size) {
            batch.clear();
            batch.resize(chunk.len() * per, 0.0);
            let mut ys = Vec::with_capacity(chunk.len());
            for (j, &i) in chunk.iter().enumerate() {
                let src = &train_set.pixels[i * per..(i + 1) * per];
                let dst = &mut batch[j * per..(j + 1) * per];
                if shift > 0 {
                    let dy = rng.random_range(-shift..=shift);
                    let dx = rng.random_range(-shift..=shift);
                    shift_into(src, dst, side, dy, dx, &fill);
                } else {
                    dst.copy_from_slice(src);
                }
                ys.push(train_set.labels[i]);
            }
            let x = Tensor::from_slice(&batch, (chunk.len(), 3, side, side), &Device::Cpu)?;
            let y = Tensor::from_slice(&ys, chunk.len(), &Device::Cpu)?;
            let logits = model.forward(&x)?;
            let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
            let l = loss.to_scalar::<f32>()? as f64;
            if !l.is_finite() {
                return Err(terr(format!(
                    "loss became {l} at epoch {epoch}, step {step}; try a lower --lr"
                )));
            }
            lr = lr_at(step, total, warmup, opts.lr);
            opt_decay.set_learning_rate(lr);
            opt_plain.set_learning_rate(lr);
            let grads = loss.backward()?;
            opt_decay.step(&grads)?;
            opt_plain.step(&grads)?;
            loss_sum += l * chunk.len() as f64;
            let pred = logits.detach().argmax(D::Minus1)?.to_vec1::<u32>()?;
            correct += pred.iter().zip(&ys).filter(|(a, b)| a == b).count();
            step += 1;
            progress.advance(1);
        }
        let (val_loss, val_accuracy) = if val_set.len() > 0 {
            let (l, a) = evaluate(&model, &val_set, side, 256)?;
            (Some(l), Some(a))
        } else {
            (None, None)
        };
        let st = EpochStats {
            epoch,
            train_loss: loss_sum / n as f64,
            train_accuracy: correct as f64 / n as f64,
            val_loss,
            val_accuracy,
            lr,
            seconds: te.elapsed().as_secs_f64(),
        };
        progress.note(&format!(
            "epoch {:>3}/{}: loss {:.4}, train acc {:.2}%{}, lr {:.2e}, {:.1}s",
            epoch,
            opts.epochs,
            st.train_loss,
            100.0 * st.train_accuracy,
            match (st.val_loss, st.val_accuracy) {
                (Some(l), Some(a)) => format!(", val loss {l:.4}, val acc {:.2}%", 100.0 * a),
                _ => String::new(),
            },
            st.lr,
            st.seconds
        ));
        epochs.push(st);
    }
    progress.finish();

    prepare_out(&opts.out, &opts.data_dir)?;
    let st_path = opts.out.join("model.safetensors");
    varmap.save(&st_path).map_err(|e| Error::Output {
        what: format!("{}: {e}", st_path.display()),
    })?;
    // candle writes the file 0600; a checkpoint is meant to be shared.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&st_path, std::fs::Permissions::from_mode(0o644))
            .map_err(|e| Error::io(&st_path, e))?;
    }
    write_file(&opts.out.join("config.json"), cfg.to_json().as_bytes())?;
    let pp_json = serde_json::to_string_pretty(&pp_cfg)?;
    write_file(
        &opts.out.join("preprocessor_config.json"),
        pp_json.as_bytes(),
    )?;
    let summary = TrainSummary {
        out_dir: opts.out.clone(),
        preset: opts.preset.clone(),
        classes,
        num_train: n,
        num_val: val_set.len(),
        num_params,
        steps: step,
        epochs,
        unreadable,
        skipped_files: skipped,
        threads,
        seed: opts.seed,
        wall_s: t0.elapsed().as_secs_f64(),
    };
    write_file(
        &opts.out.join("training_log.json"),
        serde_json::to_string_pretty(&summary)?.as_bytes(),
    )?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        assert!((lr_at(0, 100, 10, 1.0) - 0.1).abs() < 1e-12);
        assert!((lr_at(9, 100, 10, 1.0) - 1.0).abs() < 1e-12);
        assert!((lr_at(10, 100, 10, 1.0) - 1.0).abs() < 1e-12);
        assert!(lr_at(99, 100, 10, 1.0) < 0.01);
        assert!(lr_at(55, 100, 10, 1.0) < lr_at(30, 100, 10, 1.0));
    }

    #[test]
    fn stratified_split_keeps_every_class_in_both() {
        let labels: Vec<u32> = (0..100).map(|i| (i % 4) as u32).collect();
        let (tr, va) = stratified(&labels, 0.2, &mut StdRng::seed_from_u64(1));
        assert_eq!(tr.len() + va.len(), 100);
        assert_eq!(va.len(), 20);
        for c in 0..4 {
            assert_eq!(va.iter().filter(|&&i| labels[i] == c).count(), 5);
        }
        let (tr2, va2) = stratified(&labels, 0.2, &mut StdRng::seed_from_u64(1));
        assert_eq!((tr, va), (tr2, va2));
    }

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
        let model =
            VitModel::new(VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu), &cfg).unwrap();
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

    #[test]
    fn shift_moves_pixels_and_fills() {
        let src: Vec<f32> = (0..3 * 4).map(|i| i as f32).collect();
        let mut dst = vec![0.0; 12];
        shift_into(&src, &mut dst, 2, 0, 1, &[-1.0, -2.0, -3.0]);
        assert_eq!(&dst[0..4], &[-1.0, 0.0, -1.0, 2.0]);
    }
}
