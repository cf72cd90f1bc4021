"""Cutting 64x64 grz stamps (image, invvar, maskbits, psfsize) from compressed 3600x3600
DR10-format bricks: tile-aware reads against whole-image decompression, by stamps per brick.

    python benchmarks/cutout_speed.py [--json F] [--repeats 5] [--root DIR]

One mock brick (gpu_inject.mock, real fpack files with DR10 compression) is written once
under --root (reused when present). Each timing opens the brick's files afresh (as a new
brick in a run does) and cuts n stamps at random positions in the primary area, on one
thread: stamps/s is per core. Median of repeats after an untimed warm-up.
"""
import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from gpu_inject.io import CoaddSource, cut_brick
from gpu_inject.mock import brick_center, brick_dir, write_mock_brick

BRICK = "0489m442"
PIX = 0.262 / 3600


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(Path(tempfile.gettempdir()) / "gpu_inject_bench"))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--stamp-size", type=int, default=64)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    if not (brick_dir(a.root, BRICK) / f"legacysurvey-{BRICK}-maskbits.fits.fz").exists():
        t0 = time.perf_counter()
        write_mock_brick(a.root, BRICK, size=3600, bands="grz", seed=0)
        print(f"wrote the mock brick in {time.perf_counter() - t0:.1f} s")
    ra0, dec0 = brick_center(BRICK)
    rng = np.random.default_rng(0)
    rows = []
    print(f"{'stamps/brick':>12} {'strategy':>8} {'s/brick':>8} {'stamps/s':>9}")
    for n in (1, 10, 60, 300):
        # uniform over the 0.25 deg primary area (3436 px), as BRICK_PRIMARY targets are
        dx, dy = rng.uniform(-1700, 1700, (2, n)) * PIX
        ra = ra0 + dx / np.cos(np.radians(dec0))
        dec = dec0 + dy
        for strategy in ("tiles", "whole"):
            times = []
            for k in range(a.repeats + 1):   # the first is the warm-up (page cache, imports)
                src = CoaddSource(a.root)
                t0 = time.perf_counter()
                st = cut_brick(src, BRICK, ra, dec, a.stamp_size, list("grz"),
                               strategy=strategy)
                if k:
                    times.append(time.perf_counter() - t0)
                assert all(e is None for e in st.error), st.error[:3]
            sec = statistics.median(times)
            rows.append({"stamps_per_brick": n, "strategy": strategy, "seconds": sec,
                         "seconds_all": times, "stamps_per_s": n / sec})
            print(f"{n:>12} {strategy:>8} {sec:>8.3f} {n / sec:>9.1f}")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"machine": platform.machine(), "stamp_size": a.stamp_size,
                       "bands": "grz", "results": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
