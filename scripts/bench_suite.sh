#!/usr/bin/env bash
# The benchmark suite (issue 6): engine throughput against batch size, stamp size, backend
# and threads; our engine against lenstronomy (and caustics) on the same draws with each
# one's accuracy; peak memory; cutting from compressed bricks; the pipeline end to end; a
# projection of the user's train tier; then benchmarks/report.py turns the results into
# report.md and plots.
#   scripts/bench_suite.sh [MACHINE_LABEL]      (about 8 minutes on 2 cores)
# Results: benchmarks/results/<date>-<label>-<kind>.json; report: benchmarks/results/report/.
set -euo pipefail
cd "$(dirname "$0")/.."
label="${1:-$(hostname -s)}"
out="benchmarks/results/$(date -u +%F)-$label"
mkdir -p benchmarks/results
# 5 repeats: with 3, a rerun's median fell outside the first run's min-max for 11 of 21
# timed figures (benchmarks/rerun.py), most by under 2 %
python benchmarks/engine_sweep.py --repeats 5 --json "$out-engine-sweep.json"   # on a GPU: --batch-sizes 1,16,128,1024,4096,16384
python benchmarks/compare_lenstronomy.py --stamps 1024 --lenstronomy-stamps 200 --repeats 5 \
    --json "$out-vs-lenstronomy.json"
# caustics rows when it is installed (pip install -e '.[caustics]'), else one line says skipped
python benchmarks/accuracy.py --draws 200 --stamp-size 64 --seed 0 --lenstronomy-ss 4,16,32 \
    --caustics-ss 4,16,32 --json "$out-accuracy.json"
python benchmarks/memory.py --json "$out-memory.json"
python benchmarks/cutout_speed.py --json "$out-cutout.json"
python benchmarks/pipeline_speed.py --bricks 72 --per-brick 60 --repeats 3 \
    --json "$out-pipeline.json"
python benchmarks/pipeline_speed.py --bricks 72 --per-brick 60 --repeats 3 --no-controls \
    --json "$out-pipeline-injections.json"
gpu-inject bench --backend all --project-manifest 10627158,180152 --executors 30 \
    --json "$out-projection.json"
python benchmarks/render_profile.py
python benchmarks/engine_stages.py
python benchmarks/report.py benchmarks/results
