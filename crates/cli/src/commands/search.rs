//! `tttnn search`: top-k neighbors of each query document, as JSON lines.
//!
//! Input: a Pile-format JSONL file (`{"text": ..., "meta": {"pile_set_name": ...}}`, an
//! optional `"id"` field is echoed back). Output, one line per query, in input order:
//! `{"query": {"line": 3, "id": ..., "task": ...}, "neighbors": [{"id": 17, "distance": 0.52,
//! "task": "Wikipedia (en)", "source": {"file": ..., "line": ..., "offset": ..., "len": ...},
//! "text": ... (with --with-text)}, ...]}`, neighbors by ascending distance (squared L2, or
//! the negated inner product for an `ip` index), ties by id.

use anyhow::{Context, Result};
use corpus::DocStore;
use embed::{Encoder, EncoderIdentity};
use index::{FlatIndex, Neighbor, VectorIndex};
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    /// Index directory made by `tttnn index`.
    #[arg(long)]
    pub index: PathBuf,
    /// Queries: a Pile-format .jsonl (or .jsonl.zst) file.
    #[arg(long)]
    pub query: PathBuf,
    #[arg(short, long, default_value_t = 20)]
    pub k: usize,
    /// Output file (JSON lines); stdout when absent.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Include each neighbor's text.
    #[arg(long)]
    pub with_text: bool,
    /// Load the encoder from this folder instead of the path recorded in the index (it must
    /// be the same model).
    #[arg(long)]
    pub encoder: Option<PathBuf>,
    /// Queries embedded and searched together.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
}

/// An opened index directory: store, vectors, and the encoder that made them.
pub struct Retriever {
    pub store: DocStore,
    pub vectors: FlatIndex,
    pub encoder: Encoder,
}

impl Retriever {
    pub fn open(dir: &Path, encoder_dir: Option<&Path>) -> Result<Self> {
        let store = DocStore::open(&dir.join("store")).with_context(|| format!("opening the index {}", dir.display()))?;
        let vectors = FlatIndex::open(&dir.join("vectors")).with_context(|| format!("opening the index {}", dir.display()))?;
        let recorded: EncoderIdentity = serde_json::from_value(vectors.spec().encoder.clone())
            .with_context(|| format!("{}: no encoder identity recorded", dir.join("vectors/vectors.json").display()))?;
        let encoder = Encoder::load_recorded(&recorded, encoder_dir)?;
        if encoder.dim() != vectors.dim() {
            anyhow::bail!("dimension mismatch: the encoder gives {} values, the index holds {}", encoder.dim(), vectors.dim());
        }
        Ok(Self { store, vectors, encoder })
    }

    /// Top-k neighbors of each text.
    pub fn search(&self, texts: &[&str], k: usize) -> Result<Vec<Vec<Neighbor>>> {
        let q: Vec<f32> = self.encoder.embed(texts)?.into_iter().flatten().collect();
        Ok(self.vectors.search(&q, k)?)
    }
}

#[derive(Serialize)]
struct QueryOut<'a> {
    line: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    task: Option<&'a str>,
}

#[derive(Serialize)]
struct NeighborOut {
    id: u64,
    distance: f32,
    task: String,
    source: corpus::SourceLocation,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<String>,
}

pub fn run(args: Args) -> Result<()> {
    let r = Retriever::open(&args.index, args.encoder.as_deref())?;
    // Queries: read as Pile JSONL (errors name file and line); "id" echoed when present.
    let mut queries = Vec::new();
    let reader = corpus::pile::open_lines(&args.query)?;
    use std::io::BufRead;
    for (i, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("{}:{}", args.query.display(), i + 1))?;
        if let Some(doc) = corpus::pile::parse_line(&args.query, i + 1, &line)? {
            let id = serde_json::from_str::<serde_json::Value>(&line).ok().and_then(|v| v.get("id").cloned());
            queries.push((doc, id));
        }
    }
    // A file appears only when complete (temp file, then rename).
    let mut file = args.output.as_deref().map(crate::output::AtomicFile::create).transpose()?;
    let mut stdout = std::io::stdout().lock();
    let out: &mut dyn Write = match file.as_mut() {
        Some(f) => f,
        None => &mut stdout,
    };
    let t0 = std::time::Instant::now();
    let mut reader = r.store.reader();
    for batch in queries.chunks(args.batch.max(1)) {
        let texts: Vec<&str> = batch.iter().map(|(d, _)| d.text.as_str()).collect();
        let hits = r.search(&texts, args.k)?;
        for ((doc, id), hits) in batch.iter().zip(hits) {
            let neighbors = hits
                .into_iter()
                .map(|h| {
                    let (task, source, text) = if args.with_text {
                        let d = reader.get(h.id)?;
                        (d.task, d.source, Some(d.text))
                    } else {
                        let (t, s) = r.store.locate(h.id)?;
                        (t, s, None)
                    };
                    Ok(NeighborOut { id: h.id, distance: h.distance, task, source, text })
                })
                .collect::<Result<Vec<_>>>()?;
            let q = QueryOut { line: doc.line, id: id.as_ref(), task: doc.task.as_deref() };
            serde_json::to_writer(&mut *out, &serde_json::json!({"query": q, "neighbors": neighbors}))?;
            out.write_all(b"\n")?;
        }
    }
    out.flush()?;
    if let Some(f) = file {
        f.commit()?;
    }
    eprintln!(
        "searched {} queries over {} vectors (k = {}) in {:.2}s",
        queries.len(),
        r.vectors.len(),
        args.k,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
