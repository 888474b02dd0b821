//! The causal LM that TTT-NN trains and scores: one trait, [`LanguageModel`], and one
//! implementation, [`Model`], that holds any architecture behind [`Architecture`].

use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::layers;
use crate::optim::{update_in_place, with_f32_slice, AdamW};
use crate::tokenizer::Tokenizer;
use crate::weights::{Detached, ParamList, Trainable};

/// One architecture's forward pass. Implementations live one per file in `models/`.
pub trait Architecture: Send + Sync {
    /// Logits `[T, vocab_size]` for token ids (T ≤ context_length). With `rng`, dropout is
    /// applied as in PyTorch's train mode.
    fn forward(&self, ids: &[u32], rng: Option<&mut StdRng>) -> Result<Tensor>;
    /// The longest sequence the model takes (learned positions or trained context).
    fn context_length(&self) -> usize;
    /// Rows of the output head (may exceed the tokenizer's vocabulary).
    fn vocab_size(&self) -> usize;
}

/// What a model is, for reports and for scoring.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    /// `model_type` (config.json) or `general.architecture` (GGUF).
    pub arch: String,
    /// Where it was loaded from.
    pub source: String,
    /// Tokens per scoring window and per training chunk at most.
    pub context_length: usize,
    /// Logits that take part in the scoring softmax: the tokenizer's real vocabulary.
    pub vocab_limit: usize,
    /// The token that opens the first scoring window (BOS, else EOS/EOT).
    pub prefix_token: u32,
    pub n_params: usize,
}

/// Loss and pre-clipping gradient norm of one optimizer step.
#[derive(Debug, Clone, Copy)]
pub struct StepStats {
    pub loss: f32,
    pub grad_norm: f32,
}

/// A copy of the weights to return to (the optimizer, [`AdamW`], is `Clone` for its own copy).
#[derive(Clone)]
pub struct Snapshot {
    weights: Vec<Vec<f32>>,
}

impl Snapshot {
    /// Each parameter's values, in [`Model::param_names`] order.
    pub fn weights(&self) -> &[Vec<f32>] {
        &self.weights
    }
}

/// A causal language model that can score, train one step, and be restored.
pub trait LanguageModel {
    fn info(&self) -> &ModelInfo;
    /// Token ids of `text`, without special tokens.
    fn encode(&self, text: &str) -> Result<Vec<u32>>;
    /// Runs `input` and returns, for the last `targets.len()` positions, the natural-log
    /// probability of each target (softmax over the first `vocab_limit` logits).
    fn target_logprobs(&self, input: &[u32], targets: &[u32]) -> Result<Vec<f32>>;
    /// One AdamW step on `ids` with labels = inputs (mean next-token cross-entropy over the
    /// full output vocabulary). `dropout` switches the architecture's train-mode dropout.
    fn train_step(&mut self, ids: &[u32], optimizer: &mut AdamW, dropout: bool) -> Result<StepStats>;
    /// Copies the current weights.
    fn snapshot(&self) -> Result<Snapshot>;
    /// Writes `snapshot`'s weights back (bit-identical).
    fn restore(&mut self, snapshot: &Snapshot) -> Result<()>;
}

/// An architecture with its trainable parameters and tokenizer.
pub struct Model {
    info: ModelInfo,
    /// Built on the trainable `Var`s: records the autograd graph.
    train_net: Box<dyn Architecture>,
    /// The same weights, detached: scoring builds no graph and frees activations as it goes.
    eval_net: Box<dyn Architecture>,
    params: ParamList,
    /// Where the fused Linear kernel writes its weight and bias gradients (see `grads`).
    grad_sink: crate::grads::GradSink,
    tokenizer: Option<Tokenizer>,
    rng: StdRng,
}

/// Builds an architecture twice over the same storage: trainable and detached.
pub(crate) type Builder<'a> = dyn Fn(&mut dyn crate::weights::WeightSource) -> Result<Box<dyn Architecture>> + 'a;

impl Model {
    pub(crate) fn build(
        arch: String,
        checkpoint: &crate::weights::Checkpoint,
        device: &Device,
        builder: &Builder,
        tokenizer: Option<Tokenizer>,
        special: crate::tokenizer::SpecialTokens,
    ) -> Result<Self> {
        if device.is_cpu() && std::env::var_os("TTTNN_NO_MALLOPT").is_none() {
            crate::alloc::keep_freed_memory();
        }
        let mut trainable = Trainable::new(checkpoint, device.clone());
        let train_net = builder(&mut trainable)?;
        let params = trainable.params;
        let eval_net = builder(&mut Detached { params: &params })?;
        let vocab_size = train_net.vocab_size();
        let vocab_limit = match &tokenizer {
            Some(t) => t.vocab_size(),
            None => vocab_size,
        };
        if vocab_limit > vocab_size {
            bail!(
                "{}: the tokenizer has {vocab_limit} tokens but the model only {vocab_size} output rows",
                checkpoint.source.display()
            );
        }
        let prefix_token = special.bos.or(special.eos).ok_or_else(|| {
            anyhow::anyhow!("{}: no BOS or EOS token to open scoring windows", checkpoint.source.display())
        })?;
        let n_params = params.vars.iter().map(|v| v.elem_count()).sum();
        let info = ModelInfo {
            arch,
            source: checkpoint.source.display().to_string(),
            context_length: train_net.context_length(),
            vocab_limit,
            prefix_token,
            n_params,
        };
        let grad_sink = crate::grads::GradSink::new(&params.vars);
        Ok(Self { info, train_net, eval_net, params, grad_sink, tokenizer, rng: StdRng::seed_from_u64(0) })
    }

    /// Loads a Hugging Face model folder or a `.gguf` file.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        crate::loader::load(path, device)
    }

    /// Scores and trains on at most `n` tokens per window/chunk (≤ the model's own length).
    pub fn set_context_length(&mut self, n: usize) -> Result<()> {
        let max = self.train_net.context_length();
        if n == 0 || n > max {
            bail!("context length {n} is out of range: the model takes 1..={max} tokens");
        }
        self.info.context_length = n;
        Ok(())
    }

    /// Overrides the scoring vocabulary and the prefix token (for tokenizer-less models).
    pub fn set_scoring(&mut self, vocab_limit: usize, prefix_token: u32) -> Result<()> {
        if vocab_limit == 0 || vocab_limit > self.train_net.vocab_size() || prefix_token as usize >= vocab_limit {
            bail!("invalid scoring vocabulary {vocab_limit} / prefix token {prefix_token}");
        }
        self.info.vocab_limit = vocab_limit;
        self.info.prefix_token = prefix_token;
        Ok(())
    }

    /// Uses `tokenizer` (e.g. GPT-2's vocab.json/merges.txt for a weights-only folder); the
    /// scoring vocabulary becomes the tokenizer's.
    pub fn set_tokenizer(&mut self, tokenizer: Tokenizer) -> Result<()> {
        let (n, vocab) = (tokenizer.vocab_size(), self.train_net.vocab_size());
        if n > vocab {
            bail!("the tokenizer has {n} tokens but the model only {vocab} output rows");
        }
        self.info.vocab_limit = n;
        self.tokenizer = Some(tokenizer);
        Ok(())
    }

    /// Seeds the dropout generator.
    pub fn seed(&mut self, seed: u64) {
        self.rng = StdRng::seed_from_u64(seed);
    }

    pub fn tokenizer(&self) -> Option<&Tokenizer> {
        self.tokenizer.as_ref()
    }

    /// Parameter names in load order (tied parameters appear once).
    pub fn param_names(&self) -> &[String] {
        &self.params.names
    }

    fn check_ids(&self, ids: &[u32]) -> Result<()> {
        let vocab = self.train_net.vocab_size();
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= vocab) {
            bail!("token id {bad} is outside the model's vocabulary of {vocab}");
        }
        if ids.len() > self.train_net.context_length() {
            bail!("{} tokens exceed the model's context of {}", ids.len(), self.train_net.context_length());
        }
        Ok(())
    }
}

impl LanguageModel for Model {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match &self.tokenizer {
            Some(t) => t.encode(text),
            None => bail!("{}: this model has no tokenizer", self.info.source),
        }
    }

    fn target_logprobs(&self, input: &[u32], targets: &[u32]) -> Result<Vec<f32>> {
        if targets.is_empty() || targets.len() > input.len() {
            bail!("{} targets for an input of {} tokens", targets.len(), input.len());
        }
        self.check_ids(input)?;
        let logits = self.eval_net.forward(input, None)?;
        let n = targets.len();
        let logits = logits.narrow(0, input.len() - n, n)?;
        if crate::ops::fusable(&logits) {
            return Ok(crate::ops::logprobs_cpu(&logits, self.info.vocab_limit, targets)?);
        }
        let logits = logits.narrow(1, 0, self.info.vocab_limit)?;
        let t = Tensor::new(targets, logits.device())?.unsqueeze(1)?;
        let lp = layers::log_softmax(&logits)?.gather(&t, 1)?.squeeze(1)?;
        Ok(lp.to_vec1::<f32>()?)
    }

    fn train_step(&mut self, ids: &[u32], optimizer: &mut AdamW, dropout: bool) -> Result<StepStats> {
        if ids.len() < 2 {
            bail!("a training chunk needs at least 2 tokens, got {}", ids.len());
        }
        self.check_ids(ids)?;
        let rng = if dropout { Some(&mut self.rng) } else { None };
        let profile = std::env::var_os("TTTNN_LM_PROFILE").is_some();
        // Timings and page-fault counts only when profiling (the latter is a system call).
        let mut marks = Vec::new();
        let mut mark = || {
            if profile {
                marks.push(Mark::now());
            }
        };
        mark();
        let logits = self.train_net.forward(&ids[..ids.len() - 1], rng)?;
        let loss = layers::cross_entropy(&logits, &ids[1..])?;
        mark();
        self.grad_sink.clear();
        let grads = self.grad_sink.collect(|| loss.backward())?;
        mark();
        let grad_norm = optimizer.step(&self.params.vars, &grads, &self.grad_sink)?;
        mark();
        if profile {
            let phase = |i: usize, name: &str| {
                let (a, b) = (&marks[i], &marks[i + 1]);
                format!("{name} {:.3}s ({} page faults)", (b.time - a.time).as_secs_f64(), b.faults - a.faults)
            };
            eprintln!("train_step: {}, {}, {}", phase(0, "forward"), phase(1, "backward"), phase(2, "optimizer"));
        }
        Ok(StepStats { loss: loss.to_scalar::<f32>()?, grad_norm })
    }

    fn snapshot(&self) -> Result<Snapshot> {
        let weights = self
            .params
            .vars
            .iter()
            .map(|v| with_f32_slice(v.as_tensor(), |s| s.to_vec()))
            .collect::<Result<_>>()?;
        Ok(Snapshot { weights })
    }

    fn restore(&mut self, snapshot: &Snapshot) -> Result<()> {
        if snapshot.weights.len() != self.params.vars.len() {
            bail!("snapshot has {} parameters, the model {}", snapshot.weights.len(), self.params.vars.len());
        }
        for (var, saved) in self.params.vars.iter().zip(&snapshot.weights) {
            if var.elem_count() != saved.len() {
                bail!("snapshot does not fit this model's parameters");
            }
            update_in_place(var.as_tensor(), |p| p.copy_from_slice(saved))
                .context("restoring weights")?;
        }
        Ok(())
    }
}

/// A point in time and the process's minor page-fault count there (`TTTNN_LM_PROFILE`).
struct Mark {
    time: std::time::Instant,
    faults: i64,
}

impl Mark {
    fn now() -> Self {
        #[cfg(target_os = "linux")]
        let faults = {
            // SAFETY: getrusage fills the zeroed struct it is given.
            let mut u: libc::rusage = unsafe { std::mem::zeroed() };
            unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
            u.ru_minflt
        };
        #[cfg(not(target_os = "linux"))]
        let faults = 0;
        Self { time: std::time::Instant::now(), faults }
    }
}
