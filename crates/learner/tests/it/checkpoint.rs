//! Checkpoints are sealed, pruned, and never loaded when incomplete or corrupt; optimizer state
//! survives a save and load bit for bit.
#![allow(clippy::unwrap_used)]

use burn::module::{Module, Param};
use burn::prelude::*;
use sluice_learner::checkpoint::verify;
use sluice_learner::{load_optimizer, save_optimizer, AdamW, AdamWConfig, Checkpoints, GradAccumulator};
use sluice_model::CpuAutodiff as B;

#[derive(Module, Debug)]
struct Two<B: Backend> {
    a: Param<Tensor<B, 2>>,
    b: Param<Tensor<B, 1>>,
}

fn two() -> Two<B> {
    let d = Default::default();
    let a: Vec<f32> = (0..12).map(|i| (i as f32 * 0.37).sin()).collect();
    let b: Vec<f32> = (0..5).map(|i| (i as f32 * 0.91).cos()).collect();
    Two {
        a: Param::from_tensor(Tensor::from_data(TensorData::new(a, [3, 4]), &d)),
        b: Param::from_tensor(Tensor::from_data(TensorData::new(b, [5]), &d)),
    }
}

/// One AdamW step on the loss `sum(a^3) + sum(b * step)`.
fn step(m: Two<B>, opt: &mut AdamW<B>, k: f32) -> Two<B> {
    let loss = m.a.val().powi_scalar(3).sum() + m.b.val().mul_scalar(k).sum();
    let mut acc = GradAccumulator::default();
    acc.add(&m, &loss.backward());
    opt.step(m, &acc, 1e-2).0
}

fn values(m: &Two<B>) -> Vec<f32> {
    let mut v = m.a.val().into_data().into_vec::<f32>().unwrap();
    v.extend(m.b.val().into_data().into_vec::<f32>().unwrap());
    v
}

#[test]
fn only_sealed_intact_checkpoints_are_found_and_old_ones_are_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let cps = Checkpoints::new(dir.path().join("checkpoints"), 2);
    for s in 1..=4u64 {
        cps.save(s, |d| {
            std::fs::create_dir_all(d.join("model")).unwrap();
            std::fs::write(d.join("model").join("weights.bin"), vec![s as u8; 1000]).unwrap();
            std::fs::write(d.join("trainer.json"), format!("{{\"step\": {s}}}")).unwrap();
            Ok(())
        })
        .unwrap();
    }
    let steps: Vec<u64> = cps.list().into_iter().map(|(s, _)| s).collect();
    assert_eq!(steps, [3, 4], "keep = 2");
    assert_eq!(cps.latest().unwrap().0, 4);

    // A write interrupted before its seal (a step-5 directory without COMPLETE) is skipped.
    std::fs::create_dir_all(cps.path(5)).unwrap();
    std::fs::write(cps.path(5).join("trainer.json"), "{}").unwrap();
    assert_eq!(cps.latest().unwrap().0, 4);

    // One flipped byte in step 4's weights: skipped, step 3 is the newest loadable.
    let w = cps.path(4).join("model").join("weights.bin");
    let mut bytes = std::fs::read(&w).unwrap();
    bytes[500] ^= 1;
    std::fs::write(&w, bytes).unwrap();
    let e = verify(&cps.path(4)).unwrap_err().to_string();
    assert!(e.contains("model/weights.bin"), "{e}");
    assert_eq!(cps.latest().unwrap().0, 3);

    // A file missing from step 3: nothing is loadable.
    std::fs::remove_file(cps.path(3).join("trainer.json")).unwrap();
    assert!(verify(&cps.path(3)).unwrap_err().to_string().contains("trainer.json is missing"));
    assert!(cps.latest().is_none());
}

#[test]
fn optimizer_state_round_trips_so_a_resumed_step_is_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let config = AdamWConfig { weight_decay: 0.1, beta2: 0.95, ..AdamWConfig::default() };
    let mut opt = AdamW::<B>::new(config);
    let mut m = two();
    for k in 1..=3 {
        m = step(m, &mut opt, k as f32);
    }
    let path = dir.path().join("optimizer.safetensors");
    save_optimizer(&opt, &path).unwrap();
    let mut loaded = load_optimizer::<B>(&path, &Default::default()).unwrap();
    assert_eq!(loaded.step, 3);
    assert_eq!(loaded.config, config);
    assert_eq!(loaded.state.len(), 2);

    let resumed = Two::<B> { a: Param::from_tensor(m.a.val()), b: Param::from_tensor(m.b.val()) };
    let straight = step(m, &mut opt, 4.0);
    let resumed = step(resumed, &mut loaded, 4.0);
    assert_eq!(values(&straight), values(&resumed), "bit-identical after resume");

    std::fs::write(&path, b"not safetensors").unwrap();
    let e = load_optimizer::<B>(&path, &Default::default()).unwrap_err().to_string();
    assert!(e.contains("optimizer.safetensors"), "{e}");
}
