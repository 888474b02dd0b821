//! `tttnn eval`: TTT-NN over a test set. Per test document: score (k = 0), retrieve its
//! neighbors, train on them nearest first and rescore after each, restore. Writes, in the
//! run directory:
//! - `run.json`: the settings (a resumed run must use the same);
//! - `documents.jsonl`: one line per finished document (task, bytes, words, tokens, the
//!   log-likelihood at every k, and per neighbor its id, distance, training losses, seconds);
//! - `summary.json`, `summary.md`: per task and Pile-weighted bits/byte, byte and word
//!   perplexity at k = 0, 1, 5, 10, 20, 50 (as far as run);
//! - `curve.svg`, `curve.png`: bits per byte against k per task.
//!
//! A killed run resumes from `documents.jsonl`: finished documents are not redone.

use std::collections::{HashMap, HashSet};
use std::fs::OpenOptions;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use lm::{AdamWConfig, LanguageModel, Model};
use serde::{Deserialize, Serialize};
use ttt::metrics::{byte_count, word_count};
use ttt::{OptimizerReset, TestTimeTrainer, TttConfig};

use super::search::Retriever;
use crate::output::AtomicFile;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnOff {
    On,
    Off,
}

#[derive(clap::Args)]
pub struct Args {
    /// A Hugging Face model folder or a .gguf file.
    #[arg(long)]
    pub model: PathBuf,
    /// Index directory made by `tttnn index` (retrieves neighbors; with --neighbors, only
    /// supplies their texts).
    #[arg(long, required_unless_present = "neighbors")]
    pub index: Option<PathBuf>,
    /// Precomputed neighbors, as `tttnn search` writes them (matched to test documents by
    /// line number); texts inline (`search --with-text`) or read from --index.
    #[arg(long)]
    pub neighbors: Option<PathBuf>,
    /// Test documents: Pile-format .jsonl / .jsonl.zst, or a folder (its test split).
    #[arg(long)]
    pub test: PathBuf,
    /// For a --test folder: the task name and the test share of its hash split (use the
    /// values given to `tttnn index`).
    #[arg(long)]
    pub task: Option<String>,
    #[arg(long, default_value_t = 0.1)]
    pub test_fraction: f64,
    /// Only these tasks (comma-separated `pile_set_name`s).
    #[arg(long, value_delimiter = ',')]
    pub tasks: Vec<String>,
    /// At most this many test documents per task (the first ones in file order).
    #[arg(long)]
    pub docs_per_task: Option<usize>,
    /// Neighbors per document (reference: 50; the reproduction: 20).
    #[arg(short, long, default_value_t = 20)]
    pub k: usize,
    #[arg(long, default_value_t = 2e-5)]
    pub lr: f64,
    /// Tokens per training chunk (default: the context length; reference 1024 for GPT-2).
    #[arg(long)]
    pub max_length: Option<usize>,
    /// Tokens per scoring window (default: the model's context length).
    #[arg(long)]
    pub context: Option<usize>,
    /// When AdamW's moments are reset (reference: never; only weights are restored).
    #[arg(long, value_enum, default_value_t = OptimizerReset::Never)]
    pub reset_optimizer: OptimizerReset,
    /// Train-mode dropout during the steps (reference: on, GPT-2's 0.1).
    #[arg(long, value_enum, default_value_t = OnOff::On)]
    pub dropout: OnOff,
    /// Train on at most this many chunks of each neighbor (default: all, as the reference).
    #[arg(long)]
    pub max_chunks_per_neighbor: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The run directory (created; resumed when it holds a run with the same settings).
    #[arg(long)]
    pub output: PathBuf,
}

/// The settings a run is resumed only with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RunSettings {
    model: String,
    test: String,
    retrieval: String,
    tasks: Vec<String>,
    docs_per_task: Option<usize>,
    k: usize,
    lr: f64,
    max_length: usize,
    context: usize,
    reset_optimizer: OptimizerReset,
    dropout: OnOff,
    max_chunks_per_neighbor: Option<usize>,
    seed: u64,
}

/// One test document to evaluate.
struct TestDoc {
    key: String,
    line: usize,
    text: String,
    task: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NeighborRecord {
    pub id: u64,
    pub distance: f32,
    pub task: String,
    pub tokens: usize,
    pub train_loss: Vec<f32>,
    pub seconds: f64,
}

/// A line of documents.jsonl.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DocumentRecord {
    pub key: String,
    pub task: String,
    pub bytes: u64,
    pub words: u64,
    pub tokens: usize,
    /// At k = 0, 1, ..., neighbors.len().
    pub loglikelihood: Vec<f64>,
    pub neighbors: Vec<NeighborRecord>,
    pub retrieval_seconds: f64,
    pub seconds: f64,
}

/// A retrieved neighbor before training: where it is and its text.
struct Retrieved {
    id: u64,
    distance: f32,
    task: String,
    text: String,
}

enum Retrieval {
    Index(Retriever),
    /// Query line → neighbors (id, distance, task, inline text), texts read from the store
    /// when not inline.
    Precomputed { by_line: HashMap<usize, Vec<(u64, f32, String, Option<String>)>>, store: Option<corpus::DocStore> },
}

impl Retrieval {
    fn neighbors(&self, doc: &TestDoc, k: usize) -> Result<Vec<Retrieved>> {
        match self {
            Retrieval::Index(r) => {
                let hits = r.search(&[doc.text.as_str()], k)?.pop().unwrap_or_default();
                let mut reader = r.store.reader();
                hits.into_iter()
                    .map(|h| {
                        let d = reader.get(h.id)?;
                        Ok(Retrieved { id: h.id, distance: h.distance, task: d.task, text: d.text })
                    })
                    .collect()
            }
            Retrieval::Precomputed { by_line, store } => {
                let Some(list) = by_line.get(&doc.line) else { return Ok(Vec::new()) };
                list.iter()
                    .take(k)
                    .map(|(id, distance, task, text)| {
                        let text = match (text, store) {
                            (Some(t), _) => t.clone(),
                            (None, Some(s)) => s.get(*id)?.text,
                            (None, None) => bail!(
                                "neighbor {id} of line {} has no text: pass --index, or search with --with-text",
                                doc.line
                            ),
                        };
                        Ok(Retrieved { id: *id, distance: *distance, task: task.clone(), text })
                    })
                    .collect()
            }
        }
    }
}

fn read_neighbors_file(path: &Path) -> Result<HashMap<usize, Vec<(u64, f32, String, Option<String>)>>> {
    #[derive(Deserialize)]
    struct Query {
        line: usize,
    }
    #[derive(Deserialize)]
    struct N {
        id: u64,
        distance: f32,
        #[serde(default)]
        task: String,
        text: Option<String>,
    }
    #[derive(Deserialize)]
    struct Line {
        query: Query,
        neighbors: Vec<N>,
    }
    let reader = corpus::pile::open_lines(path)?;
    let mut out = HashMap::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("{}:{}", path.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let l: Line = serde_json::from_str(&line)
            .with_context(|| format!("{}:{}: not a `tttnn search` result line", path.display(), i + 1))?;
        out.insert(l.query.line, l.neighbors.into_iter().map(|n| (n.id, n.distance, n.task, n.text)).collect());
    }
    Ok(out)
}

fn load_test_docs(args: &Args) -> Result<Vec<TestDoc>> {
    let mut docs = Vec::new();
    if args.test.is_dir() {
        let task = args.task.clone().context("a --test folder needs --task (the name given to `tttnn index`)")?;
        for (abs, rel) in corpus::folder::list_files(&args.test)? {
            if corpus::split_of(&rel, args.test_fraction) != corpus::Split::Test {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(&abs) else { continue };
            if !text.is_empty() {
                docs.push(TestDoc { key: rel, line: docs.len() + 1, text, task: task.clone() });
            }
        }
    } else {
        for doc in corpus::read_pile(&args.test)? {
            let doc = doc?;
            let task = doc.task.or_else(|| args.task.clone()).unwrap_or_else(|| "default".into());
            let key = format!("{}:{}", args.test.display(), doc.line);
            docs.push(TestDoc { key, line: doc.line, text: doc.text, task });
        }
    }
    let mut per_task: HashMap<String, usize> = HashMap::new();
    docs.retain(|d| {
        if !args.tasks.is_empty() && !args.tasks.iter().any(|t| t == &d.task) {
            return false;
        }
        let n = per_task.entry(d.task.clone()).or_default();
        *n += 1;
        args.docs_per_task.is_none_or(|max| *n <= max)
    });
    if docs.is_empty() {
        bail!("{}: no test documents (check --tasks / the split)", args.test.display());
    }
    Ok(docs)
}

/// Finished documents of an interrupted run. A last line cut short by a kill is dropped
/// (and truncated away, so appending continues on a clean line).
fn read_finished(path: &Path) -> Result<Vec<DocumentRecord>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut records = Vec::new();
    let mut good_len = 0;
    for line in text.split_inclusive('\n') {
        match serde_json::from_str::<DocumentRecord>(line.trim_end()) {
            Ok(r) if line.ends_with('\n') => {
                records.push(r);
                good_len += line.len();
            }
            _ => break,
        }
    }
    if good_len < text.len() {
        eprintln!("{}: dropping an unfinished last line", path.display());
        OpenOptions::new().write(true).open(path)?.set_len(good_len as u64)?;
    }
    Ok(records)
}

pub fn run(args: Args) -> Result<()> {
    let device = lm::default_device()?;
    let mut model = Model::load(&args.model, &device)?;
    if let Some(n) = args.context {
        model.set_context_length(n)?;
    }
    model.seed(args.seed);
    let context = model.info().context_length;
    let max_length = args.max_length.unwrap_or(context);
    let docs = load_test_docs(&args)?;
    let config = TttConfig {
        k: args.k,
        max_length,
        optimizer: AdamWConfig { lr: args.lr, ..AdamWConfig::default() },
        reset_optimizer: args.reset_optimizer,
        dropout: args.dropout == OnOff::On,
        max_chunks_per_neighbor: args.max_chunks_per_neighbor,
    };
    config.check(context)?;

    let retrieval = match (&args.neighbors, &args.index) {
        (Some(n), index) => Retrieval::Precomputed {
            by_line: read_neighbors_file(n)?,
            store: index.as_ref().map(|d| corpus::DocStore::open(&d.join("store"))).transpose()?,
        },
        (None, Some(index)) => Retrieval::Index(Retriever::open(index, None)?),
        (None, None) => bail!("give --index or --neighbors"),
    };
    let settings = RunSettings {
        model: args.model.display().to_string(),
        test: args.test.display().to_string(),
        retrieval: match (&args.neighbors, &args.index) {
            (Some(n), _) => format!("neighbors {}", n.display()),
            (None, Some(i)) => format!("index {}", i.display()),
            _ => unreachable!(),
        },
        tasks: args.tasks.clone(),
        docs_per_task: args.docs_per_task,
        k: args.k,
        lr: args.lr,
        max_length,
        context,
        reset_optimizer: args.reset_optimizer,
        dropout: args.dropout,
        max_chunks_per_neighbor: args.max_chunks_per_neighbor,
        seed: args.seed,
    };
    std::fs::create_dir_all(&args.output).with_context(|| format!("creating {}", args.output.display()))?;
    let settings_path = args.output.join("run.json");
    if settings_path.exists() {
        let before: RunSettings = serde_json::from_str(&std::fs::read_to_string(&settings_path)?)
            .with_context(|| format!("{}: not a run settings file", settings_path.display()))?;
        if before != settings {
            bail!(
                "{} holds a run with other settings:\n  was {}\n  now {}\nuse another --output to start afresh",
                args.output.display(),
                serde_json::to_string(&before)?,
                serde_json::to_string(&settings)?
            );
        }
    } else {
        let mut f = AtomicFile::create(&settings_path)?;
        serde_json::to_writer_pretty(&mut f, &settings)?;
        f.commit()?;
    }

    let docs_path = args.output.join("documents.jsonl");
    // Finished documents, then each new one as it is written: the summary's input.
    let mut records = read_finished(&docs_path)?;
    let done: HashSet<String> = records.iter().map(|r| r.key.clone()).collect();
    let todo: Vec<&TestDoc> = docs.iter().filter(|d| !done.contains(&d.key)).collect();
    eprintln!(
        "{} test documents ({} finished before), k = {}, lr {}, max length {max_length}, context {context}, \
         optimizer reset {:?}, dropout {:?}",
        docs.len(),
        docs.len() - todo.len(),
        args.k,
        args.lr,
        args.reset_optimizer,
        args.dropout
    );

    let mut trainer = TestTimeTrainer::new(&mut model, config)?;
    let mut out = OpenOptions::new().create(true).append(true).open(&docs_path)?;
    let bar = ProgressBar::new(todo.len() as u64).with_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} docs [{elapsed_precise}, ETA {eta}] {msg}").unwrap(),
    );
    let (mut neighbor_secs, mut neighbor_count) = (0f64, 0usize);
    let mut no_neighbors = 0usize;
    for doc in todo {
        let started = Instant::now();
        let tokens = trainer.model().encode(&doc.text).with_context(|| doc.key.clone())?;
        let retrieved =
            retrieval.neighbors(doc, args.k).with_context(|| format!("retrieving neighbors of {}", doc.key))?;
        let retrieval_seconds = started.elapsed().as_secs_f64();
        if retrieved.is_empty() {
            no_neighbors += 1;
        }
        let neighbor_tokens: Vec<Vec<u32>> =
            retrieved.iter().map(|n| trainer.model().encode(&n.text)).collect::<Result<_>>()?;
        let k_total = retrieved.len();
        let outcome = trainer
            .run_document(&tokens, &neighbor_tokens, |i, step| {
                neighbor_secs += step.seconds;
                neighbor_count += 1;
                bar.set_message(format!(
                    "{}: neighbor {}/{k_total}, {:.2} s/neighbor",
                    doc.task,
                    i + 1,
                    neighbor_secs / neighbor_count as f64
                ));
            })
            .with_context(|| doc.key.clone())?;
        let record = DocumentRecord {
            key: doc.key.clone(),
            task: doc.task.clone(),
            bytes: byte_count(&doc.text),
            words: word_count(&doc.text),
            tokens: tokens.len(),
            loglikelihood: outcome.loglikelihoods,
            neighbors: retrieved
                .iter()
                .zip(&outcome.neighbors)
                .zip(&neighbor_tokens)
                .map(|((r, s), t)| NeighborRecord {
                    id: r.id,
                    distance: r.distance,
                    task: r.task.clone(),
                    tokens: t.len(),
                    train_loss: s.losses.clone(),
                    seconds: s.seconds,
                })
                .collect(),
            retrieval_seconds,
            seconds: started.elapsed().as_secs_f64(),
        };
        writeln!(out, "{}", serde_json::to_string(&record)?)?;
        out.flush()?;
        records.push(record);
        bar.inc(1);
    }
    bar.finish_and_clear();
    if no_neighbors > 0 {
        eprintln!("{no_neighbors} documents got no neighbors from retrieval (scored at k = 0 only)");
    }

    let summary = crate::report::Summary::from_records(&records, args.k);
    let md = summary.markdown(&settings_line(&args, max_length, context));
    let mut f = AtomicFile::create(&args.output.join("summary.md"))?;
    f.write_all(md.as_bytes())?;
    f.commit()?;
    let mut f = AtomicFile::create(&args.output.join("summary.json"))?;
    serde_json::to_writer_pretty(&mut f, &serde_json::json!({"settings": settings, "summary": summary}))?;
    f.commit()?;
    crate::plot::curves(&summary, &args.output.join("curve"))?;
    println!("{md}");
    eprintln!(
        "results in {}: documents.jsonl, summary.md, summary.json, curve.svg, curve.png",
        args.output.display()
    );
    Ok(())
}

fn settings_line(args: &Args, max_length: usize, context: usize) -> String {
    format!(
        "model `{}`, k = {}, lr {}, max length {max_length}, context {context}, optimizer reset {:?}, dropout {:?}",
        args.model.display(),
        args.k,
        args.lr,
        args.reset_optimizer,
        args.dropout
    )
}
