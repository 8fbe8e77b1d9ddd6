#!/usr/bin/env bash
# The allocator settings of `sluice_model::keep_freed_memory` against glibc's defaults, in one
# command (alternating, ROUNDS rounds, default 2):
#
#     benches/allocator.sh [ROUNDS]
#
# - the learner step benchmark (`crates/learner/benches/step.rs`: tiny Llama, 64 x 32 tokens);
# - a SmolLM2-135M-Instruct run of three synchronous learner steps on `arithmetic` (2 groups of 8),
#   wall clock, user and system CPU time and peak resident memory from /usr/bin/time.
# The baseline sets `GLIBC_TUNABLES` (empty), which tells sluice to leave glibc's defaults alone.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-2}
cargo build -q --release --bin sluice
step=$(cargo bench -p sluice-learner --bench step --no-run 2>&1 | grep -o 'target/release/deps/step-[0-9a-f]*' | head -1)
cargo run --release -q -- model fetch smollm2-135m-instruct >/dev/null
dir=$(mktemp -d)
# Each SmolLM2 run ends with a 1.6 GB checkpoint; none of it is wanted after the table.
trap 'rm -rf "$dir"' EXIT
out="$dir/out"
cat >"$dir/run.toml" <<TOML
[run]
name = "allocator-bench"
dir = "$dir/run"
[model]
path = "smollm2-135m-instruct"
[[envs]]
name = "arithmetic"
[rl]
group_size = 8
groups_per_step = 2
max_staleness = 0
temperature = 1.0
[learner]
total_steps = 3
checkpoint_every = 0
drop_zero_variance = false
log_entropy = true
[rollout]
tasks_per_batch = 2
max_new_tokens = 48
TOML
for round in $(seq "$rounds"); do
    for mode in glibc sluice; do
        unset GLIBC_TUNABLES
        [ "$mode" = glibc ] && export GLIBC_TUNABLES=
        "$step" "$dir/learner-llama" | sed "s/^{/{\"allocator\":\"$mode\",/" | tee -a "$out"
        rm -rf "$dir/run"
        /usr/bin/time -f "{\"allocator\":\"$mode\",\"what\":\"smollm2-run\",\"wall_s\":%e,\"user_s\":%U,\"sys_s\":%S,\"max_rss_kb\":%M}" \
            -o "$dir/time" target/release/sluice run "$dir/run.toml" >/dev/null 2>&1
        tee -a "$out" <"$dir/time"
    done
done
python3 - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
med = lambda mode, key, **kw: statistics.median(
    r[key] for r in rows if r["allocator"] == mode and all(r.get(k) == v for k, v in kw.items()))
print("\n| measurement | glibc defaults | sluice's settings | glibc / sluice |")
print("|---|---|---|---|")
for beta in (0.0, 0.04):
    g, s = med("glibc", "seconds", beta=beta), med("sluice", "seconds", beta=beta)
    print(f"| learner step, beta {beta} (s) | {g:.3f} | {s:.3f} | {g / s:.2f}x |")
for key, name in (("wall_s", "wall clock (s)"), ("sys_s", "system CPU (s)"), ("user_s", "user CPU (s)")):
    g, s = med("glibc", key, what="smollm2-run"), med("sluice", key, what="smollm2-run")
    print(f"| SmolLM2 run of 3 steps, {name} | {g:.1f} | {s:.1f} | {g / s:.2f}x |")
g, s = med("glibc", "max_rss_kb", what="smollm2-run"), med("sluice", "max_rss_kb", what="smollm2-run")
print(f"| SmolLM2 run of 3 steps, peak resident (GB) | {g / 1e6:.2f} | {s / 1e6:.2f} | {g / s:.2f}x |")
PY
