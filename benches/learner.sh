#!/usr/bin/env bash
# Learner step time, sluice against PyTorch (forward + backward + AdamW) on the same weights and
# shapes, in one command:
#
#     benches/learner.sh
#
# 64 completions x 32 tokens (prompts of 32), the 4-layer hidden-256 Llama, beta 0 and 0.04.
# Prints each measurement and the torch/sluice time ratios. Both sides use every core.
set -euo pipefail
cd "$(dirname "$0")/.."
py=$(benches/setup_venv.sh)
dir="$PWD/target/bench/learner-llama"
threads=$(nproc)
out=$(mktemp)
cargo bench -q -p sluice-learner --bench step -- "$dir" | tee "$out"
OMP_NUM_THREADS=$threads "$py" benches/learner_torch.py "$dir" 64 32 32 5 | tee -a "$out"
python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
by = {(r["impl"], r["beta"]): r for r in rows}
print("\n| step | sluice s/step | torch s/step | torch time / sluice time |")
print("|---|---|---|---|")
for beta in (0.0, 0.04):
    s, t = by[("sluice", beta)], by[("torch", beta)]
    print(f'| GRPO, beta {beta} | {s["seconds"]:.3f} | {t["seconds"]:.3f} | {t["seconds"] / s["seconds"]:.2f}x |')
PY
