//! The trajectory data contract (`docs/design.md`, "Trajectories"): one Arrow row per sampled
//! completion, a *group* is the G completions of one prompt.
//!
//! # Design
//! *Constraints.* Rollout workers, the replay store, the learner and `sluice replay export` must
//! agree on one layout, and the replay store must reject a malformed batch before any of it is
//! stored, saying which row is wrong and why. *Solution.* [`trajectory_schema`] is the only
//! definition of the columns; [`groups_to_batch`] builds a batch with Arrow builders,
//! [`validate_batch`] checks a batch from anywhere (another process, another language) row by row
//! and returns the groups it holds, and [`batch_to_groups`] turns a valid batch back into Rust
//! values. *Pros:* one schema, checked once at the door, zero-copy afterwards. *Cons:* validation
//! walks every list once (cheap next to the sampling that produced it).

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use arrow_array::builder::ArrayBuilder;
use arrow_array::builder::{
    Float32Builder, ListBuilder, MapBuilder, StringBuilder, StringDictionaryBuilder,
    TimestampMicrosecondBuilder, UInt16Builder, UInt32Builder, UInt64Builder, UInt8Builder,
};
use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Int32Type, TimestampMicrosecondType, UInt16Type, UInt32Type, UInt64Type, UInt8Type,
};
use arrow_array::{Array, ArrayAccessor, ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};

use crate::error::{Error, Result};

/// Time zone of `created_at` (stored as microseconds since the Unix epoch).
pub const CREATED_AT_TZ: &str = "UTC";

/// How an episode ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Finish {
    /// The model emitted a stop token or stop string.
    Stop,
    /// The completion hit the token budget.
    Length,
    /// The environment ended the episode.
    EnvDone,
    /// Generation was cancelled (shutdown, a weight version abandoned).
    Aborted,
    /// The environment failed (panic, timeout, protocol error).
    Error,
}

impl Finish {
    /// Every value, in schema order.
    pub const ALL: [Finish; 5] =
        [Finish::Stop, Finish::Length, Finish::EnvDone, Finish::Aborted, Finish::Error];

    /// The name stored in the `finish` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
            Finish::EnvDone => "env_done",
            Finish::Aborted => "aborted",
            Finish::Error => "error",
        }
    }

    /// Parses a `finish` column value.
    pub fn parse(s: &str) -> Option<Finish> {
        Finish::ALL.into_iter().find(|f| f.as_str() == s)
    }
}

/// One sampled completion: one row of the trajectory schema.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Which run produced it.
    pub run_id: String,
    /// The group (prompt instance) it belongs to.
    pub group_id: u64,
    /// Its index within the group, 0..G-1.
    pub sample_idx: u16,
    /// The task it answers.
    pub task_id: String,
    /// The dataset or generator the task came from.
    pub source: String,
    /// The prompt as fed to the model.
    pub prompt_tokens: Vec<u32>,
    /// Every token after the prompt, model and environment tokens alike.
    pub completion_tokens: Vec<u32>,
    /// 1 where the model produced the token, 0 for environment/tool tokens.
    pub loss_mask: Vec<u8>,
    /// Log-prob of each completion token under the sampling policy (0 where the mask is 0).
    pub behavior_logprobs: Vec<f32>,
    /// The policy version that produced each token.
    pub token_versions: Vec<u64>,
    /// The minimum of `token_versions` (the sample's staleness).
    pub behavior_version: u64,
    /// The learner start (run epoch) whose weights produced every token ([`crate::PolicyId`]):
    /// weights are never swapped across epochs within a batch, so one epoch per sample, and
    /// per group.
    pub behavior_epoch: u64,
    /// Total reward.
    pub reward: f32,
    /// Named reward components.
    pub reward_parts: BTreeMap<String, f32>,
    /// How the episode ended.
    pub finish: Finish,
    /// Environment turns.
    pub num_turns: u16,
    /// When the sample was finished, microseconds since the Unix epoch (UTC).
    pub created_at_us: i64,
}

/// The G completions of one prompt instance, in `sample_idx` order.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    /// Shared by every sample.
    pub group_id: u64,
    /// The completions.
    pub samples: Vec<Sample>,
}

impl Sample {
    /// The weights behind its oldest token.
    pub fn behavior(&self) -> crate::PolicyId {
        crate::PolicyId::new(self.behavior_epoch, self.behavior_version)
    }

    /// Whether the episode failed (`finish = error`: the environment panicked, timed out or broke
    /// its protocol). Its reward says nothing about the completion, so it is neither trained on
    /// nor counted in its group's statistics (`docs/design.md`, "Objectives").
    pub fn failed(&self) -> bool {
        self.finish == Finish::Error
    }
}

impl Group {
    /// The samples that did not fail ([`Sample::failed`]).
    pub fn valid_samples(&self) -> impl Iterator<Item = &Sample> {
        self.samples.iter().filter(|s| !s.failed())
    }

    /// Whether fewer than two samples are valid: no group baseline, so nothing to train.
    pub fn too_few_valid(&self) -> bool {
        self.valid_samples().nth(1).is_none()
    }

    /// Mean reward over the valid samples.
    pub fn mean_reward(&self) -> f64 {
        let rewards: Vec<f64> = self.valid_samples().map(|s| s.reward as f64).collect();
        mean(rewards.into_iter())
    }

    /// Whether the valid samples' rewards are all equal ([`zero_variance`]).
    pub fn zero_variance(&self) -> bool {
        zero_variance(self.valid_samples().map(|s| s.reward))
    }
}

/// Whether a group's rewards (of its valid samples) are all equal: its group-relative advantages
/// are all zero, so it carries no GRPO signal (DAPO's dynamic sampling drops such groups). The one
/// statement of the rule: the replay's sampler and the learner's batch filling both use it. Exact
/// equality, not a standard deviation under a threshold, so that rounding in a mean never decides.
/// Fewer than two rewards is not zero variance but no group at all ([`Group::too_few_valid`]):
/// `false`, so such a group is counted as failed rather than as solved.
pub fn zero_variance(rewards: impl IntoIterator<Item = f32>) -> bool {
    let mut it = rewards.into_iter();
    match (it.next(), it.next()) {
        (Some(first), Some(second)) => first == second && it.all(|r| r == first),
        _ => false,
    }
}

fn mean(xs: impl ExactSizeIterator<Item = f64>) -> f64 {
    let n = xs.len();
    if n == 0 {
        return 0.0;
    }
    xs.sum::<f64>() / n as f64
}

/// Column names, in schema order.
pub mod col {
    #![allow(missing_docs)]
    pub const RUN_ID: &str = "run_id";
    pub const GROUP_ID: &str = "group_id";
    pub const SAMPLE_IDX: &str = "sample_idx";
    pub const TASK_ID: &str = "task_id";
    pub const SOURCE: &str = "source";
    pub const PROMPT_TOKENS: &str = "prompt_tokens";
    pub const COMPLETION_TOKENS: &str = "completion_tokens";
    pub const LOSS_MASK: &str = "loss_mask";
    pub const BEHAVIOR_LOGPROBS: &str = "behavior_logprobs";
    pub const TOKEN_VERSIONS: &str = "token_versions";
    pub const BEHAVIOR_VERSION: &str = "behavior_version";
    pub const REWARD: &str = "reward";
    pub const REWARD_PARTS: &str = "reward_parts";
    pub const FINISH: &str = "finish";
    pub const NUM_TURNS: &str = "num_turns";
    pub const CREATED_AT: &str = "created_at";
    pub const BEHAVIOR_EPOCH: &str = "behavior_epoch";
}

fn list_of(item: DataType) -> DataType {
    DataType::List(Arc::new(Field::new_list_field(item, true)))
}

fn dict_utf8() -> DataType {
    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
}

fn reward_parts_type() -> DataType {
    // The layout `MapBuilder` produces with its default field names.
    let entries = Fields::from(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("value", DataType::Float32, true),
    ]);
    DataType::Map(Arc::new(Field::new("entries", DataType::Struct(entries), false)), false)
}

/// The trajectory schema of `docs/design.md` ("Trajectories"), the only definition of it.
pub fn trajectory_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            Arc::new(Schema::new(vec![
                Field::new(col::RUN_ID, dict_utf8(), false),
                Field::new(col::GROUP_ID, DataType::UInt64, false),
                Field::new(col::SAMPLE_IDX, DataType::UInt16, false),
                Field::new(col::TASK_ID, DataType::Utf8, false),
                Field::new(col::SOURCE, DataType::Utf8, false),
                Field::new(col::PROMPT_TOKENS, list_of(DataType::UInt32), false),
                Field::new(col::COMPLETION_TOKENS, list_of(DataType::UInt32), false),
                Field::new(col::LOSS_MASK, list_of(DataType::UInt8), false),
                Field::new(col::BEHAVIOR_LOGPROBS, list_of(DataType::Float32), false),
                Field::new(col::TOKEN_VERSIONS, list_of(DataType::UInt64), false),
                Field::new(col::BEHAVIOR_VERSION, DataType::UInt64, false),
                Field::new(col::REWARD, DataType::Float32, false),
                Field::new(col::REWARD_PARTS, reward_parts_type(), false),
                Field::new(col::FINISH, dict_utf8(), false),
                Field::new(col::NUM_TURNS, DataType::UInt16, false),
                Field::new(
                    col::CREATED_AT,
                    DataType::Timestamp(TimeUnit::Microsecond, Some(CREATED_AT_TZ.into())),
                    false,
                ),
                // Last, so that a batch written before it existed reads with [`upgrade`].
                Field::new(col::BEHAVIOR_EPOCH, DataType::UInt64, false),
            ]))
        })
        .clone()
}

/// A batch stored before `behavior_epoch` existed, with that column added as 0 (the epoch of
/// everything written before versions had epochs); any other batch as it is.
pub fn upgrade(batch: RecordBatch) -> Result<RecordBatch> {
    let schema = trajectory_schema();
    let n = schema.fields().len();
    if batch.num_columns() != n - 1 || batch.schema_ref().field(n - 2).name() != col::CREATED_AT {
        return Ok(batch);
    }
    let mut columns = batch.columns().to_vec();
    columns.push(Arc::new(arrow_array::UInt64Array::from(vec![0u64; batch.num_rows()])));
    RecordBatch::try_new(schema, columns).map_err(|e| Error::Schema(e.to_string()))
}

/// Builds one record batch from groups (rows in group order, then `sample_idx` order as given).
///
/// ```
/// use sluice_core::trajectory::{batch_to_groups, decode_ipc, encode_ipc, groups_to_batch};
/// use sluice_core::{Finish, Group, Sample};
///
/// let sample = |i: u16, reward: f32| Sample {
///     run_id: "run".into(), group_id: 7, sample_idx: i, task_id: "2+2".into(), source: "arithmetic".into(),
///     prompt_tokens: vec![17, 18], completion_tokens: vec![19, 20, 2], loss_mask: vec![1, 1, 1],
///     behavior_logprobs: vec![-0.5, -0.1, -0.01], token_versions: vec![3, 3, 4], behavior_version: 3,
///     behavior_epoch: 1, reward, reward_parts: [("correct".to_string(), reward)].into(), finish: Finish::Stop,
///     num_turns: 1, created_at_us: 1_700_000_000_000_000,
/// };
/// let groups = vec![Group { group_id: 7, samples: vec![sample(0, 1.0), sample(1, 0.0)] }];
/// let batch = groups_to_batch(&groups).unwrap();
/// let wire = encode_ipc(&[batch]).unwrap();
/// assert_eq!(batch_to_groups(&decode_ipc(&wire).unwrap()).unwrap(), groups);
/// ```
pub fn groups_to_batch(groups: &[Group]) -> Result<RecordBatch> {
    let rows: usize = groups.iter().map(|g| g.samples.len()).sum();
    let mut run_id = StringDictionaryBuilder::<Int32Type>::new();
    let mut group_id = UInt64Builder::with_capacity(rows);
    let mut sample_idx = UInt16Builder::with_capacity(rows);
    let mut task_id = StringBuilder::new();
    let mut source = StringBuilder::new();
    let mut prompt = ListBuilder::new(UInt32Builder::new());
    let mut completion = ListBuilder::new(UInt32Builder::new());
    let mut mask = ListBuilder::new(UInt8Builder::new());
    let mut logprobs = ListBuilder::new(Float32Builder::new());
    let mut versions = ListBuilder::new(UInt64Builder::new());
    let mut behavior_version = UInt64Builder::with_capacity(rows);
    let mut reward = Float32Builder::with_capacity(rows);
    let mut parts = MapBuilder::new(None, StringBuilder::new(), Float32Builder::new());
    let mut finish = StringDictionaryBuilder::<Int32Type>::new();
    let mut num_turns = UInt16Builder::with_capacity(rows);
    let mut created_at = TimestampMicrosecondBuilder::with_capacity(rows).with_timezone(CREATED_AT_TZ);
    let mut behavior_epoch = UInt64Builder::with_capacity(rows);
    for g in groups {
        for s in &g.samples {
            if s.group_id != g.group_id {
                return Err(Error::Row {
                    row: group_id.len(),
                    group_id: g.group_id,
                    reason: format!("sample carries group_id {} inside group {}", s.group_id, g.group_id),
                });
            }
            run_id.append_value(&s.run_id);
            group_id.append_value(s.group_id);
            sample_idx.append_value(s.sample_idx);
            task_id.append_value(&s.task_id);
            source.append_value(&s.source);
            prompt.values().append_slice(&s.prompt_tokens);
            prompt.append(true);
            completion.values().append_slice(&s.completion_tokens);
            completion.append(true);
            mask.values().append_slice(&s.loss_mask);
            mask.append(true);
            logprobs.values().append_slice(&s.behavior_logprobs);
            logprobs.append(true);
            versions.values().append_slice(&s.token_versions);
            versions.append(true);
            behavior_version.append_value(s.behavior_version);
            reward.append_value(s.reward);
            for (k, v) in &s.reward_parts {
                parts.keys().append_value(k);
                parts.values().append_value(*v);
            }
            parts.append(true).map_err(|e| Error::Arrow(e.to_string()))?;
            finish.append_value(s.finish.as_str());
            num_turns.append_value(s.num_turns);
            created_at.append_value(s.created_at_us);
            behavior_epoch.append_value(s.behavior_epoch);
        }
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(run_id.finish()),
        Arc::new(group_id.finish()),
        Arc::new(sample_idx.finish()),
        Arc::new(task_id.finish()),
        Arc::new(source.finish()),
        Arc::new(prompt.finish()),
        Arc::new(completion.finish()),
        Arc::new(mask.finish()),
        Arc::new(logprobs.finish()),
        Arc::new(versions.finish()),
        Arc::new(behavior_version.finish()),
        Arc::new(reward.finish()),
        Arc::new(parts.finish()),
        Arc::new(finish.finish()),
        Arc::new(num_turns.finish()),
        Arc::new(created_at.finish()),
        Arc::new(behavior_epoch.finish()),
    ];
    RecordBatch::try_new(trajectory_schema(), columns).map_err(|e| Error::Arrow(e.to_string()))
}

/// One group found in a validated batch.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupSpan {
    /// The group.
    pub group_id: u64,
    /// Row indices of its samples in the batch, in `sample_idx` order (0..G-1).
    pub rows: Vec<u32>,
    /// Minimum `behavior_version` over its samples.
    pub behavior_version: u64,
    /// Maximum `behavior_version` over its samples.
    pub newest_version: u64,
    /// The epoch of the weights that sampled it (one per group).
    pub behavior_epoch: u64,
    /// Mean reward.
    pub mean_reward: f64,
    /// Whether the rewards are all equal ([`zero_variance`]).
    pub zero_variance: bool,
    /// Its failed episodes (`finish = error`).
    pub failed: u32,
    /// Estimated bytes the group occupies in memory.
    pub bytes: u64,
}

/// Typed views of every column of a batch that has the trajectory schema.
struct Columns<'a> {
    run_id: arrow_array::TypedDictionaryArray<'a, Int32Type, arrow_array::StringArray>,
    group_id: &'a arrow_array::UInt64Array,
    sample_idx: &'a arrow_array::UInt16Array,
    task_id: &'a arrow_array::StringArray,
    source: &'a arrow_array::StringArray,
    prompt: &'a arrow_array::ListArray,
    completion: &'a arrow_array::ListArray,
    mask: &'a arrow_array::ListArray,
    logprobs: &'a arrow_array::ListArray,
    versions: &'a arrow_array::ListArray,
    behavior_version: &'a arrow_array::UInt64Array,
    reward: &'a arrow_array::Float32Array,
    parts: &'a arrow_array::MapArray,
    finish: arrow_array::TypedDictionaryArray<'a, Int32Type, arrow_array::StringArray>,
    num_turns: &'a arrow_array::UInt16Array,
    created_at: &'a arrow_array::PrimitiveArray<TimestampMicrosecondType>,
    behavior_epoch: &'a arrow_array::UInt64Array,
}

impl<'a> Columns<'a> {
    /// Checks names and types against [`trajectory_schema`] (top-level nullability may differ; nulls
    /// are refused separately) and downcasts.
    fn new(batch: &'a RecordBatch) -> Result<Self> {
        check_schema(batch.schema_ref())?;
        for (field, column) in batch.schema_ref().fields().iter().zip(batch.columns()) {
            let nulls = column.null_count() + nested_nulls(column.as_ref());
            if nulls > 0 {
                let row = first_null_row(column.as_ref());
                return Err(Error::Row {
                    row,
                    group_id: batch.column(1).as_primitive::<UInt64Type>().value(row),
                    reason: format!("column `{}` holds a null", field.name()),
                });
            }
        }
        let c = |i: usize| batch.column(i);
        let dict = |i: usize| {
            c(i).as_dictionary::<Int32Type>()
                .downcast_dict::<arrow_array::StringArray>()
                .ok_or_else(|| Error::Arrow(format!("column {i} is not a string dictionary")))
        };
        Ok(Columns {
            run_id: dict(0)?,
            group_id: c(1).as_primitive(),
            sample_idx: c(2).as_primitive(),
            task_id: c(3).as_string(),
            source: c(4).as_string(),
            prompt: c(5).as_list(),
            completion: c(6).as_list(),
            mask: c(7).as_list(),
            logprobs: c(8).as_list(),
            versions: c(9).as_list(),
            behavior_version: c(10).as_primitive(),
            reward: c(11).as_primitive(),
            parts: c(12).as_map(),
            finish: dict(13)?,
            num_turns: c(14).as_primitive(),
            created_at: c(15).as_primitive(),
            behavior_epoch: c(16).as_primitive(),
        })
    }
}

/// Null values below the top level (list items, map entries) that would otherwise pass unnoticed.
fn nested_nulls(column: &dyn Array) -> usize {
    match column.data_type() {
        DataType::List(_) => column.as_list::<i32>().values().null_count(),
        DataType::Map(_, _) => column.as_map().values().null_count(),
        _ => 0,
    }
}

fn first_null_row(column: &dyn Array) -> usize {
    if column.null_count() > 0 {
        return (0..column.len()).find(|&i| column.is_null(i)).unwrap_or(0);
    }
    let (offsets, values): (Vec<usize>, ArrayRef) = match column.data_type() {
        DataType::List(_) => {
            let l = column.as_list::<i32>();
            (l.value_offsets().iter().map(|&o| o as usize).collect(), l.values().clone())
        }
        DataType::Map(_, _) => {
            let m = column.as_map();
            (m.value_offsets().iter().map(|&o| o as usize).collect(), Arc::new(m.values().clone()))
        }
        _ => return 0,
    };
    let Some(item) = (0..values.len()).find(|&i| values.is_null(i)) else { return 0 };
    offsets.windows(2).position(|w| w[0] <= item && item < w[1]).unwrap_or(0)
}

/// Checks a schema against [`trajectory_schema`]: same names, same order, same types.
pub fn check_schema(schema: &Schema) -> Result<()> {
    let expected = trajectory_schema();
    let found: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    let want: Vec<&str> = expected.fields().iter().map(|f| f.name().as_str()).collect();
    if found != want {
        return Err(Error::Schema(format!("columns are {found:?}, expected {want:?}")));
    }
    for (f, e) in schema.fields().iter().zip(expected.fields()) {
        if f.data_type() != e.data_type() {
            return Err(Error::Schema(format!(
                "column `{}` has type {}, expected {}",
                f.name(),
                f.data_type(),
                e.data_type()
            )));
        }
    }
    Ok(())
}

/// Validates a batch from any producer and returns its groups in order of first appearance.
///
/// Refused, naming the row and the reason: a schema that differs, nulls, token/mask/log-prob/
/// version lists of different lengths, a mask value other than 0/1, a non-finite or positive
/// log-prob, a `behavior_version` that is not the minimum of `token_versions`, a non-finite reward
/// or reward part, an unknown `finish`, a group whose `sample_idx` values are not exactly 0..G-1,
/// and a group whose samples name different epochs.
pub fn validate_batch(batch: &RecordBatch) -> Result<Vec<GroupSpan>> {
    validate_columns(&Columns::new(batch)?, batch.num_rows())
}

/// Refuses a batch with a prompt or completion token id outside a vocabulary of `vocab` ids: the
/// learner would index its embedding with it. The error names the row, group, column and token.
pub fn check_token_ids(batch: &RecordBatch, vocab: u32) -> Result<()> {
    let c = Columns::new(batch)?;
    for row in 0..batch.num_rows() {
        for (name, list) in [(col::PROMPT_TOKENS, c.prompt), (col::COMPLETION_TOKENS, c.completion)] {
            let tokens = list.value(row);
            if let Some((i, &t)) =
                tokens.as_primitive::<UInt32Type>().values().iter().enumerate().find(|(_, &t)| t >= vocab)
            {
                return Err(Error::Row {
                    row,
                    group_id: c.group_id.value(row),
                    reason: format!(
                        "`{name}` holds token id {t} at {i}; the model's vocabulary has {vocab} ids"
                    ),
                });
            }
        }
    }
    Ok(())
}

fn validate_columns(c: &Columns<'_>, num_rows: usize) -> Result<Vec<GroupSpan>> {
    let mut order: Vec<u64> = Vec::new();
    let mut by_group: std::collections::HashMap<u64, Vec<u32>> = std::collections::HashMap::new();
    for row in 0..num_rows {
        let gid = c.group_id.value(row);
        let err = |reason: String| Error::Row { row, group_id: gid, reason };
        let n = c.completion.value_length(row);
        for (name, list) in [
            (col::LOSS_MASK, c.mask),
            (col::BEHAVIOR_LOGPROBS, c.logprobs),
            (col::TOKEN_VERSIONS, c.versions),
        ] {
            if list.value_length(row) != n {
                return Err(err(format!(
                    "`{name}` has {} entries but `completion_tokens` has {n}",
                    list.value_length(row)
                )));
            }
        }
        let mask = c.mask.value(row);
        if let Some((i, m)) =
            mask.as_primitive::<UInt8Type>().values().iter().enumerate().find(|(_, &m)| m > 1)
        {
            return Err(err(format!("`loss_mask` holds {m} at token {i}; only 0 and 1 are allowed")));
        }
        let logprobs = c.logprobs.value(row);
        if let Some((i, lp)) = logprobs
            .as_primitive::<Float32Type>()
            .values()
            .iter()
            .enumerate()
            .find(|(_, &lp)| !lp.is_finite() || lp > 1e-3)
        {
            return Err(err(format!(
                "`behavior_logprobs` holds {lp} at token {i}; a log-prob is finite and <= 0"
            )));
        }
        let versions = c.versions.value(row);
        let min_version = versions.as_primitive::<UInt64Type>().values().iter().copied().min();
        let bv = c.behavior_version.value(row);
        if let Some(min) = min_version {
            if min != bv {
                return Err(err(format!("`behavior_version` is {bv} but the oldest token version is {min}")));
            }
        }
        let reward = c.reward.value(row);
        if !reward.is_finite() {
            return Err(err(format!("reward is {reward}; rewards must be finite")));
        }
        let parts = c.parts.value(row);
        let keys = parts.column(0).as_string::<i32>();
        let values = parts.column(1).as_primitive::<Float32Type>();
        if let Some(i) = (0..parts.len()).find(|&i| !values.value(i).is_finite()) {
            return Err(err(format!(
                "reward part `{}` is {}; must be finite",
                keys.value(i),
                values.value(i)
            )));
        }
        let finish = c.finish.value(row);
        if Finish::parse(finish).is_none() {
            return Err(err(format!(
                "finish `{finish}` is not one of stop, length, env_done, aborted, error"
            )));
        }
        let rows = by_group.entry(gid).or_insert_with(|| {
            order.push(gid);
            Vec::new()
        });
        rows.push(row as u32);
    }
    let mut spans = Vec::with_capacity(order.len());
    for gid in order {
        let mut rows = by_group.remove(&gid).unwrap_or_default();
        rows.sort_by_key(|&r| c.sample_idx.value(r as usize));
        for (want, &r) in rows.iter().enumerate() {
            let got = c.sample_idx.value(r as usize) as usize;
            if got != want {
                let reason = if got < want {
                    format!("sample_idx {got} appears twice in the group")
                } else {
                    format!(
                        "sample_idx {want} is missing from the group of {} rows (found {got})",
                        rows.len()
                    )
                };
                return Err(Error::Row { row: r as usize, group_id: gid, reason });
            }
        }
        // Failed episodes (`finish = error`) count in neither statistic ([`Sample::failed`]).
        let valid: Vec<f32> = rows
            .iter()
            .map(|&r| r as usize)
            .filter(|&r| c.finish.value(r) != Finish::Error.as_str())
            .map(|r| c.reward.value(r))
            .collect();
        let mean_reward = mean(valid.iter().map(|&r| r as f64));
        let versions: Vec<u64> = rows.iter().map(|&r| c.behavior_version.value(r as usize)).collect();
        let behavior_epoch = c.behavior_epoch.value(rows[0] as usize);
        if let Some(&r) = rows.iter().find(|&&r| c.behavior_epoch.value(r as usize) != behavior_epoch) {
            return Err(Error::Row {
                row: r as usize,
                group_id: gid,
                reason: format!(
                    "`behavior_epoch` is {} but sample 0 of the group has {behavior_epoch}; a group is sampled \
                     by weights of one epoch",
                    c.behavior_epoch.value(r as usize)
                ),
            });
        }
        let bytes = rows
            .iter()
            .map(|&r| {
                let r = r as usize;
                let strings = c.task_id.value(r).len() + c.source.value(r).len();
                64 + strings as u64
                    + 4 * c.prompt.value_length(r) as u64
                    + (4 + 1 + 4 + 8) * c.completion.value_length(r) as u64
                    + 8 * c.parts.value_length(r) as u64
            })
            .sum();
        spans.push(GroupSpan {
            group_id: gid,
            behavior_version: versions.iter().copied().min().unwrap_or(0),
            newest_version: versions.iter().copied().max().unwrap_or(0),
            behavior_epoch,
            mean_reward,
            failed: (rows.len() - valid.len()) as u32,
            zero_variance: zero_variance(valid),
            bytes,
            rows,
        });
    }
    Ok(spans)
}

/// Decodes a batch with the trajectory schema into groups (validated first).
pub fn batch_to_groups(batch: &RecordBatch) -> Result<Vec<Group>> {
    let c = Columns::new(batch)?;
    let spans = validate_columns(&c, batch.num_rows())?;
    let sample = |r: usize| -> Sample {
        let parts = c.parts.value(r);
        let keys = parts.column(0).as_string::<i32>();
        let values = parts.column(1).as_primitive::<Float32Type>();
        Sample {
            run_id: c.run_id.value(r).to_string(),
            group_id: c.group_id.value(r),
            sample_idx: c.sample_idx.value(r),
            task_id: c.task_id.value(r).to_string(),
            source: c.source.value(r).to_string(),
            prompt_tokens: c.prompt.value(r).as_primitive::<UInt32Type>().values().to_vec(),
            completion_tokens: c.completion.value(r).as_primitive::<UInt32Type>().values().to_vec(),
            loss_mask: c.mask.value(r).as_primitive::<UInt8Type>().values().to_vec(),
            behavior_logprobs: c.logprobs.value(r).as_primitive::<Float32Type>().values().to_vec(),
            token_versions: c.versions.value(r).as_primitive::<UInt64Type>().values().to_vec(),
            behavior_version: c.behavior_version.value(r),
            behavior_epoch: c.behavior_epoch.value(r),
            reward: c.reward.value(r),
            reward_parts: (0..parts.len()).map(|i| (keys.value(i).to_string(), values.value(i))).collect(),
            // Validated above.
            finish: Finish::parse(c.finish.value(r)).unwrap_or(Finish::Error),
            num_turns: c.num_turns.value(r),
            created_at_us: c.created_at.value(r),
        }
    };
    Ok(spans
        .into_iter()
        .map(|s| Group {
            group_id: s.group_id,
            samples: s.rows.iter().map(|&r| sample(r as usize)).collect(),
        })
        .collect())
}

/// The completion tokens of row `row` (for deduplication and tests).
pub fn completion_tokens(batch: &RecordBatch, row: usize) -> Vec<u32> {
    batch.column(6).as_list::<i32>().value(row).as_primitive::<UInt32Type>().values().to_vec()
}

/// Reads a u16 column value; used by consumers that regroup rows.
pub fn sample_idx(batch: &RecordBatch, row: usize) -> u16 {
    batch.column(2).as_primitive::<UInt16Type>().value(row)
}

/// Encodes batches as one Arrow IPC stream (the wire format between roles).
pub fn encode_ipc(batches: &[RecordBatch]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    encode_ipc_into(batches, &mut out)?;
    Ok(out)
}

/// [`encode_ipc`] appending to `out` (a reply that frames the stream writes it in place).
pub fn encode_ipc_into(batches: &[RecordBatch], out: &mut Vec<u8>) -> Result<()> {
    let schema = batches.first().map(|b| b.schema()).unwrap_or_else(trajectory_schema);
    out.reserve(batches.iter().map(|b| b.get_array_memory_size()).sum::<usize>() + 4096);
    let mut w =
        arrow_ipc::writer::StreamWriter::try_new(out, &schema).map_err(|e| Error::Arrow(e.to_string()))?;
    for b in batches {
        w.write(b).map_err(|e| Error::Arrow(e.to_string()))?;
    }
    w.finish().map_err(|e| Error::Arrow(e.to_string()))
}

/// Decodes an Arrow IPC stream into one batch (several stream batches are concatenated as rows).
///
/// Garbage, truncation and a stream without the trajectory schema are errors, never panics: the
/// decoder is wrapped so that a panic inside arrow on hostile input becomes an error too.
pub fn decode_ipc(bytes: &[u8]) -> Result<RecordBatch> {
    let decode = || -> Result<RecordBatch> {
        let reader = arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
            .map_err(|e| Error::Ipc(e.to_string()))?;
        // A producer (or an append log) from before `behavior_epoch`: epoch 0.
        let schema = upgrade(RecordBatch::new_empty(reader.schema()))?.schema();
        check_schema(&schema)?;
        let mut batches = Vec::new();
        for b in reader {
            batches.push(upgrade(b.map_err(|e| Error::Ipc(e.to_string()))?)?);
        }
        let batch = if batches.len() == 1 {
            batches.pop().unwrap_or_else(|| RecordBatch::new_empty(schema.clone()))
        } else {
            arrow_select::concat::concat_batches(&schema, &batches)
                .map_err(|e| Error::Arrow(e.to_string()))?
        };
        // Producers in other languages may mark columns nullable; nulls themselves are refused
        // here (or by `validate_batch`), and every batch past this point has the one schema.
        RecordBatch::try_new(trajectory_schema(), batch.columns().to_vec())
            .map_err(|e| Error::Schema(e.to_string()))
    };
    quiet_panics::run(decode)
        .unwrap_or_else(|| Err(Error::Ipc("the Arrow decoder panicked on this payload".into())))
}

/// Runs a closure whose panics are expected (arrow's IPC reader panics on some hostile inputs)
/// and turns them into `None` without printing them: the panic hook stays silent for this
/// thread while the closure runs and delegates to the previous hook otherwise.
mod quiet_panics {
    use std::cell::Cell;
    use std::sync::Once;

    thread_local! {
        static QUIET: Cell<bool> = const { Cell::new(false) };
    }

    pub fn run<T>(f: impl FnOnce() -> T) -> Option<T> {
        static HOOK: Once = Once::new();
        HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                if !QUIET.with(Cell::get) {
                    previous(info);
                }
            }));
        });
        QUIET.with(|q| q.set(true));
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).ok();
        QUIET.with(|q| q.set(false));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{group, sample};

    #[test]
    fn zero_variance_is_exact_equality_for_groups_and_stored_spans_alike() {
        // Equal rewards whose f64 mean is not exactly the reward: a spread computed from the mean
        // would not be 0, and the replay and the learner used to disagree on such a group.
        for (rewards, want) in [(vec![0.1f32; 3], true), (vec![0.1, 0.1, 0.3], false), (vec![1.0; 2], true)] {
            let g = group(
                1,
                rewards
                    .iter()
                    .enumerate()
                    .map(|(i, &r)| Sample { reward: r, ..sample(1, i as u16, 0, vec![4]) }),
            );
            assert_eq!(g.zero_variance(), want, "{rewards:?}");
            let span = validate_batch(&groups_to_batch(&[g]).expect("a valid group")).expect("valid");
            assert_eq!(span[0].zero_variance, want, "{rewards:?}");
        }
        assert!(!zero_variance(std::iter::empty()) && !zero_variance([0.5]), "no group, not zero variance");
    }

    #[test]
    fn a_batch_from_before_epochs_reads_as_epoch_0_and_a_group_holds_one_epoch() {
        let g = group(3, (0..2).map(|i| Sample { behavior_epoch: 2, ..sample(3, i, 1, vec![4]) }));
        let batch = groups_to_batch(std::slice::from_ref(&g)).expect("valid");
        let n = batch.num_columns();
        let old_schema = Schema::new(batch.schema().fields()[..n - 1].to_vec());
        let old = RecordBatch::try_new(Arc::new(old_schema), batch.columns()[..n - 1].to_vec()).expect("old");
        let wire = encode_ipc(&[old]).expect("encodes");
        let read = batch_to_groups(&decode_ipc(&wire).expect("an old stream still decodes")).expect("valid");
        assert!(read[0].samples.iter().all(|s| s.behavior_epoch == 0 && s.behavior_version == 1));
        let mut mixed = g;
        mixed.samples[1].behavior_epoch = 3;
        let err = validate_batch(&groups_to_batch(&[mixed]).expect("builds")).unwrap_err().to_string();
        assert!(err.contains("`behavior_epoch` is 3 but sample 0 of the group has 2"), "{err}");
    }
}
