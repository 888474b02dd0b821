//! Opening a model: a Hugging Face folder (`config.json`, `*.safetensors`, tokenizer files)
//! or a GGUF file. Dispatches on the architecture named in the config.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::Device;

use crate::model::{Architecture, Model};
use crate::models::{gemma3, gpt2, gpt_neo, llama, qwen2};
use crate::tokenizer::{self, Tokenizer};
use crate::weights::{Checkpoint, WeightSource};

/// The architectures this crate implements, by `model_type`.
pub const SUPPORTED: &[&str] = &["gpt2", "gpt_neo", "llama", "qwen2", "gemma3_text"];

pub fn load(path: &Path, device: &Device) -> Result<Model> {
    if path.is_dir() {
        load_folder(path, device)
    } else if path.extension().is_some_and(|e| e == "gguf") {
        crate::gguf::load(path, device)
    } else if path.exists() {
        bail!("{}: expected a Hugging Face model folder or a .gguf file", path.display())
    } else {
        bail!("{}: no such model folder or file", path.display())
    }
}

fn parse<T: serde::de::DeserializeOwned>(config: &serde_json::Value, path: &Path) -> Result<T> {
    serde_json::from_value(config.clone()).with_context(|| format!("{}: invalid config", path.display()))
}

/// Builds the architecture that `model_type` names from a config.json value.
pub(crate) fn builder_for(
    model_type: &str,
    config: &serde_json::Value,
    config_path: &Path,
) -> Result<Box<dyn Fn(&mut dyn WeightSource) -> Result<Box<dyn Architecture>>>> {
    Ok(match model_type {
        "gpt2" => {
            let c: gpt2::Config = parse(config, config_path)?;
            Box::new(move |w| Ok(Box::new(gpt2::Gpt2::load(&c, w)?)))
        }
        "gpt_neo" => {
            let c: gpt_neo::Config = parse(config, config_path)?;
            c.layer_kinds().with_context(|| format!("{}", config_path.display()))?;
            Box::new(move |w| Ok(Box::new(gpt_neo::GptNeo::load(&c, w)?)))
        }
        "llama" => {
            let spec = parse::<llama::Config>(config, config_path)?.spec()?;
            Box::new(move |w| Ok(Box::new(llama::Decoder::load(spec.clone(), w)?)))
        }
        "qwen2" => {
            let spec = parse::<qwen2::Config>(config, config_path)?.spec()?;
            Box::new(move |w| Ok(Box::new(llama::Decoder::load(spec.clone(), w)?)))
        }
        "gemma3_text" => {
            let c: gemma3::Config = parse(config, config_path)?;
            Box::new(move |w| Ok(Box::new(gemma3::Gemma3::load(&c, w)?)))
        }
        other => bail!(
            "{}: unknown architecture {other:?} (supported: {})",
            config_path.display(),
            SUPPORTED.join(", ")
        ),
    })
}

fn load_folder(dir: &Path, device: &Device) -> Result<Model> {
    let config_path = dir.join("config.json");
    let text = std::fs::read_to_string(&config_path)
        .with_context(|| format!("{}: cannot read the model config", config_path.display()))?;
    let config: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", config_path.display()))?;
    let model_type = config
        .get("model_type")
        .and_then(|v| v.as_str())
        .with_context(|| format!("{}: no \"model_type\"", config_path.display()))?
        .to_string();
    let builder = builder_for(&model_type, &config, &config_path)?;
    let checkpoint = read_safetensors(dir, device)?;
    let tok = tokenizer::load_from_folder(dir)?;
    let special = tokenizer::special_from_config(&config);
    Model::build(model_type, &checkpoint, device, &*builder, tok, special)
}

/// Reads every `*.safetensors` file of a folder into one name → tensor map.
fn read_safetensors(dir: &Path, device: &Device) -> Result<Checkpoint> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot list the model folder", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("{}: no *.safetensors weight file", dir.display());
    }
    let mut tensors = HashMap::new();
    for f in &files {
        let t = candle_core::safetensors::load(f, device)
            .with_context(|| format!("{}: cannot read weights (truncated or corrupt safetensors file?)", f.display()))?;
        tensors.extend(t);
    }
    Ok(Checkpoint { tensors, source: if files.len() == 1 { files[0].clone() } else { dir.to_path_buf() } })
}

/// A tokenizer for a model loaded without one (e.g. GPT-2 weights and the separate
/// `vocab.json`/`merges.txt` files).
pub fn tokenizer_from(path: &Path) -> Result<Tokenizer> {
    if path.is_dir() {
        tokenizer::load_from_folder(path)?.with_context(|| format!("{}: no tokenizer files", path.display()))
    } else {
        Tokenizer::from_json(path)
    }
}
