//! Model tests against fixtures made by an independent numpy implementation
//! (`tests/fixtures/make_fixtures.py`, committed with its output).

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::path::{Path, PathBuf};

use burn::prelude::*;
use sluice_model::batch::forward_ctx;
use sluice_model::gguf::{dequantize, GgmlType, GgufFile};
use sluice_model::weights::{read_hf_weights, read_safetensors, write_safetensors, Checkpoint};
use sluice_model::HostTensor;
use sluice_model::{
    generate, gguf_checkpoint, gguf_config, save_model, score, Completion, Cpu, CpuAutodiff, Generator,
    Llama, ModelConfig, ModelError, SamplingParams, ScoreRow,
};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn load<B: Backend>(name: &str) -> Llama<B> {
    let dir = fixtures().join(name);
    let cfg = ModelConfig::from_file(&dir.join("config.json")).unwrap();
    let ckpt = read_hf_weights(&dir).unwrap();
    Llama::from_checkpoint(&cfg, &ckpt, &dir, &Default::default()).unwrap()
}

#[derive(serde::Deserialize)]
struct Reference {
    tokens: Vec<Vec<u32>>,
    logits: Vec<Vec<Vec<f32>>>,
}

fn reference(name: &str) -> Reference {
    let text = std::fs::read_to_string(fixtures().join(name).join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Full-sequence logits for a left-padded batch, `[batch][pos][vocab]` for each row's real tokens.
fn batch_logits<B: Backend>(model: &Llama<B>, seqs: &[Vec<u32>]) -> Vec<Vec<Vec<f32>>> {
    let b = seqs.len();
    let w = seqs.iter().map(Vec::len).max().unwrap();
    let mut tokens = vec![];
    let mut positions = vec![];
    let mut valid = vec![];
    for s in seqs {
        let pad = w - s.len();
        tokens.extend(std::iter::repeat_n(0i64, pad).chain(s.iter().map(|&t| t as i64)));
        positions.extend((0..w).map(|j| j.saturating_sub(pad)));
        valid.extend((0..w).map(|j| j >= pad));
    }
    let dev = model.device();
    let t = Tensor::<B, 2, Int>::from_data(TensorData::new(tokens, [b, w]), &dev);
    let ctx = forward_ctx::<B>(model.config(), b, w, 0, &positions, &valid, &dev);
    let logits = model.logits(model.forward_hidden(t, &ctx, None));
    let v = model.config().vocab_size;
    let flat = logits.into_data().convert::<f32>().into_vec::<f32>().unwrap();
    seqs.iter()
        .enumerate()
        .map(|(i, s)| {
            let pad = w - s.len();
            (pad..w).map(|j| flat[(i * w + j) * v..(i * w + j + 1) * v].to_vec()).collect()
        })
        .collect()
}

fn max_abs_diff(a: &[Vec<Vec<f32>>], b: &[Vec<Vec<f32>>]) -> f32 {
    let mut m = 0f32;
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x.len(), y.len());
        for (p, q) in x.iter().zip(y) {
            for (u, v) in p.iter().zip(q) {
                m = m.max((u - v).abs());
            }
        }
    }
    m
}

#[test]
fn logits_match_independent_reference_one_by_one_and_batched() {
    for name in ["tiny-llama", "tiny-qwen2"] {
        let model = load::<Cpu>(name);
        let r = reference(name);
        let single: Vec<_> =
            r.tokens.iter().map(|s| batch_logits(&model, std::slice::from_ref(s)).remove(0)).collect();
        let d = max_abs_diff(&single, &r.logits);
        assert!(d < 1e-4, "{name}: one by one, max |diff| = {d}");
        let batched = batch_logits(&model, &r.tokens);
        let d = max_abs_diff(&batched, &r.logits);
        assert!(d < 1e-4, "{name}: ragged batch, max |diff| = {d}");
    }
}

#[test]
fn gguf_f32_model_matches_reference_after_qk_unpermute() {
    let path = fixtures().join("tiny-llama.gguf");
    let file = GgufFile::open(&path).unwrap();
    let cfg = gguf_config(&file).unwrap();
    let hf = ModelConfig::from_file(&fixtures().join("tiny-llama/config.json")).unwrap();
    assert_eq!(cfg.num_kv_heads, hf.num_kv_heads);
    assert_eq!(cfg.rms_norm_eps, hf.rms_norm_eps);
    assert!(!cfg.tie_word_embeddings);
    let ckpt = gguf_checkpoint(&file, &cfg).unwrap();
    let model = Llama::<Cpu>::from_checkpoint(&cfg, &ckpt, &path, &Default::default()).unwrap();
    let r = reference("tiny-llama");
    let d = max_abs_diff(&batch_logits(&model, &r.tokens), &r.logits);
    assert!(d < 1e-4, "max |diff| = {d}");
}

#[test]
fn dequantization_matches_gguf_py() {
    let text = std::fs::read_to_string(fixtures().join("quants.json")).unwrap();
    let q: serde_json::Value = serde_json::from_str(&text).unwrap();
    for (name, ty) in
        [("Q8_0", GgmlType::Q8_0), ("Q4_0", GgmlType::Q4_0), ("Q4_1", GgmlType::Q4_1), ("F16", GgmlType::F16)]
    {
        let hex = q[name]["bytes"].as_str().unwrap();
        let bytes: Vec<u8> =
            (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
        let want: Vec<f32> =
            q[name]["values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        let got = dequantize(ty, &bytes);
        assert_eq!(got.len(), want.len(), "{name}");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!((g - w).abs() <= 1e-6 * w.abs().max(1.0), "{name}[{i}]: {g} vs {w}");
        }
    }
}

#[test]
fn kv_cache_decoding_equals_full_recomputation() {
    let model = load::<Cpu>("tiny-llama");
    let prompts = vec![vec![5u32, 9, 33, 2, 17], vec![40u32, 3]];
    let params = SamplingParams { temperature: 0.0, max_new_tokens: 10, ..Default::default() };
    let out = generate(&model, &prompts, &params, None).unwrap();
    for (prompt, c) in prompts.iter().zip(&out) {
        assert_eq!(c.tokens.len(), 10);
        let mut seq = prompt.clone();
        for (k, (&tok, &lp)) in c.tokens.iter().zip(&c.logprobs).enumerate() {
            // Full recomputation of the whole sequence, no cache.
            let logits = batch_logits(&model, &[seq.clone()]).remove(0).pop().unwrap();
            let (best, _) =
                logits.iter().enumerate().fold((0, f32::MIN), |a, (i, &v)| if v > a.1 { (i, v) } else { a });
            let max = logits.iter().cloned().fold(f32::MIN, f32::max);
            let lse = max + logits.iter().map(|v| (v - max).exp()).sum::<f32>().ln();
            assert_eq!(tok as usize, best, "step {k}");
            assert!((lp - (logits[best] - lse)).abs() < 1e-4, "step {k}: {lp} vs {}", logits[best] - lse);
            seq.push(tok);
        }
    }
}

#[test]
fn sampler_and_scorer_logprobs_agree() {
    for name in ["tiny-llama", "tiny-qwen2"] {
        let model = load::<Cpu>(name);
        let prompts = vec![vec![1u32, 7, 9, 30, 2, 8, 60], vec![3u32], vec![11u32, 12, 13]];
        let params = SamplingParams {
            // The scorer computes the full distribution's log-probs; so does the sampler when
            // nothing truncates it (with top-p it reports the truncated distribution's).
            temperature: 0.7,
            max_new_tokens: 16,
            stop_token_ids: vec![2],
            seed: 42,
            ..Default::default()
        };
        let out = generate(&model, &prompts, &params, None).unwrap();
        let rows: Vec<ScoreRow> =
            prompts.iter().zip(&out).map(|(p, c)| ScoreRow { prompt: p, completion: &c.tokens }).collect();
        let s = score(&model, &rows, 0.7, true).unwrap();
        let lp = s.logprobs.into_data().into_vec::<f32>().unwrap();
        let c = s.lengths.iter().copied().max().unwrap();
        let mut worst = 0f32;
        for (i, comp) in out.iter().enumerate() {
            for (j, &l) in comp.logprobs.iter().enumerate() {
                worst = worst.max((lp[i * c + j] - l).abs());
            }
        }
        assert!(worst < 1e-4, "{name}: sampler vs scorer max |diff| = {worst}");
        let ent = s.entropy.unwrap().into_data().into_vec::<f32>().unwrap();
        assert!(ent.iter().all(|e| *e >= 0.0 && e.is_finite()));
    }
}

#[test]
fn packed_scoring_equals_scoring_each_row_alone() {
    // Lengths from 2 to 14 tokens: the scorer packs several sequences into a row; each must see
    // only itself (its own positions from 0, its own keys).
    for name in ["tiny-llama", "tiny-qwen2"] {
        let model = load::<Cpu>(name);
        let seqs: Vec<(Vec<u32>, Vec<u32>)> = (0..9u32)
            .map(|i| {
                let prompt = (0..1 + i % 4).map(|k| 3 + (i * 7 + k * 5) % 60).collect();
                let completion = (0..1 + (i * 5) % 11).map(|k| 4 + (i * 3 + k * 11) % 60).collect();
                (prompt, completion)
            })
            .collect();
        let rows: Vec<ScoreRow> = seqs.iter().map(|(p, c)| ScoreRow { prompt: p, completion: c }).collect();
        let packed = pack_rows(model.config(), &rows);
        assert!(packed.rows < rows.len(), "the test must pack several sequences into a row");
        let s = score(&model, &rows, 0.8, true).unwrap();
        let c = s.lengths.iter().copied().max().unwrap();
        let lp = s.logprobs.into_data().into_vec::<f32>().unwrap();
        let ent = s.entropy.unwrap().into_data().into_vec::<f32>().unwrap();
        for (i, row) in rows.iter().enumerate() {
            let alone = score(&model, &[*row], 0.8, true).unwrap();
            let alp = alone.logprobs.into_data().into_vec::<f32>().unwrap();
            let aent = alone.entropy.unwrap().into_data().into_vec::<f32>().unwrap();
            for j in 0..c {
                let (want, want_ent) = if j < row.completion.len() { (alp[j], aent[j]) } else { (0.0, 0.0) };
                assert!(
                    (lp[i * c + j] - want).abs() < 1e-5,
                    "{name} row {i} col {j}: {} vs {want}",
                    lp[i * c + j]
                );
                assert!((ent[i * c + j] - want_ent).abs() < 1e-5, "{name} row {i} col {j}: entropy");
            }
        }
    }
}

fn pack_rows(cfg: &ModelConfig, rows: &[ScoreRow<'_>]) -> sluice_model::batch::Packing {
    let prompts: Vec<&[u32]> = rows.iter().map(|r| r.prompt).collect();
    sluice_model::batch::pack(
        &prompts,
        &rows.iter().map(|r| r.completion.len()).collect::<Vec<_>>(),
        sluice_model::batch::key_cost(cfg),
    )
}

#[test]
fn rows_sharing_a_prompt_score_and_differentiate_as_each_alone() {
    // Three prompts with four completions each (1 to 12 tokens) and two prompts of their own: the
    // scorer computes each shared prompt once per unit; each completion must still see only its
    // prompt and itself, and the prompt's gradient must collect every completion's.
    let model = load::<CpuAutodiff>("tiny-llama");
    let prompts: Vec<Vec<u32>> =
        (0..5u32).map(|i| (0..2 + i).map(|k| 3 + (i * 13 + k * 7) % 60).collect()).collect();
    let mut seqs: Vec<(usize, Vec<u32>)> = Vec::new();
    for i in 0..14u32 {
        let p = if i < 12 { (i % 3) as usize } else { 3 + (i - 12) as usize };
        seqs.push((p, (0..1 + (i * 7) % 12).map(|k| 4 + (i * 5 + k * 11) % 60).collect()));
    }
    let rows: Vec<ScoreRow> =
        seqs.iter().map(|(p, c)| ScoreRow { prompt: &prompts[*p], completion: c }).collect();
    let packed = pack_rows(model.config(), &rows);
    let tokens: usize = rows.iter().map(|r| r.prompt.len() + r.completion.len()).sum();
    let cells = packed.cells.iter().filter(|c| **c != sluice_model::batch::Cell::Pad).count();
    assert!(cells < tokens, "prompts must be shared: {cells} columns for {tokens} tokens");
    let s = score(&model, &rows, 0.8, false).unwrap();
    let c = s.lengths.iter().copied().max().unwrap();
    let lp = s.logprobs.clone().into_data().into_vec::<f32>().unwrap();
    let grads = s.logprobs.sum().backward();
    let together = model.named_tensors();
    let mut alone_sum: Vec<Vec<f32>> = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let alone = score(&model, &[*row], 0.8, false).unwrap();
        let alp = alone.logprobs.clone().into_data().into_vec::<f32>().unwrap();
        for j in 0..row.completion.len() {
            let tol = 1e-5 * alp[j].abs().max(1.0);
            assert!((lp[i * c + j] - alp[j]).abs() < tol, "row {i} col {j}: {} vs {}", lp[i * c + j], alp[j]);
        }
        let g = alone.logprobs.sum().backward();
        for (k, (_, t)) in model.named_tensors().iter().enumerate() {
            let v = t.grad(&g).unwrap_or_default();
            match alone_sum.get_mut(k) {
                Some(acc) if !v.is_empty() => acc.iter_mut().zip(&v).for_each(|(a, b)| *a += b),
                Some(_) => {}
                None => alone_sum.push(v),
            }
        }
    }
    for ((name, t), want) in together.iter().zip(&alone_sum) {
        let got = t.grad(&grads).unwrap_or_default();
        let scale = want.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
        let worst = got.iter().zip(want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert_eq!(got.len(), want.len(), "{name}");
        assert!(worst < 1e-4 * scale, "{name}: gradient differs by {worst} (scale {scale})");
    }
}

#[test]
fn scorer_is_differentiable() {
    let model = load::<CpuAutodiff>("tiny-qwen2");
    let rows = [
        ScoreRow { prompt: &[4, 5, 6], completion: &[7, 8] },
        ScoreRow { prompt: &[9], completion: &[10, 11, 12] },
    ];
    let s = score(&model, &rows, 1.0, false).unwrap();
    let loss = s.logprobs.sum().neg();
    let grads = loss.backward();
    let named = model.named_tensors();
    let (name, embed) = &named[0];
    assert_eq!(name, "model.embed_tokens.weight");
    let g = embed.grad(&grads).expect("embedding gets a gradient");
    // Vectors (norms, biases) are reachable too.
    let norm = named.iter().find(|(n, _)| n == "model.norm.weight").unwrap();
    assert!(norm.1.grad(&grads).is_some_and(|g| g.iter().any(|v| *v != 0.0)));
    assert!(g.iter().all(|v| v.is_finite()));
    assert!(g.iter().any(|v| *v != 0.0));
}

#[test]
fn seeded_sampling_is_reproducible_and_independent_of_batch_mates() {
    let model = load::<Cpu>("tiny-llama");
    let params = SamplingParams { temperature: 1.0, max_new_tokens: 12, seed: 7, ..Default::default() };
    let a = vec![vec![3u32, 4, 5]];
    let ab = vec![vec![3u32, 4, 5], vec![50u32, 51, 52, 53, 54, 55, 56]];
    let first = generate(&model, &a, &params, None).unwrap();
    let again = generate(&model, &a, &params, None).unwrap();
    assert_eq!(first, again);
    let batched = generate(&model, &ab, &params, None).unwrap();
    assert_eq!(first[0].tokens, batched[0].tokens);
    let other = generate(&model, &a, &SamplingParams { seed: 8, ..params.clone() }, None).unwrap();
    assert_ne!(first[0].tokens, other[0].tokens, "a different seed should change a 12-token sample");
}

#[test]
fn equal_prompts_prefilled_once_sample_as_if_prefilled_apart() {
    // Row 2's prompt equals row 0's in the first batch (its cache row is a copy of row 0's
    // prefill) and is nobody else's in the second; rows draw from (seed, row), so row 2 must
    // produce the same tokens and log-probs both times.
    let model = load::<Cpu>("tiny-llama");
    let params = SamplingParams { temperature: 1.0, max_new_tokens: 12, seed: 5, ..Default::default() };
    let a = vec![3u32, 4, 5, 6];
    let shared = generate(&model, &[a.clone(), vec![9, 10], a.clone()], &params, None).unwrap();
    let apart = generate(&model, &[vec![20, 21, 22], vec![9, 10], a], &params, None).unwrap();
    assert_eq!(shared[2].tokens, apart[2].tokens);
    assert_eq!(shared[1].tokens, apart[1].tokens);
    for (x, y) in shared[2].logprobs.iter().zip(&apart[2].logprobs) {
        assert!((x - y).abs() < 1e-5, "{x} vs {y}");
    }
    assert_ne!(shared[0].tokens, shared[2].tokens, "rows sharing a prompt still draw their own tokens");
}

#[test]
fn rows_stop_independently() {
    let model = load::<Cpu>("tiny-llama");
    let prompts = vec![vec![5u32, 9], vec![40u32, 3, 1]];
    let greedy = SamplingParams { temperature: 0.0, max_new_tokens: 8, ..Default::default() };
    let full = generate(&model, &prompts, &greedy, None).unwrap();
    // Stop row 0 at its 3rd token: row 1 must run on unchanged.
    let stop = full[0].tokens[2];
    let params = SamplingParams { stop_token_ids: vec![stop], ..greedy };
    let out = generate(&model, &prompts, &params, None).unwrap();
    let first_stop = full[0].tokens.iter().position(|&t| t == stop).unwrap();
    assert_eq!(out[0].tokens, full[0].tokens[..=first_stop]);
    assert_eq!(out[0].finish, sluice_model::FinishReason::Stop);
    match full[1].tokens.iter().position(|&t| t == stop) {
        Some(p) => assert_eq!(out[1].tokens, full[1].tokens[..=p]),
        None => assert_eq!(out[1].tokens, full[1].tokens),
    }
}

#[test]
fn generator_steps_can_be_driven_by_hand() {
    let model = load::<Cpu>("tiny-llama");
    let params = SamplingParams { temperature: 0.0, max_new_tokens: 4, ..Default::default() };
    let mut g = Generator::new(&model, &[vec![1, 2, 3]], &params, None).unwrap();
    let mut steps = 0;
    while !g.is_done() {
        g.step(&model).unwrap();
        steps += 1;
    }
    assert_eq!(steps, 3, "prefill samples the first token; three steps sample the rest");
    assert_eq!(g.finish()[0].tokens.len(), 4);
}

#[test]
fn safetensors_round_trip_is_bit_exact() {
    for name in ["tiny-llama", "tiny-qwen2"] {
        let model = load::<Cpu>(name);
        let dir = tempfile::tempdir().unwrap();
        save_model(&model, dir.path()).unwrap();
        let again = load_from::<Cpu>(dir.path());
        assert_eq!(model.config(), again.config());
        let a = model.to_host_tensors();
        let b = again.to_host_tensors();
        assert_eq!(a.len(), b.len());
        for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
            assert_eq!(na, nb);
            assert_eq!(ta.shape, tb.shape, "{na}");
            let bits = |t: &HostTensor| t.data.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(ta), bits(tb), "{na}");
        }
        // And the saved file holds exactly the original checkpoint's tensors.
        let mut orig = Checkpoint::default();
        read_safetensors(&fixtures().join(name).join("model.safetensors"), &mut orig).unwrap();
        let mut saved = Checkpoint::default();
        read_safetensors(&dir.path().join("model.safetensors"), &mut saved).unwrap();
        assert_eq!(orig.tensors, saved.tensors);
    }
}

fn load_from<B: Backend>(dir: &Path) -> Llama<B> {
    let cfg = ModelConfig::from_file(&dir.join("config.json")).unwrap();
    let ckpt = read_hf_weights(dir).unwrap();
    Llama::from_checkpoint(&cfg, &ckpt, dir, &Default::default()).unwrap()
}

fn try_load(dir: &Path) -> Result<Llama<Cpu>, ModelError> {
    let cfg = ModelConfig::from_file(&dir.join("config.json"))?;
    let ckpt = read_hf_weights(dir)?;
    Llama::from_checkpoint(&cfg, &ckpt, dir, &Default::default())
}

fn copy_fixture(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixtures().join(name).join(f), dir.path().join(f)).unwrap();
    }
    dir
}

#[test]
fn truncated_safetensors_is_an_error_naming_the_file() {
    let dir = copy_fixture("tiny-llama");
    let file = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    for cut in [bytes.len() / 2, 9, 3] {
        std::fs::write(&file, &bytes[..cut]).unwrap();
        let err = try_load(dir.path()).unwrap_err();
        assert!(matches!(err, ModelError::MalformedWeights { .. }), "{err}");
        assert!(err.to_string().contains("model.safetensors"), "{err}");
    }
}

#[test]
fn wrong_shape_and_missing_tensor_are_named() {
    let dir = copy_fixture("tiny-llama");
    let file = dir.path().join("model.safetensors");
    let mut ckpt = Checkpoint::default();
    read_safetensors(&file, &mut ckpt).unwrap();
    let mut tensors: Vec<(String, HostTensor)> = ckpt.tensors.clone().into_iter().collect();
    let name = "model.layers.1.self_attn.k_proj.weight";
    let t = &mut tensors.iter_mut().find(|(n, _)| n == name).unwrap().1;
    t.shape = vec![t.shape[1], t.shape[0]];
    write_safetensors(&file, &tensors).unwrap();
    let err = try_load(dir.path()).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, ModelError::ShapeMismatch { .. }) && msg.contains(name) && msg.contains("[16, 32]"),
        "{msg}"
    );

    tensors.retain(|(n, _)| n != name);
    write_safetensors(&file, &tensors).unwrap();
    let err = try_load(dir.path()).unwrap_err();
    assert!(matches!(err, ModelError::MissingTensor { .. }) && err.to_string().contains(name), "{err}");
}

#[test]
fn malformed_gguf_files_are_errors() {
    let bytes = std::fs::read(fixtures().join("tiny-llama.gguf")).unwrap();
    let mut bad = bytes.clone();
    bad[..4].copy_from_slice(b"GGML");
    let err = GgufFile::parse(Path::new("bad.gguf"), bad).unwrap_err();
    assert!(err.to_string().contains("bad.gguf") && err.to_string().contains("magic"), "{err}");
    // Every truncation point gives an error, never a panic.
    for cut in (0..bytes.len()).step_by(997).chain([bytes.len() - 1]) {
        let r = GgufFile::parse(Path::new("cut.gguf"), bytes[..cut].to_vec());
        assert!(r.is_err(), "truncated at {cut} parsed");
    }
}

#[test]
fn invalid_requests_are_refused() {
    let model = load::<Cpu>("tiny-llama");
    let p = SamplingParams::default();
    assert!(generate(&model, &[], &p, None).is_err());
    assert!(generate(&model, &[vec![]], &p, None).is_err());
    let err = generate(&model, &[vec![1, 64]], &p, None).unwrap_err();
    assert!(err.to_string().contains("64"), "{err}");
    let bad_t = SamplingParams { temperature: f32::NAN, ..p.clone() };
    assert!(generate(&model, &[vec![1]], &bad_t, None).is_err());
    let stop_without_tok = SamplingParams { stop_strings: vec!["x".into()], ..p };
    assert!(generate(&model, &[vec![1]], &stop_without_tok, None).is_err());
}

#[test]
fn sharded_checkpoint_with_index_loads() {
    let mut ckpt = Checkpoint::default();
    read_safetensors(&fixtures().join("tiny-llama/model.safetensors"), &mut ckpt).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixtures().join("tiny-llama/config.json"), dir.path().join("config.json")).unwrap();
    let all: Vec<(String, HostTensor)> = ckpt.tensors.into_iter().collect();
    let (a, b) = all.split_at(all.len() / 2);
    let names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"];
    write_safetensors(&dir.path().join(names[0]), a).unwrap();
    write_safetensors(&dir.path().join(names[1]), b).unwrap();
    let map: serde_json::Map<String, serde_json::Value> = a
        .iter()
        .map(|(n, _)| (n.clone(), names[0].into()))
        .chain(b.iter().map(|(n, _)| (n.clone(), names[1].into())))
        .collect();
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(dir.path().join("model.safetensors.index.json"), index.to_string()).unwrap();
    let model = load_from::<Cpu>(dir.path());
    let r = reference("tiny-llama");
    let d = max_abs_diff(&batch_logits(&model, &r.tokens), &r.logits);
    assert!(d < 1e-4, "max |diff| = {d}");

    // A shard the index names but that is missing is an error naming it.
    std::fs::remove_file(dir.path().join(names[1])).unwrap();
    let err = try_load(dir.path()).unwrap_err();
    assert!(err.to_string().contains(names[1]), "{err}");
}

#[test]
fn recompute_after_a_weight_swap_continues_as_the_new_weights_alone() {
    let old = load::<Cpu>("tiny-llama");
    let new = Llama::<Cpu>::random(old.config(), 99, &Default::default());
    let prompts = vec![vec![1u32, 7, 9, 30, 2, 8], vec![3u32], vec![3u32], vec![11u32, 12, 13]];
    let params = SamplingParams { temperature: 0.9, max_new_tokens: 14, seed: 4, ..Default::default() };
    // Six tokens under the old weights, then the swap; with `recompute` the cache is rebuilt.
    let swapped = |recompute: bool| {
        let mut gen = Generator::new(&old, &prompts, &params, None).unwrap();
        for _ in 0..5 {
            gen.step(&old).unwrap();
        }
        assert_eq!(gen.generated_lens(), vec![6; 4]);
        if recompute {
            gen.recompute(&new).unwrap();
        }
        while !gen.is_done() {
            gen.step(&new).unwrap();
        }
        gen.finish()
    };
    // The worst gap, over the tokens sampled after the swap, between the sampler's log-probs and
    // the new weights' own scoring of the same sequence.
    let gap = |out: &[Completion]| {
        let rows: Vec<ScoreRow> =
            prompts.iter().zip(out).map(|(p, c)| ScoreRow { prompt: p, completion: &c.tokens }).collect();
        let s = score(&new, &rows, params.temperature, false).unwrap();
        let width = s.lengths.iter().copied().max().unwrap();
        let lp = s.logprobs.into_data().into_vec::<f32>().unwrap();
        let mut worst = 0f32;
        for (i, c) in out.iter().enumerate() {
            assert_eq!(c.tokens.len(), 14);
            for j in 6..c.tokens.len() {
                worst = worst.max((lp[i * width + j] - c.logprobs[j]).abs());
            }
        }
        worst
    };
    let recomputed = gap(&swapped(true));
    assert!(recomputed < 1e-4, "after recompute the new weights sampled every later token: {recomputed}");
    let kept = gap(&swapped(false));
    assert!(kept > 1e-2, "keeping the old keys/values mixes the versions: {kept}");
}
