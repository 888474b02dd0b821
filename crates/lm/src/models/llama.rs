//! Llama (transformers `LlamaForCausalLM`, e.g. SmolLM2): RMSNorm, rotary positions
//! (half-split layout), grouped-query attention, SwiGLU MLP, optionally tied head.
//!
//! The decoder here is also Qwen2's (`qwen2.rs` maps its config onto [`DecoderSpec`]): the
//! two differ only in q/k/v biases and default values.

use anyhow::{bail, Result};
use candle_core::Tensor;
use rand::rngs::StdRng;
use serde::Deserialize;
use serde_json::Value;

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
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default)]
    pub attention_dropout: f32,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// transformers < 5 (`rope_theta`) or ≥ 5 (`rope_parameters.rope_theta`).
    pub rope_theta: Option<f64>,
    pub rope_parameters: Option<Value>,
    pub rope_scaling: Option<Value>,
}

fn default_eps() -> f64 {
    1e-6
}
fn default_act() -> String {
    "silu".into()
}

/// The RoPE base for a layer kind, from `rope_parameters` (flat, or keyed by layer type) or
/// the older top-level `rope_theta`. Only the default (unscaled) RoPE is supported.
pub fn rope_theta(
    rope_theta: Option<f64>,
    rope_parameters: Option<&Value>,
    rope_scaling: Option<&Value>,
    layer_type: &str,
    default: f64,
) -> Result<f64> {
    let check = |v: &Value| -> Result<()> {
        match v.get("rope_type").or_else(|| v.get("type")).and_then(Value::as_str) {
            None | Some("default") => Ok(()),
            Some(other) => bail!("RoPE scaling {other:?} is not supported (only the default RoPE)"),
        }
    };
    if let Some(s) = rope_scaling.filter(|s| !s.is_null()) {
        check(s)?;
    }
    if let Some(p) = rope_parameters {
        let p = p.get(layer_type).unwrap_or(p);
        check(p)?;
        if let Some(t) = p.get("rope_theta").and_then(Value::as_f64) {
            return Ok(t);
        }
    }
    Ok(rope_theta.unwrap_or(default))
}

/// Everything the shared decoder needs, per architecture.
#[derive(Debug, Clone)]
pub struct DecoderSpec {
    pub vocab_size: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub eps: f64,
    pub max_positions: usize,
    pub tie_embeddings: bool,
    pub qkv_bias: bool,
    pub o_bias: bool,
    pub mlp_bias: bool,
    pub attention_dropout: f32,
    /// Per layer: RoPE base and sliding window (None = full causal attention).
    pub layers: Vec<(f64, Option<usize>)>,
}

impl Config {
    pub fn spec(&self) -> Result<DecoderSpec> {
        if self.hidden_act != "silu" {
            bail!("Llama activation {:?} is not supported (expected silu)", self.hidden_act);
        }
        let theta = rope_theta(
            self.rope_theta,
            self.rope_parameters.as_ref(),
            self.rope_scaling.as_ref(),
            "full_attention",
            10000.0,
        )?;
        Ok(DecoderSpec {
            vocab_size: self.vocab_size,
            hidden: self.hidden_size,
            intermediate: self.intermediate_size,
            heads: self.num_attention_heads,
            kv_heads: self.num_key_value_heads.unwrap_or(self.num_attention_heads),
            head_dim: self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads),
            eps: self.rms_norm_eps,
            max_positions: self.max_position_embeddings,
            tie_embeddings: self.tie_word_embeddings,
            qkv_bias: self.attention_bias,
            o_bias: self.attention_bias,
            mlp_bias: self.mlp_bias,
            attention_dropout: self.attention_dropout,
            layers: vec![(theta, None); self.num_hidden_layers],
        })
    }
}

struct Layer {
    input_norm: RmsNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    post_norm: RmsNorm,
    gate: Linear,
    up: Linear,
    down: Linear,
    rope_theta: f64,
    window: Option<usize>,
}

pub struct Decoder {
    spec: DecoderSpec,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: Tensor,
}

/// The output head: the untied `lm_head.weight`, or the token embedding when tied.
pub(crate) fn lm_head(w: &mut dyn WeightSource, tie: bool, embed: &Tensor, shape: &[usize]) -> Result<Tensor> {
    if tie {
        Ok(embed.clone())
    } else {
        w.get("lm_head.weight", shape)
    }
}

impl Decoder {
    pub fn load(spec: DecoderSpec, w: &mut dyn WeightSource) -> Result<Self> {
        let s = &spec;
        let (d, hd) = (s.hidden, s.head_dim);
        let embed = w.get("model.embed_tokens.weight", &[s.vocab_size, d])?;
        let mut layers = Vec::new();
        for (i, &(rope_theta, window)) in s.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            let norm = |w: &mut dyn WeightSource, n: &str| -> Result<RmsNorm> {
                Ok(RmsNorm::new(w.get(&format!("{p}.{n}.weight"), &[d])?, s.eps, false))
            };
            layers.push(Layer {
                input_norm: norm(w, "input_layernorm")?,
                q: linear(w, &format!("{p}.self_attn.q_proj"), d, s.heads * hd, s.qkv_bias)?,
                k: linear(w, &format!("{p}.self_attn.k_proj"), d, s.kv_heads * hd, s.qkv_bias)?,
                v: linear(w, &format!("{p}.self_attn.v_proj"), d, s.kv_heads * hd, s.qkv_bias)?,
                o: linear(w, &format!("{p}.self_attn.o_proj"), s.heads * hd, d, s.o_bias)?,
                post_norm: norm(w, "post_attention_layernorm")?,
                gate: linear(w, &format!("{p}.mlp.gate_proj"), d, s.intermediate, s.mlp_bias)?,
                up: linear(w, &format!("{p}.mlp.up_proj"), d, s.intermediate, s.mlp_bias)?,
                down: linear(w, &format!("{p}.mlp.down_proj"), s.intermediate, d, s.mlp_bias)?,
                rope_theta,
                window,
            });
        }
        let norm = RmsNorm::new(w.get("model.norm.weight", &[d])?, s.eps, false);
        let lm_head = lm_head(w, s.tie_embeddings, &embed, &[s.vocab_size, d])?;
        Ok(Self { spec, embed, layers, norm, lm_head })
    }
}

impl Architecture for Decoder {
    fn forward(&self, ids: &[u32], mut rng: Option<&mut StdRng>) -> Result<Tensor> {
        let s = &self.spec;
        let t = ids.len();
        let dev = self.embed.device();
        let mut x = layers::embed(&self.embed, ids)?;
        let mut ropes: Vec<(f64, Rope)> = Vec::new();
        for l in &self.layers {
            if !ropes.iter().any(|(th, _)| *th == l.rope_theta) {
                ropes.push((l.rope_theta, Rope::new(t, s.head_dim, l.rope_theta, dev)?));
            }
        }
        let scale = 1.0 / (s.head_dim as f64).sqrt();
        for l in &self.layers {
            let rope = &ropes.iter().find(|(th, _)| *th == l.rope_theta).unwrap().1;
            let h = l.input_norm.forward(&x)?;
            let q = rope.apply_thd(&l.q.forward(&h)?, s.heads)?;
            let k = rope.apply_thd(&l.k.forward(&h)?, s.kv_heads)?;
            let v = l.v.forward(&h)?;
            let drop = rng.as_deref_mut().filter(|_| s.attention_dropout > 0.0).map(|r| (s.attention_dropout, r));
            let a = layers::causal_attention(&q, &k, &v, s.heads, s.kv_heads, scale, l.window, drop)?;
            x = x.add(&l.o.forward(&a)?)?;
            let h = l.post_norm.forward(&x)?;
            let g = layers::swiglu(&l.gate.forward(&h)?, &l.up.forward(&h)?)?;
            x = x.add(&l.down.forward(&g)?)?;
        }
        let x = self.norm.forward(&x)?;
        Ok(layers::head(&x, &self.lm_head)?)
    }

    fn context_length(&self) -> usize {
        self.spec.max_positions
    }

    fn vocab_size(&self) -> usize {
        self.spec.vocab_size
    }
}
