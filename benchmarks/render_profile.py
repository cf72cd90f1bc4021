"""Where one thread's time goes per 64x64 stamp: one lensed-Sersic evaluation (alone, and in
rows of 8 and 32 as the CPU loops take them, sharing each vector math call), the sampling
of the render grid without refinement (every tolerance infinite: the corner grid, rule 0's
stencil, rule 1's centre where the stencil may not be used, dark blocks skipped), the
adaptive refinement (the default tolerances minus that), and the FFT convolution (float32,
as the engine runs it).

    python benchmarks/render_profile.py [--stamps 256]

Warm code only (a first call compiles), one Numba thread, medians of 3.
"""
import argparse

import numba
import numpy as np

from gpu_inject import engine
from gpu_inject import tasks as T
from gpu_inject.bench import median_seconds
from gpu_inject.draws import random_tasks
from gpu_inject.kernels import cpu, psf, psf_cpu, vecmath

S = 64


@numba.njit
def _evaluate(p, n):
    acc = 0.0
    for i in range(n):
        f, u, v = cpu.lensed_sample((i % 1000) * 0.02 - 10.0, (i // 1000) * 0.02 - 10.0, p)
        acc += f + u + v
    return acc


@numba.njit
def _evaluate_rows(p, n, width):
    """The same points, ``width`` at a time through sample_points (the CPU loops' way)."""
    xs, ys, fo, uo, vo, t1, t2 = [np.empty(vecmath.padded(width)) for _ in range(7)]
    acc = 0.0
    for start in range(0, n, width):
        for k in range(width):
            i = start + k
            xs[k] = (i % 1000) * 0.02 - 10.0
            ys[k] = (i // 1000) * 0.02 - 10.0
        cpu.sample_points(xs, ys, width, p, fo, uo, vo, t1, t2)
        for k in range(width):
            acc += fo[k] + uo[k] + vo[k]
    return acc




def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stamps", type=int, default=256)
    a = ap.parse_args(argv)
    numba.set_num_threads(1)
    draws = random_tasks(a.stamps, seed=0)
    params, _ = T.pack_params(T.read_columns(draws), 0.262)
    fwhm = np.stack([draws[f"psfsize_{b}"] for b in "grz"], axis=1) / 0.262
    size, margin = psf.render_size(S, float(np.median(fwhm.max(axis=1))))
    origin = np.full((a.stamps, 2), margin + S // 2, dtype=float)
    acc = engine.DEFAULT_ACCURACY
    out = np.empty((a.stamps, size, size))

    def render(eps):
        cpu.render_batch(params, origin, size, *eps, out)

    sie = int(np.flatnonzero(draws["lens_model"] == "SIE")[0])
    n_eval = 1_000_000
    per_eval = median_seconds(lambda: _evaluate(params[sie], n_eval)) / n_eval
    per_row = {w: median_seconds(lambda: _evaluate_rows(params[sie], n_eval, w)) / n_eval
               for w in (8, 32)}
    full = median_seconds(lambda: render((acc.eps_gate, acc.eps_abs, acc.eps_rel, acc.eps_cusp,
                                     acc.max_level))) / a.stamps
    gate = median_seconds(lambda: render((np.inf, np.inf, np.inf, np.inf, 0))) / a.stamps
    fwhm3 = np.full((a.stamps, 3), np.median(fwhm))
    fft = median_seconds(lambda: psf_cpu.convolve_scale(out, fwhm3, np.ones((a.stamps, 3)),
                                                        S, margin)) / a.stamps
    print(f"one thread, {S}x{S} stamps, render grid {size}x{size}, {a.stamps} draws")
    print(f"one lensed-Sersic evaluation (SIE): {per_eval * 1e9:6.1f} ns alone, "
          f"{per_row[8] * 1e9:.1f} / {per_row[32] * 1e9:.1f} ns in rows of 8 / 32 "
          f"({vecmath.MODE})")
    print(f"sampling without refinement:         {gate * 1e3:6.3f} ms/stamp")
    print(f"adaptive refinement:                 {(full - gate) * 1e3:6.3f} ms/stamp")
    print(f"FFT convolution, 3 bands (psf_cpu): {fft * 1e3:6.3f} ms/stamp")


if __name__ == "__main__":
    main()
