//! `tttnn bench lm`: one scoring pass, one training step (forward + backward + AdamW with
//! clipping) and one TTT-NN document (score, k neighbor steps each followed by a rescore,
//! restore) for GPT-2 small and the SmolLM2-135M shape at several sequence lengths, ours
//! against PyTorch (`scripts/bench_lm.py`) on the identical random weights, with peak memory.
//!
//! Every (architecture, length, side) runs in its own process so that the peak resident
//! memory (VmHWM / ru_maxrss) is that configuration's alone.

use anyhow::{bail, Context, Result};
use embed::{cache_dir, expand_home};
use lm::{AdamW, AdamWConfig, LanguageModel, Model};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// Architectures: gpt2 (GPT-2 small), smollm2 (SmolLM2-135M shape).
    #[arg(long, value_delimiter = ',', default_value = "gpt2,smollm2")]
    pub arch: Vec<String>,
    /// Sequence lengths (tokens per document, neighbor chunk and scoring window).
    #[arg(long, value_delimiter = ',', default_value = "256,512,1024")]
    pub seq: Vec<usize>,
    /// Timed repetitions of the scoring pass and the training step (median reported);
    /// one untimed warm-up of each precedes them.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..))]
    pub reps: u16,
    /// Timed repetitions of the whole TTT-NN document.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub ttt_reps: u16,
    /// Neighbors per TTT-NN document.
    #[arg(short, long, default_value_t = 3)]
    pub k: usize,
    /// Python with torch + transformers (default: ~/.cache/tttnn/refenv/bin/python).
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// Skip the PyTorch side (then each --model-dir must exist).
    #[arg(long)]
    pub no_pytorch: bool,
    /// Where the random-initialised models are kept (default: a temp dir, reused).
    #[arg(long)]
    pub model_dir: Option<PathBuf>,
    /// The PyTorch script (default: scripts/bench_lm.py next to the workspace).
    #[arg(long)]
    pub script: Option<PathBuf>,
    /// Write all figures as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Internal: run one configuration of our side in this process and print JSON.
    #[arg(long, hide = true)]
    pub worker: Option<PathBuf>,
}

/// SplitMix64 token ids, the same stream as `scripts/bench_lm.py`.
pub fn splitmix_ids(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z % vocab as u64) as u32
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()))
        })
        .map(|kib| kib / 1024.0)
        .unwrap_or(f64::NAN)
}

fn worker(a: &Args, dir: &Path) -> Result<()> {
    let seq = *a.seq.first().context("--seq")?;
    let mut model = Model::load(dir, &lm::default_device()?)?;
    let vocab = model.info().vocab_limit;
    model.set_scoring(vocab, 0)?;
    let doc = splitmix_ids(seq, vocab, 1);
    let neighbors: Vec<Vec<u32>> = (0..a.k as u64).map(|i| splitmix_ids(seq, vocab, 100 + i)).collect();
    let score = |m: &Model| -> Result<f64> {
        Ok(m.target_logprobs(&doc[..seq - 1], &doc[1..])?.iter().map(|&x| x as f64).sum())
    };
    let new_opt = || AdamW::new(AdamWConfig::default());
    let saved = model.snapshot()?;

    let first_score = score(&model)?; // warm-up, and the value to compare
    let mut opt = new_opt();
    let first_loss = model.train_step(&neighbors[0], &mut opt, false)?.loss; // warm-up
    model.restore(&saved)?;
    let mut times = Vec::new();
    for _ in 0..a.reps {
        let t = Instant::now();
        score(&model)?;
        times.push(t.elapsed().as_secs_f64());
    }
    let score_s = median(times);
    let mut opt = new_opt();
    let mut times = Vec::new();
    for _ in 0..a.reps {
        let t = Instant::now();
        model.train_step(&neighbors[0], &mut opt, false)?;
        times.push(t.elapsed().as_secs_f64());
    }
    let step_s = median(times);
    model.restore(&saved)?;
    let mut times = Vec::new();
    let mut ttt_scores = Vec::new();
    for _ in 0..a.ttt_reps {
        let t = Instant::now();
        let mut opt = new_opt();
        ttt_scores = vec![score(&model)?];
        for n in &neighbors {
            model.train_step(n, &mut opt, false)?;
            ttt_scores.push(score(&model)?);
        }
        model.restore(&saved)?;
        times.push(t.elapsed().as_secs_f64());
    }
    let ttt_s = median(times);
    println!(
        "{}",
        json!({
            "side": "ours", "seq": seq, "threads": rayon::current_num_threads(),
            "score_s": score_s, "step_s": step_s, "ttt_doc_s": ttt_s, "peak_rss_mib": peak_rss_mib(),
            "score_logprob_sum": first_score, "first_loss": first_loss, "ttt_scores": ttt_scores,
        })
    );
    Ok(())
}

fn last_json_line(out: &std::process::Output, what: &str) -> Result<Value> {
    if !out.status.success() {
        bail!("{what} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().rev().find(|l| l.starts_with('{')).with_context(|| format!("{what}: no JSON output"))?;
    Ok(serde_json::from_str(line)?)
}

fn default_script() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/bench_lm.py");
    if here.exists() { here } else { PathBuf::from("scripts/bench_lm.py") }
}

pub fn run(a: Args) -> Result<()> {
    if let Some(dir) = &a.worker {
        return worker(&a, dir);
    }
    let python = a.python.clone().unwrap_or_else(|| cache_dir().join("refenv/bin/python"));
    let python = expand_home(&python);
    let pytorch = !a.no_pytorch && python.exists();
    if !a.no_pytorch && !pytorch {
        eprintln!("note: {} not found, PyTorch side skipped", python.display());
    }
    let script = a.script.clone().unwrap_or_else(default_script);
    let model_root = a.model_dir.clone().unwrap_or_else(|| std::env::temp_dir().join("tttnn-bench-lm"));
    let threads = rayon::current_num_threads();
    let exe = std::env::current_exe()?;
    let mut rows = Vec::new();
    println!("threads: {threads} (RAYON_NUM_THREADS; PyTorch gets the same)");
    println!(
        "{:<8} {:>5} | {:>22} | {:>22} | {:>22} | {:>17} | {:>9}",
        "arch", "seq", "score s (ours/pt/ratio)", "step s (ours/pt/ratio)", "ttt doc s (ours/pt/r)", "peak MiB (ours/pt)", "loss Δrel"
    );
    for arch in &a.arch {
        let dir = model_root.join(arch);
        if !dir.join("model.safetensors").exists() {
            if !pytorch {
                bail!("{} has no model; the PyTorch script creates it (give --python)", dir.display());
            }
            let out = Command::new(&python)
                .arg(&script)
                .args(["init", "--arch", arch, "--out"])
                .arg(&dir)
                .output()
                .context("running the PyTorch script")?;
            if !out.status.success() {
                bail!("init {arch}: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
        for &seq in &a.seq {
            let out = Command::new(&exe)
                .args(["bench", "lm", "--worker"])
                .arg(&dir)
                .args(["--seq", &seq.to_string(), "--reps", &a.reps.to_string()])
                .args(["--ttt-reps", &a.ttt_reps.to_string(), "-k", &a.k.to_string()])
                .output()?;
            let ours = last_json_line(&out, &format!("ours {arch} {seq}"))?;
            let pt = if pytorch {
                let out = Command::new(&python)
                    .arg(&script)
                    .args(["run", "--model"])
                    .arg(&dir)
                    .args(["--seq", &seq.to_string(), "--threads", &threads.to_string()])
                    .args(["--reps", &a.reps.to_string(), "--ttt-reps", &a.ttt_reps.to_string(), "-k", &a.k.to_string()])
                    .output()?;
                Some(last_json_line(&out, &format!("pytorch {arch} {seq}"))?)
            } else {
                None
            };
            let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
            let cell = |k: &str| match &pt {
                Some(p) => format!("{:>6.3} {:>6.3} {:>6.2}", f(&ours, k), f(p, k), f(&ours, k) / f(p, k)),
                None => format!("{:>6.3}      -      -", f(&ours, k)),
            };
            let mem = match &pt {
                Some(p) => format!("{:>7.0} {:>7.0}", f(&ours, "peak_rss_mib"), f(p, "peak_rss_mib")),
                None => format!("{:>7.0}       -", f(&ours, "peak_rss_mib")),
            };
            let dloss = pt.as_ref().map(|p| (f(&ours, "first_loss") - f(p, "first_loss")).abs() / f(p, "first_loss").abs());
            println!(
                "{:<8} {:>5} | {:>22} | {:>22} | {:>22} | {:>17} | {:>9}",
                arch,
                seq,
                cell("score_s"),
                cell("step_s"),
                cell("ttt_doc_s"),
                mem,
                dloss.map(|d| format!("{d:.1e}")).unwrap_or("-".into())
            );
            rows.push(json!({"arch": arch, "seq": seq, "ours": ours, "pytorch": pt, "loss_rel_diff": dloss}));
        }
    }
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&json!({"threads": threads, "k": a.k, "rows": rows}))?)?;
    }
    Ok(())
}
