//! Tokenizers, all through the `tokenizers` crate: a Hugging Face `tokenizer.json`, a GPT-2
//! style `vocab.json` + `merges.txt` pair, or the byte-level BPE stored in GGUF metadata.

use std::path::Path;

use anyhow::{anyhow, bail, Result};
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::SplitDelimiterBehavior;

/// Special token ids a model declares.
#[derive(Debug, Clone, Copy, Default)]
pub struct SpecialTokens {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
}

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
}

impl Tokenizer {
    /// A Hugging Face `tokenizer.json`. Padding and truncation are switched off: scoring
    /// and training see every token of the text.
    pub fn from_json(path: &Path) -> Result<Self> {
        let mut inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| anyhow!("{}: cannot load tokenizer: {e}", path.display()))?;
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| anyhow!("{}: {e}", path.display()))?;
        Ok(Self { inner })
    }

    /// GPT-2's byte-level BPE from `vocab.json` (a.k.a. `encoder.json`) and `merges.txt`
    /// (a.k.a. `vocab.bpe`).
    pub fn from_vocab_merges(vocab: &Path, merges: &Path) -> Result<Self> {
        let bpe = BPE::from_file(&vocab.to_string_lossy(), &merges.to_string_lossy())
            .build()
            .map_err(|e| anyhow!("{} / {}: cannot load BPE: {e}", vocab.display(), merges.display()))?;
        Ok(Self::byte_level(bpe, vec![], true))
    }

    /// The byte-level BPE of a GGUF file (`tokenizer.ggml.model` = "gpt2"): tokens,
    /// merges, and the pre-tokenizer named by `tokenizer.ggml.pre`.
    pub fn from_gguf_bpe(tokens: Vec<String>, merges: Vec<String>, pre: Option<&str>) -> Result<Self> {
        let vocab: tokenizers::models::bpe::Vocab = tokens.into_iter().enumerate().map(|(i, t)| (t, i as u32)).collect();
        let merges = merges
            .iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| anyhow!("GGUF merge {m:?} is not two tokens separated by a space"))
            })
            .collect::<Result<Vec<_>>>()?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| anyhow!("cannot build the GGUF BPE tokenizer: {e}"))?;
        // The regexes of llama.cpp's pre-tokenizer types (llama-vocab.cpp), as transformers
        // writes them into tokenizer.json.
        let before: Vec<PreTokenizerWrapper> = match pre.unwrap_or("default") {
            "default" | "gpt2" | "gpt-2" => vec![],
            "smollm" => vec![Digits::new(true).into()],
            "qwen2" | "deepseek-r1-qwen" => vec![split(
                r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
            )?],
            "llama-bpe" | "llama3" => vec![split(
                r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
            )?],
            other => bail!("GGUF pre-tokenizer {other:?} is not supported (supported: gpt2, smollm, qwen2, llama-bpe)"),
        };
        // With a Split regex first, the ByteLevel step only maps bytes to characters.
        let use_regex = !before.iter().any(|p| matches!(p, PreTokenizerWrapper::Split(_)));
        Ok(Self::byte_level(bpe, before, use_regex))
    }

    fn byte_level(bpe: BPE, mut before: Vec<PreTokenizerWrapper>, use_regex: bool) -> Self {
        let mut inner = tokenizers::Tokenizer::new(bpe);
        before.push(ByteLevel::new(false, true, use_regex).into());
        inner.with_pre_tokenizer(Some(Sequence::new(before)));
        inner.with_decoder(Some(ByteLevel::default()));
        Self { inner }
    }

    /// Token ids of `text`, without special tokens.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(|e| anyhow!("tokenizing: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(|e| anyhow!("decoding: {e}"))
    }

    /// Tokens in the vocabulary, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
}

fn split(regex: &str) -> Result<PreTokenizerWrapper> {
    let s = Split::new(SplitPattern::Regex(regex.into()), SplitDelimiterBehavior::Isolated, false)
        .map_err(|e| anyhow!("pre-tokenizer regex: {e}"))?;
    Ok(s.into())
}

/// Loads the tokenizer of a Hugging Face model folder: `tokenizer.json`, else
/// `vocab.json` + `merges.txt`. None when the folder has neither.
pub fn load_from_folder(dir: &Path) -> Result<Option<Tokenizer>> {
    let json = dir.join("tokenizer.json");
    if json.exists() {
        return Tokenizer::from_json(&json).map(Some);
    }
    let (vocab, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
    if vocab.exists() && merges.exists() {
        return Tokenizer::from_vocab_merges(&vocab, &merges).map(Some);
    }
    Ok(None)
}

/// Reads `bos_token_id` / `eos_token_id` from a config.json value.
pub fn special_from_config(config: &serde_json::Value) -> SpecialTokens {
    let id = |k: &str| config.get(k).and_then(|v| v.as_u64().or_else(|| v.get(0)?.as_u64())).map(|v| v as u32);
    SpecialTokens { bos: id("bos_token_id"), eos: id("eos_token_id") }
}
