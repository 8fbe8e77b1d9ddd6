//! Built-in environments (a module each) and the remote-env bridge; envs/python holds the Python SDK.
//!
//! Built so far (issue 6, first step): answer extraction ([`answer`]), the train/held-out split of
//! generated tasks ([`split`]), and the generated single-turn sources with their verifiers:
//! [`arithmetic`], [`chain_sum`], [`countdown`]; the multi-turn tool environment [`calculator`].
//! The JSONL sources (`knights_knaves`, `gsm_symbolic`) and the remote-env bridge come with the
//! rest of issue 6.

pub mod answer;
pub mod arithmetic;
pub mod calculator;
pub mod chain_sum;
pub mod countdown;
pub mod jsonl;
pub mod knights_knaves;
pub mod letters;
pub mod remote;
pub mod split;

pub use arithmetic::{Arithmetic, ArithmeticConfig, IntegerVerifier, LeadingIntegerVerifier, Style};
pub use calculator::{Calculator, CalculatorConfig, CalculatorTasks};
pub use chain_sum::{ChainSum, ChainSumConfig};
pub use countdown::{Countdown, CountdownConfig, CountdownVerifier};
pub use jsonl::{JsonlConfig, JsonlSource};
pub use knights_knaves::KnightsKnavesVerifier;
pub use letters::{Letters, LettersConfig, LettersVerifier};
pub use remote::{serve, RemoteEnv, RemoteTasks, Served};
pub use split::{split_of, Split};
