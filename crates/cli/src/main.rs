//! `tttnn`: test-time training on nearest neighbors. A thin binary: each command lives in
//! its own module under `commands/`.

mod commands;
mod output;
mod plot;
mod report;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "tttnn", version, about = "Test-time training on nearest neighbors for language models")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Score documents with a causal LM (lm-eval-harness rolling log-likelihood) and report
    /// bits per byte, byte perplexity and word perplexity per task.
    Score(commands::score::Args),
    /// Evaluate TTT-NN: per test document, score, train on its nearest neighbors (nearest
    /// first) rescoring after each, restore; per-task tables and curves over k.
    Eval(commands::eval::Args),
    /// Build (or resume) a retrieval index: document store + embeddings + flat vector index.
    Index(commands::index::Args),
    /// Top-k nearest training documents of each query document (JSON lines).
    Search(commands::search::Args),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(commands::bench_index::BenchCommand),
}

/// Large blocks from cached mappings, reused across training steps: see `lm::alloc` (page
/// faults were 10–20% of a step).
#[global_allocator]
static ALLOC: lm::alloc::BlockCache = lm::alloc::BlockCache;

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Score(args) => commands::score::run(args),
        Command::Eval(args) => commands::eval::run(args),
        Command::Index(args) => commands::index::run(args),
        Command::Search(args) => commands::search::run(args),
        Command::Bench(cmd) => commands::bench_index::run(cmd),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
