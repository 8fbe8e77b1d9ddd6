//! Fused CPU kernels for the decoder's elementwise parts (RMSNorm, the SwiGLU product and RoPE),
//! each with its own backward, and a projection whose backward yields `dW` in the weight's layout.
//!
//! # Design
//! *Constraints.* On the CPU backend (burn's Flex) every elementwise tensor op is a separate,
//! single-threaded pass that allocates its output, and autodiff records each one and runs its
//! backward as more such passes. The decoder's RMSNorm is seven ops, SiLU-times-up six and RoPE
//! five (two slices and a `cat` that copies), so a training step spent about as long in these
//! passes and their strided copies as in its matrix products (BENCHMARKS.md, issue 2).
//! *Solution.* One kernel per function, forward and backward each a single multi-threaded
//! (rayon) pass over contiguous rows. The model stays generic over the backend: each function
//! here checks at run time whether its tensors are [`Cpu`] or [`CpuAutodiff`] tensors (a
//! `dyn Any` downcast, no `unsafe`) and otherwise computes the same formula with burn's ops, which
//! is also the reference the tests compare the kernels with. RoPE writes its output directly in
//! the heads-first layout attention reads, so the transpose costs no extra copy.
//! *Pros:* the CUDA backend and the model's API are untouched; the sampler and the scorer still run
//! one forward (the kernels serve both). *Cons:* a kernel is a second statement of each formula,
//! held to the composed one by tests (values and gradients).

use std::any::Any;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::prelude::*;
use burn::tensor::ops::FloatTensorOps;
use burn::tensor::{DType, TensorPrimitive};
use rayon::prelude::*;

use crate::{Cpu, CpuAutodiff};

/// A [`CpuAutodiff`] float primitive: the Flex tensor and its graph node (burn does not export the
/// type's name, only its fields, for backend extensions).
type AutodiffTensor = burn::tensor::ops::FloatTensor<CpuAutodiff>;

/// Rows handed to one rayon task: big enough that scheduling is noise next to the work.
const MIN_ROWS_PER_TASK: usize = 16;

/// `x * rsqrt(mean(x^2, last) + eps) * w` over the last axis of `x` `[batch, seq, dim]`.
pub(crate) fn rms_norm<B: Backend>(x: Tensor<B, 3>, w: Tensor<B, 1>, eps: f64) -> Tensor<B, 3> {
    if x.dtype() != DType::F32 || w.dtype() != DType::F32 || w.dims()[0] == 0 {
        return rms_norm_reference(x, w, eps);
    }
    let eps = eps as f32;
    let x = match downcast::<B, CpuAutodiff, 3>(x) {
        Ok(x) => return upcast(wrap_ad(rms_norm_ad(ad(x), ad(same_backend(w)), eps))),
        Err(x) => x,
    };
    match downcast::<B, Cpu, 3>(x) {
        Ok(x) => {
            let (x, w) = (flex_of(x), flex_of(same_backend::<B, Cpu, 1>(w)));
            let (y, _) = rms_norm_forward(slice(&x), slice(&w), eps);
            upcast(wrap_flex(flex_like(y, &x)))
        }
        Err(x) => rms_norm_reference(x, w, eps as f64),
    }
}

/// `silu(gate) * up`, elementwise, for the SwiGLU MLP.
pub(crate) fn swiglu<B: Backend>(gate: Tensor<B, 3>, up: Tensor<B, 3>) -> Tensor<B, 3> {
    if gate.dtype() != DType::F32 || up.dtype() != DType::F32 || gate.dims() != up.dims() {
        return swiglu_reference(gate, up);
    }
    let gate = match downcast::<B, CpuAutodiff, 3>(gate) {
        Ok(g) => return upcast(wrap_ad(swiglu_ad(ad(g), ad(same_backend(up))))),
        Err(g) => g,
    };
    match downcast::<B, Cpu, 3>(gate) {
        Ok(g) => {
            let (g, u) = (flex_of(g), flex_of(same_backend::<B, Cpu, 3>(up)));
            upcast(wrap_flex(flex_like(swiglu_forward(slice(&g), slice(&u)), &g)))
        }
        Err(g) => swiglu_reference(g, up),
    }
}

/// `x W^T` for `x` `[rows, in]` and `W` `[out, in]` (the checkpoint layout). On [`CpuAutodiff`]
/// the backward computes `dW = dy^T x` directly in `W`'s layout, where burn's matmul of the
/// transposed view yields `dW` as a transposed view that the gradient accumulator then copies
/// element by element, once per micro-batch (a fifth of a step cut in small micro-batches).
pub(crate) fn linear<B: Backend>(x: Tensor<B, 2>, w: Tensor<B, 2>) -> Tensor<B, 2> {
    if x.dtype() != DType::F32 || w.dtype() != DType::F32 {
        return x.matmul(w.transpose());
    }
    match downcast::<B, CpuAutodiff, 2>(x) {
        Ok(x) => upcast(wrap_ad(linear_ad(ad(x), ad(same_backend(w))))),
        Err(x) => x.matmul(w.transpose()),
    }
}

/// HF `apply_rotary_pos_emb` on `x` `[batch, seq, heads, head_dim]`, returned heads-first
/// `[batch, heads, seq, head_dim]`; `cos` and `sin` as [`crate::ForwardCtx`] holds them
/// (`[batch, seq, 1, head_dim]`, the sign of `rotate_half` folded into `sin`).
pub(crate) fn rope<B: Backend>(x: Tensor<B, 4>, cos: &Tensor<B, 4>, sin: &Tensor<B, 4>) -> Tensor<B, 4> {
    let [batch, seq, heads, head_dim] = x.dims();
    let table = [batch, seq, 1, head_dim];
    let fits = [&x, cos, sin].iter().all(|t| t.dtype() == DType::F32)
        && cos.dims() == table
        && sin.dims() == table
        && head_dim % 2 == 0
        && x.dims().iter().all(|&n| n > 0);
    if !fits {
        return rope_reference(x, cos, sin);
    }
    let shape = RopeShape { batch, seq, heads, head_dim };
    let x = match downcast::<B, CpuAutodiff, 4>(x) {
        Ok(x) => {
            // The tables are constants: their autodiff wrapper is dropped.
            let cos = contiguous(ad(same_backend(cos.clone())).primitive);
            let sin = contiguous(ad(same_backend(sin.clone())).primitive);
            return upcast(wrap_ad(rope_ad(ad(x), cos, sin, shape)));
        }
        Err(x) => x,
    };
    match downcast::<B, Cpu, 4>(x) {
        Ok(x) => {
            let x = flex_of(x);
            let cos = flex_of(same_backend::<B, Cpu, 4>(cos.clone()));
            let sin = flex_of(same_backend::<B, Cpu, 4>(sin.clone()));
            let y = rope_forward(slice(&x), slice(&cos), slice(&sin), shape, false);
            upcast(wrap_flex(flex(y, shape.heads_first())))
        }
        Err(x) => rope_reference(x, cos, sin),
    }
}

// ---------------------------------------------------------------------------------------------
// Reference formulas (any backend), which the kernels are tested against.

fn rms_norm_reference<B: Backend>(x: Tensor<B, 3>, w: Tensor<B, 1>, eps: f64) -> Tensor<B, 3> {
    let var = x.clone().powi_scalar(2).mean_dim(2);
    let dim = w.dims()[0];
    x * (var + eps).sqrt().recip() * w.reshape([1, 1, dim])
}

/// SiLU as `x / (1 + e^-x)` with `e^-x` clamped at `e^80`, so that the autodiff quotient rule
/// never divides by an overflowed square (the clamped region's value and gradient are below f32
/// resolution anyway).
fn swiglu_reference<B: Backend>(gate: Tensor<B, 3>, up: Tensor<B, 3>) -> Tensor<B, 3> {
    gate.clone() / (gate.neg().clamp_max(80.0).exp() + 1.0) * up
}

/// `x * cos + rotate_half(x) * sin` with `rotate_half(x) = [-x2, x1]`, computed as
/// `[x2, x1] * [-sin, sin]`, then heads-first.
fn rope_reference<B: Backend>(x: Tensor<B, 4>, cos: &Tensor<B, 4>, sin: &Tensor<B, 4>) -> Tensor<B, 4> {
    let [b, s, h, d] = x.dims();
    let half = d / 2;
    let x1 = x.clone().slice([0..b, 0..s, 0..h, 0..half]);
    let x2 = x.clone().slice([0..b, 0..s, 0..h, half..d]);
    (x * cos.clone() + Tensor::cat(vec![x2, x1], 3) * sin.clone()).swap_dims(1, 2)
}

// ---------------------------------------------------------------------------------------------
// Kernels on host slices. Each is one pass over contiguous rows, split across rayon tasks.

/// `(y, r)` with `r[i] = rsqrt(mean(x[i]^2) + eps)` per row (the backward's saved state).
fn rms_norm_forward(x: &[f32], w: &[f32], eps: f32) -> (Vec<f32>, Vec<f32>) {
    let dim = w.len();
    let mut y = vec![0.0f32; x.len()];
    let mut r = vec![0.0f32; x.len() / dim];
    let chunk = MIN_ROWS_PER_TASK * dim;
    y.par_chunks_mut(chunk).zip(x.par_chunks(chunk)).zip(r.par_chunks_mut(MIN_ROWS_PER_TASK)).for_each(
        |((yc, xc), rc)| {
            for ((yr, xr), ri) in yc.chunks_mut(dim).zip(xc.chunks(dim)).zip(rc) {
                let ss: f32 = xr.iter().map(|v| v * v).sum();
                *ri = 1.0 / (ss / dim as f32 + eps).sqrt();
                for ((yv, xv), wv) in yr.iter_mut().zip(xr).zip(w) {
                    *yv = xv * *ri * wv;
                }
            }
        },
    );
    (y, r)
}

/// Gradients `(dx, dw)` of [`rms_norm_forward`] given `dy` and the saved `r`:
/// `dx = r (w dy) - x r^3 / n * sum(w dy x)`, `dw = sum_rows(dy x r)`.
fn rms_norm_backward(x: &[f32], w: &[f32], r: &[f32], dy: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let dim = w.len();
    let chunk = MIN_ROWS_PER_TASK * dim;
    let mut dx = vec![0.0f32; x.len()];
    let dw = dx
        .par_chunks_mut(chunk)
        .zip(x.par_chunks(chunk))
        .zip(dy.par_chunks(chunk))
        .zip(r.par_chunks(MIN_ROWS_PER_TASK))
        .map(|(((dxc, xc), dyc), rc)| {
            let mut dw = vec![0.0f32; dim];
            for (((dxr, xr), dyr), &ri) in
                dxc.chunks_mut(dim).zip(xc.chunks(dim)).zip(dyc.chunks(dim)).zip(rc)
            {
                let mut dot = 0.0f32;
                for (((&xv, &dyv), &wv), dwv) in xr.iter().zip(dyr).zip(w).zip(dw.iter_mut()) {
                    dot += wv * dyv * xv;
                    *dwv += dyv * xv * ri;
                }
                let k = ri * ri * ri * dot / dim as f32;
                for (((dxv, &xv), &dyv), &wv) in dxr.iter_mut().zip(xr).zip(dyr).zip(w) {
                    *dxv = ri * wv * dyv - xv * k;
                }
            }
            dw
        })
        .collect::<Vec<_>>();
    // Summed in chunk order, not by rayon's reduction tree (which depends on work stealing): the
    // gradient is then the same bit for bit on every run.
    let dw = dw.into_iter().reduce(|mut a, b| {
        a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
        a
    });
    (dx, dw.unwrap_or_else(|| vec![0.0f32; dim]))
}

/// `1 / (1 + e^-g)`, with `e^-g` clamped as in [`swiglu_reference`].
#[inline]
fn sigmoid(g: f32) -> f32 {
    1.0 / (1.0 + (-g).min(80.0).exp())
}

/// Elements handed to one rayon task by the elementwise kernels.
const ELEMS_PER_TASK: usize = 16 * 1024;

fn swiglu_forward(g: &[f32], u: &[f32]) -> Vec<f32> {
    let mut y = vec![0.0f32; g.len()];
    y.par_chunks_mut(ELEMS_PER_TASK)
        .zip(g.par_chunks(ELEMS_PER_TASK))
        .zip(u.par_chunks(ELEMS_PER_TASK))
        .for_each(|((yc, gc), uc)| {
            for ((y, &g), &u) in yc.iter_mut().zip(gc).zip(uc) {
                *y = g * sigmoid(g) * u;
            }
        });
    y
}

/// `(dg, du)`: `du = dy silu(g)`, `dg = dy u s (1 + g (1 - s))` with `s = sigmoid(g)`.
fn swiglu_backward(g: &[f32], u: &[f32], dy: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let mut dg = vec![0.0f32; g.len()];
    let mut du = vec![0.0f32; g.len()];
    dg.par_chunks_mut(ELEMS_PER_TASK)
        .zip(du.par_chunks_mut(ELEMS_PER_TASK))
        .zip(g.par_chunks(ELEMS_PER_TASK))
        .zip(u.par_chunks(ELEMS_PER_TASK))
        .zip(dy.par_chunks(ELEMS_PER_TASK))
        .for_each(|((((dgc, duc), gc), uc), dyc)| {
            for ((((dg, du), &g), &u), &dy) in dgc.iter_mut().zip(duc).zip(gc).zip(uc).zip(dyc) {
                let s = sigmoid(g);
                *du = dy * g * s;
                *dg = dy * u * s * (1.0 + g * (1.0 - s));
            }
        });
    (dg, du)
}

/// The dimensions RoPE works on.
#[derive(Debug, Clone, Copy)]
struct RopeShape {
    batch: usize,
    seq: usize,
    heads: usize,
    head_dim: usize,
}

impl RopeShape {
    fn seq_first(&self) -> [usize; 4] {
        [self.batch, self.seq, self.heads, self.head_dim]
    }

    fn heads_first(&self) -> [usize; 4] {
        [self.batch, self.heads, self.seq, self.head_dim]
    }
}

/// Forward (`inverse == false`): `x` seq-first in, heads-first out. Inverse (the backward, since
/// the map is linear with the transposed rotation): `dy` heads-first in, `dx` seq-first out,
/// `dx = dy cos + rot^T(dy sin)` with `rot^T(z) = [z2, z1]`, which is `rotate` with the table's
/// sign moved to the other half.
fn rope_forward(x: &[f32], cos: &[f32], sin: &[f32], shape: RopeShape, inverse: bool) -> Vec<f32> {
    let RopeShape { batch, seq, heads, head_dim: d } = shape;
    let half = d / 2;
    let mut out = vec![0.0f32; x.len()];
    // One task per (batch, head): it writes one contiguous [seq, d] block of the heads-first
    // tensor (forward) or reads one (inverse).
    let block = seq * d;
    let compute = |bh: usize, dst: &mut dyn FnMut(usize, usize, f32)| {
        let (b, h) = (bh / heads, bh % heads);
        for s in 0..seq {
            let t = (b * seq + s) * d;
            let src = if inverse { bh * block + s * d } else { ((b * seq + s) * heads + h) * d };
            let xr = &x[src..src + d];
            let (c, sn) = (&cos[t..t + d], &sin[t..t + d]);
            for i in 0..d {
                let j = if i < half { i + half } else { i - half };
                // Forward: y_i = x_i c_i + x_j s_i. Inverse: dx_i = dy_i c_i + dy_j s_j.
                let v = xr[i] * c[i] + xr[j] * if inverse { sn[j] } else { sn[i] };
                dst(s, i, v);
            }
        }
    };
    if inverse {
        // Scatter into the seq-first layout: rows of different (b, h) interleave, so each task
        // fills a private block and the blocks are written out afterwards.
        let blocks: Vec<Vec<f32>> = (0..batch * heads)
            .into_par_iter()
            .map(|bh| {
                let mut v = vec![0.0f32; block];
                compute(bh, &mut |s, i, val| v[s * d + i] = val);
                v
            })
            .collect();
        for (bh, v) in blocks.iter().enumerate() {
            let (b, h) = (bh / heads, bh % heads);
            for s in 0..seq {
                let dst = ((b * seq + s) * heads + h) * d;
                out[dst..dst + d].copy_from_slice(&v[s * d..s * d + d]);
            }
        }
    } else {
        out.par_chunks_mut(block)
            .enumerate()
            .for_each(|(bh, o)| compute(bh, &mut |s, i, val| o[s * d + i] = val));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Autodiff nodes.

#[derive(Debug)]
struct RmsNormBackward;

impl Backward<Cpu, 2> for RmsNormBackward {
    /// `x`, `w` and the per-row `r` of the forward.
    type State = (FlexTensor, FlexTensor, Vec<f32>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_w] = ops.parents;
        let dy = contiguous(grads.consume::<Cpu>(&ops.node));
        let (x, w, r) = ops.state;
        let (dx, dw) = rms_norm_backward(slice(&x), slice(&w), &r, slice(&dy));
        if let Some(node) = node_x {
            grads.register::<Cpu>(node.id, flex_like(dx, &x));
        }
        if let Some(node) = node_w {
            grads.register::<Cpu>(node.id, flex_like(dw, &w));
        }
    }
}

fn rms_norm_ad(x: AutodiffTensor, w: AutodiffTensor, eps: f32) -> AutodiffTensor {
    let prep = RmsNormBackward.prepare::<NoCheckpointing>([x.node.clone(), w.node.clone()]).compute_bound();
    let (xp, wp) = (contiguous(x.primitive), contiguous(w.primitive));
    let (y, r) = rms_norm_forward(slice(&xp), slice(&wp), eps);
    let y = flex_like(y, &xp);
    match prep.stateful() {
        OpsKind::Tracked(prep) => prep.finish((xp, wp, r), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    }
}

#[derive(Debug)]
struct SwigluBackward;

impl Backward<Cpu, 2> for SwigluBackward {
    /// `gate` and `up`.
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_g, node_u] = ops.parents;
        let dy = contiguous(grads.consume::<Cpu>(&ops.node));
        let (g, u) = ops.state;
        let (dg, du) = swiglu_backward(slice(&g), slice(&u), slice(&dy));
        if let Some(node) = node_g {
            grads.register::<Cpu>(node.id, flex_like(dg, &g));
        }
        if let Some(node) = node_u {
            grads.register::<Cpu>(node.id, flex_like(du, &u));
        }
    }
}

fn swiglu_ad(g: AutodiffTensor, u: AutodiffTensor) -> AutodiffTensor {
    let prep = SwigluBackward.prepare::<NoCheckpointing>([g.node.clone(), u.node.clone()]).compute_bound();
    let (gp, up) = (contiguous(g.primitive), contiguous(u.primitive));
    let y = flex_like(swiglu_forward(slice(&gp), slice(&up)), &gp);
    match prep.stateful() {
        OpsKind::Tracked(prep) => prep.finish((gp, up), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    }
}

#[derive(Debug)]
struct LinearBackward;

impl Backward<Cpu, 2> for LinearBackward {
    /// `x` and `W`.
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_w] = ops.parents;
        let dy = grads.consume::<Cpu>(&ops.node);
        let (x, w) = ops.state;
        if let Some(node) = node_w {
            grads.register::<Cpu>(node.id, Cpu::float_matmul(Cpu::float_transpose(dy.clone()), x));
        }
        if let Some(node) = node_x {
            grads.register::<Cpu>(node.id, Cpu::float_matmul(dy, w));
        }
    }
}

fn linear_ad(x: AutodiffTensor, w: AutodiffTensor) -> AutodiffTensor {
    let prep = LinearBackward.prepare::<NoCheckpointing>([x.node.clone(), w.node.clone()]).compute_bound();
    // The strided GEMM reads the transposed view of W in place.
    let y = Cpu::float_matmul(x.primitive.clone(), Cpu::float_transpose(w.primitive.clone()));
    match prep.stateful() {
        OpsKind::Tracked(prep) => prep.finish((x.primitive, w.primitive), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    }
}

#[derive(Debug)]
struct RopeBackward;

impl Backward<Cpu, 1> for RopeBackward {
    /// The `cos` and `sin` tables (constants) and the shape.
    type State = (FlexTensor, FlexTensor, RopeShape);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let dy = contiguous(grads.consume::<Cpu>(&ops.node));
        let (cos, sin, shape) = ops.state;
        if let Some(node) = node_x {
            let dx = rope_forward(slice(&dy), slice(&cos), slice(&sin), shape, true);
            grads.register::<Cpu>(node.id, flex(dx, shape.seq_first()));
        }
    }
}

fn rope_ad(x: AutodiffTensor, cos: FlexTensor, sin: FlexTensor, shape: RopeShape) -> AutodiffTensor {
    let prep = RopeBackward.prepare::<NoCheckpointing>([x.node.clone()]).compute_bound();
    let xp = contiguous(x.primitive);
    let y = flex(rope_forward(slice(&xp), slice(&cos), slice(&sin), shape, false), shape.heads_first());
    match prep.stateful() {
        OpsKind::Tracked(prep) => prep.finish((cos, sin, shape), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    }
}

// ---------------------------------------------------------------------------------------------
// Moving between the generic tensor, the concrete backends and host slices.

/// `Ok` with the tensor as a `T` tensor when `B` is `T`, else `Err` with it unchanged.
fn downcast<B: Backend, T: Backend, const D: usize>(x: Tensor<B, D>) -> Result<Tensor<T, D>, Tensor<B, D>> {
    let boxed: Box<dyn Any> = Box::new(x);
    match boxed.downcast::<Tensor<T, D>>() {
        Ok(t) => Ok(*t),
        Err(boxed) => {
            Err(*boxed.downcast::<Tensor<B, D>>().expect("the box holds the Tensor<B, D> put in it"))
        }
    }
}

/// A second argument of a kernel whose first argument was found to be a `T` tensor: `B` is `T`.
fn same_backend<B: Backend, T: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<T, D> {
    let boxed: Box<dyn Any> = Box::new(x);
    *boxed.downcast::<Tensor<T, D>>().expect("called only once B is known to be T")
}

/// A kernel's result back as a `B` tensor: `T` is `B`.
fn upcast<T: Backend, B: Backend, const D: usize>(x: Tensor<T, D>) -> Tensor<B, D> {
    same_backend(x)
}

fn ad<const D: usize>(x: Tensor<CpuAutodiff, D>) -> AutodiffTensor {
    x.into_primitive().tensor()
}

fn wrap_ad<const D: usize>(x: AutodiffTensor) -> Tensor<CpuAutodiff, D> {
    Tensor::from_primitive(TensorPrimitive::Float(x))
}

/// The contiguous primitive of a CPU tensor.
fn flex_of<const D: usize>(x: Tensor<Cpu, D>) -> FlexTensor {
    contiguous(x.into_primitive().tensor())
}

fn wrap_flex<const D: usize>(x: FlexTensor) -> Tensor<Cpu, D> {
    Tensor::from_primitive(TensorPrimitive::Float(x))
}

/// Kernels read plain row-major slices: a strided view is copied (a no-op when already
/// contiguous).
fn contiguous(t: FlexTensor) -> FlexTensor {
    t.to_contiguous()
}

/// The elements of a contiguous f32 tensor.
fn slice(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("kernels take contiguous f32 tensors (made so by their callers)")
}

fn flex(v: Vec<f32>, shape: [usize; 4]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(v, shape))
}

fn flex_like(v: Vec<f32>, like: &FlexTensor) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(v, like.layout().shape().clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in about [-2, 2] (a splitmix-style hash), so no test depends on a seed.
    fn values(n: usize, salt: u64) -> Vec<f32> {
        (0..n as u64)
            .map(|i| {
                let mut z = (i + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ salt;
                z = (z ^ (z >> 31)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                ((z >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
            })
            .collect()
    }

    fn tensor<B: Backend, const D: usize>(shape: [usize; D], salt: u64) -> Tensor<B, D> {
        let n = shape.iter().product();
        Tensor::from_data(TensorData::new(values(n, salt), shape), &Default::default())
    }

    fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
        t.into_data().convert::<f32>().into_vec::<f32>().expect("f32 data")
    }

    fn assert_close(what: &str, got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len(), "{what}: lengths");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= 2e-5 * (1.0 + w.abs()), "{what}[{i}]: kernel {g}, reference {w}");
        }
    }

    /// Output and gradients of `f` against `reference` on [`CpuAutodiff`] tensors, the output on
    /// [`Cpu`] too; the upstream gradient is a fixed random tensor so every output element counts.
    fn check<const D: usize, const E: usize, const O: usize>(
        what: &str,
        a: [usize; D],
        b: [usize; E],
        kernel: impl Fn(Tensor<CpuAutodiff, D>, Tensor<CpuAutodiff, E>) -> Tensor<CpuAutodiff, O>,
        reference: impl Fn(Tensor<CpuAutodiff, D>, Tensor<CpuAutodiff, E>) -> Tensor<CpuAutodiff, O>,
        plain: impl Fn(Tensor<Cpu, D>, Tensor<Cpu, E>) -> Tensor<Cpu, O>,
        b_has_grad: bool,
    ) {
        let mut out = Vec::new();
        for f in [&kernel as &dyn Fn(_, _) -> _, &reference] {
            let x = tensor::<CpuAutodiff, D>(a, 1).require_grad();
            let y = tensor::<CpuAutodiff, E>(b, 2);
            let y = if b_has_grad { y.require_grad() } else { y };
            let z = f(x.clone(), y.clone());
            let weights = tensor::<CpuAutodiff, O>(z.dims(), 3);
            let grads = (z.clone() * weights).sum().backward();
            let gy = if b_has_grad { host(y.grad(&grads).expect("b's gradient")) } else { vec![] };
            out.push((host(z), host(x.grad(&grads).expect("a's gradient")), gy));
        }
        let (k, r) = (&out[0], &out[1]);
        assert_close(&format!("{what} value"), &k.0, &r.0);
        assert_close(&format!("{what} grad a"), &k.1, &r.1);
        assert_close(&format!("{what} grad b"), &k.2, &r.2);
        let z = plain(tensor::<Cpu, D>(a, 1), tensor::<Cpu, E>(b, 2));
        assert_close(&format!("{what} value without autodiff"), &host(z), &r.0);
    }

    #[test]
    fn rms_norm_kernel_matches_the_formula_and_its_gradients() {
        // 37 rows: not a multiple of the rows per task.
        check(
            "rms_norm",
            [37, 1, 24],
            [24],
            |x, w| rms_norm(x, w, 1e-5),
            |x, w| rms_norm_reference(x, w, 1e-5),
            |x, w| rms_norm(x, w, 1e-5),
            true,
        );
    }

    #[test]
    fn swiglu_kernel_matches_the_formula_and_its_gradients() {
        check("swiglu", [3, 5, 4000], [3, 5, 4000], swiglu, swiglu_reference, swiglu, true);
    }

    #[test]
    fn swiglu_is_finite_with_its_gradient_at_extreme_inputs() {
        let xs = [-200.0f32, -90.0, -50.0, -3.0, -0.5, 0.0, 0.5, 3.0, 50.0, 200.0];
        let g = Tensor::<CpuAutodiff, 3>::from_data(
            TensorData::new(xs.to_vec(), [1, 1, xs.len()]),
            &Default::default(),
        )
        .require_grad();
        let up = Tensor::<CpuAutodiff, 3>::ones([1, 1, xs.len()], &Default::default());
        let y = swiglu(g.clone(), up);
        let grads = y.clone().sum().backward();
        let (got, grad) = (host(y), host(g.grad(&grads).expect("gradient")));
        for ((&x, &y), &dg) in xs.iter().zip(&got).zip(&grad) {
            let xd = x as f64;
            let s = 1.0 / (1.0 + (-xd).exp());
            assert!((y as f64 - xd * s).abs() <= 1e-6 * (1.0 + xd.abs()), "silu({x}) = {y}");
            let want = s * (1.0 + xd * (1.0 - s));
            assert!(dg.is_finite() && (dg as f64 - want).abs() < 1e-5, "silu'({x}) = {dg}, expected {want}");
        }
    }

    #[test]
    fn linear_matches_the_matmul_and_its_gradients() {
        check("linear", [37, 24], [40, 24], linear, |x, w| x.matmul(w.transpose()), linear, true);
    }

    #[test]
    fn rope_kernel_matches_the_formula_and_its_gradient() {
        let (b, s, h, d) = (2, 5, 3, 8);
        let tables = |salt| tensor::<CpuAutodiff, 4>([b, s, 1, d], salt);
        let (cos, sin) = (tables(7), tables(8));
        let (cos_p, sin_p) = (tensor::<Cpu, 4>([b, s, 1, d], 7), tensor::<Cpu, 4>([b, s, 1, d], 8));
        check(
            "rope",
            [b, s, h, d],
            [1],
            |x, _| rope(x, &cos, &sin),
            |x, _| rope_reference(x, &cos, &sin),
            |x, _| rope(x, &cos_p, &sin_p),
            false,
        );
    }
}
