//! The replay shard through its public API: validation, samplers, staleness, eviction, admission,
//! durability and recovery, export.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};

use arrow_array::cast::AsArray;
use arrow_array::types::UInt64Type;
use arrow_array::RecordBatch;
use common::{group, groups};
use sluice_core::trajectory::{self, groups_to_batch};
use sluice_core::{Lineage, RlConfig};
use sluice_replay::{
    AckRequest, Durability, ReplayConfig, ReplayError, SampleRequest, Sampler, Shard, TicketRequest,
};

fn cfg() -> ReplayConfig {
    ReplayConfig { durability: Durability::OsBuffer, seed: 7, ..Default::default() }
}

/// The shared settings the tests below assume: groups of 4, at most 2 versions stale, 8 groups per step.
fn rl() -> RlConfig {
    RlConfig { group_size: 4, max_staleness: 2, groups_per_step: 8, ..RlConfig::default() }
}

fn req(sampler: Sampler, groups: u32, learner_version: u64, max_staleness: u64) -> SampleRequest {
    SampleRequest {
        sampler,
        groups,
        learner: Lineage::default().at(learner_version),
        max_staleness,
        consumer: "learner-0".into(),
        drop_zero_variance: false,
        dedup: false,
        exclude: Vec::new(),
    }
}

fn ids(batch: &RecordBatch) -> Vec<u64> {
    let mut out: Vec<u64> = Vec::new();
    for &g in batch.column(1).as_primitive::<UInt64Type>().values() {
        if out.last() != Some(&g) {
            out.push(g);
        }
    }
    out
}

fn append(shard: &Shard, gs: &[sluice_core::Group]) {
    shard.append(&groups_to_batch(gs).unwrap()).unwrap();
}

#[test]
fn invalid_batches_are_refused_whole_with_the_row_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let shard = Shard::open(dir.path(), 0, cfg(), rl()).unwrap();
    let good = group(1, 0, &[0.0, 1.0, 0.0, 1.0], 4);
    type Mutation = Box<dyn Fn(&mut sluice_core::Group)>;
    let cases: Vec<(&str, Mutation)> = vec![
        ("reward is NaN", Box::new(|g| g.samples[1].reward = f32::NAN)),
        (
            "`loss_mask` has 3 entries but `completion_tokens` has 4",
            Box::new(|g| {
                g.samples[1].loss_mask.pop();
            }),
        ),
        ("`token_versions` has 5 entries", Box::new(|g| g.samples[1].token_versions.push(0))),
        ("sample_idx 1 is missing", Box::new(|g| g.samples[1].sample_idx = 2)),
        ("sample_idx 0 appears twice", Box::new(|g| g.samples[1].sample_idx = 0)),
        ("`loss_mask` holds 2", Box::new(|g| g.samples[1].loss_mask[0] = 2)),
        (
            "`behavior_version` is 3 but the oldest token version is 0",
            Box::new(|g| g.samples[1].behavior_version = 3),
        ),
        ("`behavior_logprobs` holds inf", Box::new(|g| g.samples[1].behavior_logprobs[2] = f32::INFINITY)),
        (
            "reward part `correct` is NaN",
            Box::new(|g| {
                g.samples[1].reward_parts.insert("correct".into(), f32::NAN);
            }),
        ),
    ];
    for (want, mutate) in cases {
        let mut bad = group(2, 0, &[0.0, 1.0, 0.0, 1.0], 4);
        mutate(&mut bad);
        // The good group comes first: it must not be stored either.
        let batch = groups_to_batch(&[good.clone(), bad]).unwrap();
        let err = shard.append(&batch).unwrap_err();
        assert!(matches!(err, ReplayError::Invalid(_)), "{err}");
        let msg = err.to_string();
        assert!(msg.contains(want), "expected `{want}` in `{msg}`");
        assert!(msg.contains("(group 2)") || msg.contains("group 2"), "{msg}");
        assert!(msg.contains("row 4") || msg.contains("row 5"), "the failing row is named: {msg}");
        assert_eq!(shard.stats().groups, 0, "nothing of a refused batch is stored");
    }
    // A batch with a different schema.
    let batch = groups_to_batch(std::slice::from_ref(&good)).unwrap();
    let narrower = batch.project(&(0..15).collect::<Vec<_>>()).unwrap();
    let err = shard.append(&narrower).unwrap_err().to_string();
    assert!(err.contains("schema") && err.contains("created_at"), "{err}");
    // Garbage and truncated IPC are counted as rejected payloads.
    let ipc = trajectory::encode_ipc(&[batch]).unwrap();
    for payload in [b"definitely not arrow".to_vec(), ipc[..ipc.len() / 2].to_vec(), Vec::new()] {
        assert!(matches!(shard.append_ipc(payload), Err(ReplayError::Invalid(_))));
    }
    assert_eq!(shard.stats().rejected_payloads, 3);
    assert_eq!(shard.stats().rejected_batches, 10);
    // And the valid one is accepted.
    assert_eq!(shard.append_ipc(ipc).unwrap().new_groups, 1);
}

#[test]
fn a_shard_directory_is_used_by_one_shard_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let first = Shard::open(dir.path(), 0, cfg(), rl()).unwrap();
    let err = Shard::open(dir.path(), 0, cfg(), rl()).err().unwrap().to_string();
    assert!(err.contains("in use by another process"), "{err}");
    first.close();
    Shard::open(dir.path(), 0, cfg(), rl()).unwrap();
}

#[test]
fn appending_a_group_twice_stores_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let shard = Shard::open(dir.path(), 0, cfg(), rl()).unwrap();
    let batch = groups_to_batch(&groups(0..3, 0)).unwrap();
    let first = shard.append(&batch).unwrap();
    let again = shard.append(&batch).unwrap();
    assert_eq!((first.new_groups, first.duplicates), (3, 0));
    assert_eq!((again.new_groups, again.duplicates), (0, 3));
    assert_eq!(first.seqs, again.seqs);
    assert_eq!(shard.stats().groups, 3);
}

#[test]
fn rows_of_a_group_come_back_in_sample_order_whatever_order_they_were_sent_in() {
    let dir = tempfile::tempdir().unwrap();
    let shard = Shard::open(dir.path(), 0, cfg(), rl()).unwrap();
    let mut g = group(5, 0, &[0.1, 0.2, 0.3, 0.4], 4);
    g.samples.reverse();
    let mut other = group(6, 0, &[1.0, 0.0, 1.0, 0.0], 4);
    other.samples.swap(0, 3);
    // Interleave rows of the two groups.
    let mut rows = Vec::new();
    for i in 0..4 {
        rows.push((g.clone(), i));
        rows.push((other.clone(), i));
    }
    let batch = {
        let parts: Vec<RecordBatch> = rows
            .iter()
            .map(|(grp, i)| {
                groups_to_batch(&[sluice_core::Group {
                    group_id: grp.group_id,
                    samples: vec![grp.samples[*i].clone()],
                }])
                .unwrap()
            })
            .collect();
        arrow_select::concat::concat_batches(&trajectory::trajectory_schema(), &parts).unwrap()
    };
    shard.append(&batch).unwrap();
    let (out, _) = shard.sample(&req(Sampler::Fifo, 2, 0, 0)).unwrap();
    let decoded = trajectory::batch_to_groups(&out).unwrap();
    assert_eq!(decoded[0].group_id, 5);
    assert_eq!(decoded[0].samples.iter().map(|s| s.reward).collect::<Vec<_>>(), vec![0.1, 0.2, 0.3, 0.4]);
    assert_eq!(decoded[1].samples.iter().map(|s| s.sample_idx).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
}

#[test]
fn staleness_filter_admits_only_recent_versions() {
    let dir = tempfile::tempdir().unwrap();
    let shard = Shard::open(dir.path(), 0, cfg(), RlConfig { max_staleness: 10, ..rl() }).unwrap();
    for v in 0..6u64 {
        append(&shard, &groups(v * 10..v * 10 + 10, v));
    }
    for sampler in
        [Sampler::Uniform, Sampler::Reward { temperature: 1.0 }, Sampler::Recency { half_life_groups: 4.0 }]
    {
        let (batch, info) = shard.sample(&req(sampler, 60, 5, 2)).unwrap();
        let got = trajectory::batch_to_groups(&batch).unwrap();
        assert_eq!(got.len(), 30, "{sampler:?}: versions 3, 4, 5 only");
        assert!(got.iter().all(|g| g.samples[0].behavior_version >= 3));
        assert_eq!(info.stale_skipped, 30);
    }
    // fifo skips the stale ones for good and streams the rest in order.
    let (batch, info) = shard.sample(&req(Sampler::Fifo, 15, 5, 2)).unwrap();
    assert_eq!(ids(&batch), (30..45).collect::<Vec<_>>());
    assert_eq!(info.stale_skipped, 30);
    // max_staleness 0 is the synchronous case: only the learner's own version.
    let (batch, _) = shard.sample(&req(Sampler::Uniform, 60, 5, 0)).unwrap();
    assert_eq!(ids(&batch).len(), 10);
    assert!(ids(&batch).iter().all(|&g| (50..60).contains(&g)));
}

/// Draws one group `n` times and returns each group id's frequency.
fn frequencies(shard: &Shard, sampler: Sampler, n: usize) -> HashMap<u64, f64> {
    let mut counts: HashMap<u64, f64> = HashMap::new();
    for _ in 0..n {
        let (batch, _) = shard.sample(&req(sampler, 1, 3, 10)).unwrap();
        *counts.entry(ids(&batch)[0]).or_default() += 1.0;
    }
    counts.values_mut().for_each(|c| *c /= n as f64);
    counts
}

/// Ten groups: ids 0..10, mean rewards 0.0, 0.1, ..., 0.9, versions 0,0,1,1,2,2,3,3,3,3.
fn sampler_shard(dir: &std::path::Path) -> Shard {
    let shard = Shard::open(dir, 0, cfg(), rl()).unwrap();
    for id in 0..10u64 {
        let r = id as f32 / 10.0;
        let version = [0, 0, 1, 1, 2, 2, 3, 3, 3, 3][id as usize];
        append(&shard, &[group(id, version, &[r - 0.05, r + 0.05, r - 0.05, r + 0.05], 4)]);
    }
    shard
}

/// Tolerance of a frequency over 20 000 draws: more than 4 standard deviations of a proportion
/// (sqrt(0.25 / 20000) = 0.0035).
const TOL: f64 = 0.015;
const DRAWS: usize = 20_000;

fn assert_matches(sampler: Sampler, freq: &HashMap<u64, f64>, expected: &[f64]) {
    for (id, p) in expected.iter().enumerate() {
        let f = freq.get(&(id as u64)).copied().unwrap_or(0.0);
        assert!(
            (f - p).abs() < TOL,
            "{sampler:?}: group {id} drawn with frequency {f:.4}, definition says {p:.4}"
        );
    }
}

#[test]
fn uniform_sampler_draws_each_group_equally() {
    let dir = tempfile::tempdir().unwrap();
    let shard = sampler_shard(dir.path());
    let freq = frequencies(&shard, Sampler::Uniform, DRAWS);
    assert_matches(Sampler::Uniform, &freq, &[0.1; 10]);
}

#[test]
fn reward_sampler_draws_by_softmax_of_mean_reward() {
    let dir = tempfile::tempdir().unwrap();
    let shard = sampler_shard(dir.path());
    let t = 0.25;
    let w: Vec<f64> = (0..10).map(|i| (i as f64 / 10.0 / t).exp()).collect();
    let total: f64 = w.iter().sum();
    let expected: Vec<f64> = w.iter().map(|x| x / total).collect();
    let sampler = Sampler::Reward { temperature: t };
    assert_matches(sampler, &frequencies(&shard, sampler, DRAWS), &expected);
}

#[test]
fn recency_sampler_halves_the_weight_every_half_life() {
    let dir = tempfile::tempdir().unwrap();
    let shard = sampler_shard(dir.path());
    // Group i was appended 9 - i groups before the newest.
    let w: Vec<f64> = (0..10).map(|i| 0.5f64.powf((9 - i) as f64 / 3.0)).collect();
    let total: f64 = w.iter().sum();
    let expected: Vec<f64> = w.iter().map(|x| x / total).collect();
    let sampler = Sampler::Recency { half_life_groups: 3.0 };
    assert_matches(sampler, &frequencies(&shard, sampler, DRAWS), &expected);
}

#[test]
fn tba_sampler_mixes_newest_version_and_reward_priority() {
    let dir = tempfile::tempdir().unwrap();
    let shard = sampler_shard(dir.path());
    let (p, t) = (0.6, 0.5);
    let w: Vec<f64> = (0..10).map(|i| (i as f64 / 10.0 / t).exp()).collect();
    let total: f64 = w.iter().sum();
    // Newest version is 3: groups 6..10.
    let expected: Vec<f64> =
        (0..10).map(|i| p * if i >= 6 { 0.25 } else { 0.0 } + (1.0 - p) * w[i] / total).collect();
    let sampler = Sampler::Tba { p_newest: p, temperature: t };
    assert_matches(sampler, &frequencies(&shard, sampler, DRAWS), &expected);
}

#[test]
fn multi_group_draws_are_distinct_whole_groups() {
    let dir = tempfile::tempdir().unwrap();
    let shard = sampler_shard(dir.path());
    for sampler in [
        Sampler::Uniform,
        Sampler::Recency { half_life_groups: 2.0 },
        Sampler::Reward { temperature: 0.1 },
        Sampler::Tba { p_newest: 0.5, temperature: 1.0 },
    ] {
        for _ in 0..50 {
            let (batch, info) = shard.sample(&req(sampler, 7, 3, 10)).unwrap();
            let got = trajectory::batch_to_groups(&batch).unwrap();
            assert_eq!(got.len(), 7);
            assert_eq!(info.groups, 7);
            assert!(got.iter().all(|g| g.samples.len() == 4), "whole groups");
            assert_eq!(
                got.iter().map(|g| g.group_id).collect::<HashSet<_>>().len(),
                7,
                "{sampler:?}: distinct"
            );
        }
    }
}

#[test]
fn fifo_delivers_each_group_once_until_acked_and_filters_apply() {
    let dir = tempfile::tempdir().unwrap();
    let shard = Shard::open(dir.path(), 0, cfg(), rl()).unwrap();
    append(&shard, &groups(0..4, 0));
    append(&shard, &[group(4, 0, &[1.0, 1.0, 1.0, 1.0], 4)]); // zero variance
    let mut dup = group(5, 0, &[0.0, 1.0, 0.5, 0.25], 4);
    dup.samples[2].completion_tokens = dup.samples[0].completion_tokens.clone();
    append(&shard, &[dup]);
    let mut r = req(Sampler::Fifo, 3, 0, 0);
    let (a, _) = shard.sample(&r).unwrap();
    r.consumer = "learner-1".into();
    r.drop_zero_variance = true;
    r.dedup = true;
    let (b, info) = shard.sample(&r).unwrap();
    assert_eq!(ids(&a), vec![0, 1, 2]);
    assert_eq!(ids(&b), vec![3, 5], "group 4 has zero reward variance");
    assert_eq!(info.zero_variance_dropped, 1);
    assert_eq!(info.duplicate_rows_dropped, 1);
    assert_eq!(b.num_rows(), 4 + 3);
    let (c, _) = shard.sample(&r).unwrap();
    assert_eq!(c.num_rows(), 0, "everything is delivered or leased");
    let ack = shard
        .ack(&AckRequest { consumer: "learner-0".into(), group_ids: vec![0, 1, 2, 99], dropped: false })
        .unwrap();
    assert_eq!((ack.acked, ack.unknown), (3, 1));
    assert_eq!(shard.stats().fifo_leased, 2);
}

#[test]
fn eviction_takes_stale_groups_first_then_consumed_then_pushes_back() {
    let dir = tempfile::tempdir().unwrap();
    // Room for 6 groups of 4 rows.
    let shard = Shard::open(
        dir.path(),
        0,
        ReplayConfig { capacity_rows: 24, ..cfg() },
        RlConfig { max_staleness: 1, ..rl() },
    )
    .unwrap();
    append(&shard, &groups(0..2, 0));
    append(&shard, &groups(2..6, 2));
    // The learner reaches version 2: version-0 groups are stale.
    let (b, _) = shard.sample(&req(Sampler::Fifo, 2, 2, 1)).unwrap();
    assert_eq!(ids(&b), vec![2, 3]);
    shard.ack(&AckRequest { consumer: "learner-0".into(), group_ids: vec![2, 3], dropped: false }).unwrap();
    append(&shard, &groups(6..8, 2));
    let held: HashSet<u64> = shard.group_ids().into_iter().collect();
    assert_eq!(held, HashSet::from([2, 3, 4, 5, 6, 7]), "stale 0 and 1 went first");
    append(&shard, &groups(8..10, 2));
    let held: HashSet<u64> = shard.group_ids().into_iter().collect();
    assert_eq!(held, HashSet::from([4, 5, 6, 7, 8, 9]), "then the consumed 2 and 3");
    let stats = shard.stats();
    assert_eq!((stats.evicted_stale, stats.evicted_capacity), (2, 2));
    let err = shard.append(&groups_to_batch(&groups(10..11, 2)).unwrap()).unwrap_err();
    assert!(matches!(err, ReplayError::Backpressure { rows: 24, .. }), "{err}");
    assert_eq!(shard.stats().groups, 6, "nothing unconsumed was evicted");
    // A ring buffer evicts the oldest instead.
    let dir = tempfile::tempdir().unwrap();
    let ring =
        Shard::open(dir.path(), 0, ReplayConfig { capacity_rows: 8, evict_unconsumed: true, ..cfg() }, rl())
            .unwrap();
    for id in 0..3 {
        append(&ring, &groups(id..id + 1, 0));
    }
    assert_eq!(ring.group_ids(), vec![1, 2]);
    // A batch larger than the whole store is invalid, not a wait.
    let err = ring.append(&groups_to_batch(&groups(10..13, 0)).unwrap()).unwrap_err();
    assert!(matches!(err, ReplayError::Invalid(_)), "{err}");
}

#[test]
fn tickets_follow_the_admission_rule() {
    let dir = tempfile::tempdir().unwrap();
    let shard =
        Shard::open(dir.path(), 0, cfg(), RlConfig { max_staleness: 1, groups_per_step: 4, ..rl() }).unwrap();
    let t = |worker: &str, want, redeemed| {
        shard.tickets(&TicketRequest { worker: worker.into(), want, redeemed }).unwrap()
    };
    // v = 0: (0 + 1 + 1) * 4 = 8 groups may be started.
    let a = t("w0", 5, 0);
    assert_eq!((a.granted, a.limit), (5, 8));
    let b = t("w1", 5, 0);
    assert_eq!(b.granted, 3);
    assert_eq!(t("w1", 5, 0).granted, 0);
    // Finishing groups does not free admission; the learner advancing does.
    assert_eq!(t("w0", 5, 5).granted, 0);
    shard.sample(&req(Sampler::Fifo, 0, 1, 1)).unwrap();
    let c = t("w0", 10, 0);
    assert_eq!((c.granted, c.limit, c.learner.version), (4, 12, 1));
}

#[test]
fn every_acknowledged_group_and_ack_survives_a_restart() {
    for durability in [Durability::Fsync, Durability::GroupCommit { interval_ms: 2 }, Durability::OsBuffer] {
        let dir = tempfile::tempdir().unwrap();
        // Small segments so that some groups are recovered from parquet and some from the log.
        let c = ReplayConfig { durability, segment_rows: 40, ..cfg() };
        {
            let shard = Shard::open(dir.path(), 0, c.clone(), rl()).unwrap();
            for i in 0..25 {
                append(&shard, &groups(i * 2..i * 2 + 2, 1));
            }
            let (b, _) = shard.sample(&req(Sampler::Fifo, 10, 1, 0)).unwrap();
            shard
                .ack(&AckRequest {
                    consumer: "learner-0".into(),
                    group_ids: ids(&b)[..6].to_vec(),
                    dropped: false,
                })
                .unwrap();
            // Dropped without close: the writer flushes what it was given, as on SIGKILL the OS does.
        }
        // Wait for the roller to have produced at least one segment.
        let segs = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".parquet"))
            .count();
        assert!(segs >= 1, "{durability:?}: logs roll into parquet segments");
        let shard = Shard::open(dir.path(), 0, c, rl()).unwrap();
        let rec = shard.recovery().clone();
        assert_eq!(rec.groups, 50, "{durability:?}: {rec:?}");
        assert_eq!(rec.acked, 6);
        assert!(rec.segments >= 1);
        assert_eq!(shard.group_ids(), (0..50).collect::<Vec<_>>());
        // The acked 6 are not delivered again; the 4 delivered but not acked are.
        let (b, _) = shard.sample(&req(Sampler::Fifo, 100, 1, 0)).unwrap();
        assert_eq!(ids(&b), (6..50).collect::<Vec<_>>());
    }
}

#[test]
fn a_torn_log_tail_is_dropped_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    {
        let shard = Shard::open(dir.path(), 0, cfg(), rl()).unwrap();
        append(&shard, &groups(0..3, 0));
        append(&shard, &groups(3..5, 0));
    }
    let log = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".log") && !p.ends_with("meta.log"))
        .unwrap();
    // A half-written third record: a valid header prefix and some payload.
    let bytes = std::fs::read(&log).unwrap();
    let mut torn = bytes.clone();
    torn.extend_from_slice(&bytes[..bytes.len() / 3]);
    std::fs::write(&log, &torn).unwrap();
    let shard = Shard::open(dir.path(), 0, cfg(), rl()).unwrap();
    assert_eq!(shard.recovery().groups, 5);
    assert_eq!(shard.recovery().torn_tail_bytes, (bytes.len() / 3) as u64);
    // Reopening again finds a clean log.
    drop(shard);
    let shard = Shard::open(dir.path(), 0, cfg(), rl()).unwrap();
    assert_eq!((shard.recovery().groups, shard.recovery().torn_tail_bytes), (5, 0));
}

#[test]
fn export_writes_one_parquet_file_of_every_sample() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    for s in 0..2u32 {
        let shard = Shard::open(
            run.join("replay").join(format!("shard-{s}")),
            s,
            ReplayConfig { segment_rows: 8, ..cfg() },
            rl(),
        )
        .unwrap();
        append(&shard, &groups(s as u64 * 100..s as u64 * 100 + 5, 0));
        shard.close();
    }
    let out = dir.path().join("all.parquet");
    let (groups_n, rows) = sluice_replay::export(&run, &out).unwrap();
    assert_eq!((groups_n, rows), (10, 40));
    let batches = sluice_replay::durable::read_parquet(&out).unwrap();
    let batch = arrow_select::concat::concat_batches(&batches[0].schema(), &batches).unwrap();
    assert_eq!(batch.schema().fields(), trajectory::trajectory_schema().fields());
    let back = trajectory::batch_to_groups(&batch).unwrap();
    let mut want: BTreeMap<u64, sluice_core::Group> = BTreeMap::new();
    for g in groups(0..5, 0).into_iter().chain(groups(100..105, 0)) {
        want.insert(g.group_id, g);
    }
    assert_eq!(back.len(), 10);
    for g in back {
        assert_eq!(&g, &want[&g.group_id]);
    }
    let err = sluice_replay::export(dir.path().join("nothing").as_path(), &out).unwrap_err().to_string();
    assert!(err.contains("holds no replay store"), "{err}");
}
