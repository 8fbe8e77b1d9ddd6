#!/usr/bin/env bash
# Converts SmolLM2-135M-Instruct to an HF directory with sluice, loads it with transformers, and
# checks both give the same prompt ids (chat template + tokenizer) and the same greedy completion.
set -euo pipefail
cd "$(dirname "$0")/.."
py=$(benches/setup_venv.sh)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
prompt="What is the capital of France?"
cargo run --release -q -- convert smollm2-135m-instruct --out "$out/hf" >/dev/null
sluice=$(cargo run --release -q -- generate --model "$out/hf" --chat --prompt "$prompt" --temperature 0 --max-new-tokens 12 --json)
hf=$("$py" benches/hf_compat.py "$out/hf" "$prompt" 12 2>/dev/null | tail -1)
python3 - "$sluice" "$hf" <<'PY'
import json, sys
s, h = json.loads(sys.argv[1]), json.loads(sys.argv[2])
same_prompt = s["prompt_ids"] == h["prompt_ids"]
# transformers keeps generating after EOS only if told to; compare up to sluice's stop.
same_completion = h["completion_ids"][: len(s["completion_ids"])] == s["completion_ids"]
print(f"prompt ids equal: {same_prompt}; greedy completion equal: {same_completion} ({s['text']!r})")
sys.exit(0 if same_prompt and same_completion else 1)
PY
