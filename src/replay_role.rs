//! `sluice replay serve CONFIG --shard K`: one replay shard of a run as its own process (for
//! spreading a run's shards over hosts; `sluice replay CONFIG` serves every shard in one).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use sluice_replay::{ReplayService, Shard};

use crate::launch::RoleArgs;

/// Arguments of `sluice replay serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The run's TOML config: its run name and directory, `[replay]` and `[rl]` settings, and
    /// `[zenoh]` endpoints.
    pub config: PathBuf,
    /// Shard number (below `run.replay_shards`).
    #[arg(long, default_value_t = 0)]
    pub shard: u32,
    /// Overrides and endpoints, as for the other roles.
    #[command(flatten)]
    pub args: RoleArgs,
}

/// Recovers the shard, serves it, prints one JSON `ready` line on stdout, and runs until SIGINT or
/// SIGTERM, then flushes and exits.
pub fn serve(serve: ServeArgs) -> Result<()> {
    let cfg = serve.args.load(Some(&serve.config))?;
    let k = serve.shard;
    anyhow::ensure!(
        k < cfg.run.replay_shards,
        "--shard {k}: the run has {} replay shards (run.replay_shards in {})",
        cfg.run.replay_shards,
        serve.config.display()
    );
    let dir = cfg.run.dir.join("replay").join(format!("shard-{k}"));
    let shard = Arc::new(
        Shard::open(&dir, k, cfg.replay.clone(), cfg.rl)
            .with_context(|| format!("opening replay shard {}", dir.display()))?,
    );
    shard.set_vocab_size(crate::roles::model_vocab(&cfg)?);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let session = cfg.zenoh_options().open().await?;
        let service = ReplayService::start(&session, &cfg.run.name, shard.clone()).await?;
        let ready = serde_json::json!({
            "event": "ready",
            "shard": k,
            "key": sluice_core::keys::replay(&cfg.run.name, k, "*"),
            "dir": dir,
            "recovered": shard.recovery(),
        });
        println!("{ready}");
        crate::roles::signalled().await?;
        service.stop();
        let _ = session.close().await;
        anyhow::Ok(())
    })?;
    drop(runtime);
    match Arc::try_unwrap(shard) {
        Ok(shard) => shard.close(),
        Err(_) => tracing::warn!("replay shard still referenced at exit; its log is flushed by the OS"),
    }
    Ok(())
}
