//! The per-document loop of TTT-NN (SPEC.md, "Per test document"): score the test document
//! with the unchanged model (k = 0); train on the neighbors nearest first, one optimizer
//! step per `max_length`-token chunk; rescore after each neighbor; restore the weights.

use std::time::Instant;

use anyhow::{bail, Result};
use lm::{AdamW, AdamWConfig, LanguageModel, Snapshot};
use serde::{Deserialize, Serialize};

/// What happens to AdamW's moment estimates between test documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum OptimizerReset {
    /// A fresh optimizer for every test document.
    PerDocument,
    /// One optimizer for the whole run, as the reference code does (only weights are restored).
    Never,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TttConfig {
    /// Neighbors to train on (at most; fewer when retrieval returns fewer).
    pub k: usize,
    /// Tokens per training chunk (one optimizer step each).
    pub max_length: usize,
    #[serde(skip)]
    pub optimizer: AdamWConfig,
    pub reset_optimizer: OptimizerReset,
    /// Train-mode dropout during the steps (the reference trains GPT-2 with dropout 0.1).
    pub dropout: bool,
    /// Train on at most this many chunks of each neighbor (None: all of it, as the reference).
    pub max_chunks_per_neighbor: Option<usize>,
}

impl TttConfig {
    /// Checks the settings against a model's context length.
    pub fn check(&self, context_length: usize) -> Result<()> {
        if self.max_length < 2 || self.max_length > context_length + 1 {
            bail!(
                "--max-length {} must be between 2 and the context length + 1 ({})",
                self.max_length,
                context_length + 1
            );
        }
        Ok(())
    }
}

/// The training chunks of one neighbor: non-overlapping runs of `max_length` tokens; a
/// final chunk of a single token predicts nothing and is dropped.
pub fn chunks(tokens: &[u32], max_length: usize, max_chunks: Option<usize>) -> Vec<&[u32]> {
    tokens
        .chunks(max_length)
        .filter(|c| c.len() >= 2)
        .take(max_chunks.unwrap_or(usize::MAX))
        .collect()
}

/// The training on one neighbor and the test score after it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NeighborStep {
    /// Training loss of each chunk's step (computed in the step's forward pass).
    pub losses: Vec<f32>,
    /// Tokens trained on (sum of chunk lengths).
    pub tokens: usize,
    /// Seconds for this neighbor's steps and the rescoring.
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DocumentOutcome {
    /// Log-likelihood of the test document after 0, 1, ..., n neighbors.
    pub loglikelihoods: Vec<f64>,
    pub neighbors: Vec<NeighborStep>,
}

/// Runs TTT-NN document by document on one model, restoring its weights after each.
pub struct TestTimeTrainer<'m, M: LanguageModel> {
    model: &'m mut M,
    config: TttConfig,
    optimizer: AdamW,
    original: Snapshot,
}

impl<'m, M: LanguageModel> TestTimeTrainer<'m, M> {
    pub fn new(model: &'m mut M, config: TttConfig) -> Result<Self> {
        config.check(model.info().context_length)?;
        let original = model.snapshot()?;
        let optimizer = AdamW::new(config.optimizer);
        Ok(Self { model, config, optimizer, original })
    }

    pub fn config(&self) -> &TttConfig {
        &self.config
    }

    /// The model in its current state (the original weights between documents).
    pub fn model(&self) -> &M {
        self.model
    }

    /// TTT-NN on one test document: `neighbors` are token ids sorted nearest first; only
    /// the first `k` are used. `on_neighbor` sees each step as it finishes (for progress).
    pub fn run_document(
        &mut self,
        test: &[u32],
        neighbors: &[Vec<u32>],
        mut on_neighbor: impl FnMut(usize, &NeighborStep),
    ) -> Result<DocumentOutcome> {
        if self.config.reset_optimizer == OptimizerReset::PerDocument {
            self.optimizer.reset();
        }
        let result = self.train_and_score(test, neighbors, &mut on_neighbor);
        // Restore even when a step failed, so the next document starts from the original.
        self.model.restore(&self.original)?;
        result
    }

    fn train_and_score(
        &mut self,
        test: &[u32],
        neighbors: &[Vec<u32>],
        on_neighbor: &mut impl FnMut(usize, &NeighborStep),
    ) -> Result<DocumentOutcome> {
        let c = &self.config;
        let mut loglikelihoods = vec![lm::scoring::loglikelihood(&*self.model, test)?];
        let mut steps = Vec::new();
        for (i, neighbor) in neighbors.iter().take(c.k).enumerate() {
            let started = Instant::now();
            let mut losses = Vec::new();
            let mut tokens = 0;
            for chunk in chunks(neighbor, c.max_length, c.max_chunks_per_neighbor) {
                let stats = self.model.train_step(chunk, &mut self.optimizer, c.dropout)?;
                losses.push(stats.loss);
                tokens += chunk.len();
            }
            loglikelihoods.push(lm::scoring::loglikelihood(&*self.model, test)?);
            let step = NeighborStep { losses, tokens, seconds: started.elapsed().as_secs_f64() };
            on_neighbor(i, &step);
            steps.push(step);
        }
        Ok(DocumentOutcome { loglikelihoods, neighbors: steps })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunking_is_non_overlapping_and_drops_single_tokens() {
        let t: Vec<u32> = (0..33).collect();
        let c = chunks(&t, 16, None);
        assert_eq!(c.iter().map(|c| c.len()).collect::<Vec<_>>(), vec![16, 16]);
        assert_eq!(c[1][0], 16);
        let t: Vec<u32> = (0..34).collect();
        assert_eq!(chunks(&t, 16, None).iter().map(|c| c.len()).collect::<Vec<_>>(), vec![16, 16, 2]);
        assert_eq!(chunks(&t, 16, Some(1)).len(), 1);
        assert!(chunks(&[5], 16, None).is_empty());
    }
}
