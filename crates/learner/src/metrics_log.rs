//! The learner's metrics: one JSON record per step (`metrics.jsonl`, or a sink that also feeds
//! TensorBoard and the progress bar).

use std::io::Write;
use std::path::PathBuf;

use sluice_core::metrics;

use crate::error::{LearnerError, Result};
use crate::trainer::StepStats;

/// Where the learner's records go: appended one JSON object per line to `metrics.jsonl`, or
/// handed to a sink (the launcher's, which also writes TensorBoard events and the progress bar).
pub struct MetricsLog {
    out: MetricsOut,
}

/// A record consumer for [`MetricsLog::sink`].
pub type MetricsSink = Box<dyn FnMut(&serde_json::Value) -> std::io::Result<()> + Send>;

enum MetricsOut {
    File { file: std::fs::File, path: PathBuf },
    Sink(MetricsSink),
}

impl MetricsLog {
    /// Opens (appending) or creates the log.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self> {
        let path = path.into();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| LearnerError::Io { path: dir.into(), source })?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| LearnerError::Io { path: path.clone(), source })?;
        Ok(MetricsLog { out: MetricsOut::File { file, path } })
    }

    /// Hands every record to `sink`.
    pub fn sink(sink: MetricsSink) -> Self {
        MetricsLog { out: MetricsOut::Sink(sink) }
    }

    /// Writes one record.
    pub fn write(&mut self, record: &serde_json::Value) -> Result<()> {
        match &mut self.out {
            MetricsOut::File { file, path } => {
                let mut line =
                    serde_json::to_vec(record).map_err(|e| LearnerError::Checkpoint(e.to_string()))?;
                line.push(b'\n');
                file.write_all(&line).map_err(|source| LearnerError::Io { path: path.clone(), source })
            }
            MetricsOut::Sink(sink) => {
                sink(record).map_err(|source| LearnerError::Io { path: "<metrics sink>".into(), source })
            }
        }
    }
}

/// A learner step's record: the trainer's metrics, the data side, and where it was taken.
pub fn record(role: &str, step: u64, version: u64, stats: &StepStats) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    map.insert(metrics::ROLE.into(), role.into());
    map.insert(metrics::STEP.into(), step.into());
    map.insert(metrics::VERSION.into(), version.into());
    for (k, v) in &stats.values {
        if let Some(n) = serde_json::Number::from_f64(*v) {
            map.insert((*k).into(), serde_json::Value::Number(n));
        }
    }
    map.insert(metrics::STALENESS_HIST.into(), stats.staleness_hist.clone().into());
    serde_json::Value::Object(map)
}
