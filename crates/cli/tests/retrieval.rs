//! End-to-end runs of `tttnn index` and `tttnn search` on small real data, with the tiny
//! RoBERTa fixture as the encoder (fast; fixtures/embed/tiny-roberta).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tttnn"))
}

fn encoder() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/embed/tiny-roberta")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tttnn-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn ok(o: Output) -> Output {
    assert!(o.status.success(), "failed: {}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    o
}

/// A Pile .jsonl.zst of `n` distinct documents and a folder of 30 source files.
fn corpus(dir: &Path, n: usize) -> (PathBuf, PathBuf, Vec<String>) {
    let mut body = String::new();
    let mut texts = Vec::new();
    for i in 0..n {
        let t = format!("Document number {i} talks about {} and {} — ü {}", ["rivers", "music", "code", "stars"][i % 4], i * 7919 % 1000, "word ".repeat(i % 13));
        body.push_str(&serde_json::json!({"text": t, "meta": {"pile_set_name": "Pile-CC"}}).to_string());
        body.push('\n');
        texts.push(t);
    }
    let zst = dir.join("train.jsonl.zst");
    std::fs::write(&zst, zstd::encode_all(body.as_bytes(), 3).unwrap()).unwrap();
    let folder = dir.join("src");
    std::fs::create_dir_all(&folder).unwrap();
    for i in 0..30 {
        std::fs::write(folder.join(format!("m{i:02}.rs")), format!("pub fn f{i}(x: u32) -> u32 {{ x * {i} }}\n")).unwrap();
    }
    (zst, folder, texts)
}

fn index_cmd(zst: &Path, folder: &Path, out: &Path) -> Command {
    let mut c = bin();
    c.args(["index", "--encoder"]).arg(encoder()).arg("--corpus").arg(zst).arg(folder)
        .args(["--task", "code", "--shard-size", "16", "--batch-size", "8"]).arg("--out").arg(out);
    c
}

fn search(index: &Path, query: &Path, extra: &[&str]) -> Vec<serde_json::Value> {
    let out = index.with_extension("neighbors.jsonl");
    ok(bin().args(["search", "-k", "5"]).arg("--index").arg(index).arg("--query").arg(query).arg("--output").arg(&out).args(extra).output().unwrap());
    std::fs::read_to_string(&out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn index_then_search_finds_the_document_itself() {
    let d = tmp("e2e");
    let (zst, folder, texts) = corpus(&d, 100);
    let out = d.join("idx");
    ok(index_cmd(&zst, &folder, &out).output().unwrap());
    // Queries: three training documents, with ids.
    let q = d.join("q.jsonl");
    let lines: Vec<String> = [3usize, 42, 99].iter().map(|&i| serde_json::json!({"id": format!("q{i}"), "text": texts[i]}).to_string()).collect();
    std::fs::write(&q, lines.join("\n") + "\n").unwrap();
    let res = search(&out, &q, &["--with-text"]);
    assert_eq!(res.len(), 3);
    for (r, i) in res.iter().zip([3u64, 42, 99]) {
        assert_eq!(r["query"]["id"], format!("q{i}"));
        let n = r["neighbors"].as_array().unwrap();
        assert_eq!(n.len(), 5);
        assert_eq!(n[0]["id"], i);
        assert!(n[0]["distance"].as_f64().unwrap() < 1e-4);
        assert_eq!(n[0]["task"], "Pile-CC");
        assert_eq!(n[0]["text"], texts[i as usize]);
        assert!(n[0]["source"]["file"].as_str().unwrap().ends_with("train.jsonl.zst"));
        assert_eq!(n[0]["source"]["line"], i + 1);
        let dists: Vec<f64> = n.iter().map(|x| x["distance"].as_f64().unwrap()).collect();
        assert!(dists.windows(2).all(|w| w[0] <= w[1]));
    }
    // Folder documents are indexed under their task, except the held-out test files, which
    // are in store/test.jsonl and never indexed.
    let test = std::fs::read_to_string(out.join("store/test.jsonl")).unwrap();
    let n_test = test.lines().count();
    assert!(n_test > 0 && n_test < 30, "{n_test}");
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("vectors/vectors.json")).unwrap()).unwrap();
    assert_eq!(manifest["rows"], 100 + 30 - n_test as u64);
    assert_eq!(manifest["encoder"]["name"], "tiny-roberta");
    let res = search(&out, &out.join("store/test.jsonl"), &[]);
    assert_eq!(res.len(), n_test);
    for r in &res {
        for n in r["neighbors"].as_array().unwrap() {
            assert!(n["distance"].as_f64().unwrap() > 1e-6, "a test document was indexed: {n}");
        }
    }
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn interrupted_index_resumes_to_the_same_result() {
    let d = tmp("resume");
    let (zst, folder, texts) = corpus(&d, 60);
    let fresh = d.join("fresh");
    ok(index_cmd(&zst, &folder, &fresh).output().unwrap());
    let out = d.join("resumed");
    // Interrupted after 40 documents: two whole shards of 16 durable, 8 buffered and lost.
    ok(index_cmd(&zst, &folder, &out).args(["--stop-after-docs", "40"]).output().unwrap());
    std::fs::write(out.join("vectors/shard-00002.vec.tmp"), b"half a shard").unwrap();
    let q = d.join("q.jsonl");
    std::fs::write(&q, serde_json::json!({"text": texts[7]}).to_string() + "\n").unwrap();
    let e = bin().args(["search"]).arg("--index").arg(&out).arg("--query").arg(&q).output().unwrap();
    assert!(!e.status.success());
    assert!(String::from_utf8_lossy(&e.stderr).contains("did not finish"), "{}", String::from_utf8_lossy(&e.stderr));
    let o = ok(index_cmd(&zst, &folder, &out).output().unwrap());
    assert!(String::from_utf8_lossy(&o.stderr).contains("resuming after 32 vectors"), "{}", String::from_utf8_lossy(&o.stderr));
    // Same neighbors; vectors equal up to float rounding (batches are padded differently
    // when a run starts mid-corpus).
    let ids = |r: Vec<serde_json::Value>| r[0]["neighbors"].as_array().unwrap().iter().map(|n| n["id"].as_u64().unwrap()).collect::<Vec<_>>();
    assert_eq!(ids(search(&fresh, &q, &[])), ids(search(&out, &q, &[])));
    for i in 0..4 {
        let name = format!("vectors/shard-{i:05}.vec");
        let (a, b) = (std::fs::read(fresh.join(&name)).unwrap(), std::fs::read(out.join(&name)).unwrap());
        assert_eq!(a.len(), b.len(), "{name}");
        assert_eq!(a[..32], b[..32], "{name} header");
        let f = |x: &[u8]| x[32..].chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect::<Vec<_>>();
        let diff = f(&a).iter().zip(f(&b)).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(diff < 1e-5, "{name}: max |diff| {diff}");
    }
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn clear_errors_for_bad_inputs() {
    let d = tmp("errors");
    // Malformed JSONL: the file and line are named.
    let bad = d.join("bad.jsonl");
    std::fs::write(&bad, "{\"text\": \"fine\"}\n{\"text\": \"fine too\"}\n{\"text\": broken\n").unwrap();
    let o = bin().args(["index", "--encoder"]).arg(encoder()).arg("--corpus").arg(&bad).arg("--out").arg(d.join("i1")).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("bad.jsonl:3") && err.contains("not a JSON object"), "{err}");
    // --skip-bad-lines indexes the rest.
    ok(bin().args(["index", "--skip-bad-lines", "--encoder"]).arg(encoder()).arg("--corpus").arg(&bad).arg("--out").arg(d.join("i2")).output().unwrap());
    // Index/encoder mismatch: the same folder with a different tokenizer.json.
    let other = d.join("other-encoder");
    std::fs::create_dir_all(&other).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(encoder().join(f), other.join(f)).unwrap();
    }
    let mut tok = std::fs::read_to_string(other.join("tokenizer.json")).unwrap();
    tok.push('\n');
    std::fs::write(other.join("tokenizer.json"), tok).unwrap();
    let q = d.join("q.jsonl");
    std::fs::write(&q, "{\"text\": \"fine\"}\n").unwrap();
    let o = bin().args(["search"]).arg("--index").arg(d.join("i2")).arg("--query").arg(&q).arg("--encoder").arg(&other).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("index/encoder mismatch"), "{err}");
    // Resuming an index with another encoder is refused too.
    let o = bin().args(["index", "--skip-bad-lines", "--encoder"]).arg(&other).arg("--corpus").arg(&bad).arg("--out").arg(d.join("i2")).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("index/encoder mismatch"), "{err}");
    // A corrupt shard is named.
    let shard = d.join("i2/vectors/shard-00000.vec");
    let mut bytes = std::fs::read(&shard).unwrap();
    bytes.truncate(bytes.len() - 3);
    std::fs::write(&shard, bytes).unwrap();
    let o = bin().args(["search"]).arg("--index").arg(d.join("i2")).arg("--query").arg(&q).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("shard-00000.vec") && err.contains("corrupt shard"), "{err}");
    std::fs::remove_dir_all(&d).unwrap();
}
