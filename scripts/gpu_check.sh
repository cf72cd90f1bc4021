#!/usr/bin/env bash
# On a machine with a CUDA GPU: install the gpu and test extras, run the whole test suite
# (the gpu-marked tests included), check CPU/GPU agreement on 10,000 random stamps, time the
# engine on both backends (one batch at a time and batches overlapping), and write everything
# to benchmarks/results/<date>-<device>*.
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
# Data movement: one batch at a time (copy-in + kernels + copy-out, summed) against the same
# batches host to host through engine.inject_batches, consecutive batches overlapping.
python - "$stem-bench-gpu-65536.json" <<'PY' | tee "$stem-overlap.txt"; status=$((status | ${PIPESTATUS[0]}))
import json, sys
for r in json.load(open(sys.argv[1])):
    seq = r["copy_in_seconds"] + r["kernel_seconds"] + r["copy_out_seconds"]
    print(f"{r['device']}: {r['stamps']} stamps in batches of {r['batch_size']}: one at a time "
          f"{seq:.3f} s (copy-in {r['copy_in_seconds']:.3f}, kernels {r['kernel_seconds']:.3f}, "
          f"copy-out {r['copy_out_seconds']:.3f}); overlapped {r['overlapped_seconds']:.3f} s "
          f"= {r['stamps_per_s_overlapped']:,.0f} stamps/s")
PY
echo "results in $stem-*  (status $status)"
exit $status
