#!/usr/bin/env bash
# Asynchronous (max_staleness 4) against synchronous (max_staleness 0) training, in one command:
#
#     benches/async.sh [STEPS]
#
# SmolLM2-135M-Instruct on `calculator` (every tool call sleeps 100 ms) and on `arithmetic`,
# 2 groups x 8 completions per step, STEPS learner steps each (the same trained samples): the
# wall clock of the last step, its ratio sync / async, and the mean reward over the steps. The
# bound is the most any overlap of generation and training could give over the synchronous run:
# N steps of g (the wait for a batch) + t (the learner's step) against min(g, t) + N max(g, t),
# with the synchronous run's means; it is below 2N / (N + 1) whatever g and t are.
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-6}
cargo run --release -q -- model fetch smollm2-135m-instruct >/dev/null
out=$(mktemp)
trap 'rm -f "$out"' EXIT
cargo bench -q --bench runs -- async "$steps" | tee "$out"
python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
by = {(r["env"], r["max_staleness"]): r for r in rows}
print("\n| env | samples | sync s | async s | sync / async | overlap bound | sync reward | async reward | async staleness |")
print("|---|---|---|---|---|---|---|---|---|")
for env in dict.fromkeys(r["env"] for r in rows):
    s, a = by[(env, 0)], by[(env, 4)]
    n, g, t = s["steps"], s["wait_s_mean"], s["step_s_mean"]
    bound = n * (g + t) / (min(g, t) + n * max(g, t))
    print(f'| {env} | {a["samples"]:.0f} | {s["seconds"]:.1f} | {a["seconds"]:.1f} | {s["seconds"] / a["seconds"]:.2f}x | '
          f'{bound:.2f}x | {s["reward_mean"]:.3f} | {a["reward_mean"]:.3f} | {a["staleness_mean"]:.2f} |')
PY
