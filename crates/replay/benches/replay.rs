//! Replay store benchmark: append throughput per durability policy and sample latency, against
//! writing the same batches straight to a parquet file with the `parquet` crate, in one run.
//!
//! `cargo bench -p sluice-replay --bench replay` (options: `-- --groups N --producers P --len T`).
//! Appends go through zenoh on loopback (a service and its clients in one process, real TCP),
//! and also straight into a `Shard` to show what the transport costs.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Instant;

use arrow_array::RecordBatch;
use sluice_core::testing::sample;
use sluice_core::trajectory::groups_to_batch;
use sluice_core::{Group, Sample, ZenohOptions};
use sluice_replay::{
    ClientConfig, Durability, ReplayClient, ReplayConfig, ReplayService, SampleRequest, Sampler, Shard,
};

const SAMPLES: usize = 8;

fn group(id: u64, len: usize) -> Group {
    let samples = (0..SAMPLES).map(|i| {
        let tokens = (0..len as u32).map(|t| (t * 31 + i as u32 + id as u32) % 49152).collect();
        Sample {
            task_id: format!("arith-{id}"),
            source: "arithmetic".into(),
            prompt_tokens: (0..64).map(|t| (t * 7 + id as u32) % 49152).collect(),
            behavior_logprobs: (0..len).map(|t| -0.01 * (t % 50) as f32).collect(),
            reward: (i % 2) as f32,
            reward_parts: [("correct".to_string(), (i % 2) as f32)].into(),
            created_at_us: 1_700_000_000_000_000,
            ..sample(id, i as u16, id / 64, tokens)
        }
    });
    sluice_core::testing::group(id, samples)
}

struct Args {
    groups: usize,
    producers: usize,
    len: usize,
    groups_per_append: usize,
}

fn args() -> Args {
    let mut a = Args { groups: 8192, producers: 16, len: 256, groups_per_append: 1 };
    let argv: Vec<String> = std::env::args().collect();
    for w in argv.windows(2) {
        let v = || w[1].parse().unwrap();
        match w[0].as_str() {
            "--groups" => a.groups = v(),
            "--producers" => a.producers = v(),
            "--len" => a.len = v(),
            "--groups-per-append" => a.groups_per_append = v(),
            _ => {}
        }
    }
    a
}

/// The batches every producer sends: `groups_per_append` groups each.
fn batches(a: &Args) -> Vec<RecordBatch> {
    (0..a.groups / a.groups_per_append)
        .map(|b| {
            let gs: Vec<Group> = (0..a.groups_per_append)
                .map(|k| group((b * a.groups_per_append + k) as u64, a.len))
                .collect();
            groups_to_batch(&gs).unwrap()
        })
        .collect()
}

fn parquet_baseline(dir: &std::path::Path, batches: &[RecordBatch]) -> f64 {
    let path = dir.join("baseline.parquet");
    let t = Instant::now();
    sluice_replay::durable::write_parquet(&path, batches).unwrap();
    t.elapsed().as_secs_f64()
}

fn direct(dir: &std::path::Path, durability: Durability, batches: &[RecordBatch], producers: usize) -> f64 {
    let cfg =
        ReplayConfig { durability, capacity_rows: u64::MAX, capacity_bytes: u64::MAX, ..Default::default() };
    let shard = Arc::new(Shard::open(dir, 0, cfg, sluice_core::RlConfig::default()).unwrap());
    let batches = Arc::new(batches.to_vec());
    let t = Instant::now();
    let handles: Vec<_> = (0..producers)
        .map(|p| {
            let (shard, batches) = (shard.clone(), batches.clone());
            std::thread::spawn(move || {
                for b in batches.iter().skip(p).step_by(producers) {
                    shard.append(b).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    t.elapsed().as_secs_f64()
}

async fn over_zenoh(
    dir: &std::path::Path,
    durability: Durability,
    batches: &[RecordBatch],
    producers: usize,
    run: &str,
) -> (f64, Vec<f64>, Vec<f64>) {
    let port = sluice_core::free_local_port().unwrap();
    let server = ZenohOptions::listen_on(format!("tcp/127.0.0.1:{port}")).open().await.unwrap();
    let cfg =
        ReplayConfig { durability, capacity_rows: u64::MAX, capacity_bytes: u64::MAX, ..Default::default() };
    let shard = Arc::new(Shard::open(dir, 0, cfg, sluice_core::RlConfig::default()).unwrap());
    let _service = ReplayService::start(&server, run, shard.clone()).await.unwrap();
    let session = ZenohOptions::connect_to(format!("tcp/127.0.0.1:{port}")).open().await.unwrap();
    let client = ReplayClient::new(session, ClientConfig::new(run, 1)).unwrap();
    // Warm the route.
    client.stats().await.unwrap();
    let payloads: Arc<Vec<RecordBatch>> = Arc::new(batches.to_vec());
    let t = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..producers {
        let (client, payloads) = (client.clone(), payloads.clone());
        tasks.push(tokio::spawn(async move {
            for b in payloads.iter().skip(p).step_by(producers) {
                client.append_batch(b).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let secs = t.elapsed().as_secs_f64();
    // Sample latency for 64 groups: uniform, and a fifo stream with acks.
    // A fifo stream runs dry after groups / 64 draws.
    let fifo_draws = (batches.iter().map(|b| b.num_rows()).sum::<usize>() / SAMPLES / 64).min(300);
    let lat = |sampler, draws: usize| {
        let client = client.clone();
        async move {
            let mut v = Vec::new();
            for i in 0..draws {
                let t = Instant::now();
                let s = client.sample(&request(sampler)).await.unwrap();
                let dt = t.elapsed().as_secs_f64() * 1e3;
                assert_eq!(s.info.groups, 64, "{:?}", s.info);
                if sampler == Sampler::Fifo {
                    client.ack("bench", &s.group_ids()).await.unwrap();
                }
                if i >= 5 {
                    v.push(dt);
                }
            }
            v
        }
    };
    // The store alone, without the transport.
    let mut direct_lat = Vec::new();
    for _ in 0..100 {
        let t = Instant::now();
        let _ = shard.sample(&request(Sampler::Uniform)).unwrap();
        direct_lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let uniform = lat(Sampler::Uniform, 300).await;
    let fifo = lat(Sampler::Fifo, fifo_draws).await;
    eprintln!(
        "          Shard::sample (uniform, no transport) p50 {:.2} ms p99 {:.2} ms",
        pct(&direct_lat, 0.5),
        pct(&direct_lat, 0.99)
    );
    (secs, uniform, fifo)
}

/// 64 groups, every stored group admissible.
fn request(sampler: Sampler) -> SampleRequest {
    SampleRequest {
        sampler,
        groups: 64,
        learner: sluice_core::Lineage::default().at(1000),
        max_staleness: 1000,
        consumer: "bench".into(),
        drop_zero_variance: false,
        dedup: false,
        exclude: Vec::new(),
    }
}

fn pct(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let a = args();
    let batches = batches(&a);
    let samples = (a.groups * SAMPLES) as f64;
    let bytes: usize = batches.iter().map(|b| b.get_array_memory_size()).sum();
    println!(
        "replay bench: {} groups x {SAMPLES} samples x {} tokens ({:.0} MB in Arrow), {} producers, {} group(s) per append",
        a.groups,
        a.len,
        bytes as f64 / 1e6,
        a.producers,
        a.groups_per_append
    );
    let tmp = tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| ".".into())).unwrap();
    let base = parquet_baseline(tmp.path(), &batches);
    println!("baseline  parquet ArrowWriter, one file          {:>9.0} samples/s  (1.00x)", samples / base);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let policies = [
        ("fsync", Durability::Fsync),
        ("group-commit=5ms", Durability::GroupCommit { interval_ms: 5 }),
        ("os-buffer", Durability::OsBuffer),
    ];
    for (i, (name, d)) in policies.into_iter().enumerate() {
        let secs = direct(&tmp.path().join(format!("direct-{i}")), d, &batches, a.producers);
        println!(
            "direct    {name:<17} Shard::append           {:>9.0} samples/s  ({:.2}x)",
            samples / secs,
            base / secs
        );
        let (secs, uniform, fifo) = rt.block_on(over_zenoh(
            &tmp.path().join(format!("zenoh-{i}")),
            d,
            &batches,
            a.producers,
            &format!("bench{i}"),
        ));
        println!(
            "zenoh     {name:<17} ReplayClient::append    {:>9.0} samples/s  ({:.2}x)",
            samples / secs,
            base / secs
        );
        println!(
            "          sample 64 groups: uniform p50 {:.2} ms p99 {:.2} ms; fifo+ack p50 {:.2} ms p99 {:.2} ms",
            pct(&uniform, 0.5),
            pct(&uniform, 0.99),
            pct(&fifo, 0.5),
            pct(&fifo, 0.99)
        );
    }
}
