//! The run's record: every learner step and rollout report goes to `RUN_DIR/metrics.jsonl` (one
//! JSON object per line) and to TensorBoard events under `RUN_DIR/tensorboard`, and drives the
//! progress bar and the summary printed at the end.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;
use sluice_core::metrics;
use sluice_learner::MetricsSink;

use crate::tensorboard::EventWriter;

/// What the summary reports, gathered from the learner's records.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Summary {
    /// Learner steps recorded by this process.
    pub steps: u64,
    /// The last step's number and policy version.
    pub last_step: u64,
    /// See `last_step`.
    pub version: u64,
    /// Samples trained on.
    pub samples: f64,
    /// Mean reward of each step, in order.
    pub rewards: Vec<f64>,
    /// Accuracy of each step that reported one.
    pub accuracies: Vec<f64>,
    /// Mean staleness of each step.
    pub staleness: Vec<f64>,
    /// Seconds since the report was opened.
    pub seconds: f64,
    /// Rollout workers that joined and left.
    pub workers_joined: u64,
    /// See `workers_joined`.
    pub workers_left: u64,
    /// Groups trained on, and groups dropped before their step for zero reward spread.
    pub groups: f64,
    /// See `groups`.
    pub flat_dropped: f64,
    /// Consecutive steps, up to the last, whose draw was mostly flat groups ([`FLAT_STEP`]).
    pub flat_streak: u64,
    /// Failed episodes among the groups the learner drew (never trained on).
    pub failed_episodes: f64,
    /// Each rollout worker's latest environment failure counts: timeouts, panics, errors.
    pub env_failures: std::collections::BTreeMap<String, [f64; 3]>,
    /// The first failure message of each kind (`timeout`, `panic`, `error`) a worker reported.
    pub env_first_failure: std::collections::BTreeMap<String, String>,
}

/// The summary's lines on environment failures; none when there were none.
fn failure_lines(s: &Summary) -> Vec<String> {
    let mut totals = [0.0; 3];
    for counts in s.env_failures.values() {
        for (t, c) in totals.iter_mut().zip(counts) {
            *t += c;
        }
    }
    if totals.iter().sum::<f64>() == 0.0 && s.failed_episodes == 0.0 {
        return Vec::new();
    }
    let [timeouts, panics, errors] = totals;
    let drawn = if s.failed_episodes > 0.0 {
        format!("; {:.0} failed episodes drawn by the learner's steps (never trained on)", s.failed_episodes)
    } else {
        String::new()
    };
    let mut out = vec![format!(
        "environment failures: {errors:.0} errors, {timeouts:.0} timeouts, {panics:.0} panics in the rollout \
         workers{drawn}"
    )];
    for (kind, first) in &s.env_first_failure {
        out.push(format!("  first {kind}: {first}"));
    }
    out
}

/// A step whose draw was at least this share of flat (zero reward spread) groups counts toward
/// the hint that the task may be too hard, too easy, or its reward constant.
pub const FLAT_STEP: f64 = 0.8;

/// Consecutive such steps before the hint is printed (once per streak).
pub const FLAT_STREAK_HINT: u64 = 5;

/// The progress line's note on dynamic sampling: how many groups were drawn per group trained,
/// when flat groups were dropped.
pub fn flat_note(trained: f64, dropped: f64) -> String {
    if dropped <= 0.0 {
        return String::new();
    }
    format!(" | {dropped:.0} flat groups dropped ({:.0} drawn for {trained:.0} trained)", dropped + trained)
}

/// The hint printed when [`FLAT_STREAK_HINT`] steps in a row drew mostly flat groups.
pub fn flat_hint(streak: u64) -> String {
    format!(
        "the last {streak} steps drew at least {:.0}% groups with no reward spread (every sample of a group \
         scored the same), which GRPO cannot learn from and drops: the task may be too hard for the model \
         (all wrong), too easy (all right), or the reward constant. learner.max_zero_variance_dropped bounds \
         how many are drawn per step",
        FLAT_STEP * 100.0
    )
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

impl Summary {
    /// Mean over the first and the last `n` entries.
    fn ends(v: &[f64], n: usize) -> (f64, f64) {
        let n = n.min(v.len()).max(1);
        (mean(&v[..n.min(v.len())]), mean(&v[v.len().saturating_sub(n)..]))
    }

    /// The lines printed at the end of a run.
    pub fn lines(&self, dir: &Path) -> Vec<String> {
        let k = (self.rewards.len() / 5).clamp(1, 10);
        let (r0, r1) = Self::ends(&self.rewards, k);
        let mut out = vec![format!(
            "{} steps (now step {}, version {}) in {:.0} s: {:.0} samples, {:.2} samples/s",
            self.steps,
            self.last_step,
            self.version,
            self.seconds,
            self.samples,
            self.samples / self.seconds.max(1e-9)
        )];
        if !self.rewards.is_empty() {
            out.push(format!("reward: first {k} steps {r0:.3}, last {k} steps {r1:.3}"));
        }
        if !self.accuracies.is_empty() {
            let (a0, a1) = Self::ends(&self.accuracies, k);
            out.push(format!("accuracy: first {k} steps {a0:.3}, last {k} steps {a1:.3}"));
        }
        out.extend(failure_lines(self));
        if self.flat_dropped > 0.0 {
            out.push(format!(
                "dynamic sampling: {:.0} flat groups dropped for {:.0} trained ({:.1} drawn per trained)",
                self.flat_dropped,
                self.groups,
                (self.flat_dropped + self.groups) / self.groups.max(1.0)
            ));
        }
        out.push(format!(
            "staleness: mean {:.2}; rollout workers joined {}, left {}",
            mean(&self.staleness),
            self.workers_joined,
            self.workers_left
        ));
        out.push(format!(
            "run directory {} (metrics.jsonl, tensorboard/, checkpoints/; `sluice plot {}`)",
            dir.display(),
            dir.display()
        ));
        out
    }
}

struct Inner {
    jsonl: File,
    path: PathBuf,
    tb: EventWriter,
    bar: ProgressBar,
    summary: Summary,
    started: Instant,
    /// The wall time the kept record had reached when this process took over (a resumed run's
    /// clock continues from it).
    offset_s: f64,
}

impl Inner {
    fn wall_s(&self) -> f64 {
        self.offset_s + self.started.elapsed().as_secs_f64()
    }
}

/// The run's metric writer; cheap to clone, shared by the roles of one process.
#[derive(Clone)]
pub struct Report {
    inner: Arc<Mutex<Inner>>,
    dir: PathBuf,
}

impl Report {
    /// Opens `dir/metrics.jsonl` (appending) and a new TensorBoard event file; the bar counts
    /// learner steps from `start` to `total` and is drawn only on a terminal.
    ///
    /// `start` is the step of the checkpoint the learner resumed from (0: none). The record keeps
    /// one row per step of the lineage that counts: rows of later steps (written by a learner
    /// that went on past that checkpoint and died) move to `metrics.orphaned.jsonl`, and
    /// `time/wall_s` continues from the last row kept instead of starting again at 0.
    pub fn open(dir: &Path, start: u64, total: u64) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join("metrics.jsonl");
        let offset_s = keep_lineage(&path, start)?;
        let jsonl = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let tb = EventWriter::create(&dir.join("tensorboard"))?;
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} steps {elapsed_precise} | {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_position(start);
        bar.set_message("waiting for the first batch");
        let inner =
            Inner { jsonl, path, tb, bar, summary: Summary::default(), started: Instant::now(), offset_s };
        Ok(Report { inner: Arc::new(Mutex::new(inner)), dir: dir.to_path_buf() })
    }

    /// Writes one record: a line of `metrics.jsonl`, its numbers as TensorBoard scalars (tagged
    /// `rollout/{worker}/...` for rollout reports), and the bar for learner steps.
    /// Each record gets `time/wall_s`, the seconds since the report was opened (the wall clock
    /// of the run as this process sees it: steps per second over any span of steps).
    pub fn write(&self, record: &Value) -> std::io::Result<()> {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let inner = &mut *guard;
        let mut record = record.clone();
        if let Some(map) = record.as_object_mut() {
            map.insert(metrics::WALL_S.into(), inner.wall_s().into());
        }
        let record = &record;
        let mut line = serde_json::to_vec(record)?;
        line.push(b'\n');
        inner.jsonl.write_all(&line)?;
        let Some(map) = record.as_object() else { return Ok(()) };
        let step = map.get(metrics::STEP).and_then(Value::as_u64).unwrap_or(0);
        let role = map.get(metrics::ROLE).and_then(Value::as_str).unwrap_or("");
        let prefix = match (role, map.get("worker").and_then(Value::as_str)) {
            ("rollout", Some(w)) => format!("workers/{w}/"),
            _ => String::new(),
        };
        let scalars: Vec<(String, f32)> = map
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "step" | "version" | "role" | "worker" | "event"))
            .filter_map(|(k, v)| v.as_f64().map(|x| (format!("{prefix}{k}"), x as f32)))
            .collect();
        let refs: Vec<(&str, f32)> = scalars.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        inner.tb.scalars(step, &refs).map_err(std::io::Error::other)?;
        let get = |k: &str| map.get(k).and_then(Value::as_f64);
        match (role, map.get("event").and_then(Value::as_str)) {
            (_, Some("worker_joined")) => inner.summary.workers_joined += 1,
            (_, Some("worker_left")) => inner.summary.workers_left += 1,
            ("rollout", None) => {
                let s = &mut inner.summary;
                let worker = map.get("worker").and_then(Value::as_str).unwrap_or("").to_string();
                let counts = ["rollout/env_timeouts", "rollout/env_panics", "rollout/env_errors"]
                    .map(|k| get(k).unwrap_or(0.0));
                s.env_failures.insert(worker, counts);
                for (k, v) in map {
                    if let (Some(kind), Some(msg)) =
                        (k.strip_prefix("rollout/env_first_failure/"), v.as_str())
                    {
                        s.env_first_failure.entry(kind.to_string()).or_insert_with(|| msg.to_string());
                    }
                }
            }
            ("learner", None) => {
                let s = &mut inner.summary;
                s.steps += 1;
                s.last_step = step;
                s.version = map.get(metrics::VERSION).and_then(Value::as_u64).unwrap_or(0);
                s.samples += get(metrics::SAMPLES).unwrap_or(0.0);
                s.seconds = inner.started.elapsed().as_secs_f64();
                s.rewards.extend(get(metrics::REWARD_MEAN));
                s.accuracies.extend(get(metrics::ACCURACY));
                s.staleness.extend(get(metrics::STALENESS_MEAN));
                let acc = get(metrics::ACCURACY).map(|a| format!(" acc {a:.2}")).unwrap_or_default();
                let (trained, dropped) =
                    (get(metrics::GROUPS).unwrap_or(0.0), get(metrics::ZERO_VARIANCE_DROPPED).unwrap_or(0.0));
                s.groups += trained;
                s.flat_dropped += dropped;
                let failed = get(metrics::FAILED_EPISODES).unwrap_or(0.0);
                s.failed_episodes += failed;
                let failed_note =
                    if failed > 0.0 { format!(" | {failed:.0} failed episodes") } else { String::new() };
                let hint = if dropped >= FLAT_STEP * (dropped + trained) && dropped > 0.0 {
                    s.flat_streak += 1;
                    s.flat_streak == FLAT_STREAK_HINT
                } else {
                    s.flat_streak = 0;
                    false
                };
                let msg = format!(
                    "reward {:.3}{acc} | staleness {:.2} | {:.2} samples/s{}{failed_note}",
                    get(metrics::REWARD_MEAN).unwrap_or(f64::NAN),
                    get(metrics::STALENESS_MEAN).unwrap_or(0.0),
                    s.samples / s.seconds.max(1e-9),
                    flat_note(trained, dropped)
                );
                if hint {
                    let line = flat_hint(FLAT_STREAK_HINT);
                    if inner.bar.is_hidden() {
                        eprintln!("{line}");
                    } else {
                        inner.bar.println(&line);
                    }
                }
                inner.bar.set_position(step);
                if inner.bar.is_hidden() {
                    // Not a terminal: one plain line per step instead of the bar.
                    eprintln!("step {step}: {msg}");
                }
                inner.bar.set_message(msg);
            }
            _ => {}
        }
        Ok(())
    }

    /// A sink for the learner's [`sluice_learner::MetricsLog`].
    pub fn sink(&self) -> MetricsSink {
        let me = self.clone();
        Box::new(move |v: &Value| me.write(v))
    }

    /// Prints a line above the bar (or plainly when there is none).
    pub fn println(&self, line: &str) {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.bar.is_hidden() {
            eprintln!("{line}");
        } else {
            inner.bar.println(line);
        }
    }

    /// Ends the bar and returns the summary (flushing the files).
    pub fn finish(&self) -> Summary {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.bar.finish_and_clear();
        if let Err(e) = inner.jsonl.flush() {
            tracing::warn!("{}: {e}", inner.path.display());
        }
        inner.summary.seconds = inner.started.elapsed().as_secs_f64();
        inner.summary.clone()
    }

    /// The last learner step recorded (the step rollout reports are filed under).
    pub fn step(&self) -> u64 {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).bar.position()
    }

    /// The run directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Moves the rows of `path` written after step `start` to `metrics.orphaned.jsonl` beside it
/// (appended: nothing written is lost) and returns the largest `time/wall_s` of the rows kept.
/// The file is rewritten through a temporary file and a rename, so a crash leaves either record.
fn keep_lineage(path: &Path, start: u64) -> Result<f64> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0.0),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let (mut kept, mut orphaned, mut wall) = (String::new(), String::new(), 0.0f64);
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        // A torn last line (a killed writer) is neither kept nor lost: it goes with the orphans.
        let row: Option<Value> = serde_json::from_str(line).ok();
        // Kept: a row of no step, or of a step up to the checkpoint's.
        let kept_row =
            row.filter(|r| r.get(metrics::STEP).and_then(Value::as_u64).is_none_or(|s| s <= start));
        let to = match &kept_row {
            Some(r) => {
                wall = wall.max(r.get(metrics::WALL_S).and_then(Value::as_f64).unwrap_or(0.0));
                &mut kept
            }
            None => &mut orphaned,
        };
        to.push_str(line);
        to.push('\n');
    }
    if orphaned.is_empty() {
        return Ok(wall);
    }
    let aside = path.with_file_name("metrics.orphaned.jsonl");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&aside)
        .with_context(|| format!("opening {}", aside.display()))?;
    f.write_all(orphaned.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", aside.display()))?;
    let tmp = path.with_extension("jsonl.tmp");
    std::fs::write(&tmp, kept).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    tracing::info!(
        "{}: rows after step {start} (a lineage the resumed learner left) moved to {}",
        path.display(),
        aside.display()
    );
    Ok(wall)
}

/// A rollout worker's counters as a metric record: `rollout/...` keys, the learner step it was
/// gathered at, the worker's name.
pub fn rollout_record(worker: &str, step: u64, stats: &Value) -> Value {
    let mut map = serde_json::Map::new();
    map.insert(metrics::ROLE.into(), "rollout".into());
    map.insert("worker".into(), worker.into());
    map.insert(metrics::STEP.into(), step.into());
    fn flatten(prefix: &str, v: &Value, out: &mut serde_json::Map<String, Value>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    // The runner's counters sit beside the worker's, not one level down.
                    let key = if k == "rollout" { prefix.to_string() } else { format!("{prefix}{k}/") };
                    flatten(&key, v, out);
                }
            }
            Value::Number(_) | Value::String(_) => {
                out.insert(prefix.trim_end_matches('/').to_string(), v.clone());
            }
            _ => {}
        }
    }
    flatten("rollout/", stats, &mut map);
    let get = |k: &str| map.get(k).and_then(Value::as_f64);
    if let (Some(samples), Some(secs)) = (get("rollout/samples"), get("rollout/rollout_s")) {
        if secs > 0.0 {
            map.insert("rollout/samples_per_s".into(), (samples / secs).into());
        }
    }
    Value::Object(map)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_resumed_run_keeps_one_row_per_step_and_its_wall_clock() -> Result<()> {
        // A learner wrote steps 1..=7 (10 s apart) and a worker report, checkpointed at step 5
        // and died; the run resumes from the checkpoint of step 5.
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("metrics.jsonl");
        let mut text = String::new();
        for step in 1..=7u64 {
            let row =
                json!({"role": "learner", "step": step, "version": step, "time/wall_s": 10.0 * step as f64});
            text += &format!("{row}\n");
        }
        text += &format!("{}\n", json!({"role": "rollout", "worker": "w0", "step": 6, "time/wall_s": 65.0}));
        text += "{\"role\": \"learner\", \"st"; // torn by the kill
        std::fs::write(&path, text)?;

        let report = Report::open(dir.path(), 5, 10)?;
        report.write(&json!({"role": "learner", "step": 6, "version": 6}))?;
        report.finish();
        let rows: Vec<Value> =
            std::fs::read_to_string(&path)?.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
        let steps: Vec<u64> = rows.iter().filter_map(|r| r["step"].as_u64()).collect();
        assert_eq!(steps, [1, 2, 3, 4, 5, 6], "one row per step of the lineage that counts");
        let wall = rows[5][metrics::WALL_S].as_f64().unwrap_or(0.0);
        assert!((50.0..60.0).contains(&wall), "the clock continues from step 5's 50 s: {wall}");
        let aside = std::fs::read_to_string(dir.path().join("metrics.orphaned.jsonl"))?;
        assert_eq!(aside.lines().count(), 4, "steps 6 and 7, the report, the torn line: {aside}");
        Ok(())
    }

    #[test]
    fn dropped_flat_groups_are_said_per_step_in_the_summary_and_with_a_hint_when_they_persist() -> Result<()>
    {
        // Before, a run that drew ~66 groups per step to train 2 said nothing of it.
        let dir = tempfile::tempdir()?;
        let report = Report::open(dir.path(), 0, 10)?;
        for step in 1..=6u64 {
            report.write(&json!({"role": "learner", "step": step, "version": step,
                metrics::GROUPS: 2.0, metrics::ZERO_VARIANCE_DROPPED: 64.0, metrics::SAMPLES: 16.0}))?;
        }
        let summary = report.finish();
        assert_eq!(summary.flat_streak, 6);
        let lines = summary.lines(dir.path()).join("\n");
        assert!(
            lines.contains(
                "dynamic sampling: 384 flat groups dropped for 12 trained (33.0 drawn per trained)"
            ),
            "{lines}"
        );
        assert_eq!(flat_note(2.0, 64.0), " | 64 flat groups dropped (66 drawn for 2 trained)");
        assert_eq!(flat_note(4.0, 0.0), "");
        assert!(flat_hint(5).contains("the task may be too hard"));
        Ok(())
    }

    #[test]
    fn the_summary_says_which_environment_failures_there_were_with_the_first_of_each_kind() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let report = Report::open(dir.path(), 0, 10)?;
        let clean = report.finish().lines(dir.path()).join("\n");
        assert!(!clean.contains("environment failures"), "{clean}");
        // Worker reports are cumulative: the latest of each worker counts.
        for (errors, first) in [(3, "step failed: ValueError: bad"), (5, "step failed: later")] {
            let stats = json!({"rollout": {"samples": 8}, "env_timeouts": 1, "env_panics": 0,
                "env_errors": errors, "env_first_failure": {"error": first, "timeout": "step timed out after 5s"}});
            report.write(&rollout_record("w0", 1, &stats))?;
        }
        report.write(&rollout_record(
            "w1",
            1,
            &json!({"env_timeouts": 0, "env_panics": 0, "env_errors": 2}),
        ))?;
        report.write(&json!({"role": "learner", "step": 1, "version": 1, metrics::FAILED_EPISODES: 6.0}))?;
        let lines = report.finish().lines(dir.path()).join("\n");
        assert!(
            lines.contains(
                "environment failures: 7 errors, 1 timeouts, 0 panics in the rollout workers; 6 failed episodes \
                 drawn by the learner's steps (never trained on)"
            ),
            "{lines}"
        );
        assert!(lines.contains("first error: step failed: ValueError: bad"), "{lines}");
        assert!(lines.contains("first timeout: step timed out after 5s"), "{lines}");
        Ok(())
    }
}
