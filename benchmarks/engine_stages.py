"""Where the CPU engine's wall time goes on one batch, with every Numba thread: the render
alone, the render and the PSF (``engine.iter_arcs``: each chunk rendered, then convolved and
scaled by ``psf_cpu``), the whole ``inject_batch`` (plus injection and metrics), and the PSF
alone (``CpuBackend.psf_arcs`` on the same chunks' renders).

    NUMBA_NUM_THREADS=2 python benchmarks/engine_stages.py [--stamps 1024] [--repeats 5]

Warm code only, medians of the repeats, ms of wall time per 64x64 grz stamp.
"""
import argparse
import statistics
import time

import numpy as np

from gpu_inject import engine
from gpu_inject import tasks as T
from gpu_inject.bench import synthetic_inputs
from gpu_inject.draws import random_tasks

S = 64


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stamps", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args(argv)
    n = a.stamps
    be = engine.get_backend("cpu")
    draws = random_tasks(n, 0)
    cols = T.read_columns(draws)
    fwhm = np.stack([draws[f"psfsize_{b}"] for b in "grz"], axis=1)
    offset = np.random.default_rng(2).uniform(-0.5, 0.5, (n, 2))
    cutout, invvar, maskbits = synthetic_inputs(n, S, 0)
    params, flux_r = T.pack_params(cols, np.full(n, 0.262))
    flux = T.band_fluxes(cols, flux_r, "grz")
    fwhm_px = fwhm / 0.262
    chunks = list(engine.render_chunks(fwhm_px, S, be.chunk))

    def render():
        return [be.render(np.ascontiguousarray(params[idx]), offset[idx] + m + S // 2, size,
                          engine.DEFAULT_ACCURACY) for idx, m, size in chunks]

    renders = render()

    def psf():
        for (idx, m, _), r in zip(chunks, renders):
            be.psf_arcs(r, fwhm_px[idx], flux[idx], S, m, "gaussian", 3.5)

    def arcs():
        for _ in engine.iter_arcs(be, params, flux, fwhm_px, offset, S, "gaussian", 3.5):
            pass

    def whole():
        engine.inject_batch(be, cols, fwhm, cutout, invvar, maskbits, pixscale=0.262,
                            bands="grz", lens_offset=offset)

    print(f"{n} stamps 64x64 grz, {be.device}, chunks of {be.chunk}, medians of {a.repeats}")
    for name, fn in (("render alone", render), ("render + PSF (iter_arcs)", arcs),
                     ("inject_batch (+ injection, metrics)", whole),
                     ("PSF alone (psf_arcs)", psf)):
        fn()
        times = []
        for _ in range(a.repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        med = statistics.median(times)
        print(f"{name:38s} {med / n * 1e3:6.3f} ms/stamp ({n / med:,.0f} stamps/s)")


if __name__ == "__main__":
    main()
