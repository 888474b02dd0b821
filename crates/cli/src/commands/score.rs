//! `tttnn score`: the rolling log-likelihood of each document with an unchanged model, and
//! the per-task table of bits per byte, byte perplexity and word perplexity.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use lm::{LanguageModel, Model};
use ttt::metrics::{byte_count, word_count, Totals};

use crate::output::AtomicFile;

#[derive(clap::Args)]
pub struct Args {
    /// A Hugging Face model folder or a .gguf file.
    #[arg(long)]
    pub model: PathBuf,
    /// Pile-format documents: .jsonl or .jsonl.zst, one {"text", "meta": {"pile_set_name"}} per line.
    #[arg(long)]
    pub data: PathBuf,
    /// Score at most this many documents.
    #[arg(long)]
    pub max_docs: Option<usize>,
    /// Tokens per scoring window (default: the model's context length).
    #[arg(long)]
    pub context: Option<usize>,
    /// Task name for documents without meta.pile_set_name.
    #[arg(long, default_value = "default")]
    pub task: String,
    /// Skip lines that are not JSON, have no "text" or an empty one (counted and reported)
    /// instead of stopping at the first.
    #[arg(long)]
    pub skip_bad_lines: bool,
    /// A tokenizer (tokenizer.json, or a folder with it or vocab.json + merges.txt) for a
    /// model folder that has none.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Per-document results, one JSON line each.
    #[arg(long)]
    pub output: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    let device = lm::default_device()?;
    let started = Instant::now();
    let mut model = Model::load(&args.model, &device)?;
    if let Some(t) = &args.tokenizer {
        model.set_tokenizer(lm::loader::tokenizer_from(t)?)?;
    }
    if let Some(n) = args.context {
        model.set_context_length(n)?;
    }
    let info = model.info().clone();
    eprintln!(
        "model {} ({}, {:.1}M parameters), context {} tokens, loaded in {:.1}s",
        info.source,
        info.arch,
        info.n_params as f64 / 1e6,
        info.context_length,
        started.elapsed().as_secs_f64()
    );

    let docs = corpus::read_pile(&args.data)?;
    let bar = match args.max_docs {
        Some(n) => ProgressBar::new(n as u64).with_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} docs [{elapsed_precise}, ETA {eta}] {msg}").unwrap(),
        ),
        None => ProgressBar::no_length().with_style(
            ProgressStyle::with_template("{spinner} {pos} docs [{elapsed_precise}] {per_sec} {msg}").unwrap(),
        ),
    };
    let mut out = AtomicFile::create(&args.output)?;
    let mut per_task: BTreeMap<String, Totals> = BTreeMap::new();
    let (mut skipped, mut scored, mut tokens_total) = (0usize, 0usize, 0usize);
    for doc in docs {
        if args.max_docs.is_some_and(|n| scored >= n) {
            break;
        }
        let doc = match doc {
            Ok(d) => d,
            Err(e) if e.is_bad_line() && args.skip_bad_lines => {
                bar.suspend(|| eprintln!("skipping: {e}"));
                skipped += 1;
                continue;
            }
            Err(e) if e.is_bad_line() => bail!("{e} (pass --skip-bad-lines to skip such lines)"),
            Err(e) => return Err(e.into()),
        };
        let where_ = format!("{}:{}", args.data.display(), doc.line);
        let tokens = model.encode(&doc.text).with_context(|| where_.clone())?;
        let ll = lm::scoring::loglikelihood(&model, &tokens).with_context(|| where_.clone())?;
        let task = doc.task.unwrap_or_else(|| args.task.clone());
        let (bytes, words) = (byte_count(&doc.text), word_count(&doc.text));
        per_task.entry(task.clone()).or_default().add(ll, bytes, words);
        let line = serde_json::json!({
            "line": doc.line, "task": task, "loglikelihood": ll,
            "bytes": bytes, "words": words, "tokens": tokens.len(),
        });
        writeln!(out, "{line}")?;
        scored += 1;
        tokens_total += tokens.len();
        bar.set_message(format!("{task}: {:.3} bits/byte", -ll / bytes as f64 / std::f64::consts::LN_2));
        bar.inc(1);
    }
    bar.finish_and_clear();
    out.commit()?;
    if scored == 0 {
        bail!("{}: no document was scored", args.data.display());
    }
    let secs = started.elapsed().as_secs_f64();
    println!("{}", crate::report::task_table(&per_task));
    eprintln!(
        "{scored} documents, {tokens_total} tokens in {secs:.1}s ({:.0} tokens/s); results in {}",
        tokens_total as f64 / secs,
        args.output.display()
    );
    if skipped > 0 {
        eprintln!("skipped {skipped} bad lines");
    }
    Ok(())
}
