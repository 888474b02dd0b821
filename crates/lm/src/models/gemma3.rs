//! Gemma 3 text decoder (transformers `Gemma3ForCausalLM`, model_type `gemma3_text`):
//! embeddings scaled by sqrt(hidden), RMSNorm with a `1 + w` scale, four norms per layer
//! (before and after attention and MLP), per-head RMSNorm of queries and keys (QK-norm),
//! attention scaled by `query_pre_attn_scalar^-1/2`, GeGLU MLP (tanh GELU), and layers that
//! alternate sliding-window and full attention with different RoPE bases.

use anyhow::{bail, Result};
use candle_core::Tensor;
use rand::rngs::StdRng;
use serde::Deserialize;
use serde_json::Value;

use super::llama::rope_theta;
use crate::layers::{self, Linear, RmsNorm, Rope};
use crate::model::Architecture;
use crate::weights::{linear, WeightSource};

#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    pub max_position_embeddings: usize,
    pub query_pre_attn_scalar: f64,
    pub sliding_window: usize,
    pub layer_types: Option<Vec<String>>,
    #[serde(alias = "_sliding_window_pattern")]
    pub sliding_window_pattern: Option<usize>,
    #[serde(default = "yes")]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default = "default_act")]
    pub hidden_activation: String,
    pub final_logit_softcapping: Option<f64>,
    pub attn_logit_softcapping: Option<f64>,
    pub rope_theta: Option<f64>,
    pub rope_local_base_freq: Option<f64>,
    pub rope_parameters: Option<Value>,
    pub rope_scaling: Option<Value>,
}

fn default_eps() -> f64 {
    1e-6
}
fn yes() -> bool {
    true
}
fn default_act() -> String {
    "gelu_pytorch_tanh".into()
}

struct Layer {
    input_norm: RmsNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    q_norm: RmsNorm,
    k_norm: RmsNorm,
    post_attn_norm: RmsNorm,
    pre_ff_norm: RmsNorm,
    post_ff_norm: RmsNorm,
    gate: Linear,
    up: Linear,
    down: Linear,
    rope_theta: f64,
    window: Option<usize>,
}

pub struct Gemma3 {
    cfg: Config,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: RmsNorm,
}

impl Config {
    fn layer_types(&self) -> Result<Vec<String>> {
        let n = self.num_hidden_layers;
        match (&self.layer_types, self.sliding_window_pattern) {
            (Some(t), _) if t.len() == n => Ok(t.clone()),
            (Some(t), _) => bail!("layer_types has {} entries, num_hidden_layers is {n}", t.len()),
            (None, Some(p)) => Ok((0..n)
                .map(|i| if (i + 1) % p == 0 { "full_attention" } else { "sliding_attention" }.into())
                .collect()),
            (None, None) => bail!("Gemma 3 config has neither layer_types nor sliding_window_pattern"),
        }
    }
}

impl Gemma3 {
    pub fn load(cfg: &Config, w: &mut dyn WeightSource) -> Result<Self> {
        if cfg.hidden_activation != "gelu_pytorch_tanh" {
            bail!("Gemma 3 activation {:?} is not supported", cfg.hidden_activation);
        }
        if cfg.attn_logit_softcapping.is_some() {
            bail!("Gemma attention logit soft-capping is not supported");
        }
        let (d, hd, eps) = (cfg.hidden_size, cfg.head_dim, cfg.rms_norm_eps);
        let (h, hkv, bias) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.attention_bias);
        let embed = w.get("model.embed_tokens.weight", &[cfg.vocab_size, d])?;
        let mut layers = Vec::new();
        for (i, ty) in cfg.layer_types()?.iter().enumerate() {
            let (window, default_theta) = match ty.as_str() {
                "sliding_attention" => (Some(cfg.sliding_window), cfg.rope_local_base_freq.unwrap_or(10000.0)),
                "full_attention" => (None, cfg.rope_theta.unwrap_or(1e6)),
                other => bail!("unknown Gemma 3 layer type {other:?}"),
            };
            let theta = rope_theta(
                Some(default_theta),
                cfg.rope_parameters.as_ref(),
                cfg.rope_scaling.as_ref(),
                ty,
                default_theta,
            )?;
            let p = format!("model.layers.{i}");
            let norm = |w: &mut dyn WeightSource, name: &str, n: usize| -> Result<RmsNorm> {
                Ok(RmsNorm::new(w.get(&format!("{p}.{name}.weight"), &[n])?, eps, true))
            };
            layers.push(Layer {
                input_norm: norm(w, "input_layernorm", d)?,
                q: linear(w, &format!("{p}.self_attn.q_proj"), d, h * hd, bias)?,
                k: linear(w, &format!("{p}.self_attn.k_proj"), d, hkv * hd, bias)?,
                v: linear(w, &format!("{p}.self_attn.v_proj"), d, hkv * hd, bias)?,
                o: linear(w, &format!("{p}.self_attn.o_proj"), h * hd, d, bias)?,
                q_norm: norm(w, "self_attn.q_norm", hd)?,
                k_norm: norm(w, "self_attn.k_norm", hd)?,
                post_attn_norm: norm(w, "post_attention_layernorm", d)?,
                pre_ff_norm: norm(w, "pre_feedforward_layernorm", d)?,
                post_ff_norm: norm(w, "post_feedforward_layernorm", d)?,
                gate: linear(w, &format!("{p}.mlp.gate_proj"), d, cfg.intermediate_size, false)?,
                up: linear(w, &format!("{p}.mlp.up_proj"), d, cfg.intermediate_size, false)?,
                down: linear(w, &format!("{p}.mlp.down_proj"), cfg.intermediate_size, d, false)?,
                rope_theta: theta,
                window,
            });
        }
        if !cfg.tie_word_embeddings {
            bail!("untied Gemma 3 heads are not supported");
        }
        let norm = RmsNorm::new(w.get("model.norm.weight", &[d])?, eps, true);
        Ok(Self { cfg: cfg.clone(), embed, layers, norm })
    }
}

impl Architecture for Gemma3 {
    fn forward(&self, ids: &[u32], _rng: Option<&mut StdRng>) -> Result<Tensor> {
        let c = &self.cfg;
        let t = ids.len();
        let dev = self.embed.device();
        // transformers keeps the scale as an f32 tensor: sqrt(hidden) rounded to f32.
        let embed_scale = (c.hidden_size as f32).sqrt() as f64;
        let mut x = (layers::embed(&self.embed, ids)? * embed_scale)?;
        let mut ropes: Vec<(f64, Rope)> = Vec::new();
        for l in &self.layers {
            if !ropes.iter().any(|(th, _)| *th == l.rope_theta) {
                ropes.push((l.rope_theta, Rope::new(t, c.head_dim, l.rope_theta, dev)?));
            }
        }
        let scale = c.query_pre_attn_scalar.powf(-0.5);
        for l in &self.layers {
            let rope = &ropes.iter().find(|(th, _)| *th == l.rope_theta).unwrap().1;
            let h = l.input_norm.forward(&x)?;
            let (nh, nkv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
            let q = l.q_norm.forward(&l.q.forward(&h)?.reshape((t, nh, hd))?)?;
            let k = l.k_norm.forward(&l.k.forward(&h)?.reshape((t, nkv, hd))?)?;
            let v = l.v.forward(&h)?;
            let (q, k) = (rope.apply_thd(&q, nh)?, rope.apply_thd(&k, nkv)?);
            let a = layers::causal_attention(&q, &k, &v, nh, nkv, scale, l.window, None)?;
            x = x.add(&l.post_attn_norm.forward(&l.o.forward(&a)?)?)?;
            let h = l.pre_ff_norm.forward(&x)?;
            let m = l.down.forward(&layers::gelu_tanh(&l.gate.forward(&h)?)?.mul(&l.up.forward(&h)?)?)?;
            x = x.add(&l.post_ff_norm.forward(&m)?)?;
        }
        let logits = layers::head(&self.norm.forward(&x)?, &self.embed)?;
        Ok(match c.final_logit_softcapping {
            Some(cap) => ((logits / cap)?.tanh()? * cap)?,
            None => logits,
        })
    }

    fn context_length(&self) -> usize {
        self.cfg.max_position_embeddings
    }

    fn vocab_size(&self) -> usize {
        self.cfg.vocab_size
    }
}
