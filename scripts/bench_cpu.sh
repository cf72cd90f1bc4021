#!/usr/bin/env bash
# Reproduce the CPU figures of the README on this machine; results go to benchmarks/results/.
#   scripts/bench_cpu.sh            (about 2 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
out="benchmarks/results/$(date +%F)-$(hostname -s)"
mkdir -p benchmarks/results
python benchmarks/accuracy.py --draws 200 --stamp-size 64 --seed 0 --json "$out-accuracy.json"
python benchmarks/compare_lenstronomy.py --stamps 1024 --lenstronomy-stamps 200 --repeats 5 \
    --json "$out-cpu-vs-lenstronomy.json"
python benchmarks/memory.py --json "$out-memory.json"
gpu-inject bench --backend cpu --stamps 2048 --json "$out-bench.json"
python benchmarks/render_profile.py
python benchmarks/cutout_speed.py --json "$out-cutout.json"
