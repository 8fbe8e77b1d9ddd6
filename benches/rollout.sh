#!/usr/bin/env bash
# Rollout throughput of SmolLM2-135M-Instruct on the CPU, in one command (issue 6):
#
#     benches/rollout.sh
#
# The sampler alone (baseline), one and two rollout workers on `arithmetic`, and the multi-turn
# `calculator` env with 0 ms and 100 ms tool calls; prints JSON lines and a table of ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --release -q -- model fetch smollm2-135m-instruct >/dev/null
cargo bench -q --bench rollout
