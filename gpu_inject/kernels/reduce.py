"""Injection and the metric reductions of SPEC section 5, on the CPU (numba).

Each stamp is reduced by one thread (prange over stamps), its pixels in C order, sums in
float64: results are bit-identical whatever the thread count or batch composition. The
kernels see stamps flattened to [n, pixels] (the Python wrappers reshape), so any stamp
shape works, and numba specialises them for float32 and float64 inputs alike.
"""
import numba
import numpy as np

from ._jit import configure_numba_cache

configure_numba_cache()  # same on-disk cache location as the other CPU kernels

# DR10 maskbits (../shared/DATA_MODEL.md, "Maskbits"): 1 BRIGHT, 2-4 SATUR_{G,R,Z},
# 5-7 ALLMASK_{G,R,Z}, 10 BAILOUT, 11 MEDIUM make a pixel bad; 8 WISEM1, 9 WISEM2 are the
# WISE bright-star masks. Not bad: 0 NPRIMARY, 12 GALAXY, 13 CLUSTER, 14+ (DR10 i band,
# SUB_BLOB).
BAD_BIT_NUMBERS = (1, 2, 3, 4, 5, 6, 7, 10, 11)
WISE_BIT_NUMBERS = (8, 9)
BAD_BITS = sum(1 << b for b in BAD_BIT_NUMBERS)    # 0xCFE
WISE_BITS = sum(1 << b for b in WISE_BIT_NUMBERS)  # 0x300


@numba.njit(parallel=True, cache=True, nogil=True)
def _arc_snr(arc, invvar, out):
    for k in numba.prange(arc.shape[0]):
        flux = 0.0
        var = 0.0
        for p in range(arc.shape[1]):
            a = np.float64(arc[k, p])
            w = np.float64(invvar[k, p])
            if w > 0.0 and a * np.sqrt(w) > 1.0:
                flux += a
                var += 1.0 / w
        out[k] = flux / np.sqrt(var) if var > 0.0 else 0.0


@numba.njit(parallel=True, cache=True, nogil=True)
def _arc_snr_opt(arc, invvar, out):
    for k in numba.prange(arc.shape[0]):
        s = 0.0
        for p in range(arc.shape[1]):
            w = np.float64(invvar[k, p])
            if w > 0.0:
                a = np.float64(arc[k, p])
                s += a * a * w
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
            bad = (m & BAD_BITS) != 0
            for b in range(nband):
                # "invvar 0": also catches negative or NaN invvar, never valid data.
                if not invvar[k, b, p] > 0:
                    bad = True
            if bad:
                nbad += 1
            if (m & WISE_BITS) != 0:
                nwise += 1
        bad_out[k] = nbad / npix
        wise_out[k] = nwise / npix


@numba.njit(parallel=True, cache=True, nogil=True)
def _inject(cutout, arc, out):
    for k in numba.prange(cutout.shape[0]):
        for p in range(cutout.shape[1]):
            out[k, p] = np.float32(cutout[k, p]) + np.float32(arc[k, p])


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


def band_sums(arc):
    """SPEC 5 ``total_injected_flux_<b>``: float64 [n, B], each stamp/band summed in float64.
    arc: [n, B, S, S]."""
    n, nb = arc.shape[:2]
    out = np.empty(n * nb, dtype=np.float64)
    _row_sums(np.ascontiguousarray(arc).reshape(n * nb, _npix(arc.shape[2:])), out)
    return out.reshape(n, nb)
