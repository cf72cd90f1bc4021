"""Engine throughput on arrays in memory (SPEC section 7, ``gpu-inject bench``).

Times what a batch costs once data is in memory: render (adaptive pixel integration), PSF
convolution, injection into cutouts and the metric reductions, after a warm-up call (Numba
compiles on first use), as the median of repeats.
"""
import platform
import statistics
import time

import numba
import numpy as np

from . import engine
from . import tasks as T
from .draws import random_tasks

BANDS = "grz"


def synthetic_inputs(n, stamp_size, seed=0, nbands=3):
    """Cutouts, invvar and maskbits with DR10-like noise (~0.01 nanomaggy per pixel)."""
    rng = np.random.default_rng(seed + 1)
    sigma = 0.01
    shape = (n, nbands, stamp_size, stamp_size)
    cutout = rng.normal(0.0, sigma, shape).astype(np.float32)
    invvar = np.full(shape, 1.0 / sigma**2, dtype=np.float32)
    maskbits = np.zeros((n, stamp_size, stamp_size), dtype=np.int32)
    return cutout, invvar, maskbits


def median_seconds(fn, repeats=3, warm=True):
    """Median wall time of ``fn()`` over ``repeats`` calls, after one untimed call (warm)."""
    if warm:
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_rss_mib():
    """Peak resident set size of this process so far, MiB (Linux reports KiB)."""
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def run_bench(backend_name="cpu", stamps=2048, stamp_size=64, repeats=3, seed=0,
              batch_size=1024):
    """Median stamps/s of ``engine.inject_batch`` for one backend (dict, SPEC section 7 keys),
    and the same batches from host to host through ``engine.inject_batches`` (overlapped).

    The stamps go through in batches of ``batch_size``, each with its own cutouts, as the
    pipeline feeds the engine: peak memory follows the batch size, not the stamp count. The
    inputs of a batch are on the backend's device before its clock starts (for the GPU: data
    already on the device); the clock stops when its results are back on the host."""
    for name, value in (("stamps", stamps), ("batch_size", batch_size), ("repeats", repeats)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} = {value}: must be an integer >= 1")
    if stamp_size < 16 or stamp_size % 2:
        raise ValueError(f"stamp_size = {stamp_size}: must be an even integer >= 16")
    be = engine.get_backend(backend_name)
    bands = list(BANDS)
    draws = random_tasks(stamps, seed)
    cols = T.read_columns(draws)
    fwhm = np.stack([draws[f"psfsize_{b}"] for b in bands], axis=1)
    offset = np.random.default_rng(seed + 2).uniform(-0.5, 0.5, (stamps, 2))
    batches = [slice(a, min(a + batch_size, stamps)) for a in range(0, stamps, batch_size)]

    def one(sl):
        """(copy-in, kernels, copy-out) seconds of one batch: its inputs are made, then put
        on the device (copy-in, which synchronises); the kernels clock covers render, PSF,
        injection and metrics and stops after the device is synchronised; copy-out is the
        copy of the results back to the host. On the CPU, copies are none and copy-out ~0."""
        host = synthetic_inputs(sl.stop - sl.start, stamp_size, seed + sl.start)
        t0 = time.perf_counter()
        inputs = [be.to_device(a) for a in host]
        t1 = time.perf_counter()
        out = engine.inject_batch(be, {k: v[sl] for k, v in cols.items()}, fwhm[sl], *inputs,
                                  pixscale=0.262, bands=bands, lens_offset=offset[sl],
                                  to_host=False)
        be.synchronize()
        t2 = time.perf_counter()
        for v in out.values():
            be.to_host(v)
        return t1 - t0, t2 - t1, time.perf_counter() - t2

    def overlapped(inputs):
        """Seconds for every batch from host inputs to host results through
        ``engine.inject_batches``, as the pipeline runs them: on a GPU, one batch's copies
        overlap the kernels of the next (compare with the sum of the three figures above).
        Batches of one size share their host inputs (made before the clock starts)."""
        t0 = time.perf_counter()
        for _ in engine.inject_batches(be, (
                (({k: v[sl] for k, v in cols.items()}, fwhm[sl], *inputs[sl.stop - sl.start]),
                 dict(pixscale=0.262, bands=bands, lens_offset=offset[sl]))
                for sl in batches)):
            pass
        return time.perf_counter() - t0

    one(slice(0, min(stamps, 8)))  # warm-up: compilation or the on-disk cache
    runs = [np.sum([one(sl) for sl in batches], axis=0) for _ in range(repeats)]
    inputs = {n: synthetic_inputs(n, stamp_size, seed)
              for n in {sl.stop - sl.start for sl in batches}}
    flights = [overlapped(inputs) for _ in range(repeats)]
    del inputs
    # the engine's figure: kernels and the copy back (the data starts on the device)
    times = [float(r[1] + r[2]) for r in runs]
    sec = statistics.median(times)
    return {
        "backend": be.name,
        "device": be.device,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "stamps": stamps,
        "stamp_size": stamp_size,
        "bands": BANDS,
        "batch_size": batch_size,
        "repeats": repeats,
        "seconds": sec,
        "seconds_all": times,
        "stamps_per_s": stamps / sec,
        "stamps_per_s_min": stamps / max(times),
        "stamps_per_s_max": stamps / min(times),
        "copy_in_seconds": statistics.median(float(r[0]) for r in runs),
        "kernel_seconds": statistics.median(float(r[1]) for r in runs),
        "copy_out_seconds": statistics.median(float(r[2]) for r in runs),
        "overlapped_seconds": statistics.median(flights),
        "stamps_per_s_overlapped": stamps / statistics.median(flights),
        "threads": numba.get_num_threads(),
        "peak_rss_mib": peak_rss_mib(),
    }
