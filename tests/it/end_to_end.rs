//! The whole product through its command line: `sluice replay`, `sluice learner` and
//! `sluice rollout` as separate processes talking zenoh on loopback, training a tiny random Llama
//! (char-level tokenizer) on `letters`, then `sluice eval` on its checkpoint.
// Blocking sleeps are right here: the test polls child processes from a plain thread.
#![allow(clippy::disallowed_methods)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use sluice_core::{free_local_port, metrics};
use sluice_model::{Cpu, Llama, ModelConfig, Tokenizer};

const ALPHABET: &str = "abcdefgh say:";

/// A random 2-layer Llama with a char-level tokenizer, saved as an HF directory.
pub(crate) fn tiny_model(dir: &Path) -> PathBuf {
    let tok = Tokenizer::char_level(ALPHABET).unwrap();
    let cfg = ModelConfig::tiny_llama(tok.vocab_size(), vec![1]);
    let path = dir.join("tiny");
    let model = Llama::<Cpu>::random(&cfg, 7, &Default::default());
    sluice_model::save_model(&model, &path).unwrap();
    tok.save(&path).unwrap();
    path
}

pub(crate) fn config(dir: &Path, model: &Path, steps: u64) -> PathBuf {
    let text = format!(
        r#"
[run]
name = "e2e"
dir = "{run}"
seed = 1

[model]
path = "{model}"

[[envs]]
name = "letters"
alphabet = "abcdefgh"
# Two letters, the first asked for: the held-out prompts are new pairs of letters training asks
# for, so the eval measures what was learned rather than what was seen.
distractor = true

[rl]
group_size = 8
groups_per_step = 4
max_staleness = 1
temperature = 1.0
max_completion_tokens = 2

[learner]
total_steps = {steps}
checkpoint_every = 10
log_entropy = true
# Every group is trained on, so the step's mean reward is the policy's (dynamic sampling would
# drop the all-correct groups a good policy makes).
drop_zero_variance = false

[learner.schedule]
# At 0.005 some runs collapsed to a deterministic policy (entropy ~0, every group all right or all
# wrong) part-way, and Adam's momentum then moved it without a gradient; 0.003 learned in 9 of 9.
lr = 0.003

[learner.optimizer]
weight_decay = 0.0

[rollout]
tasks_per_batch = 4
max_new_tokens = 2
chat_template = false

[rollout.curriculum]
kind = "fixed"
weights = [1.0]

[eval]
n = 64
"#,
        run = dir.join("run").display(),
        model = model.display(),
    );
    let path = dir.join("run.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A child process killed when dropped, its output in `{dir}/{name}.log`.
pub(crate) struct Proc {
    pub(crate) child: Child,
    pub(crate) name: String,
    log: PathBuf,
}

impl Proc {
    pub(crate) fn start(dir: &Path, name: &str, args: &[&str]) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("SLUICE_TEST_LOG")
                    .unwrap_or_else(|_| "sluice=info,sluice_learner=info,sluice_rollout=info,warn".into()),
            )
            .env("RUST_BACKTRACE", "0")
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Proc { child, name: name.into(), log }
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the process to exit by itself; panics with its log after `limit`.
    pub(crate) fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let t0 = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if t0.elapsed() > limit {
                let dir = self.log.parent().unwrap();
                let mut all = String::new();
                for e in std::fs::read_dir(dir).unwrap().flatten() {
                    if e.path().extension().is_some_and(|x| x == "log") {
                        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                        all += &format!("--- {}\n{text}\n", e.path().display());
                    }
                }
                panic!("{} did not exit within {limit:?}; the logs:\n{all}", self.name);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until its log contains `needle`.
    pub(crate) fn wait_for(&mut self, needle: &str, limit: Duration) {
        let t0 = Instant::now();
        while !self.log().contains(needle) {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("{} exited ({status}) before printing {needle:?}:\n{}", self.name, self.log());
            }
            assert!(t0.elapsed() < limit, "{} never printed {needle:?}:\n{}", self.name, self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn records(run: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap_or_default();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

pub(crate) fn learner_steps(recs: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    recs.iter().filter(|r| r["role"] == "learner" && r.get("event").is_none()).collect()
}

fn eval(model: &Path, cfg: &Path) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["eval", "--model"])
        .arg(model)
        // The held-out split: pairs of letters the run never trained on.
        .args(["--env", "letters", "--samples", "1", "--split", "held-out", "--config"])
        .arg(cfg)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "eval failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let json = stdout.lines().find(|l| l.starts_with('{')).expect("a JSON line");
    eprintln!("{}", stdout.lines().last().unwrap_or_default());
    serde_json::from_str(json).unwrap()
}

#[test]
fn a_tiny_model_learns_through_replay_learner_and_rollout_processes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = tiny_model(d);
    let steps = 500;
    let cfg = config(d, &model, steps);
    let cfg_s = cfg.to_str().unwrap();
    let (replay_ep, learner_ep) = endpoints();

    let mut replay = Proc::start(d, "replay", &["replay", cfg_s, "--listen", &replay_ep]);
    replay.wait_for("\"ready\"", Duration::from_secs(60));
    let mut learner =
        Proc::start(d, "learner", &["learner", cfg_s, "--listen", &learner_ep, "--connect", &replay_ep]);
    let mut rollout = Proc::start(
        d,
        "rollout",
        &["rollout", cfg_s, "--name", "a", "--connect", &replay_ep, "--connect", &learner_ep],
    );
    let status = learner.wait(Duration::from_secs(90));
    assert!(status.success(), "learner failed:\n{}", learner.log());
    // The learner's `done` ends the other roles, the worker too when its last append is in flight
    // to a replay that has just exited (it does not retry a vanished shard for a minute).
    assert!(rollout.wait(Duration::from_secs(20)).success(), "rollout:\n{}", rollout.log());
    assert!(replay.wait(Duration::from_secs(30)).success(), "replay:\n{}", replay.log());

    let run = d.join("run");
    let recs = records(&run);
    let steps_recs = learner_steps(&recs);
    assert_eq!(steps_recs.len() as u64, steps, "one record per learner step");
    let rewards: Vec<f64> = steps_recs.iter().map(|r| r[metrics::REWARD_MEAN].as_f64().unwrap()).collect();
    let first = rewards[..5].iter().sum::<f64>() / 5.0;
    let last = rewards[rewards.len() - 5..].iter().sum::<f64>() / 5.0;
    eprintln!("mean reward: first 5 steps {first:.3}, last 5 steps {last:.3}");
    // For a look at a run's curves: SLUICE_TEST_KEEP=FILE keeps its metrics.jsonl.
    if let Ok(keep) = std::env::var("SLUICE_TEST_KEEP") {
        let _ = std::fs::copy(run.join("metrics.jsonl"), keep);
    }
    assert!(last > first + 0.3, "no learning through the processes: {rewards:?}");
    let wall: Vec<f64> = steps_recs.iter().map(|r| r[metrics::WALL_S].as_f64().unwrap()).collect();
    assert!(wall[0] > 0.0 && wall.windows(2).all(|w| w[0] <= w[1]), "time/wall_s runs forward: {wall:?}");
    assert!(
        recs.iter().any(|r| r["event"] == "worker_joined" && r["worker"] == "a"),
        "the learner saw the worker join"
    );
    let reports: Vec<_> = recs.iter().filter(|r| r["role"] == "rollout" && r["worker"] == "a").collect();
    assert!(!reports.is_empty(), "rollout reports reach metrics.jsonl");
    assert!(reports.last().unwrap()["rollout/samples"].as_f64().unwrap() > 0.0);
    // The same numbers in TensorBoard's format.
    let tb = std::fs::read_dir(run.join("tensorboard")).unwrap().next().unwrap().unwrap().path();
    let scalars = sluice::tensorboard::read_scalars(&tb).unwrap();
    let tb_rewards: Vec<f32> =
        scalars.iter().filter(|(_, t, _)| t == metrics::REWARD_MEAN).map(|(_, _, v)| *v).collect();
    assert_eq!(tb_rewards.len() as u64, steps);
    assert!((tb_rewards[0] as f64 - rewards[0]).abs() < 1e-6);
    // The resolved config was written, and the final checkpoint loads as a policy in `sluice eval`.
    assert!(run.join("config.toml").is_file());
    let ckpt = run.join("checkpoints").join(format!("step-{steps:08}"));
    assert!(ckpt.join("tokenizer.json").is_file(), "{}", ckpt.display());
    // The charts of the run.
    let out = Command::new(env!("CARGO_BIN_EXE_sluice")).arg("plot").arg(&run).output().unwrap();
    assert!(out.status.success(), "plot: {}", String::from_utf8_lossy(&out.stderr));
    for chart in ["reward", "accuracy", "losses", "staleness", "throughput", "rollout"] {
        let png = std::fs::read(run.join(format!("plots/{chart}.png"))).unwrap();
        assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{chart}.png");
    }
    let before = eval(&model, &cfg);
    let after = eval(&ckpt, &cfg);
    assert!(
        after["accuracy"].as_f64().unwrap() > before["accuracy"].as_f64().unwrap() + 0.2,
        "eval before {before} after {after}"
    );
}

/// Every group the run's replay holds, by id, read back through `sluice_replay::export` (a parquet
/// file written into `scratch`).
fn exported(run: &Path, scratch: &Path) -> std::collections::HashMap<u64, sluice_core::Group> {
    let out = scratch.join("export.parquet");
    sluice_replay::export(run, &out).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(&out).unwrap(),
    )
    .unwrap()
    .build()
    .unwrap();
    let mut stored = std::collections::HashMap::new();
    for batch in reader {
        for g in sluice_core::trajectory::batch_to_groups(&batch.unwrap()).unwrap() {
            stored.insert(g.group_id, g);
        }
    }
    stored
}

/// Loopback endpoints for a replay and a learner process, on free ports.
fn endpoints() -> (String, String) {
    let (p_replay, p_learner) = (free_local_port().unwrap(), free_local_port().unwrap());
    (format!("tcp/127.0.0.1:{p_replay}"), format!("tcp/127.0.0.1:{p_learner}"))
}

pub(crate) fn wait_until(
    what: &str,
    limit: Duration,
    mut done: impl FnMut() -> bool,
    procs: &mut [&mut Proc],
) {
    let t0 = Instant::now();
    while !done() {
        for p in procs.iter_mut() {
            if let Some(status) = p.child.try_wait().unwrap() {
                panic!("{} exited ({status}) while waiting for {what}:\n{}", p.name, p.log());
            }
        }
        assert!(t0.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub(crate) fn last_step(run: &Path) -> u64 {
    learner_steps(&records(run)).last().map_or(0, |r| r["step"].as_u64().unwrap())
}

fn kill(p: &mut Proc) {
    // SIGKILL: no flush, no checkpoint, no goodbye.
    p.child.kill().unwrap();
    p.child.wait().unwrap();
}

#[test]
fn killed_rollout_replay_and_learner_processes_lose_no_acknowledged_group() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = tiny_model(d);
    let steps = 60;
    let cfg = config(d, &model, steps);
    // Redeliver what a dead learner held after 3 s.
    let text = std::fs::read_to_string(&cfg).unwrap() + "\n[replay]\nfifo_lease_ms = 3000\n";
    std::fs::write(&cfg, text).unwrap();
    let cfg_s = cfg.to_str().unwrap();
    let run = d.join("run");
    let (replay_ep, learner_ep) = endpoints();
    let replay_args = ["replay", cfg_s, "--listen", &replay_ep];
    let learner_args = ["learner", cfg_s, "--listen", &learner_ep, "--connect", &replay_ep];
    let rollout = |name: &str| {
        let log = d.join(format!("appended-{name}.jsonl"));
        let log = log.to_str().unwrap().to_string();
        let args = [
            "rollout",
            cfg_s,
            "--name",
            name,
            "--append-log",
            &log,
            "--connect",
            &replay_ep,
            "--connect",
            &learner_ep,
        ];
        Proc::start(d, &format!("rollout-{name}"), &args)
    };

    let mut replay = Proc::start(d, "replay", &replay_args);
    replay.wait_for("\"ready\"", Duration::from_secs(60));
    let mut learner = Proc::start(d, "learner", &learner_args);
    let mut a = rollout("a");
    let mut b = rollout("b");

    // A rollout worker dies mid-run; a new one joins.
    wait_until("step 10", Duration::from_secs(120), || last_step(&run) >= 10, &mut [&mut learner, &mut b]);
    kill(&mut a);
    let mut c = rollout("c");
    // The replay dies and comes back on its directory.
    wait_until("step 20", Duration::from_secs(120), || last_step(&run) >= 20, &mut [&mut learner, &mut b]);
    kill(&mut replay);
    std::thread::sleep(Duration::from_millis(500));
    let mut replay = Proc::start(d, "replay-2", &replay_args);
    replay.wait_for("\"ready\"", Duration::from_secs(60));
    // The learner dies past its step-30 checkpoint and resumes from it.
    let ckpt30 = run.join("checkpoints/step-00000030");
    wait_until(
        "the step-30 checkpoint and two steps more",
        Duration::from_secs(120),
        || ckpt30.is_dir() && last_step(&run) >= 32,
        &mut [&mut learner, &mut b, &mut c],
    );
    kill(&mut learner);
    let mut learner = Proc::start(d, "learner-2", &learner_args);
    let status = learner.wait(Duration::from_secs(240));
    assert!(status.success(), "the resumed learner failed:\n{}", learner.log());
    assert!(
        learner.log().contains("resuming from the checkpoint of step 30"),
        "the learner did not resume from its checkpoint:\n{}",
        learner.log()
    );
    for p in [&mut b, &mut c, &mut replay] {
        assert!(p.wait(Duration::from_secs(60)).success(), "{}:\n{}", p.name, p.log());
    }

    // The version continues from the checkpoint, and the record keeps one row per step of the
    // lineage that counts: the steps the killed learner took past its checkpoint are moved
    // aside, the resumed learner's first step is 31, and the wall clock runs on. The run ends at
    // its step count having trained exactly steps x groups_per_step groups.
    let recs = records(&run);
    let rows = learner_steps(&recs);
    let steps_seen: Vec<u64> = rows.iter().map(|r| r["step"].as_u64().unwrap()).collect();
    assert_eq!(steps_seen, (1..=steps).collect::<Vec<_>>(), "one row per step");
    let wall: Vec<f64> = rows.iter().map(|r| r[metrics::WALL_S].as_f64().unwrap()).collect();
    assert!(wall.windows(2).all(|w| w[0] <= w[1]), "time/wall_s runs forward across the resume: {wall:?}");
    let aside = std::fs::read_to_string(run.join("metrics.orphaned.jsonl")).unwrap();
    let orphaned: Vec<u64> = aside
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r["role"] == "learner" && r.get("event").is_none())
        .filter_map(|r| r["step"].as_u64())
        .collect();
    assert!(orphaned.contains(&31) && orphaned.contains(&32), "moved aside: {orphaned:?}");
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.join(format!("checkpoints/step-{steps:08}/trainer.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!((state["step"].as_u64(), state["version"].as_u64()), (Some(steps), Some(steps)));
    assert_eq!(state["groups_consumed"].as_u64(), Some(steps * 4));
    assert!(recs.iter().any(|r| r["event"] == "worker_joined" && r["worker"] == "c"));

    // Every group the replay acknowledged to a worker, including the killed one, is in the store,
    // but those sampled by the versions the resume orphaned (31 and 32 of the first learner
    // start), which the replay drops when the resumed learner's lineage reaches it.
    let resumed = sluice_core::Lineage::start(1).at(30).fork(2);
    let mut acked = std::collections::BTreeSet::new();
    let mut orphaned = std::collections::BTreeSet::new();
    for name in ["a", "b", "c"] {
        let text = std::fs::read_to_string(d.join(format!("appended-{name}.jsonl"))).unwrap_or_default();
        for line in text.lines().filter(|l| l.ends_with('}')) {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let ids = v["group_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap());
            for (id, b) in ids.zip(v["behavior"].as_array().unwrap()) {
                let b = sluice_core::PolicyId::new(b[0].as_u64().unwrap(), b[1].as_u64().unwrap());
                acked.insert(id);
                if resumed.orphans(b) {
                    orphaned.insert(id);
                }
            }
        }
    }
    let stored: std::collections::BTreeSet<u64> = exported(&run, d).into_keys().collect();
    let groups = stored.len();
    let lost: Vec<_> = acked.difference(&stored).filter(|id| !orphaned.contains(id)).collect();
    eprintln!(
        "{} groups acknowledged to workers ({} of orphaned versions), {groups} stored, lost {}",
        acked.len(),
        orphaned.len(),
        lost.len()
    );
    assert!(orphaned.iter().all(|id| !stored.contains(id)), "the replay kept groups of orphaned versions");
    assert!(acked.len() as u64 >= steps * 4, "the workers' append logs are incomplete");
    assert!(lost.is_empty(), "acknowledged groups missing from the replay: {lost:?}");
}

/// The model of version `version` (of the lineage whose checkpoints are under `run`): the initial
/// model for version 0, else the checkpoint of that step (one version per step here).
fn model_at(
    cache: &mut std::collections::HashMap<u64, Llama<Cpu>>,
    initial: &Path,
    run: &Path,
    version: u64,
) -> Llama<Cpu> {
    cache
        .entry(version)
        .or_insert_with(|| {
            let path = match version {
                0 => initial.to_path_buf(),
                v => run.join(format!("checkpoints/step-{v:08}")),
            };
            sluice_model::Policy::<Cpu>::load(&path, &Default::default()).unwrap().model
        })
        .clone()
}

/// Log-probs of `completion` after `prompt` under `model` at temperature 1.
fn rescored(model: &Llama<Cpu>, prompt: &[u32], completion: &[u32]) -> Vec<f32> {
    let rows = [sluice_model::ScoreRow { prompt, completion }];
    sluice_model::to_vec_f32(sluice_model::score(model, &rows, 1.0, false).unwrap().logprobs)
}

#[test]
fn a_learner_resumed_behind_its_published_versions_trains_only_on_samples_of_its_lineage() {
    // Two workers run throughout. The learner publishes versions 1..8 and more, dies, and its
    // checkpoints past step 5 are set aside (as if it had died before writing them): it resumes
    // at version 5 as run epoch 2. Versions 6.. of epoch 1 are orphaned. Every group trained after
    // the resume must come from the resumed lineage within the staleness bound, and every token's
    // log-prob must be what the checkpoint of the version that sampled it gives (weights are
    // published as f32, so the rollout's weights are the checkpoint's bit for bit). Before
    // lineages the resumed learner trained on the orphaned versions' groups as fresh data (their
    // staleness clamped to 0), and its workers kept sampling with orphaned weights.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = tiny_model(d);
    let steps = 16;
    let cfg = config(d, &model, steps);
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "checkpoint_every = 10",
        "checkpoint_every = 1\nkeep_checkpoints = 100\nlog_trained_groups = true",
    ) + "\n[weights]\ntransfer_dtype = \"f32\"\n";
    std::fs::write(&cfg, text).unwrap();
    let cfg_s = cfg.to_str().unwrap();
    let run = d.join("run");
    let (replay_ep, learner_ep) = endpoints();
    let learner_args = ["learner", cfg_s, "--listen", &learner_ep, "--connect", &replay_ep];
    let rollout = |name: &str| {
        let args = ["rollout", cfg_s, "--name", name, "--connect", &replay_ep, "--connect", &learner_ep];
        Proc::start(d, &format!("rollout-{name}"), &args)
    };
    let mut replay = Proc::start(d, "replay", &["replay", cfg_s, "--listen", &replay_ep]);
    replay.wait_for("\"ready\"", Duration::from_secs(60));
    let mut learner = Proc::start(d, "learner", &learner_args);
    let mut a = rollout("a");
    let mut b = rollout("b");
    let ckpt8 = run.join("checkpoints/step-00000008");
    wait_until(
        "version 8",
        Duration::from_secs(120),
        || ckpt8.is_dir() && last_step(&run) >= 8,
        &mut [&mut learner, &mut a, &mut b],
    );
    kill(&mut learner);
    let aside = d.join("orphaned-checkpoints");
    std::fs::create_dir_all(&aside).unwrap();
    let mut orphaned_versions = Vec::new();
    for e in std::fs::read_dir(run.join("checkpoints")).unwrap().flatten() {
        let name = e.file_name().into_string().unwrap();
        if let Some(step) = name.strip_prefix("step-").and_then(|s| s.parse::<u64>().ok()) {
            if step > 5 {
                std::fs::rename(e.path(), aside.join(&name)).unwrap();
                orphaned_versions.push(step);
            }
        }
    }
    assert!(orphaned_versions.len() >= 3, "versions 6, 7 and 8 were published: {orphaned_versions:?}");
    let mut learner = Proc::start(d, "learner-2", &learner_args);
    assert!(
        learner.wait(Duration::from_secs(240)).success(),
        "the resumed learner failed:\n{}",
        learner.log()
    );
    let log = learner.log();
    assert!(
        log.contains("resuming from the checkpoint of step 5") && log.contains("as run epoch 2"),
        "{log}"
    );
    for p in [&mut a, &mut b, &mut replay] {
        assert!(p.wait(Duration::from_secs(60)).success(), "{}:\n{}", p.name, p.log());
    }

    // What the orphaned versions sampled was stopped: dropped by the replay when the resumed
    // learner's lineage reached it, refused when appended later, or dropped by the learner.
    let stopped: serde_json::Value = replay
        .log()
        .lines()
        .find(|l| l.contains("\"stopped\""))
        .map(|l| serde_json::from_str(l).unwrap())
        .unwrap();
    let evicted = stopped["stats"][0]["evicted_orphaned"].as_u64().unwrap();
    let recs = records(&run);
    let dropped: f64 =
        learner_steps(&recs).iter().filter_map(|r| r[metrics::ORPHANED_DROPPED].as_f64()).sum();
    eprintln!("orphaned groups: {evicted} dropped or refused by the replay, {dropped} by the learner");
    assert!(evicted as f64 + dropped > 0.0, "no group of an orphaned version ever reached the replay");
    assert_eq!(stopped["stats"][0]["learner_epoch"].as_u64(), Some(2));

    // Every group the resumed learner trained on, checked against the weights that sampled it.
    let lineage = sluice_core::Lineage::start(1).at(5).fork(2);
    let trained: Vec<serde_json::Value> = std::fs::read_to_string(run.join("trained.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|r: &serde_json::Value| r["epoch"] == 2)
        .collect();
    let steps_after: Vec<u64> = trained.iter().map(|r| r["step"].as_u64().unwrap()).collect();
    assert_eq!(steps_after, (6..=steps).collect::<Vec<_>>(), "one line per step of the resumed lineage");
    let stored = exported(&run, d);
    let mut models = std::collections::HashMap::new();
    let (mut tokens, mut worst) = (0usize, 0f32);
    for rec in &trained {
        let learner_version = rec["version"].as_u64().unwrap();
        let at = lineage.clone().at(learner_version);
        for g in rec["groups"].as_array().unwrap() {
            let [gid, epoch, version] = [0, 1, 2].map(|i| g[i].as_u64().unwrap());
            let behavior = sluice_core::PolicyId::new(epoch, version);
            let distance = at.distance(behavior);
            assert!(
                distance.is_some_and(|d| d <= 1),
                "step {} trained group {gid} of {behavior} at {}: off the lineage or stale",
                rec["step"],
                at.now()
            );
            let group = stored.get(&gid).unwrap_or_else(|| panic!("group {gid} is not in the replay"));
            for s in &group.samples {
                assert_eq!(s.behavior_epoch, epoch);
                let mut versions: Vec<u64> = s.token_versions.clone();
                versions.sort_unstable();
                versions.dedup();
                for v in versions {
                    let m = model_at(&mut models, &model, &run, v);
                    let lp = rescored(&m, &s.prompt_tokens, &s.completion_tokens);
                    for i in (0..lp.len()).filter(|&i| s.token_versions[i] == v && s.loss_mask[i] == 1) {
                        worst = worst.max((lp[i] - s.behavior_logprobs[i]).abs());
                        tokens += 1;
                    }
                }
            }
        }
    }
    eprintln!(
        "{tokens} tokens checked against their versions' checkpoints; largest log-prob gap {worst:.2e}"
    );
    assert!(tokens > 0);
    assert!(worst < 1e-3, "a token's log-prob is not its version's: gap {worst}");
    // The check tells versions apart: the orphaned version 8 gives other log-probs than 5.
    let five = model_at(&mut models, &model, &run, 5);
    let eight =
        sluice_model::Policy::<Cpu>::load(&aside.join("step-00000008"), &Default::default()).unwrap().model;
    let s = &stored.values().next().unwrap().samples[0];
    let gap = rescored(&five, &s.prompt_tokens, &s.completion_tokens)
        .iter()
        .zip(rescored(&eight, &s.prompt_tokens, &s.completion_tokens))
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(gap > 1e-2, "versions 5 and 8 give log-probs within {gap}: the check could not tell them apart");
}
