#!/usr/bin/env bash
# What zenoh's TLS link and user/password authentication (and rcgen, for `sluice certs`) add to a
# cold build: the same tiny crate built twice from an empty target directory, once on zenoh with
# TCP only (sluice's build before) and once with what sluice links now. Prints both wall times
# and their ratio. Usage: scripts/tls-build-cost.sh [JOBS]
set -euo pipefail
jobs="${1:-2}"
root="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
variant() {
  local name="$1" features="$2" extra="$3"
  mkdir -p "$work/$name/src"
  echo 'fn main() { let _ = zenoh::Config::default(); }' > "$work/$name/src/main.rs"
  cat > "$work/$name/Cargo.toml" <<TOML
[package]
name = "cost-$name"
version = "0.0.0"
edition = "2021"
[dependencies]
zenoh = { version = "=1.10.2", default-features = false, features = [$features] }
$extra
[patch.crates-io]
zenoh-link-tls = { path = "$root/third_party/zenoh-link-tls" }
TOML
  # The same lock file for both, so the shared dependencies resolve alike.
  cp "$root/Cargo.lock" "$work/$name/Cargo.lock"
  local t0=$SECONDS
  (cd "$work/$name" && CARGO_INCREMENTAL=0 CARGO_TARGET_DIR="$work/$name/target" cargo build -q -j "$jobs")
  echo $((SECONDS - t0))
}
tcp=$(variant tcp '"transport_tcp"' '')
tls=$(variant tls '"transport_tcp", "transport_tls", "auth_usrpwd"' 'rcgen = { version = "0.14", default-features = false, features = ["crypto", "pem", "ring"] }')
echo "cold build, zenoh TCP only: ${tcp} s"
echo "cold build, zenoh TCP + TLS + user/password, and rcgen: ${tls} s"
awk -v a="$tcp" -v b="$tls" 'BEGIN { printf "ratio: %.2f (+%d s)\n", b / a, b - a }'
