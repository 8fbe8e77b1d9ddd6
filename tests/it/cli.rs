//! Command-line behaviour that needs no model: errors name their input.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::process::Command;

fn sluice(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sluice")).args(args).output().expect("sluice runs")
}

#[test]
fn unknown_model_name_is_named_with_the_known_ones() {
    let out = sluice(&["model", "fetch", "gpt-17"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("gpt-17") && err.contains("smollm2-135m-instruct"), "{err}");
}

#[test]
fn missing_model_path_is_named() {
    let out = sluice(&["generate", "--model", "/nonexistent/model.gguf", "--prompt", "hi"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/model.gguf"), "{err}");
}

#[test]
fn garbage_model_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("junk.gguf");
    std::fs::write(&path, b"this is not a model").unwrap();
    let out = sluice(&["model", "info", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("junk.gguf") && err.contains("magic"), "{err}");
}

#[test]
fn hf_dir_with_unknown_architecture_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"architectures": ["MambaForCausalLM"], "vocab_size": 8, "hidden_size": 8,
            "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 1}"#,
    )
    .unwrap();
    let out = sluice(&["model", "info", dir.path().to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("MambaForCausalLM"), "{err}");
}
