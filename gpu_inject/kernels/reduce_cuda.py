"""Injection and the metric reductions of SPEC section 5 on the device (Numba CUDA).

The same API as ``kernels/reduce.py`` on device arrays (CuPy, or numpy under Numba's CUDA
simulator), and the same per-pixel terms (``physics.metrics``, compiled as device
functions). One block per stamp: each thread sums a fixed, strided set of pixels, then a
shared-memory tree adds the threads' partial sums in a fixed order. No atomics: a stamp's
result depends only on its own pixels and is the same run to run. The order of the sums
differs from the CPU's (one thread, C order), so the two agree to rounding, not bit for bit.
Kernels are launched on CuPy's current stream (``cuda.launch_stream``).
"""
import math

import numpy as np
from numba import cuda, float64, int64

from ._jit import compile_metrics
from .cuda import device_args, launch_stream

M = compile_metrics(cuda.jit(device=True, inline=True))
snr_flux, snr_var, snr, opt_term = M.snr_flux, M.snr_var, M.snr, M.opt_term
invvar_bad, mask_bad, mask_wise = M.invvar_bad, M.mask_bad, M.mask_wise

#: Threads per block (one block per stamp); a power of two for the tree.
TPB = 256


@cuda.jit(device=True, inline=True)
def _block_sum(buf, t, value):
    """The sum of every thread's ``value`` over the block, in buf[0] (a fixed tree)."""
    buf[t] = value
    cuda.syncthreads()
    s = TPB // 2
    while s > 0:
        if t < s:
            buf[t] += buf[t + s]
        cuda.syncthreads()
        s //= 2


@cuda.jit
def _arc_snr(arc, invvar, out):
    k = cuda.blockIdx.x
    t = cuda.threadIdx.x
    f = cuda.shared.array(TPB, float64)
    v = cuda.shared.array(TPB, float64)
    sf = 0.0
    sv = 0.0
    for p in range(t, arc.shape[1], TPB):
        a = float64(arc[k, p])
        w = float64(invvar[k, p])
        sf += snr_flux(a, w)
        sv += snr_var(a, w)
    _block_sum(f, t, sf)
    _block_sum(v, t, sv)
    if t == 0:
        out[k] = snr(f[0], v[0])


@cuda.jit
def _arc_snr_opt(arc, invvar, out):
    k = cuda.blockIdx.x
    t = cuda.threadIdx.x
    buf = cuda.shared.array(TPB, float64)
    s = 0.0
    for p in range(t, arc.shape[1], TPB):
        s += opt_term(float64(arc[k, p]), float64(invvar[k, p]))
    _block_sum(buf, t, s)
    if t == 0:
        out[k] = math.sqrt(buf[0])


@cuda.jit
def _mask_fractions(maskbits, invvar, bad_out, wise_out):
    k = cuda.blockIdx.x
    t = cuda.threadIdx.x
    nb = cuda.shared.array(TPB, float64)
    nw = cuda.shared.array(TPB, float64)
    npix = maskbits.shape[1]
    cb = 0.0
    cw = 0.0
    for p in range(t, npix, TPB):
        m = int64(maskbits[k, p])
        bad = mask_bad(m)
        for b in range(invvar.shape[1]):
            bad = bad or invvar_bad(float64(invvar[k, b, p]))
        if bad:
            cb += 1.0
        if mask_wise(m):
            cw += 1.0
    _block_sum(nb, t, cb)
    _block_sum(nw, t, cw)
    if t == 0:
        bad_out[k] = nb[0] / npix
        wise_out[k] = nw[0] / npix


def _xp(a):
    """The array module of a device array: cupy for CuPy arrays, numpy under the simulator."""
    mod = type(a).__module__.split(".")[0]
    if mod == "cupy":
        import cupy

        return cupy
    return np


def _flat(a, n):
    xp = _xp(a)
    return xp.ascontiguousarray(a).reshape(n, int(np.prod(a.shape[1:], dtype=np.int64)))


def _per_stamp(kernel, arc, invvar):
    if invvar.shape != arc.shape:
        raise ValueError(f"shapes differ: arc {arc.shape}, invvar {invvar.shape}")
    n = arc.shape[0]
    out = _xp(arc).empty(n, dtype=np.float64)
    if n:
        xp = _xp(arc)
        kernel[n, TPB, launch_stream(xp)](*device_args(_flat(arc, n), _flat(invvar, n), out))
    return out


def arc_snr(arc_r, invvar_r):
    """SPEC 5 ``arc_snr`` per stamp (see ``reduce.arc_snr``), on the device."""
    return _per_stamp(_arc_snr, arc_r, invvar_r)


def arc_snr_opt(arc, invvar):
    """SPEC 5 ``arc_snr_opt`` per stamp (see ``reduce.arc_snr_opt``), on the device."""
    return _per_stamp(_arc_snr_opt, arc, invvar)


def mask_fractions(maskbits, invvar):
    """SPEC 5 ``(bad_pixel_frac, wise_brightmask_frac)`` (see ``reduce.mask_fractions``)."""
    n = maskbits.shape[0]
    if invvar.shape[0] != n or invvar.shape[2:] != maskbits.shape[1:]:
        raise ValueError(f"shapes differ: maskbits {maskbits.shape}, invvar {invvar.shape}")
    xp = _xp(maskbits)
    bad = xp.empty(n, dtype=np.float64)
    wise = xp.empty(n, dtype=np.float64)
    if n:
        npix = int(np.prod(maskbits.shape[1:], dtype=np.int64))
        inv = xp.ascontiguousarray(invvar).reshape(n, invvar.shape[1], npix)
        _mask_fractions[n, TPB, launch_stream(xp)](*device_args(_flat(maskbits, n), inv, bad,
                                                                wise))
    return bad, wise


def inject(cutout, arc):
    """SPEC 2 injection: float32 ``cutout + arc`` (an elementwise add, the same float32
    operation as the CPU's)."""
    if cutout.shape != arc.shape:
        raise ValueError(f"shapes differ: cutout {cutout.shape}, arc {arc.shape}")
    xp = _xp(cutout)
    return cutout.astype(xp.float32, copy=False) + arc.astype(xp.float32, copy=False)


def inject_rows(cutout, invvar, arcs, rows, r, image, snr_out, opt_out):
    """A chunk's arcs into rows ``rows`` of a batch, in place (see ``reduce.inject_rows``):
    the kernels above on the rows' copies."""
    image[rows] = inject(cutout[rows], arcs)
    snr_out[rows] = arc_snr(arcs[:, r], invvar[rows, r])
    opt_out[rows] = arc_snr_opt(arcs, invvar[rows])

