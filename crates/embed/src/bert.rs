//! BERT and RoBERTa encoders (Hugging Face `BertModel` / `RobertaModel`), inference only.
//! Candle's fused ops (layer_norm, softmax_last_dim) are fine here: there is no backward.

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::{layer_norm, linear, embedding, Embedding, LayerNorm, Linear, VarBuilder};
use serde::Deserialize;

/// The fields of a Hugging Face `config.json` that a BERT-family encoder needs.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    #[serde(default = "default_model_type")]
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub pad_token_id: u32,
}
fn default_model_type() -> String {
    "bert".into()
}
fn default_act() -> String {
    "gelu".into()
}
fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}

impl Config {
    pub fn is_roberta(&self) -> bool {
        matches!(self.model_type.as_str(), "roberta" | "xlm-roberta" | "camembert")
    }
    /// The most tokens (special tokens included) the position table allows. RoBERTa's
    /// positions start at `pad_token_id + 1`, so it loses `pad_token_id + 1` slots.
    pub fn max_tokens(&self) -> usize {
        if self.is_roberta() {
            self.max_position_embeddings - self.pad_token_id as usize - 1
        } else {
            self.max_position_embeddings
        }
    }
}

/// Exact (erf) GELU, as candle's `gelu_erf` computes it, but spread over the rayon pool
/// (candle's runs on one thread and took ~11% of an embedding run).
struct GeluErfPar;

impl candle_core::CustomOp1 for GeluErfPar {
    fn name(&self) -> &'static str {
        "gelu-erf-par"
    }
    fn cpu_fwd(&self, s: &candle_core::CpuStorage, l: &candle_core::Layout) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use rayon::prelude::*;
        let src = match s {
            candle_core::CpuStorage::F32(v) => v,
            _ => candle_core::bail!("gelu-erf-par: f32 only"),
        };
        let src = match l.contiguous_offsets() {
            Some((a, b)) => &src[a..b],
            None => candle_core::bail!("gelu-erf-par: contiguous input only"),
        };
        let mut out = vec![0f32; src.len()];
        out.par_chunks_mut(16384).zip(src.par_chunks(16384)).for_each(|(o, x)| {
            for (o, &v) in o.iter_mut().zip(x) {
                *o = (candle_core::cpu::erf::erf_f32(v * std::f32::consts::FRAC_1_SQRT_2) + 1.0) * 0.5 * v;
            }
        });
        Ok((candle_core::CpuStorage::F32(out), l.shape().clone()))
    }
}

struct Layer {
    q: Linear,
    k: Linear,
    v: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    inter: Linear,
    out: Linear,
    out_norm: LayerNorm,
    heads: usize,
    gelu_exact: bool,
}

impl Layer {
    fn load(vb: VarBuilder, c: &Config) -> Result<Self> {
        let h = c.hidden_size;
        let a = vb.pp("attention");
        Ok(Self {
            q: linear(h, h, a.pp("self").pp("query"))?,
            k: linear(h, h, a.pp("self").pp("key"))?,
            v: linear(h, h, a.pp("self").pp("value"))?,
            attn_out: linear(h, h, a.pp("output").pp("dense"))?,
            attn_norm: layer_norm(h, c.layer_norm_eps, a.pp("output").pp("LayerNorm"))?,
            inter: linear(h, c.intermediate_size, vb.pp("intermediate").pp("dense"))?,
            out: linear(c.intermediate_size, h, vb.pp("output").pp("dense"))?,
            out_norm: layer_norm(h, c.layer_norm_eps, vb.pp("output").pp("LayerNorm"))?,
            heads: c.num_attention_heads,
            gelu_exact: c.hidden_act == "gelu",
        })
    }

    /// `x`: (b, t, h); `mask_bias`: (b, 1, 1, t) with 0 for tokens and a large negative for padding.
    fn forward(&self, x: &Tensor, mask_bias: &Tensor) -> Result<Tensor> {
        let (b, t, h) = x.dims3()?;
        let hd = h / self.heads;
        let split = |y: Tensor| y.reshape((b, t, self.heads, hd))?.transpose(1, 2)?.contiguous();
        let q = split(self.q.forward(x)?)?;
        let k = split(self.k.forward(x)?)?;
        let v = split(self.v.forward(x)?)?;
        let scores = (q.matmul(&k.t()?)? / (hd as f64).sqrt())?.broadcast_add(mask_bias)?;
        let p = candle_nn::ops::softmax_last_dim(&scores)?;
        let ctx = p.matmul(&v)?.transpose(1, 2)?.reshape((b, t, h))?;
        let x = self.attn_norm.forward(&(self.attn_out.forward(&ctx)? + x)?)?;
        let i = self.inter.forward(&x)?;
        let i = if self.gelu_exact { i.apply_op1_no_bwd(&GeluErfPar)? } else { i.gelu()? };
        self.out_norm.forward(&(self.out.forward(&i)? + x)?)
    }
}

pub struct BertModel {
    word: Embedding,
    pos: Embedding,
    token_type: Embedding,
    emb_norm: LayerNorm,
    layers: Vec<Layer>,
    pub config: Config,
    device: Device,
}

impl BertModel {
    /// `vb` points at the model's root (the prefix `bert.`/`roberta.` already applied).
    pub fn load(vb: VarBuilder, config: &Config) -> Result<Self> {
        let c = config;
        let e = vb.pp("embeddings");
        let layers = (0..c.num_hidden_layers)
            .map(|i| Layer::load(vb.pp("encoder").pp("layer").pp(i.to_string()), c))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            word: embedding(c.vocab_size, c.hidden_size, e.pp("word_embeddings"))?,
            pos: embedding(c.max_position_embeddings, c.hidden_size, e.pp("position_embeddings"))?,
            token_type: embedding(c.type_vocab_size, c.hidden_size, e.pp("token_type_embeddings"))?,
            emb_norm: layer_norm(c.hidden_size, c.layer_norm_eps, e.pp("LayerNorm"))?,
            layers,
            config: c.clone(),
            device: vb.device().clone(),
        })
    }

    /// Mean-pooled last hidden states of a right-padded batch: `ids[i]` are the tokens of
    /// sequence i (no padding). Returns (b, hidden).
    pub fn mean_pooled(&self, ids: &[Vec<u32>]) -> Result<Tensor> {
        let b = ids.len();
        let t = ids.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let pad = self.config.pad_token_id;
        let roberta = self.config.is_roberta();
        let mut flat_ids = Vec::with_capacity(b * t);
        let mut pos = Vec::with_capacity(b * t);
        let mut mask = Vec::with_capacity(b * t);
        for seq in ids {
            for j in 0..t {
                let real = j < seq.len();
                flat_ids.push(if real { seq[j] } else { pad });
                mask.push(if real { 1f32 } else { 0f32 });
                // RoBERTa: positions count real tokens from padding_idx + 1, padding gets padding_idx.
                pos.push(match (roberta, real) {
                    (true, true) => pad + 1 + j as u32,
                    (true, false) => pad,
                    (false, _) => j as u32,
                });
            }
        }
        let dev = &self.device;
        let ids_t = Tensor::from_vec(flat_ids, (b, t), dev)?;
        let pos_t = Tensor::from_vec(pos, (b, t), dev)?;
        let mask_t = Tensor::from_vec(mask, (b, t), dev)?;
        let types = Tensor::zeros((b, t), DType::U32, dev)?;
        let x = (self.word.forward(&ids_t)? + self.pos.forward(&pos_t)?)?;
        let x = (x + self.token_type.forward(&types)?)?;
        let mut x = self.emb_norm.forward(&x)?;
        let mask_bias = ((mask_t.clone() - 1.0)? * 1e30)?.reshape((b, 1, 1, t))?;
        // -1e30 * 0 = -0: tokens keep bias 0; padding gets -1e30 (softmax weight exactly 0).
        for l in &self.layers {
            x = l.forward(&x, &mask_bias)?;
        }
        let m = mask_t.unsqueeze(D::Minus1)?;
        let summed = x.broadcast_mul(&m)?.sum(1)?;
        let counts = m.sum(1)?.clamp(1e-9, f64::INFINITY)?;
        summed.broadcast_div(&counts)
    }
}
