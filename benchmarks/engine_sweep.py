"""Engine throughput against batch size, stamp size, backend and CPU threads (issue 6).

Each point is ``gpu_inject.bench.run_bench`` (render, PSF, injection, metrics on arrays in
memory; inputs on the device before the clock starts; warm-up excluded; the copy of the
results back synchronises): the median of ``--repeats`` with its min-max spread. Thread
scaling runs the CPU backend in a fresh process per thread count (NUMBA_NUM_THREADS).

    python benchmarks/engine_sweep.py --json results/<stem>-engine-sweep.json
"""
import argparse
import json
import os
import subprocess
import sys

from gpu_inject.bench import run_bench
from gpu_inject.engine import BackendUnavailable

CHILD = """
import json, sys
from gpu_inject.bench import run_bench
print(json.dumps(run_bench("cpu", stamps=int(sys.argv[1]), repeats=int(sys.argv[2]))))
"""


def _ints(text):
    return [int(v) for v in text.split(",") if v]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backends", default="cpu,gpu")
    ap.add_argument("--batch-sizes", default="1,16,128,1024",
                    help="on a GPU add 4096,16384 (a point times max(batch, --stamps) stamps)")
    ap.add_argument("--stamp-sizes", default="64,96")
    ap.add_argument("--stamps", type=int, default=1024,
                    help="stamps per point (the same draws for every batch size up to it; "
                         "a bigger batch times one batch)")
    ap.add_argument("--threads", default=None,
                    help="CPU thread counts for the scaling curve (default 1..cores, doubling)")
    ap.add_argument("--thread-stamps", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", dest="json_path")
    a = ap.parse_args(argv)
    points = []
    for backend in a.backends.split(","):
        for size in _ints(a.stamp_sizes):
            for batch in _ints(a.batch_sizes):
                try:
                    r = run_bench(backend, stamps=max(batch, a.stamps), stamp_size=size,
                                  repeats=a.repeats, batch_size=batch)
                except BackendUnavailable as exc:
                    print(f"{backend}: skipped ({exc})", file=sys.stderr)
                    break
                points.append(r)
                print(f"{backend} {size}x{size} batch {batch:>5}: {r['stamps_per_s']:8.0f} "
                      f"stamps/s (min {r['stamps_per_s_min']:.0f}, max "
                      f"{r['stamps_per_s_max']:.0f})", flush=True)
    cores = os.cpu_count() or 1
    threads = _ints(a.threads) if a.threads else sorted(
        {min(2 ** k, cores) for k in range(cores.bit_length() + 1)})
    scaling = []
    for n in threads:
        env = {**os.environ, "NUMBA_NUM_THREADS": str(n)}
        done = subprocess.run([sys.executable, "-c", CHILD, str(a.thread_stamps),
                               str(a.repeats)], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"thread scaling with {n} threads failed: {done.stderr.strip()[-500:]}")
        r = json.loads(done.stdout.strip().splitlines()[-1])
        scaling.append(r)
        print(f"cpu threads {n:>3}: {r['stamps_per_s']:8.0f} stamps/s", flush=True)
    if a.json_path:
        with open(a.json_path, "w") as f:
            json.dump({"benchmark": "engine_sweep", "points": points, "threads": scaling}, f,
                      indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
