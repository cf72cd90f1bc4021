#!/usr/bin/env bash
# gpu-inject run on an EMR cluster with spark-submit, from the primary node (client mode),
# after bootstrap.sh; GPU clusters also need configurations-gpu.json at cluster creation.
#
#   [NODES=30 CORES=16 TASK_CPUS=2] spark-submit.sh gpu|cpu RUN_OPTIONS...
#   e.g. spark-submit.sh gpu --manifest s3://b/manifest.parquet \
#            --coadd-root s3://b/dr10/south/coadd --out s3://b/injections \
#            --experiment-id train_stamp64_grz --stamp-size 64 --unit-rows 1024
#
# One executor per core instance. gpu: the instance's GPU is shared by CORES / TASK_CPUS
# tasks (each reads its unit's bricks in its own process, then runs the engine on the GPU);
# cpu: one task per vCPU (TASK_CPUS=1), Numba threads capped at spark.task.cpus.
set -euo pipefail
MODE="${1:?usage: spark-submit.sh gpu|cpu RUN_OPTIONS...}"
shift
HERE="$(cd "$(dirname "$0")" && pwd)"
PY="${PY:-/opt/gpu_inject/venv/bin/python}"
NODES="${NODES:-30}"        # core instances
CORES="${CORES:-16}"        # vCPUs per core instance (g5.4xlarge: 16; c6i.4xlarge: 16)

common=(--master yarn --deploy-mode client
    --conf "spark.pyspark.python=$PY" --conf "spark.pyspark.driver.python=$PY"
    --conf spark.dynamicAllocation.enabled=false
    --conf "spark.executor.instances=$NODES" --conf "spark.executor.cores=$CORES"
    --conf "spark.executor.memory=${EXECUTOR_MEMORY:-8g}"
    # the Python workers (one per running task) live in the overhead, not the JVM heap
    --conf "spark.executor.memoryOverhead=${EXECUTOR_OVERHEAD:-24g}"
    # the driver holds the manifest, sliced into one small table per unit
    --conf "spark.driver.memory=${DRIVER_MEMORY:-16g}"
    --conf spark.task.maxFailures=4
    # retries and speculative copies rewrite the same parts atomically: safe to enable
    --conf spark.speculation=true --conf spark.speculation.multiplier=3
    --conf spark.speculation.quantile=0.9)

case "$MODE" in
    gpu)
        TASK_CPUS="${TASK_CPUS:-2}"
        per_gpu=$((CORES / TASK_CPUS))
        extra=(--conf spark.executor.resource.gpu.amount=1
            --conf spark.executor.resource.gpu.discoveryScript=/opt/gpu_inject/getGpusResources.sh
            --conf "spark.task.resource.gpu.amount=$(awk "BEGIN {print 1 / $per_gpu}")"
            --conf "spark.task.cpus=$TASK_CPUS")
        backend=gpu ;;       # fail loudly on a node whose GPU does not work
    cpu)
        extra=(--conf "spark.task.cpus=${TASK_CPUS:-1}")
        backend=cpu ;;
    *)
        echo "usage: spark-submit.sh gpu|cpu RUN_OPTIONS..." >&2
        exit 2 ;;
esac

exec spark-submit "${common[@]}" "${extra[@]}" "$HERE/gpu_inject_spark.py" \
    run --executor spark --backend "$backend" "$@"
