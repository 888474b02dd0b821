//! The TTT-NN loop against the reference (fixtures/ttt/curve.json, made by
//! scripts/make_fixtures.py with PyTorch): a tiny GPT-2 trained on three neighbors nearest
//! first, the test document's log-likelihood after each; then restore and optimizer policy.

use std::path::PathBuf;

use lm::{AdamWConfig, LanguageModel, Model};
use ttt::{OptimizerReset, TestTimeTrainer, TttConfig};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn setup() -> (Model, serde_json::Value, TttConfig) {
    let f: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("ttt/curve.json")).unwrap()).unwrap();
    let mut model = Model::load(&fixtures().join("lm/gpt2"), &lm::Device::Cpu).unwrap();
    model.set_scoring(f["vocab_limit"].as_u64().unwrap() as usize, f["prefix_token"].as_u64().unwrap() as u32).unwrap();
    model.set_context_length(f["context_length"].as_u64().unwrap() as usize).unwrap();
    let betas: Vec<f64> = f["betas"].as_array().unwrap().iter().map(|b| b.as_f64().unwrap()).collect();
    let config = TttConfig {
        k: 3,
        max_length: f["max_length"].as_u64().unwrap() as usize,
        optimizer: AdamWConfig {
            lr: f["lr"].as_f64().unwrap(),
            beta1: betas[0],
            beta2: betas[1],
            eps: f["eps"].as_f64().unwrap(),
            weight_decay: f["weight_decay"].as_f64().unwrap(),
            max_grad_norm: Some(f["max_grad_norm"].as_f64().unwrap()),
        },
        reset_optimizer: OptimizerReset::PerDocument,
        dropout: false,
        max_chunks_per_neighbor: None,
    };
    (model, f, config)
}

#[test]
fn curve_matches_reference_and_weights_are_restored() {
    let (mut model, f, config) = setup();
    let neighbors: Vec<Vec<u32>> = f["neighbors"].as_array().unwrap().iter().map(ids).collect();
    let test = ids(&f["test_ids"]);
    let before = model.snapshot().unwrap();
    let mut trainer = TestTimeTrainer::new(&mut model, config).unwrap();
    let mut seen = Vec::new();
    let out = trainer.run_document(&test, &neighbors, |i, _| seen.push(i)).unwrap();
    assert_eq!(seen, vec![0, 1, 2], "nearest first, one callback per neighbor");

    let want: Vec<f64> = f["loglikelihoods"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    assert_eq!(out.loglikelihoods.len(), want.len());
    for (k, (got, want)) in out.loglikelihoods.iter().zip(&want).enumerate() {
        let rel = (got - want).abs() / want.abs();
        assert!(rel < 1e-4, "k={k}: {got} vs {want} (rel {rel:e})");
    }
    for (n, (step, want)) in out.neighbors.iter().zip(f["chunk_losses"].as_array().unwrap()).enumerate() {
        let want: Vec<f64> = want.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        assert_eq!(step.losses.len(), want.len(), "neighbor {n}: one step per chunk, single-token chunk skipped");
        for (g, w) in step.losses.iter().zip(&want) {
            assert!((*g as f64 - w).abs() / w < 1e-4, "neighbor {n}: loss {g} vs {w}");
        }
    }
    drop(trainer);
    let after = model.snapshot().unwrap();
    for (a, b) in before.weights().iter().zip(after.weights()) {
        assert!(a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()), "weights not restored bit-identically");
    }
}

#[test]
fn order_and_k_matter_and_optimizer_policy_is_applied() {
    let (mut model, f, mut config) = setup();
    let neighbors: Vec<Vec<u32>> = f["neighbors"].as_array().unwrap().iter().map(ids).collect();
    let test = ids(&f["test_ids"]);
    let reversed: Vec<Vec<u32>> = neighbors.iter().rev().cloned().collect();
    config.k = 2;
    let mut trainer = TestTimeTrainer::new(&mut model, config.clone()).unwrap();
    let a = trainer.run_document(&test, &neighbors, |_, _| {}).unwrap();
    assert_eq!(a.loglikelihoods.len(), 3, "k = 2 uses two neighbors");
    let b = trainer.run_document(&test, &reversed, |_, _| {}).unwrap();
    assert_ne!(a.loglikelihoods[2], b.loglikelihoods[2], "the order of neighbors changes the result");
    // Per-document reset: running the same document again gives the same curve.
    let again = trainer.run_document(&test, &neighbors, |_, _| {}).unwrap();
    assert_eq!(a.loglikelihoods, again.loglikelihoods);
    drop(trainer);

    // Never reset (the reference): moments carry over, so a repeat differs after k = 0.
    config.reset_optimizer = OptimizerReset::Never;
    let mut trainer = TestTimeTrainer::new(&mut model, config.clone()).unwrap();
    let first = trainer.run_document(&test, &neighbors, |_, _| {}).unwrap();
    let second = trainer.run_document(&test, &neighbors, |_, _| {}).unwrap();
    assert_eq!(first.loglikelihoods[0], second.loglikelihoods[0], "k = 0 is the restored model");
    assert_ne!(first.loglikelihoods[2], second.loglikelihoods[2]);
    drop(trainer);

    // Chunk cap: one chunk of the first neighbor only.
    config.max_chunks_per_neighbor = Some(1);
    config.k = 1;
    let mut trainer = TestTimeTrainer::new(&mut model, config).unwrap();
    let capped = trainer.run_document(&test, &neighbors, |_, _| {}).unwrap();
    assert_eq!(capped.neighbors[0].losses.len(), 1);
    assert_eq!(capped.neighbors[0].tokens, 16);
    // No neighbors: just the k = 0 score.
    let none = trainer.run_document(&test, &[], |_, _| {}).unwrap();
    assert_eq!(none.loglikelihoods.len(), 1);
}

#[test]
fn dropout_option_is_deterministic_per_seed() {
    // The fixture's dropout rates are 0; with a 0.1 config, dropout on changes the curve.
    let dir = std::env::temp_dir().join(format!("tttnn-ttt-dropout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixtures().join("lm/gpt2").join(f), dir.join(f)).unwrap();
    }
    let cfg = std::fs::read_to_string(dir.join("config.json")).unwrap().replace("_pdrop\": 0.0", "_pdrop\": 0.1");
    std::fs::write(dir.join("config.json"), cfg).unwrap();
    let (_, f, config) = setup();
    let neighbors: Vec<Vec<u32>> = f["neighbors"].as_array().unwrap().iter().map(ids).collect();
    let test = ids(&f["test_ids"]);
    let run = |dropout: bool, seed: u64| {
        let mut model = Model::load(&dir, &lm::Device::Cpu).unwrap();
        model.set_scoring(98, 97).unwrap();
        model.seed(seed);
        let mut c = config.clone();
        c.dropout = dropout;
        let mut t = TestTimeTrainer::new(&mut model, c).unwrap();
        t.run_document(&test, &neighbors, |_, _| {}).unwrap().loglikelihoods
    };
    assert_eq!(run(true, 1), run(true, 1));
    assert_ne!(run(true, 1), run(false, 1));
    assert_ne!(run(true, 1), run(true, 2));
}
