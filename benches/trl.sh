#!/usr/bin/env bash
# GRPO steps/s, sluice against TRL's GRPOTrainer, in one command:
#
#     benches/trl.sh [STEPS] [ROUNDS]
#
# sluice side: `cargo bench --bench runs -- grpo STEPS` writes the tiny Llama (4 layers, hidden
# 256, char-level tokenizer) to target/bench/grpo-llama and times `sluice run` on bare "a+b="
# questions, 8 prompts x 8 completions x 32 tokens, beta 0 and 0.04, max_staleness 0 and 2.
# TRL side: benches/grpo_trl.py, GRPOTrainer on the same directory, same task and shapes, on the
# CPU. Creates benches/.venv (torch, transformers, trl) on first use. Both sides use every core.
# The two sides alternate for ROUNDS rounds (default 3) and each figure is the median of its
# rounds: on a shared machine one run of either side swings by about a quarter.
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-12}
rounds=${2:-3}
py=$(benches/setup_venv.sh)
out=$(mktemp)
for round in $(seq "$rounds"); do
    echo "round $round of $rounds"
    cargo bench -q --bench runs -- grpo "$steps" | grep '^{"beta"' | tee -a "$out"
    for beta in 0.0 0.04; do
        OMP_NUM_THREADS=$(nproc) "$py" benches/grpo_trl.py target/bench/grpo-llama "$steps" "$beta" 2>/dev/null \
            | grep '^{"impl"' | tee -a "$out"
    done
done
python3 - "$out" <<'PY'
import json, statistics, sys
from collections import defaultdict
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
runs = defaultdict(list)
for r in rows:
    runs[(r["impl"], r["beta"], r.get("max_staleness"))].append(r)
med = lambda rs, k: statistics.median(r[k] for r in rs)
span = lambda rs: "-".join(f"{f(r['steps_per_s'] for r in rs):.3f}" for f in (min, max))
print("\n| beta | sluice max_staleness | sluice steps/s (range) | TRL steps/s (range) | ratio of medians | sluice reward | TRL reward |")
print("|---|---|---|---|---|---|---|")
for (impl, beta, staleness), rs in runs.items():
    if impl != "sluice":
        continue
    t = runs[("trl", beta, None)]
    s, ts = med(rs, "steps_per_s"), med(t, "steps_per_s")
    print(f'| {beta} | {staleness} | {s:.3f} ({span(rs)}) | {ts:.3f} ({span(t)}) | {s / ts:.2f}x | '
          f'{med(rs, "reward_mean"):.3f} | {med(t, "reward_mean"):.3f} |')
PY
