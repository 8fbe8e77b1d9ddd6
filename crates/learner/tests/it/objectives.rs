//! Every advantage, loss and KL variant against numpy reference values
//! (`tests/fixtures/make_objectives.py`, committed with its output), to 1e-5 in f32. The fixture's
//! inputs make every branch bind (the dual clip, the KL clamp both ways, Dr. GRPO's budget above
//! the padded width), and the tests check that they do, so a branch cannot pass untested.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use burn::prelude::*;
use serde_json::Value;
use sluice_learner::*;
use sluice_model::{Cpu, CpuAutodiff};

const TOL: f32 = 1e-5;

fn fixture() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/objectives.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn vec1(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn mat<B: Backend>(v: &Value) -> Tensor<B, 2> {
    let rows: Vec<Vec<f32>> = v.as_array().unwrap().iter().map(vec1).collect();
    let (b, t) = (rows.len(), rows[0].len());
    Tensor::from_data(TensorData::new(rows.concat(), [b, t]), &Default::default())
}

fn t1<B: Backend>(v: &[f32]) -> Tensor<B, 1> {
    Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), &Default::default())
}

fn host<const D: usize>(t: Tensor<Cpu, D>) -> Vec<f32> {
    t.into_data().into_vec::<f32>().unwrap()
}

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= TOL * w.abs().max(1.0), "{what}[{i}]: {g} vs {w}");
    }
}

fn flat(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().flat_map(vec1).collect()
}

fn num(v: &Value) -> f32 {
    v.as_f64().unwrap() as f32
}

/// Positions where `a` and `b` differ beyond the tolerance.
fn differing(a: &[f32], b: &[f32]) -> usize {
    a.iter().zip(b).filter(|(x, y)| (*x - *y).abs() > TOL * x.abs().max(1.0)).count()
}

#[test]
fn advantages_match_reference() {
    let f = fixture();
    let g = f["group_size"].as_u64().unwrap() as usize;
    let r = vec1(&f["rewards"]);
    for (est, key) in
        [(Estimator::Grpo, "adv_grpo"), (Estimator::DrGrpo, "adv_dr_grpo"), (Estimator::Rloo, "adv_rloo")]
    {
        let cfg = AdvantageConfig { estimator: est, eps: 1e-6 };
        assert_close(&advantages(&r, g, &cfg).unwrap(), &vec1(&f[key]), key);
    }
}

#[test]
fn surrogate_variants_and_reductions_match_reference() {
    let f = fixture();
    let adv = t1::<Cpu>(&vec1(&f["adv_grpo"]));
    let (logp, old, mask) = (mat::<Cpu>(&f["logp"]), mat::<Cpu>(&f["logp_old"]), mat::<Cpu>(&f["mask"]));
    let clip = ClipConfig { eps_low: 0.2, eps_high: 0.28, dual_clip: None };
    let plain = clipped_surrogate(logp.clone(), old.clone(), adv.clone(), mask.clone(), &clip, None);
    assert_close(&host(plain.clone()), &flat(&f["surrogate"]), "surrogate");
    let dual = ClipConfig { dual_clip: Some(num(&f["dual_clip"])), ..clip };
    let d = host(clipped_surrogate(logp.clone(), old.clone(), adv.clone(), mask.clone(), &dual, None));
    assert_close(&d, &flat(&f["surrogate_dual"]), "surrogate_dual");
    let binding = f["binding"]["dual_clip_tokens"].as_u64().unwrap() as usize;
    assert!(binding > 0 && differing(&d, &host(plain.clone())) == binding, "the dual clip binds");
    let w = importance_weights(
        old.clone(),
        mat(&f["logp_behavior"]),
        mask.clone(),
        &IsCorrection::Truncate { cap: 2.0 },
    );
    let weighted = clipped_surrogate(logp.clone(), old.clone(), adv, mask.clone(), &clip, Some(w));
    assert_close(&host(weighted), &flat(&f["surrogate_weighted"]), "surrogate_weighted");
    for (how, key) in [
        (Reduction::SeqMeanTokenMean, "seq-mean-token-mean"),
        (Reduction::TokenMean, "token-mean"),
        (Reduction::SeqMeanTokenSumNorm, "seq-mean-token-sum-norm"),
    ] {
        let budget = f["budget"].as_u64().unwrap() as usize;
        let got = host(reduce(plain.clone(), mask.clone(), how, budget));
        assert_close(&got, &[f["reductions"][key].as_f64().unwrap() as f32], key);
    }
}

#[test]
fn kl_estimators_and_is_weights_match_reference() {
    let f = fixture();
    let (logp, rf, mask) = (mat::<Cpu>(&f["logp"]), mat::<Cpu>(&f["logp_ref"]), mat::<Cpu>(&f["mask"]));
    let clamp = num(&f["kl_clamp"]);
    let binding = ["kl_clamp_low_tokens", "kl_clamp_high_tokens"]
        .map(|k| f["binding"][k].as_u64().unwrap() as usize)
        .iter()
        .sum::<usize>();
    for (est, key) in [(KlEstimator::K1, "k1"), (KlEstimator::K2, "k2"), (KlEstimator::K3, "k3")] {
        let got = host(kl_per_token(logp.clone(), rf.clone(), mask.clone(), est, clamp));
        assert_close(&got, &flat(&f["kl"][key]), key);
        let free = host(kl_per_token(logp.clone(), rf.clone(), mask.clone(), est, f32::INFINITY));
        assert!(
            binding > 0 && differing(&got, &free) == binding,
            "{key}: the clamp binds on {binding} tokens"
        );
    }
    let (old, beh) = (mat::<Cpu>(&f["logp_old"]), mat::<Cpu>(&f["logp_behavior"]));
    let tr = importance_weights(old.clone(), beh.clone(), mask.clone(), &IsCorrection::Truncate { cap: 2.0 });
    assert_close(&host(tr), &flat(&f["is_truncate"]), "is_truncate");
    let m = importance_weights(old, beh, mask, &IsCorrection::Mask { lo: 0.5, hi: 2.0 });
    assert_close(&host(m), &flat(&f["is_mask"]), "is_mask");
}

#[test]
fn tb_loss_and_overlong_penalty_match_reference() {
    let f = fixture();
    let mask = mat::<Cpu>(&f["mask"]);
    let s = (mat::<Cpu>(&f["logp"]) * mask.clone()).sum_dim(1).reshape([-1]);
    let s_ref = (mat::<Cpu>(&f["logp_ref"]) * mask).sum_dim(1).reshape([-1]);
    let r = t1::<Cpu>(&vec1(&f["rewards"]));
    let g = f["group_size"].as_u64().unwrap() as usize;
    let loss = tb_vargrad_loss(s, s_ref, r, g, 0.5).unwrap();
    assert_close(&host(loss), &[f["tb_loss"].as_f64().unwrap() as f32], "tb_loss");
    let lens: Vec<usize> =
        f["lengths"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    let got: Vec<f32> = lens.iter().map(|&l| overlong_penalty(l, 6, 3)).collect();
    assert_close(&got, &vec1(&f["overlong"]), "overlong");
}

#[test]
fn weights_and_log_z_carry_no_gradient() {
    let f = fixture();
    let mask = mat::<CpuAutodiff>(&f["mask"]);
    let logp = mat::<CpuAutodiff>(&f["logp"]).require_grad();
    let old = mat::<CpuAutodiff>(&f["logp_old"]).require_grad();
    let beh = mat::<CpuAutodiff>(&f["logp_behavior"]).require_grad();
    let w = importance_weights(old.clone(), beh.clone(), mask.clone(), &IsCorrection::Truncate { cap: 2.0 });
    let adv = t1::<CpuAutodiff>(&vec1(&f["adv_grpo"]));
    let loss = reduce(
        clipped_surrogate(logp.clone(), old.clone(), adv, mask.clone(), &ClipConfig::default(), Some(w)),
        mask,
        Reduction::TokenMean,
        0,
    );
    let grads = loss.backward();
    assert!(logp.grad(&grads).is_some(), "the policy gets a gradient");
    assert!(
        old.grad(&grads).is_none() && beh.grad(&grads).is_none(),
        "old/behaviour log-probs are constants"
    );
}
