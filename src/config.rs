//! The run's configuration: one typed tree read from TOML, unknown keys rejected with their path,
//! `--set path.to.key=value` overrides, every section checked once where the tree is loaded, and
//! the resolved tree written into the run directory (`config.toml`). Every key is documented in
//! `examples/default.toml`.
//!
//! Each setting has one default, its struct's `Default` (the quickstart's value), whichever way a
//! config is written: a missing section, a section missing the key, or no file at all. The
//! settings several roles must agree on are one section, `[rl]` ([`RlConfig`]), handed to each.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use sluice_core::RlConfig;
use sluice_envs::ArithmeticConfig;
use sluice_learner::LearnerConfig;
use sluice_replay::ReplayConfig;
use sluice_rollout::RolloutConfig;

use crate::env_spec::EnvSpec;

/// The whole run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunConfig {
    /// Name, directory, seed and the number of processes of each kind.
    pub run: RunSection,
    /// The policy to train.
    pub model: ModelSection,
    /// How the roles reach each other.
    pub zenoh: ZenohSection,
    /// Mutual TLS and access control by role (`docs/security.md`).
    pub security: sluice_core::Security,
    /// The settings every role agrees on: group size, groups per step, staleness, temperature.
    pub rl: RlConfig,
    /// The replay store (per shard).
    pub replay: ReplayConfig,
    /// The learner.
    pub learner: LearnerConfig,
    /// The rollout workers.
    pub rollout: RolloutConfig,
    /// How the learner publishes weights.
    pub weights: WeightsSection,
    /// The task sources and environments the workers draw from (the curriculum mixes them).
    pub envs: Vec<EnvSpec>,
    /// What `sluice eval` measures by default.
    pub eval: EvalSection,
}

/// `[run]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunSection {
    /// The run's name: the zenoh key prefix `sluice/{name}/...`.
    pub name: String,
    /// The run directory (config, metrics, checkpoints, replay segments, plots).
    pub dir: PathBuf,
    /// Seed of the run; the learner, replay and rollout seeds are derived from it.
    pub seed: u64,
    /// Replay shards.
    pub replay_shards: u32,
    /// Rollout workers per rollout process (`sluice run` runs this many too).
    pub rollout_workers: usize,
    /// `cpu` or `cuda` (with the `cuda` feature).
    pub device: String,
}

impl Default for RunSection {
    fn default() -> Self {
        RunSection {
            name: "quickstart".into(),
            dir: PathBuf::from("runs/quickstart"),
            seed: 0,
            replay_shards: 1,
            rollout_workers: 1,
            device: "cpu".into(),
        }
    }
}

/// `[model]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSection {
    /// A known model name (fetched on first use), a GGUF file, or an HF directory.
    pub path: String,
}

impl Default for ModelSection {
    fn default() -> Self {
        ModelSection { path: "smollm2-135m-instruct".into() }
    }
}

/// `[zenoh]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ZenohSection {
    /// Endpoints this process listens on.
    pub listen: Vec<String>,
    /// Endpoints of peers or routers to connect to.
    pub connect: Vec<String>,
    /// A zenoh JSON5 config file (routers, tuning, more access control) used instead of sluice's
    /// defaults; `listen`, `connect` and `[security]` still apply on top of it.
    pub config_file: Option<PathBuf>,
    /// Listen on a non-loopback address without `[security]` anyway (`--insecure`).
    pub insecure: bool,
}

impl RunConfig {
    /// The zenoh session options of this run's roles: endpoints, TLS and the run's access control.
    pub fn zenoh_options(&self) -> sluice_core::ZenohOptions {
        let z = &self.zenoh;
        sluice_core::ZenohOptions {
            listen: z.listen.clone(),
            connect: z.connect.clone(),
            config_file: z.config_file.clone(),
            security: self.security.clone(),
            run: Some(self.run.name.clone()),
            insecure: z.insecure,
        }
    }
}

/// `[weights]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WeightsSection {
    /// Publish weight chunks in zenoh shared memory, so rollout workers on the learner's host map
    /// them instead of reading a socket (workers elsewhere still fetch them over the network).
    /// Needs sluice built with `--features shm`.
    pub shm: bool,
    /// Element type of published weights: bf16 (half the bytes, the default) or f32 (rollout
    /// weights bit-exact with the learner's).
    pub transfer_dtype: sluice_weights_sync::DType,
}

impl Default for WeightsSection {
    fn default() -> Self {
        WeightsSection { shm: false, transfer_dtype: sluice_weights_sync::DType::Bf16 }
    }
}

/// `[eval]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalSection {
    /// Held-out tasks.
    pub n: usize,
    /// Samples per task (pass@k is reported for k = samples).
    pub samples: usize,
    /// Sampling temperature; 0 is greedy (only with `samples = 1`).
    pub temperature: f32,
}

impl Default for EvalSection {
    fn default() -> Self {
        EvalSection { n: 200, samples: 1, temperature: 0.0 }
    }
}

impl Default for RunConfig {
    /// The quickstart: SmolLM2-135M-Instruct on `arithmetic`, GRPO, async with `max_staleness = 2`,
    /// on the CPU, sized to show learning within half an hour on two cores (BENCHMARKS.md): one-digit
    /// operands (the 135M model gets 17% of them right greedily, mostly for want of a readable final
    /// answer; with two-digit operands it gets 5%, and two-digit arithmetic it cannot do), sampling
    /// at temperature 0.7, lr 2e-5, 20 steps of 4 groups x 8. One question in two is held out
    /// (150 of the 300), so an eval of the held-out split weighs each question under 1%. Every
    /// section is its struct's default; only the task list is chosen here.
    fn default() -> Self {
        RunConfig {
            run: RunSection::default(),
            model: ModelSection::default(),
            zenoh: ZenohSection::default(),
            security: sluice_core::Security::default(),
            rl: RlConfig::default(),
            replay: ReplayConfig::default(),
            learner: LearnerConfig::default(),
            rollout: RolloutConfig::default(),
            weights: WeightsSection::default(),
            envs: vec![EnvSpec::Arithmetic(ArithmeticConfig {
                max_digits: 1,
                held_out_one_in: 2,
                ..Default::default()
            })],
            eval: EvalSection::default(),
        }
    }
}

impl RunConfig {
    /// Reads `path` (or the quickstart defaults when `None`), applies the `--set` overrides in
    /// order, and checks the result.
    pub fn load(path: Option<&Path>, overrides: &[String]) -> Result<RunConfig> {
        let mut value = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading the config {}", p.display()))?;
                let table: toml::Table =
                    toml::from_str(&text).with_context(|| format!("parsing the config {}", p.display()))?;
                toml::Value::Table(table)
            }
            None => RunConfig::default().to_value()?,
        };
        let origin = path.map(|p| p.display().to_string()).unwrap_or_else(|| "the quickstart config".into());
        for o in overrides {
            apply_override(&mut value, o)?;
        }
        let cfg = Self::from_value(value, &origin)?;
        cfg.check().with_context(|| format!("in {origin}"))?;
        Ok(cfg)
    }

    /// Deserializes a TOML tree; a wrong or unknown key is named by its path.
    pub fn from_value(value: toml::Value, origin: &str) -> Result<RunConfig> {
        let mut cfg: RunConfig = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let moved = moved_key(&path, &e.inner().to_string());
            anyhow!("{origin}: key `{path}`: {}{moved}", e.into_inner())
        })?;
        cfg.seed_sections();
        Ok(cfg)
    }

    /// Sections whose seed is left at 0 take the run's.
    fn seed_sections(&mut self) {
        if self.replay.seed == 0 {
            self.replay.seed = self.run.seed;
        }
        if self.learner.seed == 0 {
            self.learner.seed = self.run.seed;
        }
        if self.rollout.seed == 0 {
            self.rollout.seed = self.run.seed;
        }
    }

    /// Checks every section and the agreements between them; the error names the key.
    pub fn check(&self) -> Result<()> {
        sluice_core::keys::check_name("run.name", &self.run.name).map_err(|e| anyhow!("run.name: {e}"))?;
        if self.run.replay_shards == 0 {
            bail!("run.replay_shards must be at least 1");
        }
        if self.run.rollout_workers == 0 {
            bail!("run.rollout_workers must be at least 1 (start none with `sluice replay` and `sluice learner` alone)");
        }
        if !matches!(self.run.device.as_str(), "cpu" | "cuda") {
            bail!("run.device `{}`: expected cpu or cuda", self.run.device);
        }
        if self.run.device == "cuda" && !cfg!(feature = "cuda") {
            bail!("run.device = \"cuda\" needs sluice built with `--features cuda`");
        }
        if self.weights.shm && !cfg!(feature = "shm") {
            bail!("weights.shm = true needs sluice built with `--features shm`");
        }
        self.security.enabled().map_err(|e| anyhow!("{e}"))?;
        self.rl.check()?;
        self.learner.check(&self.rl)?;
        self.rollout.check()?;
        if self.envs.is_empty() {
            bail!("envs: at least one environment is needed ([[envs]] name = \"arithmetic\")");
        }
        for (i, e) in self.envs.iter().enumerate() {
            e.check().with_context(|| format!("envs[{i}] ({})", e.name()))?;
        }
        if let sluice_rollout::CurriculumConfig::Fixed { weights } = &self.rollout.curriculum {
            if weights.len() != self.envs.len() {
                bail!(
                    "rollout.curriculum.weights has {} entries for {} envs",
                    weights.len(),
                    self.envs.len()
                );
            }
        }
        if self.eval.n == 0 || self.eval.samples == 0 {
            bail!("eval.n and eval.samples must be at least 1");
        }
        Ok(())
    }

    /// The tree as a TOML value.
    pub fn to_value(&self) -> Result<toml::Value> {
        toml::Value::try_from(self).context("the config as TOML")
    }

    /// The resolved tree as TOML (what `config.toml` in the run directory holds).
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(&self.to_value()?).context("writing the resolved config as TOML")
    }

    /// Writes the resolved config into the run directory.
    pub fn write_resolved(&self) -> Result<PathBuf> {
        std::fs::create_dir_all(&self.run.dir)
            .with_context(|| format!("creating the run directory {}", self.run.dir.display()))?;
        let path = self.run.dir.join("config.toml");
        let text = format!(
            "# The resolved configuration of run `{}` (defaults, file and --set overrides).\n{}",
            self.run.name,
            self.to_toml()?
        );
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
}

/// A hint for a key that an older config kept in a role's section: the settings every role shares
/// are `[rl]` now.
fn moved_key(path: &str, message: &str) -> String {
    // The keys of `[rl]`, as the type itself names them.
    let shared = match toml::Value::try_from(RlConfig::default()) {
        Ok(toml::Value::Table(t)) => t.into_iter().map(|(k, _)| k).collect(),
        _ => Vec::new(),
    };
    let mut parts = path.split('.');
    let section = parts.next().unwrap_or_default();
    let rest: Vec<&str> = parts.collect();
    match shared.iter().find(|k| message.contains(&format!("unknown field `{k}`"))) {
        // A key of the section itself, not of a table inside it (`rollout.curriculum`).
        Some(k)
            if matches!(section, "learner" | "rollout" | "replay")
                && (rest.is_empty() || rest == [k.as_str()]) =>
        {
            format!(" (set `rl.{k}`: every role reads the settings they share from [rl])")
        }
        _ => String::new(),
    }
}

/// Applies `path.to.key=value`: the value is read as TOML (`4`, `1e-5`, `true`, `"x"`, `[1, 2]`),
/// or taken as a string when it does not parse; a number in the path indexes an array.
pub fn apply_override(root: &mut toml::Value, spec: &str) -> Result<()> {
    let (path, raw) =
        spec.split_once('=').ok_or_else(|| anyhow!("--set `{spec}`: expected path.to.key=value"))?;
    let path = path.trim();
    let raw = raw.trim();
    let value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.into()),
    };
    let parts: Vec<&str> = path.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        bail!("--set `{spec}`: empty key in `{path}`");
    }
    let mut node = root;
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        let here = parts[..i].join(".");
        node = match node {
            toml::Value::Table(t) => {
                if last {
                    t.insert(part.to_string(), value);
                    return Ok(());
                }
                let indexed = parts[i + 1].parse::<usize>().is_ok();
                if indexed && !t.contains_key(*part) {
                    bail!(
                        "--set `{spec}`: the config has no list `{}` to index (write its entries in the file)",
                        parts[..=i].join(".")
                    );
                }
                t.entry(part.to_string()).or_insert_with(|| toml::Value::Table(Default::default()))
            }
            toml::Value::Array(a) => {
                let idx: usize = part
                    .parse()
                    .map_err(|_| anyhow!("--set `{spec}`: `{here}` is a list; `{part}` is not an index"))?;
                let len = a.len();
                let slot = a.get_mut(idx).ok_or_else(|| {
                    anyhow!("--set `{spec}`: `{here}` has {len} entries; index {idx} is out of range")
                })?;
                if last {
                    *slot = value;
                    return Ok(());
                }
                slot
            }
            _ => bail!("--set `{spec}`: `{here}` is a value, not a table"),
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str, overrides: &[&str]) -> Result<RunConfig> {
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("c.toml");
        std::fs::write(&p, text)?;
        let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        RunConfig::load(Some(&p), &o)
    }

    /// The whole error chain of a config that must be refused.
    fn refused(text: &str, overrides: &[&str]) -> String {
        match load_text(text, overrides) {
            Ok(_) => panic!("accepted: {text:?} with {overrides:?}"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn shared_memory_publishing_is_read_from_the_config_and_needs_the_shm_build() -> Result<()> {
        assert!(!RunConfig::default().weights.shm);
        let text = "[weights]\nshm = true\n";
        if cfg!(feature = "shm") {
            assert!(load_text(text, &[])?.weights.shm);
        } else {
            let e = refused(text, &[]);
            assert!(e.contains("weights.shm") && e.contains("--features shm"), "{e}");
        }
        Ok(())
    }

    #[test]
    fn unknown_keys_are_named_by_their_path() {
        let e = refused("[learner.kl]\nbetta = 0.1\n", &[]);
        assert!(e.contains("learner.kl") && e.contains("betta"), "{e}");
        let e = refused("[rollout]\ntemprature = 0.7\n", &[]);
        assert!(e.contains("rollout") && e.contains("temprature"), "{e}");
        let e = refused("[[envs]]\nname = \"arithmetic\"\nmax_digit = 3\n", &[]);
        assert!(e.contains("envs") && e.contains("max_digit"), "{e}");
        let e = refused("[replay]\nmax_staleness = 3\n", &[]);
        assert!(e.contains("replay") && e.contains("rl.max_staleness"), "{e}");
        let e = refused("", &["learner.group_size=3"]);
        assert!(e.contains("learner") && e.contains("rl.group_size"), "{e}");
        let e = refused("[rollout]\nmax_completion_tokens = 64\n", &[]);
        assert!(e.contains("rl.max_completion_tokens"), "{e}");
        let e = refused("[rl]\ntemperature = 0.0\n", &[]);
        assert!(e.contains("rl.temperature"), "{e}");
        // A table inside a section keeps its own keys: no hint toward [rl] there.
        let e = refused("[rollout.curriculum]\nkind = \"fixed\"\nweights = [1.0]\ntemperature = 0.5\n", &[]);
        assert!(e.contains("temperature") && !e.contains("rl.temperature"), "{e}");
    }

    #[test]
    fn overrides_set_values_anywhere_in_the_tree() -> Result<()> {
        let cfg = load_text(
            "[[envs]]\nname = \"arithmetic\"\n[[envs]]\nname = \"countdown\"\n",
            &[
                "learner.kl.beta=0.04",
                "rl.max_staleness=0",
                "run.name=\"my-run\"",
                "run.dir=/tmp/x",
                "envs.1.seed=7",
                "rollout.curriculum={ kind = \"fixed\", weights = [1.0, 3.0] }",
            ],
        )?;
        assert_eq!(cfg.learner.kl.beta, 0.04);
        assert_eq!(cfg.rl.max_staleness, 0);
        assert_eq!(cfg.run.name, "my-run");
        assert_eq!(cfg.run.dir, PathBuf::from("/tmp/x"));
        assert_eq!(cfg.envs[1].name(), "countdown");
        assert_eq!(toml::Value::try_from(&cfg.envs[1])?.get("seed").and_then(|v| v.as_integer()), Some(7));
        let e = refused("", &["envs.3.seed=1"]);
        assert!(e.contains("no list `envs`"), "{e}");
        let two = "[[envs]]\nname = \"arithmetic\"\n[[envs]]\nname = \"countdown\"\n";
        let e = refused(two, &["envs.3.seed=1"]);
        assert!(e.contains("out of range"), "{e}");
        Ok(())
    }

    /// One default per setting: a config that leaves a key out gets the quickstart's value,
    /// whether the section is missing, present without the key, or set with `--set`.
    #[test]
    fn partial_configs_and_overrides_keep_the_built_in_defaults() -> Result<()> {
        let quickstart = RunConfig::load(None, &[])?;
        let with = |f: &dyn Fn(&mut RunConfig)| {
            let mut c = quickstart.clone();
            f(&mut c);
            c
        };
        let total_2 = with(&|c| c.learner.total_steps = 2);
        let cases: Vec<(&str, Vec<&str>, RunConfig)> = vec![
            ("", vec![], quickstart.clone()),
            ("[learner]\n", vec![], quickstart.clone()),
            ("[learner]\ntotal_steps = 2\n", vec![], total_2.clone()),
            ("", vec!["learner.total_steps=2"], total_2.clone()),
            (
                "[rollout]\ntop_k = 5\n",
                vec!["learner.total_steps=2"],
                with(&|c| {
                    c.learner.total_steps = 2;
                    c.rollout.top_k = 5;
                }),
            ),
            ("[rl]\ntemperature = 1.0\n", vec![], with(&|c| c.rl.temperature = 1.0)),
            (
                "[rl]\n",
                vec!["rl.group_size=4", "rl.groups_per_step=2"],
                with(&|c| {
                    c.rl.group_size = 4;
                    c.rl.groups_per_step = 2;
                }),
            ),
            (
                "[replay]\nsegment_rows = 10\n[learner.kl]\nbeta = 0.04\n",
                vec![],
                with(&|c| {
                    c.replay.segment_rows = 10;
                    c.learner.kl.beta = 0.04;
                }),
            ),
        ];
        for (text, overrides, want) in cases {
            let got = load_text(text, &overrides).with_context(|| format!("{text:?} {overrides:?}"))?;
            assert_eq!(got, want, "{text:?} with {overrides:?}");
        }
        let none = RunConfig::load(None, &["learner.total_steps=2".to_string()])?;
        assert_eq!(none, total_2, "no file, one --set");
        Ok(())
    }

    #[test]
    fn the_resolved_config_reads_back_identical_and_the_example_is_the_default() -> Result<()> {
        let cfg = RunConfig::load(None, &[])?;
        let back = RunConfig::from_value(toml::from_str(&cfg.to_toml()?)?, "resolved")?;
        assert_eq!(back, cfg);
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/default.toml");
        let documented = RunConfig::load(Some(&example), &[])?;
        assert_eq!(documented, cfg, "examples/default.toml must spell out the quickstart's defaults");
        // Every key of the tree is written out (optional ones as comments).
        let text = std::fs::read_to_string(&example)?;
        let mut missing = Vec::new();
        fn keys(prefix: &str, v: &toml::Value, out: &mut Vec<String>) {
            match v {
                toml::Value::Table(t) => t.iter().for_each(|(k, v)| keys(&format!("{prefix}{k}."), v, out)),
                toml::Value::Array(a) if a.iter().all(|x| x.is_table()) => {
                    a.iter().for_each(|v| keys(prefix, v, out))
                }
                _ => out.push(prefix.trim_end_matches('.').to_string()),
            }
        }
        let mut all = Vec::new();
        keys("", &cfg.to_value()?, &mut all);
        for k in all {
            let leaf = k.rsplit('.').next().unwrap_or(&k);
            if !text.lines().any(|l| l.trim_start().starts_with(&format!("{leaf} ="))) {
                missing.push(k);
            }
        }
        for optional in ["config_file", "drop_zero_variance", "dual_clip", "max_len", "cache", "factor"] {
            if !text.contains(&format!("# {optional} =")) {
                missing.push(optional.to_string());
            }
        }
        assert!(missing.is_empty(), "examples/default.toml does not document {missing:?}");
        Ok(())
    }
}
