//! Which task source the next group comes from: fixed mixture weights, or DUMP's UCB over sources
//! (Wang et al., 2025, "DUMP: Automated Distribution-Level Curriculum Learning for RL-based LLM
//! Post-training").
//!
//! DUMP scores each source `j` by the mean absolute advantage of its recent samples (how much the
//! policy can still learn there) plus an exploration bonus, and samples sources by a softmax of the
//! scores:
//!
//! ```text
//! UCB_j = mean_{window} |A| + c * sqrt(2 ln(sum_k n_k) / n_j)        (unvisited sources: +inf)
//! P(j)  = softmax_j(UCB_j / temperature)                              (temperature 0: argmax)
//! ```
//!
//! The whole state (windows, counts, the RNG position) is plain data ([`CurriculumState`]) so a
//! checkpoint restores the same future draws.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::error::{Result, RolloutError};

/// How sources are chosen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum CurriculumConfig {
    /// Fixed mixture: source `j` with probability `weights[j] / sum`.
    Fixed {
        /// One non-negative weight per source, in source order.
        weights: Vec<f64>,
    },
    /// DUMP's UCB.
    Ucb {
        /// Exploration coefficient `c`.
        c: f64,
        /// Samples per source in the sliding window of |advantage|.
        window: usize,
        /// Softmax temperature over the scores; 0 picks the best.
        temperature: f64,
    },
}

impl Default for CurriculumConfig {
    fn default() -> Self {
        CurriculumConfig::Ucb { c: 1.0, window: 256, temperature: 0.1 }
    }
}

/// Everything a checkpoint needs to continue the curriculum exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurriculumState {
    /// Recent |advantage| values per source, oldest first.
    pub windows: Vec<VecDeque<f32>>,
    /// Samples observed per source since the start.
    pub counts: Vec<u64>,
    /// The RNG's state (splitmix64).
    pub rng: u64,
}

/// The curriculum over `n` sources.
#[derive(Debug, Clone)]
pub struct Curriculum {
    cfg: CurriculumConfig,
    state: CurriculumState,
}

impl Curriculum {
    /// A fresh curriculum over `sources` sources; refuses bad settings.
    pub fn new(cfg: CurriculumConfig, sources: usize, seed: u64) -> Result<Self> {
        let bad = |m: String| Err(RolloutError::Config(m));
        if sources == 0 {
            return bad("curriculum: no task sources".into());
        }
        match &cfg {
            CurriculumConfig::Fixed { weights } => {
                if weights.len() != sources {
                    return bad(format!(
                        "curriculum.weights has {} entries for {sources} sources",
                        weights.len()
                    ));
                }
                if weights.iter().any(|w| !(w.is_finite() && *w >= 0.0)) || weights.iter().sum::<f64>() <= 0.0
                {
                    return bad(format!("curriculum.weights {weights:?} must be >= 0 with a positive sum"));
                }
            }
            CurriculumConfig::Ucb { c, window, temperature } => {
                if !(c.is_finite() && *c >= 0.0)
                    || *window == 0
                    || !(temperature.is_finite() && *temperature >= 0.0)
                {
                    return bad(format!(
                        "curriculum: need c >= 0 ({c}), window >= 1 ({window}), temperature >= 0 ({temperature})"
                    ));
                }
            }
        }
        let state =
            CurriculumState { windows: vec![VecDeque::new(); sources], counts: vec![0; sources], rng: seed };
        Ok(Curriculum { cfg, state })
    }

    /// Continues from a checkpointed state.
    pub fn restore(cfg: CurriculumConfig, state: CurriculumState) -> Result<Self> {
        let mut c = Curriculum::new(cfg, state.counts.len(), 0)?;
        if state.windows.len() != state.counts.len() {
            return Err(RolloutError::Config(
                "curriculum state: windows and counts disagree on the number of sources".into(),
            ));
        }
        c.state = state;
        Ok(c)
    }

    /// The state to checkpoint.
    pub fn state(&self) -> &CurriculumState {
        &self.state
    }

    /// Records the |advantage| of samples drawn from `source`.
    pub fn observe(&mut self, source: usize, abs_advantages: &[f32]) {
        let CurriculumConfig::Ucb { window, .. } = self.cfg else {
            self.state.counts[source] += abs_advantages.len() as u64;
            return;
        };
        let w = &mut self.state.windows[source];
        for &a in abs_advantages {
            if w.len() == window {
                w.pop_front();
            }
            w.push_back(a.abs());
        }
        self.state.counts[source] += abs_advantages.len() as u64;
    }

    /// Each source's UCB score (`+inf` for sources not seen yet); fixed mixtures have none.
    pub fn scores(&self) -> Option<Vec<f64>> {
        let CurriculumConfig::Ucb { c, .. } = self.cfg else { return None };
        let total: u64 = self.state.counts.iter().sum();
        Some(
            self.state
                .windows
                .iter()
                .zip(&self.state.counts)
                .map(|(w, &n)| {
                    if n == 0 || w.is_empty() {
                        return f64::INFINITY;
                    }
                    let mean = w.iter().map(|&a| a as f64).sum::<f64>() / w.len() as f64;
                    mean + c * (2.0 * (total as f64).ln() / n as f64).sqrt()
                })
                .collect(),
        )
    }

    /// The probability of each source on the next draw.
    pub fn probabilities(&self) -> Vec<f64> {
        let weights = match (&self.cfg, self.scores()) {
            (CurriculumConfig::Fixed { weights }, _) => weights.clone(),
            (CurriculumConfig::Ucb { temperature, .. }, Some(scores)) => {
                let best = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                if best.is_infinite() || *temperature == 0.0 {
                    // Unvisited sources first (equally); else the best one(s).
                    scores.iter().map(|&s| (s == best) as u8 as f64).collect()
                } else {
                    scores.iter().map(|&s| ((s - best) / temperature).exp()).collect()
                }
            }
            (CurriculumConfig::Ucb { .. }, None) => unreachable!("UCB always has scores"),
        };
        let sum: f64 = weights.iter().sum();
        weights.iter().map(|w| w / sum).collect()
    }

    /// Draws the next source.
    pub fn pick(&mut self) -> usize {
        let p = self.probabilities();
        let u = self.next_unit();
        let mut acc = 0.0;
        for (j, &pj) in p.iter().enumerate() {
            acc += pj;
            if u < acc {
                return j;
            }
        }
        p.iter().rposition(|&pj| pj > 0.0).unwrap_or(0)
    }

    /// A uniform draw in `[0, 1)` (splitmix64).
    fn next_unit(&mut self) -> f64 {
        let z = sluice_core::splitmix64(self.state.rng);
        self.state.rng = self.state.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ucb(c: f64, window: usize, temperature: f64, n: usize) -> Curriculum {
        Curriculum::new(CurriculumConfig::Ucb { c, window, temperature }, n, 1)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn ucb_scores_are_the_window_mean_plus_the_bonus() {
        let mut cur = ucb(0.5, 3, 0.1, 3);
        // Unvisited sources come first.
        assert_eq!(cur.probabilities(), vec![1.0 / 3.0; 3]);
        cur.observe(0, &[1.0, -1.0, 0.5, 0.5]); // the window keeps the last 3: 1, .5, .5
        cur.observe(1, &[0.2, 0.2]);
        cur.observe(2, &[0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        let total = 12f64;
        let want = [
            2.0 / 3.0 + 0.5 * (2.0 * total.ln() / 4.0).sqrt(),
            0.2 + 0.5 * (2.0 * total.ln() / 2.0).sqrt(),
            0.5 * (2.0 * total.ln() / 6.0).sqrt(),
        ];
        let got = cur.scores().unwrap_or_default();
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{got:?} vs {want:?}");
        }
        // Softmax at temperature 0.1 over those scores.
        let z: Vec<f64> = want.iter().map(|s| (s / 0.1).exp()).collect();
        let sum: f64 = z.iter().sum();
        for (p, zi) in cur.probabilities().iter().zip(&z) {
            assert!((p - zi / sum).abs() < 1e-6, "the windows hold f32");
        }
        // Temperature 0: the best source only.
        let mut greedy = ucb(0.5, 3, 0.0, 3);
        greedy.state = cur.state.clone();
        assert_eq!(greedy.probabilities(), vec![1.0, 0.0, 0.0]);
        assert_eq!(greedy.pick(), 0);
    }

    #[test]
    fn a_restored_state_draws_the_same_future_and_fixed_weights_are_honoured() {
        let mut a = ucb(1.0, 8, 0.5, 2);
        a.observe(0, &[0.3; 5]);
        a.observe(1, &[0.9; 2]);
        let mut b = Curriculum::restore(
            CurriculumConfig::Ucb { c: 1.0, window: 8, temperature: 0.5 },
            a.state().clone(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let json = serde_json::to_string(a.state()).unwrap_or_default();
        assert_eq!(serde_json::from_str::<CurriculumState>(&json).ok().as_ref(), Some(a.state()));
        let da: Vec<usize> = (0..50).map(|_| a.pick()).collect();
        let db: Vec<usize> = (0..50).map(|_| b.pick()).collect();
        assert_eq!(da, db);

        let mut f = Curriculum::new(CurriculumConfig::Fixed { weights: vec![1.0, 3.0, 0.0] }, 3, 7)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut counts = [0usize; 3];
        for _ in 0..4000 {
            counts[f.pick()] += 1;
        }
        assert_eq!(counts[2], 0);
        assert!((counts[1] as f64 / 4000.0 - 0.75).abs() < 0.03, "{counts:?}");
        assert!(Curriculum::new(CurriculumConfig::Fixed { weights: vec![1.0] }, 2, 0).is_err());
        assert!(
            Curriculum::new(CurriculumConfig::Ucb { c: -1.0, window: 4, temperature: 0.1 }, 2, 0).is_err()
        );
    }
}
