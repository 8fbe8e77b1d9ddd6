//! Autodiff gradients of the GRPO and TB losses through the real model match central finite
//! differences on a tiny random Llama.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::path::Path;

use burn::prelude::*;
use sluice_learner::*;
use sluice_model::to_vec_f32;
use sluice_model::weights::Checkpoint;
use sluice_model::{score, CpuAutodiff, Llama, ModelConfig, ScoreRow};

use crate::common;

type B = CpuAutodiff;

fn config() -> ModelConfig {
    common::tiny_config(1)
}

const PROMPTS: [&[u32]; 4] = [&[1, 2, 3], &[4, 5], &[1, 2, 3], &[4, 5]];
const COMPLETIONS: [&[u32]; 4] = [&[6, 7, 8], &[9], &[10, 11], &[12, 13, 14]];
const REWARDS: [f32; 4] = [1.0, 0.0, 0.5, 0.25];

fn rows() -> Vec<ScoreRow<'static>> {
    PROMPTS.iter().zip(COMPLETIONS).map(|(p, c)| ScoreRow { prompt: p, completion: c }).collect()
}

fn build(ckpt: &Checkpoint) -> Llama<B> {
    Llama::from_checkpoint(&config(), ckpt, Path::new("<test>"), &Default::default()).unwrap()
}

fn tensor2(v: Vec<f32>, b: usize, t: usize) -> Tensor<B, 2> {
    Tensor::from_data(TensorData::new(v, [b, t]), &Default::default())
}

/// GRPO: clipped surrogate (no clipping active: the old policy is the current one shifted by a
/// constant, so the loss is smooth) plus a k3 KL to a fixed reference.
fn grpo_loss(model: &Llama<B>, old: &[f32], reference: &[f32]) -> Tensor<B, 1> {
    let s = score(model, &rows(), 1.0, false).unwrap();
    let [b, t] = s.logprobs.dims();
    let adv = advantages(&REWARDS, 2, &AdvantageConfig::default()).unwrap();
    let adv = Tensor::<B, 1>::from_data(TensorData::new(adv, [b]), &Default::default());
    let per_token = clipped_surrogate(
        s.logprobs.clone(),
        tensor2(old.to_vec(), b, t),
        adv,
        s.mask.clone(),
        &ClipConfig::default(),
        None,
    );
    let kl =
        kl_per_token(s.logprobs, tensor2(reference.to_vec(), b, t), s.mask.clone(), KlEstimator::K3, 10.0);
    reduce(per_token, s.mask.clone(), Reduction::SeqMeanTokenMean, 0)
        + reduce(kl, s.mask, Reduction::TokenMean, 0) * 0.1
}

fn tb_loss(model: &Llama<B>, reference: &[f32]) -> Tensor<B, 1> {
    let s = score(model, &rows(), 1.0, false).unwrap();
    let seq = s.logprobs.sum_dim(1).reshape([-1]);
    let [n] = seq.dims();
    let r = Tensor::<B, 1>::from_data(TensorData::new(REWARDS.to_vec(), [n]), &Default::default());
    let s_ref = Tensor::<B, 1>::from_data(TensorData::new(reference.to_vec(), [n]), &Default::default());
    tb_vargrad_loss(seq, s_ref, r, 2, 0.5).unwrap()
}

fn check(name: &str, loss: impl Fn(&Llama<B>) -> Tensor<B, 1>) {
    let base = Llama::<B>::random(&config(), 3, &Default::default());
    let mut ckpt = Checkpoint::default();
    for (n, t) in base.to_host_tensors() {
        ckpt.insert(n, t, Path::new("<test>"));
    }
    let model = build(&ckpt);
    let grads = loss(&model).backward();
    let mut checked = 0;
    for (tname, tensor) in model.named_tensors() {
        let g = tensor.grad(&grads).unwrap_or_else(|| panic!("{name}: {tname} has no gradient"));
        // The two largest-gradient coordinates of each tensor: well above finite-difference noise.
        let mut idx: Vec<usize> = (0..g.len()).collect();
        idx.sort_by(|&a, &b| g[b].abs().total_cmp(&g[a].abs()));
        for &i in idx.iter().take(2) {
            let h = 3e-3f32;
            let eval = |delta: f32| {
                let mut c = Checkpoint::default();
                for (n, t) in &ckpt.tensors {
                    let mut t = t.clone();
                    if *n == tname {
                        t.data[i] += delta;
                    }
                    c.insert(n.clone(), t, Path::new("<test>"));
                }
                to_vec_f32(loss(&build(&c)))[0] as f64
            };
            let fd = (eval(h) - eval(-h)) / (2.0 * h as f64);
            let ad = g[i] as f64;
            assert!(
                (fd - ad).abs() <= 2e-3 + 2e-2 * ad.abs(),
                "{name}: d loss / d {tname}[{i}]: autodiff {ad:.6}, finite difference {fd:.6}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 20, "{name}: only {checked} coordinates checked");
}

#[test]
fn grpo_gradients_match_finite_differences() {
    let base = Llama::<B>::random(&config(), 3, &Default::default());
    let s = score(&base, &rows(), 1.0, false).unwrap();
    let current = to_vec_f32(s.logprobs);
    let old: Vec<f32> = current.iter().map(|v| v - 0.05).collect();
    let reference: Vec<f32> =
        current.iter().enumerate().map(|(i, v)| v + 0.1 * ((i % 3) as f32 - 1.0)).collect();
    check("grpo", |m| grpo_loss(m, &old, &reference));
}

#[test]
fn tb_gradients_match_finite_differences() {
    let reference = [-6.0f32, -2.5, -4.0, -7.5];
    check("tb", |m| tb_loss(m, &reference));
}
