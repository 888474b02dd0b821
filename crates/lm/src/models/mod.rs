//! One architecture per file.
pub mod gemma3;
pub mod gpt2;
pub mod gpt_neo;
pub mod llama;
pub mod qwen2;
