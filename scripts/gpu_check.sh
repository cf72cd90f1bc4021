#!/usr/bin/env bash
# On a machine with a CUDA GPU: install the gpu and test extras, run the whole test suite
# (the gpu-marked tests included), check CPU/GPU agreement on 10,000 random stamps, time the
# engine on both backends, and write everything to benchmarks/results/<date>-<device>*.
# Usage: scripts/gpu_check.sh [RESULTS_DIR]     (exit status: non-zero if any step fails)
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-benchmarks/results}"
mkdir -p "$out"
# Install only what is missing (device machines may have no network: bring a wheelhouse).
python -c "import gpu_inject, cupy, numba.cuda, pytest, lenstronomy" 2>/dev/null \
    || python -m pip install -q -e ".[gpu,test]" || exit 1
device="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr ' ' '-' | tr -cd 'A-Za-z0-9._-')"
stem="$out/$(date -u +%Y-%m-%d)-${device:-gpu}"
status=0
nvidia-smi > "$stem-nvidia-smi.txt" 2>&1
gpu-inject info | tee "$stem-info.txt"
python -m pytest -q -rs 2>&1 | tee "$stem-pytest.txt"; status=$((status | ${PIPESTATUS[0]}))
python benchmarks/gpu_agreement.py --stamps 10000 --json "$stem-agreement.json"; status=$((status | $?))
gpu-inject bench --backend all --stamps 16384 --batch-size 16384 --repeats 5 \
    --json "$stem-bench.json"; status=$((status | $?))
gpu-inject bench --backend gpu --stamps 65536 --batch-size 16384 --repeats 3 \
    --json "$stem-bench-gpu-65536.json"; status=$((status | $?))
echo "results in $stem-*  (status $status)"
exit $status
