//! Parameter gradients written in place by the fused Linear kernel.
//!
//! candle's backward adds every gradient into a fresh zero tensor (`GradStore::or_insert`, then
//! `add`): for the weight matrices, most of a model, that is two allocations, a zero fill and
//! an add per parameter per step. Instead, while `Model::train_step` runs the backward pass,
//! the Linear kernel writes dW and db straight into buffers owned here (overwriting on a
//! parameter's first write of the step, accumulating on later ones) and gives candle no
//! gradient to track for them. The optimizer reads both: this sink, and candle's store for the
//! other parameters (embeddings, norms), summing the two where a parameter is in both (an
//! embedding tied to the output head).

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use candle_core::{DType, Storage, Tensor, Var};

/// One parameter's buffer, in the parameter's memory order.
pub struct Buffer {
    pub data: Vec<f32>,
    /// Whether `data` holds this step's gradient (else it is stale and is overwritten).
    pub written: bool,
}

/// The in-place gradient buffers of a model's f32 CPU parameters.
pub struct GradSink {
    /// Parameter index by the address of its storage, which a `Var` shares with its views
    /// (e.g. GPT-2's transposed Conv1D weights).
    index: HashMap<usize, usize>,
    buffers: Vec<Mutex<Buffer>>,
    sizes: Vec<usize>,
}

fn storage_key(t: &Tensor) -> usize {
    let (storage, _) = t.storage_and_layout();
    &*storage as *const Storage as usize
}

thread_local! {
    /// The sink of the backward pass running on this thread, if any.
    static ACTIVE: Cell<*const GradSink> = const { Cell::new(std::ptr::null()) };
}

impl GradSink {
    /// Buffers for the f32 CPU parameters among `vars` (others keep candle's gradients).
    pub fn new(vars: &[Var]) -> Self {
        let mut index = HashMap::new();
        for (i, v) in vars.iter().enumerate() {
            if v.device().is_cpu() && v.dtype() == DType::F32 {
                index.insert(storage_key(v.as_tensor()), i);
            }
        }
        let buffers = vars.iter().map(|_| Mutex::new(Buffer { data: Vec::new(), written: false })).collect();
        Self { index, buffers, sizes: vars.iter().map(|v| v.elem_count()).collect() }
    }

    /// Marks every buffer stale: the next write of each parameter overwrites.
    pub fn clear(&self) {
        for b in &self.buffers {
            b.lock().unwrap_or_else(|e| e.into_inner()).written = false;
        }
    }

    /// Parameter `i`'s gradient of this step, if the kernels wrote one.
    pub fn get(&self, i: usize) -> Option<MutexGuard<'_, Buffer>> {
        let b = self.buffers[i].lock().unwrap_or_else(|e| e.into_inner());
        b.written.then_some(b)
    }

    /// Runs `f` (a backward pass) with this sink receiving the kernels' gradients.
    pub fn collect<R>(&self, f: impl FnOnce() -> R) -> R {
        struct Restore(*const GradSink);
        impl Drop for Restore {
            fn drop(&mut self) {
                ACTIVE.with(|a| a.set(self.0));
            }
        }
        let _restore = Restore(ACTIVE.with(|a| a.replace(self)));
        f()
    }
}

/// If a sink is collecting and `t` views the whole of one of its parameters, runs
/// `f(buffer, accumulate)` on that parameter's buffer (`accumulate`: add to this step's
/// earlier gradient, else overwrite) and returns its result; otherwise `None`.
pub(crate) fn write_param_grad<R>(t: &Tensor, f: impl FnOnce(&mut [f32], bool) -> R) -> Option<R> {
    let ptr = ACTIVE.with(|a| a.get());
    if ptr.is_null() || t.dtype() != DType::F32 || t.layout().start_offset() != 0 {
        return None;
    }
    // SAFETY: ACTIVE is set only inside `GradSink::collect`, which borrows the sink for as long
    // as the pointer is installed.
    let sink = unsafe { &*ptr };
    let &i = sink.index.get(&storage_key(t))?;
    if t.elem_count() != sink.sizes[i] {
        return None;
    }
    let mut b = sink.buffers[i].lock().unwrap_or_else(|e| e.into_inner());
    if b.data.len() != sink.sizes[i] {
        b.data = vec![0f32; sink.sizes[i]];
    }
    let accumulate = b.written;
    let r = f(&mut b.data, accumulate);
    b.written = true;
    Some(r)
}
