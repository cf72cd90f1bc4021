"""How many lensed-Sersic evaluations the adaptive integration takes per stamp: the pixel
centres and the quadtree walks (``physics.integrate.pixel_value``) after the shared corner
grid, counted in the plain-Python physics with a counting ``lensed_sample``. Unlike a timing
on a shared machine, the count is exact and the same on every run, so it is the A/B to use
for a change of the integration rules (run it at the two commits).

    python benchmarks/sample_count.py [--draws 24] [--seed 3] [--size 90]

Every pixel goes through rule 0b (``block_gate``) first, as in the CUDA loop; dark blocks
are not skipped (the CPU loop's shortcut changes no sample of a lit pixel). It also prints
how many pixels rule 0b accepts, and how the evaluations split between pixels: most of them
go to a few pixels near the lens centre and the source centre's images.
"""
import argparse

import numpy as np

from gpu_inject import tasks as T
from gpu_inject.draws import random_tasks
from gpu_inject.engine import DEFAULT_ACCURACY as ACC
from gpu_inject.physics import integrate
from gpu_inject.physics.integrate import NODE_MEM


def count(params, size, offset):
    """Per stamp over ``params`` rendered on size x size grids with the lens at size / 2 +
    offset: (mean evaluations in pixel_value, mean pixels that rule 0b accepts, the
    evaluations of every pixel that rule 0b refuses, the lens-centre pixel's ones)."""
    plain = integrate.lensed_sample
    calls = [0]

    def counted(x, y, p):
        calls[0] += 1
        return plain(x, y, p)

    o = size / 2 + offset
    lens = int(np.floor(o + 0.5))   # the pixel holding the lens centre, in x and y
    eps = (ACC.eps_gate, ACC.eps_abs, ACC.eps_rel, ACC.eps_cusp, ACC.max_level)
    per_pixel, at_lens, block_pixels = [], [], 0
    for p in params:
        grid = np.array([[plain(i - 0.5 - o, j - 0.5 - o, p) for i in range(size + 1)]
                         for j in range(size + 1)])
        f, u, v = (np.ascontiguousarray(grid[:, :, c]) for c in range(3))
        mem = np.empty(NODE_MEM)
        integrate.lensed_sample = counted
        try:
            for j in range(size):
                for i in range(size):
                    x0, y0 = i - 0.5 - o, j - 0.5 - o
                    if integrate.block_gate(f, u, v, j, i, x0, y0, p, ACC.eps_gate):
                        block_pixels += 1
                        continue
                    before = calls[0]
                    integrate.pixel_value(f, u, v, j, i, x0, y0, p, *eps, mem)
                    per_pixel.append(calls[0] - before)
                    if i == lens and j == lens:
                        at_lens.append(calls[0] - before)
        finally:
            integrate.lensed_sample = plain
    n = len(params)
    return calls[0] / n, block_pixels / n, np.array(per_pixel), np.array(at_lens)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=24)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--size", type=int, default=90, help="render grid (90: 64x64 + PSF margin)")
    a = ap.parse_args(argv)
    draws = random_tasks(a.draws, seed=a.seed)
    params, _ = T.pack_params(T.read_columns(draws), 0.262)
    n, block_pixels, per_pixel, at_lens = count(params, a.size, 0.123)
    print(f"{a.draws} draws (seed {a.seed}), {a.size}x{a.size} grid: {n:,.0f} evaluations per "
          f"stamp in pixel centres and refinement, after {(a.size + 1) ** 2:,} corners; "
          f"{block_pixels:,.0f} pixels per stamp accepted by rule 0b")
    total = per_pixel.sum()
    for lo, hi, what in ((1, 1, "1 (rule 1)"), (9, 9, "9 (a root accepted)"),
                         (41, None, "over 40"), (301, None, "over 300")):
        sel = (per_pixel >= lo) & (per_pixel <= (hi or per_pixel.max(initial=0)))
        print(f"  pixels taking {what}: {sel.sum() / a.draws:,.1f} per stamp, "
              f"{per_pixel[sel].sum() / max(total, 1):.0%} of the evaluations")
    print(f"  the pixel holding the lens centre: {at_lens.mean():,.0f} evaluations on average, "
          f"{at_lens.max(initial=0):,} at most")


if __name__ == "__main__":
    main()
