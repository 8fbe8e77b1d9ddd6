//! One learner step on a batch of whole groups: rewards and advantages on the host, then, for each
//! of `epochs` updates, for each micro-batch a forward through the scorer at the sampling
//! temperature, the objective, a backward pass whose gradients are summed, and one AdamW update.
//! A batch makes one policy version, however many epochs it takes: versions, the replay's
//! admission rule, `sync_every`, the learning-rate schedule and staleness all count batches.
//!
//! # Design
//! *Constraints.* A batch larger than memory must train exactly as if it were one pass; stale
//! samples need their behaviour log-probs corrected (`docs/design.md`, "Versions and staleness");
//! the frozen reference must cost nothing when unused; every number the metrics report must come
//! from the step itself.
//! *Solution.* GRPO advantages are computed on the host for the whole batch first, so a
//! micro-batch's loss needs only its own rows; micro-batches hold whole groups, which the scorer
//! packs sharing each group's prompt (and TB needs: its `log Z` is per group), cut where the
//! scorer's packing says a cut pays ([`crate::batching`]). Each micro-batch's loss is
//! normalised by the *batch's* row count and token count, or the run's generation budget
//! ([`reduce_partial`]), so the summed gradients are the gradient of the batch loss, however the
//! batch is cut.
//! With one optimizer step per batch (`epochs = 1`) the proximal log-probs of decoupled PPO are
//! the detached log-probs of the same forward (the current weights before the update, exactly);
//! with `epochs > 1` they are computed once, before the first update, by a forward without
//! autodiff, and every epoch's ratio is taken against them (decoupled PPO and TIS alike), so the
//! clip is a trust region around the weights the batch started from rather than a ratio of 1.
//! The reference forward runs only when `kl.beta > 0` or the objective is TB.
//! *Cons:* the proximal forward with `epochs > 1` costs one extra forward per batch.

use std::collections::BTreeMap;
use std::ops::Range;

use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use sluice_core::{metrics, Group, RlConfig, Sample};
use sluice_model::{score, Llama, ModelConfig, ScoreRow};

use crate::advantages::{check_rewards, group_advantages, overlong_penalty};
use crate::batching::{self, Unit};
use crate::config::{Algorithm, LearnerConfig, OffPolicyMode};
use crate::error::{LearnerError, Result};
use crate::grpo::{
    clip_fraction, clipped_surrogate, importance_weights, reduce_partial, BatchTotals, IsCorrection,
};
use crate::kl::kl_per_token;
use crate::optim::{first_non_finite, AdamW, GradAccumulator, StepReport};
use crate::tb::tb_vargrad;

/// The metrics a micro-batch adds its share of (normalised by the batch's totals): summed over
/// the ranks of a data-parallel step.
const ADDITIVE: [&str; 12] = [
    metrics::POSITIONS,
    metrics::LOGP_MISMATCH,
    metrics::ENTROPY,
    metrics::CLIP_FRACTION,
    metrics::LOSS_POLICY,
    metrics::KL,
    metrics::LOSS_KL,
    metrics::LOSS_TOTAL,
    metrics::TB_LOG_Z,
    metrics::LOSS_TB,
    metrics::IS_WEIGHT_MEAN,
    metrics::IS_CORRECTED_FRACTION,
];

/// What one step measured. Keys are the names of [`sluice_core::metrics`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepStats {
    /// Scalar metrics by name.
    pub values: BTreeMap<&'static str, f64>,
    /// Samples per staleness value (index = staleness).
    pub staleness_hist: Vec<u64>,
}

impl StepStats {
    /// A metric, if the step measured it.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.values.get(name).copied()
    }

    fn set(&mut self, name: &'static str, v: f64) {
        self.values.insert(name, v);
    }

    fn add(&mut self, name: &'static str, v: f64) {
        *self.values.entry(name).or_default() += v;
    }
}

/// The policy, its frozen reference, the optimizer, and the step.
pub struct Trainer<B: AutodiffBackend> {
    cfg: LearnerConfig,
    /// The run's shared settings: group size, batch size, staleness bound, temperature.
    rl: RlConfig,
    model: Option<Llama<B>>,
    reference: Option<Llama<B::InnerBackend>>,
    optimizer: AdamW<B>,
    /// The policy version: batches whose update was applied.
    version: u64,
}

/// One sequence of the batch, with what the objective needs from the host.
#[derive(Debug, Clone, Copy)]
struct Row<'a> {
    sample: &'a Sample,
    reward: f32,
    advantage: f32,
    /// Not a failed episode: trained on and counted in its group's statistics.
    valid: bool,
}

/// Host-side inputs of one micro-batch, padded to `[rows, width]`.
struct Micro<'a> {
    rows: &'a [Row<'a>],
    width: usize,
    loss_mask: Vec<f32>,
    behavior: Vec<f32>,
    /// 1 for a valid row, 0 for a failed episode, `[rows]`.
    valid: Vec<f32>,
    /// Reference log-probs, when needed.
    reference: Option<Vec<f32>>,
    /// Proximal log-probs computed before the first update (`epochs > 1`).
    proximal: Option<Vec<f32>>,
}

impl<B: AutodiffBackend> Trainer<B> {
    /// A trainer for `model` at version 0 ([`Trainer::at_version`] for a resumed one).
    ///
    /// `reference` is the frozen initial policy; it must be given when the objective needs it
    /// ([`LearnerConfig::needs_reference`]). The settings are taken as checked
    /// ([`LearnerConfig::check`], [`RlConfig::check`]: the run config checks them where it reads
    /// them).
    pub fn new(
        cfg: LearnerConfig,
        rl: RlConfig,
        model: Llama<B>,
        reference: Option<Llama<B::InnerBackend>>,
        optimizer: AdamW<B>,
    ) -> Result<Self> {
        if cfg.needs_reference() && reference.is_none() {
            return Err(LearnerError::InvalidConfig {
                name: "reference",
                reason:
                    "the objective needs the frozen reference policy (TB, or kl.beta > 0) and none was given"
                        .into(),
            });
        }
        let reference = if cfg.needs_reference() { reference } else { None };
        Ok(Trainer { cfg, rl, model: Some(model), reference, optimizer, version: 0 })
    }

    /// The same trainer at version `version` (a checkpoint's).
    pub fn at_version(mut self, version: u64) -> Self {
        self.version = version;
        self
    }

    /// The settings.
    pub fn config(&self) -> &LearnerConfig {
        &self.cfg
    }

    /// The run's shared settings.
    pub fn rl(&self) -> &RlConfig {
        &self.rl
    }

    /// The policy.
    pub fn model(&self) -> &Llama<B> {
        match &self.model {
            Some(m) => m,
            None => unreachable!("the model is only taken for the duration of an update"),
        }
    }

    /// The optimizer (its `step` is the policy version).
    pub fn optimizer(&self) -> &AdamW<B> {
        &self.optimizer
    }

    /// The policy version: batches whose update was applied (with `epochs > 1` the optimizer
    /// takes several steps per version).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Refuses weights holding a NaN or an infinity, naming the first such parameter: what the
    /// learner checks before weights leave it (published or checkpointed).
    pub fn check_finite(&self) -> Result<()> {
        match first_non_finite(self.model()) {
            Some(param) => Err(LearnerError::NonFiniteWeights { param, version: self.version() }),
            None => Ok(()),
        }
    }

    /// The xxh3 of every weight's bytes, in parameter order: equal across data-parallel ranks
    /// exactly when their weights are.
    pub fn weights_digest(&self) -> u64 {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for (name, t) in self.model().to_host_tensors() {
            h.update(name.as_bytes());
            for x in &t.data {
                h.update(&x.to_le_bytes());
            }
        }
        h.digest()
    }

    /// Checks, with the other ranks of `collective`, that this rank's weights equal rank 0's.
    pub fn check_same_weights(&self, collective: &crate::Collective<B::InnerBackend>) -> Result<()> {
        collective.check_same_digest(self.weights_digest(), self.version())
    }

    /// Takes `epochs` optimizer steps on `groups` (whole groups of `rl.group_size`), one policy
    /// version. An update whose loss or gradient norm is not finite is left out
    /// (`optim/skipped_nonfinite`): the weights, Adam's moments and the version stay as they were,
    /// and the batch is spent.
    pub fn train(&mut self, groups: &[Group]) -> Result<StepStats> {
        self.train_on(groups, None)
    }

    /// One step of a data-parallel learner rank: `groups` is this rank's share of the step's
    /// batch, and the ranks of `collective` together make the update a single learner would make
    /// on the union of their groups. The losses are normalised by the batch's global counts
    /// (rows, tokens, groups: summed over the ranks first), the gradients and the additive
    /// metrics are summed over the ranks, and every rank takes the same AdamW step. Every rank
    /// needs at least one group. The reward, accuracy and staleness summaries are the batch's
    /// (from sums over the ranks); the extremes of the importance weights stay this rank's own.
    pub fn train_shard(
        &mut self,
        groups: &[Group],
        collective: &crate::Collective<B::InnerBackend>,
    ) -> Result<StepStats> {
        self.train_on(groups, Some(collective))
    }

    fn train_on(
        &mut self,
        groups: &[Group],
        collective: Option<&crate::Collective<B::InnerBackend>>,
    ) -> Result<StepStats> {
        let rows = self.prepare(groups)?;
        let (cfg, rl) = (&self.cfg, &self.rl);
        let trained = || rows.iter().filter(|r| r.valid);
        let mut totals = BatchTotals {
            rows: trained().count(),
            tokens: trained().map(|r| model_tokens(r.sample)).sum(),
            budget: rl.max_completion_tokens,
        };
        let (mut batch_groups, mut batch_rows) = (groups.len(), rows.len());
        let mut all_reduce_s = 0.0;
        if let Some(c) = collective {
            let t0 = std::time::Instant::now();
            // Counts below 2^24 are exact in f32.
            let local = [totals.rows, totals.tokens, batch_groups, batch_rows].map(|n| n as f32).to_vec();
            let global: Vec<usize> = c.all_reduce_sum(local)?.into_iter().map(|n| n as usize).collect();
            (totals.rows, totals.tokens, batch_groups, batch_rows) =
                (global[0], global[1], global[2], global[3]);
            all_reduce_s += t0.elapsed().as_secs_f64();
        }
        let version = self.version();
        let mut stats = StepStats::default();
        match collective {
            Some(c) => {
                let t0 = std::time::Instant::now();
                global_batch_stats(&rows, version, c, &mut stats)?;
                all_reduce_s += t0.elapsed().as_secs_f64();
            }
            None => batch_stats(&rows, version, &mut stats),
        }
        stats.set(metrics::GROUPS, batch_groups as f64);
        stats.set(metrics::SAMPLES, totals.rows as f64);
        stats.set(metrics::FAILED_SAMPLES, (batch_rows - totals.rows) as f64);
        stats.set(metrics::TOKENS, totals.tokens as f64);

        let (ordered, runs) = micro_batches(&rows, cfg, rl, self.model().config());
        let mut micros: Vec<Micro<'_>> = runs.into_iter().map(|r| micro(&ordered[r])).collect();
        stats.set(metrics::MICRO_BATCHES, micros.len() as f64);
        let needs_proximal =
            cfg.epochs > 1 && matches!(self.mode(), OffPolicyMode::Decoupled | OffPolicyMode::Tis);
        for m in &mut micros {
            if let Some(reference) = &self.reference {
                m.reference = Some(host_logprobs(reference, m, rl.temperature)?);
            }
            if needs_proximal {
                m.proximal = Some(host_logprobs(&self.model().valid(), m, rl.temperature)?);
            }
        }
        let mut skipped = 0;
        for epoch in 0..cfg.epochs {
            let mut acc = GradAccumulator::<B>::default();
            let mut epoch_stats = StepStats::default();
            for m in &micros {
                self.micro_step(m, &totals, batch_groups, &mut acc, &mut epoch_stats)?;
            }
            if let Some(c) = collective {
                // Each rank's shares of the loss and of the additive metrics add up to the batch's.
                let keys: Vec<&'static str> =
                    ADDITIVE.iter().copied().filter(|k| epoch_stats.values.contains_key(k)).collect();
                let local: Vec<f32> =
                    ADDITIVE.iter().map(|k| epoch_stats.get(k).unwrap_or(0.0) as f32).collect();
                let t0 = std::time::Instant::now();
                let summed = acc.all_reduce_sum(c, &local)?;
                all_reduce_s += t0.elapsed().as_secs_f64();
                for (k, v) in ADDITIVE.iter().zip(summed) {
                    if keys.contains(k) {
                        epoch_stats.set(k, f64::from(v));
                    }
                }
            }
            let lr = self.cfg.schedule.lr_at(version);
            let loss = epoch_stats.get(metrics::LOSS_TOTAL).unwrap_or(0.0);
            let report = if loss.is_finite() {
                let model =
                    self.model.take().unwrap_or_else(|| unreachable!("model present between updates"));
                let (model, report) = self.optimizer.step(model, &acc, lr);
                self.model = Some(model);
                report
            } else {
                StepReport { grad_norm: acc.global_norm(), clip_scale: 0.0, lr, skipped: true }
            };
            if report.skipped {
                skipped += 1;
                tracing::warn!(
                    loss,
                    grad_norm = report.grad_norm,
                    "a non-finite loss or gradient: update {} of version {version} left out",
                    epoch + 1
                );
            }
            if epoch == 0 {
                // The first epoch's forward is the one on the weights the samples are judged by.
                stats.values.extend(epoch_stats.values);
                stats.set(metrics::GRAD_NORM, report.grad_norm);
                stats.set(metrics::GRAD_CLIP_SCALE, report.clip_scale);
                stats.set(metrics::LR, report.lr);
            }
        }
        stats.set(metrics::SKIPPED_NONFINITE, skipped as f64);
        if collective.is_some() {
            stats.set(metrics::ALL_REDUCE_S, all_reduce_s);
        }
        if skipped < cfg.epochs {
            self.version += 1;
        }
        if self.cfg.algorithm == Algorithm::Tb {
            stats.set(metrics::TB_BETA, self.cfg.tb.beta_at(version) as f64);
        }
        Ok(stats)
    }

    /// The off-policy mode in force.
    fn mode(&self) -> OffPolicyMode {
        self.cfg.off_policy.resolved(self.rl.max_staleness)
    }

    /// Validates the groups and computes shaped rewards and advantages. A failed episode
    /// ([`Sample::failed`]) gets no advantage and counts in neither its group's statistics nor
    /// the loss; a group needs two valid samples (the learner drops the others before).
    fn prepare<'a>(&self, groups: &'a [Group]) -> Result<Vec<Row<'a>>> {
        let (cfg, g_size) = (&self.cfg, self.rl.group_size);
        let bad = |m: String| Err(LearnerError::Batch(m));
        if groups.is_empty() {
            return bad("no groups to train on".into());
        }
        let vocab = self.model().config().vocab_size;
        let mut rows = Vec::new();
        for g in groups {
            if g.samples.len() != g_size {
                return bad(format!(
                    "group {} has {} samples; rl.group_size is {g_size}",
                    g.group_id,
                    g.samples.len(),
                ));
            }
            for s in &g.samples {
                let n = s.completion_tokens.len();
                if s.loss_mask.len() != n || s.behavior_logprobs.len() != n {
                    return bad(format!(
                        "group {} sample {}: {n} completion tokens but {} loss_mask and {} behavior_logprobs",
                        g.group_id,
                        s.sample_idx,
                        s.loss_mask.len(),
                        s.behavior_logprobs.len()
                    ));
                }
                if s.prompt_tokens.is_empty() {
                    return bad(format!("group {} sample {}: empty prompt", g.group_id, s.sample_idx));
                }
                if let Some(&t) =
                    s.prompt_tokens.iter().chain(&s.completion_tokens).find(|&&t| t as usize >= vocab)
                {
                    return bad(format!(
                        "group {} sample {}: token {t} is outside the model's vocabulary ({vocab})",
                        g.group_id, s.sample_idx
                    ));
                }
            }
            if g.too_few_valid() {
                return bad(format!(
                    "group {} has fewer than two valid samples (the others failed): no baseline to train on",
                    g.group_id
                ));
            }
            let first = rows.len();
            for s in &g.samples {
                let n = s.completion_tokens.len();
                let reward = match cfg.overlong {
                    Some(o) => s.reward + o.factor * overlong_penalty(n, o.max_len, o.cache),
                    None => s.reward,
                };
                rows.push(Row { sample: s, reward, advantage: 0.0, valid: !s.failed() });
            }
            let group = &mut rows[first..];
            let rewards: Vec<f32> = group.iter().filter(|r| r.valid).map(|r| r.reward).collect();
            match cfg.algorithm {
                Algorithm::Grpo => {
                    let mut adv = group_advantages(&rewards, &cfg.advantage)?.into_iter();
                    for r in group.iter_mut().filter(|r| r.valid) {
                        r.advantage = adv.next().unwrap_or(0.0);
                    }
                }
                Algorithm::Tb => check_rewards(&rewards)?,
            }
        }
        Ok(rows)
    }

    /// Forward, loss and backward of one micro-batch; gradients go into `acc`.
    fn micro_step(
        &self,
        m: &Micro<'_>,
        totals: &BatchTotals,
        batch_groups: usize,
        acc: &mut GradAccumulator<B>,
        stats: &mut StepStats,
    ) -> Result<()> {
        let cfg = &self.cfg;
        let model = self.model();
        let device = model.device();
        let b = m.rows.len();
        let c = m.width;
        let t2 = |v: &[f32]| Tensor::<B, 2>::from_data(TensorData::new(v.to_vec(), [b, c]), &device);
        let scored = score(model, &score_rows(m.rows), self.rl.temperature, cfg.log_entropy)?;
        stats.add(metrics::POSITIONS, scored.positions as f64);
        let logp = scored.logprobs;
        let lm = t2(&m.loss_mask);
        let behavior = t2(&m.behavior);
        let reference = m.reference.as_deref().map(t2);
        let tokens = m.loss_mask.iter().sum::<f32>() as f64;
        let logp_host = sluice_model::to_vec_f32(logp.clone().detach());

        // Diagnostics every mode reports: train/inference mismatch, entropy.
        let prox_host: &[f32] = m.proximal.as_deref().unwrap_or(&logp_host);
        stats.add(
            metrics::LOGP_MISMATCH,
            masked_sum(&m.loss_mask, |i| (prox_host[i] - m.behavior[i]).abs() as f64) / denom(totals.tokens),
        );
        if let Some(e) = scored.entropy {
            let e = (e.detach() * lm.clone()).sum().into_scalar().elem::<f32>() as f64;
            stats.add(metrics::ENTROPY, e / denom(totals.tokens));
        }

        let loss = match cfg.algorithm {
            Algorithm::Grpo => {
                let adv: Vec<f32> = m.rows.iter().map(|r| r.advantage).collect();
                let adv = Tensor::<B, 1>::from_data(TensorData::new(adv, [b]), &device);
                let mode = self.mode();
                // Decoupled PPO and TIS take the ratio against the weights before the batch's first
                // update (the current ones at `epochs = 1`, a ratio of 1; the proximal forward's
                // after) and weigh each token by them against the behaviour policy; they differ
                // only in the correction (TIS always truncates).
                let correction = match (mode, cfg.off_policy.correction) {
                    (OffPolicyMode::Decoupled, c) => Some(c),
                    (OffPolicyMode::Tis, IsCorrection::Truncate { cap }) => {
                        Some(IsCorrection::Truncate { cap })
                    }
                    (OffPolicyMode::Tis, IsCorrection::Mask { .. }) => {
                        Some(IsCorrection::Truncate { cap: 2.0 })
                    }
                    (OffPolicyMode::Off | OffPolicyMode::Auto, _) => None,
                };
                let (old, weight) = match correction {
                    Some(c) => {
                        let before = match &m.proximal {
                            Some(p) => t2(p),
                            None => logp.clone().detach(),
                        };
                        let w = importance_weights(before.clone(), behavior.clone(), lm.clone(), &c);
                        (before, Some(w))
                    }
                    None => (behavior.clone(), None),
                };
                if let Some(w) = &weight {
                    is_stats(prox_host, &m.behavior, &m.loss_mask, w, totals, stats);
                }
                let clipped = clip_fraction(logp.clone().detach(), old.clone(), lm.clone(), &cfg.clip) as f64;
                stats.add(metrics::CLIP_FRACTION, clipped * tokens / denom(totals.tokens));
                let pg = clipped_surrogate(logp.clone(), old, adv, lm.clone(), &cfg.clip, weight);
                let pg = reduce_partial(pg, lm.clone(), cfg.reduction, totals);
                stats.add(metrics::LOSS_POLICY, scalar(&pg));
                match reference {
                    Some(r) if cfg.kl.beta > 0.0 => {
                        let kl = kl_per_token(logp, r, lm.clone(), cfg.kl.estimator, cfg.kl.clamp);
                        let kl_sum = kl.clone().detach().sum().into_scalar().elem::<f32>() as f64;
                        stats.add(metrics::KL, kl_sum / denom(totals.tokens));
                        let kl = reduce_partial(kl, lm, cfg.reduction, totals) * cfg.kl.beta;
                        stats.add(metrics::LOSS_KL, scalar(&kl));
                        pg + kl
                    }
                    _ => pg,
                }
            }
            Algorithm::Tb => {
                let (beta, g) = (cfg.tb.beta_at(self.version()), self.rl.group_size);
                let Some(r) = reference else {
                    unreachable!("TB always has its reference (checked in Trainer::new)")
                };
                let kl_sum = kl_per_token(
                    logp.clone().detach(),
                    r.clone(),
                    lm.clone(),
                    cfg.kl.estimator,
                    cfg.kl.clamp,
                )
                .sum()
                .into_scalar()
                .elem::<f32>() as f64;
                stats.add(metrics::KL, kl_sum / denom(totals.tokens));
                let seq = (logp * lm.clone()).sum_dim(1).reshape([b]);
                let seq_ref = (r * lm).sum_dim(1).reshape([b]);
                let rewards: Vec<f32> = m.rows.iter().map(|r| r.reward).collect();
                let r = Tensor::<B, 1>::from_data(TensorData::new(rewards, [b]), &device);
                let valid = Tensor::<B, 1>::from_data(TensorData::new(m.valid.clone(), [b]), &device);
                let terms = tb_vargrad(seq, seq_ref, r, valid, g, beta)?;
                // The mean over the batch's groups.
                stats.add(metrics::TB_LOG_Z, scalar(&terms.log_z.sum()) / batch_groups.max(1) as f64);
                // The loss is the mean over this micro-batch's valid rows, which weigh
                // valid / rows of the batch.
                let valid_rows = m.valid.iter().sum::<f32>();
                let tb = terms.loss * (valid_rows / totals.rows.max(1) as f32);
                stats.add(metrics::LOSS_TB, scalar(&tb));
                tb
            }
        };
        stats.add(metrics::LOSS_TOTAL, scalar(&loss));
        let grads = loss.backward();
        acc.add(model, &grads);
        Ok(())
    }
}

fn scalar<B: Backend>(t: &Tensor<B, 1>) -> f64 {
    t.clone().into_scalar().elem::<f32>() as f64
}

fn denom(n: usize) -> f64 {
    n.max(1) as f64
}

fn masked_sum(mask: &[f32], f: impl Fn(usize) -> f64) -> f64 {
    mask.iter().enumerate().filter(|(_, &m)| m > 0.0).map(|(i, _)| f(i)).sum()
}

/// Model tokens of a sample (loss mask 1).
fn model_tokens(s: &Sample) -> usize {
    s.loss_mask.iter().filter(|&&m| m != 0).count()
}

fn score_rows<'a>(rows: &[Row<'a>]) -> Vec<ScoreRow<'a>> {
    rows.iter()
        .map(|r| ScoreRow { prompt: &r.sample.prompt_tokens, completion: &r.sample.completion_tokens })
        .collect()
}

/// The rows reordered and cut into micro-batches of whole groups ([`crate::batching`]), planned
/// by what the scorer's packing of each candidate costs for `model`.
fn micro_batches<'a>(
    rows: &[Row<'a>],
    cfg: &LearnerConfig,
    rl: &RlConfig,
    model: &ModelConfig,
) -> (Vec<Row<'a>>, Vec<Range<usize>>) {
    let g = rl.group_size;
    let groups: Vec<&[Row<'a>]> = rows.chunks(g).collect();
    let scored = score_rows(rows);
    let scored: Vec<&[ScoreRow<'_>]> = scored.chunks(g).collect();
    let units: Vec<Unit> = scored
        .iter()
        .map(|g| Unit {
            rows: g.len(),
            longest: g.iter().map(|r| r.prompt.len() + r.completion_inputs()).max().unwrap_or(0),
            tokens: g.first().map_or(0, |r| r.prompt.len())
                + g.iter().map(ScoreRow::completion_inputs).sum::<usize>(),
        })
        .collect();
    let (order, runs) = batching::plan(&units, cfg.micro_groups(rl.groups_per_step) * g, |run| {
        let run: Vec<ScoreRow<'_>> = run.iter().flat_map(|&g| scored[g].iter().copied()).collect();
        sluice_model::packing_cost(model, &run)
    });
    let ordered = order.iter().flat_map(|&g| groups[g].iter().copied()).collect();
    let runs = runs.into_iter().map(|r| r.start * g..r.end * g).collect();
    (ordered, runs)
}

/// The host inputs of a micro-batch, `[rows, width]` (width = its longest completion, the shape
/// the scorer returns).
fn micro<'a>(rows: &'a [Row<'a>]) -> Micro<'a> {
    let width = rows.iter().map(|r| r.sample.completion_tokens.len()).max().unwrap_or(0).max(1);
    let mut loss_mask = Vec::with_capacity(rows.len() * width);
    let mut behavior = Vec::with_capacity(rows.len() * width);
    for r in rows {
        let s = r.sample;
        let pad = width - s.completion_tokens.len();
        // A failed episode's row is scored with the others (whole groups pack together) and
        // masked out entirely.
        let trained = |m: u8| r.valid && m != 0;
        loss_mask.extend(s.loss_mask.iter().map(|&m| if trained(m) { 1.0f32 } else { 0.0 }));
        loss_mask.extend(std::iter::repeat_n(0.0, pad));
        behavior.extend(
            s.loss_mask.iter().zip(&s.behavior_logprobs).map(|(&m, &l)| if trained(m) { l } else { 0.0 }),
        );
        behavior.extend(std::iter::repeat_n(0.0, pad));
    }
    let valid = rows.iter().map(|r| if r.valid { 1.0 } else { 0.0 }).collect();
    Micro { rows, width, loss_mask, behavior, valid, reference: None, proximal: None }
}

/// Log-probs of a micro-batch under a model without autodiff, padded like [`micro`].
fn host_logprobs<B: Backend>(model: &Llama<B>, m: &Micro<'_>, temperature: f32) -> Result<Vec<f32>> {
    let s = score(model, &score_rows(m.rows), temperature, false)?;
    Ok(sluice_model::to_vec_f32(s.logprobs))
}

/// Importance-weight diagnostics: raw weights' extremes, corrected weights' mean, and the share
/// of tokens the correction changed.
fn is_stats<B: Backend>(
    prox: &[f32],
    behavior: &[f32],
    mask: &[f32],
    corrected: &Tensor<B, 2>,
    totals: &BatchTotals,
    stats: &mut StepStats,
) {
    let corrected = sluice_model::to_vec_f32(corrected.clone());
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    let (mut sum, mut changed) = (0.0, 0.0);
    for i in (0..mask.len()).filter(|&i| mask[i] > 0.0) {
        let raw = ((prox[i] - behavior[i]) as f64).exp();
        lo = lo.min(raw);
        hi = hi.max(raw);
        sum += corrected[i] as f64;
        if (corrected[i] as f64 - raw).abs() > 1e-6 * raw.max(1.0) {
            changed += 1.0;
        }
    }
    stats.add(metrics::IS_WEIGHT_MEAN, sum / denom(totals.tokens));
    stats.add(metrics::IS_CORRECTED_FRACTION, changed / denom(totals.tokens));
    if lo.is_finite() {
        let min = stats.get(metrics::IS_WEIGHT_MIN).map_or(lo, |m| m.min(lo));
        let max = stats.get(metrics::IS_WEIGHT_MAX).map_or(hi, |m| m.max(hi));
        stats.set(metrics::IS_WEIGHT_MIN, min);
        stats.set(metrics::IS_WEIGHT_MAX, max);
    }
}

/// Reward, accuracy and staleness summaries (and the staleness histogram) of the batch's valid
/// rows.
/// [`batch_stats`] over the batch of every rank of `collective`: each rank's sums (rows, rewards,
/// squared rewards, correct answers, staleness, the staleness histogram) are summed, then the
/// summaries taken as one learner would.
fn global_batch_stats(
    rows: &[Row<'_>],
    version: u64,
    collective: &crate::Collective<impl burn::tensor::backend::Backend>,
    stats: &mut StepStats,
) -> Result<()> {
    let valid: Vec<&Row<'_>> = rows.iter().filter(|r| r.valid).collect();
    let staleness: Vec<u64> =
        valid.iter().map(|r| version.saturating_sub(r.sample.behavior_version)).collect();
    // The histogram's length on every rank: the sum of the ranks' lengths bounds the longest.
    let local_len = staleness.iter().max().map_or(0, |&m| m as usize + 1);
    let len = collective.all_reduce_sum(vec![local_len as f32])?[0] as usize;
    let correct: Vec<f64> = valid
        .iter()
        .filter_map(|r| r.sample.reward_parts.get(metrics::ACCURACY_PART).map(|&v| v as f64))
        .collect();
    let mut local = vec![
        valid.len() as f64,
        valid.iter().map(|r| r.reward as f64).sum(),
        valid.iter().map(|r| (r.reward as f64).powi(2)).sum(),
        correct.iter().sum(),
        correct.len() as f64,
        staleness.iter().sum::<u64>() as f64,
    ];
    let mut hist = vec![0.0; len];
    for &st in &staleness {
        hist[st as usize] += 1.0;
    }
    local.extend(hist);
    let g: Vec<f64> = collective
        .all_reduce_sum(local.iter().map(|&x| x as f32).collect())?
        .into_iter()
        .map(f64::from)
        .collect();
    let n = g[0].max(1.0);
    let mean = g[1] / n;
    stats.set(metrics::REWARD_MEAN, mean);
    stats.set(metrics::REWARD_STD, (g[2] / n - mean * mean).max(0.0).sqrt());
    if g[4] > 0.0 {
        stats.set(metrics::ACCURACY, g[3] / g[4]);
    }
    stats.set(metrics::STALENESS_MEAN, g[5] / n);
    let mut hist: Vec<u64> = g[6..].iter().map(|&c| c.round() as u64).collect();
    while hist.last() == Some(&0) {
        hist.pop();
    }
    stats.set(metrics::STALENESS_MAX, hist.len().saturating_sub(1) as f64);
    stats.staleness_hist = hist;
    Ok(())
}

fn batch_stats(rows: &[Row<'_>], version: u64, stats: &mut StepStats) {
    let rows: Vec<&Row<'_>> = rows.iter().filter(|r| r.valid).collect();
    let n = rows.len().max(1) as f64;
    let mean = rows.iter().map(|r| r.reward as f64).sum::<f64>() / n;
    let var = rows.iter().map(|r| (r.reward as f64 - mean).powi(2)).sum::<f64>() / n;
    stats.set(metrics::REWARD_MEAN, mean);
    stats.set(metrics::REWARD_STD, var.sqrt());
    let correct: Vec<f64> = rows
        .iter()
        .filter_map(|r| r.sample.reward_parts.get(metrics::ACCURACY_PART).map(|&v| v as f64))
        .collect();
    if !correct.is_empty() {
        stats.set(metrics::ACCURACY, correct.iter().sum::<f64>() / correct.len() as f64);
    }
    let mut hist = Vec::new();
    let mut total = 0u64;
    for r in rows {
        let s = version.saturating_sub(r.sample.behavior_version);
        total += s;
        if hist.len() <= s as usize {
            hist.resize(s as usize + 1, 0);
        }
        hist[s as usize] += 1;
    }
    stats.set(metrics::STALENESS_MEAN, total as f64 / n);
    stats.set(metrics::STALENESS_MAX, hist.len().saturating_sub(1) as f64);
    stats.staleness_hist = hist;
}
