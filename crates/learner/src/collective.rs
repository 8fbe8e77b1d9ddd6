//! The learner ranks' collective: burn's collective engine (`burn-collective` 0.21, patched in
//! `third_party/burn-collective`) all-reducing across learner processes.
//!
//! # Design
//! *Constraints.* Data-parallel learners must sum their gradients (and the batch totals their
//! losses are normalised by) exactly, through an existing engine, and a rank that dies or hangs
//! must stop the others with an error instead of a wait for ever; burn's collective calls block
//! and have no timeout. *Solution.* Rank 0 runs burn's global orchestrator (a WebSocket service)
//! on a thread of its own; every rank registers one device with it and then all-reduces through
//! it, peer to peer (ring, tree or centralized). Each blocking call runs on a thread of its own
//! and the caller waits for it at most [`CollectiveConfig::timeout`]; past it the rank gives up
//! with [`LearnerError::Collective`] (the engine's state is then unusable: the process ends).
//! *Cons:* burn's services listen on every interface without authentication, so ranks on several
//! hosts need a trusted network; one call per tensor costs a round of messages, so callers flatten
//! what they reduce into one tensor.

use std::sync::mpsc;
use std::time::Duration;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use burn_collective::{AllReduceStrategy, PeerId, ReduceOperation};

use crate::error::{LearnerError, Result};

/// Where a rank finds the others.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectiveConfig {
    /// This rank, `0..world_size`.
    pub rank: u32,
    /// Ranks in all.
    pub world_size: u32,
    /// Host of rank 0, where the orchestrator listens.
    pub orchestrator_host: String,
    /// Port of the orchestrator.
    pub orchestrator_port: u16,
    /// Host other ranks reach this rank's tensor data service at.
    pub host: String,
    /// Port of this rank's tensor data service.
    pub data_port: u16,
    /// Longest wait for the other ranks in one call (joining included).
    pub timeout: Duration,
    /// How the ranks all-reduce.
    pub strategy: AllReduceStrategy,
}

/// A rank registered with the others.
pub struct Collective<B: Backend> {
    cfg: CollectiveConfig,
    device: B::Device,
}

impl<B: Backend> std::fmt::Debug for Collective<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collective").field("cfg", &self.cfg).finish()
    }
}

/// Runs `f` on a thread of its own and waits at most `timeout` for it.
fn within<T: Send + 'static>(
    what: String,
    timeout: Duration,
    f: impl FnOnce() -> std::result::Result<T, String> + Send + 'static,
) -> Result<T> {
    let (tx, rx) = mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("collective".into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(|e| LearnerError::Collective(format!("{what}: starting its thread: {e}")))?;
    match rx.recv_timeout(timeout) {
        Ok(r) => r.map_err(|e| {
            LearnerError::Collective(format!(
                "{what} failed: {e} (a rank that dies or leaves ends the collective for every rank)"
            ))
        }),
        Err(mpsc::RecvTimeoutError::Timeout) => Err(LearnerError::Collective(format!(
            "{what}: the other ranks did not answer within {timeout:?} (a rank died, hangs, or cannot \
             reach this one)"
        ))),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            Err(LearnerError::Collective(format!("{what}: the collective call panicked")))
        }
    }
}

impl<B: Backend> Collective<B> {
    /// Joins the ranks: rank 0 starts the orchestrator first; every rank registers `device`.
    /// Fails past `cfg.timeout` when not every rank joined.
    pub fn join(cfg: CollectiveConfig, device: B::Device) -> Result<Self> {
        if cfg.world_size == 0 || cfg.rank >= cfg.world_size {
            return Err(LearnerError::InvalidConfig {
                name: "learner.rank",
                reason: format!("rank {} is not in 0..{} (learner.world_size)", cfg.rank, cfg.world_size),
            });
        }
        if cfg.rank == 0 {
            let port = cfg.orchestrator_port;
            std::thread::Builder::new()
                .name("collective-orchestrator".into())
                .spawn(move || {
                    match tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build() {
                        Ok(rt) => rt.block_on(burn_collective::start_global_orchestrator(port)),
                        Err(e) => tracing::error!("the collective orchestrator's runtime: {e}"),
                    }
                })
                .map_err(|e| LearnerError::Collective(format!("starting the orchestrator: {e}")))?;
        }
        let bad = |e: String| LearnerError::Collective(format!("an address: {e}"));
        let orchestrator = format!("ws://{}:{}", cfg.orchestrator_host, cfg.orchestrator_port);
        let node = format!("ws://{}:{}", cfg.host, cfg.data_port);
        let config = burn_collective::CollectiveConfig::default()
            .with_num_devices(1)
            .with_num_nodes(cfg.world_size)
            .with_global_address(orchestrator.parse().map_err(bad)?)
            .with_node_address(node.parse().map_err(bad)?)
            .with_data_service_port(cfg.data_port)
            .with_global_all_reduce_strategy(cfg.strategy);
        let (rank, dev) = (cfg.rank, device.clone());
        within(format!("rank {rank} joining {} ranks", cfg.world_size), cfg.timeout, move || {
            burn_collective::register::<B>(PeerId::from(rank), dev, config).map_err(|e| format!("{e:?}"))
        })?;
        Ok(Collective { cfg, device })
    }

    /// This rank.
    pub fn rank(&self) -> u32 {
        self.cfg.rank
    }

    /// Ranks in all.
    pub fn world_size(&self) -> u32 {
        self.cfg.world_size
    }

    /// The element-wise sum of every rank's `values` (the same length on every rank).
    pub fn all_reduce_sum(&self, values: Vec<f32>) -> Result<Vec<f32>> {
        let n = values.len();
        let t = Tensor::<B, 1>::from_data(TensorData::new(values, [n]), &self.device);
        self.all_reduce_tensor(t)?
            .into_data()
            .to_vec::<f32>()
            .map_err(|e| LearnerError::Collective(format!("reading the sum: {e:?}")))
    }

    /// The element-wise sum of every rank's `t` (the same shape on every rank), on this rank's
    /// device.
    pub fn all_reduce_tensor(&self, t: Tensor<B, 1>) -> Result<Tensor<B, 1>> {
        let n = t.shape().num_elements();
        let rank = self.cfg.rank;
        // The ring cuts a tensor into one slice per rank: a shorter one is padded with zeros.
        let world = self.cfg.world_size as usize;
        let t = if n < world { Tensor::cat(vec![t, Tensor::zeros([world - n], &self.device)], 0) } else { t };
        let sum = within(format!("rank {rank}: all-reduce of {n} values"), self.cfg.timeout, move || {
            let p = t.into_primitive().tensor();
            let out = burn_collective::all_reduce::<B>(PeerId::from(rank), p, ReduceOperation::Sum)
                .map_err(|e| format!("{e:?}"))?;
            Ok(Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(out)))
        })?;
        if sum.shape().num_elements() != n.max(world) {
            return Err(LearnerError::Collective(format!(
                "the all-reduce returned {} values for {n}",
                sum.shape().num_elements()
            )));
        }
        Ok(if n < world { sum.slice(0..n) } else { sum })
    }

    /// Rank 0's `values` on every rank (an all-reduce to which the other ranks add zeros).
    pub fn broadcast_from_root(&self, values: Vec<f32>) -> Result<Vec<f32>> {
        let mine = if self.cfg.rank == 0 { values } else { vec![0.0; values.len()] };
        self.all_reduce_sum(mine)
    }

    /// Checks that this rank's `digest` of its weights equals rank 0's; an error names this rank
    /// and `version` otherwise (the ranks' updates diverged).
    pub fn check_same_digest(&self, digest: u64, version: u64) -> Result<()> {
        // Four 16-bit pieces: exact in f32.
        let pieces: Vec<f32> = (0..4).map(|i| ((digest >> (16 * i)) & 0xffff) as f32).collect();
        let root = self.broadcast_from_root(pieces)?;
        let root = root.iter().enumerate().fold(0u64, |d, (i, &p)| d | ((p as u64) << (16 * i)));
        if root != digest {
            return Err(LearnerError::Collective(format!(
                "rank {}'s weights at version {version} differ from rank 0's (digest {digest:016x}, rank 0 \
                 {root:016x}): the ranks' updates diverged",
                self.cfg.rank
            )));
        }
        Ok(())
    }
}
