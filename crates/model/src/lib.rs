//! The policy: Llama/Qwen2-family decoder on burn; HF safetensors + GGUF loading; tokenizer + chat
//! template; KV-cache sampler; log-prob scorer; HF-compatible save.
//!
//! # Design: one forward, two callers
//! *Constraints.* RL training silently breaks when the log-probs the sampler reports differ from
//! the log-probs the learner recomputes (train/inference mismatch), or when completion text is
//! re-tokenized. *Solution.* The sampler ([`Generator`]) and scorer ([`score`]) share the same
//! decoder forward, the same batch layout ([`batch`]) and the same temperature-scaled log-softmax;
//! both work on token ids only. A test holds them to 1e-4 of each other. *Pros:* no second
//! implementation to drift. *Cons:* the sampler cannot use inference-only shortcuts (e.g. fused
//! quantized kernels) without the scorer following.
//!
//! Backends: [`Cpu`] (burn's Flex) always, [`CpuAutodiff`] for training; `Cuda` with the `cuda`
//! feature.

mod allocator;
mod backend;
pub mod batch;
mod cache;
pub mod config;
mod error;
mod fused;
pub mod gguf;
pub mod host;
mod llama;
mod policy;
mod sampler;
mod scorer;
mod tokenizer;
pub mod weights;

pub use allocator::keep_freed_memory;
#[cfg(feature = "cuda")]
pub use backend::Cuda;
pub use backend::{Cpu, CpuAutodiff};
pub use cache::KvCache;
pub use config::{Architecture, HfConfig, ModelConfig};
pub use error::{ModelError, Result};
pub use host::{to_host, to_vec_f32, HostTensor};
pub use llama::{DecoderLayer, ForwardCtx, Llama, NamedTensor};
pub use policy::{
    gguf_checkpoint, gguf_config, model_info, save_model, source_format, ModelInfo, Policy, SourceFormat,
};
pub use sampler::{generate, Completion, FinishReason, Generator, SamplingParams};
pub use scorer::{packing_cost, score, ScoreRow, Scores};
pub use tokenizer::{ChatMessage, Tokenizer};
