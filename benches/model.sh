#!/usr/bin/env bash
# Model throughput, sluice against PyTorch/transformers on the same weights and shapes, in one command:
#
#     benches/model.sh            # tiny 4-layer Llama and SmolLM2-135M (fetched first)
#
# Prints each measurement and the sluice/torch ratios. Both sides use every core (2 threads here).
set -euo pipefail
cd "$(dirname "$0")/.."
py=$(benches/setup_venv.sh)
cargo run --release -q -- model fetch smollm2-135m-instruct >/dev/null
export SLUICE_BENCH_DIR="$PWD/target/bench"
threads=$(nproc)
out=$(mktemp)
cargo bench -q --bench model -- all | tee "$out"
OMP_NUM_THREADS=$threads "$py" benches/model_torch.py "$SLUICE_BENCH_DIR/tiny-llama" tiny-llama 64 64 32 32 5 | tee -a "$out"
OMP_NUM_THREADS=$threads "$py" benches/model_torch.py "$SLUICE_BENCH_DIR/smollm2" smollm2-135m 16 8 32 32 3 | tee -a "$out"
python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
by = {(r["impl"], r["model"], r["what"]): r for r in rows}
print("\n| model | measurement | shape | sluice tok/s | torch tok/s | ratio |")
print("|---|---|---|---|---|---|")
for (impl, model, what), r in sorted(by.items()):
    if impl != "sluice" or ("torch", model, what) not in by:
        continue
    t = by[("torch", model, what)]
    shape = f'{r["batch"]} x {r.get("new_tokens", r.get("seq"))}' + (" new" if what == "generate" else " tokens")
    print(f'| {model} | {what} | {shape} | {r["tokens_per_s"]:.0f} | {t["tokens_per_s"]:.0f} | {r["tokens_per_s"] / t["tokens_per_s"]:.2f}x |')
PY
