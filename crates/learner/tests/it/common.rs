//! Shared by the learner's integration tests.
#![allow(dead_code)]

use sluice_model::{Architecture, ModelConfig};

/// A tiny Qwen2-style config (biases on q/k/v, untied head) with `num_layers` layers.
pub fn tiny_config(num_layers: usize) -> ModelConfig {
    ModelConfig {
        architecture: Architecture::Qwen2,
        vocab_size: 16,
        hidden_size: 8,
        intermediate_size: 12,
        num_layers,
        num_heads: 2,
        num_kv_heads: 1,
        head_dim: 4,
        rms_norm_eps: 1e-6,
        rope_theta: 10_000.0,
        max_position_embeddings: 64,
        qkv_bias: true,
        tie_word_embeddings: false,
        bos_token_id: None,
        eos_token_ids: vec![],
    }
}
