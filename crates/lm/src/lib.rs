//! Causal language models for TTT-NN: load (Hugging Face folders, GGUF), tokenize, score
//! (lm-eval-harness rolling log-likelihood), take one training step (AdamW), snapshot and
//! restore weights.
//!
//! ```no_run
//! use lm::{LanguageModel, Model, AdamW, AdamWConfig};
//! let mut model = Model::load("model-folder-or.gguf".as_ref(), &candle_core::Device::Cpu)?;
//! let ids = model.encode("some text")?;
//! let ll = lm::scoring::loglikelihood(&model, &ids)?;
//! let saved = model.snapshot()?;
//! let mut opt = AdamW::new(AdamWConfig::default());
//! model.train_step(&ids, &mut opt, false)?;
//! model.restore(&saved)?;
//! # anyhow::Ok(())
//! ```

pub mod alloc;
mod gguf;
pub mod grads;
pub mod layers;
pub mod loader;
pub mod model;
pub mod models;
pub mod ops;
pub mod optim;
pub mod scoring;
pub mod tokenizer;
pub mod weights;

pub use candle_core::Device;
pub use model::{LanguageModel, Model, ModelInfo, Snapshot, StepStats};
pub use optim::{AdamW, AdamWConfig};
pub use tokenizer::Tokenizer;

/// The device selected by the build: CUDA 0 with the `cuda` feature, else the CPU.
pub fn default_device() -> anyhow::Result<Device> {
    #[cfg(feature = "cuda")]
    {
        return Ok(Device::new_cuda(0)?);
    }
    #[allow(unreachable_code)]
    Ok(Device::Cpu)
}
