//! Built-in environments (a module each) and the remote-env bridge; envs/python holds the Python SDK.
//!
//! Answer extraction ([`answer`]), the train/held-out split of generated tasks ([`split`]), the
//! generated single-turn sources with their verifiers ([`arithmetic`], [`chain_sum`],
//! [`countdown`], [`letters`]), the JSONL sources ([`jsonl`]: `knights_knaves`, `gsm_symbolic`,
//! or a file), the multi-turn tool environment [`calculator`], and environments served over zenoh
//! ([`remote`]).

pub mod answer;
pub mod arithmetic;
pub mod calculator;
pub mod chain_sum;
pub mod countdown;
mod error;
pub mod jsonl;
pub mod knights_knaves;
pub mod letters;
pub mod remote;
pub mod split;

pub use arithmetic::{Arithmetic, ArithmeticConfig, IntegerVerifier, LeadingIntegerVerifier, Style};
pub use calculator::{Calculator, CalculatorConfig, CalculatorTasks};
pub use chain_sum::{ChainSum, ChainSumConfig};
pub use countdown::{Countdown, CountdownConfig, CountdownVerifier};
pub use error::{EnvsError, Result};
pub use jsonl::{JsonlConfig, JsonlSource};
pub use knights_knaves::KnightsKnavesVerifier;
pub use letters::{Letters, LettersConfig, LettersVerifier};
pub use remote::{serve, serve_with, RemoteEnv, RemoteTasks, ServeConfig, Served};
pub use split::{split_of, split_one_in, Split, HELD_OUT_ONE_IN};
