//! Remote environments: the environment API as JSON over zenoh queryables, so an environment can
//! be another process in any language (`docs/design.md`, "Environments"). `envs/python` serves a
//! Python class this way; [`serve`] serves any Rust [`Env`] and [`TaskSource`].
//!
//! # Protocol
//! An environment `name` of run `run` answers queries on `sluice/{run}/env/{name}/{op}`; every
//! payload is a JSON object, every failure is an error reply `{"error": "..."}`.
//!
//! | op | request | reply |
//! |---|---|---|
//! | `task` | `{}` | `{"task": Task}`, or `{"task": null}` when the source is exhausted |
//! | `reset` | `{"task": Task}` | `{"episode": "ID", "observation": "...", "server": "ZID"}` |
//! | `step` | `{"episode": "ID", "action": "..."}` | `{"observation": str?, "reward": {"total", "parts"}?, "done": bool, "info": any}` |
//! | `close` | `{"episode": "ID"}` | `{}` |
//!
//! `Task` is the JSON form of [`sluice_core::Task`] (`id`, `source`, `prompt` as a string or a
//! list of `{role, content}`, `answer`, `metadata`). The server owns the episode state under the
//! id it returned from `reset`; `step` on an unknown id is an error. Each server also answers every
//! operation under its own keys, `sluice/{run}/env/{name}/server/{ZID}/{op}`, and the worker steps
//! and closes an episode there: with two servers under one name an episode stays with the one that
//! reset it. Servers declare their queryables complete, so that a `task` or `reset` on the shared
//! key reaches one server, not all (zenoh's best-matching target): one server takes the name's
//! calls while it is there, and another takes over when it goes. Ids are 128 random bits, so a
//! peer cannot step or close another's episode by guessing; an episode left untouched for
//! [`ServeConfig::episode_ttl`] (a worker that died mid-episode) is closed and forgotten.
//!
//! # Design
//! *Constraints.* The caller ([`crate`]'s users: the rollout worker) already runs every env call
//! under its own timeout and turns failures into `finish = error`; the bridge must only make
//! remote failures look like env errors, never hang longer than asked, and keep the process
//! boundary invisible. *Solution.* [`RemoteEnv`] implements [`Env`] by one zenoh query per call
//! (`timeout` per query); an error reply or silence becomes an [`EnvError`] naming the key.
//! [`RemoteTasks`] implements [`TaskSource`] by querying `task`; `next_task` is synchronous in the
//! API, so it blocks in place on the tokio runtime (multi-thread runtime required, as for zenoh).
//! *Cons:* one round trip per call (sub-millisecond on loopback, negligible next to a model turn).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sluice_core::{keys, BoxFuture, Env, EnvError, Episode, StepResult, Task, TaskSource};

/// `{"task": Task?}`: a reset request, and the reply of `task`.
#[derive(Debug, Serialize, Deserialize)]
struct TaskMsg {
    task: Option<Task>,
}

/// The reply of `reset`.
#[derive(Debug, Serialize, Deserialize)]
struct ResetReply {
    episode: String,
    #[serde(default)]
    observation: String,
    /// The server's zenoh id: the episode's `step` and `close` go to its own keys
    /// (`server/{id}/{op}`), so with two servers under one name an episode stays with the one that
    /// reset it. Absent from servers that predate it (their episodes use the shared keys).
    #[serde(default)]
    server: Option<String>,
}

/// A `step` request.
#[derive(Debug, Serialize, Deserialize)]
struct StepMsg {
    episode: String,
    action: String,
}

/// A `close` request.
#[derive(Debug, Serialize, Deserialize)]
struct CloseMsg {
    episode: String,
}

/// An error reply.
#[derive(Debug, Serialize, Deserialize)]
struct ErrorMsg {
    error: String,
}

struct Link {
    session: zenoh::Session,
    run: String,
    name: String,
    timeout: Duration,
}

/// Why a call failed: no server answered (none reachable, or none in time), or something else
/// (the server's error reply, an unreadable reply).
enum CallError {
    Absent(EnvError),
    Failed(EnvError),
}

impl From<CallError> for EnvError {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Absent(e) | CallError::Failed(e) => e,
        }
    }
}

impl Link {
    async fn call<T: for<'de> Deserialize<'de>>(
        &self,
        op: &str,
        body: &impl Serialize,
    ) -> Result<T, EnvError> {
        Ok(self.try_call(op, body).await?)
    }

    /// [`Link::call`], saying whether a failure was for want of a server.
    async fn try_call<T: for<'de> Deserialize<'de>>(
        &self,
        op: &str,
        body: &impl Serialize,
    ) -> Result<T, CallError> {
        let failed = |m: String| CallError::Failed(EnvError(m));
        let key = keys::env(&self.run, &self.name, op);
        let payload =
            serde_json::to_vec(body).map_err(|e| failed(format!("{key}: encoding the request: {e}")))?;
        let t0 = tokio::time::Instant::now();
        let replies = self
            .session
            .get(&key)
            .payload(payload)
            .timeout(self.timeout)
            .await
            .map_err(|e| failed(format!("{key}: {e}")))?;
        let reply = replies.recv_async().await.map_err(|_| {
            // zenoh ends a query at once when no queryable matches it.
            CallError::Absent(EnvError(if t0.elapsed() < self.timeout {
                format!("{key}: nobody serves this environment (no server of that name is reachable)")
            } else {
                format!("{key}: no environment answered within {:?}", self.timeout)
            }))
        })?;
        match reply.result() {
            Ok(sample) => {
                let bytes = sample.payload().to_bytes();
                serde_json::from_slice(&bytes).map_err(|e| {
                    failed(format!("{key}: unreadable reply {:?}: {e}", String::from_utf8_lossy(&bytes)))
                })
            }
            Err(err) => {
                let bytes = err.payload().to_bytes();
                let msg = serde_json::from_slice::<ErrorMsg>(&bytes)
                    .map(|m| m.error)
                    .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
                Err(failed(format!("{key}: {msg}")))
            }
        }
    }
}

/// How long a remote task source waits for an absent environment by default.
pub const DEFAULT_PATIENCE: Duration = Duration::from_secs(180);

/// How often a waiting task source says so.
const WAIT_REPORT: Duration = Duration::from_secs(5);

/// An environment served by another process.
#[derive(Clone)]
pub struct RemoteEnv {
    link: Arc<Link>,
}

impl RemoteEnv {
    /// The environment `name` of `run`, reached over `session`; each call waits at most `timeout`.
    pub fn new(session: zenoh::Session, run: &str, name: &str, timeout: Duration) -> Result<Self, EnvError> {
        keys::check_name("run", run).map_err(|e| EnvError(e.to_string()))?;
        keys::check_name("environment", name).map_err(|e| EnvError(e.to_string()))?;
        let link = Link { session, run: run.into(), name: name.into(), timeout };
        Ok(RemoteEnv { link: Arc::new(link) })
    }

    /// Waits until the environment answers (a `task` query), up to `patience`.
    pub async fn wait_until_served(&self, patience: Duration) -> Result<(), EnvError> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            match self.link.call::<TaskMsg>("task", &serde_json::json!({"peek": true})).await {
                Ok(_) => return Ok(()),
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Its tasks, drawn one query at a time, waiting up to [`DEFAULT_PATIENCE`] for an absent
    /// server.
    pub fn tasks(&self) -> RemoteTasks {
        self.tasks_waiting(DEFAULT_PATIENCE)
    }

    /// Its tasks, waiting up to `patience` for a server that is not there (not started yet, or
    /// restarting after a crash) before the source fails ([`TaskSource::failure`]).
    pub fn tasks_waiting(&self, patience: Duration) -> RemoteTasks {
        RemoteTasks { link: self.link.clone(), patience, failure: None }
    }
}

impl Env for RemoteEnv {
    fn name(&self) -> &str {
        &self.link.name
    }

    fn reset<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Result<sluice_core::Started, EnvError>> {
        Box::pin(async move {
            let r: ResetReply = self.link.call("reset", &TaskMsg { task: Some(task.clone()) }).await?;
            let episode =
                RemoteEpisode { link: self.link.clone(), id: r.episode, server: r.server, open: true };
            Ok((Box::new(episode) as Box<dyn Episode>, r.observation))
        })
    }
}

struct RemoteEpisode {
    link: Arc<Link>,
    id: String,
    /// The zenoh id of the server that reset it.
    server: Option<String>,
    open: bool,
}

impl RemoteEpisode {
    /// `op` of the server that holds this episode.
    fn op(&self, op: &str) -> String {
        match &self.server {
            Some(server) => format!("server/{server}/{op}"),
            None => op.to_string(),
        }
    }
}

impl Episode for RemoteEpisode {
    fn step<'a>(&'a mut self, action: &'a str) -> BoxFuture<'a, Result<StepResult, EnvError>> {
        Box::pin(async move {
            let r: StepResult = self
                .link
                .call(&self.op("step"), &StepMsg { episode: self.id.clone(), action: action.to_string() })
                .await?;
            if let Some(rw) = &r.reward {
                if !rw.total.is_finite() {
                    return Err(EnvError(format!("episode {}: non-finite reward {}", self.id, rw.total)));
                }
            }
            self.open = !r.done;
            Ok(r)
        })
    }

    fn close(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            // A finished episode is closed by the server itself; only open ones are told.
            if self.open {
                self.open = false;
                if let Err(e) = self
                    .link
                    .call::<serde_json::Value>(&self.op("close"), &CloseMsg { episode: self.id.clone() })
                    .await
                {
                    tracing::debug!("closing remote episode {}: {e}", self.id);
                }
            }
        })
    }
}

/// The tasks of a remote environment.
pub struct RemoteTasks {
    link: Arc<Link>,
    patience: Duration,
    failure: Option<String>,
}

impl TaskSource for RemoteTasks {
    fn name(&self) -> &str {
        &self.link.name
    }

    /// The server's next task. While nobody answers (a server not started yet, or restarting),
    /// waits, saying so every few seconds with the key it waits on; past `patience` the source
    /// fails with a message naming the environment. An error the server replies ends it too.
    fn next_task(&mut self) -> Option<Task> {
        if self.failure.is_some() {
            return None;
        }
        let link = self.link.clone();
        let patience = self.patience;
        let ask = async move {
            let t0 = tokio::time::Instant::now();
            let mut told = t0;
            loop {
                match link.try_call::<TaskMsg>("task", &serde_json::json!({})).await {
                    Ok(m) => return Ok(m.task),
                    Err(CallError::Absent(e)) => {
                        if t0.elapsed() >= patience {
                            return Err(format!(
                                "environment `{}`: nobody answered {} for {patience:?}. Check that its \
                                 server runs, serves the name `{}` for the run `{}`, and connects to \
                                 this process's zenoh endpoints (envs[].wait_s sets how long to wait)",
                                link.name,
                                keys::env(&link.run, &link.name, "task"),
                                link.name,
                                link.run
                            ));
                        }
                        if told.elapsed() >= WAIT_REPORT || told == t0 {
                            tracing::warn!(
                                "waiting for environment `{}`: {e} ({:.0?} of {patience:?})",
                                link.name,
                                t0.elapsed()
                            );
                            told = tokio::time::Instant::now();
                        }
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                    Err(CallError::Failed(e)) => return Err(format!("environment `{}`: {e}", link.name)),
                }
            }
        };
        match tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(ask)) {
            Ok(task) => task,
            Err(e) => {
                tracing::error!("{e}");
                self.failure = Some(e);
                None
            }
        }
    }

    fn failure(&self) -> Option<String> {
        self.failure.clone()
    }
}

/// A Rust environment served to other processes; dropping it stops serving.
pub struct Served {
    _queryables: Vec<zenoh::query::Queryable<()>>,
}

/// An episode the server holds between calls.
type SharedEpisode = Arc<tokio::sync::Mutex<Box<dyn Episode>>>;

/// How a served environment keeps its episodes.
#[derive(Debug, Clone, Copy)]
pub struct ServeConfig {
    /// An episode untouched this long (its worker died or gave up without `close`) is closed and
    /// forgotten when the next episode starts.
    pub episode_ttl: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig { episode_ttl: Duration::from_secs(600) }
    }
}

struct ServerState {
    env: Arc<dyn Env>,
    tasks: Option<Mutex<Box<dyn TaskSource>>>,
    /// Open episodes by id, with when each was last used.
    episodes: tokio::sync::Mutex<HashMap<String, (SharedEpisode, Instant)>>,
    cfg: ServeConfig,
    /// This server's zenoh id: its own keys, and what `reset` tells the worker.
    server: String,
}

/// Serves `env` (and `tasks`, if given) as `name` of `run` on `session`.
pub async fn serve(
    session: &zenoh::Session,
    run: &str,
    name: &str,
    env: Arc<dyn Env>,
    tasks: Option<Box<dyn TaskSource>>,
) -> Result<Served, EnvError> {
    serve_with(session, run, name, env, tasks, ServeConfig::default()).await
}

/// [`serve`] with `cfg`.
pub async fn serve_with(
    session: &zenoh::Session,
    run: &str,
    name: &str,
    env: Arc<dyn Env>,
    tasks: Option<Box<dyn TaskSource>>,
    cfg: ServeConfig,
) -> Result<Served, EnvError> {
    keys::check_name("run", run).map_err(|e| EnvError(e.to_string()))?;
    keys::check_name("environment", name).map_err(|e| EnvError(e.to_string()))?;
    let state = Arc::new(ServerState {
        env,
        tasks: tasks.map(Mutex::new),
        episodes: Default::default(),
        cfg,
        server: session.zid().to_string(),
    });
    // zenoh calls back on its own threads: the handlers run on the caller's runtime.
    let rt = tokio::runtime::Handle::current();
    let mut queryables = Vec::new();
    // Every operation under the shared key, and under this server's own (`server/{zid}/{op}`),
    // where the episodes it resets are stepped and closed.
    let own = |op: &str| format!("server/{}/{op}", state.server);
    let keyed: Vec<(&'static str, String)> = ["task", "reset", "step", "close"]
        .into_iter()
        .flat_map(|op| [(op, keys::env(run, name, op)), (op, keys::env(run, name, &own(op)))])
        .collect();
    for (op, key) in keyed {
        let state = state.clone();
        let rt = rt.clone();
        // Complete: a query on the shared key (zenoh's default target, best matching) goes to one
        // complete queryable, so a reset starts one episode and a task is drawn once even with
        // several servers under the name.
        let q = session
            .declare_queryable(&key)
            .complete(true)
            .callback(move |query| {
                let state = state.clone();
                rt.spawn(async move {
                    let body = query.payload().map(|p| p.to_bytes().into_owned()).unwrap_or_default();
                    let reply = match handle(&state, op, &body).await {
                        Ok(v) => query.reply(query.key_expr().clone(), v.to_string()).await,
                        Err(e) => query.reply_err(serde_json::json!({"error": e}).to_string()).await,
                    };
                    if let Err(e) = reply {
                        tracing::debug!("env reply: {e}");
                    }
                });
            })
            .await
            .map_err(|e| EnvError(format!("{key}: {e}")))?;
        queryables.push(q);
    }
    Ok(Served { _queryables: queryables })
}

async fn handle(state: &ServerState, op: &str, body: &[u8]) -> Result<serde_json::Value, String> {
    let parse_err =
        |e: serde_json::Error| format!("{op}: bad request {:?}: {e}", String::from_utf8_lossy(body));
    match op {
        "task" => {
            // `{"peek": true}` only asks whether the environment is served.
            if serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v.get("peek").cloned())
                .is_some()
            {
                return Ok(serde_json::json!({"task": null}));
            }
            let Some(tasks) = &state.tasks else {
                return Err("this environment serves no tasks".into());
            };
            let task = tasks.lock().map_err(|_| "task source poisoned".to_string())?.next_task();
            Ok(serde_json::json!({ "task": task }))
        }
        "reset" => {
            let msg: TaskMsg = serde_json::from_slice(body).map_err(parse_err)?;
            let task = msg.task.ok_or("reset needs a task")?;
            expire(state).await;
            let (episode, observation) = state.env.reset(&task).await.map_err(|e| e.0)?;
            let id = format!("{:032x}", rand::random::<u128>());
            let episode = Arc::new(tokio::sync::Mutex::new(episode));
            state.episodes.lock().await.insert(id.clone(), (episode, Instant::now()));
            Ok(serde_json::json!({"episode": id, "observation": observation, "server": state.server}))
        }
        "step" => {
            let msg: StepMsg = serde_json::from_slice(body).map_err(parse_err)?;
            let ep = state.episodes.lock().await.get_mut(&msg.episode).map(|(ep, used)| {
                *used = Instant::now();
                ep.clone()
            });
            let ep = ep.ok_or_else(|| format!("unknown episode {:?}", msg.episode))?;
            let r = ep.lock().await.step(&msg.action).await.map_err(|e| e.0)?;
            if r.done {
                if let Some((ep, _)) = state.episodes.lock().await.remove(&msg.episode) {
                    ep.lock().await.close().await;
                }
            }
            serde_json::to_value(r).map_err(|e| e.to_string())
        }
        "close" => {
            let msg: CloseMsg = serde_json::from_slice(body).map_err(parse_err)?;
            if let Some((ep, _)) = state.episodes.lock().await.remove(&msg.episode) {
                ep.lock().await.close().await;
            }
            Ok(serde_json::json!({}))
        }
        _ => Err(format!("unknown operation {op}")),
    }
}

/// Closes and forgets the episodes untouched for the configured time.
async fn expire(state: &ServerState) {
    let ttl = state.cfg.episode_ttl;
    let expired: Vec<(String, SharedEpisode)> = {
        let mut episodes = state.episodes.lock().await;
        let old: Vec<String> = episodes
            .iter()
            .filter(|(_, (_, used))| used.elapsed() >= ttl)
            .map(|(id, _)| id.clone())
            .collect();
        old.into_iter().filter_map(|id| episodes.remove(&id).map(|(ep, _)| (id, ep))).collect()
    };
    for (id, ep) in expired {
        tracing::info!("closing episode {id}: untouched for {ttl:?}");
        ep.lock().await.close().await;
    }
}

#[cfg(test)]
mod tests {
    //! The protocol between two zenoh sessions: a Rust environment served with `serve`, driven
    //! through `RemoteEnv` as the rollout worker drives any environment.
    use super::*;
    use crate::{Arithmetic, ArithmeticConfig, Calculator, CalculatorConfig};
    use sluice_core::{free_local_port, ZenohOptions};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_served_calculator_answers_reset_step_and_task_over_zenoh() {
        tokio::time::timeout(Duration::from_secs(60), async {
            let ep = format!("tcp/127.0.0.1:{}", free_local_port().unwrap());
            let server = ZenohOptions::listen_on(ep.clone()).open().await.unwrap();
            let client = ZenohOptions::connect_to(ep).open().await.unwrap();
            let tasks =
                Arithmetic::new(ArithmeticConfig { min_digits: 3, max_digits: 3, ..Default::default() })
                    .unwrap();
            let env = Arc::new(Calculator::new(CalculatorConfig::default()));
            let _served = serve(&server, "r", "calc", env, Some(Box::new(tasks))).await.unwrap();

            let remote = RemoteEnv::new(client.clone(), "r", "calc", Duration::from_secs(5)).unwrap();
            remote.wait_until_served(Duration::from_secs(20)).await.unwrap();
            let mut source = remote.tasks();
            let task = source.next_task().expect("the served source gives tasks");
            assert_eq!(task.source, "arithmetic");
            let answer = task.answer.as_i64().unwrap();

            let (mut ep, obs) = remote.reset(&task).await.unwrap();
            assert_eq!(obs, "");
            let r = ep.step("<calc>12*12</calc>").await.unwrap();
            assert_eq!(r.observation.as_deref(), Some("<result>144</result>"));
            assert!(!r.done);
            let r = ep.step(&format!("so \\boxed{{{answer}}}")).await.unwrap();
            assert!(r.done);
            assert_eq!(r.reward.unwrap().total, 1.1);
            // The server dropped the finished episode: stepping it again is an error naming it.
            let e = ep.step("again").await.unwrap_err().to_string();
            assert!(e.contains("unknown episode") && e.contains("sluice/r/env/calc/server/"), "{e}");

            // A reset the env refuses comes back as an env error with its reason.
            let mut bad = task.clone();
            bad.answer = serde_json::Value::Null;
            let e = remote.reset(&bad).await.err().unwrap().to_string();
            assert!(e.contains("integer answer"), "{e}");

            // Nobody serves `other`: the call fails after its timeout, naming the key.
            let other = RemoteEnv::new(client.clone(), "r", "other", Duration::from_millis(300)).unwrap();
            let e = other.reset(&task).await.err().unwrap().to_string();
            assert!(e.contains("sluice/r/env/other/reset"), "{e}");
        })
        .await
        .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn episode_ids_are_unguessable_and_abandoned_episodes_expire() {
        // Before, ids were `{task id}-{counter}`: any peer could step or close another's episode,
        // and an episode whose worker died stayed open for good.
        tokio::time::timeout(Duration::from_secs(60), async {
            let ep = format!("tcp/127.0.0.1:{}", free_local_port().unwrap());
            let server = ZenohOptions::listen_on(ep.clone()).open().await.unwrap();
            let client = ZenohOptions::connect_to(ep).open().await.unwrap();
            let tasks = Arithmetic::new(ArithmeticConfig::default()).unwrap();
            let env = Arc::new(Calculator::new(CalculatorConfig::default()));
            let cfg = ServeConfig { episode_ttl: Duration::from_millis(300) };
            let _served = serve_with(&server, "r", "calc", env, Some(Box::new(tasks)), cfg).await.unwrap();
            let remote = RemoteEnv::new(client.clone(), "r", "calc", Duration::from_secs(5)).unwrap();
            remote.wait_until_served(Duration::from_secs(20)).await.unwrap();
            let task = remote.tasks().next_task().unwrap();
            let link = remote.link.clone();
            let reset = |task: &Task| {
                let link = link.clone();
                let task = task.clone();
                async move {
                    let r: ResetReply = link.call("reset", &TaskMsg { task: Some(task) }).await.unwrap();
                    r.episode
                }
            };
            let ids = [reset(&task).await, reset(&task).await];
            for id in &ids {
                assert!(id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit()), "{id}");
                assert!(!id.contains(&task.id), "{id} names the task");
            }
            assert_ne!(ids[0], ids[1]);
            let step = |id: &str| StepMsg { episode: id.to_string(), action: "<calc>1+1</calc>".into() };
            let guess = format!("{}-0", task.id);
            let e = link.call::<serde_json::Value>("step", &step(&guess)).await.unwrap_err().to_string();
            assert!(e.contains("unknown episode"), "{e}");
            // Episode 1 is used, episode 0 abandoned; past the ttl the next reset closes episode 0.
            tokio::time::sleep(Duration::from_millis(200)).await;
            link.call::<serde_json::Value>("step", &step(&ids[1])).await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
            reset(&task).await;
            let e = link.call::<serde_json::Value>("step", &step(&ids[0])).await.unwrap_err().to_string();
            assert!(e.contains("unknown episode"), "the abandoned episode expired: {e}");
            link.call::<serde_json::Value>("step", &step(&ids[1])).await.unwrap();
        })
        .await
        .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_two_servers_under_one_name_each_episode_stays_with_the_one_that_reset_it() {
        // Before, calls were split between the servers: an episode reset on one was stepped on the
        // other (`unknown episode`); then every reset reached both servers (one episode each, the
        // first reply taken, the other left open) and every task was drawn from both.
        tokio::time::timeout(Duration::from_secs(60), async {
            let ep = format!("tcp/127.0.0.1:{}", free_local_port().unwrap());
            let worker = ZenohOptions::listen_on(ep.clone()).open().await.unwrap();
            let a = ZenohOptions::connect_to(ep.clone()).open().await.unwrap();
            let b = ZenohOptions::connect_to(ep).open().await.unwrap();
            let tasks =
                || Box::new(Arithmetic::new(ArithmeticConfig::default()).unwrap()) as Box<dyn TaskSource>;
            let env = || Arc::new(Calculator::new(CalculatorConfig::default()));
            let _a = serve(&a, "r", "calc", env(), Some(tasks())).await.unwrap();
            let _b = serve(&b, "r", "calc", env(), Some(tasks())).await.unwrap();
            let remote = RemoteEnv::new(worker.clone(), "r", "calc", Duration::from_secs(5)).unwrap();
            remote.wait_until_served(Duration::from_secs(20)).await.unwrap();
            let task = remote.tasks().next_task().unwrap();
            let resets = |n: usize| {
                let remote = remote.clone();
                let task = task.clone();
                async move {
                    let mut servers = std::collections::HashSet::new();
                    for _ in 0..n {
                        let (mut episode, _) = remote.reset(&task).await.unwrap();
                        for _ in 0..3 {
                            let r = episode.step("<calc>2+2</calc>").await.unwrap();
                            assert_eq!(r.observation.as_deref(), Some("<result>4</result>"));
                        }
                        episode.close().await;
                        let replies = remote
                            .link
                            .session
                            .get(keys::env("r", "calc", "reset"))
                            .payload(serde_json::to_vec(&TaskMsg { task: Some(task.clone()) }).unwrap())
                            .await
                            .unwrap();
                        let mut answered = 0;
                        while let Ok(reply) = replies.recv_async().await {
                            let r: ResetReply =
                                serde_json::from_slice(&reply.result().unwrap().payload().to_bytes())
                                    .unwrap();
                            servers.insert(r.server.unwrap());
                            answered += 1;
                        }
                        assert_eq!(answered, 1, "a reset started an episode on each server");
                    }
                    servers
                }
            };
            let served = resets(40).await;
            assert_eq!(served.len(), 1, "one server takes the name's calls while it is there: {served:?}");
        })
        .await
        .unwrap();
    }
}
