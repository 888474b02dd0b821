//! GPT-Neo (transformers `GPTNeoForCausalLM`): GPT-2-like blocks with separate q/k/v
//! projections (no bias; the output projection has one), attention that is **not** scaled by
//! 1/sqrt(head_dim), and layers alternating global and local attention (a query sees the
//! `window_size` most recent keys, itself included).

use anyhow::{bail, Result};
use candle_core::Tensor;
use rand::rngs::StdRng;
use serde::Deserialize;

use crate::layers::{self, LayerNorm, Linear};
use crate::model::Architecture;
use crate::weights::{layer_norm, linear, WeightSource};

#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub intermediate_size: Option<usize>,
    pub window_size: usize,
    /// `[[["global", "local"], 12]]`: a pattern and how many times it repeats.
    pub attention_types: Vec<(Vec<String>, usize)>,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default)]
    pub embed_dropout: f32,
    #[serde(default)]
    pub attention_dropout: f32,
    #[serde(default)]
    pub resid_dropout: f32,
    #[serde(default = "default_activation")]
    pub activation_function: String,
}

fn default_eps() -> f64 {
    1e-5
}
fn default_activation() -> String {
    "gelu_new".into()
}

impl Config {
    /// The attention kind of each layer, expanded from `attention_types`.
    pub fn layer_kinds(&self) -> Result<Vec<String>> {
        let kinds: Vec<String> = self
            .attention_types
            .iter()
            .flat_map(|(pattern, n)| std::iter::repeat_n(pattern.clone(), *n).flatten())
            .collect();
        if kinds.len() != self.num_layers {
            bail!("attention_types describe {} layers, num_layers is {}", kinds.len(), self.num_layers);
        }
        if let Some(k) = kinds.iter().find(|k| *k != "global" && *k != "local") {
            bail!("unknown GPT-Neo attention type {k:?} (expected global or local)");
        }
        Ok(kinds)
    }
}

struct Block {
    ln_1: LayerNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    ln_2: LayerNorm,
    c_fc: Linear,
    c_proj: Linear,
    local: bool,
}

pub struct GptNeo {
    cfg: Config,
    wte: Tensor,
    wpe: Tensor,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
}

impl GptNeo {
    pub fn load(cfg: &Config, w: &mut dyn WeightSource) -> Result<Self> {
        if !matches!(cfg.activation_function.as_str(), "gelu_new" | "gelu_pytorch_tanh") {
            bail!("GPT-Neo activation {:?} is not supported", cfg.activation_function);
        }
        let (d, eps) = (cfg.hidden_size, cfg.layer_norm_epsilon);
        let inner = cfg.intermediate_size.unwrap_or(4 * d);
        let wte = w.get("transformer.wte.weight", &[cfg.vocab_size, d])?;
        let wpe = w.get("transformer.wpe.weight", &[cfg.max_position_embeddings, d])?;
        let mut blocks = Vec::new();
        for (i, kind) in cfg.layer_kinds()?.iter().enumerate() {
            let p = format!("transformer.h.{i}");
            let a = format!("{p}.attn.attention");
            blocks.push(Block {
                ln_1: layer_norm(w, &format!("{p}.ln_1"), d, eps)?,
                q: linear(w, &format!("{a}.q_proj"), d, d, false)?,
                k: linear(w, &format!("{a}.k_proj"), d, d, false)?,
                v: linear(w, &format!("{a}.v_proj"), d, d, false)?,
                out: linear(w, &format!("{a}.out_proj"), d, d, true)?,
                ln_2: layer_norm(w, &format!("{p}.ln_2"), d, eps)?,
                c_fc: linear(w, &format!("{p}.mlp.c_fc"), d, inner, true)?,
                c_proj: linear(w, &format!("{p}.mlp.c_proj"), inner, d, true)?,
                local: kind == "local",
            });
        }
        let ln_f = layer_norm(w, "transformer.ln_f", d, eps)?;
        Ok(Self { cfg: cfg.clone(), wte, wpe, blocks, ln_f })
    }
}

impl Architecture for GptNeo {
    fn forward(&self, ids: &[u32], mut rng: Option<&mut StdRng>) -> Result<Tensor> {
        let t = ids.len();
        let c = &self.cfg;
        let mut x = layers::embed(&self.wte, ids)?.add(&self.wpe.narrow(0, 0, t)?)?;
        x = layers::maybe_dropout(&x, c.embed_dropout, rng.as_deref_mut())?;
        for b in &self.blocks {
            let h = b.ln_1.forward(&x)?;
            let (q, k, v) = (b.q.forward(&h)?, b.k.forward(&h)?, b.v.forward(&h)?);
            let window = if b.local { Some(c.window_size) } else { None };
            let attn_drop = rng.as_deref_mut().map(|r| (c.attention_dropout, r));
            // GPT-Neo does not scale the attention scores.
            let a = layers::causal_attention(&q, &k, &v, c.num_heads, c.num_heads, 1.0, window, attn_drop)?;
            let a = b.out.forward(&a)?;
            x = x.add(&layers::maybe_dropout(&a, c.resid_dropout, rng.as_deref_mut())?)?;
            let h = b.ln_2.forward(&x)?;
            let m = b.c_proj.forward(&layers::gelu_tanh(&b.c_fc.forward(&h)?)?)?;
            x = x.add(&layers::maybe_dropout(&m, c.resid_dropout, rng.as_deref_mut())?)?;
        }
        let x = self.ln_f.forward(&x)?;
        Ok(layers::head(&x, &self.wte)?)
    }

    fn context_length(&self) -> usize {
        self.cfg.max_position_embeddings
    }

    fn vocab_size(&self) -> usize {
        self.cfg.vocab_size
    }
}
