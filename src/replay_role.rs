//! `sluice replay serve`: one replay shard as its own process.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use sluice_core::ZenohOptions;
use sluice_replay::{Durability, ReplayConfig, ReplayService, Shard};

/// Arguments of `sluice replay serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Run directory; the shard lives in `DIR/replay/shard-K`.
    #[arg(long)]
    pub dir: PathBuf,
    /// Run name (the zenoh key prefix `sluice/{run}/replay/{shard}`).
    #[arg(long, default_value = "default")]
    pub run: String,
    /// Shard number.
    #[arg(long, default_value_t = 0)]
    pub shard: u32,
    /// zenoh endpoint to listen on (repeatable), e.g. tcp/127.0.0.1:7447.
    #[arg(long)]
    pub listen: Vec<String>,
    /// zenoh endpoint to connect to (repeatable).
    #[arg(long)]
    pub connect: Vec<String>,
    /// A zenoh JSON5 config file (TLS, auth, routers) used instead of sluice's peer defaults.
    #[arg(long)]
    pub zenoh_config: Option<PathBuf>,
    /// `fsync`, `group-commit[=MS]` or `os-buffer`.
    #[arg(long, default_value = "group-commit=5")]
    pub durability: String,
    /// Rows held in memory at most.
    #[arg(long)]
    pub capacity_rows: Option<u64>,
    /// Bytes held in memory at most.
    #[arg(long)]
    pub capacity_bytes: Option<u64>,
    /// Staleness bound for eviction and admission.
    #[arg(long)]
    pub max_staleness: Option<u64>,
    /// Groups the learner consumes per step (admission).
    #[arg(long)]
    pub groups_per_step: Option<u64>,
    /// Rows per append log before it rolls into a parquet segment.
    #[arg(long)]
    pub segment_rows: Option<u64>,
    /// Milliseconds a `fifo` delivery waits for its ack before redelivery.
    #[arg(long)]
    pub fifo_lease_ms: Option<u64>,
    /// Let a full store evict groups nobody consumed (ring buffer) instead of pushing back.
    #[arg(long)]
    pub evict_unconsumed: bool,
}

impl ServeArgs {
    fn config(&self) -> Result<ReplayConfig> {
        let d = ReplayConfig::default();
        let durability = Durability::parse(&self.durability).with_context(|| {
            format!("--durability `{}`: expected fsync, group-commit[=MS] or os-buffer", self.durability)
        })?;
        Ok(ReplayConfig {
            capacity_rows: self.capacity_rows.unwrap_or(d.capacity_rows),
            capacity_bytes: self.capacity_bytes.unwrap_or(d.capacity_bytes),
            max_staleness: self.max_staleness.unwrap_or(d.max_staleness),
            groups_per_step: self.groups_per_step.unwrap_or(d.groups_per_step),
            durability,
            segment_rows: self.segment_rows.unwrap_or(d.segment_rows),
            fifo_lease_ms: self.fifo_lease_ms.unwrap_or(d.fifo_lease_ms),
            evict_unconsumed: self.evict_unconsumed,
            ..d
        })
    }
}

/// Recovers the shard, serves it, prints one JSON `ready` line on stdout, and runs until SIGINT or
/// SIGTERM, then flushes and exits.
pub fn serve(args: ServeArgs) -> Result<()> {
    let cfg = args.config()?;
    let dir = args.dir.join("replay").join(format!("shard-{}", args.shard));
    let shard = Arc::new(
        Shard::open(&dir, args.shard, cfg)
            .with_context(|| format!("opening replay shard {}", dir.display()))?,
    );
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let zenoh = ZenohOptions {
            listen: args.listen.clone(),
            connect: args.connect.clone(),
            config_file: args.zenoh_config.clone(),
        };
        let session = zenoh.open().await?;
        let service = ReplayService::start(&session, &args.run, shard.clone()).await?;
        let ready = serde_json::json!({
            "event": "ready",
            "shard": args.shard,
            "key": format!("sluice/{}/replay/{}", args.run, args.shard),
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
