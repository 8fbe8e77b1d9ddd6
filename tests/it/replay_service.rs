//! The replay service as its own process, over zenoh on loopback: SIGKILL mid-stream and
//! recovery, hostile payloads, two shards.
// Blocking sleeps are right here: the test polls child processes from a plain thread.
#![allow(clippy::disallowed_methods)]
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use sluice_core::testing::sample;
use sluice_core::trajectory::{self, groups_to_batch};
use sluice_core::{Finish, Group, Sample, ZenohOptions};
use sluice_replay::{ClientConfig, Op, ReplayClient, ReplayError, SampleRequest, Sampler};

use crate::common;

/// A replay shard process and the JSON line it printed when ready.
struct Server {
    child: Child,
    ready: serde_json::Value,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Serves shard `shard` of run `run` (two shards, groups of `group_size`) from `dir`, listening on
/// `port`.
fn start_server(dir: &Path, run: &str, shard: u32, port: u16, group_size: usize) -> Server {
    let config = dir.join(format!("{run}-{shard}.toml"));
    let text = format!(
        "[run]\nname = \"{run}\"\ndir = {dir:?}\nreplay_shards = 2\n\
         [rl]\nmax_staleness = 1000\ngroup_size = {group_size}\n\
         [replay]\nsegment_rows = 256\n[replay.durability]\npolicy = \"group-commit\"\ninterval_ms = 2\n",
        dir = dir.display().to_string(),
    );
    std::fs::write(&config, text).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["replay", "serve"])
        .arg(&config)
        .args(["--shard", &shard.to_string(), "--listen", &format!("tcp/127.0.0.1:{port}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
        }
        // Keep draining so the server never blocks on a full pipe.
        for _ in lines {}
    });
    let line = rx.recv_timeout(Duration::from_secs(120)).expect("the replay server printed no ready line");
    let ready: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(ready["event"], "ready");
    Server { child, ready }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

async fn client(ports: &[u16], run: &str, retry_for: Duration) -> ReplayClient {
    let opts = ZenohOptions {
        connect: ports.iter().map(|p| format!("tcp/127.0.0.1:{p}")).collect(),
        ..Default::default()
    };
    let session = tokio::time::timeout(Duration::from_secs(30), opts.open()).await.unwrap().unwrap();
    let mut cfg = ClientConfig::new(run, ports.len() as u32);
    cfg.request_timeout = Duration::from_secs(5);
    cfg.retry_for = retry_for;
    ReplayClient::new(session, cfg).unwrap()
}

fn group(id: u64, version: u64, g: usize, len: usize) -> Group {
    let samples = (0..g).map(|i| Sample {
        reward: (i % 2) as f32,
        finish: Finish::Length,
        ..sample(id, i as u16, version, (0..len as u32).map(|t| t + i as u32).collect())
    });
    sluice_core::testing::group(id, samples)
}

fn exported_group_rows(run_dir: &Path) -> BTreeMap<u64, usize> {
    let out = run_dir.join("export.parquet");
    let status = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["replay", "export", "--dir"])
        .arg(run_dir)
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let mut rows = BTreeMap::new();
    for batch in sluice_replay::durable::read_parquet(&out).unwrap() {
        for g in trajectory::batch_to_groups(&batch).unwrap() {
            *rows.entry(g.group_id).or_insert(0) += g.samples.len();
        }
    }
    rows
}

#[test]
fn sigkilled_replay_recovers_every_acknowledged_group_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let port = sluice_core::free_local_port().unwrap();
    let mut server = start_server(dir.path(), "kill", 0, port, 8);
    let rt = runtime();
    let acked: Arc<Mutex<Vec<u64>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producer = {
        let (acked, stop) = (acked.clone(), stop.clone());
        let c = rt.block_on(client(&[port], "kill", Duration::from_secs(60)));
        rt.spawn(async move {
            let mut next = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // Two groups per append, 8 samples of 64 tokens each.
                let gs = [group(next, 0, 8, 64), group(next + 1, 0, 8, 64)];
                match c.append(&gs).await {
                    Ok(ack) => {
                        assert_eq!(ack.new_groups + ack.duplicates, 2);
                        acked.lock().unwrap().extend([next, next + 1]);
                    }
                    Err(e) => panic!("append {next} failed after its retries: {e}"),
                }
                next += 2;
            }
            next
        })
    };
    let wait_for = |n: usize| {
        for _ in 0..1200 {
            if acked.lock().unwrap().len() >= n {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("producer stalled at {} acked groups", acked.lock().unwrap().len());
    };
    wait_for(300);
    server.child.kill().unwrap(); // SIGKILL, mid-stream
    server.child.wait().unwrap();
    let before_kill = acked.lock().unwrap().len();
    let server2 = start_server(dir.path(), "kill", 0, port, 8);
    let recovered = server2.ready["recovered"]["groups"].as_u64().unwrap();
    assert!(recovered as usize >= before_kill, "recovered {recovered} < {before_kill} acknowledged");
    wait_for(before_kill + 300);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(120), producer).await })
        .unwrap()
        .unwrap();
    drop(server2); // SIGKILL again: the final state must be recoverable too
    let rows = exported_group_rows(dir.path());
    let acked = acked.lock().unwrap().clone();
    for id in &acked {
        assert_eq!(rows.get(id), Some(&8), "acknowledged group {id} is present exactly once, whole");
    }
    // Nothing but what was sent is there (an unacknowledged in-flight append may or may not be).
    assert!(rows.keys().all(|&id| id < sent));
    assert!(rows.values().all(|&n| n == 8));
    eprintln!("acked {} groups ({} before the kill); store holds {}", acked.len(), before_kill, rows.len());
}

/// Whether the replay would accept this payload as an append (decided locally).
/// What the replay takes: a valid batch of whole groups of 4 whose token ids are inside the
/// default model's vocabulary.
fn locally_valid(payload: &[u8]) -> bool {
    trajectory::decode_ipc(payload).is_ok_and(|b| {
        trajectory::validate_batch(&b).is_ok_and(|spans| spans.iter().all(|s| s.rows.len() == 4))
            && trajectory::check_token_ids(&b, 49152).is_ok()
    })
}

#[test]
fn hostile_payloads_get_error_replies_and_the_service_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let port = sluice_core::free_local_port().unwrap();
    let mut server = start_server(dir.path(), "fuzz", 0, port, 4);
    let rt = runtime();
    let c = rt.block_on(client(&[port], "fuzz", Duration::from_secs(30)));
    let valid =
        trajectory::encode_ipc(&[groups_to_batch(&[group(1, 0, 4, 16), group(2, 0, 4, 16)]).unwrap()])
            .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut expected_ok = 0;
    let mut expected_err = 0;
    let mut wrong_answers = Vec::new();
    rt.block_on(async {
        for i in 0..3000u32 {
            let (op, payload) = match i % 6 {
                // Flipped bytes in a valid stream.
                0 | 1 => {
                    let mut p = valid.clone();
                    for _ in 0..rng.random_range(1..8) {
                        let at = rng.random_range(0..p.len());
                        p[at] ^= 1 << rng.random_range(0..8);
                    }
                    (Op::Append, p)
                }
                // Truncated.
                2 => (Op::Append, valid[..rng.random_range(0..valid.len())].to_vec()),
                // Random bytes.
                3 => {
                    let n = rng.random_range(0..4096);
                    (Op::Append, (0..n).map(|_| rng.random::<u8>()).collect())
                }
                // Garbage or wrong JSON for the JSON operations.
                4 => {
                    let op = [Op::Sample, Op::Ack, Op::Tickets][rng.random_range(0..3)];
                    let bodies = [
                        b"{}".to_vec(),
                        b"not json".to_vec(),
                        br#"{"sampler":{"kind":"bogus"},"groups":1}"#.to_vec(),
                        br#"{"sampler":{"kind":"reward","temperature":-1},"groups":1,"learner":{"epoch":0,"version":0},"max_staleness":0,"consumer":"x"}"#.to_vec(),
                        br#"{"worker":"w","want":"many","redeemed":0}"#.to_vec(),
                        (0..64).map(|_| rng.random::<u8>()).collect(),
                    ];
                    (op, bodies[rng.random_range(0..bodies.len())].clone())
                }
                // Valid Arrow, wrong schema (a column dropped).
                _ => {
                    let b = groups_to_batch(&[group(3, 0, 4, 4)]).unwrap();
                    let cols: Vec<usize> = (0..16).filter(|&c| c != rng.random_range(0..16)).collect();
                    (Op::Append, trajectory::encode_ipc(&[b.project(&cols).unwrap()]).unwrap())
                }
            };
            let should_pass = op == Op::Append && locally_valid(&payload);
            if should_pass {
                expected_ok += 1;
            } else {
                expected_err += 1;
            }
            match tokio::time::timeout(Duration::from_secs(60), c.request(0, op, payload)).await.unwrap() {
                Ok(_) if should_pass => {}
                Err(ReplayError::Invalid(_)) if !should_pass => {}
                other => wrong_answers.push(format!("request {i} ({op:?}): {:?}", other.map(|_| "ok"))),
            }
        }
        // 100 MB of garbage in one append: over replay.max_request_bytes, refused undecoded.
        let big: Vec<u8> = (0..100usize << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let r = tokio::time::timeout(Duration::from_secs(120), c.request(0, Op::Append, big)).await.unwrap();
        assert!(matches!(&r, Err(ReplayError::Invalid(m)) if m.contains("max_request_bytes")), "100 MB: {r:?}");
        expected_err += 1;

        // Well-formed but hostile requests, each refused with an error naming what is wrong. The
        // learner's real lineage first (a store that never heard from a learner takes any).
        let learner = sluice_core::Lineage::start(1).at(3);
        let req = |learner: sluice_core::Lineage, groups: u32, consumer: &str| SampleRequest {
            sampler: Sampler::Fifo,
            groups,
            learner,
            max_staleness: 1000,
            consumer: consumer.into(),
            drop_zero_variance: false,
            dedup: false,
            exclude: Vec::new(),
        };
        let drawn = c.sample(&req(learner.clone(), 2, "learner")).await.unwrap().group_ids();
        assert!(!drawn.is_empty());
        let refused = |what: &str, r: Result<Vec<u8>, ReplayError>, needle: &str| match r {
            Err(ReplayError::Invalid(m)) if m.contains(needle) => {}
            other => panic!("{what}: expected an error naming `{needle}`, got {other:?}"),
        };
        let json = |v: &SampleRequest| serde_json::to_vec(v).unwrap();
        let hostile: Vec<(&str, Op, Vec<u8>, &str)> = vec![
            ("learner version u64::MAX", Op::Sample, json(&req(learner.clone().at(u64::MAX), 1, "x")), "version 18446744073709551615 is more than 64 versions past version 3"),
            ("learner epoch u64::MAX", Op::Sample, json(&req(sluice_core::Lineage::start(u64::MAX), 1, "x")), "more than 64 epochs past epoch 1"),
            ("groups u32::MAX", Op::Sample, json(&req(learner.clone(), u32::MAX, "x")), "4294967295 groups"),
            (
                "an ack of the learner's groups",
                Op::Ack,
                serde_json::to_vec(&sluice_replay::AckRequest { consumer: "intruder".into(), group_ids: drawn.clone(), dropped: false }).unwrap(),
                "delivered to another consumer",
            ),
            ("a worker name of 1 MB", Op::Tickets, serde_json::to_vec(&serde_json::json!({"worker": "w".repeat(1 << 20), "want": 1, "redeemed": 0})).unwrap(), "worker name of 1048576 bytes"),
            ("a group of 3", Op::Append, trajectory::encode_ipc(&[groups_to_batch(&[group(90, 0, 3, 4)]).unwrap()]).unwrap(), "group 90 has 3 samples; the run's groups have 4"),
            ("token ids outside the vocabulary", Op::Append, {
                let mut g = group(91, 0, 4, 4);
                g.samples[2].completion_tokens[1] = 1 << 30;
                trajectory::encode_ipc(&[groups_to_batch(&[g]).unwrap()]).unwrap()
            }, "token id 1073741824 at 1; the model's vocabulary has 49152 ids"),
        ];
        for (what, op, payload, needle) in hostile {
            refused(what, c.request(0, op, payload).await, needle);
            expected_err += 1;
        }
        // None of it moved the learner's lineage or took the learner's groups.
        let stats = c.stats().await.unwrap().remove(0);
        assert_eq!((stats.learner_epoch, stats.learner_version, stats.fifo_leased), (1, 3, drawn.len() as u64));
        assert_eq!(stats.refused_acks, drawn.len() as u64);
        c.ack("learner", &drawn).await.unwrap();
    });
    assert!(
        wrong_answers.is_empty(),
        "{} wrong answers, e.g. {:?}",
        wrong_answers.len(),
        &wrong_answers[..wrong_answers.len().min(5)]
    );
    // Still alive, still serving, and it counted what it refused.
    assert!(server.child.try_wait().unwrap().is_none(), "the replay process died");
    let stats = rt.block_on(c.stats()).unwrap().remove(0);
    let refused_acks = 1; // one request, refused whole
    assert_eq!(
        stats.rejected_payloads + stats.rejected_batches + stats.rejected_requests + refused_acks,
        expected_err,
        "{stats:?}"
    );
    let ack = rt.block_on(c.append(&[group(77, 0, 4, 4)])).unwrap();
    assert_eq!(ack.new_groups, 1);
    eprintln!("{expected_err} hostile payloads refused, {expected_ok} valid mutations accepted");
}

#[test]
fn two_shards_split_appends_and_merge_samples_under_the_staleness_bound() {
    let dir = tempfile::tempdir().unwrap();
    let ports = [sluice_core::free_local_port().unwrap(), sluice_core::free_local_port().unwrap()];
    let _s0 = start_server(dir.path(), "two", 0, ports[0], 4);
    let _s1 = start_server(dir.path(), "two", 1, ports[1], 4);
    let rt = runtime();
    let c = rt.block_on(client(&ports, "two", Duration::from_secs(30)));
    rt.block_on(async {
        // 60 groups, versions 0..6 (10 each).
        for v in 0..6u64 {
            let gs: Vec<Group> = (v * 10..v * 10 + 10).map(|id| group(id, v, 4, 8)).collect();
            let ack = tokio::time::timeout(Duration::from_secs(60), c.append(&gs)).await.unwrap().unwrap();
            assert_eq!(ack.new_groups, 10);
        }
        let stats = c.stats().await.unwrap();
        assert_eq!(stats[0].groups + stats[1].groups, 60);
        assert!(stats[0].groups >= 15 && stats[1].groups >= 15, "both shards hold groups: {stats:?}");
        let req = |sampler, groups| SampleRequest {
            sampler,
            groups,
            learner: sluice_core::Lineage::default().at(5),
            max_staleness: 2,
            consumer: "learner".into(),
            drop_zero_variance: false,
            dedup: false,
            exclude: Vec::new(),
        };
        // Uniform, merged across shards: 12 distinct admissible groups (versions 3..5).
        let s = c.sample(&req(Sampler::Uniform, 12)).await.unwrap();
        let ids = s.group_ids();
        assert_eq!(ids.len(), 12);
        assert_eq!((s.info.groups, s.info.rows), (12, 48), "{:?}", s.info);
        assert_eq!(s.info.stale_skipped, 30, "each shard reports the stale groups it passed over");
        assert!(ids.iter().all(|&id| id >= 30), "{ids:?}");
        let on: HashMap<u32, usize> = ids.iter().fold(HashMap::new(), |mut m, &id| {
            *m.entry(sluice_replay::shard_of(id, 2)).or_default() += 1;
            m
        });
        assert_eq!(on.len(), 2, "both shards contributed: {on:?}");
        // All 10 on-policy groups (version 5), uniformly: the shards hold them unevenly, so the
        // one that fills its share of 5 is asked again for the rest, and must not repeat what it
        // drew.
        let held = (50..60u64).filter(|&id| sluice_replay::shard_of(id, 2) == 0).count();
        assert_ne!(held, 5, "an even split would not exercise the top-up");
        for _ in 0..5 {
            let all = SampleRequest { max_staleness: 0, ..req(Sampler::Uniform, 10) };
            let mut ids = c.sample(&all).await.unwrap().group_ids();
            ids.sort_unstable();
            assert_eq!(ids, (50..60).collect::<Vec<_>>(), "each on-policy group once");
        }
        // fifo drains exactly the 30 admissible groups once, across both shards.
        let mut seen = Vec::new();
        for _ in 0..5 {
            let s = c.sample(&req(Sampler::Fifo, 8)).await.unwrap();
            seen.extend(s.group_ids());
            c.ack("learner", &s.group_ids()).await.unwrap();
        }
        seen.sort_unstable();
        assert_eq!(seen, (30..60).collect::<Vec<_>>());
        // Admission goes through shard 0 and sees the learner's version.
        let t = c.tickets("w0", 1000).await.unwrap();
        assert_eq!(t.learner.version, 5);
    });
}

#[test]
fn exported_parquet_is_read_by_duckdb() {
    let Some(pydeps) = common::python_package("duckdb==1.4.2", "duckdb", "duckdb") else {
        common::skip("python3 with pip is not available to install duckdb");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let mut reward = 0.0;
    for s in 0..2u32 {
        let shard_dir = run.join("replay").join(format!("shard-{s}"));
        let shard = sluice_replay::Shard::open(
            &shard_dir,
            s,
            Default::default(),
            sluice_core::RlConfig { group_size: 4, ..Default::default() },
        )
        .unwrap();
        let gs: Vec<Group> = (0..20).map(|i| group(s as u64 * 1000 + i, 0, 4, 10 + i as usize)).collect();
        reward += gs.iter().flat_map(|g| &g.samples).map(|x| x.reward as f64).sum::<f64>();
        shard.append(&groups_to_batch(&gs).unwrap()).unwrap();
        shard.close();
    }
    let out = dir.path().join("export.parquet");
    let status = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["replay", "export", "--dir"])
        .arg(&run)
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let output = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/read_export.py"))
        .arg(&out)
        .env("PYTHONPATH", &pydeps)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let line = String::from_utf8(output.stdout).unwrap();
    let r: serde_json::Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    assert_eq!(r["reader"], "duckdb");
    assert_eq!(r["rows"], 160);
    assert_eq!(r["groups"], 40);
    // Completion lengths 10..30 per group, 4 samples each, on both shards.
    assert_eq!(r["tokens"], 2 * 4 * (10..30).sum::<u64>());
    assert_eq!(r["reward"].as_f64().unwrap(), reward);
    let cols: Vec<String> = serde_json::from_value(r["columns"].clone()).unwrap();
    let want: Vec<String> =
        trajectory::trajectory_schema().fields().iter().map(|f| f.name().to_string()).collect();
    assert_eq!(cols, want);
    // With SLUICE_EXPORT_PYTHON naming a python that has pandas and/or polars, every reader it
    // has must see the same file.
    if let Some(python) = std::env::var_os("SLUICE_EXPORT_PYTHON") {
        let output = Command::new(python)
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/read_export.py"))
            .arg(&out)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        for line in String::from_utf8(output.stdout).unwrap().lines() {
            eprintln!("{line}");
            let other: serde_json::Value = serde_json::from_str(line).unwrap();
            for key in ["rows", "groups", "tokens", "reward", "columns"] {
                assert_eq!(other[key], r[key], "{} disagrees with duckdb on {key}", other["reader"]);
            }
        }
    }
}

#[test]
fn export_writes_to_a_bare_file_name_in_the_current_directory() {
    // Before, `--out FILE.parquet` failed with ": No such file or directory" (the parent of a bare
    // name is "", which it tried to sync).
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let shard_dir = run.join("replay").join("shard-0");
    let rl = sluice_core::RlConfig { group_size: 4, ..Default::default() };
    let shard = sluice_replay::Shard::open(&shard_dir, 0, Default::default(), rl).unwrap();
    shard.append(&groups_to_batch(&[group(1, 0, 4, 3)]).unwrap()).unwrap();
    shard.close();
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["replay", "export", "--dir"])
        .arg(&run)
        .args(["--out", "bare.parquet"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let batches = sluice_replay::durable::read_parquet(&dir.path().join("bare.parquet")).unwrap();
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 4);
}

#[test]
fn export_with_text_decodes_prompts_and_completions_with_the_runs_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let tok = sluice_model::Tokenizer::char_level("abcdefghijklmnopqrstuvwxyz +=?").unwrap();
    std::fs::create_dir_all(run.join("tokenizer")).unwrap();
    tok.save(&run.join("tokenizer")).unwrap();
    let mut g = group(1, 0, 2, 3);
    for (i, s) in g.samples.iter_mut().enumerate() {
        s.prompt_tokens = tok.encode("what is a+a?", false).unwrap();
        s.completion_tokens = tok.encode(["two", "three"][i], false).unwrap();
        let n = s.completion_tokens.len();
        (s.loss_mask, s.behavior_logprobs, s.token_versions) = (vec![1; n], vec![-0.5; n], vec![0; n]);
    }
    let shard_dir = run.join("replay").join("shard-0");
    let rl = sluice_core::RlConfig { group_size: 2, ..Default::default() };
    let shard = sluice_replay::Shard::open(&shard_dir, 0, Default::default(), rl).unwrap();
    shard.append(&groups_to_batch(std::slice::from_ref(&g)).unwrap()).unwrap();
    shard.close();
    let export = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["replay", "export", "--dir"])
            .arg(&run)
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    let out = export(&["--out", "text.parquet", "--text"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let file = std::fs::File::open(dir.path().join("text.parquet")).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let batch = reader.map(|b| b.unwrap()).next().unwrap();
    let text = |name: &str| -> Vec<String> {
        let col = batch.column_by_name(name).unwrap_or_else(|| panic!("no column {name}"));
        let col = col.as_any().downcast_ref::<arrow_array::StringArray>().unwrap();
        col.iter().map(|v| v.unwrap_or_default().to_string()).collect()
    };
    let prompt = tok.decode(&g.samples[0].prompt_tokens, false).unwrap();
    assert_eq!(text("prompt_text"), vec![prompt.clone(), prompt]);
    assert_eq!(text("completion_text"), vec!["two", "three"]);
    // Every column of the trajectory schema is still there, before the two.
    let names: Vec<String> = batch.schema().fields().iter().map(|f| f.name().to_string()).collect();
    let want = trajectory::trajectory_schema().fields().len();
    assert_eq!(names.len(), want + 2);
    // Without a tokenizer to find, --text says where it looked.
    std::fs::remove_dir_all(run.join("tokenizer")).unwrap();
    let out = export(&["--out", "x.parquet", "--text"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("holds no tokenizer") && err.contains("--tokenizer"),
        "{err}"
    );
}
