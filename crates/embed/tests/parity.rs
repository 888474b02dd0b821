//! Parity with Hugging Face transformers (fixtures by scripts/make_embed_fixtures.py).

use embed::{cache_dir, cosine, Encoder, EncoderOptions};
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/embed")
}

struct Expected {
    max_tokens: usize,
    normalize: bool,
    texts: Vec<String>,
    token_ids: Vec<Vec<u32>>,
    embeddings: Vec<Vec<f32>>,
}

fn load(name: &str) -> Expected {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(fixtures().join(name)).unwrap()).unwrap();
    let f = |k: &str| v[k].clone();
    Expected {
        max_tokens: f("max_tokens").as_u64().unwrap() as usize,
        normalize: f("normalize").as_bool().unwrap(),
        texts: serde_json::from_value(f("texts")).unwrap(),
        token_ids: serde_json::from_value(f("token_ids")).unwrap(),
        embeddings: serde_json::from_value(f("embeddings")).unwrap(),
    }
}

fn check(dir: &Path, exp: &Expected, batch_size: usize) {
    let enc = Encoder::load(dir, &EncoderOptions { normalize: exp.normalize, max_tokens: None, batch_size }).unwrap();
    assert_eq!(enc.identity().max_tokens, exp.max_tokens);
    let texts: Vec<&str> = exp.texts.iter().map(String::as_str).collect();
    assert_eq!(enc.tokenize(&texts).unwrap(), exp.token_ids, "token ids differ from the tokenizers library");
    let got = enc.embed(&texts).unwrap();
    for (i, (g, e)) in got.iter().zip(&exp.embeddings).enumerate() {
        let c = cosine(g, e);
        let max_abs = g.iter().zip(e).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        println!("text {i}: {} tokens, cosine {c:.7}, max |diff| {max_abs:.2e}", exp.token_ids[i].len());
        assert!(c >= 0.9999, "text {i}: cosine {c}");
        assert!(max_abs < 1e-3, "text {i}: max abs diff {max_abs}");
    }
}

#[test]
fn tiny_roberta_matches_transformers() {
    let exp = load("tiny_roberta_expected.json");
    // Batched (padding + masks) and one at a time give the same answer.
    check(&fixtures().join("tiny-roberta"), &exp, 32);
    check(&fixtures().join("tiny-roberta"), &exp, 1);
}

#[test]
fn minilm_matches_transformers() {
    let dir = cache_dir().join("all-minilm-l6-v2");
    if !dir.join("model.safetensors").exists() {
        println!("skipped: {} not found (run scripts/fetch_assets.sh)", dir.display());
        return;
    }
    let exp = load("minilm_expected.json");
    check(&dir, &exp, 32);
    let enc = Encoder::load(&dir, &EncoderOptions::default()).unwrap();
    assert_eq!(enc.dim(), 384);
    let v = enc.embed(&["hello"]).unwrap();
    assert!((v[0].iter().map(|x| x * x).sum::<f32>() - 1.0).abs() < 1e-5);
}

#[test]
fn bad_folder_is_a_clear_error() {
    let e = Encoder::load(Path::new("/nonexistent/encoder"), &EncoderOptions::default()).err().unwrap().to_string();
    assert!(e.contains("/nonexistent/encoder"), "{e}");
    let e = Encoder::load(&fixtures(), &EncoderOptions::default()).err().unwrap().to_string();
    assert!(e.contains("config.json"), "{e}");
}
