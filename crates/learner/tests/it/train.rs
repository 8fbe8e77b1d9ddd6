//! The learner end to end on a tiny random Llama fed from a real replay shard in this process:
//! micro-batching equals one pass, resume continues exactly, a crash before a checkpoint neither
//! loses nor repeats data, and GRPO and TB both learn a fixed preference.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::collections::BTreeMap;

use burn::module::AutodiffModule;
use sluice_core::{metrics, testing, Group, RlConfig, Sample};
use sluice_learner::*;
use sluice_model::{score, CpuAutodiff, Llama, ModelConfig, ScoreRow};
use sluice_replay::{Durability, ReplayConfig, Sampler, Shard};

use crate::common;

type B = CpuAutodiff;
type Inner = sluice_model::Cpu;

const G: usize = 4;
const SEED: u64 = 7;

fn model_config() -> ModelConfig {
    common::tiny_config(2)
}

fn policy() -> Llama<B> {
    Llama::random(&model_config(), SEED, &Default::default())
}

fn reference() -> Llama<Inner> {
    policy().valid()
}

/// Group `id`: prompt `[1, 2 + id % 3]`, `G` completions of 2–4 tokens; completion 0 (starting
/// with token 5) earns 1, the others 0 or 0.25. Behaviour log-probs are the initial policy's, so
/// the first step is on-policy; `env_token` puts an environment token (mask 0) in completion 1.
fn group(id: u64, behavior_version: u64, env_token: bool) -> Group {
    let completions: [Vec<u32>; G] = [vec![5, 6, 7], vec![8, 9, 10, 11], vec![12, 13], vec![14, 15, 9]];
    group_of(id, behavior_version, env_token, completions)
}

/// Like [`group`] with the given completions.
fn group_of(id: u64, behavior_version: u64, env_token: bool, completions: [Vec<u32>; G]) -> Group {
    let prompt = vec![1u32, 2 + (id % 3) as u32];
    let rewards = [1.0f32, 0.0, 0.25, 0.0];
    let model = reference();
    let rows: Vec<ScoreRow<'_>> =
        completions.iter().map(|c| ScoreRow { prompt: &prompt, completion: c }).collect();
    let lp = sluice_model::to_vec_f32(score(&model, &rows, 1.0, false).unwrap().logprobs);
    let width = completions.iter().map(Vec::len).max().unwrap();
    let samples = (0..G).map(|i| {
        let n = completions[i].len();
        let mut mask = vec![1u8; n];
        if env_token && i == 1 {
            mask[1] = 0;
        }
        let logprobs = (0..n).map(|j| if mask[j] == 1 { lp[i * width + j] } else { 0.0 }).collect();
        let correct = (rewards[i] == 1.0) as u8 as f32;
        Sample {
            prompt_tokens: prompt.clone(),
            loss_mask: mask,
            behavior_logprobs: logprobs,
            reward: rewards[i],
            reward_parts: BTreeMap::from([(metrics::ACCURACY_PART.to_string(), correct)]),
            ..testing::sample(id, i as u16, behavior_version, completions[i].clone())
        }
    });
    testing::group(id, samples)
}

fn shard(dir: &std::path::Path, groups: &[Group], fifo_lease_ms: u64) -> Shard {
    let cfg = ReplayConfig { durability: Durability::OsBuffer, fifo_lease_ms, ..Default::default() };
    let shard = Shard::open(dir, 0, cfg, rl(2)).unwrap();
    shard.append(&sluice_core::trajectory::groups_to_batch(groups).unwrap()).unwrap();
    shard
}

/// Groups of `G` at temperature 1, `groups_per_step` a step, any staleness admitted.
fn rl(groups_per_step: usize) -> RlConfig {
    RlConfig { group_size: G, groups_per_step, max_staleness: 1000, temperature: 1.0, ..RlConfig::default() }
}

fn grpo_config(total_steps: u64) -> LearnerConfig {
    LearnerConfig {
        micro_batch_groups: 1,
        kl: KlConfig { beta: 0.05, ..Default::default() },
        schedule: Schedule::constant(3e-3),
        optimizer: AdamWConfig { weight_decay: 0.01, ..Default::default() },
        total_steps,
        checkpoint_every: 0,
        log_entropy: true,
        ..Default::default()
    }
}

fn learner(cfg: LearnerConfig, rl: RlConfig) -> Learner<B> {
    let reference = cfg.needs_reference().then(reference);
    Learner::new(Trainer::new(cfg, rl, policy(), reference, AdamW::new(Default::default())).unwrap())
}

/// Every parameter by name, flat.
type Weights = Vec<(String, Vec<f32>)>;

fn weights(model: &Llama<B>) -> Weights {
    model.to_host_tensors().into_iter().map(|(n, t)| (n, t.data)).collect()
}

fn max_diff(a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)]) -> f32 {
    assert_eq!(a.len(), b.len());
    let mut worst = 0.0f32;
    for ((na, va), (nb, vb)) in a.iter().zip(b) {
        assert_eq!(na, nb);
        for (x, y) in va.iter().zip(vb) {
            worst = worst.max((x - y).abs());
        }
    }
    worst
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// Runs `fut` to completion on `rt`, failing the test if it takes longer than two minutes.
fn within<T>(rt: &tokio::runtime::Runtime, fut: impl std::future::Future<Output = T>) -> T {
    rt.block_on(async {
        tokio::time::timeout(std::time::Duration::from_secs(120), fut).await.expect("timed out")
    })
}

#[test]
fn micro_batches_give_the_same_update_as_one_pass_for_every_reduction() {
    let groups: Vec<Group> = (0..2).map(|i| group(i, 0, true)).collect();
    for reduction in [Reduction::SeqMeanTokenMean, Reduction::TokenMean, Reduction::SeqMeanTokenSumNorm] {
        for algorithm in [Algorithm::Grpo, Algorithm::Tb] {
            let run = |micro| {
                let cfg = LearnerConfig { algorithm, reduction, micro_batch_groups: micro, ..grpo_config(1) };
                let reference = cfg.needs_reference().then(reference);
                let mut t =
                    Trainer::<B>::new(cfg, rl(2), policy(), reference, AdamW::new(Default::default()))
                        .unwrap();
                let stats = t.train(&groups).unwrap();
                (weights(t.model()), stats)
            };
            let (whole, s1) = run(0);
            let (micro, s2) = run(1);
            let d = max_diff(&whole, &micro);
            assert!(d < 1e-6, "{algorithm:?} {reduction:?}: micro-batched update differs by {d}");
            let (l1, l2) = (s1.get(metrics::LOSS_TOTAL).unwrap(), s2.get(metrics::LOSS_TOTAL).unwrap());
            assert!((l1 - l2).abs() < 1e-6, "{algorithm:?} {reduction:?}: loss {l1} vs {l2}");
            // 2 groups x (3 + 4 + 2 + 3) completion tokens, less one environment token each.
            assert_eq!(s1.get(metrics::TOKENS), Some(22.0), "the env tokens are not trained on");
        }
    }
}

#[test]
fn a_batch_of_short_and_long_completions_is_packed_without_changing_the_update() {
    // Half the rows stop after 2 tokens, half run to 40 (inputs of 3 and 41: a completion's last
    // token is not an input): padded to one width, 16 rows would be 16 x 41 positions; packed,
    // the 8 short ones share one row.
    let long = |k: u32| (0..40).map(|j| 3 + (j * 7 + k) % 13).collect::<Vec<u32>>();
    let groups: Vec<Group> =
        (0..4).map(|i| group_of(i, 0, false, [vec![5, 6], long(1), vec![12, 13], long(2)])).collect();
    for algorithm in [Algorithm::Grpo, Algorithm::Tb] {
        let run = |micro| {
            let cfg = LearnerConfig { algorithm, micro_batch_groups: micro, ..grpo_config(1) };
            let reference = cfg.needs_reference().then(reference);
            let mut t =
                Trainer::<B>::new(cfg, rl(4), policy(), reference, AdamW::new(Default::default())).unwrap();
            let stats = t.train(&groups).unwrap();
            (weights(t.model()), stats)
        };
        let (whole, s0) = run(0);
        let (per_group, s1) = run(1);
        let passes = |s: &sluice_learner::StepStats| s.get(metrics::MICRO_BATCHES).unwrap();
        // One pass: the 8 long sequences a row each, the 8 short ones together in a ninth.
        assert_eq!(passes(&s0), 1.0, "{algorithm:?}");
        assert_eq!(s0.get(metrics::POSITIONS).unwrap(), (9 * 41) as f64, "{algorithm:?}");
        // At most one group (4 rows) a pass, for either objective: each pass its 2 long rows and
        // its 2 short ones sharing a third.
        assert_eq!(s1.get(metrics::POSITIONS).unwrap(), (4 * 3 * 41) as f64, "{algorithm:?}");
        assert_eq!(
            passes(&s1),
            4.0,
            "{algorithm:?}: at most one group's rows a pass at micro_batch_groups = 1"
        );
        let d = max_diff(&whole, &per_group);
        assert!(d < 1e-6, "{algorithm:?}: the update depends on the cut, by {d}");
        let (l0, l1) = (s0.get(metrics::LOSS_TOTAL).unwrap(), s1.get(metrics::LOSS_TOTAL).unwrap());
        assert!((l0 - l1).abs() < 1e-6, "{algorithm:?}: loss {l0} vs {l1}");
    }
}

#[test]
fn resume_continues_exactly_as_an_uninterrupted_run() {
    let data: Vec<Group> = (0..12).map(|i| group(i, i / 4, false)).collect();
    let (n, m) = (3, 3);
    let rt = rt();

    // N + M steps straight.
    let dir_a = tempfile::tempdir().unwrap();
    let shard_a = shard(&dir_a.path().join("replay"), &data, 60_000);
    let mut a = learner(grpo_config(n + m), rl(2));
    within(&rt, a.run(&shard_a)).unwrap();

    // N steps, checkpoint, a new process would start here: resume, M more.
    let dir_b = tempfile::tempdir().unwrap();
    let shard_b = shard(&dir_b.path().join("replay"), &data, 60_000);
    let ckpts = Checkpoints::new(dir_b.path().join("checkpoints"), 2);
    let mut b = learner(grpo_config(n), rl(2)).with_checkpoints(ckpts.clone());
    within(&rt, b.run(&shard_b)).unwrap();
    drop(b);
    let (step, path) = ckpts.latest().unwrap();
    assert_eq!(step, n);
    let restored = load_checkpoint::<B>(&path, &Default::default()).unwrap();
    assert_eq!((restored.state.version, restored.state.step, restored.state.groups_consumed), (n, n, 2 * n));
    assert_eq!(restored.state.seed, 0);
    let mut c = Learner::resume(grpo_config(n + m), rl(2), restored, Some(reference()))
        .unwrap()
        .with_checkpoints(ckpts);
    let taken = within(&rt, c.run(&shard_b)).unwrap();
    assert_eq!(taken, m);
    assert_eq!(c.trainer().version(), n + m);

    let d = max_diff(&weights(a.trainer().model()), &weights(c.trainer().model()));
    assert!(d <= 1e-6, "resumed weights differ from the straight run by {d}");
    // Every group was consumed exactly once and acknowledged.
    assert_eq!(c.state().groups_consumed, 12);
    assert_eq!(shard_b.stats().fifo_pending + shard_b.stats().fifo_leased, 0);
}

#[test]
fn a_crash_before_a_checkpoint_loses_and_repeats_nothing() {
    let data: Vec<Group> = (0..10).map(|i| group(i, 0, false)).collect();
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    // A short lease: groups the crashed learner held come back quickly.
    let shard = shard(&dir.path().join("replay"), &data, 300);
    let ckpts = Checkpoints::new(dir.path().join("checkpoints"), 3);
    let cfg = LearnerConfig { checkpoint_every: 2, ..grpo_config(5) };
    let mut a = learner(cfg.clone(), rl(2)).with_checkpoints(ckpts.clone());
    // Three steps: a checkpoint after the second; the third's groups are trained but not acked.
    for _ in 0..3 {
        within(&rt, a.step(&shard)).unwrap().unwrap();
    }
    assert_eq!(a.state().unacked.len(), 2);
    drop(a); // the crash

    // A later checkpoint torn mid-write (no seal) is skipped by `--resume`.
    std::fs::create_dir_all(ckpts.path(3)).unwrap();
    std::fs::write(ckpts.path(3).join("trainer.json"), "{").unwrap();
    let restored = resume_latest::<B>(&ckpts, &Default::default()).unwrap();
    assert_eq!(restored.state.groups_consumed, 4);
    let mut b = Learner::resume(cfg, rl(2), restored, Some(reference())).unwrap().with_checkpoints(ckpts);
    within(&rt, b.run(&shard)).unwrap();
    // 4 groups before the checkpoint + 6 after it = all 10, each once: the 2 the crash lost came
    // back after their lease; none was trained twice by the resumed learner.
    assert_eq!(b.state().groups_consumed, 10);
    let stats = shard.stats();
    assert_eq!(stats.fifo_pending + stats.fifo_leased, 0, "{stats:?}");
}

#[test]
fn zero_variance_groups_are_dropped_and_the_batch_is_still_filled() {
    // Groups 0, 2 and 4 have equal rewards everywhere: no GRPO signal.
    let data: Vec<Group> = (0..6)
        .map(|i| {
            let mut g = group(i, 0, false);
            if i % 2 == 0 {
                g.samples.iter_mut().for_each(|s| s.reward = 0.5);
            }
            g
        })
        .collect();
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let replay = shard(&dir.path().join("replay"), &data, 60_000);
    let mut l = learner(grpo_config(1), rl(3));
    let stats = within(&rt, l.step(&replay)).unwrap().unwrap();
    assert_eq!(stats.get(metrics::GROUPS), Some(3.0));
    assert_eq!(stats.get(metrics::ZERO_VARIANCE_DROPPED), Some(3.0));
    assert_eq!(l.state().groups_consumed, 3);
    // TB learns from them: nothing is dropped by default.
    let dir = tempfile::tempdir().unwrap();
    let replay = shard(&dir.path().join("replay"), &data, 60_000);
    let cfg = LearnerConfig { algorithm: Algorithm::Tb, ..grpo_config(1) };
    let stats = within(&rt, learner(cfg, rl(6)).step(&replay)).unwrap().unwrap();
    assert_eq!(
        (stats.get(metrics::GROUPS), stats.get(metrics::ZERO_VARIANCE_DROPPED)),
        (Some(6.0), Some(0.0))
    );
    // A solved (or collapsed) policy makes nothing but zero-variance groups: past the bound they
    // fill the batch instead of stalling the run for ever.
    let solved: Vec<Group> = (0..6)
        .map(|i| {
            let mut g = group(i, 0, false);
            g.samples.iter_mut().for_each(|s| s.reward = 1.0);
            g
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let replay = shard(&dir.path().join("replay"), &solved, 60_000);
    let cfg = LearnerConfig { max_zero_variance_dropped: 2, ..grpo_config(1) };
    let stats = within(&rt, learner(cfg, rl(3)).step(&replay)).unwrap().unwrap();
    assert_eq!(
        (stats.get(metrics::GROUPS), stats.get(metrics::ZERO_VARIANCE_DROPPED)),
        (Some(3.0), Some(3.0)),
        "the bound is checked between draws: one draw dropped 3, the next filled the batch"
    );
}

#[test]
fn failed_episodes_count_in_neither_the_loss_nor_their_groups_statistics() {
    use sluice_core::Finish;
    // Sample 1 of group 0 failed (its environment timed out): whatever reward and tokens it
    // carries, the update is the one its group's three valid samples give.
    let failed = |reward: f32, completion: Vec<u32>| {
        let mut g = group(0, 0, false);
        let s = &mut g.samples[1];
        s.finish = Finish::Error;
        s.reward = reward;
        s.loss_mask = vec![1; completion.len()];
        s.behavior_logprobs = vec![-1.0; completion.len()];
        s.completion_tokens = completion;
        vec![g, group(1, 0, false)]
    };
    let algorithms = [grpo_config(1), LearnerConfig { algorithm: Algorithm::Tb, ..grpo_config(1) }];
    for cfg in algorithms {
        let train = |groups: &[Group]| {
            let reference = cfg.needs_reference().then(reference);
            let mut t = Trainer::new(cfg.clone(), rl(2), policy(), reference, AdamW::new(Default::default()))
                .unwrap();
            let stats = t.train(groups).unwrap();
            (weights(t.model()), stats)
        };
        let (a, stats) = train(&failed(0.0, vec![8, 9]));
        let (b, _) = train(&failed(1.0, vec![3, 4, 12, 13, 15]));
        let d = max_diff(&a, &b);
        assert!(
            d <= 1e-6,
            "{:?}: a failed episode's reward or tokens moved the update by {d}",
            cfg.algorithm
        );
        assert_eq!((stats.get(metrics::SAMPLES), stats.get(metrics::FAILED_SAMPLES)), (Some(7.0), Some(1.0)));
        // Rewards [1, 0.25, 0] of group 0's valid samples and [1, 0, 0.25, 0] of group 1.
        let mean = stats.get(metrics::REWARD_MEAN).unwrap();
        assert!((mean - 2.5 / 7.0).abs() < 1e-6, "reward mean over valid samples: {mean}");
    }

    // A group left with one valid sample has no baseline: dropped, counted, and the batch is
    // still filled.
    let mut data: Vec<Group> = (0..3).map(|i| group(i, 0, false)).collect();
    for s in &mut data[0].samples[1..] {
        s.finish = Finish::Error;
    }
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let replay = shard(&dir.path().join("replay"), &data, 60_000);
    let mut l = learner(grpo_config(1), rl(2));
    let stats = within(&rt, l.step(&replay)).unwrap().unwrap();
    assert_eq!(stats.get(metrics::FAILED_GROUPS_DROPPED), Some(1.0));
    assert_eq!(stats.get(metrics::ZERO_VARIANCE_DROPPED), Some(0.0));
    assert_eq!((stats.get(metrics::GROUPS), stats.get(metrics::FAILED_SAMPLES)), (Some(2.0), Some(0.0)));
    assert_eq!(l.state().groups_consumed, 2);
    // Handed to the trainer directly, such a group is refused by name.
    let mut t =
        Trainer::new(grpo_config(1), rl(1), policy(), Some(reference()), AdamW::new(Default::default()))
            .unwrap();
    let e = t.train(&data[..1]).unwrap_err().to_string();
    assert!(e.contains("group 0") && e.contains("fewer than two valid"), "{e}");
}

#[test]
fn two_epochs_make_one_version_per_batch_and_clip_against_the_weights_the_batch_started_from() {
    // Versions count batches, as the replay's admission and staleness do: with a bound of 1,
    // groups of version 0 are still admissible at the second step and those of version 1 at the
    // third. Counting optimizer steps, the learner was at version 2 after one batch, passed the
    // version-0 groups over as stale, and starved.
    let data: Vec<Group> = (0..6).map(|i| group(i, i / 4, false)).collect();
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let replay = shard(&dir.path().join("replay"), &data, 60_000);
    let cfg = LearnerConfig { epochs: 2, ..grpo_config(3) };
    let strict = RlConfig { max_staleness: 1, ..rl(2) };
    let mut l = learner(cfg.clone(), strict);
    let staleness: Vec<f64> = (0..3)
        .map(|_| within(&rt, l.step(&replay)).unwrap().unwrap().get(metrics::STALENESS_MAX).unwrap())
        .collect();
    assert_eq!(staleness, [0.0, 1.0, 1.0]);
    assert_eq!((l.trainer().version(), l.state().version, l.trainer().optimizer().step), (3, 3, 6));
    assert_eq!(l.state().groups_consumed, 6);

    // The second epoch's ratio is against the weights before the batch's first update, so its
    // clip binds: a narrow clip range changes the update, for TIS as for decoupled PPO (at one
    // epoch both take the ratio against the current weights, which is 1).
    let batch: Vec<Group> = (0..2).map(|i| group(i, 0, false)).collect();
    let update = |off_policy: OffPolicyConfig, eps: f32| {
        let cfg = LearnerConfig {
            off_policy,
            clip: ClipConfig { eps_low: eps, eps_high: eps, dual_clip: None },
            ..cfg.clone()
        };
        let mut t =
            Trainer::new(cfg, rl(2), policy(), Some(reference()), AdamW::new(Default::default())).unwrap();
        t.train(&batch).unwrap();
        weights(t.model())
    };
    let truncate = IsCorrection::Truncate { cap: 2.0 };
    let tis = OffPolicyConfig { mode: OffPolicyMode::Tis, correction: truncate };
    let decoupled = OffPolicyConfig { mode: OffPolicyMode::Decoupled, correction: truncate };
    let (narrow, wide) = (update(tis, 1e-3), update(tis, 1e9));
    let d = max_diff(&narrow, &wide);
    assert!(d > 1e-5, "TIS: the clip range did not change a two-epoch update ({d}): its ratio is always 1");
    let d = max_diff(&narrow, &update(decoupled, 1e-3));
    assert!(d <= 1e-6, "TIS and decoupled PPO with the same truncation differ by {d}");
}

#[test]
fn a_non_finite_update_is_skipped_counted_and_never_reaches_the_weights() {
    // Dr. GRPO does not divide by the group's std, so one huge but finite reward (the replay
    // admits it) overflows the gradient: its norm is infinite, and clipping (`inf.min(1.0)`,
    // `NaN.min(1.0)` are 1.0) would not stop it reaching every weight and Adam's moments.
    let mut poisoned = group(0, 0, false);
    poisoned.samples[0].reward = 3.0e38;
    let data = vec![poisoned, group(1, 0, false), group(2, 0, false)];
    let cfg = LearnerConfig {
        advantage: AdvantageConfig { estimator: Estimator::DrGrpo, ..Default::default() },
        checkpoint_every: 1,
        ..grpo_config(3)
    };
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let replay = shard(&dir.path().join("replay"), &data, 60_000);
    let ckpts = Checkpoints::new(dir.path().join("checkpoints"), 5);
    let mut l = learner(cfg, rl(1)).with_checkpoints(ckpts.clone());
    let before = weights(l.trainer().model());

    let stats = within(&rt, l.step(&replay)).unwrap().unwrap();
    assert_eq!(stats.get(metrics::SKIPPED_NONFINITE), Some(1.0), "{stats:?}");
    let norm = stats.get(metrics::GRAD_NORM).unwrap();
    assert!(!norm.is_finite(), "the injected step's gradient norm is {norm}");
    assert_eq!(l.trainer().version(), 0, "a skipped update is not a version");
    assert!(l.trainer().optimizer().state.is_empty(), "Adam's moments untouched");
    assert_eq!(max_diff(&before, &weights(l.trainer().model())), 0.0);
    assert_eq!(l.state().groups_consumed, 1, "the batch is spent, not retried for ever");

    // The next batches train as if the poisoned one had never come.
    for _ in 0..2 {
        let stats = within(&rt, l.step(&replay)).unwrap().unwrap();
        assert_eq!(stats.get(metrics::SKIPPED_NONFINITE), Some(0.0));
    }
    within(&rt, l.finish(&replay)).unwrap();
    assert_eq!(l.trainer().version(), 2);
    assert!(first_non_finite(l.trainer().model()).is_none());
    assert!(max_diff(&before, &weights(l.trainer().model())) > 0.0);
    // Every checkpoint holds finite weights at the version the optimizer counted.
    for step in 1..=3u64 {
        let restored = load_checkpoint::<B>(&ckpts.path(step), &Default::default()).unwrap();
        assert_eq!(restored.state.version, step - 1);
        assert!(first_non_finite(&restored.model).is_none(), "checkpoint {step}");
    }
}

#[test]
fn weights_holding_a_nan_are_neither_published_nor_checkpointed() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let ckpts = Checkpoints::new(dir.path().join("checkpoints"), 2);
    // The first parameter the mapper meets becomes NaN.
    struct Poison(bool);
    impl<M: burn::prelude::Backend> burn::module::ModuleMapper<M> for Poison {
        fn map_float<const D: usize>(
            &mut self,
            param: burn::module::Param<burn::prelude::Tensor<M, D>>,
        ) -> burn::module::Param<burn::prelude::Tensor<M, D>> {
            if !std::mem::replace(&mut self.0, true) {
                return param.map(|t| t.mul_scalar(f32::NAN));
            }
            param
        }
    }
    let model = burn::module::Module::map(policy(), &mut Poison(false));
    let trainer =
        Trainer::new(grpo_config(1), rl(1), model, Some(reference()), AdamW::new(Default::default()))
            .unwrap();
    let e = trainer.check_finite().unwrap_err().to_string();
    assert!(e.contains("not finite") && e.contains("version 0"), "{e}");
    let replay = shard(&dir.path().join("replay"), &[group(0, 0, false)], 60_000);
    let mut l = Learner::new(trainer).with_checkpoints(ckpts.clone());
    let e = within(&rt, l.checkpoint(&replay)).unwrap_err().to_string();
    assert!(e.contains("not finite"), "{e}");
    assert!(ckpts.latest().is_none(), "nothing was written");
}

#[test]
fn bad_settings_and_bad_batches_are_refused_with_what_is_wrong() {
    let e = serde_json::from_str::<LearnerConfig>(r#"{"epochs": 4, "epoch": 4}"#).unwrap_err();
    assert!(e.to_string().contains("epoch"), "{e}");
    let e = serde_json::from_str::<LearnerConfig>(r#"{"sampler": "newest"}"#).unwrap_err();
    assert!(e.to_string().contains("unknown sampler `newest`"), "{e}");
    for (cfg, key) in [
        (LearnerConfig { epochs: 0, ..grpo_config(1) }, "learner.epochs"),
        (
            LearnerConfig {
                clip: ClipConfig { dual_clip: Some(0.5), ..Default::default() },
                ..grpo_config(1)
            },
            "learner.clip.dual_clip",
        ),
    ] {
        let e = cfg.check(&rl(2)).unwrap_err().to_string();
        assert!(e.contains(key), "{e}");
    }
    // Weights published every 3 steps go 2 versions stale before the next publish.
    let e = LearnerConfig { sync_every: 3, ..grpo_config(1) }
        .check(&RlConfig { max_staleness: 1, ..rl(2) })
        .unwrap_err()
        .to_string();
    assert!(e.contains("learner.sync_every"), "{e}");
    // TB without its reference.
    let cfg = LearnerConfig { algorithm: Algorithm::Tb, ..grpo_config(1) };
    let e = Trainer::<B>::new(cfg, rl(2), policy(), None, AdamW::new(Default::default())).err().unwrap();
    assert!(e.to_string().contains("reference"), "{e}");
    // A group of the wrong size, and a token outside the vocabulary: named, nothing trained.
    let mut t =
        Trainer::<B>::new(grpo_config(1), rl(2), policy(), Some(reference()), AdamW::new(Default::default()))
            .unwrap();
    let mut short = group(9, 0, false);
    short.samples.pop();
    let e = t.train(&[short]).unwrap_err().to_string();
    assert!(e.contains("group 9 has 3 samples"), "{e}");
    let mut odd = group(8, 0, false);
    odd.samples[2].completion_tokens[0] = 99;
    let e = t.train(&[odd]).unwrap_err().to_string();
    assert!(e.contains("group 8 sample 2") && e.contains("token 99"), "{e}");
    assert_eq!(t.version(), 0);
}

/// Sum of completion 0's token log-probs (the high-reward one) for prompt `[1, 2]`.
fn best_logprob<M: burn::prelude::Backend>(model: &Llama<M>) -> f32 {
    let rows = [ScoreRow { prompt: &[1, 2], completion: &[5, 6, 7] }];
    sluice_model::to_vec_f32(score(model, &rows, 1.0, false).unwrap().logprobs).iter().sum()
}

fn learns(cfg: LearnerConfig, rl: RlConfig, loss: &'static str) {
    let data: Vec<Group> = (0..3).map(|i| group(i, 0, false)).collect();
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let shard = shard(&dir.path().join("replay"), &data, 60_000);
    let mut l = learner(cfg, rl);
    let before = best_logprob(l.trainer().model());
    let mut losses = Vec::new();
    for _ in 0..40 {
        let stats = within(&rt, l.step(&shard)).unwrap().unwrap();
        losses.push(stats.get(loss).unwrap());
    }
    let after = best_logprob(l.trainer().model());
    let head: f64 = losses[..5].iter().sum::<f64>() / 5.0;
    let tail: f64 = losses[losses.len() - 5..].iter().sum::<f64>() / 5.0;
    assert!(tail < head - 0.05, "{loss} did not decrease: first five {head}, last five {tail} ({losses:?})");
    assert!(after > before + 1.0, "log-prob of the rewarded completion: {before} -> {after}");
}

#[test]
fn grpo_on_fixed_groups_lowers_its_loss_and_raises_the_rewarded_completion() {
    // Uniform replay over the same three groups: every sample grows staler, and the decoupled
    // correction's weights track how far the policy moved toward the rewarded completions.
    let cfg = LearnerConfig {
        sampler: Sampler::Uniform,
        kl: KlConfig::default(),
        schedule: Schedule::constant(1e-2),
        ..grpo_config(40)
    };
    learns(cfg, rl(3), metrics::LOSS_POLICY);
}

#[test]
fn tb_on_fixed_groups_lowers_its_loss_and_raises_the_rewarded_completion() {
    let cfg = LearnerConfig {
        algorithm: Algorithm::Tb,
        sampler: Sampler::Uniform,
        tb: TbConfig { beta_start: 0.2, beta_end: 0.2, beta_steps: 0 },
        schedule: Schedule::constant(1e-2),
        ..grpo_config(40)
    };
    learns(cfg, rl(3), metrics::LOSS_TB);
}

/// The whole loop over zenoh: a replay service on one session, the learner drawing from it with a
/// `ReplayClient` and publishing every version, a rollout-side subscriber on another session.
#[test]
fn the_learner_trains_from_the_replay_service_and_publishes_every_version_over_zenoh() {
    use sluice_core::{free_local_port, ZenohOptions};
    use sluice_replay::{ClientConfig, ReplayClient, ReplayService};
    use sluice_weights_sync::{
        DType, Destination, Publisher, PublisherConfig, StalenessGate, Subscriber, SubscriberConfig,
    };
    use std::sync::Arc;
    use std::time::Duration;

    let data: Vec<Group> = (0..6).map(|i| group(i, 0, false)).collect();
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    within(&rt, async {
        let ep = format!("tcp/127.0.0.1:{}", free_local_port().unwrap());
        let learner_session = ZenohOptions::listen_on(ep.clone()).open().await.unwrap();
        let worker_session = ZenohOptions::connect_to(ep).open().await.unwrap();
        let cfg = ReplayConfig { durability: Durability::OsBuffer, ..Default::default() };
        let shard = Arc::new(Shard::open(dir.path().join("replay"), 0, cfg, rl(2)).unwrap());
        let service = ReplayService::start(&learner_session, "loop", shard.clone()).await.unwrap();
        // The rollout side appends over zenoh, as a worker would.
        let producer = ReplayClient::new(worker_session.clone(), ClientConfig::new("loop", 1)).unwrap();
        producer.append(&data).await.unwrap();

        let sub_cfg =
            SubscriberConfig { poll: Duration::from_millis(100), ..SubscriberConfig::new("loop", "w0") };
        let sub = Subscriber::start(
            &worker_session,
            sub_cfg,
            Destination::REPLICATED,
            StalenessGate::new(8, sluice_core::PolicyId::default()),
        )
        .await
        .unwrap();
        let pub_cfg = PublisherConfig { shm: false, ..PublisherConfig::new("loop") };
        let publisher = Publisher::start(&learner_session, pub_cfg).await.unwrap();
        let source = ReplayClient::new(learner_session.clone(), ClientConfig::new("loop", 1)).unwrap();
        let metrics_path = dir.path().join("metrics.jsonl");
        let mut l = learner(grpo_config(3), RlConfig { max_staleness: 2, ..rl(2) })
            .with_publisher(publisher)
            .with_metrics(MetricsLog::open(&metrics_path).unwrap());
        assert_eq!(l.run(&source).await.unwrap(), 3);

        // The subscriber ends on version 3, the learner's weights as bf16.
        let w = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let w = sub.next_ready().await;
                if w.version == 3 {
                    return w;
                }
                sub.applied(w.id()).await.unwrap();
            }
        })
        .await
        .unwrap();
        for (name, t) in l.trainer().model().to_host_tensors() {
            let expected = DType::Bf16.decode(&DType::Bf16.encode(&t.data));
            assert!(w.values(&name).unwrap() == expected, "{name} differs from the learner's weights");
        }
        // Every group consumed once and acknowledged over zenoh.
        assert_eq!(l.state().groups_consumed, 6);
        assert_eq!(shard.stats().fifo_pending + shard.stats().fifo_leased, 0);
        service.stop();

        // One record per step under the fixed names.
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&metrics_path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        for (i, rec) in lines.iter().enumerate() {
            assert_eq!(rec[metrics::STEP], i as u64 + 1);
            assert_eq!(rec[metrics::VERSION], i as u64 + 1);
            for name in [
                metrics::REWARD_MEAN,
                metrics::ACCURACY,
                metrics::LOSS_POLICY,
                metrics::LOSS_KL,
                metrics::KL,
                metrics::ENTROPY,
                metrics::CLIP_FRACTION,
                metrics::IS_WEIGHT_MEAN,
                metrics::GRAD_NORM,
                metrics::TOKENS_PER_S,
                metrics::WAIT_DATA_S,
            ] {
                assert!(rec[name].is_number(), "{name} missing from {rec}");
            }
            assert_eq!(rec[metrics::ACCURACY], 0.25);
            assert!(rec[metrics::STALENESS_HIST].is_array());
        }
    });
}

/// The data-parallel variants: each objective and reduction, in one pass and in micro-batches.
fn dp_variants() -> Vec<(String, LearnerConfig)> {
    let mut out = Vec::new();
    for (name, algorithm, reduction) in [
        ("grpo-seq-mean-token-mean", Algorithm::Grpo, Reduction::SeqMeanTokenMean),
        ("grpo-token-mean", Algorithm::Grpo, Reduction::TokenMean),
        ("grpo-seq-mean-token-sum-norm", Algorithm::Grpo, Reduction::SeqMeanTokenSumNorm),
        ("tb", Algorithm::Tb, Reduction::SeqMeanTokenMean),
    ] {
        for micro in [0, 1] {
            let cfg = LearnerConfig { algorithm, reduction, micro_batch_groups: micro, ..grpo_config(3) };
            out.push((format!("{name}-micro{micro}"), cfg));
        }
    }
    out
}

/// Step `step`'s four groups (an environment token and another reward in the odd ones, behaviour
/// log-probs of the initial policy, so later steps are off-policy).
fn dp_step_groups(step: u64) -> Vec<Group> {
    (0..4)
        .map(|i| {
            let mut g = group(4 * step + i, 0, i % 2 == 1);
            // Rank 1's groups (odd) score differently: a rank-local reward summary shows.
            if i % 2 == 1 {
                g.samples[2].reward = 0.75;
                g.samples[2].reward_parts.insert(metrics::ACCURACY_PART.to_string(), 1.0);
            }
            g
        })
        .collect()
}

/// The step metrics a data-parallel rank must report as one learner on the whole batch would.
const DP_COMPARED: [&str; 9] = [
    metrics::GRAD_NORM,
    metrics::LOSS_TOTAL,
    metrics::REWARD_MEAN,
    metrics::REWARD_STD,
    metrics::ACCURACY,
    metrics::STALENESS_MEAN,
    metrics::STALENESS_MAX,
    metrics::SAMPLES,
    metrics::GROUPS,
];

/// What a data-parallel rank process does, in the environment: `rank,orchestrator port,data
/// port,output directory`.
const DP_RANK: &str = "SLUICE_TEST_DP_RANK";

#[test]
#[ignore = "one rank of the data-parallel test below, which starts it as a process of its own"]
fn dp_rank_process() {
    let spec = std::env::var(DP_RANK).expect("started by the data-parallel test");
    let f: Vec<&str> = spec.split(',').collect();
    let rank: u32 = f[0].parse().unwrap();
    let cfg = CollectiveConfig {
        rank,
        world_size: 2,
        orchestrator_host: "127.0.0.1".into(),
        orchestrator_port: f[1].parse().unwrap(),
        host: "127.0.0.1".into(),
        data_port: f[2].parse().unwrap(),
        timeout: std::time::Duration::from_secs(60),
        strategy: AllReduceStrategy::Ring,
    };
    let collective = Collective::<Inner>::join(cfg, Default::default()).unwrap();
    for (name, cfg) in dp_variants() {
        let reference = cfg.needs_reference().then(reference);
        let mut t =
            Trainer::<B>::new(cfg, rl(4), policy(), reference, AdamW::new(Default::default())).unwrap();
        let mut norms = Vec::new();
        for step in 0..3 {
            // Rank r trains groups r and r + 2 of the step.
            let mine: Vec<Group> = dp_step_groups(step)
                .into_iter()
                .enumerate()
                .filter(|(i, _)| *i as u32 % 2 == rank)
                .map(|(_, g)| g)
                .collect();
            let stats = t.train_shard(&mine, &collective).unwrap();
            norms.push(DP_COMPARED.map(|k| stats.get(k).unwrap()));
        }
        t.check_same_weights(&collective).unwrap();
        let path = std::path::Path::new(f[3]).join(format!("{name}-rank{rank}.json"));
        std::fs::write(path, serde_json::to_vec(&(weights(t.model()), norms)).unwrap()).unwrap();
    }
    // Diverged ranks: rank 0 one step on, rank 1 at the initial weights.
    let cfg = grpo_config(1);
    let reference = cfg.needs_reference().then(reference);
    let mut t = Trainer::<B>::new(cfg, rl(4), policy(), reference, AdamW::new(Default::default())).unwrap();
    if rank == 0 {
        t.train(&dp_step_groups(0)).unwrap();
    }
    let said = match t.check_same_weights(&collective) {
        Ok(()) => "same".to_string(),
        Err(e) => e.to_string(),
    };
    std::fs::write(std::path::Path::new(f[3]).join(format!("diverged-rank{rank}.txt")), said).unwrap();
}

#[test]
#[allow(clippy::disallowed_methods)] // a plain test thread: blocking sleeps are right
fn two_learner_rank_processes_make_the_update_of_one_learner_on_all_their_groups() {
    let dir = tempfile::tempdir().unwrap();
    let orchestrator = sluice_core::free_local_port().unwrap();
    let mut children: Vec<_> = (0..2)
        .map(|rank| {
            let spec = format!(
                "{rank},{orchestrator},{},{}",
                sluice_core::free_local_port().unwrap(),
                dir.path().display()
            );
            std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--ignored", "--exact", "train::dp_rank_process", "--test-threads=1"])
                .env(DP_RANK, spec)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let t0 = std::time::Instant::now();
    for child in &mut children {
        while child.try_wait().unwrap().is_none() {
            if t0.elapsed() > std::time::Duration::from_secs(300) {
                let _ = child.kill();
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "a rank failed:\n{}", String::from_utf8_lossy(&out.stdout));
    }
    for (name, cfg) in dp_variants() {
        let reference = cfg.needs_reference().then(reference);
        let mut single =
            Trainer::<B>::new(cfg, rl(4), policy(), reference, AdamW::new(Default::default())).unwrap();
        let mut want_norms = Vec::new();
        for step in 0..3 {
            let stats = single.train(&dp_step_groups(step)).unwrap();
            want_norms.push(DP_COMPARED.map(|k| stats.get(k).unwrap()));
        }
        let want = weights(single.model());
        let moved = max_diff(&want, &weights(&policy()));
        for rank in 0..2 {
            let text = std::fs::read(dir.path().join(format!("{name}-rank{rank}.json"))).unwrap();
            let (got, norms): (Weights, Vec<[f64; DP_COMPARED.len()]>) =
                serde_json::from_slice(&text).unwrap();
            // Adam hides a gradient scaled by a constant (a wrong normalisation); the gradient
            // norm and the loss do not. The batch summaries are the whole batch's on every rank.
            for (step, (a, b)) in want_norms.iter().zip(&norms).enumerate() {
                for (what, (x, y)) in DP_COMPARED.iter().zip(a.iter().copied().zip(b.iter().copied())) {
                    assert!(
                        (x - y).abs() <= 1e-6 + 1e-5 * x.abs(),
                        "{name}: rank {rank} step {step}: {what} {y}, one learner {x}"
                    );
                }
            }
            let diff = max_diff(&want, &got);
            eprintln!(
                "{name}: rank {rank} differs from one learner by {diff:.2e} (the update moved {moved:.2e})"
            );
            assert!(diff <= 1e-5, "{name}: rank {rank} differs from one learner by {diff}");
        }
        assert!(moved > 1e-3, "{name}: the weights hardly moved ({moved}); the comparison says nothing");
    }
    // Every rank checks its weights against rank 0's: only the one that differs fails.
    let said =
        |rank: u32| std::fs::read_to_string(dir.path().join(format!("diverged-rank{rank}.txt"))).unwrap();
    assert_eq!(said(0), "same");
    assert!(said(1).contains("rank 1's weights at version 0 differ from rank 0's"), "{}", said(1));
}
