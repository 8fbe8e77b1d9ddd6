#!/usr/bin/env bash
# Creates benches/.venv with the PyTorch side of the benchmarks (torch, transformers, trl) on first use.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
venv="${SLUICE_BENCH_VENV:-$here/.venv}"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import torch, transformers, trl" 2>/dev/null; then
    python3 -m venv "$venv"
    PIP_ROOT_USER_ACTION=ignore "$venv/bin/pip" install -q --disable-pip-version-check \
        "torch==2.15.0" "transformers==5.24.0" "trl==1.16.0" safetensors numpy
fi
echo "$venv/bin/python"
