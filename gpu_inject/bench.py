"""Engine throughput on arrays in memory (SPEC section 7, ``gpu-inject bench``).

Times what a batch costs once data is in memory: render (adaptive pixel integration), PSF
convolution, injection into cutouts and the metric reductions, after a warm-up call (Numba
compiles on first use), as the median of repeats.
"""
import platform
import statistics
import time

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


def process_batch(backend, cols, psf_fwhm_arcsec, cutout, invvar, maskbits, *, pixscale,
                  bands, lens_offset, psf_model="gaussian", moffat_beta=3.5):
    """Render, convolve, inject and reduce one batch: the engine's whole job on arrays."""
    params, flux_r = T.pack_params(cols, pixscale)
    flux = T.band_fluxes(cols, flux_r, bands)
    s = cutout.shape[-1]
    arcs32, mag, total = engine.arcs_from_params(backend, params, flux,
                                                 psf_fwhm_arcsec / pixscale, lens_offset, s,
                                                 psf_model, moffat_beta)
    red = backend.reduce
    r = bands.index("r")
    bad, wise = red.mask_fractions(maskbits, invvar)
    return {
        "image": red.inject(cutout, arcs32),
        "magnification": mag,
        "total_injected_flux": total,
        "arc_snr": red.arc_snr(arcs32[:, r], invvar[:, r]),
        "arc_snr_opt": red.arc_snr_opt(arcs32, invvar),
        "bad_pixel_frac": bad,
        "wise_brightmask_frac": wise,
    }


def run_bench(backend_name="cpu", stamps=2048, stamp_size=64, repeats=3, seed=0):
    """Median stamps/s of ``process_batch`` for one backend (dict, SPEC section 7 keys)."""
    be = engine.get_backend(backend_name)
    bands = list(BANDS)
    cols = T.read_columns(random_tasks(stamps, seed))
    draws = random_tasks(stamps, seed)
    fwhm = np.stack([draws[f"psfsize_{b}"] for b in bands], axis=1)
    rng = np.random.default_rng(seed + 2)
    offset = rng.uniform(-0.5, 0.5, (stamps, 2))
    cutout, invvar, maskbits = synthetic_inputs(stamps, stamp_size, seed)
    kw = dict(pixscale=0.262, bands=bands, lens_offset=offset)
    warm = slice(0, min(stamps, 8))
    process_batch(be, {k: v[warm] for k, v in cols.items()}, fwhm[warm], cutout[warm],
                  invvar[warm], maskbits[warm], **{**kw, "lens_offset": offset[warm]})
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        process_batch(be, cols, fwhm, cutout, invvar, maskbits, **kw)
        times.append(time.perf_counter() - t0)
    sec = statistics.median(times)
    return {
        "backend": be.name,
        "device": be.device,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "stamps": stamps,
        "stamp_size": stamp_size,
        "bands": BANDS,
        "repeats": repeats,
        "seconds": sec,
        "seconds_all": times,
        "stamps_per_s": stamps / sec,
    }
