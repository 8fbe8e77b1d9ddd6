//! The commands that run roles: `sluice run` (all of them in one process) and `sluice replay`,
//! `sluice learner`, `sluice rollout` (one each, several processes per run).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;

use crate::config::RunConfig;
use crate::roles::{self, ReplayRole};
use crate::with_device;

/// The options every role command takes.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RoleArgs {
    /// `path.to.key=value` (repeatable): overrides a config key.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// zenoh endpoint to listen on (repeatable), added to `zenoh.listen`.
    #[arg(long)]
    pub listen: Vec<String>,
    /// zenoh endpoint to connect to (repeatable), added to `zenoh.connect`.
    #[arg(long)]
    pub connect: Vec<String>,
    /// Listen on a non-loopback address without TLS (`zenoh.insecure`): anyone who reaches it is
    /// trusted with the run.
    #[arg(long)]
    pub insecure: bool,
}

impl RoleArgs {
    /// The config with the overrides and endpoints applied, its resolved form written to the run
    /// directory.
    pub fn load(&self, config: Option<&PathBuf>) -> Result<RunConfig> {
        let mut cfg = RunConfig::load(config.map(|p| p.as_path()), &self.set)?;
        cfg.zenoh.listen.extend(self.listen.iter().cloned());
        cfg.zenoh.connect.extend(self.connect.iter().cloned());
        cfg.zenoh.insecure |= self.insecure;
        let path = cfg.write_resolved()?;
        tracing::info!("resolved config written to {}", path.display());
        Ok(cfg)
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

/// `sluice run`: replay, learner and `run.rollout_workers` workers in this process.
pub fn run(cfg: RunConfig) -> Result<()> {
    runtime()?.block_on(async {
        let session = cfg.zenoh_options().open().await?;
        let replay = ReplayRole::start(&cfg, &session).await?;
        let stop_learner = Arc::new(AtomicBool::new(false));
        roles::stop_on_signal(stop_learner.clone());
        let stop_workers = Arc::new(AtomicBool::new(false));
        let names: Vec<String> = (0..cfg.run.rollout_workers).map(|i| format!("w{i}")).collect();
        // Workers that fail (a remote environment nobody serves) stop the run: the learner would
        // otherwise wait for their data for good. Their error is returned once they are joined.
        let workers = {
            let (cfg, session, stop) = (cfg.clone(), session.clone(), stop_workers.clone());
            let stop_learner = stop_learner.clone();
            tokio::spawn(async move {
                let r = with_device!(cfg.run.device.as_str(), |B, _AD, device| {
                    roles::rollout::<B>(&cfg, &session, &names, stop, None, device).await
                });
                if let Err(e) = &r {
                    eprintln!("stopping: the rollout workers failed: {e:#}");
                    stop_learner.store(true, Ordering::Relaxed);
                }
                r
            })
        };
        let outcome = with_device!(cfg.run.device.as_str(), |_B, AD, device| {
            roles::learner::<AD>(&cfg, &session, stop_learner, device).await
        });
        stop_workers.store(true, Ordering::Relaxed);
        // Workers end their current batch; past a grace period the batch is dropped (its groups
        // were never acknowledged, so nothing accepted is lost).
        let worker_failure = match tokio::time::timeout(Duration::from_secs(20), workers).await {
            Ok(Ok(Err(e))) => Some(e),
            Ok(Err(e)) => {
                tracing::warn!("rollout task: {e}");
                None
            }
            Ok(Ok(Ok(_))) | Err(_) => None,
        };
        replay.stop().await;
        let outcome = outcome?;
        for line in outcome.summary.lines(&cfg.run.dir) {
            println!("{line}");
        }
        let _ = session.close().await;
        if let Some(e) = worker_failure {
            anyhow::bail!("the run stopped at step {}: {e:#}", outcome.step);
        }
        outcome.check_budget()
    })
}

/// `sluice replay CONFIG`: the run's replay shards, until a signal or the run's end.
pub fn replay(cfg: RunConfig) -> Result<()> {
    runtime()?.block_on(async {
        let session = cfg.zenoh_options().open().await?;
        let replay = ReplayRole::start(&cfg, &session).await?;
        let recovered: Vec<_> = replay.shards().iter().map(|s| s.recovery().clone()).collect();
        let ready = serde_json::json!({"event": "ready", "role": "replay", "run": cfg.run.name,
            "shards": cfg.run.replay_shards, "recovered": recovered});
        println!("{ready}");
        roles::until_stopped(&session, &cfg.run.name, &AtomicBool::new(false)).await?;
        let stats: Vec<_> = replay.shards().iter().map(|s| s.stats()).collect();
        println!("{}", serde_json::json!({"event": "stopped", "role": "replay", "stats": stats}));
        replay.stop().await;
        let _ = session.close().await;
        anyhow::Ok(())
    })
}

/// `sluice learner CONFIG`: the learner, resuming from the run directory's newest checkpoint.
pub fn learner(cfg: RunConfig) -> Result<()> {
    runtime()?.block_on(async {
        let session = cfg.zenoh_options().open().await?;
        let stop = Arc::new(AtomicBool::new(false));
        roles::stop_on_signal(stop.clone());
        let outcome = with_device!(cfg.run.device.as_str(), |_B, AD, device| {
            roles::learner::<AD>(&cfg, &session, stop, device).await
        })?;
        for line in outcome.summary.lines(&cfg.run.dir) {
            println!("{line}");
        }
        let done = serde_json::json!({"event": "done", "role": "learner", "resumed_from": outcome.resumed_from,
            "step": outcome.step});
        println!("{done}");
        let _ = session.close().await;
        outcome.check_budget()
    })
}

/// `sluice rollout CONFIG`: `run.rollout_workers` workers named `{name}-{i}`, until a signal or
/// the run's end.
pub fn rollout(cfg: RunConfig, name: Option<String>, append_log: Option<PathBuf>) -> Result<()> {
    let base = name.unwrap_or_else(|| format!("r{}", std::process::id()));
    let names: Vec<String> = if cfg.run.rollout_workers == 1 {
        vec![base]
    } else {
        (0..cfg.run.rollout_workers).map(|i| format!("{base}-{i}")).collect()
    };
    runtime()?.block_on(async {
        let session = cfg.zenoh_options().open().await?;
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (session, run, stop) = (session.clone(), cfg.run.name.clone(), stop.clone());
            tokio::spawn(async move {
                if let Err(e) = roles::until_stopped(&session, &run, &stop).await {
                    tracing::warn!("{e}");
                }
                stop.store(true, Ordering::Relaxed);
            });
        }
        println!("{}", serde_json::json!({"event": "ready", "role": "rollout", "workers": names}));
        let stats = with_device!(cfg.run.device.as_str(), |B, _AD, device| {
            roles::rollout::<B>(&cfg, &session, &names, stop, append_log.as_deref(), device).await
        })?;
        for (name, s) in stats {
            println!(
                "{}",
                serde_json::json!({"event": "stopped", "worker": name, "groups_appended": s.groups_appended,
                    "groups_unsent": s.groups_unsent, "samples": s.rollout.samples})
            );
        }
        let _ = session.close().await;
        anyhow::Ok(())
    })
}
