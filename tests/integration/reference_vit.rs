//! An independent reference forward pass of a ViT / DeiT classifier, in plain f64
//! loops over Hugging Face-named tensors.
//!
//! Why it exists: the exported ONNX graph is checked against this, so it shares no
//! code with `vit_batch::export` (not the graph builder, not the weight reader). It
//! is written straight from the architecture: patches → linear embedding → prepend
//! [CLS] (and DeiT's distillation token) → add position embeddings → L pre-norm
//! blocks (LN → MHSA → residual; LN → MLP(GELU) → residual) → final LN → head(s).
#![allow(dead_code, clippy::needless_range_loop)] // index loops mirror the maths

use std::collections::BTreeMap;

/// name → (shape, values), HF names (`vit.` or `deit.` prefix).
pub type Tensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

pub struct RefConfig {
    pub prefix: &'static str, // "vit" or "deit"
    pub image: usize,
    pub patch: usize,
    pub channels: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub eps: f64,
    /// false: exact erf GELU; true: tanh approximation
    pub tanh_gelu: bool,
}

pub struct RefOutput {
    /// [batch][classes]
    pub logits: Vec<Vec<f64>>,
    /// [layer][batch][head][query][key]
    pub attentions: Vec<Vec<Vec<Vec<Vec<f64>>>>>,
}

/// erf in f64: Maclaurin series below 2.5, erfc's continued fraction above
/// (absolute error below 1e-12, checked against tabulated values).
pub fn erf(x: f64) -> f64 {
    let sign = if x < 0.0 { -1.0 } else { 1.0 };
    let x = x.abs();
    if x > 6.0 {
        return sign;
    }
    // Taylor series for small x, continued fraction (Lentz) for erfc at large x.
    if x < 2.5 {
        let mut sum = 0.0f64;
        let mut term = x;
        let mut n = 0.0;
        while term.abs() > 1e-17 * sum.abs().max(1e-300) || n < 3.0 {
            sum += term / (2.0 * n + 1.0);
            n += 1.0;
            term *= -x * x / n;
            if n > 200.0 {
                break;
            }
        }
        sign * sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        // erfc(x) = exp(-x²)/√π · 1/(x + 1/2/(x + 1/(x + 3/2/(x + ...))))
        let mut f = x;
        for k in (1..60).rev() {
            f = x + (k as f64 / 2.0) / f;
        }
        let erfc = (-x * x).exp() / std::f64::consts::PI.sqrt() / f;
        sign * (1.0 - erfc)
    }
}

fn gelu(x: f64, tanh: bool) -> f64 {
    if tanh {
        0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh())
    } else {
        0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2))
    }
}

fn get<'a>(t: &'a Tensors, name: &str) -> &'a [f32] {
    &t.get(name)
        .unwrap_or_else(|| panic!("reference: missing {name}"))
        .1
}

/// y[o] = Σ_i x[i]·W[o][i] + b[o] (PyTorch Linear, W stored [out, in]).
fn linear(x: &[f64], w: &[f32], b: Option<&[f32]>, out: usize) -> Vec<f64> {
    let inp = x.len();
    (0..out)
        .map(|o| {
            let row = &w[o * inp..(o + 1) * inp];
            let mut acc = b.map_or(0.0, |b| b[o] as f64);
            for i in 0..inp {
                acc += x[i] * row[i] as f64;
            }
            acc
        })
        .collect()
}

fn layer_norm(x: &[f64], g: &[f32], b: &[f32], eps: f64) -> Vec<f64> {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    let inv = 1.0 / (var + eps).sqrt();
    x.iter()
        .enumerate()
        .map(|(i, v)| (v - mean) * inv * g[i] as f64 + b[i] as f64)
        .collect()
}

/// Forward `batch` images (`pixels` is [batch, C, H, W] row-major).
///
/// Long on purpose: it is the independent oracle, written as one straight reading of
/// the ViT forward pass (patches, tokens, blocks, head) so it can be checked against
/// the paper line by line; splitting it would hide the order of the steps.
pub fn forward(c: &RefConfig, t: &Tensors, pixels: &[f32], batch: usize) -> RefOutput {
    let p = c.prefix;
    let d = c.hidden;
    let grid = c.image / c.patch;
    let dh = d / c.heads;
    let has_dist = t.contains_key(&format!("{p}.embeddings.distillation_token"));
    let mut logits = Vec::new();
    let mut attentions: Vec<Vec<Vec<Vec<Vec<f64>>>>> = vec![Vec::new(); c.layers];
    let img_len = c.channels * c.image * c.image;
    for bi in 0..batch {
        let img = &pixels[bi * img_len..(bi + 1) * img_len];
        // 1. Patches and their linear embedding, row-major over the patch grid.
        let pw = get(
            t,
            &format!("{p}.embeddings.patch_embeddings.projection.weight"),
        );
        let pb = get(
            t,
            &format!("{p}.embeddings.patch_embeddings.projection.bias"),
        );
        let mut tokens: Vec<Vec<f64>> = Vec::new();
        tokens.push(
            get(t, &format!("{p}.embeddings.cls_token"))
                .iter()
                .map(|&v| v as f64)
                .collect(),
        );
        if has_dist {
            tokens.push(
                get(t, &format!("{p}.embeddings.distillation_token"))
                    .iter()
                    .map(|&v| v as f64)
                    .collect(),
            );
        }
        for gy in 0..grid {
            for gx in 0..grid {
                let mut e = vec![0.0f64; d];
                for (o, eo) in e.iter_mut().enumerate() {
                    let mut acc = pb[o] as f64;
                    for ch in 0..c.channels {
                        for ky in 0..c.patch {
                            for kx in 0..c.patch {
                                let wv = pw[((o * c.channels + ch) * c.patch + ky) * c.patch + kx]
                                    as f64;
                                let y = gy * c.patch + ky;
                                let x = gx * c.patch + kx;
                                acc += wv * img[(ch * c.image + y) * c.image + x] as f64;
                            }
                        }
                    }
                    *eo = acc;
                }
                tokens.push(e);
            }
        }
        // 2. Position embeddings.
        let pos = get(t, &format!("{p}.embeddings.position_embeddings"));
        let s = tokens.len();
        for (j, tok) in tokens.iter_mut().enumerate() {
            for k in 0..d {
                tok[k] += pos[j * d + k] as f64;
            }
        }
        // 3. Encoder blocks.
        let mut h = tokens;
        for li in 0..c.layers {
            let l = format!("{p}.encoder.layer.{li}");
            let opt = |n: &str| t.get(n).map(|x| x.1.as_slice());
            let ln1: Vec<Vec<f64>> = h
                .iter()
                .map(|x| {
                    layer_norm(
                        x,
                        get(t, &format!("{l}.layernorm_before.weight")),
                        get(t, &format!("{l}.layernorm_before.bias")),
                        c.eps,
                    )
                })
                .collect();
            let proj = |name: &str| -> Vec<Vec<f64>> {
                let w = get(t, &format!("{l}.attention.attention.{name}.weight"));
                let b = opt(&format!("{l}.attention.attention.{name}.bias"));
                ln1.iter().map(|x| linear(x, w, b, d)).collect()
            };
            let (q, k, v) = (proj("query"), proj("key"), proj("value"));
            let mut concat = vec![vec![0.0f64; d]; s];
            let mut layer_probs = Vec::new();
            for hd in 0..c.heads {
                let off = hd * dh;
                let mut probs = vec![vec![0.0f64; s]; s];
                for i in 0..s {
                    let mut scores: Vec<f64> = (0..s)
                        .map(|j| {
                            (0..dh).map(|e| q[i][off + e] * k[j][off + e]).sum::<f64>()
                                / (dh as f64).sqrt()
                        })
                        .collect();
                    let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let mut z = 0.0;
                    for sc in scores.iter_mut() {
                        *sc = (*sc - m).exp();
                        z += *sc;
                    }
                    for (j, sc) in scores.iter().enumerate() {
                        probs[i][j] = sc / z;
                    }
                    for e in 0..dh {
                        concat[i][off + e] = (0..s).map(|j| probs[i][j] * v[j][off + e]).sum();
                    }
                }
                layer_probs.push(probs);
            }
            attentions[li].push(layer_probs);
            let ow = get(t, &format!("{l}.attention.output.dense.weight"));
            let ob = get(t, &format!("{l}.attention.output.dense.bias"));
            for i in 0..s {
                let o = linear(&concat[i], ow, Some(ob), d);
                for e in 0..d {
                    h[i][e] += o[e];
                }
            }
            let w1 = get(t, &format!("{l}.intermediate.dense.weight"));
            let b1 = get(t, &format!("{l}.intermediate.dense.bias"));
            let w2 = get(t, &format!("{l}.output.dense.weight"));
            let b2 = get(t, &format!("{l}.output.dense.bias"));
            let inter = b1.len();
            for hi in h.iter_mut() {
                let x = layer_norm(
                    hi,
                    get(t, &format!("{l}.layernorm_after.weight")),
                    get(t, &format!("{l}.layernorm_after.bias")),
                    c.eps,
                );
                let f: Vec<f64> = linear(&x, w1, Some(b1), inter)
                    .into_iter()
                    .map(|v| gelu(v, c.tanh_gelu))
                    .collect();
                let o = linear(&f, w2, Some(b2), d);
                for e in 0..d {
                    hi[e] += o[e];
                }
            }
        }
        // 4. Final LayerNorm and the classifier head(s).
        let fin: Vec<Vec<f64>> = h
            .iter()
            .map(|x| {
                layer_norm(
                    x,
                    get(t, &format!("{p}.layernorm.weight")),
                    get(t, &format!("{p}.layernorm.bias")),
                    c.eps,
                )
            })
            .collect();
        let out = if t.contains_key("cls_classifier.weight") {
            let b = get(t, "cls_classifier.bias");
            let a = linear(&fin[0], get(t, "cls_classifier.weight"), Some(b), b.len());
            let dd = linear(
                &fin[1],
                get(t, "distillation_classifier.weight"),
                Some(get(t, "distillation_classifier.bias")),
                b.len(),
            );
            a.iter().zip(&dd).map(|(x, y)| (x + y) / 2.0).collect()
        } else {
            let b = get(t, "classifier.bias");
            linear(&fin[0], get(t, "classifier.weight"), Some(b), b.len())
        };
        logits.push(out);
    }
    RefOutput { logits, attentions }
}

#[test]
fn erf_matches_known_values() {
    // erf values from tables (15 digits).
    for (x, want) in [
        (0.0, 0.0),
        (0.5, 0.520_499_877_813_047),
        (1.0, 0.842_700_792_949_715),
        (2.0, 0.995_322_265_018_953),
        (2.6, 0.999_763_965_583_347),
        (3.5, 0.999_999_256_901_628),
        (-1.0, -0.842_700_792_949_715),
    ] {
        assert!(
            (erf(x) - want).abs() < 1e-12,
            "erf({x}) = {} want {want}",
            erf(x)
        );
    }
}
