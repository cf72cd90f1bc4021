"""Peak memory against batch size and number of stamps (a fresh process per configuration,
so that each ru_maxrss is its own).

    python benchmarks/memory.py --json memory.json
"""
import argparse
import json
import subprocess
import sys
import time

CONFIGS = [(512, 512), (2048, 512), (8192, 512), (2048, 128), (2048, 2048)]
CHILD = ("import json, sys; from gpu_inject.bench import run_bench; "
         "print(json.dumps(run_bench('cpu', stamps=int(sys.argv[1]), batch_size=int(sys.argv[2]),"
         " repeats=1)))")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    rows = []
    t0 = time.perf_counter()
    # fill Numba's on-disk cache first, so that no measured process pays for compilation
    subprocess.run([sys.executable, "-c", CHILD, "8", "8"], capture_output=True, check=False)
    print(f"{'stamps':>7} {'batch':>6} {'peak RSS MiB':>13} {'stamps/s':>9}")
    for stamps, batch in CONFIGS:
        proc = subprocess.run([sys.executable, "-c", CHILD, str(stamps), str(batch)],
                              capture_output=True, text=True)
        if proc.returncode:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            sys.exit(f"stamps={stamps} batch={batch}: child failed: {tail}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(r)
        print(f"{stamps:>7} {batch:>6} {r['peak_rss_mib']:>13.0f} {r['stamps_per_s']:>9.0f}")
    print(f"total {time.perf_counter() - t0:.0f} s")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(rows, fh, indent=2)
        print(f"results written to {a.json}")


if __name__ == "__main__":
    main()
