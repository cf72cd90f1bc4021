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
    ``region_is_dark`` proves dark are 0 without a sample (block 0: none is tried; sampled,
    such a pixel gets below 1e-9 (tested), the cubic stencil reading one pixel beyond it; and
    every other pixel is the same bit for bit). The 4 corners of every other pixel come from a grid
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
                # a corner is sampled unless every pixel that reads it is dark: those whose
                # 4 x 4 corner stencil holds it (pixel_value), pixels j-2..j+1, i-2..i+1
                lit = False
                for bj in range(max(j - 2, 0) // b, min(j + 1, size - 1) // b + 1):
                    for bi in range(max(i - 2, 0) // b, min(i + 1, size - 1) // b + 1):
                        lit = lit or not dark[bj, bi]
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
                out[k, j, i] = pixel_value(fcor, ucor, vcor, j, i, i - 0.5 - ox, y0, p,
                                           eps_gate, eps_abs, eps_rel, eps_cusp, max_level,
                                           mem)
