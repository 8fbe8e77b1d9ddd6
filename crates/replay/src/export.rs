//! `sluice replay export`: the whole store as one parquet file (one row per sample, the schema
//! of `docs/design.md`, "Trajectories"), readable by pandas, polars and duckdb.

use std::path::{Path, PathBuf};

use arrow_array::RecordBatch;
use sluice_core::RlConfig;

use crate::config::ReplayConfig;
use crate::durable;
use crate::error::{ReplayError, Result};
use crate::shard::{recover, Recovered};

/// The shard directories under a run directory (`RUN_DIR/replay/shard-K`), or `dir` itself when
/// it is a shard directory.
pub fn shard_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let is_shard = |d: &Path| {
        durable::meta_path(d).exists()
            || durable::list_files(d).map(|(s, l)| !s.is_empty() || !l.is_empty()).unwrap_or(false)
    };
    if is_shard(dir) {
        return Ok(vec![dir.to_path_buf()]);
    }
    let replay = dir.join("replay");
    let mut dirs = Vec::new();
    if replay.is_dir() {
        for entry in std::fs::read_dir(&replay).map_err(ReplayError::io(&replay))? {
            let path = entry.map_err(ReplayError::io(&replay))?.path();
            if path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("shard-")) && path.is_dir() {
                dirs.push(path);
            }
        }
    }
    dirs.sort();
    if dirs.is_empty() {
        return Err(ReplayError::Invalid(format!(
            "{} holds no replay store (expected RUN_DIR/replay/shard-K/ or a shard directory)",
            dir.display()
        )));
    }
    Ok(dirs)
}

/// Writes every group held by the store(s) under `dir` into `out`; returns (groups, rows).
///
/// Reads the shard directories the way a restart would (acknowledged groups, evictions applied
/// with default capacity) without starting a writer, so it can run beside a live shard; a torn
/// log tail is left for the shard itself to repair.
pub fn export(dir: &Path, out: &Path) -> Result<(u64, u64)> {
    export_with(dir, out, None)
}

/// Turns token ids into text (a tokenizer's decode), for [`export_with`].
pub type Decode<'a> = &'a dyn Fn(&[u32]) -> std::result::Result<String, String>;

/// [`export`], with two more columns when `decode` is given: `prompt_text` and `completion_text`,
/// the prompt and completion tokens decoded (environment observations included, as the model
/// saw them).
pub fn export_with(dir: &Path, out: &Path, decode: Option<Decode<'_>>) -> Result<(u64, u64)> {
    let mut batches: Vec<RecordBatch> = Vec::new();
    let mut groups = 0;
    for shard in shard_dirs(dir)? {
        let cfg = ReplayConfig { capacity_rows: u64::MAX, capacity_bytes: u64::MAX, ..Default::default() };
        let store = recover_readonly(&shard, cfg, RlConfig::default())?.store;
        groups += store.len() as u64;
        batches.extend(store.batches().cloned());
    }
    let rows = batches.iter().map(|b| b.num_rows() as u64).sum();
    if let Some(decode) = decode {
        batches = batches.iter().map(|b| with_text(b, decode)).collect::<Result<_>>()?;
    }
    durable::write_parquet(out, &batches)?;
    Ok((groups, rows))
}

/// `batch` with `prompt_text` and `completion_text` appended.
fn with_text(batch: &RecordBatch, decode: Decode<'_>) -> Result<RecordBatch> {
    use arrow_array::{Array, ArrayRef, ListArray, StringArray, UInt32Array};
    use arrow_schema::{DataType, Field, Schema};
    let text = |name: &str| -> Result<ArrayRef> {
        let list = batch
            .column_by_name(name)
            .and_then(|c| c.as_any().downcast_ref::<ListArray>())
            .ok_or_else(|| ReplayError::Invalid(format!("a stored batch has no list column {name}")))?;
        let mut out = Vec::with_capacity(list.len());
        for r in 0..list.len() {
            let ids = list.value(r);
            let ids = ids
                .as_any()
                .downcast_ref::<UInt32Array>()
                .ok_or_else(|| ReplayError::Invalid(format!("{name} does not hold u32 token ids")))?;
            out.push(
                decode(ids.values())
                    .map_err(|e| ReplayError::Invalid(format!("decoding {name} of row {r}: {e}")))?,
            );
        }
        Ok(std::sync::Arc::new(StringArray::from(out)))
    };
    let mut fields: Vec<Field> = batch.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new("prompt_text", DataType::Utf8, false));
    fields.push(Field::new("completion_text", DataType::Utf8, false));
    let mut columns = batch.columns().to_vec();
    columns.push(text(sluice_core::trajectory::col::PROMPT_TOKENS)?);
    columns.push(text(sluice_core::trajectory::col::COMPLETION_TOKENS)?);
    RecordBatch::try_new(std::sync::Arc::new(Schema::new(fields)), columns).map_err(ReplayError::format)
}

fn recover_readonly(dir: &Path, cfg: ReplayConfig, rl: RlConfig) -> Result<Recovered> {
    // Recovery only truncates torn tails and removes superseded logs, both of which a running
    // shard does itself on its next start; exporting from a copy keeps the original untouched.
    let tmp = tempdir_copy(dir)?;
    let result = recover(&tmp, cfg, rl);
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

fn tempdir_copy(dir: &Path) -> Result<PathBuf> {
    let tmp =
        std::env::temp_dir().join(format!("sluice-export-{}-{}", std::process::id(), rand::random::<u64>()));
    std::fs::create_dir_all(&tmp).map_err(ReplayError::io(&tmp))?;
    for entry in std::fs::read_dir(dir).map_err(ReplayError::io(dir))? {
        let path = entry.map_err(ReplayError::io(dir))?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy().to_string();
        if path.is_file() && !name.ends_with(".tmp") && name != "LOCK" {
            let to = tmp.join(path.file_name().unwrap_or_default());
            // Segments are never modified by recovery: hard links where the filesystem allows.
            // Logs may be truncated (torn tail), so they are copied.
            let is_segment = path.extension().is_some_and(|e| e == "parquet");
            if !is_segment || std::fs::hard_link(&path, &to).is_err() {
                std::fs::copy(&path, &to).map_err(ReplayError::io(&path))?;
            }
        }
    }
    Ok(tmp)
}
