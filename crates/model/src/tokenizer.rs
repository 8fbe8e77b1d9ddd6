//! Tokenizer and chat template.
//!
//! The tokenizer is the `tokenizers` crate's, built from `tokenizer.json` or rebuilt from GGUF
//! metadata (BPE vocab and merges, the pre-tokenizer named by `tokenizer.ggml.pre`). Chat templates
//! are rendered with minijinja (with Python string methods, as transformers' Jinja has them).
//!
//! Token in, token out: the sampler and scorer work on ids. Text is tokenized once (prompts,
//! environment observations) and model output is only decoded for display or for checking stop
//! strings, never re-encoded.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, `tool`...
    pub role: String,
    /// The text.
    pub content: String,
}

impl ChatMessage {
    /// A message with the given role.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self { role: role.into(), content: content.into() }
    }
}

/// A tokenizer with its special tokens and chat template. Cloning is cheap (the vocabulary is
/// shared), so samplers and workers each hold one.
#[derive(Clone)]
pub struct Tokenizer {
    inner: std::sync::Arc<tokenizers::Tokenizer>,
    chat_template: Option<String>,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("chat_template", &self.chat_template.is_some())
            .finish()
    }
}

fn tok_err(what: impl Into<String>, e: impl std::fmt::Display) -> ModelError {
    ModelError::Tokenizer { what: what.into(), reason: e.to_string() }
}

/// A special-token entry of `tokenizer_config.json`: a string or `{"content": ...}`.
fn token_string(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(str::to_string),
        _ => None,
    }
}

impl Tokenizer {
    /// Loads `tokenizer.json` and, when present, `tokenizer_config.json` / `chat_template.jinja`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let inner =
            tokenizers::Tokenizer::from_file(&path).map_err(|e| tok_err(path.display().to_string(), e))?;
        let mut tok = Self { inner: inner.into(), chat_template: None, bos_token: None, eos_token: None };
        let cfg_path = dir.join("tokenizer_config.json");
        if cfg_path.exists() {
            let text = std::fs::read_to_string(&cfg_path).map_err(|e| ModelError::io(&cfg_path, e))?;
            let cfg: Value = serde_json::from_str(&text).map_err(|e| ModelError::json(&cfg_path, e))?;
            tok.bos_token = token_string(cfg.get("bos_token"));
            tok.eos_token = token_string(cfg.get("eos_token"));
            tok.chat_template = match cfg.get("chat_template") {
                Some(Value::String(s)) => Some(s.clone()),
                // A list of named templates: take "default".
                Some(Value::Array(list)) => list
                    .iter()
                    .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                    .and_then(|t| t.get("template"))
                    .and_then(|t| t.as_str())
                    .map(str::to_string),
                _ => None,
            };
        }
        let jinja = dir.join("chat_template.jinja");
        if tok.chat_template.is_none() && jinja.exists() {
            tok.chat_template = Some(std::fs::read_to_string(&jinja).map_err(|e| ModelError::io(&jinja, e))?);
        }
        Ok(tok)
    }

    /// A character-level tokenizer for tiny test and benchmark models: id 0 `<pad>`, 1 `<eos>`
    /// (the end-of-sequence token), 2 `<unk>`, then one id per distinct character of `alphabet`
    /// in order. It is a real `tokenizers` BPE without merges, so `save` writes a `tokenizer.json`
    /// that Python's `tokenizers`/`transformers` load unchanged. No chat template.
    pub fn char_level(alphabet: &str) -> Result<Self> {
        let mut vocab = serde_json::Map::new();
        for (i, t) in ["<pad>", "<eos>", "<unk>"].into_iter().enumerate() {
            vocab.insert(t.into(), json!(i));
        }
        for c in alphabet.chars() {
            let n = vocab.len();
            vocab.entry(c.to_string()).or_insert(json!(n));
        }
        let special = |id: usize, content: &str| {
            json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        };
        let spec = json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": [special(0, "<pad>"), special(1, "<eos>"), special(2, "<unk>")],
            "normalizer": null, "pre_tokenizer": null, "post_processor": null,
            "decoder": {"type": "Fuse"},
            "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null,
                      "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                      "ignore_merges": false, "vocab": vocab, "merges": []},
        });
        let inner: tokenizers::Tokenizer =
            spec.to_string().parse().map_err(|e| tok_err("char-level tokenizer", e))?;
        Ok(Self {
            inner: inner.into(),
            chat_template: None,
            bos_token: None,
            eos_token: Some("<eos>".into()),
        })
    }

    /// Rebuilds the tokenizer from GGUF metadata (`tokenizer.ggml.*`). Only byte-level BPE
    /// (`tokenizer.ggml.model = "gpt2"`) is supported.
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let what = file.path.display().to_string();
        let err = |reason: String| ModelError::Tokenizer { what: what.clone(), reason };
        let model = file.get("tokenizer.ggml.model").and_then(|v| v.as_str()).unwrap_or("<missing>");
        if model != "gpt2" {
            return Err(err(format!(
                "tokenizer.ggml.model {model:?} is not supported (only \"gpt2\" byte-level BPE)"
            )));
        }
        let strings = |key: &str| -> Result<Vec<String>> {
            let arr =
                file.get(key).and_then(|v| v.as_array()).ok_or_else(|| err(format!("missing {key}")))?;
            arr.iter()
                .map(|v| {
                    v.as_str().map(str::to_string).ok_or_else(|| err(format!("{key}: not a string array")))
                })
                .collect()
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges = strings("tokenizer.ggml.merges")?;
        let types: Vec<i64> = match file.get("tokenizer.ggml.token_type").and_then(|v| v.as_array()) {
            Some(a) => a.iter().map(|v| v.as_f64().unwrap_or(1.0) as i64).collect(),
            None => vec![1; tokens.len()],
        };
        let pre = file.get("tokenizer.ggml.pre").and_then(|v| v.as_str()).unwrap_or("default");
        let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
        let split = |pattern: &str| json!({"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false});
        const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
        const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
        let pre_tokenizer = match pre {
            "smollm" => json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
            "gpt2" | "default" => byte_level(true),
            "llama-bpe" | "llama3" => {
                json!({"type": "Sequence", "pretokenizers": [split(LLAMA3), byte_level(false)]})
            }
            "qwen2" => json!({"type": "Sequence", "pretokenizers": [split(QWEN2), byte_level(false)]}),
            other => {
                return Err(err(format!(
                    "tokenizer.ggml.pre {other:?} is not supported (smollm, gpt2, default, llama-bpe, qwen2)"
                )))
            }
        };
        let vocab: serde_json::Map<String, Value> =
            tokens.iter().enumerate().map(|(i, t)| (t.clone(), json!(i))).collect();
        // CONTROL (3) and USER_DEFINED (4) tokens are matched whole before BPE, as llama.cpp does.
        let added: Vec<Value> = tokens
            .iter()
            .zip(&types)
            .enumerate()
            .filter(|(_, (_, &ty))| ty == 3 || ty == 4)
            .map(|(id, (t, &ty))| {
                json!({"id": id, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                       "normalized": false, "special": ty == 3})
            })
            .collect();
        let add_bos =
            matches!(file.get("tokenizer.ggml.add_bos_token"), Some(crate::gguf::GgufValue::Bool(true)));
        let bos = file
            .get("tokenizer.ggml.bos_token_id")
            .and_then(|v| v.as_u64())
            .and_then(|id| tokens.get(id as usize).map(|t| (id, t.clone())));
        // Models that want a BOS on every sequence get it from a post-processor, as in their
        // tokenizer.json.
        let post_processor = match (&bos, add_bos) {
            (Some((id, tok)), true) => json!({
                "type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": tok, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": tok, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {tok.as_str(): {"id": tok, "ids": [id], "tokens": [tok]}},
            }),
            _ => Value::Null,
        };
        let spec = json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": pre_tokenizer,
            "post_processor": post_processor,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                      "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                      "ignore_merges": false, "vocab": vocab, "merges": merges},
        });
        let inner: tokenizers::Tokenizer = spec.to_string().parse().map_err(|e| err(format!("{e}")))?;
        let special = |key: &str| {
            file.get(key).and_then(|v| v.as_u64()).and_then(|id| tokens.get(id as usize).cloned())
        };
        Ok(Self {
            inner: inner.into(),
            chat_template: file.get("tokenizer.chat_template").and_then(|v| v.as_str()).map(str::to_string),
            bos_token: bos.map(|(_, t)| t),
            eos_token: special("tokenizer.ggml.eos_token_id"),
        })
    }

    /// Number of ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of a token string, if it is in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The end-of-sequence token id named by the tokenizer config, if any.
    pub fn eos_token_id(&self) -> Option<u32> {
        self.eos_token.as_deref().and_then(|t| self.token_to_id(t))
    }

    /// The chat template, if the model has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Encodes text; `add_special_tokens` applies the tokenizer's post-processor (e.g. a BOS).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, add_special_tokens).map_err(|e| tok_err("encode", e))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Decodes ids to text (for display and stop strings only).
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner.decode(ids, skip_special_tokens).map_err(|e| tok_err("decode", e))
    }

    /// Renders the chat template over `messages`.
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let template = self
            .chat_template
            .as_deref()
            .ok_or_else(|| ModelError::ChatTemplate("the model has no chat template".into()))?;
        let mut env = minijinja::Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
        });
        env.add_template("chat", template).map_err(|e| ModelError::ChatTemplate(e.to_string()))?;
        let tmpl = env.get_template("chat").map_err(|e| ModelError::ChatTemplate(e.to_string()))?;
        tmpl.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.clone().unwrap_or_default(),
            eos_token => self.eos_token.clone().unwrap_or_default(),
        })
        .map_err(|e| ModelError::ChatTemplate(e.to_string()))
    }

    /// Renders the chat template and encodes the result (the template already places any special
    /// tokens, so none are added on top).
    pub fn encode_chat(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<Vec<u32>> {
        let text = self.apply_chat_template(messages, add_generation_prompt)?;
        self.encode(&text, false)
    }

    /// Writes `tokenizer.json` and `tokenizer_config.json` (with the chat template) into `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join("tokenizer.json");
        let text = self.inner.to_string(true).map_err(|e| tok_err("serialize", e))?;
        std::fs::write(&path, text).map_err(|e| ModelError::io(&path, e))?;
        let cfg = json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "chat_template": self.chat_template,
            "clean_up_tokenization_spaces": false,
            "model_max_length": 1_000_000_000_000_000_000u64,
        });
        let path = dir.join("tokenizer_config.json");
        let text = serde_json::to_string_pretty(&cfg).map_err(|e| ModelError::json(&path, e))?;
        std::fs::write(&path, text).map_err(|e| ModelError::io(&path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_char_level_tokenizer_has_one_id_per_character_and_saves_as_a_real_tokenizer_json() {
        let tok = Tokenizer::char_level("ab+=1").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(tok.vocab_size(), 8);
        assert_eq!(tok.eos_token_id(), Some(1));
        let ids = tok.encode("a+b=1", false).unwrap_or_default();
        assert_eq!(ids, vec![3, 5, 4, 6, 7]);
        assert_eq!(tok.decode(&ids, true).unwrap_or_default(), "a+b=1");
        // Characters outside the alphabet are <unk>; special tokens vanish from decoded text.
        assert_eq!(tok.encode("ax", false).unwrap_or_default(), vec![3, 2]);
        assert_eq!(tok.decode(&[3, 0, 1, 4], true).unwrap_or_default(), "ab");
        let dir = std::env::temp_dir().join(format!("sluice-char-tok-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_default();
        tok.save(&dir).unwrap_or_else(|e| panic!("{e}"));
        let back = Tokenizer::from_dir(&dir).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back.encode("a+b=1", false).unwrap_or_default(), ids);
        assert_eq!(back.eos_token_id(), Some(1));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
