#!/usr/bin/env bash
# GRPO steps/s, sluice against TRL's GRPOTrainer, in one command:
#
#     benches/trl.sh [STEPS]
#
# sluice side: `cargo bench --bench runs -- grpo STEPS` writes the tiny Llama (4 layers, hidden
# 256, char-level tokenizer) to target/bench/grpo-llama and times `sluice run` on bare "a+b="
# questions, 8 prompts x 8 completions x 32 tokens, beta 0 and 0.04, max_staleness 0 and 2.
# TRL side: benches/grpo_trl.py, GRPOTrainer on the same directory, same task and shapes, on the
# CPU. Creates benches/.venv (torch, transformers, trl) on first use. Both sides use every core.
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-12}
py=$(benches/setup_venv.sh)
out=$(mktemp)
cargo bench -q --bench runs -- grpo "$steps" | tee "$out"
for beta in 0.0 0.04; do
    OMP_NUM_THREADS=$(nproc) "$py" benches/grpo_trl.py target/bench/grpo-llama "$steps" "$beta" 2>/dev/null \
        | grep '^{"impl"' | tee -a "$out"
done
python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
trl = {r["beta"]: r for r in rows if r["impl"] == "trl"}
print("\n| beta | sluice max_staleness | sluice steps/s | TRL steps/s | ratio | sluice reward | TRL reward |")
print("|---|---|---|---|---|---|---|")
for r in (r for r in rows if r["impl"] == "sluice"):
    t = trl[r["beta"]]
    print(f'| {r["beta"]} | {r["max_staleness"]} | {r["steps_per_s"]:.3f} | {t["steps_per_s"]:.3f} | '
          f'{r["steps_per_s"] / t["steps_per_s"]:.2f}x | {r["reward_mean"]:.3f} | {t["reward_mean"]:.3f} |')
PY
