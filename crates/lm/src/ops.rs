//! Fused CPU kernels as candle custom ops, each with its backward pass: causal attention
//! (no T×T tensor is kept: the backward recomputes the probabilities from the saved
//! log-sum-exp), LayerNorm, RMSNorm, GELU (tanh), SwiGLU, rotary embedding and the
//! cross-entropy over the vocabulary.
//!
//! The kernels take contiguous f32 or f64 CPU tensors (the callers in `layers.rs` make them
//! contiguous and fall back to composed generic ops on other devices and dtypes). Backward
//! passes return plain tensors: no second-order gradients.

use std::ops::Deref;
use std::sync::Mutex;

use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Device, Layout, Result, Shape, Storage, Tensor,
    WithDType,
};
use num_traits::Float;
use rayon::prelude::*;

/// The element types the kernels take.
pub trait Elem: WithDType + Float + Send + Sync + std::iter::Sum {
    /// eˣ; for f32 a polynomial the compiler vectorises (libm's `expf` is a scalar call).
    fn fast_exp(self) -> Self;
    /// tanh; for f32 from `fast_exp`.
    fn fast_tanh(self) -> Self;
}

impl Elem for f32 {
    /// eˣ = 2ⁿ·eʳ with n = round(x / ln 2) and |r| ≤ ln 2 / 2 (Cody–Waite split of ln 2),
    /// eʳ by its degree-7 Taylor polynomial (truncation error < 1e-8 relative): within 2 ulp
    /// of `f32::exp` on [-87, 88]; 0 below, finite above (callers take x ≤ 0 or tanh's 2y).
    #[inline(always)]
    fn fast_exp(self) -> f32 {
        const LOG2E: f32 = std::f32::consts::LOG2_E;
        const LN2_HI: f32 = 0.693_145_75;
        const LN2_LO: f32 = 1.428_606_8e-6;
        const ROUND: f32 = 12_582_912.0; // 1.5·2²³: adding it rounds to an integer
        let x = self.clamp(-88.0, 88.0);
        let n = (x * LOG2E + ROUND) - ROUND;
        let r = x - n * LN2_HI - n * LN2_LO;
        let p = 1.0
            + r * (1.0
                + r * (1.0 / 2.0
                    + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
        // n ∈ [-127, 127]: the biased exponent n + 127 is 0 (giving 0.0) to 254.
        p * f32::from_bits(((n as i32 + 127) as u32) << 23)
    }

    #[inline(always)]
    fn fast_tanh(self) -> f32 {
        1.0 - 2.0 / ((self + self).fast_exp() + 1.0)
    }
}

impl Elem for f64 {
    fn fast_exp(self) -> f64 {
        self.exp()
    }

    fn fast_tanh(self) -> f64 {
        self.tanh()
    }
}

#[inline(always)]
fn c<T: Elem>(x: f64) -> T {
    <T as num_traits::NumCast>::from(x).unwrap()
}

/// Whether the fused kernels apply to `t`.
pub fn fusable(t: &Tensor) -> bool {
    matches!(t.device(), Device::Cpu) && matches!(t.dtype(), DType::F32 | DType::F64)
}

#[derive(Clone, Copy)]
struct Ptr<T>(*mut T);
unsafe impl<T> Send for Ptr<T> {}
unsafe impl<T> Sync for Ptr<T> {}
impl<T> Ptr<T> {
    /// The pointer (a method, so that closures capture the whole `Send` wrapper).
    fn get(self) -> *mut T {
        self.0
    }

    /// SAFETY: callers write disjoint ranges from different threads.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice(&self, start: usize, len: usize) -> &mut [T] {
        std::slice::from_raw_parts_mut(self.0.add(start), len)
    }
}

fn cont<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    let Some((a, b)) = l.contiguous_offsets() else {
        bail!("fused op: expected a contiguous tensor");
    };
    Ok(&s.as_slice::<T>()?[a..b])
}

/// A contiguous CPU tensor's buffer, held for reading.
struct View<'a> {
    guard: Box<dyn Deref<Target = Storage> + 'a>,
    start: usize,
    end: usize,
}

impl View<'_> {
    fn get<T: WithDType>(&self) -> Result<&[T]> {
        match &**self.guard {
            Storage::Cpu(s) => Ok(&s.as_slice::<T>()?[self.start..self.end]),
            _ => bail!("fused op: expected a CPU tensor"),
        }
    }
}

fn view(t: &Tensor) -> Result<View<'_>> {
    let (guard, layout) = t.storage_and_layout();
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!("fused op: expected a contiguous tensor");
    };
    Ok(View { guard: Box::new(guard), start, end })
}

fn out<T: Elem>(v: Vec<T>, shape: &Shape) -> Result<Tensor> {
    Tensor::from_vec(v, shape.clone(), &Device::Cpu)
}

fn scalar_f64(t: &Tensor) -> Result<f64> {
    t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>().map(|v| v[0])
}

macro_rules! dispatch {
    ($dt:expr, $f:ident :: <T> ( $($arg:expr),* )) => {
        match $dt {
            DType::F32 => $f::<f32>($($arg),*),
            DType::F64 => $f::<f64>($($arg),*),
            dt => bail!("fused op: unsupported dtype {dt:?}"),
        }
    };
}

#[inline(always)]
fn dot<T: Elem>(a: &[T], b: &[T]) -> T {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [T::zero(); 16];
    let whole = n / 16 * 16;
    for i in (0..whole).step_by(16) {
        for j in 0..16 {
            acc[j] = acc[j] + a[i + j] * b[i + j];
        }
    }
    let mut s = T::zero();
    for x in acc {
        s = s + x;
    }
    for i in whole..n {
        s = s + a[i] * b[i];
    }
    s
}

#[inline(always)]
fn axpy<T: Elem>(y: &mut [T], a: T, x: &[T]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi = *yi + a * *xi;
    }
}

const ROWS: usize = 16;
const ELEMS: usize = 1 << 14;

// ---------------------------------------------------------------------------------------------
// Causal attention

/// Causal (optionally sliding-window) attention: q `[T, H, D]`, k and v `[T, Hkv, D]`
/// (grouped-query: each key/value head serves H / Hkv query heads). Output `[T, H, D]`.
pub struct Attention {
    pub scale: f64,
    pub window: Option<usize>,
    /// Per (head, row) log-sum-exp of the scaled scores, saved by the forward for the backward.
    lse: Mutex<Vec<f64>>,
}

impl Attention {
    pub fn new(scale: f64, window: Option<usize>) -> Self {
        Self { scale, window, lse: Mutex::new(Vec::new()) }
    }

    fn lo(&self, i: usize) -> usize {
        match self.window {
            Some(w) => (i + 1).saturating_sub(w),
            None => 0,
        }
    }
}

/// Query rows per block in the attention kernels: each block's scores `[rows, keys]` are
/// one matrix product, so the work runs in gemm's kernels instead of row-by-row dot products.
const QBLOCK: usize = 64;

impl Attention {
    /// For a block of query rows `r0..r1`: the first key any row sees and the number of keys.
    fn key_span(&self, r0: usize, r1: usize) -> (usize, usize) {
        let c0 = self.lo(r0);
        (c0, r1 - c0)
    }

    fn fwd<T: Elem>(&self, q: &[T], k: &[T], v: &[T], dims: (usize, usize, usize, usize)) -> Result<Vec<T>> {
        let (t, h, hkv, d) = dims;
        let (rep, qs, ks) = (h / hkv, h * d, hkv * d);
        let scale: T = c(self.scale);
        let mut o = vec![T::zero(); t * h * d];
        let mut lse = vec![0f64; h * t];
        let (op, lp) = (Ptr(o.as_mut_ptr()), Ptr(lse.as_mut_ptr()));
        let blocks = t.div_ceil(QBLOCK);
        (0..h * blocks).into_par_iter().for_each(|task| {
            let (hh, b) = (task / blocks, task % blocks);
            let g = hh / rep;
            let (r0, r1) = (b * QBLOCK, ((b + 1) * QBLOCK).min(t));
            let ((c0, n), rows) = (self.key_span(r0, r1), r1 - r0);
            let mut s = vec![T::zero(); rows * n];
            // SAFETY: the operands lie inside q, k, v (rows < t, columns < d), and rows r0..r1
            // of head hh in o and lse are written by this task only.
            unsafe {
                let (qb, kb, vb) = (q.as_ptr().add(r0 * qs + hh * d), k.as_ptr().add(c0 * ks + g * d), v.as_ptr().add(c0 * ks + g * d));
                // S = scale · Q Kᵀ
                gemm_raw((rows, n, d), s.as_mut_ptr(), (n, 1), false, qb, (qs, 1), kb, (1, ks), scale, false);
                for (r, srow) in s.chunks_mut(n).enumerate() {
                    let i = r0 + r;
                    let (a, e) = (self.lo(i) - c0, i + 1 - c0);
                    let m = srow[a..e].iter().fold(T::neg_infinity(), |a, &b| Float::max(a, b));
                    let l = exp_shifted(&mut srow[a..e], m);
                    let inv = T::one() / l;
                    srow[a..e].iter_mut().for_each(|x| *x = *x * inv);
                    zero_outside(srow, a, e);
                    lp.slice(hh * t + i, 1)[0] = WithDType::to_f64(m + l.ln());
                }
                // O = P V
                gemm_raw((rows, d, n), op.get().add(r0 * qs + hh * d), (qs, 1), false, s.as_ptr(), (n, 1), vb, (ks, 1), T::one(), false);
            }
        });
        *self.lse.lock().unwrap() = lse;
        Ok(o)
    }

    #[allow(clippy::too_many_arguments)]
    fn bwd_impl<T: Elem>(
        &self,
        q: &[T],
        k: &[T],
        v: &[T],
        o: &[T],
        go: &[T],
        lse: &[f64],
        dims: (usize, usize, usize, usize),
    ) -> (Vec<T>, Vec<T>, Vec<T>) {
        let (t, h, hkv, d) = dims;
        let (rep, qs, ks) = (h / hkv, h * d, hkv * d);
        let scale: T = c(self.scale);
        let mut dq = vec![T::zero(); t * h * d];
        let dqp = Ptr(dq.as_mut_ptr());
        let blocks = t.div_ceil(QBLOCK);
        // Per query head: dK and dV rows [T, D], summed over each group afterwards.
        let per_head: Vec<(Vec<T>, Vec<T>)> = (0..h)
            .into_par_iter()
            .map(|hh| {
                let g = hh / rep;
                let mut dk = vec![T::zero(); t * d];
                let mut dv = vec![T::zero(); t * d];
                let mut p = vec![T::zero(); QBLOCK * t];
                let mut ds = vec![T::zero(); QBLOCK * t];
                for b in 0..blocks {
                    let (r0, r1) = (b * QBLOCK, ((b + 1) * QBLOCK).min(t));
                    let ((c0, n), rows) = (self.key_span(r0, r1), r1 - r0);
                    let (p, ds) = (&mut p[..rows * n], &mut ds[..rows * n]);
                    // SAFETY: the operands lie inside their buffers (rows < t, columns < d);
                    // rows r0..r1 of head hh in dq belong to this task.
                    unsafe {
                        let (qb, gb) = (q.as_ptr().add(r0 * qs + hh * d), go.as_ptr().add(r0 * qs + hh * d));
                        let (kb, vb) = (k.as_ptr().add(c0 * ks + g * d), v.as_ptr().add(c0 * ks + g * d));
                        // P from the recomputed scores and the saved log-sum-exp; dP = dO Vᵀ.
                        gemm_raw((rows, n, d), p.as_mut_ptr(), (n, 1), false, qb, (qs, 1), kb, (1, ks), scale, false);
                        gemm_raw((rows, n, d), ds.as_mut_ptr(), (n, 1), false, gb, (qs, 1), vb, (1, ks), T::one(), false);
                        for (r, (prow, dsrow)) in p.chunks_mut(n).zip(ds.chunks_mut(n)).enumerate() {
                            let i = r0 + r;
                            let (a, e) = (self.lo(i) - c0, i + 1 - c0);
                            let row = i * qs + hh * d;
                            let di = dot(&go[row..row + d], &o[row..row + d]);
                            let l: T = c(lse[hh * t + i]);
                            exp_shifted(&mut prow[a..e], l);
                            // dS = P ∘ (dP − D_i) · scale
                            for (x, &pj) in dsrow[a..e].iter_mut().zip(&prow[a..e]) {
                                *x = pj * (*x - di) * scale;
                            }
                            zero_outside(prow, a, e);
                            zero_outside(dsrow, a, e);
                        }
                        // dQ = dS K; dK += dSᵀ Q; dV += Pᵀ dO.
                        gemm_raw((rows, d, n), dqp.get().add(r0 * qs + hh * d), (qs, 1), false, ds.as_ptr(), (n, 1), kb, (ks, 1), T::one(), false);
                        gemm_raw((n, d, rows), dk.as_mut_ptr().add(c0 * d), (d, 1), true, ds.as_ptr(), (1, n), qb, (qs, 1), T::one(), false);
                        gemm_raw((n, d, rows), dv.as_mut_ptr().add(c0 * d), (d, 1), true, p.as_ptr(), (1, n), gb, (qs, 1), T::one(), false);
                    }
                }
                (dk, dv)
            })
            .collect();
        let mut dk = vec![T::zero(); t * hkv * d];
        let mut dv = vec![T::zero(); t * hkv * d];
        for (hh, (hk, hv)) in per_head.iter().enumerate() {
            let g = hh / rep;
            for j in 0..t {
                let dst = (j * hkv + g) * d;
                axpy(&mut dk[dst..dst + d], T::one(), &hk[j * d..(j + 1) * d]);
                axpy(&mut dv[dst..dst + d], T::one(), &hv[j * d..(j + 1) * d]);
            }
        }
        (dq, dk, dv)
    }
}

/// Zeroes a score row outside the keys `a..e` that its query sees (causal mask, window).
fn zero_outside<T: Elem>(row: &mut [T], a: usize, e: usize) {
    let (head, rest) = row.split_at_mut(a);
    head.fill(T::zero());
    rest[e - a..].fill(T::zero());
}

/// x ← exp(x − shift) over `xs`; returns the sum.
#[inline(always)]
fn exp_shifted<T: Elem>(xs: &mut [T], shift: T) -> T {
    let mut l = T::zero();
    for x in xs.iter_mut() {
        *x = (*x - shift).fast_exp();
        l = l + *x;
    }
    l
}

fn attn_dims(lq: &Layout, lk: &Layout) -> Result<(usize, usize, usize, usize)> {
    let (t, h, d) = lq.shape().dims3()?;
    let (tk, hkv, dk) = lk.shape().dims3()?;
    if tk != t || dk != d || hkv == 0 || h % hkv != 0 {
        bail!("attention: q {:?} and k {:?} do not fit", lq.shape(), lk.shape());
    }
    Ok((t, h, hkv, d))
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "fused-causal-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = attn_dims(l1, l2)?;
        let st = match s1 {
            CpuStorage::F32(_) => {
                CpuStorage::F32(self.fwd::<f32>(cont(s1, l1)?, cont(s2, l2)?, cont(s3, l3)?, dims)?)
            }
            CpuStorage::F64(_) => {
                CpuStorage::F64(self.fwd::<f64>(cont(s1, l1)?, cont(s2, l2)?, cont(s3, l3)?, dims)?)
            }
            _ => bail!("attention: unsupported dtype"),
        };
        Ok((st, l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dims = attn_dims(q.layout(), k.layout())?;
        let lse = self.lse.lock().unwrap().clone();
        let (q, k, v, res, grad) = (q.contiguous()?, k.contiguous()?, v.contiguous()?, res.contiguous()?, grad.contiguous()?);
        let (vq, vk, vv, vo, vg) = (view(&q)?, view(&k)?, view(&v)?, view(&res)?, view(&grad)?);
        fn go<T: Elem>(
            a: &Attention,
            vs: [&View; 5],
            lse: &[f64],
            dims: (usize, usize, usize, usize),
            shapes: (&Shape, &Shape),
        ) -> Result<(Tensor, Tensor, Tensor)> {
            let [q, k, v, o, g] = vs;
            let (dq, dk, dv) = a.bwd_impl::<T>(q.get()?, k.get()?, v.get()?, o.get()?, g.get()?, lse, dims);
            Ok((out(dq, shapes.0)?, out(dk, shapes.1)?, out(dv, shapes.1)?))
        }
        let (dq, dk, dv) =
            dispatch!(q.dtype(), go::<T>(self, [&vq, &vk, &vv, &vo, &vg], &lse, dims, (q.shape(), k.shape())))?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

// ---------------------------------------------------------------------------------------------
// LayerNorm and RMSNorm

/// LayerNorm over the last dimension: (x, weight, bias).
pub struct LayerNormOp {
    pub eps: f64,
}

fn ln_fwd<T: Elem>(x: &[T], w: &[T], b: &[T], eps: f64) -> Vec<T> {
    let d = w.len();
    let mut y = vec![T::zero(); x.len()];
    y.par_chunks_mut(d * ROWS).zip(x.par_chunks(d * ROWS)).for_each(|(yc, xc)| {
        for (yr, xr) in yc.chunks_mut(d).zip(xc.chunks(d)) {
            let n: T = c(d as f64);
            let mean = xr.iter().copied().sum::<T>() / n;
            let var = xr.iter().map(|&v| (v - mean) * (v - mean)).sum::<T>() / n;
            let rstd = T::one() / (var + c(eps)).sqrt();
            for i in 0..d {
                yr[i] = (xr[i] - mean) * rstd * w[i] + b[i];
            }
        }
    });
    y
}

fn ln_bwd<T: Elem>(x: &[T], w: &[T], g: &[T], eps: f64) -> (Vec<T>, Vec<T>, Vec<T>) {
    let d = w.len();
    let mut dx = vec![T::zero(); x.len()];
    let zero = || (vec![T::zero(); d], vec![T::zero(); d]);
    let (dw, db) = dx
        .par_chunks_mut(d * ROWS)
        .zip(x.par_chunks(d * ROWS).zip(g.par_chunks(d * ROWS)))
        .fold(zero, |(mut dw, mut db), (dxc, (xc, gc))| {
            let mut xhat = vec![T::zero(); d];
            for ((dxr, xr), gr) in dxc.chunks_mut(d).zip(xc.chunks(d)).zip(gc.chunks(d)) {
                let n: T = c(d as f64);
                let mean = xr.iter().copied().sum::<T>() / n;
                let var = xr.iter().map(|&v| (v - mean) * (v - mean)).sum::<T>() / n;
                let rstd = T::one() / (var + c(eps)).sqrt();
                let (mut a, mut bsum) = (T::zero(), T::zero());
                for i in 0..d {
                    xhat[i] = (xr[i] - mean) * rstd;
                    let gw = gr[i] * w[i];
                    a = a + gw;
                    bsum = bsum + gw * xhat[i];
                    dw[i] = dw[i] + gr[i] * xhat[i];
                    db[i] = db[i] + gr[i];
                }
                let (a, bsum) = (a / n, bsum / n);
                for i in 0..d {
                    dxr[i] = rstd * (gr[i] * w[i] - a - xhat[i] * bsum);
                }
            }
            (dw, db)
        })
        .reduce(zero, |(mut a, mut b), (c2, d2)| {
            axpy(&mut a, T::one(), &c2);
            axpy(&mut b, T::one(), &d2);
            (a, b)
        });
    (dx, dw, db)
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "fused-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let st = match s1 {
            CpuStorage::F32(_) => CpuStorage::F32(ln_fwd(cont(s1, l1)?, cont(s2, l2)?, cont(s3, l3)?, self.eps)),
            CpuStorage::F64(_) => CpuStorage::F64(ln_fwd(cont(s1, l1)?, cont(s2, l2)?, cont(s3, l3)?, self.eps)),
            _ => bail!("layer norm: unsupported dtype"),
        };
        Ok((st, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (x, w, grad) = (x.contiguous()?, w.contiguous()?, grad.contiguous()?);
        let (vx, vw, vg) = (view(&x)?, view(&w)?, view(&grad)?);
        fn go<T: Elem>(vx: &View, vw: &View, vg: &View, eps: f64, xs: &Shape, ws: &Shape) -> Result<(Tensor, Tensor, Tensor)> {
            let (dx, dw, db) = ln_bwd::<T>(vx.get()?, vw.get()?, vg.get()?, eps);
            Ok((out(dx, xs)?, out(dw, ws)?, out(db, ws)?))
        }
        let (dx, dw, db) = dispatch!(x.dtype(), go::<T>(&vx, &vw, &vg, self.eps, x.shape(), b.shape()))?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// RMSNorm over the last dimension: (x, weight); the scale is `w` or `1 + w`.
pub struct RmsNormOp {
    pub eps: f64,
    pub one_plus: bool,
}

impl RmsNormOp {
    fn fwd<T: Elem>(&self, x: &[T], w: &[T]) -> Vec<T> {
        let d = w.len();
        let off: T = if self.one_plus { T::one() } else { T::zero() };
        let mut y = vec![T::zero(); x.len()];
        y.par_chunks_mut(d * ROWS).zip(x.par_chunks(d * ROWS)).for_each(|(yc, xc)| {
            for (yr, xr) in yc.chunks_mut(d).zip(xc.chunks(d)) {
                let ms = xr.iter().map(|&v| v * v).sum::<T>() / c(d as f64);
                let r = T::one() / (ms + c(self.eps)).sqrt();
                for i in 0..d {
                    yr[i] = xr[i] * r * (w[i] + off);
                }
            }
        });
        y
    }

    fn bwd_impl<T: Elem>(&self, x: &[T], w: &[T], g: &[T]) -> (Vec<T>, Vec<T>) {
        let d = w.len();
        let off: T = if self.one_plus { T::one() } else { T::zero() };
        let mut dx = vec![T::zero(); x.len()];
        let dw = dx
            .par_chunks_mut(d * ROWS)
            .zip(x.par_chunks(d * ROWS).zip(g.par_chunks(d * ROWS)))
            .fold(
                || vec![T::zero(); d],
                |mut dw, (dxc, (xc, gc))| {
                    for ((dxr, xr), gr) in dxc.chunks_mut(d).zip(xc.chunks(d)).zip(gc.chunks(d)) {
                        let n: T = c(d as f64);
                        let ms = xr.iter().map(|&v| v * v).sum::<T>() / n;
                        let r = T::one() / (ms + c(self.eps)).sqrt();
                        let mut a = T::zero();
                        for i in 0..d {
                            a = a + gr[i] * (w[i] + off) * xr[i];
                            dw[i] = dw[i] + gr[i] * xr[i] * r;
                        }
                        let k = a / n * r * r * r;
                        for i in 0..d {
                            dxr[i] = r * gr[i] * (w[i] + off) - xr[i] * k;
                        }
                    }
                    dw
                },
            )
            .reduce(
                || vec![T::zero(); d],
                |mut a, b| {
                    axpy(&mut a, T::one(), &b);
                    a
                },
            );
        (dx, dw)
    }
}

impl CustomOp2 for RmsNormOp {
    fn name(&self) -> &'static str {
        "fused-rms-norm"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let st = match s1 {
            CpuStorage::F32(_) => CpuStorage::F32(self.fwd(cont(s1, l1)?, cont(s2, l2)?)),
            CpuStorage::F64(_) => CpuStorage::F64(self.fwd(cont(s1, l1)?, cont(s2, l2)?)),
            _ => bail!("rms norm: unsupported dtype"),
        };
        Ok((st, l1.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (x, w, grad) = (x.contiguous()?, w.contiguous()?, grad.contiguous()?);
        let (vx, vw, vg) = (view(&x)?, view(&w)?, view(&grad)?);
        fn go<T: Elem>(op: &RmsNormOp, vx: &View, vw: &View, vg: &View, xs: &Shape, ws: &Shape) -> Result<(Tensor, Tensor)> {
            let (dx, dw) = op.bwd_impl::<T>(vx.get()?, vw.get()?, vg.get()?);
            Ok((out(dx, xs)?, out(dw, ws)?))
        }
        let (dx, dw) = dispatch!(x.dtype(), go::<T>(self, &vx, &vw, &vg, x.shape(), w.shape()))?;
        Ok((Some(dx), Some(dw)))
    }
}

// ---------------------------------------------------------------------------------------------
// Elementwise: GELU (tanh) and SwiGLU

fn map1<T: Elem>(x: &[T], f: impl Fn(T) -> T + Sync) -> Vec<T> {
    let mut y = vec![T::zero(); x.len()];
    y.par_chunks_mut(ELEMS).zip(x.par_chunks(ELEMS)).for_each(|(yc, xc)| {
        for (a, &b) in yc.iter_mut().zip(xc) {
            *a = f(b);
        }
    });
    y
}

fn map2<T: Elem>(x: &[T], z: &[T], f: impl Fn(T, T) -> T + Sync) -> Vec<T> {
    let mut y = vec![T::zero(); x.len()];
    y.par_chunks_mut(ELEMS).zip(x.par_chunks(ELEMS).zip(z.par_chunks(ELEMS))).for_each(|(yc, (xc, zc))| {
        for ((a, &b), &cc) in yc.iter_mut().zip(xc).zip(zc) {
            *a = f(b, cc);
        }
    });
    y
}

const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
const GELU_C: f64 = 0.044_715;

#[inline(always)]
fn gelu<T: Elem>(x: T) -> T {
    let half: T = c(0.5);
    half * x * (T::one() + (c::<T>(SQRT_2_OVER_PI) * (x + c::<T>(GELU_C) * x * x * x)).fast_tanh())
}

#[inline(always)]
fn gelu_grad<T: Elem>(x: T) -> T {
    let half: T = c(0.5);
    let t = (c::<T>(SQRT_2_OVER_PI) * (x + c::<T>(GELU_C) * x * x * x)).fast_tanh();
    half * (T::one() + t)
        + half * x * (T::one() - t * t) * c::<T>(SQRT_2_OVER_PI) * (T::one() + c::<T>(3.0 * GELU_C) * x * x)
}

#[inline(always)]
fn sigmoid<T: Elem>(x: T) -> T {
    T::one() / (T::one() + (-x).fast_exp())
}

/// GELU with the tanh approximation.
pub struct GeluOp;

impl CustomOp1 for GeluOp {
    fn name(&self) -> &'static str {
        "fused-gelu-tanh"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let st = match s {
            CpuStorage::F32(_) => CpuStorage::F32(map1(cont::<f32>(s, l)?, gelu)),
            CpuStorage::F64(_) => CpuStorage::F64(map1(cont::<f64>(s, l)?, gelu)),
            _ => bail!("gelu: unsupported dtype"),
        };
        Ok((st, l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (x, grad) = (x.contiguous()?, grad.contiguous()?);
        let (vx, vg) = (view(&x)?, view(&grad)?);
        fn go<T: Elem>(vx: &View, vg: &View, s: &Shape) -> Result<Tensor> {
            out(map2::<T>(vx.get()?, vg.get()?, |x, g| g * gelu_grad(x)), s)
        }
        Ok(Some(dispatch!(x.dtype(), go::<T>(&vx, &vg, x.shape()))?))
    }
}

/// SwiGLU: silu(gate) * up.
pub struct SwiGluOp;

impl CustomOp2 for SwiGluOp {
    fn name(&self) -> &'static str {
        "fused-swiglu"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        fn f<T: Elem>(g: T, u: T) -> T {
            g * sigmoid(g) * u
        }
        let st = match s1 {
            CpuStorage::F32(_) => CpuStorage::F32(map2(cont::<f32>(s1, l1)?, cont(s2, l2)?, f)),
            CpuStorage::F64(_) => CpuStorage::F64(map2(cont::<f64>(s1, l1)?, cont(s2, l2)?, f)),
            _ => bail!("swiglu: unsupported dtype"),
        };
        Ok((st, l1.shape().clone()))
    }

    fn bwd(&self, g: &Tensor, u: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (g, u, grad) = (g.contiguous()?, u.contiguous()?, grad.contiguous()?);
        let (vg, vu, vd) = (view(&g)?, view(&u)?, view(&grad)?);
        fn go<T: Elem>(vg: &View, vu: &View, vd: &View, s: &Shape) -> Result<(Tensor, Tensor)> {
            let (g, u, d) = (vg.get::<T>()?, vu.get::<T>()?, vd.get::<T>()?);
            let mut dg = vec![T::zero(); g.len()];
            let mut du = vec![T::zero(); g.len()];
            dg.par_chunks_mut(ELEMS).zip(du.par_chunks_mut(ELEMS)).enumerate().for_each(|(ci, (dgc, duc))| {
                let o = ci * ELEMS;
                for i in 0..dgc.len() {
                    let (gi, ui, di) = (g[o + i], u[o + i], d[o + i]);
                    let sg = sigmoid(gi);
                    duc[i] = di * gi * sg;
                    dgc[i] = di * ui * sg * (T::one() + gi * (T::one() - sg));
                }
            });
            Ok((out(dg, s)?, out(du, s)?))
        }
        let (dg, du) = dispatch!(g.dtype(), go::<T>(&vg, &vu, &vd, g.shape()))?;
        Ok((Some(dg), Some(du)))
    }
}

// ---------------------------------------------------------------------------------------------
// Rotary embedding

/// Rotary embedding (half-split layout) of x `[T, H, D]` with per-position tables `[T, D/2]`.
pub struct RopeOp {
    pub cos: Vec<f64>,
    pub sin: Vec<f64>,
}

impl RopeOp {
    fn apply<T: Elem>(&self, x: &[T], dims: (usize, usize, usize), inverse: bool) -> Vec<T> {
        let (t, h, d) = dims;
        let half = d / 2;
        let mut y = vec![T::zero(); x.len()];
        y.par_chunks_mut(h * d).zip(x.par_chunks(h * d)).enumerate().for_each(|(p, (yp, xp))| {
            let _ = t;
            let cs: Vec<T> = self.cos[p * half..(p + 1) * half].iter().map(|&v| c(v)).collect();
            let sn: Vec<T> = self.sin[p * half..(p + 1) * half]
                .iter()
                .map(|&v| if inverse { c(-v) } else { c(v) })
                .collect();
            for (yr, xr) in yp.chunks_mut(d).zip(xp.chunks(d)) {
                for i in 0..half {
                    let (a, b) = (xr[i], xr[i + half]);
                    yr[i] = a * cs[i] - b * sn[i];
                    yr[i + half] = b * cs[i] + a * sn[i];
                }
            }
        });
        y
    }
}

impl CustomOp1 for RopeOp {
    fn name(&self) -> &'static str {
        "fused-rope"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = l.shape().dims3()?;
        let st = match s {
            CpuStorage::F32(_) => CpuStorage::F32(self.apply(cont::<f32>(s, l)?, dims, false)),
            CpuStorage::F64(_) => CpuStorage::F64(self.apply(cont::<f64>(s, l)?, dims, false)),
            _ => bail!("rope: unsupported dtype"),
        };
        Ok((st, l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        let vg = view(&grad)?;
        let dims = x.dims3()?;
        fn go<T: Elem>(op: &RopeOp, vg: &View, dims: (usize, usize, usize), s: &Shape) -> Result<Tensor> {
            out(op.apply::<T>(vg.get()?, dims, true), s)
        }
        Ok(Some(dispatch!(x.dtype(), go::<T>(self, &vg, dims, x.shape()))?))
    }
}

// ---------------------------------------------------------------------------------------------
// Cross-entropy over the vocabulary

/// Mean cross-entropy of logits `[N, V]` against `targets`; returns a scalar. The backward
/// writes softmax − one-hot in one pass from the saved per-row log-sum-exp.
pub struct CrossEntropyOp {
    pub targets: Vec<u32>,
    lse: Mutex<Vec<f64>>,
}

impl CrossEntropyOp {
    pub fn new(targets: Vec<u32>) -> Self {
        Self { targets, lse: Mutex::new(Vec::new()) }
    }
}

/// log Σ exp over a row, accumulated in f64 per chunk of the row.
#[inline]
fn row_lse<T: Elem>(r: &[T]) -> f64 {
    let m = r.iter().fold(T::neg_infinity(), |a, &b| Float::max(a, b));
    let mut acc = [T::zero(); 16];
    let whole = r.len() / 16 * 16;
    for i in (0..whole).step_by(16) {
        for j in 0..16 {
            acc[j] = acc[j] + (r[i + j] - m).fast_exp();
        }
    }
    let mut s: f64 = acc.iter().map(|&v| WithDType::to_f64(v)).sum();
    for &v in &r[whole..] {
        s += WithDType::to_f64((v - m).fast_exp());
    }
    WithDType::to_f64(m) + s.ln()
}

/// Per row: the log-probability of `targets[i]` under a softmax over the first `limit`
/// entries of row `i` of `x` (`[N, V]` contiguous).
pub fn target_logprobs_rows<T: Elem>(x: &[T], v: usize, limit: usize, targets: &[u32]) -> Vec<f32> {
    targets
        .par_iter()
        .enumerate()
        .map(|(i, &t)| {
            let r = &x[i * v..i * v + limit];
            (WithDType::to_f64(r[t as usize]) - row_lse(r)) as f32
        })
        .collect()
}

impl CrossEntropyOp {
    fn fwd<T: Elem>(&self, x: &[T], v: usize) -> Result<T> {
        let n = self.targets.len();
        if x.len() != n * v {
            bail!("cross-entropy: {} targets for logits of {} elements", n, x.len());
        }
        if let Some(bad) = self.targets.iter().find(|&&t| t as usize >= v) {
            bail!("cross-entropy: target {bad} outside a vocabulary of {v}");
        }
        let lse: Vec<f64> = (0..n).into_par_iter().map(|i| row_lse(&x[i * v..(i + 1) * v])).collect();
        let loss: f64 = (0..n).map(|i| lse[i] - WithDType::to_f64(x[i * v + self.targets[i] as usize])).sum::<f64>()
            / n as f64;
        *self.lse.lock().unwrap() = lse;
        Ok(c(loss))
    }

    fn bwd_impl<T: Elem>(&self, x: &[T], v: usize, g: f64) -> Vec<T> {
        let lse = self.lse.lock().unwrap();
        let n = self.targets.len();
        let k: T = c(g / n as f64);
        let mut dx = vec![T::zero(); x.len()];
        dx.par_chunks_mut(v).enumerate().for_each(|(i, dr)| {
            let l: T = c(lse[i]);
            let xr = &x[i * v..(i + 1) * v];
            for (d, &xv) in dr.iter_mut().zip(xr) {
                *d = (xv - l).fast_exp() * k;
            }
            let t = self.targets[i] as usize;
            dr[t] = dr[t] - k;
        });
        dx
    }
}

impl CustomOp1 for CrossEntropyOp {
    fn name(&self) -> &'static str {
        "fused-cross-entropy"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (_, v) = l.shape().dims2()?;
        let st = match s {
            CpuStorage::F32(_) => CpuStorage::F32(vec![self.fwd(cont::<f32>(s, l)?, v)?]),
            CpuStorage::F64(_) => CpuStorage::F64(vec![self.fwd(cont::<f64>(s, l)?, v)?]),
            _ => bail!("cross-entropy: unsupported dtype"),
        };
        Ok((st, Shape::from(())))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = scalar_f64(grad)?;
        let x = x.contiguous()?;
        let vx = view(&x)?;
        let (_, v) = x.dims2()?;
        fn go<T: Elem>(op: &CrossEntropyOp, vx: &View, v: usize, g: f64, s: &Shape) -> Result<Tensor> {
            out(op.bwd_impl::<T>(vx.get()?, v, g), s)
        }
        Ok(Some(dispatch!(x.dtype(), go::<T>(self, &vx, v, g, x.shape()))?))
    }
}

/// Reads a contiguous CPU tensor's logits and computes per-row target log-probabilities.
pub fn logprobs_cpu(logits: &Tensor, limit: usize, targets: &[u32]) -> Result<Vec<f32>> {
    let logits = logits.contiguous()?;
    let (_, v) = logits.dims2()?;
    let vx = view(&logits)?;
    fn go<T: Elem>(vx: &View, v: usize, limit: usize, targets: &[u32]) -> Result<Vec<f32>> {
        Ok(target_logprobs_rows::<T>(vx.get()?, v, limit, targets))
    }
    dispatch!(logits.dtype(), go::<T>(&vx, v, limit, targets))
}

// ---------------------------------------------------------------------------------------------
// Linear layer: y = x Wᵀ (+ b), W `[out, in]` (any 2-D strides, e.g. GPT-2's Conv1D weights
// seen transposed). The backward writes dW straight in W's own memory order (no transposed
// gradient views to copy or add later) and dx and db, each with one gemm or one pass.

pub struct LinearOp {
    /// The weight is stored `[in, out]` (GPT-2's Conv1D) and used as its transpose. Passing
    /// the stored tensor itself, not a transposed view of it, keeps the parameter's gradient
    /// in the in-place sink (`grads`): a view would be a graph node candle expects a gradient for.
    pub transposed: bool,
}

impl LinearOp {
    /// The weight as `[out, in]`: its dims and (row, column) strides.
    fn out_in(&self, l: &Layout) -> Result<(Shape, [usize; 2])> {
        let (a, b) = l.shape().dims2()?;
        let st = l.stride();
        Ok(if self.transposed { ((b, a).into(), [st[1], st[0]]) } else { ((a, b).into(), [st[0], st[1]]) })
    }
}

/// A tensor's buffer from its start offset (any layout: the caller has the strides).
struct Strided<'a> {
    guard: Box<dyn Deref<Target = Storage> + 'a>,
    start: usize,
}

impl Strided<'_> {
    fn get<T: WithDType>(&self) -> Result<&[T]> {
        match &**self.guard {
            Storage::Cpu(s) => Ok(&s.as_slice::<T>()?[self.start..]),
            _ => bail!("fused op: expected a CPU tensor"),
        }
    }
}

fn strided(t: &Tensor) -> Strided<'_> {
    let (guard, layout) = t.storage_and_layout();
    let start = layout.start_offset();
    Strided { guard: Box::new(guard), start }
}

/// dst (m×n) (+)= beta · lhs (m×k) · rhs (k×n) on strided buffers given as (row stride,
/// column stride); `parallel` spreads one product over rayon's threads.
///
/// SAFETY: every element the extents and strides address lies inside its buffer, and no other
/// thread reads or writes dst's elements meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_raw<T: Elem>(
    (m, n, k): (usize, usize, usize),
    dst: *mut T,
    (dst_rs, dst_cs): (usize, usize),
    accumulate: bool,
    lhs: *const T,
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: *const T,
    (rhs_rs, rhs_cs): (usize, usize),
    beta: T,
    parallel: bool,
) {
    let threads = if parallel { rayon::current_num_threads() } else { 1 };
    let par = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    gemm::gemm(
        m,
        n,
        k,
        dst,
        dst_cs as isize,
        dst_rs as isize,
        accumulate,
        lhs,
        lhs_cs as isize,
        lhs_rs as isize,
        rhs,
        rhs_cs as isize,
        rhs_rs as isize,
        if accumulate { T::one() } else { T::zero() },
        beta,
        false,
        false,
        false,
        par,
    )
}

/// dst (m×n) (+)= lhs (m×k) · rhs (k×n), one product over all threads.
#[allow(clippy::too_many_arguments)]
fn gemm_into<T: Elem>(
    dims: (usize, usize, usize),
    dst: &mut [T],
    dst_strides: (usize, usize),
    accumulate: bool,
    lhs: &[T],
    lhs_strides: (usize, usize),
    rhs: &[T],
    rhs_strides: (usize, usize),
) {
    // SAFETY: the extents implied by (m, n, k) and the strides lie inside the slices (checked
    // by the callers' shapes); dst is borrowed mutably.
    unsafe {
        gemm_raw(dims, dst.as_mut_ptr(), dst_strides, accumulate, lhs.as_ptr(), lhs_strides, rhs.as_ptr(), rhs_strides, T::one(), true)
    }
}

fn linear_dims(xs: &Shape, ws: &Shape) -> Result<(usize, usize, usize)> {
    let (out, inp) = ws.dims2()?;
    let dims = xs.dims();
    if dims.last() != Some(&inp) {
        bail!("linear: input {xs:?} does not fit weight {ws:?}");
    }
    Ok((xs.elem_count() / inp.max(1), inp, out))
}

fn linear_fwd<T: Elem>(x: &[T], w: &[T], w_stride: &[usize], b: Option<&[T]>, (m, inp, out): (usize, usize, usize)) -> Vec<T> {
    let mut y = vec![T::zero(); m * out];
    if let Some(b) = b {
        y.par_chunks_mut(out * ROWS).for_each(|c| c.chunks_mut(out).for_each(|r| r.copy_from_slice(b)));
    }
    // gemm runs a column-major right-hand side with a long inner dimension at under half
    // speed (measured on Zen 4: 82–119 against 202–210 GFLOP/s for SmolLM2's and GPT-2's MLP
    // down-projections): such a weight is first copied into a row-major Wᵀ, which costs one
    // pass over W against 2·m passes of arithmetic.
    if w_stride[1] == 1 && inp >= 1024 && m >= 16 {
        let wt = transposed_copy(w, w_stride[0], out, inp);
        gemm_into((m, out, inp), &mut y, (out, 1), b.is_some(), x, (inp, 1), &wt, (out, 1));
        return y;
    }
    // rhs = Wᵀ: element (k, o) is w[o * w_rs + k * w_cs].
    gemm_into((m, out, inp), &mut y, (out, 1), b.is_some(), x, (inp, 1), w, (w_stride[1], w_stride[0]));
    y
}

/// Aᵀ `[cols, rows]` row-major, from A `[rows, cols]` with row stride `rs` (unit column stride).
fn transposed_copy<T: Elem>(a: &[T], rs: usize, rows: usize, cols: usize) -> Vec<T> {
    const TILE: usize = 32;
    let mut t = vec![T::zero(); rows * cols];
    t.par_chunks_mut(rows * TILE).enumerate().for_each(|(ci, block)| {
        let c0 = ci * TILE;
        for r0 in (0..rows).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                for (dc, dst) in block.chunks_mut(rows).enumerate() {
                    dst[r] = a[r * rs + c0 + dc];
                }
            }
        }
    });
    t
}

/// dx = dy W, and dW = dyᵀ x written into `dw` in W's memory order (row-major `[out, in]`
/// unless W is a transposed view), added to its contents if `accumulate`.
#[allow(clippy::too_many_arguments)]
fn linear_bwd<T: Elem>(
    x: &[T],
    w: &[T],
    w_stride: &[usize],
    dy: &[T],
    dw: &mut [T],
    accumulate: bool,
    (m, inp, out): (usize, usize, usize),
) -> Vec<T> {
    let mut dx = vec![T::zero(); m * inp];
    gemm_into((m, inp, out), &mut dx, (inp, 1), false, dy, (out, 1), w, (w_stride[0], w_stride[1]));
    let dst_strides = if w_stride[1] != 1 { (1, out) } else { (inp, 1) };
    gemm_into((out, inp, m), dw, dst_strides, accumulate, dy, (1, out), x, (inp, 1));
    dx
}

/// db = Σ rows of dy, added into `db` if `accumulate`.
fn bias_grad<T: Elem>(dy: &[T], db: &mut [T], accumulate: bool) {
    let out = db.len();
    let sum = dy
        .par_chunks(out * 64)
        .fold(
            || vec![T::zero(); out],
            |mut acc, c| {
                c.chunks(out).for_each(|r| axpy(&mut acc, T::one(), r));
                acc
            },
        )
        .reduce(
            || vec![T::zero(); out],
            |mut a, b| {
                axpy(&mut a, T::one(), &b);
                a
            },
        );
    if !accumulate {
        db.fill(T::zero());
    }
    axpy(db, T::one(), &sum);
}

/// Reinterprets an f32 buffer as `T`'s (the caller has checked that `T` is f32).
fn as_elem<T: Elem>(v: &mut [f32]) -> &mut [T] {
    assert_eq!(T::DTYPE, DType::F32);
    // SAFETY: T is f32 (asserted), so the cast is the identity.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut T, v.len()) }
}

/// The Linear backward: dx, and dW (db) either written into the model's gradient sink (see
/// `grads`; then `None` is returned for them) or returned as tensors.
fn linear_backward(
    op: &LinearOp,
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    grad: &Tensor,
) -> Result<(Tensor, Option<Tensor>, Option<Tensor>)> {
    let (ws, w_stride) = op.out_in(w.layout())?;
    let dims = linear_dims(x.shape(), &ws)?;
    let (x, grad) = (x.contiguous()?, grad.contiguous()?);
    let (vx, vg, sw) = (view(&x)?, view(&grad)?, strided(w));
    fn go<T: Elem>(
        (vx, sw, vg): (&View, &Strided, &View),
        (w, w_stride, b): (&Tensor, [usize; 2], Option<&Tensor>),
        dims: (usize, usize, usize),
        xs: &Shape,
    ) -> Result<(Tensor, Option<Tensor>, Option<Tensor>)> {
        let (_, inp, out) = dims;
        let (x, wd, dy) = (vx.get::<T>()?, sw.get::<T>()?, vg.get::<T>()?);
        let in_sink =
            crate::grads::write_param_grad(w, |dw, acc| linear_bwd(x, wd, &w_stride, dy, as_elem::<T>(dw), acc, dims));
        let (dx, dw) = match in_sink {
            Some(dx) => (dx, None),
            None => {
                let mut dw = vec![T::zero(); out * inp];
                let dx = linear_bwd(x, wd, &w_stride, dy, &mut dw, false, dims);
                // dW is in W's memory order; shaped as the weight argument is.
                let mut dw = if w_stride[1] != 1 {
                    Tensor::from_vec(dw, (inp, out), &Device::Cpu)?
                } else {
                    Tensor::from_vec(dw, (out, inp), &Device::Cpu)?
                };
                if dw.dims() != w.dims() {
                    dw = dw.t()?;
                }
                (dx, Some(dw))
            }
        };
        let db = match b {
            Some(b) => match crate::grads::write_param_grad(b, |db, acc| bias_grad(dy, as_elem::<T>(db), acc)) {
                Some(()) => None,
                None => {
                    let mut db = vec![T::zero(); out];
                    bias_grad(dy, &mut db, false);
                    Some(Tensor::from_vec(db, out, &Device::Cpu)?)
                }
            },
            None => None,
        };
        Ok((self::out(dx, xs)?, dw, db))
    }
    dispatch!(x.dtype(), go::<T>((&vx, &sw, &vg), (w, w_stride, b), dims, x.shape()))
}

fn linear_shape(xs: &Shape, out: usize) -> Shape {
    let mut d = xs.dims().to_vec();
    *d.last_mut().unwrap() = out;
    Shape::from(d)
}

impl CustomOp2 for LinearOp {
    fn name(&self) -> &'static str {
        "fused-linear"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (ws, w_stride) = self.out_in(l2)?;
        let dims = linear_dims(l1.shape(), &ws)?;
        let o = l2.start_offset();
        let st = match s1 {
            CpuStorage::F32(_) => {
                CpuStorage::F32(linear_fwd(cont::<f32>(s1, l1)?, &s2.as_slice::<f32>()?[o..], &w_stride, None, dims))
            }
            CpuStorage::F64(_) => {
                CpuStorage::F64(linear_fwd(cont::<f64>(s1, l1)?, &s2.as_slice::<f64>()?[o..], &w_stride, None, dims))
            }
            _ => bail!("linear: unsupported dtype"),
        };
        Ok((st, linear_shape(l1.shape(), dims.2)))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = linear_backward(self, x, w, None, grad)?;
        Ok((Some(dx), dw))
    }
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "fused-linear-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (ws, w_stride) = self.out_in(l2)?;
        let dims = linear_dims(l1.shape(), &ws)?;
        let o = l2.start_offset();
        let st = match s1 {
            CpuStorage::F32(_) => CpuStorage::F32(linear_fwd(
                cont::<f32>(s1, l1)?,
                &s2.as_slice::<f32>()?[o..],
                &w_stride,
                Some(cont(s3, l3)?),
                dims,
            )),
            CpuStorage::F64(_) => CpuStorage::F64(linear_fwd(
                cont::<f64>(s1, l1)?,
                &s2.as_slice::<f64>()?[o..],
                &w_stride,
                Some(cont(s3, l3)?),
                dims,
            )),
            _ => bail!("linear: unsupported dtype"),
        };
        Ok((st, linear_shape(l1.shape(), dims.2)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, db) = linear_backward(self, x, w, Some(b), grad)?;
        Ok((Some(dx), dw, db))
    }
}

#[cfg(test)]
mod tests {
    use super::Elem;

    #[test]
    fn fast_exp_and_tanh_match_libm() {
        let mut worst_exp = 0f64;
        let mut worst_tanh = 0f64;
        for i in 0..=2_000_000 {
            let x = -87.0 + 175.0 * i as f32 / 2_000_000.0;
            let (ours, libm) = (x.fast_exp() as f64, (x as f64).exp());
            worst_exp = worst_exp.max((ours - libm).abs() / libm);
            let y = x / 8.0;
            worst_tanh = worst_tanh.max((y.fast_tanh() as f64 - (y as f64).tanh()).abs());
        }
        assert!(worst_exp < 3.0 * f32::EPSILON as f64, "exp: worst relative error {worst_exp:e}");
        assert!(worst_tanh < 2.0 * f32::EPSILON as f64, "tanh: worst absolute error {worst_tanh:e}");
        assert_eq!((-1e4f32).fast_exp(), 0.0);
        assert_eq!((-100f32).fast_tanh(), -1.0);
        assert_eq!(100f32.fast_tanh(), 1.0);
    }
}
