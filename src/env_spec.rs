//! The `[[envs]]` entries of a run: which built-in source, environment or remote environment a
//! worker draws from, and how it is built for training (the train split, a seed per worker) or for
//! evaluation (the held-out split, a fixed seed).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use serde::{Deserialize, Serialize};
use sluice_envs::{
    Arithmetic, ArithmeticConfig, Calculator, CalculatorConfig, CalculatorTasks, ChainSum, ChainSumConfig,
    Countdown, CountdownConfig, CountdownVerifier, IntegerVerifier, JsonlConfig, JsonlSource,
    KnightsKnavesVerifier, LeadingIntegerVerifier, Letters, LettersConfig, LettersVerifier, RemoteEnv, Split,
    Style,
};
use sluice_rollout::{EnvSource, Judge};

/// One entry of `[[envs]]`, chosen by `name`; the other keys are that source's settings. Their
/// `split` is set by the role (training draws the train split, `sluice eval` the held-out one) and
/// their `seed` is mixed with the worker's name, so workers draw different tasks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case")]
pub enum EnvSpec {
    /// `a op b` with integer answers, checked by the integer verifier.
    Arithmetic(ArithmeticConfig),
    /// Sums of several terms.
    ChainSum(ChainSumConfig),
    /// Reach a target with the given numbers.
    Countdown(CountdownConfig),
    /// Knights and knaves puzzles (reasoning-gym data, built in, or `path`).
    KnightsKnaves(JsonlTasks),
    /// Grade-school word problems (reasoning-gym data, built in, or `path`).
    GsmSymbolic(JsonlTasks),
    /// Say the letter the prompt names: the smallest learnable task (smoke tests, CI).
    Letters(LettersConfig),
    /// Multi-turn: arithmetic with a calculator tool.
    Calculator(CalculatorSpec),
    /// An environment served over zenoh by another process (`sluice_env.serve` in Python, or
    /// `sluice_envs::serve`).
    Remote(RemoteSpec),
}

impl Default for EnvSpec {
    fn default() -> Self {
        EnvSpec::Arithmetic(ArithmeticConfig::default())
    }
}

/// A JSONL task source with its verifier's format weight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JsonlTasks {
    /// A JSONL file; empty for the built-in data.
    pub path: PathBuf,
    /// Passes over the tasks (0 = without end).
    pub epochs: u64,
    /// Weight of the `format` part in the reward.
    pub format_weight: f32,
    /// Set by the role (see [`EnvSpec`]).
    pub split: Split,
    /// Seed of the shuffles.
    pub seed: u64,
}

impl Default for JsonlTasks {
    fn default() -> Self {
        JsonlTasks { path: PathBuf::new(), epochs: 0, format_weight: 0.1, split: Split::Train, seed: 0 }
    }
}

/// The calculator: its tasks and the tool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CalculatorSpec {
    /// The arithmetic tasks (3–5 digit operands by default).
    pub tasks: ArithmeticConfig,
    /// The tool.
    pub tool: CalculatorConfig,
}

impl Default for CalculatorSpec {
    fn default() -> Self {
        CalculatorSpec { tasks: CalculatorTasks::default_config(), tool: CalculatorConfig::default() }
    }
}

/// A remote environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RemoteSpec {
    /// The name it is served under (`sluice/{run}/env/{env}/...`).
    pub env: String,
    /// How long a worker waits for the environment while nobody serves it (not started yet, or
    /// restarting after a crash), saying so every few seconds, before the run stops with an error
    /// naming it; in seconds.
    pub wait_s: f64,
}

impl Default for RemoteSpec {
    fn default() -> Self {
        RemoteSpec { env: String::new(), wait_s: 180.0 }
    }
}

/// For which role a source is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Training tasks, the seed mixed with this value (the worker's name hashed).
    Train(u64),
    /// Evaluation tasks of a split (normally the held-out one), the configured seed.
    Eval(Split),
}

impl Purpose {
    fn split(self) -> Split {
        match self {
            Purpose::Train(_) => Split::Train,
            Purpose::Eval(split) => split,
        }
    }

    fn seed(self, seed: u64) -> u64 {
        match self {
            Purpose::Train(mix) => sluice_core::splitmix64(seed ^ mix),
            Purpose::Eval(_) => seed,
        }
    }
}

impl EnvSpec {
    /// The entry's name (the `name` key).
    pub fn name(&self) -> &'static str {
        match self {
            EnvSpec::Arithmetic(_) => "arithmetic",
            EnvSpec::ChainSum(_) => "chain_sum",
            EnvSpec::Countdown(_) => "countdown",
            EnvSpec::KnightsKnaves(_) => "knights_knaves",
            EnvSpec::GsmSymbolic(_) => "gsm_symbolic",
            EnvSpec::Letters(_) => "letters",
            EnvSpec::Calculator(_) => "calculator",
            EnvSpec::Remote(_) => "remote",
        }
    }

    /// The entry for a built-in name with its defaults (what `sluice eval --env NAME` uses).
    pub fn by_name(name: &str) -> Result<EnvSpec> {
        let t = toml::Table::from_iter([("name".to_string(), toml::Value::String(name.into()))]);
        toml::Value::Table(t).try_into().map_err(|_| {
            anyhow!(
                "unknown environment `{name}` (arithmetic, chain_sum, countdown, knights_knaves, \
                 gsm_symbolic, letters, calculator)"
            )
        })
    }

    /// Checks the settings.
    pub fn check(&self) -> Result<()> {
        match self {
            EnvSpec::Arithmetic(c) => c.check()?,
            EnvSpec::Calculator(c) if c.tasks.style != Style::Chat => {
                bail!("tasks.style must be \"chat\": the calculator asks in a chat")
            }
            EnvSpec::Calculator(c) => c.tasks.check()?,
            EnvSpec::Remote(r) if r.env.is_empty() => bail!("`env` (the served name) is required"),
            EnvSpec::Remote(r) if !(r.wait_s >= 0.0 && r.wait_s.is_finite()) => {
                bail!("wait_s {} must be >= 0", r.wait_s)
            }
            _ => {}
        }
        Ok(())
    }

    /// Builds the source; `session` and `run` reach remote environments.
    /// `env_timeout` (`rollout.env_timeout_s`, the one limit of an environment call) also bounds a
    /// remote environment's query.
    pub fn build(
        &self,
        purpose: Purpose,
        session: &zenoh::Session,
        run: &str,
        env_timeout: Duration,
    ) -> Result<EnvSource> {
        let (split, name) = (purpose.split(), self.name());
        let err = |e: sluice_envs::EnvsError| anyhow!("envs `{name}`: {e}");
        let verifier = |tasks: Box<dyn sluice_core::TaskSource>, v: Arc<dyn sluice_core::Verifier>| {
            EnvSource { tasks, judge: Judge::Verifier(v), stop_strings: Vec::new() }
        };
        let jsonl = |j: &JsonlTasks| -> Result<JsonlSource> {
            let cfg =
                JsonlConfig { path: j.path.clone(), split, seed: purpose.seed(j.seed), epochs: j.epochs };
            JsonlSource::builtin(name, cfg).map_err(err)
        };
        Ok(match self {
            EnvSpec::Arithmetic(c) => {
                let cfg = ArithmeticConfig { split, seed: purpose.seed(c.seed), ..c.clone() };
                let tasks = Arithmetic::new(cfg).map_err(err)?;
                let judge: Arc<dyn sluice_core::Verifier> = match c.style {
                    Style::Chat => Arc::new(IntegerVerifier { format_weight: c.format_weight }),
                    Style::Bare => Arc::new(LeadingIntegerVerifier { format_weight: c.format_weight }),
                };
                verifier(Box::new(tasks), judge)
            }
            EnvSpec::ChainSum(c) => {
                let cfg = ChainSumConfig { split, seed: purpose.seed(c.seed), ..c.clone() };
                let tasks = ChainSum::new(cfg).map_err(err)?;
                verifier(Box::new(tasks), Arc::new(IntegerVerifier { format_weight: c.format_weight }))
            }
            EnvSpec::Countdown(c) => {
                let cfg = CountdownConfig { split, seed: purpose.seed(c.seed), ..c.clone() };
                let tasks = Countdown::new(cfg).map_err(err)?;
                verifier(Box::new(tasks), Arc::new(CountdownVerifier { format_weight: c.format_weight }))
            }
            EnvSpec::KnightsKnaves(j) => verifier(
                Box::new(jsonl(j)?),
                Arc::new(KnightsKnavesVerifier { format_weight: j.format_weight }),
            ),
            EnvSpec::GsmSymbolic(j) => {
                verifier(Box::new(jsonl(j)?), Arc::new(IntegerVerifier { format_weight: j.format_weight }))
            }
            EnvSpec::Letters(c) => {
                let cfg = LettersConfig { split, seed: purpose.seed(c.seed), ..c.clone() };
                verifier(Box::new(Letters::new(cfg).map_err(err)?), Arc::new(LettersVerifier))
            }
            EnvSpec::Calculator(c) => {
                let cfg = ArithmeticConfig { split, seed: purpose.seed(c.tasks.seed), ..c.tasks.clone() };
                EnvSource {
                    tasks: Box::new(CalculatorTasks::new(cfg).map_err(err)?),
                    judge: Judge::Env(Arc::new(Calculator::new(c.tool.clone()))),
                    stop_strings: vec!["</calc>".into()],
                }
            }
            EnvSpec::Remote(r) => {
                let env = RemoteEnv::new(session.clone(), run, &r.env, env_timeout)
                    .map_err(|e| anyhow!("envs `{name}`: {e}"))?;
                EnvSource {
                    tasks: Box::new(env.tasks_waiting(Duration::from_secs_f64(r.wait_s))),
                    judge: Judge::Env(Arc::new(env)),
                    stop_strings: vec![],
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_name_reads_with_its_defaults_and_unknown_ones_are_refused() -> Result<()> {
        for name in [
            "arithmetic",
            "chain_sum",
            "countdown",
            "knights_knaves",
            "gsm_symbolic",
            "letters",
            "calculator",
        ] {
            assert_eq!(EnvSpec::by_name(name)?.name(), name);
        }
        let e = EnvSpec::by_name("arithmatic").unwrap_err().to_string();
        assert!(e.contains("arithmatic") && e.contains("countdown"), "{e}");
        Ok(())
    }
}
