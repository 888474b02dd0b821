//! GPT-2 (transformers `GPT2LMHeadModel`): learned positions, pre-LayerNorm blocks,
//! fused q/k/v projection stored as Conv1D (`[in, out]`, transposed on load), gelu_new,
//! head tied to the token embedding.

use anyhow::Result;
use candle_core::Tensor;
use rand::rngs::StdRng;
use serde::Deserialize;

use crate::layers::{self, LayerNorm, Linear};
use crate::model::Architecture;
use crate::weights::{layer_norm, WeightSource};

#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    pub n_positions: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_inner: Option<usize>,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "default_pdrop")]
    pub embd_pdrop: f32,
    #[serde(default = "default_pdrop")]
    pub attn_pdrop: f32,
    #[serde(default = "default_pdrop")]
    pub resid_pdrop: f32,
    #[serde(default = "default_activation")]
    pub activation_function: String,
    #[serde(default)]
    pub scale_attn_by_inverse_layer_idx: bool,
    #[serde(default = "yes")]
    pub scale_attn_weights: bool,
}

fn default_eps() -> f64 {
    1e-5
}
fn default_pdrop() -> f32 {
    0.1
}
fn default_activation() -> String {
    "gelu_new".into()
}
fn yes() -> bool {
    true
}

struct Block {
    ln_1: LayerNorm,
    c_attn: Linear,
    c_proj: Linear,
    ln_2: LayerNorm,
    c_fc: Linear,
    mlp_proj: Linear,
    attn_scale: f64,
}

pub struct Gpt2 {
    cfg: Config,
    wte: Tensor,
    wpe: Tensor,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
}

/// A Conv1D layer: weight stored `[in, out]`.
fn conv1d(w: &mut dyn WeightSource, prefix: &str, n_in: usize, n_out: usize) -> Result<Linear> {
    let weight = w.get(&format!("{prefix}.weight"), &[n_in, n_out])?;
    let bias = Some(w.get(&format!("{prefix}.bias"), &[n_out])?);
    Ok(Linear { weight, bias, transposed: true })
}

impl Gpt2 {
    pub fn load(cfg: &Config, w: &mut dyn WeightSource) -> Result<Self> {
        if !matches!(cfg.activation_function.as_str(), "gelu_new" | "gelu_pytorch_tanh") {
            anyhow::bail!("GPT-2 activation {:?} is not supported", cfg.activation_function);
        }
        let (d, eps) = (cfg.n_embd, cfg.layer_norm_epsilon);
        let inner = cfg.n_inner.unwrap_or(4 * d);
        let head_dim = d / cfg.n_head;
        let wte = w.get("transformer.wte.weight", &[cfg.vocab_size, d])?;
        let wpe = w.get("transformer.wpe.weight", &[cfg.n_positions, d])?;
        let mut blocks = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let p = format!("transformer.h.{i}");
            let mut attn_scale = if cfg.scale_attn_weights { 1.0 / (head_dim as f64).sqrt() } else { 1.0 };
            if cfg.scale_attn_by_inverse_layer_idx {
                attn_scale /= (i + 1) as f64;
            }
            blocks.push(Block {
                ln_1: layer_norm(w, &format!("{p}.ln_1"), d, eps)?,
                c_attn: conv1d(w, &format!("{p}.attn.c_attn"), d, 3 * d)?,
                c_proj: conv1d(w, &format!("{p}.attn.c_proj"), d, d)?,
                ln_2: layer_norm(w, &format!("{p}.ln_2"), d, eps)?,
                c_fc: conv1d(w, &format!("{p}.mlp.c_fc"), d, inner)?,
                mlp_proj: conv1d(w, &format!("{p}.mlp.c_proj"), inner, d)?,
                attn_scale,
            });
        }
        let ln_f = layer_norm(w, "transformer.ln_f", d, eps)?;
        Ok(Self { cfg: cfg.clone(), wte, wpe, blocks, ln_f })
    }
}

impl Architecture for Gpt2 {
    fn forward(&self, ids: &[u32], mut rng: Option<&mut StdRng>) -> Result<Tensor> {
        let t = ids.len();
        let c = &self.cfg;
        let pos = self.wpe.narrow(0, 0, t)?;
        let mut x = layers::embed(&self.wte, ids)?.add(&pos)?;
        x = layers::maybe_dropout(&x, c.embd_pdrop, rng.as_deref_mut())?;
        let d = c.n_embd;
        for b in &self.blocks {
            let h = b.ln_1.forward(&x)?;
            let qkv = b.c_attn.forward(&h)?;
            let (q, k, v) = (qkv.narrow(1, 0, d)?, qkv.narrow(1, d, d)?, qkv.narrow(1, 2 * d, d)?);
            let attn_drop = rng.as_deref_mut().map(|r| (c.attn_pdrop, r));
            let a = layers::causal_attention(&q, &k, &v, c.n_head, c.n_head, b.attn_scale, None, attn_drop)?;
            let a = b.c_proj.forward(&a)?;
            x = x.add(&layers::maybe_dropout(&a, c.resid_pdrop, rng.as_deref_mut())?)?;
            let h = b.ln_2.forward(&x)?;
            let m = b.mlp_proj.forward(&layers::gelu_tanh(&b.c_fc.forward(&h)?)?)?;
            x = x.add(&layers::maybe_dropout(&m, c.resid_pdrop, rng.as_deref_mut())?)?;
        }
        let x = self.ln_f.forward(&x)?;
        Ok(layers::head(&x, &self.wte)?)
    }

    fn context_length(&self) -> usize {
        self.cfg.n_positions
    }

    fn vocab_size(&self) -> usize {
        self.cfg.vocab_size
    }
}
