"""Our CPU engine against lenstronomy, in the same run, on the same parameter draws.

    python benchmarks/compare_lenstronomy.py --stamps 1024 --lenstronomy-stamps 200 --json F

Ours: ``gpu_inject.bench.run_bench`` (render with adaptive pixel integration, PSF, inject,
metrics; 64x64 grz; median of repeats after a warm-up). lenstronomy: as its users run it
(``lenstronomy_speed.py``: supersampling 4, one ``image()`` per band with that band's
Gaussian PSF, one process per core). Prints both throughputs and their ratio. For accuracy
beside speed see ``accuracy.py``.
"""
import argparse
import json
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lenstronomy_speed import lenstronomy_stamps_per_s  # noqa: E402

from gpu_inject.bench import run_bench  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stamps", type=int, default=1024, help="stamps per timed batch (ours)")
    ap.add_argument("--lenstronomy-stamps", type=int, default=200)
    ap.add_argument("--stamp-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    ours = run_bench("cpu", stamps=a.stamps, stamp_size=a.stamp_size, repeats=a.repeats,
                     seed=a.seed)
    ref = lenstronomy_stamps_per_s(a.lenstronomy_stamps, stamp_size=a.stamp_size, seed=a.seed)
    ratio = ours["stamps_per_s"] / ref["stamps_per_s"]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores")
    print(f"gpu_inject cpu : {ours['stamps_per_s']:8.1f} stamps/s ({ours['device']}; "
          f"runs {', '.join(f'{s:.3f}' for s in ours['seconds_all'])} s for {a.stamps})")
    print(f"lenstronomy ss4: {ref['stamps_per_s']:8.1f} stamps/s ({ref['processes']} processes)")
    print(f"ratio          : {ratio:8.1f}x")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"gpu_inject": ours, "lenstronomy": ref, "ratio": ratio}, fh, indent=2)


if __name__ == "__main__":
    main()
