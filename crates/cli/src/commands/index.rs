//! `tttnn index`: build (or resume building) a retrieval index over a corpus.
//!
//! Index directory: `index.json` (what was indexed, with which encoder), `store/` (the
//! document store: byte offsets, never the texts), `vectors/` (flat index shards).
//! Resumable: rerun the same command after an interruption and it continues after the last
//! whole shard; the store, once complete, is reused.

use anyhow::{bail, Context, Result};
use corpus::{build_store, BuildOptions, CorpusInput, DocStore};
use embed::{Encoder, EncoderOptions};
use index::{Dtype, IndexSpec, IndexWriter, Metric};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
    /// Corpus inputs: Pile-format `.jsonl` / `.jsonl.zst` files, or folders of text files
    /// (one document per file).
    #[arg(long, num_args = 1.., required = true)]
    pub corpus: Vec<PathBuf>,
    /// Encoder folder (Hugging Face BERT/RoBERTa: config.json, model.safetensors, tokenizer.json).
    #[arg(long, default_value = "~/.cache/tttnn/all-minilm-l6-v2")]
    pub encoder: PathBuf,
    /// Index directory to create (or resume).
    #[arg(long)]
    pub out: PathBuf,
    /// Task name for folder documents (default: the folder's name) and for JSONL lines
    /// without `meta.pile_set_name` (default: "unknown").
    #[arg(long)]
    pub task: Option<String>,
    /// Share of each folder's files held out as test documents (by a hash of the path);
    /// they go to `<out>/store/test.jsonl` and are never indexed.
    #[arg(long, default_value_t = 0.1)]
    pub test_fraction: f64,
    #[arg(long, value_enum, default_value = "l2")]
    pub metric: MetricArg,
    /// Vector storage: f16 halves the memory.
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: DtypeArg,
    /// Vectors per shard file (the most work an interruption can lose).
    #[arg(long, default_value_t = 4096)]
    pub shard_size: usize,
    /// Documents per encoder forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Truncate encoder inputs to this many tokens (default: the model's maximum, at most 512).
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// Do not L2-normalise the embeddings.
    #[arg(long)]
    pub no_normalize: bool,
    /// Embed only the first N documents of the store (the store still covers the whole corpus).
    #[arg(long)]
    pub max_docs: Option<u64>,
    /// Stop embedding after this many seconds, leaving a resumable, unfinished index.
    #[arg(long)]
    pub time_budget: Option<f64>,
    /// Stop after embedding this many documents in this run without finishing, as an
    /// interruption would (for tests).
    #[arg(long, hide = true)]
    pub stop_after_docs: Option<u64>,
    /// Skip malformed JSONL lines (counted) instead of failing on the first.
    #[arg(long)]
    pub skip_bad_lines: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum MetricArg {
    L2,
    Ip,
}
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum DtypeArg {
    F32,
    F16,
}

/// `index.json`: the corpus inputs and the encoder, checked when a build is resumed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct IndexManifest {
    pub format: String,
    pub version: u32,
    pub corpus: Vec<CorpusEntry>,
    pub encoder: embed::EncoderIdentity,
    pub max_docs: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CorpusEntry {
    pub path: PathBuf,
    pub task: Option<String>,
    pub test_fraction: f64,
}

pub fn run(args: Args) -> Result<()> {
    let t0 = Instant::now();
    let out = &args.out;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    if !(0.0..=1.0).contains(&args.test_fraction) {
        bail!("--test-fraction must be in [0, 1], got {}", args.test_fraction);
    }
    let encoder = Encoder::load(
        &args.encoder,
        &EncoderOptions { normalize: !args.no_normalize, max_tokens: args.max_tokens, batch_size: args.batch_size },
    )
    .with_context(|| format!("loading the encoder {}", args.encoder.display()))?;

    let mut corpus = Vec::new();
    let mut inputs = Vec::new();
    for p in &args.corpus {
        let abs = std::fs::canonicalize(p).with_context(|| format!("corpus input {}", p.display()))?;
        inputs.push(CorpusInput::from_path(&abs, args.task.as_deref(), args.test_fraction)?);
        corpus.push(CorpusEntry { path: abs, task: args.task.clone(), test_fraction: args.test_fraction });
    }
    let manifest = IndexManifest {
        format: "tttnn-index".into(),
        version: 1,
        corpus,
        encoder: encoder.identity().clone(),
        max_docs: args.max_docs,
    };
    let mpath = out.join("index.json");
    if mpath.exists() {
        let old: IndexManifest = serde_json::from_slice(&std::fs::read(&mpath)?)
            .with_context(|| format!("{}: not a tttnn index manifest", mpath.display()))?;
        if old.corpus != manifest.corpus {
            bail!(
                "{}: this index was started over another corpus ({:?}); use a new --out",
                mpath.display(),
                old.corpus.iter().map(|c| c.path.display().to_string()).collect::<Vec<_>>()
            );
        }
        if !old.encoder.same_encoder(&manifest.encoder) {
            bail!(
                "{}: index/encoder mismatch: the index was started with {} (fingerprint {}, dim {}, normalize {}), resuming with {} (fingerprint {}, dim {}, normalize {})",
                mpath.display(), old.encoder.name, old.encoder.fingerprint, old.encoder.dim, old.encoder.normalize,
                manifest.encoder.name, manifest.encoder.fingerprint, manifest.encoder.dim, manifest.encoder.normalize
            );
        }
    }
    let tmp = out.join("index.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&manifest)?)?;
    std::fs::rename(&tmp, &mpath)?;

    // 1. The document store (one streaming pass; reused once complete).
    let store_dir = out.join("store");
    if !DocStore::exists(&store_dir) {
        let total: u64 = args.corpus.iter().map(|p| dir_size(p)).sum();
        let bar = ProgressBar::new(total).with_style(
            ProgressStyle::with_template("store  {bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}").unwrap(),
        );
        let m = build_store(&store_dir, &inputs, &BuildOptions { skip_bad_lines: args.skip_bad_lines }, &mut |b| bar.inc(b))?;
        bar.finish_and_clear();
        eprintln!(
            "store: {} documents from {} bytes of text ({} bad lines skipped, {} files skipped, {} test documents held out) in {:.1}s",
            m.n_docs, m.stats.bytes_read, m.stats.bad_lines_skipped, m.stats.files_skipped, m.stats.test_docs,
            t0.elapsed().as_secs_f64()
        );
    }
    let store = DocStore::open(&store_dir)?;

    // 2. The vectors, resumable.
    let spec = IndexSpec {
        dim: encoder.dim(),
        metric: match args.metric {
            MetricArg::L2 => Metric::L2,
            MetricArg::Ip => Metric::InnerProduct,
        },
        dtype: match args.dtype {
            DtypeArg::F32 => Dtype::F32,
            DtypeArg::F16 => Dtype::F16,
        },
        shard_rows: args.shard_size.max(1),
        encoder: serde_json::to_value(encoder.identity())?,
    };
    let mut writer = IndexWriter::create_or_resume(&out.join("vectors"), spec)?;
    if writer.is_complete() {
        eprintln!("index {} is already complete ({} vectors)", out.display(), writer.len());
        return Ok(());
    }
    let target = args.max_docs.map_or(store.len(), |m| m.min(store.len()));
    let start = writer.len();
    if start > 0 {
        eprintln!("resuming after {start} vectors already written");
    }
    let bar = ProgressBar::new(target).with_position(start).with_style(
        ProgressStyle::with_template("embed  {bar:40} {pos}/{len} docs {per_sec} eta {eta}").unwrap(),
    );
    bar.reset_eta();
    let budget = args.time_budget.map(Duration::from_secs_f64);
    let t_embed = Instant::now();
    let mut reader = store.reader();
    let mut next = start;
    let chunk = (args.batch_size * 4).max(1) as u64;
    let mut stopped = false;
    let mut last_log = Instant::now();
    while next < target {
        if budget.is_some_and(|b| t_embed.elapsed() >= b) || args.stop_after_docs.is_some_and(|s| next - start >= s) {
            stopped = true;
            break;
        }
        let end = (next + chunk).min(target);
        let end = args.stop_after_docs.map_or(end, |s| end.min(start + s));
        let docs = (next..end).map(|id| reader.get(id).map(|d| d.text)).collect::<Result<Vec<_>, _>>()?;
        let texts: Vec<&str> = docs.iter().map(String::as_str).collect();
        let vecs = encoder.embed(&texts)?;
        let flat: Vec<f32> = vecs.into_iter().flatten().collect();
        writer.add(&flat)?;
        bar.inc(end - next);
        next = end;
        // Without a terminal the bar is hidden: log a line every 30 s instead.
        if bar.is_hidden() && last_log.elapsed() >= Duration::from_secs(30) {
            last_log = Instant::now();
            let s = t_embed.elapsed().as_secs_f64();
            eprintln!("embed  {next}/{target} docs, {:.1} docs/s", (next - start) as f64 / s);
        }
    }
    bar.finish_and_clear();
    let secs = t_embed.elapsed().as_secs_f64();
    let done = next - start;
    if stopped {
        eprintln!(
            "stopped after embedding {done} documents in {secs:.1}s ({:.1} docs/s); {} vectors are in whole shards; rerun the same command to resume",
            done as f64 / secs.max(1e-9),
            writer.len()
        );
        return Ok(());
    }
    let n = writer.finish()?;
    eprintln!(
        "index {}: {n} vectors of {} documents; embedded {done} in {secs:.1}s ({:.1} docs/s); total {:.1}s",
        out.display(),
        store.len(),
        done as f64 / secs.max(1e-9),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

fn dir_size(p: &Path) -> u64 {
    match std::fs::metadata(p) {
        Ok(m) if m.is_file() => m.len(),
        Ok(m) if m.is_dir() => corpus::folder::list_files(p)
            .map(|v| v.iter().filter_map(|(a, _)| std::fs::metadata(a).ok()).map(|m| m.len()).sum())
            .unwrap_or(0),
        _ => 0,
    }
}
