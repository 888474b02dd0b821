//! End-to-end runs of `tttnn eval` with a tiny character-level Llama (the parity fixture's
//! weights plus a 96-token character vocabulary made here) and the tiny RoBERTa encoder:
//! output formats, resume after a kill, settings checks, documents without neighbors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tttnn-eval-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// fixtures/lm/llama (vocab 101, context 32) with a character-level tokenizer:
/// "[UNK]" = 0 (also BOS/EOS in its config), printable ASCII = 1..=95.
fn char_llama(dir: &Path) -> PathBuf {
    let m = dir.join("char-llama");
    std::fs::create_dir_all(&m).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixtures().join("lm/llama").join(f), m.join(f)).unwrap();
    }
    let mut vocab = serde_json::Map::new();
    vocab.insert("[UNK]".into(), 0.into());
    for (i, c) in (32u8..127).enumerate() {
        vocab.insert((c as char).to_string(), (i + 1).into());
    }
    let tok = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "post_processor": null, "decoder": null,
        "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "."}, "behavior": "Isolated", "invert": false},
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}
    });
    std::fs::write(m.join("tokenizer.json"), tok.to_string()).unwrap();
    m
}

const TESTS: [&str; 3] = ["the cat sat on the mat", "fn add(a: u32) -> u32 { a + 1 }", "2 + 3 = 5; 7 * 8 = 56"];

fn test_file(dir: &Path) -> PathBuf {
    let p = dir.join("test.jsonl");
    let tasks = ["Wikipedia (en)", "Github", "DM Mathematics"];
    let lines: Vec<String> = TESTS
        .iter()
        .zip(tasks)
        .map(|(t, task)| serde_json::json!({"text": t, "meta": {"pile_set_name": task}}).to_string())
        .collect();
    std::fs::write(&p, lines.join("\n") + "\n").unwrap();
    p
}

/// Neighbors as `tttnn search --with-text` writes them; line 3 gets none.
fn neighbors_file(dir: &Path) -> PathBuf {
    let p = dir.join("neighbors.jsonl");
    let n = |id: u64, text: &str| serde_json::json!({"id": id, "distance": id as f32 / 10.0, "task": "x", "text": text});
    let lines = [
        serde_json::json!({"query": {"line": 1}, "neighbors": [n(1, "the cat sat on a hat and the dog sat on the mat"), n(2, "a mat is flat")]}),
        serde_json::json!({"query": {"line": 2}, "neighbors": [n(3, "fn sub(a: u32) -> u32 { a - 1 }"), n(4, "fn id(a: u32) -> u32 { a }")]}),
        serde_json::json!({"query": {"line": 3}, "neighbors": []}),
    ];
    std::fs::write(&p, lines.iter().map(|l| l.to_string()).collect::<Vec<_>>().join("\n") + "\n").unwrap();
    p
}

fn eval(model: &Path, test: &Path, neighbors: &Path, out: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tttnn"))
        .arg("eval")
        .arg("--model").arg(model)
        .arg("--test").arg(test)
        .arg("--neighbors").arg(neighbors)
        .arg("--output").arg(out)
        .args(extra)
        .args(defaults_not_in(extra))
        .output()
        .unwrap()
}

/// -k 2, --lr 1e-3, --max-length 8, unless `extra` sets them.
fn defaults_not_in(extra: &[&str]) -> Vec<&'static str> {
    [["-k", "2"], ["--lr", "1e-3"], ["--max-length", "8"]]
        .into_iter()
        .filter(|[flag, _]| !extra.contains(flag))
        .flatten()
        .collect()
}

fn ok(o: Output) -> (String, String) {
    let (a, b) = (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned());
    assert!(o.status.success(), "failed:\n{a}\n{b}");
    (a, b)
}

fn records(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("documents.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn eval_writes_documents_summary_and_plots() {
    let d = tmp("formats");
    let model = char_llama(&d);
    let run = d.join("run");
    let (stdout, stderr) = ok(eval(&model, &test_file(&d), &neighbors_file(&d), &run, &[]));
    let recs = records(&run);
    assert_eq!(recs.len(), 3);
    let r0 = &recs[0];
    assert_eq!(r0["task"], "Wikipedia (en)");
    assert_eq!(r0["bytes"], 22);
    assert_eq!(r0["words"], 6);
    assert_eq!(r0["tokens"], 22);
    assert_eq!(r0["loglikelihood"].as_array().unwrap().len(), 3, "k = 0, 1, 2");
    let n0 = &r0["neighbors"][0];
    assert_eq!(n0["id"], 1);
    // "the cat sat on a hat and the dog sat on the mat": 47 chars → chunks of 8: 5 full + 7.
    assert_eq!(n0["train_loss"].as_array().unwrap().len(), 6);
    assert_eq!(n0["tokens"], 47);
    assert!(n0["seconds"].as_f64().unwrap() > 0.0);
    // No neighbors: scored at k = 0 only, counted and reported.
    assert_eq!(recs[2]["loglikelihood"].as_array().unwrap().len(), 1);
    assert!(stderr.contains("1 documents got no neighbors"), "{stderr}");
    assert!(stdout.contains("| k=0 | k=1 | k=2 | change |"), "{stdout}");
    assert!(stdout.contains("| Github | 1 |") && stdout.contains("pile-weighted (3 tasks)"), "{stdout}");
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["summary"]["max_k"], 2);
    assert_eq!(summary["settings"]["k"], 2);
    // The summary is computed from the records: bits/byte of Github at k = 2.
    let r1 = &recs[1];
    let ll2 = r1["loglikelihood"][2].as_f64().unwrap();
    let want = -ll2 / r1["bytes"].as_f64().unwrap() / std::f64::consts::LN_2;
    let got = summary["summary"]["tasks"]["Github"]["curve"][2]["bits_per_byte"].as_f64().unwrap();
    assert!((got - want).abs() < 1e-12);
    // The no-neighbor document counts with its k = 0 score at every k.
    let dm = &summary["summary"]["tasks"]["DM Mathematics"]["curve"];
    assert_eq!(dm[0], dm[2]);
    for f in ["summary.md", "curve.svg", "run.json"] {
        assert!(run.join(f).exists(), "{f}");
    }
    let png = std::fs::read(run.join("curve.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(std::fs::read_to_string(run.join("curve.svg")).unwrap().contains("Github"));
}

#[test]
fn a_killed_run_resumes_without_redoing_documents() {
    let d = tmp("resume");
    let model = char_llama(&d);
    let (test, neighbors) = (test_file(&d), neighbors_file(&d));
    let run = d.join("run");
    ok(eval(&model, &test, &neighbors, &run, &["--reset-optimizer", "per-document", "--dropout", "off"]));
    let full = std::fs::read_to_string(run.join("documents.jsonl")).unwrap();
    let lines: Vec<&str> = full.lines().collect();
    // Simulate a kill in the middle of writing the second line.
    std::fs::write(run.join("documents.jsonl"), format!("{}\n{}", lines[0], &lines[1][..20])).unwrap();
    let (_, stderr) = ok(eval(&model, &test, &neighbors, &run, &["--reset-optimizer", "per-document", "--dropout", "off"]));
    assert!(stderr.contains("1 finished before"), "{stderr}");
    assert!(stderr.contains("dropping an unfinished last line"), "{stderr}");
    let again = records(&run);
    assert_eq!(again.len(), 3);
    let first: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(again[0], first, "finished document not redone");
    // Deterministic settings: the redone documents score the same.
    let orig: Vec<serde_json::Value> = lines.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(again[1]["loglikelihood"], orig[1]["loglikelihood"]);
    // Everything finished: a rerun does nothing new.
    let (_, stderr) = ok(eval(&model, &test, &neighbors, &run, &["--reset-optimizer", "per-document", "--dropout", "off"]));
    assert!(stderr.contains("3 finished before"), "{stderr}");
    assert_eq!(records(&run).len(), 3);
    // Other settings in the same run directory are refused.
    let o = eval(&model, &test, &neighbors, &run, &["--lr", "0.5"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("holds a run with other settings"));
}

#[test]
fn eval_with_an_index_retrieves_and_trains() {
    let d = tmp("index");
    let model = char_llama(&d);
    let corpus = d.join("train.jsonl");
    let docs = ["the cat sat on the hat", "the dog sat on the mat", "fn f() -> u32 { 1 }", "1 + 1 = 2", "a b c d e f"];
    let body: Vec<String> = docs.iter().map(|t| serde_json::json!({"text": t, "meta": {"pile_set_name": "Pile-CC"}}).to_string()).collect();
    std::fs::write(&corpus, body.join("\n") + "\n").unwrap();
    let idx = d.join("idx");
    let o = Command::new(env!("CARGO_BIN_EXE_tttnn"))
        .args(["index", "--encoder"]).arg(fixtures().join("embed/tiny-roberta"))
        .arg("--corpus").arg(&corpus).arg("--out").arg(&idx)
        .output().unwrap();
    ok(o);
    let run = d.join("run");
    let o = Command::new(env!("CARGO_BIN_EXE_tttnn"))
        .arg("eval").arg("--model").arg(&model).arg("--index").arg(&idx).arg("--test").arg(test_file(&d))
        .args(["-k", "3", "--max-length", "16", "--tasks", "Wikipedia (en),Github", "--docs-per-task", "1"])
        .arg("--output").arg(&run)
        .output().unwrap();
    ok(o);
    let recs = records(&run);
    assert_eq!(recs.len(), 2, "--tasks keeps two of the three tasks");
    for r in &recs {
        let n = r["neighbors"].as_array().unwrap();
        assert_eq!(n.len(), 3);
        let dist: Vec<f64> = n.iter().map(|x| x["distance"].as_f64().unwrap()).collect();
        assert!(dist.windows(2).all(|w| w[0] <= w[1]), "nearest first: {dist:?}");
        assert_eq!(r["loglikelihood"].as_array().unwrap().len(), 4);
    }
}

#[test]
fn bad_eval_input_is_a_clear_error() {
    let d = tmp("bad");
    let model = char_llama(&d);
    let test = test_file(&d);
    let bad = d.join("bad-neighbors.jsonl");
    std::fs::write(&bad, "{\"query\": {\"line\": 1}}\n").unwrap();
    let o = eval(&model, &test, &bad, &d.join("run"), &[]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("bad-neighbors.jsonl:1") && e.contains("not a `tttnn search` result line"), "{e}");
    let o = eval(&model, &test, &neighbors_file(&d), &d.join("run2"), &["--max-length", "1000"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("--max-length 1000"));
    assert!(!d.join("run2/run.json").exists(), "a refused start must not record settings");
    let o = eval(&model, &test, &neighbors_file(&d), &d.join("run3"), &["--reset-optimizer", "sometimes"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("invalid value 'sometimes'"));
    // Neighbors without text and no store to read them from.
    let no_text = d.join("no-text.jsonl");
    std::fs::write(&no_text, "{\"query\": {\"line\": 1}, \"neighbors\": [{\"id\": 3, \"distance\": 0.1}]}\n").unwrap();
    let o = eval(&model, &test, &no_text, &d.join("run4"), &[]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("has no text"));
}
