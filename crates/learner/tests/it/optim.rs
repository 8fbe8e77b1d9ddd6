//! AdamW with global-norm clipping against `torch.optim.AdamW` + `clip_grad_norm_`
//! (`fixtures/make_optim.py`), gradient accumulation, and the learning-rate schedule.
#![allow(clippy::unwrap_used)]

use burn::module::{Module, Param};
use burn::prelude::*;
use sluice_learner::{param_paths, AdamW, AdamWConfig, Decay, GradAccumulator, Schedule};
use sluice_model::CpuAutodiff as B;

use crate::common;

#[derive(Module, Debug)]
struct Two<B: Backend> {
    a: Param<Tensor<B, 2>>,
    b: Param<Tensor<B, 1>>,
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn two(a: Vec<f32>, b: Vec<f32>) -> Two<B> {
    let d = Default::default();
    Two {
        a: Param::from_tensor(Tensor::from_data(TensorData::new(a, [3, 4]), &d)),
        b: Param::from_tensor(Tensor::from_data(TensorData::new(b, [5]), &d)),
    }
}

/// Backward of `sum(a * ga) + sum(b * gb)`: the gradients are exactly `ga`, `gb`.
fn add_grads(acc: &mut GradAccumulator<B>, m: &Two<B>, ga: &[f32], gb: &[f32]) {
    let d = Default::default();
    let ga = Tensor::<B, 2>::from_data(TensorData::new(ga.to_vec(), [3, 4]), &d);
    let gb = Tensor::<B, 1>::from_data(TensorData::new(gb.to_vec(), [5]), &d);
    let loss = (m.a.val() * ga).sum() + (m.b.val() * gb).sum();
    acc.add(m, &loss.backward());
}

fn close(got: &[f32], want: &[f32], what: &str) {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= 1e-5, "{what}[{i}]: {g} vs torch {w}");
    }
}

#[test]
fn adamw_with_global_clipping_matches_torch_and_accumulation_matches_one_batch() {
    let fx: serde_json::Value = serde_json::from_str(include_str!("../fixtures/optim.json")).unwrap();
    let c = &fx["config"];
    let config = AdamWConfig {
        beta1: c["beta1"].as_f64().unwrap(),
        beta2: c["beta2"].as_f64().unwrap(),
        eps: c["eps"].as_f64().unwrap(),
        weight_decay: c["weight_decay"].as_f64().unwrap(),
        max_grad_norm: c["max_grad_norm"].as_f64().unwrap(),
    };
    config.check().unwrap();
    // `whole`: one backward per step; `split`: the same gradient as two micro-batches of halves.
    let mut whole = two(floats(&fx["a0"]), floats(&fx["b0"]));
    let mut split = two(floats(&fx["a0"]), floats(&fx["b0"]));
    assert_eq!(param_paths::<B, _>(&whole), ["a", "b"]);
    let (mut opt_whole, mut opt_split) = (AdamW::<B>::new(config), AdamW::<B>::new(config));
    let steps = fx["steps"].as_array().unwrap();
    let mut clipped = 0;
    for (i, step) in steps.iter().enumerate() {
        let (ga, gb) = (floats(&fx["grads"][i]["a"]), floats(&fx["grads"][i]["b"]));
        let lr = fx["lrs"][i].as_f64().unwrap();
        let mut acc = GradAccumulator::default();
        add_grads(&mut acc, &whole, &ga, &gb);
        let report;
        (whole, report) = opt_whole.step(whole, &acc, lr);
        let want_norm = step["grad_norm"].as_f64().unwrap();
        assert!(
            (report.grad_norm - want_norm).abs() <= 1e-5 * want_norm.max(1.0),
            "step {i}: norm {} vs {want_norm}",
            report.grad_norm
        );
        clipped += usize::from(report.clip_scale < 1.0);
        close(
            &whole.a.val().into_data().into_vec::<f32>().unwrap(),
            &floats(&step["a"]),
            &format!("a after step {i}"),
        );
        close(
            &whole.b.val().into_data().into_vec::<f32>().unwrap(),
            &floats(&step["b"]),
            &format!("b after step {i}"),
        );

        let half = |v: &[f32]| v.iter().map(|x| x * 0.5).collect::<Vec<f32>>();
        let mut acc = GradAccumulator::default();
        add_grads(&mut acc, &split, &half(&ga), &half(&gb));
        add_grads(&mut acc, &split, &half(&ga), &half(&gb));
        assert_eq!(acc.micro_batches, 2);
        (split, _) = opt_split.step(split, &acc, lr);
        close(
            &split.a.val().into_data().into_vec::<f32>().unwrap(),
            &floats(&step["a"]),
            &format!("accumulated a, step {i}"),
        );
    }
    let over = steps.iter().filter(|s| s["grad_norm"].as_f64().unwrap() > config.max_grad_norm).count();
    assert!(over >= 2 && over < steps.len(), "the fixture clips some steps and not others");
    assert_eq!(clipped, over, "clipped exactly where torch clipped");
    assert_eq!(opt_whole.step, 4);
}

#[test]
fn the_schedule_warms_up_linearly_then_follows_a_cosine_to_its_floor() {
    let s = Schedule { lr: 1e-3, warmup_steps: 4, decay: Decay::Cosine, total_steps: 14, min_lr: 1e-4 };
    s.check().unwrap();
    let near = |a: f64, b: f64| (a - b).abs() < 1e-12;
    assert!(near(s.lr_at(0), 2.5e-4) && near(s.lr_at(3), 1e-3));
    assert!(near(s.lr_at(4), 1e-3), "the cosine starts at the peak");
    assert!(near(s.lr_at(9), 1e-4 + 0.5 * 9e-4), "halfway down");
    assert!(near(s.lr_at(14), 1e-4) && near(s.lr_at(100), 1e-4), "and stays at the floor");
    assert!(near(Schedule::constant(3e-4).lr_at(1000), 3e-4));
    let bad = Schedule { total_steps: 4, ..s }.check().unwrap_err().to_string();
    assert!(bad.contains("optimizer.total_steps"), "{bad}");
    let bad = AdamWConfig { beta2: 1.0, ..AdamWConfig::default() }.check().unwrap_err().to_string();
    assert!(bad.contains("optimizer.beta2"), "{bad}");
}

#[test]
fn every_llama_parameter_has_its_own_state_key_and_a_step_moves_every_one() {
    use sluice_model::{score, Llama, ScoreRow};
    let cfg = common::tiny_config(2);
    let model = Llama::<B>::random(&cfg, 5, &Default::default());
    let paths = param_paths::<B, _>(&model);
    let named = model.named_tensors();
    assert_eq!(paths.len(), named.len(), "{paths:?}");
    let mut unique = paths.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), paths.len(), "duplicate paths in {paths:?}");

    let before: Vec<Vec<f32>> = named.into_iter().map(|(_, t)| t.to_host().data).collect();
    let rows = [ScoreRow { prompt: &[1, 2, 3], completion: &[4, 5, 6] }];
    let loss = score(&model, &rows, 1.0, false).unwrap().logprobs.sum().neg();
    let mut acc = GradAccumulator::default();
    acc.add(&model, &loss.backward());
    let mut opt = AdamW::<B>::new(AdamWConfig::default());
    let (model, report) = opt.step(model, &acc, 1e-2);
    assert!(report.grad_norm > 0.0 && report.grad_norm.is_finite());
    assert_eq!(opt.state.len(), paths.len(), "every parameter got a gradient and a state");
    for ((name, t), b) in model.named_tensors().into_iter().zip(before) {
        let after = t.to_host().data;
        assert!(after.iter().zip(&b).any(|(x, y)| x != y), "{name} did not move");
    }
}
