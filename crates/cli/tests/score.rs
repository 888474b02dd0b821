//! End-to-end runs of `tttnn score` on the real SmolLM2 GGUF (skipped, with a printed reason,
//! only where scripts/fetch_assets.sh has not fetched it).

use std::path::PathBuf;
use std::process::{Command, Output};

fn smollm2() -> Option<PathBuf> {
    let p = embed::cache_dir().join("smollm2-135m.gguf");
    if p.exists() {
        Some(p)
    } else {
        eprintln!("SKIPPED: {} is absent; run scripts/fetch_assets.sh", p.display());
        None
    }
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tttnn-score-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn score(model: &PathBuf, data: &PathBuf, out: &PathBuf, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tttnn"))
        .arg("score")
        .args(["--model".as_ref(), model.as_os_str(), "--data".as_ref(), data.as_os_str(), "--output".as_ref(), out.as_os_str()])
        .args(extra)
        .output()
        .unwrap()
}

const GOOD: &str = r#"{"text": "The cat sat on the mat. It was a sunny day.", "meta": {"pile_set_name": "Pile-CC"}}
{"text": "fn main() {\n    println!(\"hello\");\n}\n", "meta": {"pile_set_name": "Github"}}
"#;

#[test]
fn score_writes_results_and_table() {
    let Some(model) = smollm2() else { return };
    let d = tmp("good");
    let data = d.join("docs.jsonl");
    std::fs::write(&data, GOOD).unwrap();
    let out = d.join("out/scores.jsonl");
    let o = score(&model, &data, &out, &[]);
    let (stdout, stderr) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("| Github | 1 |") && stdout.contains("| Pile-CC | 1 |"), "{stdout}");
    assert!(stdout.contains("pile-weighted (2 tasks)"), "{stdout}");
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(&out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["bytes"], 43);
    assert_eq!(lines[0]["words"], 11);
    assert!(lines[1]["tokens"].as_u64().unwrap() > 5);
    let ll = lines[0]["loglikelihood"].as_f64().unwrap();
    assert!(ll < 0.0 && ll > -43.0 * 8.0 * std::f64::consts::LN_2, "{ll}");
    // --max-docs and --context are honoured.
    let o = score(&model, &data, &out, &["--max-docs", "1", "--context", "4"]);
    assert!(o.status.success());
    let one = std::fs::read_to_string(&out).unwrap();
    assert_eq!(one.lines().count(), 1);
    let ll4: serde_json::Value = serde_json::from_str(one.lines().next().unwrap()).unwrap();
    assert_ne!(ll4["loglikelihood"].as_f64().unwrap(), ll, "a 4-token context must score differently");
}

#[test]
fn bad_lines_stop_or_are_skipped_and_counted() {
    let Some(model) = smollm2() else { return };
    let d = tmp("bad");
    let data = d.join("docs.jsonl");
    std::fs::write(&data, format!("{GOOD}not json\n{{\"meta\": {{}}}}\n{{\"text\": \"\"}}\n")).unwrap();
    let out = d.join("scores.jsonl");
    let o = score(&model, &data, &out, &[]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(stderr.contains("docs.jsonl:3") && stderr.contains("--skip-bad-lines"), "{stderr}");
    assert!(!out.exists(), "a failed run must not leave a complete-looking output");
    assert!(std::fs::read_dir(&d).unwrap().count() == 1, "temp file left behind");
    let o = score(&model, &data, &out, &["--skip-bad-lines"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("skipped 3 bad lines"), "{stderr}");
    assert!(stderr.contains("docs.jsonl:5") && stderr.contains("empty document"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&out).unwrap().lines().count(), 2);
}

#[test]
fn wrong_flags_and_paths_are_clear_errors() {
    let d = tmp("flags");
    let o = Command::new(env!("CARGO_BIN_EXE_tttnn")).args(["score", "--model", "x"]).output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--data"));
    let data = d.join("docs.jsonl");
    std::fs::write(&data, GOOD).unwrap();
    let o = score(&d.join("no-model"), &data, &d.join("o.jsonl"), &[]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("no such model folder or file"));
    let Some(model) = smollm2() else { return };
    let o = score(&model, &d.join("missing.jsonl"), &d.join("o.jsonl"), &[]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("cannot open") && stderr.contains("missing.jsonl"), "{stderr}");
    let o = score(&model, &data, &d.join("o.jsonl"), &["--context", "100000"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("context length 100000 is out of range"));
}
