//! A Python environment served with the SDK in `envs/python` (the `letters` example, a separate
//! process talking zenoh) and a Rust rollout worker plus learner training a tiny model against it.
//! Skipped, with the reason printed, only when python3 with pip is missing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use burn::module::AutodiffModule;
use sluice_core::{free_local_port, metrics, Finish, RlConfig, ZenohOptions};
use sluice_envs::RemoteEnv;
use sluice_learner::{AdamW, AdamWConfig, KlConfig, LearnerConfig, Schedule, Trainer};
use sluice_model::{CpuAutodiff, Llama, ModelConfig, Tokenizer};
use sluice_rollout::{CurriculumConfig, FixedWeights, Job, Judge, RolloutConfig, Runner, Versioned};

use crate::common;

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const ALPHABET: &str = "abcde say:<no>";

/// The Python `letters` example served for run `py`, connected to `ep`.
fn letters_env(ep: &str, pydeps: &Path) -> KillOnDrop {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("envs/python/examples/letters.py");
    KillOnDrop(
        Command::new("python3")
            .arg(&script)
            .args(["--run", "py", "--connect", ep])
            .env("PYTHONPATH", pydeps)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// `tests/python/unruly_letters.py --mode MODE` for run `py`, connected to `ep`; its stdout and
/// stderr go to `dir/{tag}.out` and `dir/{tag}.err`.
fn unruly_env(dir: &Path, ep: &str, pydeps: &Path, mode: &str, tag: &str) -> KillOnDrop {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/unruly_letters.py");
    let file = |ext: &str| std::fs::File::create(dir.join(format!("{tag}.{ext}"))).unwrap();
    KillOnDrop(
        Command::new("python3")
            .arg(&script)
            .args(["--run", "py", "--connect", ep, "--mode", mode])
            .env("PYTHONPATH", pydeps)
            .stdout(file("out"))
            .stderr(file("err"))
            .spawn()
            .unwrap(),
    )
}

fn read(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The learner's records of `metrics.jsonl` in `run`, summed over steps for `key`.
fn learner_total(run: &Path, key: &str) -> f64 {
    read(run.join("metrics.jsonl"))
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r["role"] == "learner")
        .filter_map(|r| r[key].as_f64())
        .sum()
}

/// The environment failures the rollout workers reported last, all kinds together.
fn worker_failures(run: &Path) -> f64 {
    let mut last = std::collections::BTreeMap::new();
    for r in read(run.join("metrics.jsonl"))
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
    {
        if r["role"] == "rollout" {
            let n: f64 = ["rollout/env_timeouts", "rollout/env_panics", "rollout/env_errors"]
                .iter()
                .filter_map(|k| r[*k].as_f64())
                .sum();
            last.insert(r["worker"].as_str().unwrap_or("").to_string(), n);
        }
    }
    last.values().sum()
}

fn model_config(vocab: usize) -> ModelConfig {
    ModelConfig::tiny_llama(vocab, vec![])
}

#[test]
fn a_rust_learner_trains_against_a_python_environment_served_over_zenoh() {
    let Some(pydeps) = common::python_package("eclipse-zenoh==1.10.2", "zenoh", "zenoh-1.10.2") else {
        common::skip("python3 with pip is not available to install eclipse-zenoh");
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(300), async {
            let ep = format!("tcp/127.0.0.1:{}", free_local_port().unwrap());
            let session = ZenohOptions::listen_on(ep.clone()).open().await.unwrap();
            let _env_process = letters_env(&ep, &pydeps);
            let remote = RemoteEnv::new(session.clone(), "py", "letters", Duration::from_secs(10)).unwrap();
            remote.wait_until_served(Duration::from_secs(60)).await.expect("the python env never answered");

            let tok = Tokenizer::char_level(ALPHABET).unwrap();
            let g = 8;
            let rl = RlConfig {
                group_size: g,
                groups_per_step: 4,
                max_staleness: 0,
                temperature: 1.0,
                max_completion_tokens: 16,
            };
            let rollout = RolloutConfig {
                tasks_per_batch: 4,
                max_new_tokens: 2,
                max_turns: 2,
                chat_template: false,
                curriculum: CurriculumConfig::Fixed { weights: vec![1.0] },
                seed: 3,
                ..Default::default()
            };
            let mut runner = Runner::new("py", "w0", rollout, rl, tok.clone(), Vec::new()).unwrap();
            let learner = LearnerConfig {
                kl: KlConfig { beta: 0.0, ..Default::default() },
                schedule: Schedule::constant(2e-2),
                optimizer: AdamWConfig { weight_decay: 0.0, ..Default::default() },
                checkpoint_every: 0,
                ..Default::default()
            };
            let model =
                Llama::<CpuAutodiff>::random(&model_config(tok.vocab_size()), 11, &Default::default());
            let mut trainer = Trainer::new(learner, rl, model, None, AdamW::new(Default::default())).unwrap();
            let env: Arc<RemoteEnv> = Arc::new(remote.clone());
            let mut tasks = remote.tasks();

            let mut rewards = Vec::new();
            for step in 0..30 {
                let jobs: Vec<Job> = (0..4)
                    .map(|_| Job {
                        task: sluice_core::TaskSource::next_task(&mut tasks)
                            .expect("the python env gives tasks"),
                        judge: Judge::Env(env.clone()),
                        stop_strings: vec![],
                    })
                    .collect();
                let mut policy =
                    Versioned { model: trainer.model().valid(), version: trainer.version(), epoch: 0 };
                let groups = runner.run(&mut policy, &mut FixedWeights, &jobs).await.unwrap();
                for s in groups.iter().flat_map(|g| &g.samples) {
                    assert_eq!(s.finish, Finish::EnvDone, "the python env ends every episode");
                    assert!(s.num_turns == 1 || s.num_turns == 2);
                    // A second try follows the `<no>` observation, which is not trained on.
                    if s.num_turns == 2 {
                        let no = tok.encode("<no>", false).unwrap();
                        assert_eq!(&s.completion_tokens[2..6], no.as_slice());
                        assert_eq!(&s.loss_mask[2..6], &[0, 0, 0, 0]);
                    }
                    assert!([0.0, 0.5, 1.0].contains(&s.reward), "reward {}", s.reward);
                }
                let stats = trainer.train(&groups).unwrap();
                rewards.push(stats.get(metrics::REWARD_MEAN).unwrap());
                assert_eq!(trainer.version(), step + 1);
            }
            let first: f64 = rewards[..5].iter().sum::<f64>() / 5.0;
            let last: f64 = rewards[rewards.len() - 5..].iter().sum::<f64>() / 5.0;
            eprintln!("mean reward: first 5 steps {first:.3}, last 5 steps {last:.3}");
            assert!(last > first + 0.2, "no learning against the python env: {rewards:?}");
            assert_eq!(runner.failures().snapshot(), (0, 0, 0));
        })
        .await
        .unwrap();
    });
}

#[test]
fn python_episode_ids_are_unguessable_and_abandoned_episodes_expire() {
    // Before, the SDK's ids were `{task id}-{counter}` and an episode whose worker died stayed open.
    let Some(pydeps) = common::python_package("eclipse-zenoh==1.10.2", "zenoh", "zenoh-1.10.2") else {
        common::skip("python3 with pip is not available to install eclipse-zenoh");
        return;
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/episode_ids.py");
    let ep = format!("tcp/127.0.0.1:{}", free_local_port().unwrap());
    let out = Command::new("python3").arg(&script).arg(&ep).env("PYTHONPATH", &pydeps).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim() == "ok",
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A tiny random model over [`ALPHABET`] saved as an HF directory, and a `sluice run` config that
/// trains it `steps` steps against the remote environment `env` (waited for up to `wait_s`).
fn remote_run(dir: &Path, env: &str, wait_s: f64, steps: u64) -> std::path::PathBuf {
    let tok = Tokenizer::char_level(ALPHABET).unwrap();
    let model_dir = dir.join("tiny");
    let model = Llama::<sluice_model::Cpu>::random(&model_config(tok.vocab_size()), 7, &Default::default());
    sluice_model::save_model(&model, &model_dir).unwrap();
    tok.save(&model_dir).unwrap();
    let text = format!(
        r#"
[run]
name = "py"
dir = "{run}"

[model]
path = "{model}"

[[envs]]
name = "remote"
env = "{env}"
wait_s = {wait_s}

[rl]
group_size = 4
groups_per_step = 2
max_staleness = 1
temperature = 1.0
max_completion_tokens = 16

[learner]
total_steps = {steps}

[rollout]
tasks_per_batch = 2
max_new_tokens = 2
max_turns = 2
chat_template = false
env_timeout_s = 5.0

[rollout.curriculum]
kind = "fixed"
weights = [1.0]
"#,
        run = dir.join("run").display(),
        model = model_dir.display(),
    );
    let path = dir.join("run.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `sluice run CONFIG --listen EP`, its output in `dir/run.log`.
fn sluice_run(dir: &Path, config: &Path, ep: &str) -> KillOnDrop {
    let log = std::fs::File::create(dir.join("run.log")).unwrap();
    KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("run")
            .arg(config)
            .args(["--listen", ep])
            .env("RUST_LOG", "sluice=info,sluice_envs=info,sluice_rollout=info,warn")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

/// Waits up to `limit` for `child` to exit (a plain test thread: blocking sleeps are right).
#[allow(clippy::disallowed_methods)]
fn exit_within(child: &mut KillOnDrop, limit: Duration) -> Option<std::process::ExitStatus> {
    let t0 = std::time::Instant::now();
    while t0.elapsed() < limit {
        if let Some(status) = child.0.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

#[test]
fn a_run_whose_environment_nobody_serves_stops_with_its_name() {
    // Before, the worker read the failed `task` query as an exhausted source and stopped, and the
    // learner waited for data for good: no step, no error, no exit.
    let dir = tempfile::tempdir().unwrap();
    let cfg = remote_run(dir.path(), "ghost", 3.0, 3);
    let ep = format!("tcp/127.0.0.1:{}", free_local_port().unwrap());
    let mut run = sluice_run(dir.path(), &cfg, &ep);
    let status = exit_within(&mut run, Duration::from_secs(90));
    let log = std::fs::read_to_string(dir.path().join("run.log")).unwrap();
    let status = status.unwrap_or_else(|| panic!("the run did not stop:\n{log}"));
    assert!(!status.success(), "the run succeeded:\n{log}");
    assert!(log.contains("environment `ghost`: nobody answered sluice/py/env/ghost/task for 3s"), "{log}");
    assert!(log.contains("waiting for environment `ghost`"), "it said it was waiting:\n{log}");
}

#[test]
#[allow(clippy::disallowed_methods)] // a plain test thread: blocking sleeps are right
fn a_python_environment_started_after_the_run_is_waited_for_and_used() {
    let Some(pydeps) = common::python_package("eclipse-zenoh==1.10.2", "zenoh", "zenoh-1.10.2") else {
        common::skip("python3 with pip is not available to install eclipse-zenoh");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = remote_run(dir.path(), "letters", 120.0, 4);
    let ep = format!("tcp/127.0.0.1:{}", free_local_port().unwrap());
    let mut run = sluice_run(dir.path(), &cfg, &ep);
    // The order the docs' example invites: the run first, the environment 10 s later.
    std::thread::sleep(Duration::from_secs(10));
    let _env_process = letters_env(&ep, &pydeps);
    let status = exit_within(&mut run, Duration::from_secs(180));
    let log = std::fs::read_to_string(dir.path().join("run.log")).unwrap();
    let status = status.unwrap_or_else(|| panic!("the run did not finish:\n{log}"));
    assert!(status.success(), "{log}");
    assert!(log.contains("waiting for environment `letters`"), "it said it was waiting:\n{log}");
    assert!(log.contains("step 4:"), "{log}");
}

#[test]
fn a_python_environment_whose_every_step_raises_stops_the_run_with_a_summary() {
    // Before, such a run went on with exit code 0 and a normal summary, and the env printed a full
    // traceback per episode.
    let Some(pydeps) = common::python_package("eclipse-zenoh==1.10.2", "zenoh", "zenoh-1.10.2") else {
        common::skip("python3 with pip is not available to install eclipse-zenoh");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = remote_run(dir.path(), "letters", 120.0, 20);
    let ep = format!("tcp/127.0.0.1:{}", free_local_port().unwrap());
    let mut run = sluice_run(dir.path(), &cfg, &ep);
    let _env_process = unruly_env(dir.path(), &ep, &pydeps, "raise", "env");
    let status = exit_within(&mut run, Duration::from_secs(180));
    let log = read(dir.path().join("run.log"));
    let status = status.unwrap_or_else(|| panic!("the run did not stop:\n{log}"));
    assert!(!status.success(), "the run succeeded:\n{log}");
    assert!(
        log.contains(
            "environment error budget spent: every episode of the last 6 groups drawn (3 steps' worth) failed"
        ),
        "{log}"
    );
    assert!(log.contains("environment failures: "), "the summary lists the failures:\n{log}");
    assert!(log.contains("first error: step failed: ") && log.contains("ValueError: cannot judge"), "{log}");
    let err = read(dir.path().join("env.err"));
    assert_eq!(err.matches("Traceback (most recent call last)").count(), 1, "one traceback:\n{err}");
    assert!(err.contains("sluice_env: step ValueError: the first of its kind"), "{err}");
}

#[test]
#[allow(clippy::disallowed_methods)] // a plain test thread: blocking sleeps are right
fn a_python_environment_killed_mid_episode_and_restarted_serves_the_rest_of_the_run() {
    let Some(pydeps) = common::python_package("eclipse-zenoh==1.10.2", "zenoh", "zenoh-1.10.2") else {
        common::skip("python3 with pip is not available to install eclipse-zenoh");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = remote_run(dir.path(), "letters", 120.0, 8);
    let ep = format!("tcp/127.0.0.1:{}", free_local_port().unwrap());
    let mut run = sluice_run(dir.path(), &cfg, &ep);
    // It answers 12 steps, then holds every step it gets: episodes are in flight when it dies.
    let mut env = unruly_env(dir.path(), &ep, &pydeps, "hang:12", "env");
    let t0 = std::time::Instant::now();
    while !read(dir.path().join("env.out")).contains("hanging") {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the env never got a 13th step:\n{}",
            read(dir.path().join("run.log"))
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    env.0.kill().unwrap(); // SIGKILL
    env.0.wait().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let _again = letters_env(&ep, &pydeps);
    let status = exit_within(&mut run, Duration::from_secs(180));
    let log = read(dir.path().join("run.log"));
    let status = status.unwrap_or_else(|| panic!("the run did not finish:\n{log}"));
    assert!(status.success(), "{log}");
    assert!(log.contains("step 8:"), "{log}");
    assert!(log.contains("waiting for environment `letters`"), "it waited for the restart:\n{log}");
    let run_dir = dir.path().join("run");
    let (lost, counted) = (learner_total(&run_dir, "data/failed_episodes"), worker_failures(&run_dir));
    eprintln!("episodes lost in the crash: {counted} counted by the workers, {lost} drawn (and not trained on) by the learner");
    assert!(counted >= 1.0, "the episodes in flight were not counted as failures:\n{log}");
    assert!(lost >= 1.0 && lost <= counted, "{lost} failed episodes drawn, {counted} counted:\n{log}");
    assert!(log.contains("environment failures: "), "the summary says so:\n{log}");
}

#[test]
fn two_python_servers_under_one_name_keep_each_episode_on_the_server_that_reset_it() {
    let Some(pydeps) = common::python_package("eclipse-zenoh==1.10.2", "zenoh", "zenoh-1.10.2") else {
        common::skip("python3 with pip is not available to install eclipse-zenoh");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = remote_run(dir.path(), "letters", 120.0, 6);
    let ep = format!("tcp/127.0.0.1:{}", free_local_port().unwrap());
    let mut run = sluice_run(dir.path(), &cfg, &ep);
    let _a = unruly_env(dir.path(), &ep, &pydeps, "count", "a");
    let _b = unruly_env(dir.path(), &ep, &pydeps, "count", "b");
    let status = exit_within(&mut run, Duration::from_secs(180));
    let log = read(dir.path().join("run.log"));
    let status = status.unwrap_or_else(|| panic!("the run did not finish:\n{log}"));
    assert!(status.success(), "{log}");
    assert_eq!(
        worker_failures(&dir.path().join("run")),
        0.0,
        "an episode was stepped on the wrong server:\n{log}"
    );
    assert!(!log.contains("environment failures"), "{log}");
    let resets = |tag: &str| read(dir.path().join(format!("{tag}.out"))).matches("reset").count();
    let (a, b) = (resets("a"), resets("b"));
    eprintln!("resets: server a {a}, server b {b}");
    // Each reset reaches one server (before, every reset started an episode on both, and every
    // task was drawn from both): the one zenoh picks takes the name's calls while it is there.
    assert!(a + b >= 48, "6 steps of 2 groups of 4 need at least 48 episodes: {a} + {b} resets");
    assert_eq!(a.min(b), 0, "resets reached both servers: {a} and {b}");
}
