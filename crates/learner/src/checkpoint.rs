//! Checkpoints that are complete or absent: written into a temporary directory, sealed with a
//! `COMPLETE` file listing every file's length and xxh3, renamed into place, the oldest pruned.
//!
//! `RUN_DIR/checkpoints/step-00000120/` holds whatever the learner writes (the HF model
//! directory, `optimizer.safetensors`, `trainer.json`) plus `COMPLETE`. [`Checkpoints::latest`]
//! returns the newest directory whose files all match their seal; an incomplete or corrupt one is
//! skipped with a warning, never loaded. [`write_checkpoint`] and [`load_checkpoint`] write and
//! read what the learner keeps there ([`TrainerState`] beside the model and the optimizer);
//! [`resume_latest`] finds the newest one that loads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};
use sluice_core::Lineage;
use sluice_model::{save_model, Llama, ModelConfig};

use crate::error::{LearnerError, Result};
use crate::optim::{AdamW, AdamWConfig, Moments};

/// The seal's file name.
pub const SEAL: &str = "COMPLETE";

/// The file beside the checkpoints that holds the last run epoch started.
const EPOCH_FILE: &str = "EPOCH";

/// One sealed file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Sealed {
    len: u64,
    xxh3: u64,
}

/// The checkpoints of one run.
#[derive(Debug, Clone)]
pub struct Checkpoints {
    dir: PathBuf,
    keep: usize,
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> LearnerError {
    move |e| LearnerError::Checkpoint(format!("{what}: {e}"))
}

impl Checkpoints {
    /// Checkpoints under `dir` (created when needed), keeping the newest `keep` (at least 1).
    pub fn new(dir: impl Into<PathBuf>, keep: usize) -> Self {
        Checkpoints { dir: dir.into(), keep: keep.max(1) }
    }

    /// The directory of step `step`'s checkpoint.
    pub fn path(&self, step: u64) -> PathBuf {
        self.dir.join(format!("step-{step:08}"))
    }

    /// Writes the checkpoint of `step`: `write` fills a temporary directory, which is then sealed
    /// and renamed into place; older checkpoints beyond `keep` are removed. Returns its path.
    pub fn save(&self, step: u64, write: impl FnOnce(&Path) -> Result<()>) -> Result<PathBuf> {
        let final_dir = self.path(step);
        let tmp = self.dir.join(format!(".step-{step:08}.tmp-{}", std::process::id()));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io(format!("clearing {}", tmp.display())))?;
        }
        std::fs::create_dir_all(&tmp).map_err(io(format!("creating {}", tmp.display())))?;
        write(&tmp)?;
        let seal = seal_of(&tmp)?;
        let body = serde_json::to_vec_pretty(&seal).map_err(|e| LearnerError::Checkpoint(e.to_string()))?;
        write_synced(&tmp.join(SEAL), &body)?;
        if final_dir.exists() {
            std::fs::remove_dir_all(&final_dir).map_err(io(format!("replacing {}", final_dir.display())))?;
        }
        std::fs::rename(&tmp, &final_dir).map_err(io(format!(
            "renaming {} to {}",
            tmp.display(),
            final_dir.display()
        )))?;
        if let Ok(d) = std::fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        self.prune()?;
        Ok(final_dir)
    }

    /// Every checkpoint directory, oldest first, sealed or not.
    pub fn list(&self) -> Vec<(u64, PathBuf)> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return Vec::new() };
        let mut out: Vec<(u64, PathBuf)> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let step = name.strip_prefix("step-")?.parse().ok()?;
                Some((step, e.path()))
            })
            .collect();
        out.sort();
        out
    }

    /// The newest checkpoint whose files match its seal; incomplete or corrupt ones are skipped
    /// with a warning.
    pub fn latest(&self) -> Option<(u64, PathBuf)> {
        for (step, path) in self.list().into_iter().rev() {
            match verify(&path) {
                Ok(()) => return Some((step, path)),
                Err(e) => tracing::warn!("skipping checkpoint {}: {e}", path.display()),
            }
        }
        None
    }

    /// Begins a learner start: returns a run epoch above every epoch started in this directory
    /// before and above `restored` (the epoch of the checkpoint resumed from), and records it
    /// durably first, so that a learner that dies before its first checkpoint still used its
    /// epoch up. The record is the file `EPOCH` beside the checkpoints.
    pub fn next_epoch(&self, restored: u64) -> Result<u64> {
        std::fs::create_dir_all(&self.dir).map_err(io(format!("creating {}", self.dir.display())))?;
        let path = self.dir.join(EPOCH_FILE);
        let last = match std::fs::read_to_string(&path) {
            Ok(text) => text.trim().parse::<u64>().map_err(|e| {
                LearnerError::Checkpoint(format!("{} does not hold an epoch number: {e}", path.display()))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io(format!("reading {}", path.display()))(e)),
        };
        let epoch = last.max(restored) + 1;
        let tmp = self.dir.join(format!(".{EPOCH_FILE}.tmp-{}", std::process::id()));
        write_synced(&tmp, format!("{epoch}\n").as_bytes())?;
        std::fs::rename(&tmp, &path).map_err(io(format!(
            "renaming {} to {}",
            tmp.display(),
            path.display()
        )))?;
        if let Ok(d) = std::fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(epoch)
    }

    fn prune(&self) -> Result<()> {
        let all = self.list();
        let excess = all.len().saturating_sub(self.keep);
        for (_, path) in all.into_iter().take(excess) {
            std::fs::remove_dir_all(&path).map_err(io(format!("pruning {}", path.display())))?;
        }
        Ok(())
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).map_err(io(format!("creating {}", path.display())))?;
    f.write_all(bytes).map_err(io(format!("writing {}", path.display())))?;
    f.sync_all().map_err(io(format!("syncing {}", path.display())))
}

/// Every file under `dir` (but the seal), by relative path, with its length and xxh3.
fn seal_of(dir: &Path) -> Result<BTreeMap<String, Sealed>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(io(format!("listing {}", d.display())))? {
            let path = e.map_err(io(format!("listing {}", d.display())))?.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let rel = path.strip_prefix(dir).unwrap_or(&path).to_string_lossy().into_owned();
            if rel == SEAL {
                continue;
            }
            let bytes = std::fs::read(&path).map_err(io(format!("reading {}", path.display())))?;
            if let Ok(f) = std::fs::File::open(&path) {
                let _ = f.sync_all();
            }
            out.insert(rel, Sealed { len: bytes.len() as u64, xxh3: xxhash_rust::xxh3::xxh3_64(&bytes) });
        }
    }
    Ok(out)
}

/// Checks a checkpoint directory against its seal.
pub fn verify(dir: &Path) -> Result<()> {
    let seal_path = dir.join(SEAL);
    let body = std::fs::read(&seal_path)
        .map_err(|e| LearnerError::Checkpoint(format!("no readable {SEAL} (an interrupted write?): {e}")))?;
    let want: BTreeMap<String, Sealed> = serde_json::from_slice(&body)
        .map_err(|e| LearnerError::Checkpoint(format!("{} is not a valid seal: {e}", seal_path.display())))?;
    let got = seal_of(dir)?;
    for (file, w) in &want {
        match got.get(file) {
            None => return Err(LearnerError::Checkpoint(format!("{file} is missing"))),
            Some(g) if g != w => {
                return Err(LearnerError::Checkpoint(format!(
                    "{file} has {} bytes with xxh3 {:016x}; the seal says {} bytes with {:016x}",
                    g.len, g.xxh3, w.len, w.xxh3
                )))
            }
            Some(_) => {}
        }
    }
    if let Some(extra) = got.keys().find(|k| !want.contains_key(*k)) {
        return Err(LearnerError::Checkpoint(format!("{extra} is not in the seal")));
    }
    Ok(())
}

/// A parameter's first and second moments as they are read, either possibly still missing.
type HalfMoments<B> = (Option<Tensor<B, 1>>, Option<Tensor<B, 1>>);

/// The optimizer's step and config, stored beside its moments.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct OptimizerMeta {
    step: u64,
    config: AdamWConfig,
}

/// Writes AdamW's state to `path` as safetensors (`m.{param path}`, `v.{param path}`, f32), with
/// its step and config in the metadata.
pub fn save_optimizer<B: AutodiffBackend>(opt: &AdamW<B>, path: &Path) -> Result<()> {
    let mut blobs: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (key, Moments { m, v }) in &opt.state {
        for (prefix, t) in [("m", m), ("v", v)] {
            let values = t.clone().into_data().convert::<f32>().into_vec::<f32>().map_err(|e| {
                LearnerError::Checkpoint(format!("reading optimizer state {prefix}.{key}: {e:?}"))
            })?;
            let bytes: Vec<u8> = values.iter().flat_map(|x| x.to_le_bytes()).collect();
            blobs.push((format!("{prefix}.{key}"), vec![values.len()], bytes));
        }
    }
    let views = blobs
        .iter()
        .map(|(name, shape, bytes)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| LearnerError::Checkpoint(format!("optimizer tensor {name}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let meta = OptimizerMeta { step: opt.step, config: opt.config };
    let meta = serde_json::to_string(&meta).map_err(|e| LearnerError::Checkpoint(e.to_string()))?;
    let info = std::collections::HashMap::from([("sluice_optimizer".to_string(), meta)]);
    safetensors::serialize_to_file(views, Some(info), path)
        .map_err(|e| LearnerError::Checkpoint(format!("writing {}: {e}", path.display())))
}

/// Reads AdamW's state written by [`save_optimizer`] onto `device`.
pub fn load_optimizer<B: AutodiffBackend>(
    path: &Path,
    device: &burn::tensor::Device<B::InnerBackend>,
) -> Result<AdamW<B>> {
    let bad = |m: String| LearnerError::Checkpoint(format!("{}: {m}", path.display()));
    let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
    let meta = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get("sluice_optimizer"))
        .ok_or_else(|| bad("no sluice_optimizer metadata".into()))?;
    let meta: OptimizerMeta = serde_json::from_str(meta).map_err(|e| bad(e.to_string()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let mut halves: BTreeMap<String, HalfMoments<B::InnerBackend>> = BTreeMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(bad(format!("{name} is {:?}, not f32", view.dtype())));
        }
        let values: Vec<f32> =
            view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        let n = values.len();
        let t = Tensor::<B::InnerBackend, 1>::from_data(TensorData::new(values, [n]), device);
        match name.split_once('.') {
            Some(("m", key)) => halves.entry(key.to_string()).or_default().0 = Some(t),
            Some(("v", key)) => halves.entry(key.to_string()).or_default().1 = Some(t),
            _ => return Err(bad(format!("unexpected tensor {name}"))),
        }
    }
    let mut opt = AdamW::<B>::new(meta.config);
    opt.step = meta.step;
    for (key, (m, v)) in halves {
        match (m, v) {
            (Some(m), Some(v)) => {
                opt.state.insert(key, Moments { m, v });
            }
            _ => return Err(bad(format!("parameter {key} lacks its first or second moment"))),
        }
    }
    Ok(opt)
}

/// What a checkpoint records besides the weights and the optimizer (`trainer.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainerState {
    /// Format of this file.
    pub format: u32,
    /// Policy version: batches whose update was applied (the optimizer takes `epochs` steps per
    /// version).
    pub version: u64,
    /// Learner steps (batches) taken; `version` unless a step's update was left out (not finite).
    pub step: u64,
    /// The run's seed.
    pub seed: u64,
    /// The learning-rate schedule's position (its next step).
    pub schedule_step: u64,
    /// The replay consumer this learner acknowledges as.
    pub consumer: String,
    /// Groups trained on since the run began.
    pub groups_consumed: u64,
    /// Samples trained on since the run began.
    pub samples_consumed: u64,
    /// Groups trained on since the previous checkpoint: acknowledged once this one is sealed (and
    /// again on resume, which is harmless).
    pub unacked: Vec<u64>,
    /// Digest of the config the checkpoint was made under ([`crate::LearnerConfig::digest`]).
    pub config_digest: String,
    /// The learner start (run epoch) that wrote it ([`Lineage`]; 0 before epochs existed).
    #[serde(default)]
    pub epoch: u64,
    /// The earlier epochs its weights descend from, each with its last version on this lineage.
    #[serde(default)]
    pub ancestry: Vec<(u64, u64)>,
}

impl TrainerState {
    /// The lineage of the weights beside it.
    pub fn lineage(&self) -> Lineage {
        Lineage { epoch: self.epoch, version: self.version, ancestry: self.ancestry.clone() }
    }
}

const STATE_FILE: &str = "trainer.json";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// Tokenizer files copied from the initial model into every checkpoint, when present.
const TOKENIZER_FILES: [&str; 3] = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"];

/// A checkpoint read back: the policy, its optimizer and the trainer state.
pub struct Restored<B: AutodiffBackend> {
    /// The policy at the checkpoint.
    pub model: Llama<B>,
    /// AdamW with its moments.
    pub optimizer: AdamW<B>,
    /// The trainer state.
    pub state: TrainerState,
}

/// Reads a sealed checkpoint directory (refusing an unsealed or corrupt one).
pub fn load_checkpoint<B: AutodiffBackend>(dir: &Path, device: &B::Device) -> Result<Restored<B>> {
    verify(dir)?;
    let cfg = ModelConfig::from_file(&dir.join("config.json"))?;
    let weights = sluice_model::weights::read_hf_weights(dir)?;
    let model = Llama::<B>::from_checkpoint(&cfg, &weights, dir, device)?;
    let optimizer = load_optimizer::<B>(&dir.join(OPTIMIZER_FILE), device)?;
    let path = dir.join(STATE_FILE);
    let text =
        std::fs::read_to_string(&path).map_err(|source| LearnerError::Io { path: path.clone(), source })?;
    let state: TrainerState = serde_json::from_str(&text)
        .map_err(|e| LearnerError::Checkpoint(format!("{}: {e}", path.display())))?;
    if state.version > optimizer.step || state.version > state.step {
        return Err(LearnerError::Checkpoint(format!(
            "{}: trainer state says version {} after {} learner steps but the optimizer took {} steps",
            dir.display(),
            state.version,
            state.step,
            optimizer.step
        )));
    }
    Ok(Restored { model, optimizer, state })
}

/// What `--resume` loads: the newest checkpoint under `checkpoints` that is sealed, intact and
/// readable. Incomplete, corrupt or unreadable ones are skipped with a warning, never loaded;
/// `None` when no checkpoint qualifies (the run starts fresh).
pub fn resume_latest<B: AutodiffBackend>(
    checkpoints: &Checkpoints,
    device: &B::Device,
) -> Option<Restored<B>> {
    for (_, path) in checkpoints.list().into_iter().rev() {
        match load_checkpoint::<B>(&path, device) {
            Ok(r) => {
                tracing::info!("resuming from {} (version {})", path.display(), r.state.version);
                return Some(r);
            }
            Err(e) => tracing::warn!("skipping checkpoint {}: {e}", path.display()),
        }
    }
    None
}

/// Writes a sealed checkpoint of step `state.step`: the model as an HF directory (with the
/// tokenizer files of `tokenizer_dir`, so it loads as a policy), the optimizer's moments and the
/// trainer state.
pub fn write_checkpoint<B: AutodiffBackend>(
    checkpoints: &Checkpoints,
    state: &TrainerState,
    model: &Llama<B>,
    optimizer: &AdamW<B>,
    tokenizer_dir: Option<&Path>,
) -> Result<PathBuf> {
    checkpoints.save(state.step, |tmp| {
        save_model(model, tmp)?;
        if let Some(dir) = tokenizer_dir {
            for name in TOKENIZER_FILES {
                let from = dir.join(name);
                if from.exists() {
                    std::fs::copy(&from, tmp.join(name))
                        .map_err(|source| LearnerError::Io { path: from.clone(), source })?;
                }
            }
        }
        save_optimizer(optimizer, &tmp.join(OPTIMIZER_FILE))?;
        let json = serde_json::to_vec_pretty(state).map_err(|e| LearnerError::Checkpoint(e.to_string()))?;
        let p = tmp.join(STATE_FILE);
        std::fs::write(&p, json).map_err(|source| LearnerError::Io { path: p, source })
    })
}
