//! GGUF files (llama.cpp): architecture and tokenizer from the metadata, tensors
//! dequantized to f32 for training, renamed to the Hugging Face names the architectures use.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{Device, Tensor};

use crate::model::Model;
use crate::models::llama::DecoderSpec;
use crate::tokenizer::{SpecialTokens, Tokenizer};
use crate::weights::Checkpoint;

pub fn load(path: &Path, device: &Device) -> Result<Model> {
    let file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mut reader = BufReader::new(file);
    let content = match Content::read(&mut reader) {
        Ok(c) => c,
        Err(e) => {
            // candle's message names only the type code; find the tensor for the user.
            let detail = match unsupported_tensor(path) {
                Some((name, code)) => format!("tensor {name} has GGML type {code}, which is not supported"),
                None => e.to_string(),
            };
            bail!("{}: cannot read GGUF: {detail}", path.display());
        }
    };
    let md = Metadata { map: &content.metadata, path };
    let arch = md.string("general.architecture")?;
    let (spec, llama_permuted) = match arch.as_str() {
        "llama" => (decoder_spec(&md, &arch, false)?, true),
        "qwen2" => (decoder_spec(&md, &arch, true)?, false),
        other => bail!("{}: GGUF architecture {other:?} is not supported (llama, qwen2)", path.display()),
    };
    let tokenizer = tokenizer(&md)?;
    let special = SpecialTokens {
        bos: md.opt_u32("tokenizer.ggml.bos_token_id"),
        eos: md.opt_u32("tokenizer.ggml.eos_token_id"),
    };
    let mut tensors = HashMap::new();
    for (name, info) in content.tensor_infos.iter() {
        let q = info
            .read(&mut reader, content.tensor_data_offset, device)
            .with_context(|| format!("{}: tensor {name}", path.display()))?;
        let t = q.dequantize(device).with_context(|| format!("{}: dequantizing tensor {name}", path.display()))?;
        let Some(hf) = hf_name(name) else { continue };
        let t = match (llama_permuted, hf.as_str()) {
            (true, n) if n.ends_with("q_proj.weight") || n.ends_with("q_proj.bias") => unpermute(&t, spec.heads)?,
            (true, n) if n.ends_with("k_proj.weight") || n.ends_with("k_proj.bias") => unpermute(&t, spec.kv_heads)?,
            _ => t,
        };
        tensors.insert(hf, t);
    }
    let mut spec = spec;
    spec.tie_embeddings = !tensors.contains_key("lm_head.weight");
    let checkpoint = Checkpoint { tensors, source: path.to_path_buf() };
    let builder = move |w: &mut dyn crate::weights::WeightSource| -> Result<Box<dyn crate::model::Architecture>> {
        Ok(Box::new(crate::models::llama::Decoder::load(spec.clone(), w)?))
    };
    Model::build(arch, &checkpoint, device, &builder, Some(tokenizer), special)
}

/// llama.cpp stores Llama's q/k rows permuted for its interleaved RoPE
/// (`reshape(n_head, 2, hd/2).swapaxes(1, 2)`); this undoes it, back to the half-split layout.
fn unpermute(t: &Tensor, heads: usize) -> Result<Tensor> {
    let dims = t.dims().to_vec();
    let rows = dims[0];
    let rest: usize = dims[1..].iter().product();
    let half = rows / heads / 2;
    Ok(t.reshape((heads, half, 2, rest))?.transpose(1, 2)?.contiguous()?.reshape(dims)?)
}

fn hf_name(gguf: &str) -> Option<String> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let (module, kind) = part.rsplit_once('.')?;
    let hf = match module {
        "attn_norm" => "input_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_norm" => "post_attention_layernorm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{kind}"))
}

struct Metadata<'a> {
    map: &'a HashMap<String, Value>,
    path: &'a Path,
}

impl Metadata<'_> {
    fn get(&self, key: &str) -> Result<&Value> {
        self.map.get(key).with_context(|| format!("{}: GGUF metadata has no {key}", self.path.display()))
    }
    fn string(&self, key: &str) -> Result<String> {
        Ok(self.get(key)?.to_string().with_context(|| format!("{}: {key}", self.path.display()))?.clone())
    }
    fn usize(&self, key: &str) -> Result<usize> {
        let v = self.get(key)?;
        let n = v.to_u64().or_else(|_| v.to_u32().map(u64::from)).or_else(|_| v.to_i32().map(|x| x as u64));
        Ok(n.with_context(|| format!("{}: {key} is not an integer", self.path.display()))? as usize)
    }
    fn f64(&self, key: &str) -> Result<f64> {
        let v = self.get(key)?;
        let x = v.to_f32().map(f64::from).or_else(|_| v.to_f64());
        x.with_context(|| format!("{}: {key} is not a number", self.path.display()))
    }
    fn opt_u32(&self, key: &str) -> Option<u32> {
        let v = self.map.get(key)?;
        v.to_u32().ok().or_else(|| v.to_u64().ok().map(|x| x as u32))
    }
    fn strings(&self, key: &str) -> Result<Vec<String>> {
        self.get(key)?
            .to_vec()
            .with_context(|| format!("{}: {key} is not an array", self.path.display()))?
            .iter()
            .map(|v| v.to_string().cloned().with_context(|| format!("{}: {key} holds a non-string", self.path.display())))
            .collect()
    }
}

fn decoder_spec(md: &Metadata, arch: &str, qkv_bias: bool) -> Result<DecoderSpec> {
    let k = |s: &str| format!("{arch}.{s}");
    let hidden = md.usize(&k("embedding_length"))?;
    let heads = md.usize(&k("attention.head_count"))?;
    let kv_heads = md.usize(&k("attention.head_count_kv")).unwrap_or(heads);
    let n_layers = md.usize(&k("block_count"))?;
    let theta = md.f64(&k("rope.freq_base")).unwrap_or(10000.0);
    let vocab_size = md.strings("tokenizer.ggml.tokens")?.len();
    Ok(DecoderSpec {
        vocab_size,
        hidden,
        intermediate: md.usize(&k("feed_forward_length"))?,
        heads,
        kv_heads,
        head_dim: md.usize(&k("attention.key_length")).unwrap_or(hidden / heads),
        eps: md.f64(&k("attention.layer_norm_rms_epsilon"))?,
        max_positions: md.usize(&k("context_length"))?,
        tie_embeddings: true,
        qkv_bias,
        o_bias: false,
        mlp_bias: false,
        attention_dropout: 0.0,
        layers: vec![(theta, None); n_layers],
    })
}

fn tokenizer(md: &Metadata) -> Result<Tokenizer> {
    let model = md.string("tokenizer.ggml.model")?;
    if model != "gpt2" {
        bail!(
            "{}: GGUF tokenizer model {model:?} is not supported (only byte-level BPE, \"gpt2\"); \
             use the model's Hugging Face folder with its tokenizer.json",
            md.path.display()
        );
    }
    let pre = md.map.get("tokenizer.ggml.pre").and_then(|v| v.to_string().ok().cloned());
    Tokenizer::from_gguf_bpe(md.strings("tokenizer.ggml.tokens")?, md.strings("tokenizer.ggml.merges")?, pre.as_deref())
        .with_context(|| format!("{}: tokenizer", md.path.display()))
}

/// Scans a GGUF header for the first tensor whose type candle cannot read; returns its name
/// and type code. Used only to explain a failed read.
fn unsupported_tensor(path: &Path) -> Option<(String, u32)> {
    const KNOWN: &[u32] = &[0, 1, 2, 3, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 30];
    let mut r = BufReader::new(File::open(path).ok()?);
    let magic = read_u32(&mut r)?;
    let version = read_u32(&mut r)?;
    if magic != 0x4655_4747 || version < 2 {
        return None;
    }
    let n_tensors = read_u64(&mut r)?;
    let n_kv = read_u64(&mut r)?;
    fn skip(r: &mut BufReader<File>, n: u64) -> Option<()> {
        r.seek_relative(n as i64).ok()
    }
    fn read_u32(r: &mut BufReader<File>) -> Option<u32> {
        let mut b = [0u8; 4];
        r.read_exact(&mut b).ok()?;
        Some(u32::from_le_bytes(b))
    }
    fn read_u64(r: &mut BufReader<File>) -> Option<u64> {
        let mut b = [0u8; 8];
        r.read_exact(&mut b).ok()?;
        Some(u64::from_le_bytes(b))
    }
    fn read_string(r: &mut BufReader<File>) -> Option<String> {
        let n = read_u64(r)?;
        if n > 1 << 24 {
            return None;
        }
        let mut v = vec![0u8; n as usize];
        r.read_exact(&mut v).ok()?;
        Some(String::from_utf8_lossy(&v).into_owned())
    }
    fn skip_value(r: &mut BufReader<File>, ty: u32) -> Option<()> {
        match ty {
            0 | 1 | 7 => skip(r, 1),
            2 | 3 => skip(r, 2),
            4..=6 => skip(r, 4),
            10..=12 => skip(r, 8),
            8 => read_string(r).map(|_| ()),
            9 => {
                let item = read_u32(r)?;
                let n = read_u64(r)?;
                (0..n).try_for_each(|_| skip_value(r, item))
            }
            _ => None,
        }
    }
    for _ in 0..n_kv {
        read_string(&mut r)?;
        let ty = read_u32(&mut r)?;
        skip_value(&mut r, ty)?;
    }
    for _ in 0..n_tensors {
        let name = read_string(&mut r)?;
        let n_dims = read_u32(&mut r)?;
        skip(&mut r, 8 * n_dims as u64)?;
        let ty = read_u32(&mut r)?;
        read_u64(&mut r)?;
        if !KNOWN.contains(&ty) {
            return Some((name, ty));
        }
    }
    None
}
