//! Samplers: which admissible groups a sample request gets (`docs/design.md`, "Replay").
//!
//! Every sampler returns whole groups, at most once per request, drawn from the groups that pass
//! the staleness filter `learner_version - behavior_version <= max_staleness`. With `n = 1` each
//! non-stream sampler draws group `i` with probability exactly as written here (tested on a fixed
//! seed); larger requests draw without replacement (Efraimidis–Spirakis keys `ln(u) / w`, the
//! sequential weighted draw done in one pass).
//!
//! - `fifo`: a stream in append order; each group goes to exactly one consumer, under a lease,
//!   and is redelivered if not acknowledged in time (the store keeps that state, not this file).
//! - `uniform`: `p_i = 1 / N`.
//! - `recency`: `p_i ∝ 2^(-age_i / half_life)`, `age_i` = groups appended to the shard after `i`.
//! - `reward`: `p_i ∝ exp(mean_reward_i / temperature)` (prioritized replay on the group's mean).
//! - `tba`: trajectory balance's mix (Bartoldson et al., "Trajectory Balance with Asynchrony",
//!   2025): each draw takes, with probability `p_newest`, a uniform group among those of the newest
//!   behavior version present, else a `reward` draw; `p_i = p·[i newest]/N_newest + (1-p)·softmax_i`.

use rand::rngs::StdRng;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::{ReplayError, Result};

/// A sampler and its parameters, by name.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Sampler {
    /// Stream: each group delivered once, acknowledged, redelivered after its lease.
    Fifo,
    /// Uniform over admissible groups.
    Uniform,
    /// Newer groups more likely: weight `2^(-age / half_life_groups)`.
    Recency {
        /// Age (in groups appended since) at which the weight halves.
        half_life_groups: f64,
    },
    /// Softmax of mean group reward / temperature.
    Reward {
        /// Softmax temperature (> 0).
        temperature: f64,
    },
    /// With probability `p_newest` a group of the newest version, else a `reward` draw.
    Tba {
        /// Probability of drawing from the newest behavior version.
        p_newest: f64,
        /// Temperature of the reward-prioritized part.
        temperature: f64,
    },
}

impl Sampler {
    /// Parses `fifo`, `uniform`, `recency[:HALF_LIFE]`, `reward[:TEMPERATURE]`,
    /// `tba[:P_NEWEST[:TEMPERATURE]]`.
    pub fn parse(s: &str) -> Result<Sampler> {
        let mut parts = s.split(':');
        let name = parts.next().unwrap_or_default();
        let mut num = |default: f64, what: &str| -> Result<f64> {
            match parts.next() {
                None => Ok(default),
                Some(v) => v.parse::<f64>().map_err(|_| {
                    ReplayError::Invalid(format!("sampler `{s}`: {what} `{v}` is not a number"))
                }),
            }
        };
        let sampler = match name {
            "fifo" => Sampler::Fifo,
            "uniform" => Sampler::Uniform,
            "recency" => Sampler::Recency { half_life_groups: num(64.0, "half-life")? },
            "reward" => Sampler::Reward { temperature: num(1.0, "temperature")? },
            "tba" => Sampler::Tba { p_newest: num(0.5, "p_newest")?, temperature: num(1.0, "temperature")? },
            other => {
                return Err(ReplayError::Invalid(format!(
                    "unknown sampler `{other}`; expected fifo, uniform, recency, reward or tba"
                )))
            }
        };
        sampler.check()?;
        Ok(sampler)
    }

    /// Refuses parameters outside their domain.
    pub fn check(&self) -> Result<()> {
        let positive = |v: f64, what: &str| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(ReplayError::Invalid(format!("{what} must be a positive number, got {v}")))
            }
        };
        match *self {
            Sampler::Fifo | Sampler::Uniform => Ok(()),
            Sampler::Recency { half_life_groups } => positive(half_life_groups, "recency half-life"),
            Sampler::Reward { temperature } => positive(temperature, "reward temperature"),
            Sampler::Tba { p_newest, temperature } => {
                if !(0.0..=1.0).contains(&p_newest) {
                    return Err(ReplayError::Invalid(format!(
                        "tba p_newest must lie in [0, 1], got {p_newest}"
                    )));
                }
                positive(temperature, "tba temperature")
            }
        }
    }
}

impl std::fmt::Display for Sampler {
    /// The name [`Sampler::parse`] reads back: `fifo`, `uniform`, `recency:H`, `reward:T`, `tba:P:T`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Sampler::Fifo => write!(f, "fifo"),
            Sampler::Uniform => write!(f, "uniform"),
            Sampler::Recency { half_life_groups } => write!(f, "recency:{half_life_groups}"),
            Sampler::Reward { temperature } => write!(f, "reward:{temperature}"),
            Sampler::Tba { p_newest, temperature } => write!(f, "tba:{p_newest}:{temperature}"),
        }
    }
}

/// A [`Sampler`] written in a config by its name (`sampler = "reward:0.5"`), parsed and checked as
/// the config is read: `#[serde(with = "sluice_replay::sampler_spec")]`. (On the wire a sampler
/// travels as its tagged struct.)
pub mod spec {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::Sampler;

    /// Writes the sampler's name.
    pub fn serialize<S: Serializer>(sampler: &Sampler, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(sampler)
    }

    /// Reads a sampler's name.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Sampler, D::Error> {
        let name = String::deserialize(d)?;
        Sampler::parse(&name).map_err(serde::de::Error::custom)
    }
}

/// What a sampler sees of one admissible group.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// Append sequence number within the shard.
    pub seq: u64,
    /// Minimum behavior version of the group.
    pub behavior_version: u64,
    /// Mean reward of the group.
    pub mean_reward: f64,
}

/// The probability each candidate has of being the one group drawn by a request for one group
/// (the definition the tests hold `draw` to). `newest_seq` is the shard's latest sequence number.
pub fn probabilities(sampler: Sampler, cands: &[Candidate], newest_seq: u64) -> Vec<f64> {
    let normalize = |w: Vec<f64>| {
        let total: f64 = w.iter().sum();
        w.into_iter().map(|x| x / total).collect::<Vec<_>>()
    };
    match sampler {
        Sampler::Fifo | Sampler::Uniform => vec![1.0 / cands.len() as f64; cands.len()],
        Sampler::Recency { .. } | Sampler::Reward { .. } => normalize(weights(sampler, cands, newest_seq)),
        Sampler::Tba { p_newest, temperature } => {
            let soft = normalize(weights(Sampler::Reward { temperature }, cands, newest_seq));
            let newest = cands.iter().map(|c| c.behavior_version).max().unwrap_or(0);
            let n_newest = cands.iter().filter(|c| c.behavior_version == newest).count() as f64;
            cands
                .iter()
                .zip(soft)
                .map(|(c, s)| {
                    let uniform_newest = if c.behavior_version == newest { 1.0 / n_newest } else { 0.0 };
                    p_newest * uniform_newest + (1.0 - p_newest) * s
                })
                .collect()
        }
    }
}

/// Unnormalized weights of the single-distribution samplers.
fn weights(sampler: Sampler, cands: &[Candidate], newest_seq: u64) -> Vec<f64> {
    match sampler {
        Sampler::Fifo | Sampler::Uniform | Sampler::Tba { .. } => vec![1.0; cands.len()],
        Sampler::Recency { half_life_groups } => cands
            .iter()
            .map(|c| (-((newest_seq.saturating_sub(c.seq)) as f64) / half_life_groups).exp2())
            .collect(),
        Sampler::Reward { temperature } => {
            // Shifted by the maximum so the largest weight is 1: no overflow at low temperature.
            let max = cands.iter().map(|c| c.mean_reward).fold(f64::NEG_INFINITY, f64::max);
            cands.iter().map(|c| ((c.mean_reward - max) / temperature).exp()).collect()
        }
    }
}

/// Draws up to `n` distinct candidates (indices into `cands`) for a non-stream sampler.
pub fn draw(
    sampler: Sampler,
    cands: &[Candidate],
    n: usize,
    newest_seq: u64,
    rng: &mut StdRng,
) -> Vec<usize> {
    let n = n.min(cands.len());
    if n == 0 {
        return Vec::new();
    }
    match sampler {
        Sampler::Tba { p_newest, temperature } => {
            let newest = cands.iter().map(|c| c.behavior_version).max().unwrap_or(0);
            let soft = weights(Sampler::Reward { temperature }, cands, newest_seq);
            let mut taken = vec![false; cands.len()];
            let mut out = Vec::with_capacity(n);
            while out.len() < n {
                let newest_left: Vec<usize> =
                    (0..cands.len()).filter(|&i| !taken[i] && cands[i].behavior_version == newest).collect();
                let pick = if !newest_left.is_empty() && rng.random::<f64>() < p_newest {
                    newest_left[rng.random_range(0..newest_left.len())]
                } else {
                    let left: Vec<usize> = (0..cands.len()).filter(|&i| !taken[i]).collect();
                    let w: Vec<f64> = left.iter().map(|&i| soft[i]).collect();
                    left[weighted_without_replacement(&w, 1, rng)[0]]
                };
                taken[pick] = true;
                out.push(pick);
            }
            out
        }
        _ => weighted_without_replacement(&weights(sampler, cands, newest_seq), n, rng),
    }
}

/// `n` distinct indices drawn sequentially with probability proportional to `w` among those
/// left (Efraimidis & Spirakis 2006: the `n` largest keys `ln(u) / w`).
pub fn weighted_without_replacement(w: &[f64], n: usize, rng: &mut StdRng) -> Vec<usize> {
    let mut keyed: Vec<(f64, usize)> = w
        .iter()
        .enumerate()
        .map(|(i, &wi)| {
            let u: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
            let key = if wi > 0.0 { u.ln() / wi } else { f64::NEG_INFINITY };
            (key, i)
        })
        .collect();
    let n = n.min(keyed.len());
    if n < keyed.len() {
        keyed.select_nth_unstable_by(n, |a, b| b.0.total_cmp(&a.0));
        keyed.truncate(n);
    }
    keyed.sort_by(|a, b| b.0.total_cmp(&a.0));
    keyed.into_iter().map(|(_, i)| i).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sampler_name_reads_back_as_the_sampler_it_names() {
        for name in ["fifo", "uniform", "recency:64", "reward:0.25", "tba:0.5:1.5"] {
            let sampler = Sampler::parse(name).expect(name);
            assert_eq!(sampler.to_string(), name);
            assert_eq!(Sampler::parse(&sampler.to_string()).ok(), Some(sampler));
        }
        assert_eq!(Sampler::parse("reward").ok(), Some(Sampler::Reward { temperature: 1.0 }));
        for (bad, says) in [("lifo", "unknown sampler"), ("reward:x", "not a number"), ("tba:2", "p_newest")]
        {
            let e = Sampler::parse(bad).expect_err(bad).to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
