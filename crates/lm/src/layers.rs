//! Differentiable building blocks shared by the architectures.
//!
//! On the CPU (f32/f64) the norms, attention, rotary embedding, activations and the
//! cross-entropy run as fused custom ops with their own backward passes (`crate::ops`);
//! elsewhere they are composed of candle ops that have a backward pass: candle's fused
//! `layer_norm`, `rms_norm`, `softmax_last_dim` and `rope*` cut the gradient silently
//! (DESIGN.md, "Known pitfalls"), so they are not used.

use candle_core::{DType, Device, Result, Tensor, D};

use crate::ops::{self, fusable};
use rand::rngs::StdRng;
use rand::Rng;

/// `x @ wᵀ (+ b)` for x `[T, in]`, w `[out, in]` (PyTorch `nn.Linear` layout), or `x @ w`
/// for w stored `[in, out]` (`transposed`, GPT-2's Conv1D).
#[derive(Clone)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub transposed: bool,
}

impl Linear {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if fusable(x) && self.weight.rank() == 2 && self.weight.dtype() == x.dtype() {
            let x = x.contiguous()?;
            let op = ops::LinearOp { transposed: self.transposed };
            return match &self.bias {
                Some(b) => x.apply_op3(&self.weight, &b.contiguous()?, op),
                None => x.apply_op2(&self.weight, op),
            };
        }
        self.forward_composed(x)
    }

    /// The same from generic candle ops (any device).
    pub fn forward_composed(&self, x: &Tensor) -> Result<Tensor> {
        let y = if self.transposed { x.matmul(&self.weight)? } else { x.matmul(&self.weight.t()?)? };
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// `x @ wᵀ` for an output head `w` `[vocab, d]` (tied to the embedding or not).
pub fn head(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    Linear { weight: w.clone(), bias: None, transposed: false }.forward(x)
}

/// LayerNorm over the last dimension (biased variance, as PyTorch).
#[derive(Clone)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
}

impl LayerNorm {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if fusable(x) {
            return x.contiguous()?.apply_op3(
                &self.weight.contiguous()?,
                &self.bias.contiguous()?,
                ops::LayerNormOp { eps: self.eps },
            );
        }
        self.forward_composed(x)
    }

    /// The same from generic candle ops (any device).
    pub fn forward_composed(&self, x: &Tensor) -> Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let centered = x.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centered.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        normed.broadcast_mul(&self.weight)?.broadcast_add(&self.bias)
    }
}

/// RMSNorm over the last dimension: `x / sqrt(mean(x²) + eps) * scale`, where the scale is
/// `w` (Llama, Qwen2) or `1 + w` (Gemma). The `1 + w` is formed in each forward pass: the
/// weight's storage changes in place as it trains.
#[derive(Clone)]
pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f64,
    pub one_plus: bool,
}

impl RmsNorm {
    pub fn new(weight: Tensor, eps: f64, one_plus: bool) -> Self {
        Self { weight, eps, one_plus }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if fusable(x) {
            let op = ops::RmsNormOp { eps: self.eps, one_plus: self.one_plus };
            return x.contiguous()?.apply_op2(&self.weight.contiguous()?, op);
        }
        self.forward_composed(x)
    }

    /// The same from generic candle ops (any device).
    pub fn forward_composed(&self, x: &Tensor) -> Result<Tensor> {
        let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = x.broadcast_div(&(ms + self.eps)?.sqrt()?)?;
        if self.one_plus {
            normed.broadcast_mul(&(&self.weight + 1.0)?)
        } else {
            normed.broadcast_mul(&self.weight)
        }
    }
}

/// Softmax over the last dimension. The max is detached: it only keeps `exp` in range and
/// its gradient contribution is zero.
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// Log-softmax over the last dimension.
pub fn log_softmax(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&lse)
}

/// Mean next-token cross-entropy: `logits` `[T, V]` predict `targets` `[T]`.
pub fn cross_entropy(logits: &Tensor, targets: &[u32]) -> Result<Tensor> {
    if fusable(logits) {
        return logits.contiguous()?.apply_op1(ops::CrossEntropyOp::new(targets.to_vec()));
    }
    cross_entropy_composed(logits, targets)
}

/// The same from generic candle ops (any device).
pub fn cross_entropy_composed(logits: &Tensor, targets: &[u32]) -> Result<Tensor> {
    let t = Tensor::new(targets, logits.device())?.unsqueeze(1)?;
    let picked = log_softmax(logits)?.gather(&t, 1)?;
    picked.mean_all()?.neg()
}

/// Additive attention mask `[T, T]`: 0 where query i may see key j (j ≤ i, and
/// i - j < window when a window is set), -inf elsewhere.
pub fn causal_mask(t: usize, window: Option<usize>, device: &Device) -> Result<Tensor> {
    let mut m = vec![0f32; t * t];
    for i in 0..t {
        for j in 0..t {
            let visible = j <= i && window.is_none_or(|w| i - j < w);
            if !visible {
                m[i * t + j] = f32::NEG_INFINITY;
            }
        }
    }
    Tensor::from_vec(m, (t, t), device)
}

/// Rotary position embedding tables (Hugging Face half-split layout): cos and sin `[T, D]`.
pub struct Rope {
    cos: Tensor,
    sin: Tensor,
    /// The first half of each row of the tables, for the fused kernel.
    cos_half: Vec<f64>,
    sin_half: Vec<f64>,
}

impl Rope {
    pub fn new(t: usize, head_dim: usize, theta: f64, device: &Device) -> Result<Self> {
        let half = head_dim / 2;
        let mut cos = vec![0f32; t * head_dim];
        let mut sin = vec![0f32; t * head_dim];
        for p in 0..t {
            for i in 0..half {
                // Same arithmetic as transformers: inv_freq in f32, then position * inv_freq in f32.
                let inv_freq = (1.0 / theta.powf((2 * i) as f64 / head_dim as f64)) as f32;
                let angle = p as f32 * inv_freq;
                for k in [i, i + half] {
                    cos[p * head_dim + k] = angle.cos();
                    sin[p * head_dim + k] = angle.sin();
                }
            }
        }
        let halves = |v: &[f32]| -> Vec<f64> {
            v.chunks(head_dim.max(1)).flat_map(|r| r[..half].iter().map(|&x| x as f64)).collect()
        };
        Ok(Self {
            cos_half: halves(&cos),
            sin_half: halves(&sin),
            cos: Tensor::from_vec(cos, (t, head_dim), device)?,
            sin: Tensor::from_vec(sin, (t, head_dim), device)?,
        })
    }

    /// Rotates `x` `[T, H*D]` (heads side by side, as a projection returns them) or
    /// `[T, H, D]`; returns `[T, H, D]`.
    pub fn apply_thd(&self, x: &Tensor, heads: usize) -> Result<Tensor> {
        let x = if x.rank() == 3 {
            x.clone()
        } else {
            let (t, hd) = x.dims2()?;
            x.reshape((t, heads, hd / heads))?
        };
        let (t, _, d) = x.dims3()?;
        if fusable(&x) && d % 2 == 0 && self.cos_half.len() >= t * (d / 2) {
            let half = d / 2;
            let op = ops::RopeOp { cos: self.cos_half[..t * half].to_vec(), sin: self.sin_half[..t * half].to_vec() };
            return x.contiguous()?.apply_op1(op);
        }
        self.apply(&x.transpose(0, 1)?.contiguous()?)?.transpose(0, 1)?.contiguous()
    }

    /// Rotates `x` `[H, T, D]`.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let d = x.dim(D::Minus1)?;
        let half = d / 2;
        let x1 = x.narrow(D::Minus1, 0, half)?;
        let x2 = x.narrow(D::Minus1, half, half)?;
        let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
        let (cos, sin) = (self.cos.to_dtype(x.dtype())?, self.sin.to_dtype(x.dtype())?);
        x.broadcast_mul(&cos)?.add(&rotated.broadcast_mul(&sin)?)
    }
}

/// Scaled dot-product attention over heads: q `[H, T, D]`, k and v `[Hkv, T, D]` (grouped-query
/// attention repeats each key/value head for H / Hkv query heads), additive `mask` `[T, T]`.
/// Returns `[T, H*D]`.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    scale: f64,
    attn_dropout: Option<(f32, &mut StdRng)>,
) -> Result<Tensor> {
    let (h, t, d) = q.dims3()?;
    let hkv = k.dim(0)?;
    let (k, v) = if hkv == h {
        (k.clone(), v.clone())
    } else {
        let rep = h / hkv;
        let repeat = |x: &Tensor| x.unsqueeze(1)?.broadcast_as((hkv, rep, t, d))?.reshape((h, t, d));
        (repeat(k)?, repeat(v)?)
    };
    let scores = q.matmul(&k.t()?)?;
    let scores = if scale != 1.0 { (scores * scale)? } else { scores };
    let probs = softmax(&scores.broadcast_add(mask)?)?;
    let probs = match attn_dropout {
        Some((p, rng)) => dropout(&probs, p, rng)?,
        None => probs,
    };
    probs.matmul(&v.contiguous()?)?.transpose(0, 1)?.reshape((t, h * d))
}

/// Causal self-attention (optionally over a sliding `window` of keys) with q `[T, H*D]` or
/// `[T, H, D]`, k and v `[T, Hkv*D]` or `[T, Hkv, D]`; returns `[T, H*D]`. On the CPU
/// without attention dropout this is one fused kernel (no T×T tensors are kept for the
/// backward); otherwise it is [`attention`] over a [`causal_mask`].
#[allow(clippy::too_many_arguments)]
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    kv_heads: usize,
    scale: f64,
    window: Option<usize>,
    attn_dropout: Option<(f32, &mut StdRng)>,
) -> Result<Tensor> {
    let t = q.dim(0)?;
    let as3 = |x: &Tensor, h: usize| -> Result<Tensor> {
        if x.rank() == 3 {
            return Ok(x.clone());
        }
        let (t, hd) = x.dims2()?;
        x.reshape((t, h, hd / h))
    };
    let (q, k, v) = (as3(q, heads)?, as3(k, kv_heads)?, as3(v, kv_heads)?);
    let d = q.dim(2)?;
    let dropout_on = attn_dropout.as_ref().is_some_and(|(p, _)| *p > 0.0);
    if fusable(&q) && !dropout_on {
        let o = q.contiguous()?.apply_op3(&k.contiguous()?, &v.contiguous()?, ops::Attention::new(scale, window))?;
        return o.reshape((t, heads * d));
    }
    let heads_first = |x: &Tensor| x.transpose(0, 1)?.contiguous();
    let mask = causal_mask(t, window, q.device())?.to_dtype(q.dtype())?;
    attention(&heads_first(&q)?, &heads_first(&k)?, &heads_first(&v)?, &mask, scale, attn_dropout)
}

/// `silu(gate) * up`.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if fusable(gate) {
        return gate.contiguous()?.apply_op2(&up.contiguous()?, ops::SwiGluOp);
    }
    gate.silu()?.mul(up)
}

/// Splits `[T, H*D]` into heads `[H, T, D]`.
pub fn split_heads(x: &Tensor, heads: usize) -> Result<Tensor> {
    let (t, hd) = x.dims2()?;
    x.reshape((t, heads, hd / heads))?.transpose(0, 1)?.contiguous()
}

/// Inverted dropout with a seeded generator: zero with probability `p`, scale the rest by
/// 1/(1-p), as PyTorch's `nn.Dropout` in train mode.
pub fn dropout(x: &Tensor, p: f32, rng: &mut StdRng) -> Result<Tensor> {
    if p <= 0.0 {
        return Ok(x.clone());
    }
    let keep = 1.0 / (1.0 - p);
    let mask: Vec<f32> =
        (0..x.elem_count()).map(|_| if rng.random::<f32>() < p { 0.0 } else { keep }).collect();
    x.mul(&Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?)
}

/// Applies dropout when training with a generator, otherwise returns `x`.
pub fn maybe_dropout(x: &Tensor, p: f32, rng: Option<&mut StdRng>) -> Result<Tensor> {
    match rng {
        Some(rng) => dropout(x, p, rng),
        None => Ok(x.clone()),
    }
}

/// GELU with the tanh approximation (`gelu_new`, `gelu_pytorch_tanh`).
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    if fusable(x) {
        return x.contiguous()?.apply_op1(ops::GeluOp);
    }
    x.gelu()
}

/// The token embedding rows for `ids`.
pub fn embed(table: &Tensor, ids: &[u32]) -> Result<Tensor> {
    table.embedding(&Tensor::new(ids, table.device())?)
}

pub fn dtype_f32(t: Tensor) -> Result<Tensor> {
    if t.dtype() == DType::F32 {
        Ok(t)
    } else {
        t.to_dtype(DType::F32)
    }
}
