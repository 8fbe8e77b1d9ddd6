//! Shared by the workspace-level integration tests.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Installs the PyPI package `spec` (a wheel without dependencies, e.g. `duckdb==1.4.2`) under the
/// sluice cache (`$SLUICE_CACHE`, else `~/.cache/sluice`) in `pydeps-{dir}` once, and returns the
/// directory to put on PYTHONPATH; None when python3 or pip is missing or `import {module}` fails.
pub fn python_package(spec: &str, module: &str, dir: &str) -> Option<PathBuf> {
    let cache = std::env::var_os("SLUICE_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/sluice")))?;
    let target = cache.join(format!("pydeps-{dir}"));
    let importable = |dir: &Path| {
        Command::new("python3")
            .args(["-c", &format!("import {module}")])
            .env("PYTHONPATH", dir)
            .status()
            .is_ok_and(|s| s.success())
    };
    if importable(&target) {
        return Some(target);
    }
    let status = Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps", "--target"])
        .arg(&target)
        .arg(spec)
        .status()
        .ok()?;
    (status.success() && importable(&target)).then_some(target)
}

/// Says that a test cannot run on this machine, and why. Under `CI=true` that is a failure: CI
/// installs every prerequisite (`.ci/run`), so a skip there would hide a missing install step.
pub fn skip(why: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{why}: CI=true, where a test may not skip");
    }
    eprintln!("SKIPPED: {why}");
}
