//! Text to vectors with a BERT-family encoder (BERT, RoBERTa) from a Hugging Face folder
//! (`config.json`, `model.safetensors`, `tokenizer.json`): mean pooling of the last hidden
//! state over the attention mask, input truncated to the model's maximum (at most 512 tokens,
//! special tokens included), optional L2 normalisation. The tokenizer's own padding and
//! truncation settings are replaced (all-MiniLM-L6-v2's pads and truncates to 128).
//!
//! The API the TTT loop uses:
//! ```no_run
//! use embed::{Encoder, EncoderOptions};
//! let enc = Encoder::load("~/.cache/tttnn/all-minilm-l6-v2".as_ref(), &EncoderOptions::default()).unwrap();
//! let vecs: Vec<Vec<f32>> = enc.embed(&["a query text"]).unwrap();
//! assert_eq!(vecs[0].len(), enc.dim());
//! let id = enc.identity(); // recorded in an index; compare before searching it
//! ```
//!
//! An index directory made by `tttnn index` holds `store/` (a `corpus::DocStore`),
//! `vectors/` (an `index::FlatIndex`, whose `spec().encoder` is the JSON of an
//! [`EncoderIdentity`]) and `index.json`. Retrieval for one test document is:
//! ```no_run
//! use index::VectorIndex;
//! let dir = std::path::Path::new("my-index");
//! let store = corpus::DocStore::open(&dir.join("store")).unwrap();
//! let vectors = index::FlatIndex::open(&dir.join("vectors")).unwrap();
//! let recorded: embed::EncoderIdentity = serde_json::from_value(vectors.spec().encoder.clone()).unwrap();
//! let enc = embed::Encoder::load_recorded(&recorded, None).unwrap();
//! let q = enc.embed(&["the test document"]).unwrap();
//! for n in &vectors.search(&q[0], 20).unwrap()[0] {
//!     let doc = store.get(n.id).unwrap(); // doc.text, doc.task; n.distance
//! }
//! ```

mod bert;

pub use bert::{BertModel, Config};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tokenizers::{Tokenizer, TruncationParams};

#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("{path}: {message}")]
    Load { path: PathBuf, message: String },
    #[error("encoder forward pass failed: {0}")]
    Forward(String),
    #[error("tokenizer failed: {0}")]
    Tokenize(String),
}

#[derive(Debug, Clone)]
pub struct EncoderOptions {
    /// L2-normalise the pooled vectors (sentence-transformers' all-MiniLM-L6-v2 does).
    pub normalize: bool,
    /// Truncate inputs to this many tokens (special tokens included); capped by the model.
    pub max_tokens: Option<usize>,
    /// Most sequences per forward pass.
    pub batch_size: usize,
}

impl Default for EncoderOptions {
    fn default() -> Self {
        Self { normalize: true, max_tokens: None, batch_size: 32 }
    }
}

/// What made a set of vectors: recorded in an index manifest and compared before a search.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncoderIdentity {
    /// The folder's name, e.g. `all-minilm-l6-v2`.
    pub name: String,
    /// Where it was loaded from (absolute path).
    pub path: PathBuf,
    pub model_type: String,
    pub dim: usize,
    pub max_tokens: usize,
    pub normalize: bool,
    pub pooling: String,
    /// FNV-1a 64 of config.json, tokenizer.json, and the weights' size, first and last MiB.
    pub fingerprint: String,
}

impl EncoderIdentity {
    /// Same model and same options (the path may differ).
    pub fn same_encoder(&self, other: &EncoderIdentity) -> bool {
        self.fingerprint == other.fingerprint
            && self.dim == other.dim
            && self.max_tokens == other.max_tokens
            && self.normalize == other.normalize
            && self.pooling == other.pooling
    }
}

pub struct Encoder {
    model: BertModel,
    tokenizer: Tokenizer,
    identity: EncoderIdentity,
    batch_size: usize,
}

fn fnv(h: &mut u64, bytes: &[u8]) {
    for &b in bytes {
        *h ^= b as u64;
        *h = h.wrapping_mul(0x0100_0000_01b3);
    }
}

fn fingerprint(dir: &Path, weights: &Path) -> Result<String, EmbedError> {
    use std::io::{Read, Seek, SeekFrom};
    let load = |p: PathBuf, e: std::io::Error| EmbedError::Load { path: p, message: e.to_string() };
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for f in ["config.json", "tokenizer.json"] {
        let p = dir.join(f);
        fnv(&mut h, &std::fs::read(&p).map_err(|e| load(p.clone(), e))?);
    }
    let mut f = std::fs::File::open(weights).map_err(|e| load(weights.into(), e))?;
    let len = f.metadata().map_err(|e| load(weights.into(), e))?.len();
    fnv(&mut h, &len.to_le_bytes());
    let mut buf = vec![0u8; (1 << 20).min(len as usize)];
    f.read_exact(&mut buf).map_err(|e| load(weights.into(), e))?;
    fnv(&mut h, &buf);
    f.seek(SeekFrom::Start(len - buf.len() as u64)).map_err(|e| load(weights.into(), e))?;
    f.read_exact(&mut buf).map_err(|e| load(weights.into(), e))?;
    fnv(&mut h, &buf);
    Ok(format!("{h:016x}"))
}

impl Encoder {
    /// Loads an encoder folder. Expands a leading `~/`.
    pub fn load(dir: &Path, opts: &EncoderOptions) -> Result<Self, EmbedError> {
        let dir = expand_home(dir);
        let given_name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let dir = std::fs::canonicalize(&dir).map_err(|e| EmbedError::Load { path: dir.clone(), message: e.to_string() })?;
        let load_err = |p: &Path, m: String| EmbedError::Load { path: p.to_path_buf(), message: m };
        let cfg_path = dir.join("config.json");
        let cfg_bytes = std::fs::read(&cfg_path).map_err(|e| load_err(&cfg_path, e.to_string()))?;
        let config: Config = serde_json::from_slice(&cfg_bytes)
            .map_err(|e| load_err(&cfg_path, format!("not a BERT/RoBERTa config: {e}")))?;
        if !matches!(config.model_type.as_str(), "bert" | "roberta" | "xlm-roberta" | "camembert") {
            return Err(load_err(&cfg_path, format!("model_type {:?}: expected bert or roberta", config.model_type)));
        }
        if !matches!(config.hidden_act.as_str(), "gelu" | "gelu_new" | "gelu_pytorch_tanh") {
            return Err(load_err(&cfg_path, format!("hidden_act {:?} is not supported (gelu)", config.hidden_act)));
        }
        let weights = dir.join("model.safetensors");
        if !weights.exists() {
            return Err(load_err(&weights, "missing (only safetensors weights are read)".into()));
        }
        let device = Device::Cpu;
        // SAFETY: the weights file is mapped read-only and not modified while loaded.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, &device) }
            .map_err(|e| load_err(&weights, e.to_string()))?;
        let prefix = ["", "bert.", "roberta."]
            .into_iter()
            .find(|p| vb.contains_tensor(&format!("{p}embeddings.word_embeddings.weight")))
            .ok_or_else(|| load_err(&weights, "no tensor embeddings.word_embeddings.weight (nor with a bert./roberta. prefix)".into()))?;
        let vb = if prefix.is_empty() { vb } else { vb.pp(prefix.trim_end_matches('.')) };
        let model = BertModel::load(vb, &config).map_err(|e| load_err(&weights, e.to_string()))?;

        let tok_path = dir.join("tokenizer.json");
        let mut tokenizer = Tokenizer::from_file(&tok_path).map_err(|e| load_err(&tok_path, e.to_string()))?;
        let max_tokens = opts.max_tokens.unwrap_or(512).min(config.max_tokens()).min(512);
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams { max_length: max_tokens, ..Default::default() }))
            .map_err(|e| load_err(&tok_path, e.to_string()))?;
        let identity = EncoderIdentity {
            name: given_name,
            path: dir.clone(),
            model_type: config.model_type.clone(),
            dim: config.hidden_size,
            max_tokens,
            normalize: opts.normalize,
            pooling: "mean".into(),
            fingerprint: fingerprint(&dir, &weights)?,
        };
        Ok(Self { model, tokenizer, identity, batch_size: opts.batch_size.max(1) })
    }

    /// Loads the encoder an index recorded, with the recorded options, from the recorded
    /// path or from `dir` when given; fails with "index/encoder mismatch" when the model
    /// found there is not the one that made the index.
    pub fn load_recorded(recorded: &EncoderIdentity, dir: Option<&Path>) -> Result<Self, EmbedError> {
        let dir = dir.map(Path::to_path_buf).unwrap_or_else(|| recorded.path.clone());
        let opts = EncoderOptions { normalize: recorded.normalize, max_tokens: Some(recorded.max_tokens), batch_size: 32 };
        let enc = Self::load(&dir, &opts)?;
        if !enc.identity.same_encoder(recorded) {
            return Err(EmbedError::Load {
                path: dir,
                message: format!(
                    "index/encoder mismatch: the index was built with {} (fingerprint {}, dim {}), this folder holds {} (fingerprint {}, dim {})",
                    recorded.name, recorded.fingerprint, recorded.dim, enc.identity.name, enc.identity.fingerprint, enc.identity.dim
                ),
            });
        }
        Ok(enc)
    }

    pub fn dim(&self) -> usize {
        self.identity.dim
    }
    pub fn identity(&self) -> &EncoderIdentity {
        &self.identity
    }
    pub fn config(&self) -> &Config {
        &self.model.config
    }

    /// Token ids (special tokens included, truncated) of each text. Texts are first cut to
    /// `max_tokens * 128` bytes (at a char boundary) so a huge document costs no more than
    /// its head; a WordPiece/BPE token never spans that many bytes in real text.
    pub fn tokenize(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>, EmbedError> {
        let cap = self.identity.max_tokens * 128;
        let cut: Vec<&str> = texts
            .iter()
            .map(|t| {
                if t.len() <= cap {
                    t
                } else {
                    let mut end = cap;
                    while !t.is_char_boundary(end) {
                        end -= 1;
                    }
                    &t[..end]
                }
            })
            .collect();
        let enc = self.tokenizer.encode_batch(cut, true).map_err(|e| EmbedError::Tokenize(e.to_string()))?;
        Ok(enc.into_iter().map(|e| e.get_ids().to_vec()).collect())
    }

    /// Embeds texts; returns one vector per text, in order. Texts are grouped by length into
    /// batches (less padding); the matrix products use every core.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let ids = self.tokenize(texts)?;
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(ids[i].len()));
        let mut out = vec![Vec::new(); ids.len()];
        // Batches bounded by the sequence count, ~16k padded tokens, and the attention
        // scores' size (batch x heads x t^2 <= 8M values, 32 MB), which bounds peak memory.
        let heads = self.model.config.num_attention_heads.max(1);
        let mut start = 0;
        while start < order.len() {
            let longest = ids[order[start]].len().max(1);
            let by_attention = (8usize << 20) / (heads * longest * longest);
            let n = self.batch_size.min((16384 / longest).max(1)).min(by_attention.max(1)).min(order.len() - start);
            let batch: Vec<Vec<u32>> = order[start..start + n].iter().map(|&i| ids[i].clone()).collect();
            let pooled = self
                .model
                .mean_pooled(&batch)
                .and_then(|t| t.to_vec2::<f32>())
                .map_err(|e| EmbedError::Forward(e.to_string()))?;
            for (j, mut v) in pooled.into_iter().enumerate() {
                if self.identity.normalize {
                    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                    v.iter_mut().for_each(|x| *x /= norm);
                }
                out[order[start + j]] = v;
            }
            start += n;
        }
        Ok(out)
    }
}

/// `~/x` to `$HOME/x`.
pub fn expand_home(p: &Path) -> PathBuf {
    if let Ok(rest) = p.strip_prefix("~") {
        if let Some(home) = std::env::var_os("HOME") {
            return PathBuf::from(home).join(rest);
        }
    }
    p.to_path_buf()
}

/// The asset cache: `$TTTNN_CACHE`, else `~/.cache/tttnn`.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("TTTNN_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| expand_home(Path::new("~/.cache/tttnn")))
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}
