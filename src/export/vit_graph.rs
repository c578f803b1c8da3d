//! The ViT classifier as an ONNX graph, built step by step in the order the
//! architecture is usually described.
//!
//! Why it exists: this is the one place that decides what `model.onnx` computes. The
//! steps are: patches (Conv with kernel = stride = P) → flatten → linear embedding (the
//! Conv is that linear map) → prepend the learnable [CLS] (and DeiT's distillation)
//! token → add position embeddings → L pre-norm blocks (LayerNorm → multi-head
//! self-attention: Q, K, V; Q·Kᵀ/√d_head; softmax; ·V; heads concatenated; output
//! projection → residual; LayerNorm → MLP with GELU → residual) → final LayerNorm →
//! [CLS] → classifier → `logits`. (Cutting patches with Reshape/Transpose and one
//! `Gemm` instead of the Conv measured slower for ViT-Ti on ONNX Runtime 1.31: the
//! 6-D Transpose alone cost 2.7 ms next to a 4.6 ms Conv, batch 8.)
//!
//! One exact shortcut: only the [CLS] (and distillation) token is read after the last
//! block, and every step after attention is per token, so the last block computes
//! queries, attention rows, projection and MLP for those tokens only. It does not
//! project keys or values for all tokens either: with a handful of query rows,
//! (q·W_k)·Xᵀ and W_v·(P·X)ᵀ are the same products regrouped, at O(S·D) instead of
//! O(S·D²) (see [`cls_attention`]). Skipped when `with_attentions` asks for every
//! query's attention row.
//!
//! Two variants:
//! - [`GraphVariant::Standard`]: only default-domain ONNX ops. The token stream is
//!   kept as a 2-D `[batch*S, D]` matrix so every Linear is one `Gemm` with
//!   `transB = 1`, which reads Hugging Face's `[out, in]` weights as stored (no copy).
//! - [`GraphVariant::Fused`]: ONNX Runtime's `com.microsoft` contrib ops `Attention`
//!   (QKV projection + scaled dot-product attention in one kernel; its packed `[D, 3D]`
//!   weight is the one tensor we re-lay out, a copy of 3·D² floats per layer) and
//!   `BiasGelu`/`FastGelu` (fc1's bias added in the activation's pass: a `Gemm` bias
//!   is its own broadcast pass over the `[rows, 4D]` output, measured 0.75 ms of
//!   3.7 ms for ViT-Ti's fc1 at batch 8). With `with_attentions` the attention
//!   probabilities must be graph outputs, which the fused `Attention` kernel does not
//!   expose, so that variant keeps the unfused attention and fuses only GELU. The last
//!   block always uses the unfused [CLS]-only attention.
//!   `SkipLayerNormalization` (residual add + LayerNorm) is deliberately NOT used: on
//!   ONNX Runtime 1.31's CPU provider it measured about 4x slower than `Add` +
//!   `LayerNormalization` for ViT-Ti shapes ([1576, 192]: 3.8 ms vs 0.9 ms, 2 threads).
//!   Nor is `MultiHeadAttention` after separate Q/K/V projections: no faster than
//!   `Attention` (ViT-Ti, batch 8, round-robin).

use std::borrow::Cow;

use super::graph::{Attr, BuiltModel, Dim, GraphBuilder, MS_DOMAIN};
use super::weights::{Tensor, VitWeights};
use super::GraphVariant;
use crate::error::{Error, Result};
use crate::vit::VitConfig;

/// Default-domain opsets the builder emits (LayerNormalization needs 17).
pub(crate) const OPSETS: std::ops::RangeInclusive<i64> = 17..=23;

/// What the graph should contain beyond the weights.
#[derive(Debug, Clone)]
pub(crate) struct GraphOptions {
    /// Default-domain opset (17..=23; LayerNormalization needs 17).
    pub opset: i64,
    /// Add outputs `attentions.{i}` `[batch, heads, S, S]` (softmax probabilities).
    pub with_attentions: bool,
    pub variant: GraphVariant,
    /// `metadata_props` of the model.
    pub metadata: Vec<(String, String)>,
}

#[derive(Clone, Copy, PartialEq)]
enum Act {
    Erf,
    Tanh,
}

fn act_of(cfg: &VitConfig) -> Result<Act> {
    match cfg.hidden_act.as_str() {
        "gelu" => Ok(Act::Erf),
        "gelu_new" | "gelu_pytorch_tanh" => Ok(Act::Tanh),
        other => Err(Error::Config {
            what: format!(
                "unsupported hidden_act '{other}' (supported: gelu, gelu_new, gelu_pytorch_tanh)"
            ),
        }),
    }
}

fn linear<'b>(
    g: &mut GraphBuilder<'b>,
    x: &str,
    name: &str,
    wt: &'b Tensor<'_>,
    bias: Option<&'b Tensor<'_>>,
) -> String {
    let wn = w(g, &format!("{name}.weight"), wt);
    let bn = bias.map(|b| w(g, &format!("{name}.bias"), b));
    let mut ins = vec![x, wn.as_str()];
    if let Some(b) = &bn {
        ins.push(b);
    }
    g.op("Gemm", &ins, &[("transB", Attr::Int(1))], name)
}

fn layer_norm<'b>(
    g: &mut GraphBuilder<'b>,
    x: &str,
    name: &str,
    gw: &'b Tensor<'_>,
    gb: &'b Tensor<'_>,
    eps: f32,
) -> String {
    let wn = w(g, &format!("{name}.weight"), gw);
    let bn = w(g, &format!("{name}.bias"), gb);
    g.op(
        "LayerNormalization",
        &[x, &wn, &bn],
        &[("axis", Attr::Int(-1)), ("epsilon", Attr::Float(eps))],
        name,
    )
}

fn w<'b>(g: &mut GraphBuilder<'b>, name: &str, t: &'b Tensor<'_>) -> String {
    g.weight(name, &t.shape, Cow::Borrowed(&t.data))
}

/// Build the graph for `cfg` and `weights`. Payloads borrow from `weights`.
pub(crate) fn build_vit<'b>(
    cfg: &VitConfig,
    weights: &'b VitWeights<'_>,
    opts: &GraphOptions,
) -> Result<BuiltModel<'b>> {
    cfg.validate()?;
    let act = act_of(cfg)?;
    if !OPSETS.contains(&opts.opset) {
        return Err(Error::Config {
            what: format!("opset {} is not supported ({OPSETS:?})", opts.opset),
        });
    }
    let mut g = GraphBuilder::new("vit");
    let emb = embeddings(&mut g, cfg, weights);
    let d = cfg.hidden_size as i64;
    let dh = cfg.head_dim() as i64;
    let n_extra = 1 + weights.dist_token.is_some() as i64;
    // The encoder works on a [B*S, D] matrix (Gemm wants 2-D); attention reshapes.
    // Shape constants come from `g.shape`, made where first used, so that a variant
    // holds only those it reads.
    let shape_2d = g.shape("shape_rows_d", &[-1, d]);
    let scale = g.const_f32("attn_scale", &[], &[1.0 / (dh as f32).sqrt()]);
    let mut h = g.op("Reshape", &[&emb, &shape_2d], &[], "hidden_0");
    let mut enc = Encoder {
        dims: Dims {
            d,
            heads: cfg.num_attention_heads as i64,
            dh,
            s: cfg.num_patches() as i64 + n_extra,
            n_extra,
        },
        eps: cfg.layer_norm_eps as f32,
        act,
        fused: opts.variant == GraphVariant::Fused,
        with_attentions: opts.with_attentions,
        shape_2d,
        scale,
        rows_out: cfg.num_patches() as i64 + n_extra,
    };
    // Only the [CLS] (and distillation) token leaves the last block, so that block
    // computes queries, attention, projection and MLP for those `n_extra` rows only,
    // and attends without projecting keys or values ([`cls_attention`]): exact, and
    // about 1/L less work. Not with attention outputs, which need every query of the
    // last layer too.
    let nl = weights.layers.len();
    for (i, l) in weights.layers.iter().enumerate() {
        let cls_only = i + 1 == nl && !opts.with_attentions;
        h = enc.block(&mut g, i, l, h, cls_only);
    }
    let logits = classifier(&mut g, weights, &h, enc.rows_out, d, enc.eps)?;
    g.output(&logits, &[batch(), Dim::Fixed(cfg.num_labels() as i64)]);
    Ok(g.finish(opts.opset, env!("CARGO_PKG_VERSION"), &opts.metadata))
}

fn batch() -> Dim {
    Dim::Param("batch".into())
}

/// Steps 1-4: pixels to the embedded token sequence `[B, S, D]`.
fn embeddings<'b>(
    g: &mut GraphBuilder<'b>,
    cfg: &VitConfig,
    weights: &'b VitWeights<'_>,
) -> String {
    let d = cfg.hidden_size as i64;
    let p = cfg.patch_size as i64;
    // 1. Patches: a Conv with kernel = stride = P is "cut into P×P patches, flatten,
    //    multiply by the embedding matrix" in one op: [B, C, H, W] → [B, D, g, g].
    let x = g.input(
        "pixel_values",
        &[
            batch(),
            Dim::Fixed(cfg.num_channels as i64),
            Dim::Fixed(cfg.image_size as i64),
            Dim::Fixed(cfg.image_size as i64),
        ],
    );
    let pw = w(g, "embeddings.patch.weight", &weights.patch_w);
    let pb = w(g, "embeddings.patch.bias", &weights.patch_b);
    let conv = g.op(
        "Conv",
        &[&x, &pw, &pb],
        &[
            ("kernel_shape", Attr::Ints(vec![p, p])),
            ("strides", Attr::Ints(vec![p, p])),
        ],
        "patch_embeds",
    );
    // 2. Flatten the grid into a sequence: [B, D, g*g] → [B, N, D].
    let shape_bdn = g.shape("shape_b_d_n", &[0, d, -1]);
    let flat = g.op("Reshape", &[&conv, &shape_bdn], &[], "patch_flat");
    let tokens = g.op(
        "Transpose",
        &[&flat],
        &[("perm", Attr::Ints(vec![0, 2, 1]))],
        "patch_tokens",
    );

    // 3. Prepend [CLS] (and DeiT's distillation token), broadcast over the batch.
    let bsz = g.op(
        "Shape",
        &[&x],
        &[("start", Attr::Int(0)), ("end", Attr::Int(1))],
        "batch_size",
    );
    let one_d = g.shape("one_d", &[1, d]);
    let tok_shape = g.op(
        "Concat",
        &[&bsz, &one_d],
        &[("axis", Attr::Int(0))],
        "token_shape",
    );
    let cls = w(g, "embeddings.cls_token", &weights.cls_token);
    let cls_b = g.op("Expand", &[&cls, &tok_shape], &[], "cls_tokens");
    let mut seq_parts = vec![cls_b];
    if let Some(dist) = &weights.dist_token {
        let dt = w(g, "embeddings.distillation_token", dist);
        seq_parts.push(g.op("Expand", &[&dt, &tok_shape], &[], "distillation_tokens"));
    }
    seq_parts.push(tokens);
    let parts: Vec<&str> = seq_parts.iter().map(|s| s.as_str()).collect();
    let seq = g.op(
        "Concat",
        &parts,
        &[("axis", Attr::Int(1))],
        "embeddings_seq",
    );

    // 4. Add position embeddings: [B, S, D].
    let pos = w(g, "embeddings.position_embeddings", &weights.pos_embed);
    g.op("Add", &[&seq, &pos], &[], "embeddings")
}

/// What every encoder block needs: sizes, numerics, the variant, and the shared
/// constants; `rows_out` is the token count per image leaving the last block built.
struct Encoder {
    dims: Dims,
    eps: f32,
    act: Act,
    fused: bool,
    with_attentions: bool,
    shape_2d: String,
    scale: String,
    rows_out: i64,
}

impl Encoder {
    /// Step 5: one pre-norm block on the residual stream `h` `[B*rows, D]`; returns
    /// the new stream (`[B*n_extra, D]` for the [CLS]-only last block).
    fn block<'b>(
        &mut self,
        g: &mut GraphBuilder<'b>,
        i: usize,
        l: &'b super::weights::LayerWeights<'_>,
        mut h: String,
        cls_only: bool,
    ) -> String {
        let pre = format!("layer{i}");
        let fused_attention = self.fused && !self.with_attentions && !cls_only;
        // 5a. LayerNorm before attention.
        let ln1 = layer_norm(
            g,
            &h,
            &format!("{pre}.ln_before"),
            &l.ln1_w,
            &l.ln1_b,
            self.eps,
        );
        // 5b. Multi-head self-attention.
        let ctx2d = if fused_attention {
            self.fused_attention(g, &pre, &ln1, l)
        } else if cls_only {
            let (q_in, hc) = self.cls_rows(g, &pre, i, &ln1, &h);
            h = hc;
            self.rows_out = self.dims.n_extra;
            cls_attention(g, &pre, &ln1, &q_in, l, self.dims, &self.scale)
        } else {
            self.full_attention(g, &pre, i, &ln1, l)
        };
        // 5c. Output projection, residual.
        let o = linear(
            g,
            &ctx2d,
            &format!("{pre}.attn.output"),
            &l.o_w,
            Some(&l.o_b),
        );
        h = g.op("Add", &[&h, &o], &[], &format!("{pre}.hidden_mid"));
        // 5d. LayerNorm after attention.
        let ln2 = layer_norm(
            g,
            &h,
            &format!("{pre}.ln_after"),
            &l.ln2_w,
            &l.ln2_b,
            self.eps,
        );
        let f2 = self.mlp(g, &pre, &ln2, l);
        g.op("Add", &[&h, &f2], &[], &format!("hidden_{}", i + 1))
    }

    /// 5b, fused: ONNX Runtime's `Attention` on the packed Q/K/V weights.
    fn fused_attention<'b>(
        &self,
        g: &mut GraphBuilder<'b>,
        pre: &str,
        ln1: &str,
        l: &'b super::weights::LayerWeights<'_>,
    ) -> String {
        let Dims { d, heads, s, .. } = self.dims;
        let (wqkv, bqkv) = packed_qkv(d as usize, l);
        let wn = g.weight(
            &format!("{pre}.attn.qkv_packed.weight"),
            &wqkv.shape,
            wqkv.data,
        );
        let shape_bsd = g.shape("shape_b_s_d", &[-1, s, d]);
        let x3 = g.op(
            "Reshape",
            &[ln1, &shape_bsd],
            &[],
            &format!("{pre}.attn.input"),
        );
        let bn = g.weight(
            &format!("{pre}.attn.qkv_packed.bias"),
            &bqkv.shape,
            bqkv.data,
        );
        let ins = [x3.as_str(), wn.as_str(), bn.as_str()];
        let ctx = g.op_in(
            MS_DOMAIN,
            "Attention",
            &ins,
            &[("num_heads", Attr::Int(heads))],
            &[&format!("{pre}.attn.context")],
        );
        g.op(
            "Reshape",
            &[&ctx[0], &self.shape_2d],
            &[],
            &format!("{pre}.attn.context_2d"),
        )
    }

    /// The last block's query rows (the leading `n_extra` tokens of `ln1`) and its
    /// residual stream cut to the same rows.
    fn cls_rows(
        &self,
        g: &mut GraphBuilder<'_>,
        pre: &str,
        i: usize,
        ln1: &str,
        h: &str,
    ) -> (String, String) {
        let Dims { d, s, n_extra, .. } = self.dims;
        let starts = g.const_i64("slice_starts", &[0], false);
        let ends = g.const_i64("slice_ends", &[n_extra], false);
        let axes = g.const_i64("slice_axes", &[1], false);
        let take = |g: &mut GraphBuilder<'_>, x: &str, name: &str| {
            let shape_bsd = g.shape("shape_b_s_d", &[-1, s, d]);
            let x3 = g.op("Reshape", &[x, &shape_bsd], &[], &format!("{name}_3d"));
            let sl = g.op(
                "Slice",
                &[&x3, &starts, &ends, &axes],
                &[],
                &format!("{name}_cls3d"),
            );
            g.op(
                "Reshape",
                &[&sl, &self.shape_2d],
                &[],
                &format!("{name}_cls"),
            )
        };
        let q_in = take(g, ln1, &format!("{pre}.ln_before"));
        let h = take(g, h, &format!("hidden_{i}"));
        (q_in, h)
    }

    /// 5b, standard: Q, K, V projections, softmax(QKᵀ/√dh)·V per head, heads merged;
    /// the probabilities are graph outputs `attentions.{i}` when asked for.
    fn full_attention<'b>(
        &self,
        g: &mut GraphBuilder<'b>,
        pre: &str,
        i: usize,
        ln1: &str,
        l: &'b super::weights::LayerWeights<'_>,
    ) -> String {
        let Dims { heads, dh, s, .. } = self.dims;
        let q = linear(g, ln1, &format!("{pre}.attn.query"), &l.q_w, l.q_b.as_ref());
        let k = linear(g, ln1, &format!("{pre}.attn.key"), &l.k_w, l.k_b.as_ref());
        let v = linear(g, ln1, &format!("{pre}.attn.value"), &l.v_w, l.v_b.as_ref());
        // [B, H, S, dh], Kᵀ as [B, H, dh, S]
        let shape_bshd = g.shape("shape_b_s_h_dh", &[-1, s, heads, dh]);
        let qh = split_heads(g, &q, &shape_bshd, [0, 2, 1, 3]);
        let kt = split_heads(g, &k, &shape_bshd, [0, 2, 3, 1]);
        let vh = split_heads(g, &v, &shape_bshd, [0, 2, 1, 3]);
        let probs_name = if self.with_attentions {
            format!("attentions.{i}")
        } else {
            format!("{pre}.attn.probs")
        };
        let probs = attention_probs(g, pre, &qh, &kt, &self.scale, &probs_name);
        if self.with_attentions {
            debug_assert_eq!(probs, probs_name);
            g.output(
                &probs,
                &[batch(), Dim::Fixed(heads), Dim::Fixed(s), Dim::Fixed(s)],
            );
        }
        let ctx = g.op(
            "MatMul",
            &[&probs, &vh],
            &[],
            &format!("{pre}.attn.context_heads"),
        );
        merge_heads(g, pre, &ctx, &self.shape_2d)
    }

    /// 5e. MLP: D → I, GELU, I → D (the residual add is the caller's). Fused: fc1
    /// without its bias, which BiasGelu / FastGelu add in the same pass as the
    /// activation (a Gemm bias is a separate broadcast pass over the [rows, I] output).
    fn mlp<'b>(
        &self,
        g: &mut GraphBuilder<'b>,
        pre: &str,
        ln2: &str,
        l: &'b super::weights::LayerWeights<'_>,
    ) -> String {
        let ga = if self.fused {
            let f1 = linear(g, ln2, &format!("{pre}.mlp.fc1"), &l.fc1_w, None);
            let b1 = w(g, &format!("{pre}.mlp.fc1.bias"), &l.fc1_b);
            let op = if self.act == Act::Erf {
                "BiasGelu"
            } else {
                "FastGelu"
            };
            g.op_in(
                MS_DOMAIN,
                op,
                &[&f1, &b1],
                &[],
                &[&format!("{pre}.mlp.gelu")],
            )
            .remove(0)
        } else {
            let f1 = linear(g, ln2, &format!("{pre}.mlp.fc1"), &l.fc1_w, Some(&l.fc1_b));
            gelu(g, &f1, self.act, &format!("{pre}.mlp.gelu"))
        };
        linear(g, &ga, &format!("{pre}.mlp.fc2"), &l.fc2_w, Some(&l.fc2_b))
    }
}

/// Step 6: final LayerNorm, then the classifier on [CLS] (DeiT with teacher: the mean
/// of the [CLS] head and the distillation head). LayerNorm is per token, so taking
/// the token first and normalising it equals normalising all tokens.
fn classifier<'b>(
    g: &mut GraphBuilder<'b>,
    weights: &'b VitWeights<'_>,
    h: &str,
    rows_out: i64,
    d: i64,
    eps: f32,
) -> Result<String> {
    let shape_out = g.shape("shape_b_rows_d", &[-1, rows_out, d]);
    let h3 = g.op("Reshape", &[h, &shape_out], &[], "last_hidden_state");
    let mut head_logits = Vec::new();
    for (k, (hw, hb)) in weights.heads.iter().enumerate() {
        let idx = g.const_i64(&format!("token_{k}"), &[k as i64], true);
        let tok = g.op(
            "Gather",
            &[&h3, &idx],
            &[("axis", Attr::Int(1))],
            &format!("head{k}.token"),
        );
        let tok = layer_norm(
            g,
            &tok,
            &format!("final_layernorm{k}"),
            &weights.final_ln_w,
            &weights.final_ln_b,
            eps,
        );
        let out_name = if weights.heads.len() == 1 {
            "logits".to_string()
        } else {
            format!("head{k}.logits")
        };
        head_logits.push(linear(g, &tok, &out_name, hw, Some(hb)));
    }
    let logits = if head_logits.len() == 1 {
        head_logits.remove(0)
    } else {
        let sum = g.op("Add", &[&head_logits[0], &head_logits[1]], &[], "heads_sum");
        let half = g.const_f32("half", &[], &[0.5]);
        g.op("Mul", &[&sum, &half], &[], "logits")
    };
    if logits != "logits" {
        return Err(Error::Model {
            what: format!("internal: classifier output named '{logits}', not 'logits'"),
        });
    }
    Ok(logits)
}

/// Sizes of the encoder's attention.
#[derive(Clone, Copy)]
struct Dims {
    d: i64,
    heads: i64,
    dh: i64,
    s: i64,
    n_extra: i64,
}

/// Attention of the last block for its `n_extra` query rows only, without computing
/// keys or values for all S tokens (exact up to float rounding):
/// - scores: q_h·K_hᵀ = q_h·(X·W_k,hᵀ + b_k,h)ᵀ = (q_h·W_k,h)·Xᵀ + q_h·b_k,h. The last
///   term is one constant per score row, which softmax ignores, so the key bias drops
///   out and the per-head weights `W_k` `[D, D]` read as `[H, dh, D]` as stored.
/// - context: P_h·V_h = P_h·(X·W_v,hᵀ + b_v,h) = (P_h·X)·W_v,hᵀ + b_v,h, since every row
///   of P_h sums to 1; `W_v` is likewise read as `[H, dh, D]` (ONNX Runtime folds the
///   constant Transpose once, at session start).
///
/// That is O(S·D) per query row and head instead of the two S×D×D projections.
/// `x2d` is the block's LayerNorm output `[B*S, D]`, `q_in` its query rows
/// `[B*n_extra, D]`; returns the context rows `[B*n_extra, D]` before the output
/// projection.
fn cls_attention<'b>(
    g: &mut GraphBuilder<'b>,
    pre: &str,
    x2d: &str,
    q_in: &str,
    l: &'b super::weights::LayerWeights<'_>,
    dm: Dims,
    scale: &str,
) -> String {
    let Dims {
        d,
        heads,
        dh,
        s,
        n_extra,
    } = dm;
    let (du, hu, dhu) = (d as usize, heads as usize, dh as usize);
    let q = linear(
        g,
        q_in,
        &format!("{pre}.attn.query"),
        &l.q_w,
        l.q_b.as_ref(),
    );
    let q_shape = g.shape("shape_b_e_h_dh", &[-1, n_extra, heads, dh]);
    // [B, H, E, dh]
    let qh = split_heads(g, &q, &q_shape, [0, 2, 1, 3]);
    // X as [B, 1, S, D], shared by every head.
    let shape_b1sd = g.shape("shape_b_1_s_d", &[-1, 1, s, d]);
    let x4 = g.op(
        "Reshape",
        &[x2d, &shape_b1sd],
        &[],
        &format!("{pre}.attn.x_4d"),
    );
    let xt = g.op(
        "Transpose",
        &[&x4],
        &[("perm", Attr::Ints(vec![0, 1, 3, 2]))],
        &format!("{pre}.attn.x_t"),
    );
    // q_h·W_k,h: [B, H, E, dh] × [H, dh, D] → [B, H, E, D]; then ·Xᵀ → [B, H, E, S].
    // A Linear weight [D, D] (rows = output features, head by head) read as stored as
    // [H, dh, D]: row block h is head h's projection.
    let per_head = |g: &mut GraphBuilder<'b>, name: &str, t: &'b Tensor<'_>| {
        g.weight(name, &[hu, dhu, du], Cow::Borrowed(&t.data))
    };
    let wk = per_head(g, &format!("{pre}.attn.key.weight"), &l.k_w);
    let qk = g.op("MatMul", &[&qh, &wk], &[], &format!("{pre}.attn.query_key"));
    let probs = attention_probs(g, pre, &qk, &xt, scale, &format!("{pre}.attn.probs"));
    // P_h·X: [B, H, E, S] × [B, 1, S, D] → [B, H, E, D]; then ·W_v,hᵀ → [B, H, E, dh].
    let px = g.op(
        "MatMul",
        &[&probs, &x4],
        &[],
        &format!("{pre}.attn.probs_x"),
    );
    let wv = per_head(g, &format!("{pre}.attn.value.weight"), &l.v_w);
    let wvt = g.op(
        "Transpose",
        &[&wv],
        &[("perm", Attr::Ints(vec![0, 2, 1]))],
        &format!("{pre}.attn.value.weight_t"),
    );
    let mut ctx = g.op(
        "MatMul",
        &[&px, &wvt],
        &[],
        &format!("{pre}.attn.context_heads"),
    );
    if let Some(bv) = &l.v_b {
        let bn = g.weight(
            &format!("{pre}.attn.value.bias"),
            &[hu, 1, dhu],
            Cow::Borrowed(&bv.data),
        );
        ctx = g.op(
            "Add",
            &[&ctx, &bn],
            &[],
            &format!("{pre}.attn.context_biased"),
        );
    }
    let shape_2d = g.shape("shape_rows_d", &[-1, d]);
    merge_heads(g, pre, &ctx, &shape_2d)
}

/// `x` `[rows, D]` reshaped by `shape` to `[B, tokens, H, dh]` and transposed by `perm`
/// (`[0, 2, 1, 3]`: heads first; `[0, 2, 3, 1]`: heads first and transposed).
fn split_heads(g: &mut GraphBuilder<'_>, x: &str, shape: &str, perm: [i64; 4]) -> String {
    let r = g.op("Reshape", &[x, shape], &[], &format!("{x}_4d"));
    g.op(
        "Transpose",
        &[&r],
        &[("perm", Attr::Ints(perm.to_vec()))],
        &format!("{x}_heads"),
    )
}

/// softmax(Q·Kᵀ·scale) over the last axis; `kt` is already transposed.
fn attention_probs(
    g: &mut GraphBuilder<'_>,
    pre: &str,
    q: &str,
    kt: &str,
    scale: &str,
    probs_name: &str,
) -> String {
    let scores = g.op("MatMul", &[q, kt], &[], &format!("{pre}.attn.scores_raw"));
    let scores = g.op("Mul", &[&scores, scale], &[], &format!("{pre}.attn.scores"));
    g.op(
        "Softmax",
        &[&scores],
        &[("axis", Attr::Int(-1))],
        probs_name,
    )
}

/// Heads concatenated: `[B, H, S, dh]` → `[B, S, H, dh]` → `[B*S, D]` (`shape_2d`).
fn merge_heads(g: &mut GraphBuilder<'_>, pre: &str, ctx: &str, shape_2d: &str) -> String {
    let ctx = g.op(
        "Transpose",
        &[ctx],
        &[("perm", Attr::Ints(vec![0, 2, 1, 3]))],
        &format!("{pre}.attn.context_bshd"),
    );
    g.op(
        "Reshape",
        &[&ctx, shape_2d],
        &[],
        &format!("{pre}.attn.context_2d"),
    )
}

/// Exact GELU, x·½·(1 + erf(x/√2)), or the tanh approximation.
fn gelu(g: &mut GraphBuilder<'_>, x: &str, act: Act, name: &str) -> String {
    let half = g.const_f32(&format!("{name}.half"), &[], &[0.5]);
    let one = g.const_f32(&format!("{name}.one"), &[], &[1.0]);
    let inner = match act {
        Act::Erf => {
            // Div by √2 (as PyTorch writes it), the pattern ORT's GELU fusion matches.
            let sqrt2 = g.const_f32(&format!("{name}.sqrt2"), &[], &[std::f32::consts::SQRT_2]);
            let t = g.op("Div", &[x, &sqrt2], &[], &format!("{name}.scaled"));
            g.op("Erf", &[&t], &[], &format!("{name}.erf"))
        }
        Act::Tanh => {
            // tanh(√(2/π)·(x + 0.044715·x³))
            let c = g.const_f32(&format!("{name}.c"), &[], &[0.044715]);
            let k = g.const_f32(
                &format!("{name}.k"),
                &[],
                &[(2.0f32 / std::f32::consts::PI).sqrt()],
            );
            let x2 = g.op("Mul", &[x, x], &[], &format!("{name}.x2"));
            let x3 = g.op("Mul", &[&x2, x], &[], &format!("{name}.x3"));
            let cx3 = g.op("Mul", &[&x3, &c], &[], &format!("{name}.cx3"));
            let sum = g.op("Add", &[x, &cx3], &[], &format!("{name}.sum"));
            let t = g.op("Mul", &[&sum, &k], &[], &format!("{name}.scaled"));
            g.op("Tanh", &[&t], &[], &format!("{name}.tanh"))
        }
    };
    let p1 = g.op("Add", &[&inner, &one], &[], &format!("{name}.plus1"));
    let xm = g.op("Mul", &[x, &p1], &[], &format!("{name}.xmul"));
    g.op("Mul", &[&xm, &half], &[], name)
}

/// The `[D, 3D]` weight and `[3D]` bias of `com.microsoft.Attention`: columns are
/// Q, K, V projections (transposed from Linear's `[out, in]`).
fn packed_qkv(
    d: usize,
    l: &super::weights::LayerWeights<'_>,
) -> (Tensor<'static>, Tensor<'static>) {
    let mut out = vec![0f32; d * 3 * d];
    for (k, t) in [&l.q_w, &l.k_w, &l.v_w].into_iter().enumerate() {
        let vals = t.to_f32();
        for o in 0..d {
            for i in 0..d {
                out[i * 3 * d + k * d + o] = vals[o * d + i];
            }
        }
    }
    // Always a bias, zeros when the checkpoint has none (qkv_bias = false): ONNX
    // Runtime 1.31's CPU Attention kernel crashes (SIGSEGV) when the optional bias
    // input is omitted.
    let mut b = vec![0f32; 3 * d];
    for (k, t) in [&l.q_b, &l.k_b, &l.v_b].into_iter().enumerate() {
        if let Some(t) = t {
            b[k * d..(k + 1) * d].copy_from_slice(&t.to_f32());
        }
    }
    let bias = Tensor::from_f32(vec![3 * d], &b);
    (Tensor::from_f32(vec![d, 3 * d], &out), bias)
}
