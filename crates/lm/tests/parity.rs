//! Parity with Hugging Face transformers on tiny random models of each architecture
//! (fixtures made by scripts/make_fixtures.py): per-token log-probs, the rolling
//! log-likelihood, and the loss and gradient norm across two AdamW steps.

mod common;

use common::{floats, fixtures, ids, read_json};
use lm::{AdamW, AdamWConfig, LanguageModel, Model};

const LOGPROB_ABS_TOL: f64 = 1e-4;
const LOSS_REL_TOL: f64 = 1e-4;

fn load(name: &str) -> (Model, serde_json::Value) {
    let dir = fixtures().join("lm").join(name);
    let expected = read_json(&dir.join("expected.json"));
    let mut model = Model::load(&dir, &lm::Device::Cpu).unwrap();
    let vocab_limit = expected["vocab_limit"].as_u64().unwrap() as usize;
    let prefix = expected["rolling"]["prefix_token"].as_u64().unwrap() as u32;
    model.set_scoring(vocab_limit, prefix).unwrap();
    (model, expected)
}

fn max_abs_diff(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(&x, &y)| (x as f64 - y).abs()).fold(0.0, f64::max)
}

fn check_arch(name: &str) {
    let (mut model, exp) = load(name);
    assert_eq!(model.info().arch, exp["arch"].as_str().unwrap());

    let mut worst = 0f64;
    for seq in exp["sequences"].as_array().unwrap() {
        let ids = ids(&seq["ids"]);
        let got = model.target_logprobs(&ids[..ids.len() - 1], &ids[1..]).unwrap();
        worst = worst.max(max_abs_diff(&got, &floats(&seq["logprobs"])));
    }
    assert!(worst < LOGPROB_ABS_TOL, "{name}: log-probs differ by {worst:e}");

    let rolling = &exp["rolling"];
    model.set_context_length(rolling["context_length"].as_u64().unwrap() as usize).unwrap();
    let got = lm::scoring::token_logprobs(&model, &ids(&rolling["ids"])).unwrap();
    let rolling_diff = max_abs_diff(&got, &floats(&rolling["token_logprobs"]));
    assert!(rolling_diff < LOGPROB_ABS_TOL, "{name}: rolling log-probs differ by {rolling_diff:e}");
    let total: f64 = got.iter().map(|&x| x as f64).sum();
    let want_total = rolling["loglikelihood"].as_f64().unwrap();
    assert!((total - want_total).abs() / want_total.abs() < 1e-5, "{name}: {total} vs {want_total}");

    let train = &exp["train"];
    let betas = floats(&train["betas"]);
    let config = AdamWConfig {
        lr: train["lr"].as_f64().unwrap(),
        beta1: betas[0],
        beta2: betas[1],
        eps: train["eps"].as_f64().unwrap(),
        weight_decay: train["weight_decay"].as_f64().unwrap(),
        max_grad_norm: Some(train["max_grad_norm"].as_f64().unwrap()),
    };
    let n_params: usize = model.info().n_params;
    assert_eq!(n_params as u64, train["n_params"].as_u64().unwrap(), "{name}: parameter count");
    let mut opt = AdamW::new(config);
    let ids = ids(&train["ids"]);
    let losses = floats(&train["losses"]);
    let norms = floats(&train["grad_norms"]);
    let mut worst_loss = 0f64;
    // Each step reports the loss of its forward pass: before step 1, after step 1, after step 2.
    for (i, &want) in losses.iter().enumerate() {
        let stats = model.train_step(&ids, &mut opt, false).unwrap();
        let rel = (stats.loss as f64 - want).abs() / want.abs();
        worst_loss = worst_loss.max(rel);
        assert!(rel < LOSS_REL_TOL, "{name}: loss {i} is {} want {want} (rel {rel:e})", stats.loss);
        if let Some(&want_norm) = norms.get(i) {
            let rel = (stats.grad_norm as f64 - want_norm).abs() / want_norm;
            assert!(rel < LOSS_REL_TOL, "{name}: grad norm {i} is {} want {want_norm}", stats.grad_norm);
        }
    }
    eprintln!(
        "{name}: max |Δ logprob| {worst:.2e}, rolling {rolling_diff:.2e}, max rel Δ loss {worst_loss:.2e}"
    );
}

#[test]
fn gpt2_matches_transformers() {
    check_arch("gpt2");
}

#[test]
fn gpt_neo_matches_transformers() {
    check_arch("gpt_neo");
}

#[test]
fn llama_matches_transformers() {
    check_arch("llama");
}

#[test]
fn qwen2_matches_transformers() {
    check_arch("qwen2");
}

#[test]
fn gemma3_matches_transformers() {
    check_arch("gemma3");
}
