"""CPU loops around the physics: one stamp per thread (prange), pixels in a fixed order.

Only the loops live here; every formula comes from ``gpu_inject.physics`` through
``_jit.compile_physics``. Results do not depend on the thread count or batch composition:
each stamp is computed by one thread from its own parameters only.
"""
import numba
import numpy as np

from ..physics.integrate import DARK_BLOCK, NODE_MEM
from ._jit import compile_physics, configure_numba_cache

configure_numba_cache()
J = compile_physics(numba.njit(error_model="numpy"),
                    numba.njit(error_model="numpy", inline="always"))
lensed_sample = J.lensed_sample
region_is_dark = J.region_is_dark
pixel_value = J.pixel_value


@numba.njit(parallel=True, cache=True, nogil=True, error_model="numpy")
def render_batch(params, origin, size, eps_gate, eps_abs, eps_rel, eps_cusp, max_level, out,
                 block=DARK_BLOCK):
    """Pixel integrals of the lensed source for each stamp, at unit source flux.

    params: float64 [n, NPARAM] (``physics.layout``); origin: float64 [n, 2], the lens centre
    in render-grid pixel coordinates (x, y); out: float64 [n, size, size]. Pixel (i, j) is the
    unit square centred on x = i, y = j. Blocks of block x block pixels that
    ``region_is_dark`` proves dark are 0 without a sample (block 0: none is tried; the
    result is the same, bit for bit). The 4 corners of every other pixel come from a grid
    shared between neighbours; ``pixel_value`` adds its centre and walks the pixels the
    gate refuses.
    """
    n = params.shape[0]
    b = max(block, 1)
    nblock = (size + b - 1) // b
    for k in numba.prange(n):
        p = params[k]
        ox = origin[k, 0]
        oy = origin[k, 1]
        dark = np.zeros((nblock, nblock), dtype=np.bool_)
        if block > 0:
            for bj in range(nblock):
                for bi in range(nblock):
                    dark[bj, bi] = region_is_dark(
                        bi * b - 0.5 - ox, bj * b - 0.5 - oy,
                        min(bi * b + b, size) - 0.5 - ox, min(bj * b + b, size) - 0.5 - oy, p)
        fcor = np.empty((size + 1, size + 1))
        ucor = np.empty((size + 1, size + 1))
        vcor = np.empty((size + 1, size + 1))
        mem = np.empty(NODE_MEM)
        for j in range(size + 1):
            for i in range(size + 1):
                # a corner is sampled unless every pixel around it is dark (it is never read)
                lit = False
                for jj in range(max(j - 1, 0), min(j, size - 1) + 1):
                    for ii in range(max(i - 1, 0), min(i, size - 1) + 1):
                        lit = lit or not dark[jj // b, ii // b]
                if lit:
                    f, u, v = lensed_sample(i - 0.5 - ox, j - 0.5 - oy, p)
                    fcor[j, i] = f
                    ucor[j, i] = u
                    vcor[j, i] = v
        for j in range(size):
            y0 = j - 0.5 - oy
            for i in range(size):
                if dark[j // b, i // b]:
                    out[k, j, i] = 0.0
                    continue
                out[k, j, i] = pixel_value(
                    i - 0.5 - ox, y0, fcor[j, i], ucor[j, i], vcor[j, i],
                    fcor[j, i + 1], ucor[j, i + 1], vcor[j, i + 1],
                    fcor[j + 1, i], ucor[j + 1, i], vcor[j + 1, i],
                    fcor[j + 1, i + 1], ucor[j + 1, i + 1], vcor[j + 1, i + 1],
                    p, eps_gate, eps_abs, eps_rel, eps_cusp, max_level, mem)
