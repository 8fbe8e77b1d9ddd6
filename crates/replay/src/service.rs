//! The replay shard as a zenoh service: one queryable per operation under
//! `sluice/{run}/replay/{shard}/{append,sample,ack,tickets,stats}`.
//!
//! Requests are JSON except `append`, whose payload is an Arrow IPC stream; `sample` replies with
//! `[u32 LE length][SampleInfo JSON][Arrow IPC stream]` (see [`frame_sample`]). Errors
//! are replied with `reply_err` carrying an [`ErrorReply`]; a malformed payload is counted and
//! answered, and the service keeps serving (each request runs on the blocking pool under
//! `catch_unwind`, at most [`MAX_IN_FLIGHT`] at a time).

use std::sync::Arc;

use sluice_core::keys;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use zenoh::query::Query;

use crate::error::{ReplayError, Result};
use crate::shard::Shard;
use crate::wire::{AckRequest, ErrorKind, ErrorReply, SampleRequest, TicketRequest};

/// Requests handled concurrently by one shard; more wait in zenoh's queue.
pub const MAX_IN_FLIGHT: usize = 64;

/// The operations a shard serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Append groups (Arrow IPC).
    Append,
    /// Draw groups.
    Sample,
    /// Acknowledge `fifo` deliveries.
    Ack,
    /// Admission tickets.
    Tickets,
    /// Counters.
    Stats,
}

impl Op {
    /// Every operation.
    pub const ALL: [Op; 5] = [Op::Append, Op::Sample, Op::Ack, Op::Tickets, Op::Stats];

    /// The last chunk of its key expression.
    pub fn name(self) -> &'static str {
        match self {
            Op::Append => "append",
            Op::Sample => "sample",
            Op::Ack => "ack",
            Op::Tickets => "tickets",
            Op::Stats => "stats",
        }
    }
}

/// A running shard service; dropping it (or [`ReplayService::stop`]) undeclares the queryables.
pub struct ReplayService {
    tasks: Vec<JoinHandle<()>>,
    shard: Arc<Shard>,
}

impl ReplayService {
    /// Serves `shard` for `run` on `session`.
    pub async fn start(session: &zenoh::Session, run: &str, shard: Arc<Shard>) -> Result<ReplayService> {
        keys::check_name("run", run)?;
        let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let mut tasks = Vec::new();
        for op in Op::ALL {
            let key = keys::replay(run, shard.id(), op.name());
            let queryable = session
                .declare_queryable(&key)
                .await
                .map_err(|e| ReplayError::Zenoh(format!("declaring queryable {key}: {e}")))?;
            let shard = shard.clone();
            let permits = permits.clone();
            tasks.push(tokio::spawn(async move {
                while let Ok(query) = queryable.recv_async().await {
                    let Ok(permit) = permits.clone().acquire_owned().await else { break };
                    let shard = shard.clone();
                    tokio::spawn(async move {
                        handle(op, shard, query).await;
                        drop(permit);
                    });
                }
            }));
        }
        Ok(ReplayService { tasks, shard })
    }

    /// The shard served.
    pub fn shard(&self) -> &Arc<Shard> {
        &self.shard
    }

    /// Stops serving.
    pub fn stop(mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

impl Drop for ReplayService {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn handle(op: Op, shard: Arc<Shard>, query: Query) {
    let payload: Vec<u8> = query.payload().map(|p| p.to_bytes().into_owned()).unwrap_or_default();
    let worker_shard = shard.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || dispatch(op, &worker_shard, payload)))
            .unwrap_or_else(|_| Err(ReplayError::Format(format!("the {} handler panicked", op.name()))))
    })
    .await
    .unwrap_or_else(|e| Err(ReplayError::Format(format!("the {} handler failed: {e}", op.name()))));
    let sent = match outcome {
        Ok(body) => query.reply(query.key_expr().clone(), body).await,
        Err(e) => {
            let kind = match &e {
                ReplayError::Invalid(_) => ErrorKind::Invalid,
                ReplayError::Backpressure { .. } | ReplayError::Busy(_) => ErrorKind::Backpressure,
                _ => ErrorKind::Internal,
            };
            if kind == ErrorKind::Internal {
                tracing::error!("replay shard {}: {} failed: {e}", shard.id(), op.name());
            }
            let body = serde_json::to_vec(&ErrorReply { kind, message: e.to_string() }).unwrap_or_default();
            query.reply_err(body).await
        }
    };
    if let Err(e) = sent {
        tracing::warn!("replay shard {}: replying to {}: {e}", shard.id(), op.name());
    }
}

/// The body of a sample reply: the info's JSON, length-prefixed, then the rows as Arrow IPC.
pub fn frame_sample(info_json: &[u8], ipc: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(4 + info_json.len() + ipc.len());
    body.extend_from_slice(&(info_json.len() as u32).to_le_bytes());
    body.extend_from_slice(info_json);
    body.extend_from_slice(ipc);
    body
}

/// Splits a sample reply body into (info JSON, Arrow IPC); None when it is too short.
pub fn unframe_sample(body: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u32::from_le_bytes(body.get(..4)?.try_into().ok()?) as usize;
    let info = body.get(4..4 + len)?;
    Some((info, &body[4 + len..]))
}

fn parse<T: serde::de::DeserializeOwned>(shard: &Shard, op: Op, payload: &[u8]) -> Result<T> {
    serde_json::from_slice(payload).map_err(|e| {
        shard.count_rejected_payload();
        ReplayError::Invalid(format!("{} request is not valid JSON for this operation: {e}", op.name()))
    })
}

fn json(value: &impl serde::Serialize) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(ReplayError::format)
}

fn dispatch(op: Op, shard: &Shard, payload: Vec<u8>) -> Result<Vec<u8>> {
    shard.check_request_size(op.name(), payload.len())?;
    match op {
        Op::Append => json(&shard.append_ipc(payload)?),
        Op::Sample => {
            let req: SampleRequest = parse(shard, op, &payload)?;
            let (batch, info) = shard.sample(&req)?;
            let mut body = frame_sample(&json(&info)?, &[]);
            sluice_core::trajectory::encode_ipc_into(&[batch], &mut body)?;
            Ok(body)
        }
        Op::Ack => {
            let req: AckRequest = parse(shard, op, &payload)?;
            json(&shard.ack(&req)?)
        }
        Op::Tickets => {
            let req: TicketRequest = parse(shard, op, &payload)?;
            json(&shard.tickets(&req)?)
        }
        Op::Stats => json(&shard.stats()),
    }
}
