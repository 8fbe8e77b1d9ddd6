//! The optimizer: AdamW with decoupled weight decay, global-norm gradient clipping, warmup with a
//! constant or cosine schedule, and gradient accumulation over micro-batches.
//!
//! # Design
//! *Constraints.* Resume must continue bit-for-bit (the optimizer state is part of a checkpoint and
//! must load into a model rebuilt from its HF directory, whose burn `ParamId`s are new), clipping
//! must use the norm of *all* gradients together (burn's built-in clipping is per parameter), and a
//! batch larger than memory must still train. *Solution.* State and gradients are keyed by the
//! parameter's module path (`layers.3.q_proj`), which depends only on the architecture; gradients
//! of each micro-batch are added into a [`GradAccumulator`] by a module visitor; [`AdamW::step`]
//! computes the global norm once, scales, and updates every parameter through a module mapper on
//! the inner (non-autodiff) backend, as burn's own optimizers do. *Cons:* the state is one
//! `(m, v)` pair of flat tensors per parameter (the same memory as any Adam).
//!
//! AdamW (Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019), exactly as
//! `torch.optim.AdamW` computes it, at step `t` (from 1) with learning rate `lr`:
//!
//! ```text
//! p <- p * (1 - lr * weight_decay)
//! m <- beta1 * m + (1 - beta1) * g
//! v <- beta2 * v + (1 - beta2) * g^2
//! p <- p - lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)
//! ```
//!
//! Global-norm clipping (Pascanu et al., 2013; `torch.nn.utils.clip_grad_norm_`): with
//! `n = sqrt(sum over every gradient element of g^2)`, every gradient is multiplied by
//! `min(1, max_norm / (n + 1e-6))`.
//!
//! A gradient whose global norm is not finite (a NaN or an infinity anywhere) is not applied:
//! clipping cannot stop it (`NaN.min(1.0)` is 1.0), and one such update would put NaN into every
//! weight and into Adam's moments for good. [`AdamW::step`] leaves the module, the moments and the
//! step count as they were and says so in its report.
//!
//! Checked against `torch.optim.AdamW` and `clip_grad_norm_` in `tests/optim.rs`
//! (fixture from `tests/fixtures/make_optim.py`).

use std::collections::BTreeMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

use crate::error::{LearnerError, Result};

/// AdamW's settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdamWConfig {
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Added to the denominator.
    pub eps: f64,
    /// Decoupled weight decay (multiplied by the learning rate).
    pub weight_decay: f64,
    /// Global gradient-norm bound; 0 turns clipping off.
    pub max_grad_norm: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, max_grad_norm: 1.0 }
    }
}

/// What happens after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decay {
    /// Stay at the peak.
    Constant,
    /// Half a cosine from the peak to `min_lr` at `total_steps`.
    Cosine,
}

/// The learning-rate schedule: linear warmup, then constant or cosine. Keys left out take the
/// values of [`Schedule::default`] (constant 1e-6, no warmup).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Schedule {
    /// Peak learning rate.
    pub lr: f64,
    /// Steps of linear warmup (step `s`, from 0, uses `lr * (s + 1) / warmup_steps`).
    pub warmup_steps: u64,
    /// After warmup.
    pub decay: Decay,
    /// Where the cosine ends.
    pub total_steps: u64,
    /// The floor of the cosine.
    pub min_lr: f64,
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule::constant(1e-6)
    }
}

impl Schedule {
    /// A constant rate with no warmup.
    pub fn constant(lr: f64) -> Self {
        Schedule { lr, warmup_steps: 0, decay: Decay::Constant, total_steps: 0, min_lr: 0.0 }
    }

    /// The rate of learner step (policy version) `step`, counted from 0; every epoch of a batch
    /// uses its batch's rate.
    pub fn lr_at(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        match self.decay {
            Decay::Constant => self.lr,
            Decay::Cosine => {
                let span = self.total_steps.saturating_sub(self.warmup_steps).max(1);
                let progress = ((step - self.warmup_steps) as f64 / span as f64).min(1.0);
                self.min_lr + 0.5 * (self.lr - self.min_lr) * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        }
    }

    /// Checks the settings.
    pub fn check(&self) -> Result<()> {
        let bad = |name, reason: String| Err(LearnerError::InvalidConfig { name, reason });
        if !(self.lr.is_finite() && self.lr >= 0.0) {
            return bad("optimizer.lr", format!("{} must be finite and >= 0", self.lr));
        }
        if !(self.min_lr.is_finite() && self.min_lr >= 0.0 && self.min_lr <= self.lr) {
            return bad("optimizer.min_lr", format!("{} must be in [0, lr = {}]", self.min_lr, self.lr));
        }
        if self.decay == Decay::Cosine && self.total_steps <= self.warmup_steps {
            return bad(
                "optimizer.total_steps",
                format!(
                    "a cosine schedule needs total_steps ({}) > warmup_steps ({})",
                    self.total_steps, self.warmup_steps
                ),
            );
        }
        Ok(())
    }
}

impl AdamWConfig {
    /// Checks the settings.
    pub fn check(&self) -> Result<()> {
        let bad = |name, reason: String| Err(LearnerError::InvalidConfig { name, reason });
        for (name, b) in [("optimizer.beta1", self.beta1), ("optimizer.beta2", self.beta2)] {
            if !(0.0..1.0).contains(&b) {
                return bad(name, format!("{b} must be in [0, 1)"));
            }
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return bad("optimizer.eps", format!("{} must be finite and > 0", self.eps));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad("optimizer.weight_decay", format!("{} must be finite and >= 0", self.weight_decay));
        }
        if !(self.max_grad_norm.is_finite() && self.max_grad_norm >= 0.0) {
            return bad(
                "optimizer.max_grad_norm",
                format!("{} must be finite and >= 0 (0: no clipping)", self.max_grad_norm),
            );
        }
        Ok(())
    }
}

/// The module path of every float parameter, in visit order.
struct Paths {
    path: Vec<String>,
    out: Vec<String>,
}

impl<B: Backend> ModuleVisitor<B> for Paths {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, _: &Param<Tensor<B, D>>) {
        self.out.push(self.path.join("."));
    }
}

/// The module path of every float parameter of `module`, in visit order (the keys of gradients
/// and optimizer state).
pub fn param_paths<B: Backend, M: Module<B>>(module: &M) -> Vec<String> {
    let mut v = Paths { path: Vec::new(), out: Vec::new() };
    module.visit(&mut v);
    v.out
}

/// The path of the first parameter of `module` holding a NaN or an infinity (`layers.3.q_proj`),
/// if any: what the learner checks before it publishes or checkpoints weights.
pub fn first_non_finite<B: Backend, M: Module<B>>(module: &M) -> Option<String> {
    let mut check = FindNonFinite { path: Vec::new(), found: None };
    module.visit(&mut check);
    check.found
}

struct FindNonFinite {
    path: Vec<String>,
    found: Option<String>,
}

impl<B: Backend> ModuleVisitor<B> for FindNonFinite {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if self.found.is_none() && !param.val().is_finite().all().into_scalar().to_bool() {
            self.found = Some(self.path.join("."));
        }
    }
}

/// Gradients summed over micro-batches, flat, keyed by parameter path, on the inner backend.
#[derive(Debug)]
pub struct GradAccumulator<B: AutodiffBackend> {
    grads: BTreeMap<String, Tensor<B::InnerBackend, 1>>,
    /// Micro-batches added.
    pub micro_batches: usize,
}

impl<B: AutodiffBackend> Default for GradAccumulator<B> {
    fn default() -> Self {
        GradAccumulator { grads: BTreeMap::new(), micro_batches: 0 }
    }
}

struct Collect<'a, B: AutodiffBackend> {
    grads: &'a B::Gradients,
    acc: &'a mut BTreeMap<String, Tensor<B::InnerBackend, 1>>,
    path: Vec<String>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Collect<'_, B> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let Some(g) = param.val().grad(self.grads) else { return };
        let n = g.shape().num_elements();
        let g = g.reshape([n]);
        let key = self.path.join(".");
        let sum = match self.acc.remove(&key) {
            Some(prev) => prev + g,
            None => g,
        };
        self.acc.insert(key, sum);
    }
}

impl<B: AutodiffBackend> GradAccumulator<B> {
    /// Adds the gradients of one micro-batch's backward pass.
    pub fn add<M: Module<B>>(&mut self, module: &M, grads: &B::Gradients) {
        let mut c = Collect::<B> { grads, acc: &mut self.grads, path: Vec::new() };
        module.visit(&mut c);
        self.micro_batches += 1;
    }

    /// The global L2 norm of the accumulated gradients.
    pub fn global_norm(&self) -> f64 {
        let mut total: Option<Tensor<B::InnerBackend, 1>> = None;
        for g in self.grads.values() {
            let sq = g.clone().powi_scalar(2).sum();
            total = Some(match total {
                Some(t) => t + sq,
                None => sq,
            });
        }
        total.map_or(0.0, |t| f64::from(t.into_scalar().elem::<f32>()).sqrt())
    }

    /// The accumulated gradient of parameter `path`, flat.
    pub fn get(&self, path: &str) -> Option<&Tensor<B::InnerBackend, 1>> {
        self.grads.get(path)
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.grads.is_empty()
    }

    /// Sums the gradients, and `extra` (values every rank adds up alongside), over the ranks of
    /// `collective`: one all-reduce of every gradient flattened in path order. Afterwards every
    /// rank holds the gradient a single learner would have summed over all ranks' micro-batches.
    /// Returns the summed `extra`.
    pub fn all_reduce_sum(
        &mut self,
        collective: &crate::Collective<B::InnerBackend>,
        extra: &[f32],
    ) -> crate::Result<Vec<f32>> {
        if self.grads.is_empty() {
            return Err(crate::LearnerError::Collective(format!(
                "rank {} has no gradients to sum: every rank needs at least one group per step",
                collective.rank()
            )));
        }
        let lens: Vec<(String, usize)> =
            self.grads.iter().map(|(k, g)| (k.clone(), g.shape().num_elements())).collect();
        let device = self.grads.values().next().map(|g| g.device()).unwrap_or_default();
        let mut parts: Vec<Tensor<B::InnerBackend, 1>> =
            std::mem::take(&mut self.grads).into_values().collect();
        parts.push(Tensor::from_data(burn::tensor::TensorData::new(extra.to_vec(), [extra.len()]), &device));
        let summed = collective.all_reduce_tensor(Tensor::cat(parts, 0))?;
        let mut at = 0;
        for (key, n) in lens {
            self.grads.insert(key, summed.clone().slice(at..at + n));
            at += n;
        }
        Ok(sluice_model::to_vec_f32(summed.slice(at..at + extra.len())))
    }
}

/// The first and second moments of one parameter, flat.
#[derive(Debug, Clone)]
pub struct Moments<B: Backend> {
    /// First moment.
    pub m: Tensor<B, 1>,
    /// Second moment.
    pub v: Tensor<B, 1>,
}

/// AdamW with its state.
#[derive(Debug)]
pub struct AdamW<B: AutodiffBackend> {
    /// Settings.
    pub config: AdamWConfig,
    /// Steps taken (bias correction uses `step + 1` on the next one).
    pub step: u64,
    /// Moments by parameter path.
    pub state: BTreeMap<String, Moments<B::InnerBackend>>,
}

/// What one optimizer step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    /// The gradient norm before clipping.
    pub grad_norm: f64,
    /// The factor gradients were multiplied by (1 when not clipped).
    pub clip_scale: f64,
    /// The learning rate used.
    pub lr: f64,
    /// The gradient norm was not finite: nothing was changed.
    pub skipped: bool,
}

struct Update<'a, B: AutodiffBackend> {
    grads: &'a GradAccumulator<B>,
    state: &'a mut BTreeMap<String, Moments<B::InnerBackend>>,
    path: Vec<String>,
    config: AdamWConfig,
    lr: f64,
    scale: f64,
    t: i32,
}

impl<B: AutodiffBackend> ModuleMapper<B> for Update<'_, B> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let key = self.path.join(".");
        let Some(g) = self.grads.get(&key) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let c = self.config;
        let require_grad = tensor.is_require_grad();
        let shape = tensor.shape();
        let n = shape.num_elements();
        let p = tensor.inner().reshape([n]);
        let g = g.clone().mul_scalar(self.scale);
        let (m, v) = match self.state.remove(&key) {
            Some(s) => (s.m, s.v),
            None => (p.zeros_like(), p.zeros_like()),
        };
        let m = m.mul_scalar(c.beta1) + g.clone().mul_scalar(1.0 - c.beta1);
        let v = v.mul_scalar(c.beta2) + g.powi_scalar(2).mul_scalar(1.0 - c.beta2);
        let bc1 = 1.0 - c.beta1.powi(self.t);
        let bc2 = 1.0 - c.beta2.powi(self.t);
        let denom = v.clone().div_scalar(bc2).sqrt().add_scalar(c.eps);
        let p = p.mul_scalar(1.0 - self.lr * c.weight_decay)
            - m.clone().div_scalar(bc1).div(denom).mul_scalar(self.lr);
        self.state.insert(key, Moments { m, v });
        let mut out = Tensor::<B, D>::from_inner(p.reshape(shape));
        if require_grad {
            out = out.require_grad();
        }
        Param::from_mapped_value(id, out, mapper)
    }
}

impl<B: AutodiffBackend> AdamW<B> {
    /// A fresh optimizer.
    pub fn new(config: AdamWConfig) -> Self {
        AdamW { config, step: 0, state: BTreeMap::new() }
    }

    /// Applies the accumulated gradients to `module` at learning rate `lr` and returns the
    /// updated module. Gradients are clipped to `max_grad_norm` by their global norm first; a
    /// gradient whose norm is not finite is not applied (`skipped` in the report).
    pub fn step<M: Module<B>>(&mut self, module: M, grads: &GradAccumulator<B>, lr: f64) -> (M, StepReport) {
        let grad_norm = grads.global_norm();
        if !grad_norm.is_finite() {
            return (module, StepReport { grad_norm, clip_scale: 0.0, lr, skipped: true });
        }
        let max = self.config.max_grad_norm;
        let scale = if max > 0.0 { (max / (grad_norm + 1e-6)).min(1.0) } else { 1.0 };
        self.step += 1;
        let t = i32::try_from(self.step).unwrap_or(i32::MAX);
        let mut u = Update::<B> {
            grads,
            state: &mut self.state,
            path: Vec::new(),
            config: self.config,
            lr,
            scale,
            t,
        };
        let module = module.map(&mut u);
        (module, StepReport { grad_norm, clip_scale: scale, lr, skipped: false })
    }
}
