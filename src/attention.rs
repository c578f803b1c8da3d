//! Attention rollout: where in the image the [CLS] token's prediction looked.
//!
//! A model exported with `--with-attentions` returns every layer's attention
//! probabilities (`attentions.{i}`, shape `[batch, heads, tokens, tokens]`). Rollout
//! (Abnar & Zuidema, 2020, "Quantifying Attention Flow in Transformers") follows the
//! attention from the output back to the input: per layer, average the heads, add the
//! residual connection as an identity (`0.5 A + 0.5 I`, rows renormalized), and multiply
//! the layers. Only the [CLS] row of the product is needed, so it is computed as a
//! vector times each layer's matrix, last layer first: O(L · T²) per image instead of
//! the O(L · T³) full product. The patch part of that row, on the patch grid, is what
//! the report draws over the image the model saw.

use serde::{Deserialize, Serialize};

/// How an attention model's tokens map onto the image, recorded in `metrics.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttentionInfo {
    /// Transformer layers with attention outputs.
    pub layers: usize,
    /// Attention heads per layer.
    pub heads: usize,
    /// Sequence length: prefix tokens ([CLS], DeiT's distillation token) + patches.
    pub tokens: usize,
    /// Tokens before the patches ([CLS], and DeiT's distillation token).
    pub prefix_tokens: usize,
    /// Patch grid, rows x columns (`attn_rollout` holds `grid[0] * grid[1]` values).
    pub grid: [usize; 2],
    /// How the rollout is computed, in words.
    pub method: String,
}

pub(crate) const METHOD: &str = "rollout: heads averaged, 0.5*A + 0.5*I per layer, rows renormalized; [CLS] row over patch tokens";

impl AttentionInfo {
    /// Lay out `tokens` for an input of `height` x `width` pixels; `patch_size` comes
    /// from the model's `config.json` when it has one, otherwise a square grid with
    /// one or two prefix tokens is assumed. None when the tokens cannot be laid out.
    pub(crate) fn layout(
        layers: usize,
        heads: usize,
        tokens: usize,
        height: usize,
        width: usize,
        patch_size: Option<usize>,
    ) -> Option<Self> {
        let grid = match patch_size {
            Some(p) if p > 0 => [height / p, width / p],
            _ => {
                let side = (1..=2)
                    .filter_map(|prefix| {
                        let n = tokens.checked_sub(prefix)?;
                        let s = (n as f64).sqrt().round() as usize;
                        (s * s == n && s > 0).then_some(s)
                    })
                    .next()?;
                [side, side]
            }
        };
        let patches = grid[0] * grid[1];
        if patches == 0 || patches >= tokens || tokens - patches > 2 {
            return None;
        }
        Some(AttentionInfo {
            layers,
            heads,
            tokens,
            prefix_tokens: tokens - patches,
            grid,
            method: METHOD.into(),
        })
    }
}

/// The [CLS] row of the attention rollout for one image. `layers[l]` is layer l's
/// attention for this image, `heads * tokens * tokens` values (row-major `[h][i][j]`,
/// row i attending to column j). Returns `tokens` values that sum to 1.
pub(crate) fn cls_rollout(layers: &[&[f32]], heads: usize, tokens: usize) -> Vec<f32> {
    let t = tokens;
    let mut v = vec![0f64; t];
    v[0] = 1.0;
    let mut mean = vec![0f64; t * t];
    for att in layers.iter().rev() {
        debug_assert_eq!(att.len(), heads * t * t);
        mean.iter_mut().for_each(|m| *m = 0.0);
        for h in 0..heads {
            for (m, &a) in mean.iter_mut().zip(&att[h * t * t..(h + 1) * t * t]) {
                *m += a as f64;
            }
        }
        // Row i of 0.5*A + 0.5*I, renormalized (A's rows already sum to ~1).
        let mut next = vec![0f64; t];
        for i in 0..t {
            let row = &mut mean[i * t..(i + 1) * t];
            row.iter_mut().for_each(|m| *m *= 0.5 / heads as f64);
            row[i] += 0.5;
            let sum: f64 = row.iter().sum();
            let w = v[i] / sum;
            if w != 0.0 {
                for (n, &m) in next.iter_mut().zip(row.iter()) {
                    *n += w * m;
                }
            }
        }
        v = next;
    }
    v.into_iter().map(|x| x as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random_attention(seed: u64, heads: usize, t: usize) -> Vec<f32> {
        let mut s = seed;
        let mut v = Vec::with_capacity(heads * t * t);
        for _ in 0..heads * t {
            let row: Vec<f32> = (0..t)
                .map(|_| {
                    s = s
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((s >> 33) as f32 / (1u64 << 31) as f32).exp()
                })
                .collect();
            let sum: f32 = row.iter().sum();
            v.extend(row.iter().map(|x| x / sum));
        }
        v
    }

    /// (The comparison with full matrix products is end to end, on real attention
    /// outputs: tests/integration/attention.rs.) Rows are stochastic, so is the result.
    #[test]
    fn the_rollout_row_is_a_distribution() {
        let (heads, t) = (3, 10);
        let layers: Vec<Vec<f32>> = (0..4).map(|l| random_attention(l, heads, t)).collect();
        let views: Vec<&[f32]> = layers.iter().map(|v| v.as_slice()).collect();
        let r = cls_rollout(&views, heads, t);
        assert_eq!(r.len(), t);
        assert!(r.iter().all(|&x| x > 0.0));
        assert!((r.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }

    #[test]
    fn attention_to_one_patch_concentrates_the_rollout_there() {
        // Every token attends only to token 3: the rollout must put most mass there.
        let t = 5;
        let mut att = vec![0f32; t * t];
        for i in 0..t {
            att[i * t + 3] = 1.0;
        }
        let layers = [att.as_slice(), att.as_slice()];
        let r = cls_rollout(&layers, 1, t);
        let max = r.iter().cloned().fold(f32::MIN, f32::max);
        assert_eq!(r[3], max);
        assert!(r[3] > 0.7, "{r:?}");
    }

    #[test]
    fn layouts() {
        let vit = AttentionInfo::layout(12, 3, 197, 224, 224, Some(16)).unwrap();
        assert_eq!((vit.prefix_tokens, vit.grid), (1, [14, 14]));
        let deit = AttentionInfo::layout(12, 3, 198, 224, 224, None).unwrap();
        assert_eq!((deit.prefix_tokens, deit.grid), (2, [14, 14]));
        let rect = AttentionInfo::layout(2, 2, 1 + 4 * 8, 32, 64, Some(8)).unwrap();
        assert_eq!(rect.grid, [4, 8]);
        assert!(AttentionInfo::layout(2, 2, 50, 224, 224, Some(16)).is_none());
    }
}
