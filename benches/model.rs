//! Generation and training throughput of the policy model on the CPU.
//!
//! Run through `benches/model.sh`, which also runs `benches/model_torch.py` on the same weights and
//! shapes and prints the ratios. Alone: `cargo bench --bench model -- [tiny|smollm2|all]`.
//! Prints one JSON object per measurement on stdout.

#![allow(clippy::unwrap_used)] // a benchmark fails loudly

use std::path::PathBuf;
use std::time::Instant;

use rand::{Rng, SeedableRng};
use sluice::fetch::{cache_dir, known, model_path};
use sluice_model::{
    generate, save_model, score, Cpu, CpuAutodiff, Llama, ModelConfig, Policy, SamplingParams, ScoreRow,
};

struct Shape {
    gen_batch: usize,
    train_batch: usize,
    prompt: usize,
    new_tokens: usize,
    iters: usize,
}

fn tiny_config() -> ModelConfig {
    ModelConfig::bench_llama(8192, vec![])
}

fn prompts(vocab: usize, batch: usize, len: usize, seed: u64) -> Vec<Vec<u32>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..batch).map(|_| (0..len).map(|_| rng.random_range(3..vocab as u32)).collect()).collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn bench(name: &str, model: &Llama<Cpu>, dir: &std::path::Path, shape: &Shape) {
    let vocab = model.config().vocab_size;
    // Generation: sampling at temperature 1 with no stop token, so every row makes all new tokens.
    let params =
        SamplingParams { temperature: 1.0, max_new_tokens: shape.new_tokens, seed: 1, ..Default::default() };
    let p = prompts(vocab, shape.gen_batch, shape.prompt, 7);
    generate(model, &p[..2], &params, None).unwrap(); // warm-up
    let times: Vec<f64> = (0..shape.iters)
        .map(|_| {
            let t = Instant::now();
            let out = generate(model, &p, &params, None).unwrap();
            assert!(out.iter().all(|c| c.tokens.len() == shape.new_tokens));
            t.elapsed().as_secs_f64()
        })
        .collect();
    let secs = median(times);
    let tokens = shape.gen_batch * shape.new_tokens;
    println!(
        "{}",
        serde_json::json!({"impl": "sluice", "model": name, "what": "generate", "batch": shape.gen_batch,
            "prompt": shape.prompt, "new_tokens": shape.new_tokens, "seconds": secs, "tokens_per_s": tokens as f64 / secs})
    );

    // Training: forward + backward of the summed completion log-probs (the policy-gradient shape).
    let trained: Llama<CpuAutodiff> = {
        let cfg = model.config().clone();
        let ckpt = sluice_model::weights::read_hf_weights(dir).unwrap();
        Llama::from_checkpoint(&cfg, &ckpt, dir, &Default::default()).unwrap()
    };
    let p = prompts(vocab, shape.train_batch, shape.prompt, 8);
    let c = prompts(vocab, shape.train_batch, shape.new_tokens, 9);
    let rows: Vec<ScoreRow> = p.iter().zip(&c).map(|(p, c)| ScoreRow { prompt: p, completion: c }).collect();
    let step = || {
        let s = score(&trained, &rows, 1.0, false).unwrap();
        let grads = s.logprobs.sum().neg().backward();
        drop(grads);
    };
    step(); // warm-up
    let times: Vec<f64> = (0..shape.iters)
        .map(|_| {
            let t = Instant::now();
            step();
            t.elapsed().as_secs_f64()
        })
        .collect();
    let secs = median(times);
    let tokens = shape.train_batch * (shape.prompt + shape.new_tokens);
    println!(
        "{}",
        serde_json::json!({"impl": "sluice", "model": name, "what": "train", "batch": shape.train_batch,
            "seq": shape.prompt + shape.new_tokens, "seconds": secs, "tokens_per_s": tokens as f64 / secs})
    );
}

fn main() {
    sluice_model::keep_freed_memory(); // as the `sluice` binary does
    let which = std::env::args().skip(1).find(|a| !a.starts_with('-')).unwrap_or_else(|| "all".into());
    let root = PathBuf::from(std::env::var("SLUICE_BENCH_DIR").unwrap_or_else(|_| "target/bench".into()));
    let dev = Default::default();
    if which == "tiny" || which == "all" {
        let dir = root.join("tiny-llama");
        let model = Llama::<Cpu>::random(&tiny_config(), 0, &dev);
        save_model(&model, &dir).unwrap();
        let shape = Shape { gen_batch: 64, train_batch: 64, prompt: 32, new_tokens: 32, iters: 5 };
        bench("tiny-llama", &model, &dir, &shape);
    }
    if which == "smollm2" || which == "all" {
        let gguf = model_path(&cache_dir().unwrap(), known("smollm2-135m-instruct").unwrap());
        if !gguf.is_file() {
            eprintln!("skipping smollm2: run `sluice model fetch smollm2-135m-instruct` first");
            return;
        }
        let dir = root.join("smollm2");
        let policy = Policy::<Cpu>::load(&gguf, &dev).unwrap();
        policy.save(&dir).unwrap();
        let shape = Shape { gen_batch: 16, train_batch: 8, prompt: 32, new_tokens: 32, iters: 3 };
        bench("smollm2-135m", &policy.model, &dir, &shape);
    }
}
