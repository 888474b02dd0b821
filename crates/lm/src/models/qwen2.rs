//! Qwen2 (transformers `Qwen2ForCausalLM`, e.g. DeepSeek-R1-Distill-Qwen-1.5B): the Llama
//! decoder with biases on the q/k/v projections (not on the output projection), and an
//! optional sliding window on the layers that `layer_types` marks `sliding_attention`.

use anyhow::{bail, Result};
use serde::Deserialize;
use serde_json::Value;

use super::llama::{rope_theta, DecoderSpec};

#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: Option<usize>,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub attention_dropout: f32,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    pub rope_theta: Option<f64>,
    pub rope_parameters: Option<Value>,
    pub rope_scaling: Option<Value>,
    #[serde(default)]
    pub use_sliding_window: bool,
    pub sliding_window: Option<usize>,
    #[serde(default = "default_max_window_layers")]
    pub max_window_layers: usize,
    pub layer_types: Option<Vec<String>>,
}

fn default_eps() -> f64 {
    1e-6
}
fn default_act() -> String {
    "silu".into()
}
fn default_max_window_layers() -> usize {
    28
}

impl Config {
    pub fn spec(&self) -> Result<DecoderSpec> {
        if self.hidden_act != "silu" {
            bail!("Qwen2 activation {:?} is not supported (expected silu)", self.hidden_act);
        }
        let n = self.num_hidden_layers;
        // As transformers: without layer_types, layers from max_window_layers on slide when
        // use_sliding_window is set.
        let types: Vec<String> = match &self.layer_types {
            Some(t) if t.len() == n => t.clone(),
            Some(t) => bail!("layer_types has {} entries, num_hidden_layers is {n}", t.len()),
            None => (0..n)
                .map(|i| {
                    let slide = self.use_sliding_window && i >= self.max_window_layers;
                    if slide { "sliding_attention" } else { "full_attention" }.to_string()
                })
                .collect(),
        };
        let mut layers = Vec::with_capacity(n);
        for ty in &types {
            let theta = rope_theta(
                self.rope_theta,
                self.rope_parameters.as_ref(),
                self.rope_scaling.as_ref(),
                ty,
                10000.0,
            )?;
            let window = match ty.as_str() {
                "full_attention" => None,
                "sliding_attention" => Some(self.sliding_window.ok_or_else(|| {
                    anyhow::anyhow!("a sliding_attention layer but no sliding_window in the config")
                })?),
                other => bail!("unknown Qwen2 layer type {other:?}"),
            };
            layers.push((theta, window));
        }
        Ok(DecoderSpec {
            vocab_size: self.vocab_size,
            hidden: self.hidden_size,
            intermediate: self.intermediate_size,
            heads: self.num_attention_heads,
            kv_heads: self.num_key_value_heads.unwrap_or(self.num_attention_heads),
            head_dim: self.hidden_size / self.num_attention_heads,
            eps: self.rms_norm_eps,
            max_positions: self.max_position_embeddings,
            tie_embeddings: self.tie_word_embeddings,
            qkv_bias: true,
            o_bias: false,
            mlp_bias: false,
            attention_dropout: self.attention_dropout,
            layers,
        })
    }
}
