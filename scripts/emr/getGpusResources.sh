#!/usr/bin/env bash
# Spark GPU resource discovery (spark.executor.resource.gpu.discoveryScript): prints the GPUs
# this executor may use as {"name": "gpu", "addresses": ["0", "1", ...]}.
# Under YARN GPU isolation the container sees only its own GPUs, so every index nvidia-smi
# lists is ours. Installed by bootstrap.sh as /opt/gpu_inject/getGpusResources.sh.
set -euo pipefail
addresses=$(nvidia-smi --query-gpu=index --format=csv,noheader | tr -d ' ' \
            | awk 'NF {printf "%s\"%s\"", (n++ ? "," : ""), $1}')
echo "{\"name\": \"gpu\", \"addresses\": [${addresses}]}"
