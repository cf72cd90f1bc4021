#!/usr/bin/env bash
# EMR bootstrap action (every node): Python 3.11 and gpu_inject in /opt/gpu_inject/venv, with
# the gpu extra (CuPy, numba-cuda) on nodes that have an NVIDIA GPU, and Spark's GPU discovery
# script. Spark itself is the cluster's (spark-submit): pyspark is not installed here.
#
#   bootstrap.sh PACKAGE SCRIPTS
#     PACKAGE  what pip installs: an s3:// wheel (copied first), e.g.
#              s3://my-bucket/gpu_inject/gpu_inject-0.1.0-py3-none-any.whl, or a pip spec
#     SCRIPTS  the s3:// folder holding this directory (getGpusResources.sh)
#
# GPU nodes also get the cgroup (v1) devices hierarchy that YARN GPU isolation needs on EMR 7
# (Amazon Linux 2023 runs cgroup v2); configurations-gpu.json points YARN at it.
set -euxo pipefail
PACKAGE="${1:?usage: bootstrap.sh PACKAGE SCRIPTS}"
SCRIPTS="${2:?usage: bootstrap.sh PACKAGE SCRIPTS}"
PREFIX=/opt/gpu_inject
sudo mkdir -p "$PREFIX"
sudo chown "$(id -u):$(id -g)" "$PREFIX"

# gpu_inject needs Python >= 3.10; EMR 7's python3 is 3.9.
if ! command -v python3.11 >/dev/null; then
    sudo dnf install -y python3.11 python3.11-devel gcc zlib-devel bzip2-devel \
        || sudo yum install -y python3.11 python3.11-devel gcc zlib-devel bzip2-devel
fi
python3.11 -m venv "$PREFIX/venv"
"$PREFIX/venv/bin/python" -m pip install --quiet --upgrade pip

case "$PACKAGE" in
    s3://*) aws s3 cp "$PACKAGE" "$PREFIX/"; PACKAGE="$PREFIX/$(basename "$PACKAGE")" ;;
esac
if command -v nvidia-smi >/dev/null && nvidia-smi -L; then
    "$PREFIX/venv/bin/pip" install --quiet "${PACKAGE}[gpu]"
    aws s3 cp "${SCRIPTS%/}/getGpusResources.sh" "$PREFIX/getGpusResources.sh"
    chmod 755 "$PREFIX/getGpusResources.sh"
    if [ -f /sys/fs/cgroup/cgroup.controllers ]; then       # cgroup v2 host (EMR 7)
        sudo mkdir -p /spark-rapids-cgroup/devices
        sudo mount -t cgroup -o devices cgroupv1-devices /spark-rapids-cgroup/devices
        sudo chmod a+rwx -R /spark-rapids-cgroup
    else                                                    # cgroup v1 host (EMR 6)
        sudo chmod a+rwx -R /sys/fs/cgroup/cpu,cpuacct /sys/fs/cgroup/devices
    fi
else
    "$PREFIX/venv/bin/pip" install --quiet "${PACKAGE}"
fi
"$PREFIX/venv/bin/gpu-inject" info     # versions, and which backend auto picks, in the log
