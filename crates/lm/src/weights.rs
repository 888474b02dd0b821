//! Named weight tensors from a checkpoint, handed to an architecture's `load`.
//!
//! Two sources implement [`WeightSource`]: [`Trainable`] turns each checkpoint tensor into a
//! trainable `Var` (recording it, once, for the optimizer), and [`Detached`] hands out the
//! same storage without autograd tracking, for scoring passes that build no graph.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};

use crate::layers::{LayerNorm, Linear};

pub trait WeightSource {
    /// The tensor `name`, which must have `shape`.
    fn get(&mut self, name: &str, shape: &[usize]) -> Result<Tensor>;
    /// Whether the checkpoint has `name` (for optional tensors: biases, untied heads).
    fn contains(&self, name: &str) -> bool;
}

/// `{prefix}.weight` `[n_out, n_in]` and, with `bias`, `{prefix}.bias` as a [`Linear`].
pub(crate) fn linear(w: &mut dyn WeightSource, prefix: &str, n_in: usize, n_out: usize, bias: bool) -> Result<Linear> {
    Ok(Linear {
        weight: w.get(&format!("{prefix}.weight"), &[n_out, n_in])?,
        bias: if bias { Some(w.get(&format!("{prefix}.bias"), &[n_out])?) } else { None },
        transposed: false,
    })
}

/// `{prefix}.weight` and `{prefix}.bias` `[n]` as a [`LayerNorm`].
pub(crate) fn layer_norm(w: &mut dyn WeightSource, prefix: &str, n: usize, eps: f64) -> Result<LayerNorm> {
    Ok(LayerNorm { weight: w.get(&format!("{prefix}.weight"), &[n])?, bias: w.get(&format!("{prefix}.bias"), &[n])?, eps })
}

/// Tensors as read from a checkpoint (already dequantized), with where they came from.
pub struct Checkpoint {
    pub tensors: HashMap<String, Tensor>,
    pub source: PathBuf,
}

impl Checkpoint {
    /// Looks `name` up; original GPT-2 files store `h.0...` where transformers writes
    /// `transformer.h.0...`, so the `transformer.` prefix is optional. Returns the stored name.
    fn resolve(&self, name: &str) -> Option<&str> {
        let found = self.tensors.get_key_value(name).or_else(|| {
            name.strip_prefix("transformer.").and_then(|n| self.tensors.get_key_value(n))
        });
        found.map(|(k, _)| k.as_str())
    }
}

/// The parameters of a model as `Var`s, in load order.
#[derive(Default)]
pub struct ParamList {
    pub names: Vec<String>,
    pub vars: Vec<Var>,
}

/// Loads trainable parameters: f32 `Var`s on `device`. Asking twice for one name returns
/// the same `Var` (tied embeddings train as one parameter, as in PyTorch).
pub struct Trainable<'a> {
    pub checkpoint: &'a Checkpoint,
    pub device: Device,
    pub params: ParamList,
    by_name: HashMap<String, usize>,
}

impl<'a> Trainable<'a> {
    pub fn new(checkpoint: &'a Checkpoint, device: Device) -> Self {
        Self { checkpoint, device, params: ParamList::default(), by_name: HashMap::new() }
    }
}

fn check_shape(t: &Tensor, name: &str, shape: &[usize], source: &std::path::Path) -> Result<()> {
    if t.dims() != shape {
        bail!(
            "{}: tensor {name} has shape {:?}, expected {:?} from the config",
            source.display(),
            t.dims(),
            shape
        );
    }
    Ok(())
}

impl WeightSource for Trainable<'_> {
    fn get(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        if let Some(&i) = self.by_name.get(name) {
            return Ok(self.params.vars[i].as_tensor().clone());
        }
        let src = &self.checkpoint.source;
        let key = self
            .checkpoint
            .resolve(name)
            .with_context(|| format!("{}: missing tensor {name}", src.display()))?;
        let t = &self.checkpoint.tensors[key];
        check_shape(t, name, shape, src)?;
        let t = t
            .to_dtype(DType::F32)
            .and_then(|t| t.to_device(&self.device))
            .and_then(|t| t.contiguous())
            .with_context(|| format!("{}: converting tensor {name}", src.display()))?;
        let var = Var::from_tensor(&t)?;
        self.by_name.insert(name.to_owned(), self.params.vars.len());
        self.params.names.push(name.to_owned());
        self.params.vars.push(var);
        Ok(self.params.vars.last().unwrap().as_tensor().clone())
    }

    fn contains(&self, name: &str) -> bool {
        self.checkpoint.resolve(name).is_some()
    }
}

/// The already-loaded parameters, detached from autograd (same storage).
pub struct Detached<'a> {
    pub params: &'a ParamList,
}

impl WeightSource for Detached<'_> {
    fn get(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let i = self
            .params
            .names
            .iter()
            .position(|n| n == name)
            .with_context(|| format!("parameter {name} was not loaded"))?;
        let t = self.params.vars[i].as_tensor().detach();
        if t.dims() != shape {
            bail!("parameter {name} has shape {:?}, expected {:?}", t.dims(), shape);
        }
        Ok(t)
    }

    fn contains(&self, name: &str) -> bool {
        self.params.names.iter().any(|n| n == name)
    }
}
