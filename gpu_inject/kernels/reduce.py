"""Injection and the metric reductions of SPEC section 5, on the CPU (numba).

Each stamp is reduced by one thread (prange over stamps), its pixels in C order, sums in
float64: results are bit-identical whatever the thread count or batch composition. The
kernels see stamps flattened to [n, pixels] (the Python wrappers reshape), so any stamp
shape works, and numba specialises them for float32 and float64 inputs alike.
"""
import numba
import numpy as np

from ..physics import metrics
from ._jit import compile_metrics, configure_numba_cache

configure_numba_cache()  # same on-disk cache location as the other CPU kernels

M = compile_metrics(numba.njit(inline="always"))
snr_flux, snr_var, snr, opt_term = M.snr_flux, M.snr_var, M.snr, M.opt_term
invvar_bad, mask_bad, mask_wise = M.invvar_bad, M.mask_bad, M.mask_wise
BAD_BITS, WISE_BITS = metrics.BAD_BITS, metrics.WISE_BITS


@numba.njit(parallel=True, cache=True, nogil=True)
def _arc_snr(arc, invvar, out):
    for k in numba.prange(arc.shape[0]):
        flux = 0.0
        var = 0.0
        for p in range(arc.shape[1]):
            a = np.float64(arc[k, p])
            w = np.float64(invvar[k, p])
            flux += snr_flux(a, w)
            var += snr_var(a, w)
        out[k] = snr(flux, var)


@numba.njit(parallel=True, cache=True, nogil=True)
def _arc_snr_opt(arc, invvar, out):
    for k in numba.prange(arc.shape[0]):
        s = 0.0
        for p in range(arc.shape[1]):
            s += opt_term(np.float64(arc[k, p]), np.float64(invvar[k, p]))
        out[k] = np.sqrt(s)


@numba.njit(parallel=True, cache=True, nogil=True)
def _mask_fractions(maskbits, invvar, bad_out, wise_out):
    npix = maskbits.shape[1]
    nband = invvar.shape[1]
    for k in numba.prange(maskbits.shape[0]):
        nbad = 0
        nwise = 0
        for p in range(npix):
            m = np.int64(maskbits[k, p])
            bad = mask_bad(m)
            for b in range(nband):
                bad = bad or invvar_bad(np.float64(invvar[k, b, p]))
            if bad:
                nbad += 1
            if mask_wise(m):
                nwise += 1
        bad_out[k] = nbad / npix
        wise_out[k] = nwise / npix


@numba.njit(parallel=True, cache=True, nogil=True)
def _inject(cutout, arc, out):
    for k in numba.prange(cutout.shape[0]):
        for p in range(cutout.shape[1]):
            out[k, p] = np.float32(cutout[k, p]) + np.float32(arc[k, p])


@numba.njit(parallel=True, cache=True, nogil=True)
def _inject_rows(cutout, invvar, arcs, rows, r, image, snr_out, opt_out):
    """_inject, _arc_snr (band r) and _arc_snr_opt in one pass over each stamp, for the
    chunk's arcs [m, B, P] into rows ``rows`` of the batch's [N, B, P] arrays: the same
    terms summed in the same order, so the same bits."""
    nb = arcs.shape[1]
    for k in numba.prange(arcs.shape[0]):
        row = rows[k]
        flux = 0.0
        var = 0.0
        opt = 0.0
        for b in range(nb):
            for p in range(arcs.shape[2]):
                image[row, b, p] = np.float32(cutout[row, b, p]) + np.float32(arcs[k, b, p])
                a = np.float64(arcs[k, b, p])
                w = np.float64(invvar[row, b, p])
                opt += opt_term(a, w)
                if b == r:
                    flux += snr_flux(a, w)
                    var += snr_var(a, w)
        snr_out[row] = snr(flux, var)
        opt_out[row] = np.sqrt(opt)


@numba.njit(parallel=True, cache=True, nogil=True)
def _row_sums(a, out):
    for k in numba.prange(a.shape[0]):
        s = 0.0
        for p in range(a.shape[1]):
            s += np.float64(a[k, p])
        out[k] = s


def _flat(a, n):
    """[n, ...] -> C-contiguous [n, pixels] (a view when a already is contiguous)."""
    return np.ascontiguousarray(a).reshape(n, _npix(a.shape[1:]))


def _npix(shape):
    return int(np.prod(shape, dtype=np.int64))


def _per_stamp(kernel, arc, invvar):
    """float64 [n] from a per-stamp reduction of two arrays of the same shape."""
    if invvar.shape != arc.shape:
        raise ValueError(f"shapes differ: arc {arc.shape}, invvar {invvar.shape}")
    n = arc.shape[0]
    out = np.empty(n, dtype=np.float64)
    kernel(_flat(arc, n), _flat(invvar, n), out)
    return out


def arc_snr(arc_r, invvar_r):
    """SPEC 5 ``arc_snr`` per stamp: over pixels A with invvar > 0 and arc sqrt(invvar) > 1,
    ``sum_A arc / sqrt(sum_A 1/invvar)``; 0 when A is empty. arc_r, invvar_r: [n, S, S]."""
    return _per_stamp(_arc_snr, arc_r, invvar_r)


def arc_snr_opt(arc, invvar):
    """SPEC 5 ``arc_snr_opt`` per stamp: ``sqrt(sum_b sum_p arc^2 invvar)`` over pixels with
    invvar > 0. arc, invvar: [n, B, S, S]."""
    return _per_stamp(_arc_snr_opt, arc, invvar)


def mask_fractions(maskbits, invvar):
    """SPEC 5 ``(bad_pixel_frac, wise_brightmask_frac)``, float64 [n] each.

    maskbits: integer [n, S, S]; invvar: [n, B, S, S]. Bad: any of BAD_BITS set, or invvar
    not > 0 in any band. WISE: any of WISE_BITS set."""
    n = maskbits.shape[0]
    if invvar.shape[0] != n or invvar.shape[2:] != maskbits.shape[1:]:
        raise ValueError(f"shapes differ: maskbits {maskbits.shape}, invvar {invvar.shape}")
    if not np.issubdtype(maskbits.dtype, np.integer):
        raise TypeError(f"maskbits must be integers, got {maskbits.dtype}")
    bad = np.empty(n, dtype=np.float64)
    wise = np.empty(n, dtype=np.float64)
    inv = np.ascontiguousarray(invvar).reshape(n, invvar.shape[1], _npix(maskbits.shape[1:]))
    _mask_fractions(_flat(maskbits, n), inv, bad, wise)
    return bad, wise


def inject(cutout, arc):
    """SPEC 2 injection: float32 ``cutout + arc`` (arc cast to float32), same shape; the
    cutout is otherwise untouched (and not modified in place)."""
    if cutout.shape != arc.shape:
        raise ValueError(f"shapes differ: cutout {cutout.shape}, arc {arc.shape}")
    n = cutout.shape[0]
    out = np.empty((n, _npix(cutout.shape[1:])), dtype=np.float32)
    _inject(_flat(cutout, n), _flat(arc, n), out)
    return out.reshape(cutout.shape)


def inject_rows(cutout, invvar, arcs, rows, r, image, snr_out, opt_out):
    """A chunk's arcs [m, B, S, S] into rows ``rows`` [m] of a batch, in place: ``image[rows]
    = inject(cutout[rows], arcs)``, ``snr_out[rows] = arc_snr(arcs[:, r], invvar[rows, r])``,
    ``opt_out[rows] = arc_snr_opt(arcs, invvar[rows])``, bit for bit, in one pass and
    without copying the rows out. cutout, invvar, image: [N, B, S, S] (image C-contiguous
    float32); snr_out, opt_out float64 [N]."""
    n, m = cutout.shape[0], arcs.shape[0]
    if (invvar.shape != cutout.shape or image.shape != cutout.shape
            or arcs.shape[1:] != cutout.shape[1:] or len(rows) != m):
        raise ValueError(f"shapes differ: cutout {cutout.shape}, invvar {invvar.shape}, "
                         f"image {image.shape}, arcs {arcs.shape}, rows {len(rows)}")
    if not image.flags.c_contiguous or image.dtype != np.float32:
        raise ValueError("image must be C-contiguous float32 (written in place)")
    shape = (cutout.shape[1], _npix(cutout.shape[2:]))
    _inject_rows(_flat(cutout, n).reshape(n, *shape), _flat(invvar, n).reshape(n, *shape),
                 _flat(arcs, m).reshape(m, *shape), np.asarray(rows, dtype=np.int64), int(r),
                 image.reshape(n, *shape), snr_out, opt_out)


def band_sums(arc):
    """SPEC 5 ``total_injected_flux_<b>``: float64 [n, B], each stamp/band summed in float64.
    arc: [n, B, S, S]."""
    n, nb = arc.shape[:2]
    out = np.empty(n * nb, dtype=np.float64)
    _row_sums(np.ascontiguousarray(arc).reshape(n * nb, _npix(arc.shape[2:])), out)
    return out.reshape(n, nb)
