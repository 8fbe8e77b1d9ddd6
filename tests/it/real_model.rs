//! Tests on the real SmolLM2-135M-Instruct. They run when the model is in the cache (`sluice model
//! fetch smollm2-135m-instruct`, which CI runs first) and print why they are skipped otherwise.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::path::PathBuf;
use std::process::Command;

use sluice::fetch::{cache_dir, known, model_path};

use crate::common;
use sluice_model::{generate, score, ChatMessage, Cpu, Policy, SamplingParams, ScoreRow};

const MODEL: &str = "smollm2-135m-instruct";

fn fetched_model() -> Option<PathBuf> {
    let path = model_path(&cache_dir().ok()?, known(MODEL).ok()?);
    if path.is_file() {
        Some(path)
    } else {
        common::skip(&format!(
            "{MODEL} is not fetched ({} missing); run `sluice model fetch {MODEL}`",
            path.display()
        ));
        None
    }
}

fn sluice(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice")).args(args).output().expect("sluice runs");
    assert!(out.status.success(), "sluice {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8 output")
}

#[test]
fn generate_answers_paris() {
    let Some(model) = fetched_model() else { return };
    let info = sluice_model::model_info(&model).unwrap();
    assert_eq!(info.config.vocab_size as u32, known(MODEL).unwrap().vocab_size, "KNOWN_MODELS' vocab_size");
    let model = model.to_str().unwrap();
    let out = sluice(&[
        "generate",
        "--model",
        model,
        "--chat",
        "--prompt",
        "What is the capital of France?",
        "--temperature",
        "0",
    ]);
    assert!(out.contains("Paris"), "answer was {out:?}");
}

#[test]
fn generate_json_reports_ids_logprobs_and_text() {
    let Some(model) = fetched_model() else { return };
    let out = sluice(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "1, 2, 3, 4,",
        "--temperature",
        "0",
        "--max-new-tokens",
        "6",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let ids = v["completion_ids"].as_array().unwrap();
    let lps = v["logprobs"].as_array().unwrap();
    assert_eq!(ids.len(), lps.len());
    assert!(!ids.is_empty());
    assert!(lps.iter().all(|l| l.as_f64().unwrap() <= 0.0));
    assert!(v["text"].as_str().unwrap().contains('5'), "{out}");
}

#[test]
fn sampler_and_scorer_agree_on_the_real_model() {
    let Some(path) = fetched_model() else { return };
    let policy = Policy::<Cpu>::load(&path, &Default::default()).unwrap();
    let prompts: Vec<Vec<u32>> = ["What is 12 + 30?", "Name a color."]
        .iter()
        .map(|p| policy.tokenizer.encode_chat(&[ChatMessage::new("user", *p)], true).unwrap())
        .collect();
    let params = SamplingParams {
        // Untruncated, so the sampler's log-probs are the scorer's distribution (with top-p they
        // are those of the truncated distribution the tokens were drawn from).
        temperature: 0.8,
        max_new_tokens: 16,
        stop_token_ids: policy.stop_token_ids(),
        seed: 3,
        ..Default::default()
    };
    let out = generate(&policy.model, &prompts, &params, None).unwrap();
    let rows: Vec<ScoreRow> =
        prompts.iter().zip(&out).map(|(p, c)| ScoreRow { prompt: p, completion: &c.tokens }).collect();
    let s = score(&policy.model, &rows, 0.8, false).unwrap();
    let c = s.lengths.iter().copied().max().unwrap();
    let lp = s.logprobs.into_data().into_vec::<f32>().unwrap();
    let mut worst = 0f32;
    for (i, comp) in out.iter().enumerate() {
        for (j, &l) in comp.logprobs.iter().enumerate() {
            worst = worst.max((lp[i * c + j] - l).abs());
        }
    }
    println!("max |sampler - scorer| = {worst:e}");
    assert!(worst < 1e-4, "sampler vs scorer max |diff| = {worst}");
}

#[test]
fn convert_then_load_gives_the_same_greedy_answer() {
    let Some(model) = fetched_model() else { return };
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("hf");
    sluice(&["convert", model.to_str().unwrap(), "--out", out_dir.to_str().unwrap()]);
    for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        assert!(out_dir.join(f).is_file(), "{f} missing");
    }
    let args = |m: &str| {
        vec![
            "generate".to_string(),
            "--model".into(),
            m.to_string(),
            "--chat".into(),
            "--prompt".into(),
            "Say hello.".into(),
            "--temperature".into(),
            "0".into(),
            "--max-new-tokens".into(),
            "10".into(),
            "--json".into(),
        ]
    };
    let a: Vec<String> = args(model.to_str().unwrap());
    let b: Vec<String> = args(out_dir.to_str().unwrap());
    let ja: serde_json::Value =
        serde_json::from_str(&sluice(&a.iter().map(String::as_str).collect::<Vec<_>>())).unwrap();
    let jb: serde_json::Value =
        serde_json::from_str(&sluice(&b.iter().map(String::as_str).collect::<Vec<_>>())).unwrap();
    assert_eq!(ja["prompt_ids"], jb["prompt_ids"], "tokenizer and chat template survive conversion");
    assert_eq!(ja["completion_ids"], jb["completion_ids"]);
    let info = sluice(&["model", "info", out_dir.to_str().unwrap(), "--json"]);
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["parameters"], 134_515_008u64);
    assert_eq!(info["format"], "hf");
}
