//! The example's environments rolled out by sluice's runner on a tiny random model.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use sluice_core::{Finish, TaskSource};
use sluice_example_custom_env::{HotCold, ReverseVerifier, Secrets, Words};
use sluice_model::{Architecture, Cpu, Llama, ModelConfig, Tokenizer};
use sluice_rollout::{FixedWeights, Job, Judge, RolloutConfig, Runner, Versioned};

fn tiny(vocab: usize) -> Llama<Cpu> {
    let cfg = ModelConfig {
        architecture: Architecture::Llama,
        vocab_size: vocab,
        hidden_size: 16,
        intermediate_size: 32,
        num_layers: 1,
        num_heads: 2,
        num_kv_heads: 1,
        head_dim: 8,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        max_position_embeddings: 256,
        qkv_bias: false,
        tie_word_embeddings: false,
        bos_token_id: None,
        eos_token_ids: vec![],
    };
    Llama::random(&cfg, 1, &Default::default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_example_envs_roll_out_into_valid_groups() {
    let tok = Tokenizer::char_level("abcdefghijklmnopqrstuvwxyz0123456789 .:?GRAhlow").unwrap();
    let cfg = RolloutConfig {
        group_size: 4,
        tasks_per_batch: 2,
        max_new_tokens: 6,
        max_completion_tokens: 64,
        max_turns: 3,
        chat_template: false,
        ..Default::default()
    };
    let mut runner = Runner::new("example", "w0", cfg, tok.clone(), vec![1]).unwrap();
    let mut policy = Versioned { model: tiny(tok.vocab_size()), version: 0 };
    let (mut words, mut secrets) = (Words::new(0), Secrets::new(20));
    let hot_cold = Judge::Env(Arc::new(HotCold { max: 20, turns: 3 }));
    let jobs = vec![
        Job {
            task: words.next_task().unwrap(),
            judge: Judge::Verifier(Arc::new(ReverseVerifier)),
            stop_strings: vec![],
        },
        Job { task: secrets.next_task().unwrap(), judge: hot_cold, stop_strings: vec![] },
    ];
    let groups = runner.run(&mut policy, &mut FixedWeights, &jobs).await.unwrap();
    for s in &groups[0].samples {
        assert!(matches!(s.finish, Finish::Stop | Finish::Length));
        assert!(s.reward_parts.contains_key("exact") && s.reward_parts.contains_key("prefix"));
    }
    for s in &groups[1].samples {
        // Three turns of at most 6 tokens unless the env ended it or the model stopped early.
        assert!(s.num_turns >= 1 && s.num_turns <= 3);
        assert!(matches!(s.finish, Finish::EnvDone | Finish::Length), "{:?}", s.finish);
        let env_tokens = s.loss_mask.iter().filter(|&&m| m == 0).count();
        assert_eq!(env_tokens > 0, s.num_turns > 1, "hints are environment tokens");
    }
    assert_eq!(runner.failures().snapshot(), (0, 0, 0));
}
