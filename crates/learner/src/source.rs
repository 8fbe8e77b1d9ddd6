//! Where the learner's batches come from: the replay over zenoh, or a shard in this process.

use arrow_array::RecordBatch;
use sluice_replay::{AckRequest, ReplayClient, SampleInfo, SampleRequest, Shard};

use crate::error::Result;

/// Where the learner's batches come from: the replay over zenoh ([`ReplayClient`]) or a shard in
/// this process ([`Shard`]).
pub trait GroupSource: Send + Sync {
    /// Draws whole groups as the request says.
    fn sample(
        &self,
        req: &SampleRequest,
    ) -> impl std::future::Future<Output = Result<(RecordBatch, SampleInfo)>> + Send;
    /// Marks groups consumed by `consumer`.
    fn ack(&self, consumer: &str, group_ids: &[u64]) -> impl std::future::Future<Output = Result<()>> + Send;
    /// Marks groups consumed that `consumer` drops untrained ([`AckRequest::dropped`]).
    fn ack_dropped(
        &self,
        consumer: &str,
        group_ids: &[u64],
    ) -> impl std::future::Future<Output = Result<()>> + Send;
}

impl GroupSource for ReplayClient {
    async fn sample(&self, req: &SampleRequest) -> Result<(RecordBatch, SampleInfo)> {
        let s = ReplayClient::sample(self, req).await?;
        Ok((s.batch, s.info))
    }

    async fn ack(&self, consumer: &str, group_ids: &[u64]) -> Result<()> {
        ReplayClient::ack(self, consumer, group_ids).await?;
        Ok(())
    }

    async fn ack_dropped(&self, consumer: &str, group_ids: &[u64]) -> Result<()> {
        ReplayClient::ack_dropped(self, consumer, group_ids).await?;
        Ok(())
    }
}

impl GroupSource for Shard {
    async fn sample(&self, req: &SampleRequest) -> Result<(RecordBatch, SampleInfo)> {
        Ok(Shard::sample(self, req)?)
    }

    async fn ack(&self, consumer: &str, group_ids: &[u64]) -> Result<()> {
        Shard::ack(
            self,
            &AckRequest { consumer: consumer.into(), group_ids: group_ids.to_vec(), dropped: false },
        )?;
        Ok(())
    }

    async fn ack_dropped(&self, consumer: &str, group_ids: &[u64]) -> Result<()> {
        Shard::ack(
            self,
            &AckRequest { consumer: consumer.into(), group_ids: group_ids.to_vec(), dropped: true },
        )?;
        Ok(())
    }
}
