"""The engine without I/O: render the lensed source, convolve, inject, reduce metrics.

One interface, several backends. ``cpu`` runs Numba-compiled loops on this machine's cores;
``gpu`` (CUDA kernels, CuPy FFT) plugs in behind the same ``Backend`` methods; ``auto`` picks
the best backend that works here and says why.
"""
from dataclasses import dataclass

import numba
import numpy as np

from . import tasks as T


@dataclass(frozen=True)
class Accuracy:
    """Tolerances of the adaptive pixel integration (``physics.integrate``), in units of the
    source's unlensed flux F: eps_gate for a pixel accepted from its own 5 samples, eps_abs
    per pixel^2 and eps_rel of a node's value for the two-level test, eps_cusp for the most a
    cell at a cusp or the lens centre may hold unrefined.
    The defaults meet SPEC section 6 (0.1 % in flux, 1 % of the peak pixel) over the manifest
    ranges: see benchmarks/accuracy.py for the measurement."""
    eps_gate: float = 3e-5
    eps_abs: float = 1e-3
    eps_rel: float = 2e-2
    eps_cusp: float = 3e-3
    max_level: int = 20


DEFAULT_ACCURACY = Accuracy()


@dataclass
class ArcBatch:
    """What ``render_arcs`` returns (SPEC section 7)."""
    images: np.ndarray          # float32 [N, nbands, S, S], arc only, after the PSF
    magnification: np.ndarray   # float64 [N]: lensed flux over the render grid / F
    total_flux: np.ndarray      # float64 [N, nbands]: sum of images over the stamp


class BackendUnavailable(RuntimeError):
    """The asked-for backend cannot run here; the message says why in one line."""


class CpuBackend:
    """Numba-compiled loops on this machine's cores; numpy/scipy FFT for the PSF."""
    name = "cpu"
    xp = np

    def __init__(self):
        from .kernels import cpu, psf, reduce

        self._cpu, self._psf, self.reduce = cpu, psf, reduce
        self.device = f"CPU, {numba.get_num_threads()} Numba threads"
        self.why = "asked for"

    def render(self, params, origin, size, acc):
        out = np.empty((params.shape[0], size, size))
        # stamps cost 0.3 to 10 ms each: hand them to threads one at a time, not in halves
        with numba.parallel_chunksize(1):
            self._cpu.render_batch(params, origin, size, acc.eps_gate, acc.eps_abs,
                                   acc.eps_rel, acc.eps_cusp, acc.max_level, out)
        return out

    def convolve_crop(self, render, fwhm_px, stamp_size, margin, model, beta):
        return self._psf.convolve_crop(render, fwhm_px, stamp_size, margin, model=model,
                                       beta=beta, xp=np)


def get_backend(name="auto"):
    """The backend called ``name`` (cpu, gpu, auto), or BackendUnavailable saying why not."""
    if name == "cpu":
        return CpuBackend()
    if name == "gpu":
        raise BackendUnavailable("--backend gpu: no GPU backend in this build yet "
                                 "(Numba CUDA kernels arrive with issue 5); use --backend cpu")
    if name == "auto":
        b = CpuBackend()
        b.why = "auto: no GPU backend in this build yet, using the CPU"
        return b
    raise ValueError(f"backend = {name!r}: choose auto, cpu or gpu")


# Stamps rendered and convolved together: bounds the float64 temporaries (render grid, FFT
# spectra: ~1 MB per stamp) whatever the batch size, and keeps them near the caches.
CHUNK = 128


def arcs_from_params(backend, params, flux, fwhm_px, origin_offset, stamp_size, psf_model,
                     moffat_beta, acc=DEFAULT_ACCURACY):
    """Arcs from packed parameters: (images float32 [n, B, S, S], magnification [n],
    total_flux float64 [n, B], summed before the cast to float32).

    flux: float64 [n, B] unlensed flux per band; fwhm_px [n, B] PSF FWHM in pixels (0: none);
    origin_offset [n, 2]: lens centre minus (S//2, S//2), pixels. Stamps are grouped by their
    render grid size, which depends only on each stamp's own PSF, and every stamp is computed
    from its own inputs only: results do not depend on what else is in the batch."""
    from .kernels.psf import render_size

    n, nb = flux.shape
    s = stamp_size
    images = np.empty((n, nb, s, s), dtype=np.float32)
    magnification = np.empty(n)
    total = np.empty((n, nb))
    sizes, margins = render_size(s, fwhm_px.max(axis=1, initial=0.0))
    for size in np.unique(sizes):
        group = np.flatnonzero(sizes == size)
        margin = int(margins[group[0]])
        for start in range(0, group.size, CHUNK):
            idx = group[start:start + CHUNK]
            origin = origin_offset[idx] + (margin + s // 2)
            render = backend.render(np.ascontiguousarray(params[idx]), origin, int(size), acc)
            magnification[idx] = render.sum(axis=(1, 2))
            conv = backend.convolve_crop(render, fwhm_px[idx], s, margin, psf_model,
                                         moffat_beta)
            conv *= flux[idx][:, :, None, None]
            total[idx] = conv.sum(axis=(2, 3))
            images[idx] = conv
    return images, magnification, total


def inject_batch(backend, cols, psf_fwhm_arcsec, cutout, invvar, maskbits, *, pixscale, bands,
                 lens_offset, psf_model="gaussian", moffat_beta=3.5, acc=DEFAULT_ACCURACY):
    """The engine's whole job on one batch of valid rows (injections and CONTROLs): render,
    convolve, inject and reduce the SPEC section 5 metrics. Returns a dict of arrays.

    cols: manifest columns (``tasks.read_columns``), rows already validated; psf_fwhm_arcsec
    [n, B]; cutout, invvar float32 [n, B, S, S]; maskbits int [n, S, S]; pixscale: arcsec per
    pixel, a scalar or one per row (each brick's WCS); lens_offset [n, 2].
    CONTROL rows are not rendered: their image is the cutout itself and their arc metrics
    (arc_snr, arc_snr_opt, magnification, total_injected_flux) are NaN."""
    n, nb, s, _ = cutout.shape
    pixscale = np.broadcast_to(np.asarray(pixscale, dtype=np.float64), (n,))
    inj = np.flatnonzero(cols["lens_model"] != "CONTROL")
    image = cutout.copy()
    mag = np.full(n, np.nan)
    total = np.full((n, nb), np.nan)
    arc_snr = np.full(n, np.nan)
    arc_snr_opt = np.full(n, np.nan)
    red = backend.reduce
    if inj.size:
        sub = {k: v[inj] for k, v in cols.items()}
        params, flux_r = T.pack_params(sub, pixscale[inj])
        flux = T.band_fluxes(sub, flux_r, bands)
        fwhm_px = psf_fwhm_arcsec[inj] / pixscale[inj, None]
        arcs, mag[inj], total[inj] = arcs_from_params(backend, params, flux, fwhm_px,
                                                      lens_offset[inj], s, psf_model,
                                                      moffat_beta, acc)
        image[inj] = red.inject(cutout[inj], arcs)
        r = list(bands).index("r")
        arc_snr[inj] = red.arc_snr(arcs[:, r], invvar[inj, r])
        arc_snr_opt[inj] = red.arc_snr_opt(arcs, invvar[inj])
    bad, wise = red.mask_fractions(maskbits, invvar)
    return {
        "image": image,
        "magnification": mag,
        "total_injected_flux": total,
        "arc_snr": arc_snr,
        "arc_snr_opt": arc_snr_opt,
        "bad_pixel_frac": bad,
        "wise_brightmask_frac": wise,
    }


def render_arcs(tasks, *, stamp_size, psf_fwhm, pixscale=0.262, bands="grz", lens_offset=None,
                backend="auto", psf_model="gaussian", moffat_beta=3.5):
    """Lensed arcs for N tasks (SPEC section 7): the engine without I/O.

    tasks: pyarrow Table or mapping of manifest columns (section 4) -> 1-D arrays.
    psf_fwhm: float [N, nbands] arcsec, 0 for no convolution. lens_offset: float [N, 2], the
    lens centre minus (S//2, S//2) in pixels (x, y). CONTROL rows give empty arcs and a NaN
    magnification. A bad row raises ValueError naming the row, the column and the range.
    """
    bands = list(bands.split(",") if "," in bands else bands)
    if stamp_size < 16 or stamp_size % 2:
        raise ValueError(f"stamp_size = {stamp_size}: must be an even integer >= 16")
    if not (np.isfinite(pixscale) and pixscale > 0):
        raise ValueError(f"pixscale = {pixscale}: must be > 0 (arcsec per pixel)")
    if psf_model not in ("gaussian", "moffat"):
        raise ValueError(f"psf_model = {psf_model!r}: choose gaussian or moffat")
    if psf_model == "moffat" and not (np.isfinite(moffat_beta) and moffat_beta > 1):
        raise ValueError(f"moffat_beta = {moffat_beta}: must be > 1")
    cols = T.read_columns(tasks)
    n = len(cols["lens_model"])
    fwhm = np.asarray(psf_fwhm, dtype=np.float64)
    if fwhm.shape != (n, len(bands)):
        raise ValueError(f"psf_fwhm has shape {fwhm.shape}, expected ({n}, {len(bands)})")
    bad_psf = np.flatnonzero(~np.isfinite(fwhm).all(axis=1) | (fwhm < 0).any(axis=1))
    if bad_psf.size:
        k = bad_psf[0]
        raise ValueError(f"row {k}: psf_fwhm = {fwhm[k].tolist()} must be finite and >= 0")
    offset = np.zeros((n, 2)) if lens_offset is None else np.asarray(lens_offset, np.float64)
    if offset.shape != (n, 2) or not np.isfinite(offset).all():
        raise ValueError(f"lens_offset must be finite with shape ({n}, 2), got {offset.shape}")
    errors = T.row_errors(cols)
    bad = [k for k, e in enumerate(errors) if e]
    if bad:
        more = f" (and {len(bad) - 1} more bad rows)" if len(bad) > 1 else ""
        raise ValueError(f"row {bad[0]}: {errors[bad[0]]}{more}")
    be = get_backend(backend)
    params, flux_r = T.pack_params(cols, pixscale)
    flux = T.band_fluxes(cols, flux_r, bands)
    images, mag, total = arcs_from_params(be, params, flux, fwhm / pixscale, offset,
                                          stamp_size, psf_model, moffat_beta)
    mag[cols["lens_model"] == "CONTROL"] = np.nan
    return ArcBatch(images=images, magnification=mag, total_flux=total)
