//! AdamW exactly as PyTorch's `torch.optim.AdamW` (one parameter group, no AMSGrad), with
//! global gradient-norm clipping as `clip_grad_norm_`, updated in place over each
//! parameter's buffer (candle_nn's AdamW allocates ~14 tensors per parameter per step).

use anyhow::{bail, Result};
use crate::grads::{Buffer, GradSink};
use candle_core::backprop::GradStore;
use std::sync::MutexGuard;
use candle_core::{CpuStorage, InplaceOp1, Layout, Storage, Tensor, Var};
use rayon::prelude::*;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Clip the global L2 norm of all gradients to this value (None: no clipping).
    pub max_grad_norm: Option<f64>,
}

impl Default for AdamWConfig {
    /// The reference's settings (SPEC.md): lr 2e-5, betas (0.9, 0.999), eps 1e-8,
    /// weight decay 0.01, clip 1.0.
    fn default() -> Self {
        Self { lr: 2e-5, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01, max_grad_norm: Some(1.0) }
    }
}

/// Optimizer state: step count and the first and second moments of every parameter.
#[derive(Debug, Clone)]
pub struct AdamW {
    pub config: AdamWConfig,
    step: u64,
    /// Moments of all parameters, each in one buffer (one large block: huge pages and one
    /// cache entry, not hundreds of small first-touched allocations); parameter i owns
    /// `offsets[i]..offsets[i + 1]`.
    m: Vec<f32>,
    v: Vec<f32>,
    offsets: Vec<usize>,
}

/// Reads a contiguous f32 CPU tensor as a slice (no copy) and hands it to `f`.
pub(crate) fn with_f32_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(CpuStorage::F32(data)) = &*storage else {
        bail!("expected an f32 CPU tensor");
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!("expected a contiguous tensor");
    };
    Ok(f(&data[start..end]))
}

/// Runs `f` on the f32 buffer of a contiguous CPU tensor, in place.
pub(crate) fn update_in_place(t: &Tensor, f: impl Fn(&mut [f32]) + Sync) -> Result<()> {
    struct Op<F>(F);
    impl<F: Fn(&mut [f32]) + Sync> InplaceOp1 for Op<F> {
        fn name(&self) -> &'static str {
            "update-in-place"
        }
        fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
            let CpuStorage::F32(data) = storage else {
                candle_core::bail!("expected an f32 tensor");
            };
            let Some((start, end)) = layout.contiguous_offsets() else {
                candle_core::bail!("expected a contiguous tensor");
            };
            (self.0)(&mut data[start..end]);
            Ok(())
        }
    }
    t.inplace_op1(&Op(f))?;
    Ok(())
}

const CHUNK: usize = 1 << 14;

impl AdamW {
    pub fn new(config: AdamWConfig) -> Self {
        Self { config, step: 0, m: Vec::new(), v: Vec::new(), offsets: Vec::new() }
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// Forgets the moments and the step count (a fresh optimizer).
    pub fn reset(&mut self) {
        *self = Self::new(self.config);
    }

    /// Applies one update to `vars` from their gradients in `grads` and `sink` (summed where a
    /// parameter is in both); returns the global gradient norm before clipping. Every
    /// parameter takes part in every forward pass, so a parameter without a gradient means the
    /// graph was cut somewhere: that is an error, not a skipped update.
    pub fn step(&mut self, vars: &[Var], grads: &GradStore, sink: &GradSink) -> Result<f32> {
        if self.offsets.is_empty() {
            self.offsets = std::iter::once(0)
                .chain(vars.iter().scan(0, |end, v| {
                    *end += v.elem_count();
                    Some(*end)
                }))
                .collect();
            // Zeroed allocations, not a clone: fresh pages are zero without being written, and
            // the first update touches them in parallel.
            let total = self.offsets[vars.len()];
            self.m = vec![0f32; total];
            self.v = vec![0f32; total];
        }
        let fits = self.offsets.len() == vars.len() + 1
            && vars.iter().enumerate().all(|(i, v)| self.offsets[i + 1] - self.offsets[i] == v.elem_count());
        if !fits {
            bail!("optimizer state is for {} parameters of other sizes than the model's {}", self.offsets.len() - 1, vars.len());
        }
        let mut grad_tensors = Vec::with_capacity(vars.len());
        for (i, var) in vars.iter().enumerate() {
            grad_tensors.push(match (grads.get(var.as_tensor()), sink.get(i)) {
                (Some(t), None) => Grad::Store(t.contiguous()?),
                (None, Some(b)) => Grad::Sink(b),
                (Some(t), Some(b)) => {
                    Grad::Sum(with_f32_slice(&t.contiguous()?, |g| g.iter().zip(&b.data).map(|(x, y)| x + y).collect())?)
                }
                (None, None) => bail!("parameter {i} got no gradient"),
            });
        }
        // Global norm in f64 over f32 squares, as clip_grad_norm_ (which sums per-tensor norms).
        let mut total_sq = 0f64;
        for g in &grad_tensors {
            let norm = g.with_slice(|g| {
                g.par_chunks(CHUNK).map(|c| c.iter().map(|x| x * x).sum::<f32>()).sum::<f32>().sqrt()
            })?;
            total_sq += (norm as f64) * (norm as f64);
        }
        let total_norm = total_sq.sqrt() as f32;
        let c = self.config;
        let clip = match c.max_grad_norm {
            Some(max) => (max as f32 / (total_norm + 1e-6)).min(1.0),
            None => 1.0,
        };
        self.step += 1;
        let t = self.step as i32;
        let bias1 = 1.0 - c.beta1.powi(t);
        let bias2_sqrt = (1.0 - c.beta2.powi(t)).sqrt();
        let step_size = (c.lr / bias1) as f32;
        let (b1, b2, eps) = (c.beta1 as f32, c.beta2 as f32, c.eps as f32);
        let decay = (1.0 - c.lr * c.weight_decay) as f32;
        let bias2_sqrt = bias2_sqrt as f32;
        for (i, var) in vars.iter().enumerate() {
            let range = self.offsets[i]..self.offsets[i + 1];
            let (m, v) = (&mut self.m[range.clone()], &mut self.v[range]);
            grad_tensors[i].with_slice(|g| {
                let (m_ptr, v_ptr) = (SendPtr(m.as_mut_ptr()), SendPtr(v.as_mut_ptr()));
                update_in_place(var.as_tensor(), |p| {
                    let n = p.len();
                    p.par_chunks_mut(CHUNK).enumerate().for_each(|(ci, pc)| {
                        let start = ci * CHUNK;
                        // SAFETY: each chunk touches its own disjoint range of m and v.
                        let (mc, vc) = unsafe {
                            (
                                std::slice::from_raw_parts_mut(m_ptr.get().add(start), pc.len()),
                                std::slice::from_raw_parts_mut(v_ptr.get().add(start), pc.len()),
                            )
                        };
                        let gc = &g[start..start + pc.len()];
                        for j in 0..pc.len() {
                            let gj = gc[j] * clip;
                            pc[j] *= decay;
                            mc[j] = b1 * mc[j] + (1.0 - b1) * gj;
                            vc[j] = b2 * vc[j] + (1.0 - b2) * gj * gj;
                            let denom = vc[j].sqrt() / bias2_sqrt + eps;
                            pc[j] -= step_size * mc[j] / denom;
                        }
                    });
                    debug_assert_eq!(n, g.len());
                })
            })??;
        }
        Ok(total_norm)
    }
}

/// A parameter's gradient: from candle's store, from the in-place sink, or their sum.
enum Grad<'a> {
    Store(Tensor),
    Sink(MutexGuard<'a, Buffer>),
    Sum(Vec<f32>),
}

impl Grad<'_> {
    fn with_slice<R>(&self, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
        match self {
            Grad::Store(t) => with_f32_slice(t, f),
            Grad::Sink(b) => Ok(f(&b.data)),
            Grad::Sum(v) => Ok(f(v)),
        }
    }
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}
