//! Rollout on a tiny random model: groups the replay accepts across a mid-generation weight update,
//! token in / token out over a multi-turn environment, failing environments, and the worker loop
//! under tickets, the staleness gate and liveliness — all over real zenoh sessions on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_core::{
    free_local_port, BoxFuture, Env, EnvError, Episode, Finish, Group, Lineage, PolicyId, Prompt, Reward,
    RlConfig, Started, StepResult, Task, TaskSource, ZenohOptions,
};
use sluice_model::to_vec_f32;
use sluice_model::{score, Cpu, Llama, ModelConfig, ScoreRow, Tokenizer};
use sluice_replay::{ClientConfig, Durability, ReplayClient, ReplayConfig, ReplayService, Sampler, Shard};
use sluice_rollout::{
    CurriculumConfig, EnvSource, FixedWeights, Job, Judge, RolloutConfig, Runner, SubscriberFeed, SwapCache,
    Versioned, WeightFeed, Worker,
};
use sluice_weights_sync::{
    Destination, Publisher, PublisherConfig, SourceTensor, StalenessGate, Subscriber, SubscriberConfig,
};

const ALPHABET: &str = "0123456789+-*=? abcdefghijklmnopqrstuvwxyz<>/";

fn tokenizer() -> Tokenizer {
    Tokenizer::char_level(ALPHABET).unwrap()
}

fn model_config() -> ModelConfig {
    ModelConfig::tiny_llama(tokenizer().vocab_size(), vec![])
}

fn model(seed: u64) -> Llama<Cpu> {
    Llama::random(&model_config(), seed, &Default::default())
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn within<F: Future>(rt: &tokio::runtime::Runtime, f: F) -> F::Output {
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(120), f).await.expect("test timed out") })
}

fn task(id: &str, prompt: &str, answer: i64) -> Task {
    Task {
        id: id.into(),
        source: "sums".into(),
        prompt: Prompt::Text(prompt.into()),
        answer: answer.into(),
        metadata: serde_json::Value::Null,
    }
}

/// `a+b=` tasks; the verifier gives 1 when the completion starts with the sum.
struct Sums(u64);

impl TaskSource for Sums {
    fn name(&self) -> &str {
        "sums"
    }
    fn next_task(&mut self) -> Option<Task> {
        self.0 += 1;
        let (a, b) = (self.0 % 7, self.0 % 5);
        Some(task(&format!("sum-{}", self.0), &format!("{a}+{b}="), (a + b) as i64))
    }
}

fn sums_verifier() -> Judge {
    Judge::Verifier(Arc::new(|t: &Task, c: &str| {
        let right = c.starts_with(&t.answer.to_string());
        Reward::new(right as u8 as f32).with_part("correct", right as u8 as f32)
    }))
}

/// Groups of 4 sampled at temperature 1.
fn rl() -> RlConfig {
    RlConfig { group_size: 4, temperature: 1.0, max_completion_tokens: 100, ..RlConfig::default() }
}

fn rollout_config(max_new: usize) -> RolloutConfig {
    RolloutConfig {
        tasks_per_batch: 2,
        max_new_tokens: max_new,
        chat_template: false,
        curriculum: CurriculumConfig::Fixed { weights: vec![1.0] },
        seed: 7,
        ..Default::default()
    }
}

fn snapshot(m: &Llama<Cpu>) -> Vec<SourceTensor> {
    m.to_host_tensors().into_iter().map(|(n, t)| SourceTensor::whole(n, t.shape, t.data)).collect()
}

/// Behavior log-probs recomputed by the scorer (what the learner sees) for `tokens[..upto]`.
fn rescored(m: &Llama<Cpu>, prompt: &[u32], tokens: &[u32], temperature: f32) -> Vec<f32> {
    let rows = [ScoreRow { prompt, completion: tokens }];
    to_vec_f32(score(m, &rows, temperature, false).unwrap().logprobs)
}

/// Hands out the subscriber's weights only from the `after`-th request on: the version is staged
/// before generation starts and is swapped in at a known decoding step.
struct FromStep<F> {
    inner: F,
    calls: usize,
    after: usize,
}

/// Hands out one model, once.
struct Once(Option<Versioned<Cpu>>);

impl WeightFeed<Cpu> for Once {
    fn newer(
        &mut self,
        _current: PolicyId,
        _same_epoch: bool,
    ) -> sluice_rollout::Result<Option<Versioned<Cpu>>> {
        Ok(self.0.take())
    }
}

impl<F: WeightFeed<Cpu>> WeightFeed<Cpu> for FromStep<F> {
    fn newer(
        &mut self,
        current: PolicyId,
        same_epoch: bool,
    ) -> sluice_rollout::Result<Option<Versioned<Cpu>>> {
        self.calls += 1;
        if self.calls <= self.after {
            return Ok(None);
        }
        self.inner.newer(current, same_epoch)
    }
}

#[test]
fn groups_sampled_across_a_mid_generation_weight_update_are_accepted_by_the_replay() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    within(&rt, async {
        let ep = format!("tcp/127.0.0.1:{}", free_local_port().unwrap());
        let learner = ZenohOptions::listen_on(ep.clone()).open().await.unwrap();
        let worker = ZenohOptions::connect_to(ep).open().await.unwrap();
        let cfg = ReplayConfig { durability: Durability::OsBuffer, ..Default::default() };
        let shared = RlConfig { max_staleness: 4, ..rl() };
        let shard = Arc::new(Shard::open(dir.path().join("replay"), 0, cfg, shared).unwrap());
        let service = ReplayService::start(&learner, "mid", shard.clone()).await.unwrap();
        let publisher =
            Publisher::start(&learner, PublisherConfig { shm: false, ..PublisherConfig::new("mid") })
                .await
                .unwrap();
        let sub_cfg =
            SubscriberConfig { poll: Duration::from_millis(100), ..SubscriberConfig::new("mid", "w0") };
        let sub = Arc::new(
            Subscriber::start(
                &worker,
                sub_cfg,
                Destination::REPLICATED,
                StalenessGate::new(4, PolicyId::default()),
            )
            .await
            .unwrap(),
        );

        // Version 1 is other weights; the worker stages it before it starts generating.
        let (m0, m1) = (model(1), model(2));
        publisher.publish(Lineage::default().at(1), snapshot(&m1)).await.unwrap().unwrap();
        while sub.ready().is_none() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        // No stop tokens: every row runs all 24 steps; the new weights arrive at step 10.
        let cfg = rollout_config(24);
        let mut runner = Runner::new("mid", "w0", cfg.clone(), rl(), tokenizer(), Vec::new()).unwrap();
        let feed = SubscriberFeed::<Cpu>::new(sub.clone(), model_config(), Default::default());
        let mut feed = FromStep { inner: feed, calls: 0, after: 10 };
        let mut policy = Versioned { model: m0.clone(), version: 0, epoch: 0 };
        let mut sums = Sums(0);
        let jobs: Vec<Job> = (0..2)
            .map(|_| Job {
                task: sums.next_task().unwrap(),
                judge: sums_verifier(),
                stop_strings: Vec::new(),
            })
            .collect();
        let groups = runner.run(&mut policy, &mut feed, &jobs).await.unwrap();
        assert_eq!(policy.version, 1);
        assert_eq!(runner.stats().mid_generation_swaps, 1);

        assert_eq!(groups.len(), 2);
        for (g, job) in groups.iter().zip(&jobs) {
            assert_eq!(g.samples.len(), 4);
            for (i, s) in g.samples.iter().enumerate() {
                assert_eq!(s.sample_idx as usize, i);
                assert_eq!(s.task_id, job.task.id);
                assert_eq!(s.prompt_tokens, runner.prompt_tokens(&job.task).unwrap());
                assert_eq!(s.completion_tokens.len(), 24);
                assert_eq!(s.loss_mask, vec![1; 24]);
                assert_eq!(s.finish, Finish::Length);
                assert_eq!(s.num_turns, 0);
                // The first tokens come from version 0, the rest from version 1, switching once.
                let switch = s.token_versions.iter().position(|&v| v == 1).expect("no token from version 1");
                assert!(
                    switch > 0 && s.token_versions[..switch].iter().all(|&v| v == 0),
                    "{:?}",
                    s.token_versions
                );
                assert!(s.token_versions[switch..].iter().all(|&v| v == 1), "{:?}", s.token_versions);
                assert_eq!(s.behavior_version, 0);
                // What version 0 sampled is what the scorer gives under version 0, and what
                // followed the swap what it gives under version 1 (the cache was rebuilt): each
                // token is labelled with the one version that produced it.
                let lp = rescored(&m0, &s.prompt_tokens, &s.completion_tokens[..switch], rl().temperature);
                for (a, b) in lp.iter().zip(&s.behavior_logprobs[..switch]) {
                    assert!((a - b).abs() < 1e-4, "log-prob {b} sampled, {a} rescored");
                }
                let lp = rescored(&policy.model, &s.prompt_tokens, &s.completion_tokens, rl().temperature);
                for (a, b) in lp[switch..].iter().zip(&s.behavior_logprobs[switch..]) {
                    assert!(
                        (a - b).abs() < 1e-4,
                        "after the swap: log-prob {b} sampled, {a} under version 1"
                    );
                }
                let right = s.reward == 1.0;
                assert_eq!(s.reward_parts["correct"], right as u8 as f32);
            }
        }

        // The replay takes the groups and hands them back unchanged.
        let client = ReplayClient::new(worker.clone(), ClientConfig::new("mid", 1)).unwrap();
        client.append(&groups).await.unwrap();
        let req = sluice_replay::SampleRequest {
            sampler: Sampler::Fifo,
            groups: 2,
            learner: Lineage::default().at(1),
            max_staleness: 4,
            consumer: "learner".into(),
            drop_zero_variance: false,
            dedup: false,
            exclude: Vec::new(),
        };
        let back = client.sample(&req).await.unwrap().groups().unwrap();
        let mut sent: Vec<Group> = groups.clone();
        sent.sort_by_key(|g| g.group_id);
        let mut back = back;
        back.sort_by_key(|g| g.group_id);
        assert_eq!(back, sent);
        // The swap was acknowledged to the publisher and moved the gate.
        assert!(publisher.wait_for_acks(PolicyId::new(0, 1), 1, Duration::from_secs(10)).await);
        assert_eq!(sub.gate().versions().1, PolicyId::new(0, 1));

        // `swap_cache = "keep"`: the same swap continues over version 0's keys and values, so
        // the tokens after it are neither version's alone; they are labelled 0, the older.
        let keep = RolloutConfig { swap_cache: SwapCache::Keep, ..cfg.clone() };
        let mut runner = Runner::new("mid", "w0", keep, rl(), tokenizer(), Vec::new()).unwrap();
        let v1 = Versioned { model: policy.model.clone(), version: 1, epoch: 0 };
        let mut feed = FromStep { inner: Once(Some(v1)), calls: 0, after: 10 };
        let mut policy = Versioned { model: m0.clone(), version: 0, epoch: 0 };
        let groups = runner.run(&mut policy, &mut feed, &jobs).await.unwrap();
        assert_eq!((policy.version, runner.stats().mid_generation_swaps), (1, 1));
        assert_eq!(runner.stats().swap_recompute_s, 0.0);
        let mut worst = 0f32;
        for s in groups.iter().flat_map(|g| &g.samples) {
            assert!(s.token_versions.iter().all(|&v| v == 0), "{:?}", s.token_versions);
            let lp = rescored(&policy.model, &s.prompt_tokens, &s.completion_tokens, rl().temperature);
            worst =
                lp[12..].iter().zip(&s.behavior_logprobs[12..]).fold(worst, |w, (a, b)| w.max((a - b).abs()));
        }
        assert!(worst > 1e-3, "kept keys/values gave version 1's own log-probs ({worst})");
        service.stop();
    });
}

/// A scripted tool env: every turn answers `<result>ok</result>` until turn 3, then ends the
/// episode with reward = turns. It records the actions it was given.
struct Script {
    actions: Arc<Mutex<Vec<String>>>,
}

struct ScriptEpisode {
    turns: u32,
    actions: Arc<Mutex<Vec<String>>>,
}

impl Env for Script {
    fn name(&self) -> &str {
        "script"
    }
    fn reset<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Result<Started, EnvError>> {
        Box::pin(async move {
            if task.id == "reset-panics" {
                panic!("reset exploded");
            }
            let ep = ScriptEpisode { turns: 0, actions: self.actions.clone() };
            Ok((Box::new(ep) as Box<dyn Episode>, String::new()))
        })
    }
}

impl Episode for ScriptEpisode {
    fn step<'a>(&'a mut self, action: &'a str) -> BoxFuture<'a, Result<StepResult, EnvError>> {
        Box::pin(async move {
            self.actions.lock().unwrap().push(action.to_string());
            self.turns += 1;
            if self.turns == 3 {
                return Ok(StepResult {
                    reward: Some(Reward::new(3.0).with_part("turns", 3.0)),
                    done: true,
                    ..Default::default()
                });
            }
            Ok(StepResult { observation: Some("<result>ok</result>".into()), ..Default::default() })
        })
    }
}

#[test]
fn multi_turn_episodes_store_exactly_the_sampled_tokens_and_the_observation_tokens() {
    let rt = rt();
    within(&rt, async {
        let tok = tokenizer();
        let actions = Arc::new(Mutex::new(Vec::new()));
        let env: Arc<dyn Env> = Arc::new(Script { actions: actions.clone() });
        let cfg = RolloutConfig { max_turns: 5, response_prefix: "say ".into(), ..rollout_config(8) };
        let mut runner = Runner::new("tito", "w0", cfg.clone(), rl(), tok.clone(), Vec::new()).unwrap();
        let m = model(3);
        let mut policy = Versioned { model: m.clone(), version: 5, epoch: 0 };
        let jobs: Vec<Job> = (0..2)
            .map(|i| Job {
                task: task(&format!("t{i}"), "2+2=", 4),
                judge: Judge::Env(env.clone()),
                stop_strings: vec![],
            })
            .collect();
        let groups = runner.run(&mut policy, &mut FixedWeights, &jobs).await.unwrap();

        let obs = tok.encode("<result>ok</result>", false).unwrap();
        let mut turns_text = Vec::new();
        let mut lossy = 0;
        for s in groups.iter().flat_map(|g| &g.samples) {
            // The response prefix closes the prompt; the completion starts after it.
            assert_eq!(s.prompt_tokens, tok.encode("2+2=say ", false).unwrap());
            assert_eq!(s.finish, Finish::EnvDone);
            assert_eq!(s.num_turns, 3);
            assert_eq!(s.reward, 3.0);
            assert_eq!(s.reward_parts["turns"], 3.0);
            // 8 model tokens, the observation, 8, the observation, 8.
            let n = obs.len();
            let mut mask = vec![1u8; 8];
            mask.extend(vec![0; n]);
            mask.extend(vec![1; 8]);
            mask.extend(vec![0; n]);
            mask.extend(vec![1; 8]);
            assert_eq!(s.loss_mask, mask);
            assert_eq!(&s.completion_tokens[8..8 + n], obs.as_slice(), "observation tokens");
            assert_eq!(&s.completion_tokens[16 + n..16 + 2 * n], obs.as_slice());
            assert!(s.token_versions.iter().all(|&v| v == 5));
            assert_eq!(s.behavior_version, 5);
            // Environment tokens carry no log-prob; the model's are what the scorer gives for
            // exactly the stored tokens, observations included in the context.
            let lp = rescored(&m, &s.prompt_tokens, &s.completion_tokens, rl().temperature);
            for (i, (&mk, (&b, &a))) in
                s.loss_mask.iter().zip(s.behavior_logprobs.iter().zip(&lp)).enumerate()
            {
                if mk == 0 {
                    assert_eq!(b, 0.0);
                } else {
                    assert!((a - b).abs() < 1e-4, "token {i}: sampled log-prob {b}, rescored {a}");
                }
            }
            // The env saw each turn's tokens as text.
            for span in [0..8, 8 + n..16 + n, 16 + 2 * n..24 + 2 * n] {
                let model_tokens = &s.completion_tokens[span];
                turns_text.push(tok.decode(model_tokens, true).unwrap());
                // Re-tokenizing the text would not give these tokens back (special tokens vanish).
                lossy += (tok.encode(&tok.decode(model_tokens, true).unwrap(), false).unwrap()
                    != model_tokens) as u32;
            }
        }
        let mut seen = actions.lock().unwrap().clone();
        seen.sort();
        turns_text.sort();
        assert_eq!(seen, turns_text, "the env gets each turn's decoded tokens");
        assert!(lossy > 0, "a random model samples special tokens; a text round trip would lose them");
    });
}

/// Steps that hang or panic, by task id.
struct Unruly;
struct UnrulyEpisode(String);

impl Env for Unruly {
    fn name(&self) -> &str {
        "unruly"
    }
    fn reset<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Result<Started, EnvError>> {
        Box::pin(async move {
            Ok((Box::new(UnrulyEpisode(task.id.clone())) as Box<dyn Episode>, "obs ".to_string()))
        })
    }
}

impl Episode for UnrulyEpisode {
    fn step<'a>(&'a mut self, _action: &'a str) -> BoxFuture<'a, Result<StepResult, EnvError>> {
        Box::pin(async move {
            match self.0.as_str() {
                "hang" => {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Err(EnvError("unreachable".into()))
                }
                "panic" => panic!("step exploded"),
                "error" => Err(EnvError("the tool is down".into())),
                _ => Ok(StepResult { reward: Some(Reward::new(1.0)), done: true, ..Default::default() }),
            }
        })
    }
}

#[test]
fn hanging_panicking_and_failing_envs_end_their_episodes_as_errors_and_the_batch_goes_on() {
    let rt = rt();
    within(&rt, async {
        let env: Arc<dyn Env> = Arc::new(Unruly);
        // The limit must exceed the time a panic takes to unwind and print its backtrace on a
        // loaded CI machine, or a panicking step is counted as a timeout.
        let cfg = RolloutConfig { env_timeout_s: 5.0, tasks_per_batch: 4, ..rollout_config(4) };
        let mut runner = Runner::new("bad", "w0", cfg, rl(), tokenizer(), Vec::new()).unwrap();
        let mut policy = Versioned { model: model(4), version: 0, epoch: 0 };
        let jobs: Vec<Job> = ["hang", "panic", "error", "fine"]
            .iter()
            .map(|id| Job { task: task(id, "1+1=", 2), judge: Judge::Env(env.clone()), stop_strings: vec![] })
            .collect();
        let t0 = std::time::Instant::now();
        let groups = runner.run(&mut policy, &mut FixedWeights, &jobs).await.unwrap();
        assert!(t0.elapsed() < Duration::from_secs(30), "a hanging env held the batch");
        for (g, id) in groups.iter().zip(["hang", "panic", "error", "fine"]) {
            for s in &g.samples {
                // The reset observation is part of the prompt, tokenized once.
                assert!(s.prompt_tokens.ends_with(&tokenizer().encode("obs ", false).unwrap()));
                if id == "fine" {
                    assert_eq!((s.finish, s.reward, s.num_turns), (Finish::EnvDone, 1.0, 1));
                } else {
                    assert_eq!((s.finish, s.reward), (Finish::Error, 0.0), "task {id}");
                    assert_eq!(s.completion_tokens.len(), 4, "the model's tokens are kept");
                }
            }
        }
        let (timeouts, panics, errors) = runner.failures().snapshot();
        assert_eq!((timeouts, panics, errors), (4, 4, 4));
        assert_eq!(runner.stats().errored_samples, 12);
    });
}

#[test]
fn the_worker_loop_waits_for_tickets_and_fresh_weights_and_holds_a_liveliness_token() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    within(&rt, async {
        let (learner, worker_session, shard, service) = synchronous_replay(dir.path(), "loop").await;
        let publisher =
            Publisher::start(&learner, PublisherConfig { shm: false, ..PublisherConfig::new("loop") })
                .await
                .unwrap();
        let sub_cfg =
            SubscriberConfig { poll: Duration::from_millis(100), ..SubscriberConfig::new("loop", "w0") };
        let sub = Subscriber::start(
            &worker_session,
            sub_cfg,
            Destination::REPLICATED,
            StalenessGate::new(0, PolicyId::default()),
        )
        .await
        .unwrap();
        let mut worker = sums_worker(&worker_session, "loop", "w0", 6, PolicyId::default(), sub);
        let stop = worker.stop_flag();
        let handle = tokio::spawn(async move {
            let stats = worker.run(Some(4)).await.unwrap();
            (stats, worker)
        });

        // The worker is visible while it runs.
        let alive = async {
            loop {
                let replies = learner.liveliness().get("sluice/loop/rollout/*").await.unwrap();
                let mut names = Vec::new();
                while let Ok(r) = replies.recv_async().await {
                    names.push(r.result().unwrap().key_expr().to_string());
                }
                if names == ["sluice/loop/rollout/w0"] {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(20), alive).await.expect("no liveliness token");

        // Admission: two groups at version 0, then nothing until the learner moves on.
        let stats = || shard.stats();
        while stats().groups < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(stats().groups, 2, "the worker ran past its tickets");

        // The learner at version 0 takes the two groups, steps to version 1, publishes the weights
        // and asks for its next batch as version 1 (which opens admission for two more groups).
        let learner_client = ReplayClient::new(learner.clone(), ClientConfig::new("loop", 1)).unwrap();
        let at_v0 = fifo_at(Lineage::default());
        let first = learner_client.sample(&at_v0).await.unwrap().groups().unwrap();
        assert_eq!(first.len(), 2);
        assert!(first.iter().flat_map(|g| &g.samples).all(|s| s.behavior_version == 0));
        // The replay hears of version 1 (the learner's request) before the worker hears the
        // announce: the tickets it now grants are for version 1, and the worker must not spend
        // them on version 0's weights (the replay would drop those groups as stale).
        let req = sluice_replay::SampleRequest { learner: Lineage::default().at(1), ..at_v0 };
        let early = learner_client.sample(&req).await.unwrap().groups().unwrap();
        assert!(early.is_empty(), "nothing was admitted at version 1 before this request");
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(stats().groups, 2, "groups were generated for version 1 with version 0's weights");
        assert_eq!(stats().evicted_stale, 0);
        publisher.publish(Lineage::default().at(1), snapshot(&model(6))).await.unwrap().unwrap();

        let (stats, _worker) = handle.await.unwrap();
        assert!(!stop.load(Ordering::Relaxed));
        assert_eq!(stats.groups_appended, 4);
        assert_eq!(stats.version, 1);
        // The next two groups were sampled by version 1 only: the gate held the worker until then.
        let second = learner_client.sample(&req).await.unwrap().groups().unwrap();
        assert_eq!(second.len(), 2);
        for s in second.iter().flat_map(|g| &g.samples) {
            assert!(s.token_versions.iter().all(|&v| v == 1), "{:?}", s.token_versions);
            assert_eq!(s.prompt_tokens.last(), Some(&tokenizer().token_to_id("=").unwrap()));
            // Rows stop at the EOS token (id 1) or the 6-token budget.
            let stopped = s.completion_tokens.last() == Some(&1);
            assert_eq!(s.finish, if stopped { Finish::Stop } else { Finish::Length });
        }
        // Gone from liveliness once it stopped (the undeclaration reaches the other session
        // shortly after).
        let gone = async {
            loop {
                let replies = learner.liveliness().get("sluice/loop/rollout/*").await.unwrap();
                let mut n = 0;
                while replies.recv_async().await.is_ok() {
                    n += 1;
                }
                if n == 0 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), gone)
            .await
            .expect("the liveliness token outlived the worker");
        service.stop();
    });
}

/// Two sessions on loopback (the learner's, listening, and a worker's) and a synchronous replay
/// shard served for `run`: one step's worth of groups (2) per learner version.
async fn synchronous_replay(
    dir: &std::path::Path,
    run: &str,
) -> (zenoh::Session, zenoh::Session, Arc<Shard>, ReplayService) {
    let ep = format!("tcp/127.0.0.1:{}", free_local_port().unwrap());
    let learner = ZenohOptions::listen_on(ep.clone()).open().await.unwrap();
    let worker = ZenohOptions::connect_to(ep).open().await.unwrap();
    let cfg = ReplayConfig { durability: Durability::OsBuffer, ..Default::default() };
    let rl = RlConfig { max_staleness: 0, groups_per_step: 2, ..rl() };
    let shard = Arc::new(Shard::open(dir.join("replay"), 0, cfg, rl).unwrap());
    let service = ReplayService::start(&learner, run, shard.clone()).await.unwrap();
    (learner, worker, shard, service)
}

/// A worker `name` of `run` on `Sums` tasks, holding model(5) as `version`, behind `sub`'s gate.
fn sums_worker(
    session: &zenoh::Session,
    run: &str,
    name: &str,
    max_new: usize,
    version: PolicyId,
    sub: Subscriber,
) -> Worker<Cpu> {
    let replay = ReplayClient::new(session.clone(), ClientConfig::new(run, 1)).unwrap();
    let runner = Runner::new(run, name, rollout_config(max_new), rl(), tokenizer(), vec![1]).unwrap();
    let source = EnvSource { tasks: Box::new(Sums(0)), judge: sums_verifier(), stop_strings: vec![] };
    Worker::new(session.clone(), replay, name, runner, model(5), version, vec![source])
        .unwrap()
        .with_subscriber(sub)
}

/// A synchronous learner's request for 2 groups at `learner`.
fn fifo_at(learner: Lineage) -> sluice_replay::SampleRequest {
    sluice_replay::SampleRequest {
        sampler: Sampler::Fifo,
        groups: 2,
        learner,
        max_staleness: 0,
        consumer: "learner".into(),
        drop_zero_variance: false,
        dedup: false,
        exclude: Vec::new(),
    }
}

#[test]
fn a_fresh_worker_follows_a_learner_resumed_from_an_older_checkpoint() {
    // The replay saw the learner of epoch 1 at version 5 before it died; the learner resumed from
    // its version-3 checkpoint as epoch 2 and published version 3, which a new worker now holds.
    // The worker must generate for version 3 (the gate follows the newest epoch, where the learner
    // is now, not the highest version the replay ever saw), or the run waits for ever: the learner
    // for data, the worker for version 5.
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    within(&rt, async {
        let (learner, worker_session, _shard, service) = synchronous_replay(dir.path(), "resume").await;
        let learner_client = ReplayClient::new(learner.clone(), ClientConfig::new("resume", 1)).unwrap();
        let resumed = Lineage::start(1).at(3).fork(2);
        for at in [Lineage::start(1).at(5), resumed.clone()] {
            assert!(learner_client.sample(&fifo_at(at)).await.unwrap().groups().unwrap().is_empty());
        }
        let sub = Subscriber::start(
            &worker_session,
            SubscriberConfig::new("resume", "fresh"),
            Destination::REPLICATED,
            StalenessGate::new(0, PolicyId::new(2, 3)),
        )
        .await
        .unwrap();
        let mut worker = sums_worker(&worker_session, "resume", "fresh", 4, PolicyId::new(2, 3), sub);
        let stats = tokio::time::timeout(Duration::from_secs(30), worker.run(Some(2)))
            .await
            .expect("the worker waited for a version the resumed learner has not reached")
            .unwrap();
        assert_eq!(stats.groups_appended, 2);
        let got = learner_client.sample(&fifo_at(resumed)).await.unwrap().groups().unwrap();
        assert_eq!(got.len(), 2, "version-3 groups feed the version-3 learner");
        service.stop();
    });
}

#[test]
fn a_new_epochs_weights_wait_for_the_next_batch_so_a_sample_holds_one_epoch() {
    // The worker generates with version 0 of epoch 0 when a resumed learner's weights (epoch 1)
    // arrive mid-generation: a swap would put tokens of two learner starts in one sample, one of
    // them possibly orphaned. They are taken when the next batch begins.
    let rt = rt();
    within(&rt, async {
        let ep = format!("tcp/127.0.0.1:{}", free_local_port().unwrap());
        let learner = ZenohOptions::listen_on(ep.clone()).open().await.unwrap();
        let worker = ZenohOptions::connect_to(ep).open().await.unwrap();
        let publisher =
            Publisher::start(&learner, PublisherConfig { shm: false, ..PublisherConfig::new("epoch") })
                .await
                .unwrap();
        let sub_cfg =
            SubscriberConfig { poll: Duration::from_millis(100), ..SubscriberConfig::new("epoch", "w0") };
        let gate = StalenessGate::new(4, PolicyId::default());
        let sub = Arc::new(Subscriber::start(&worker, sub_cfg, Destination::REPLICATED, gate).await.unwrap());
        publisher.publish(Lineage::start(1).at(1), snapshot(&model(2))).await.unwrap().unwrap();
        while sub.ready().is_none() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut runner =
            Runner::new("epoch", "w0", rollout_config(12), rl(), tokenizer(), Vec::new()).unwrap();
        let feed = SubscriberFeed::<Cpu>::new(sub.clone(), model_config(), Default::default());
        // Offered from the 3rd decoding step of the first batch on.
        let mut feed = FromStep { inner: feed, calls: 0, after: 3 };
        let mut policy = Versioned { model: model(1), version: 0, epoch: 0 };
        let mut sums = Sums(0);
        let mut job =
            || Job { task: sums.next_task().unwrap(), judge: sums_verifier(), stop_strings: Vec::new() };
        let first = runner.run(&mut policy, &mut feed, &[job()]).await.unwrap();
        assert_eq!(runner.stats().mid_generation_swaps, 0, "no swap across epochs mid-batch");
        assert!(first[0]
            .samples
            .iter()
            .all(|s| s.behavior() == PolicyId::default() && s.token_versions.iter().all(|&v| v == 0)));
        let second = runner.run(&mut policy, &mut feed, &[job()]).await.unwrap();
        assert_eq!(policy.id(), PolicyId::new(1, 1), "taken when the next batch began");
        assert!(second[0].samples.iter().all(|s| s.behavior() == PolicyId::new(1, 1)));
    });
}
