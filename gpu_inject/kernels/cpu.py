"""CPU loops around the physics: one stamp per thread (prange), pixels in a fixed order.

Only the loops live here; every formula comes from ``gpu_inject.physics`` through
``_jit.compile_physics``. Results do not depend on the thread count or batch composition:
each stamp is computed by one thread from its own parameters only.
"""
import numba
import numpy as np

from ..physics.integrate import NODE_MEM
from ._jit import compile_physics, configure_numba_cache

configure_numba_cache()
J = compile_physics(numba.njit(error_model="numpy"))
lensed_sample = J.lensed_sample
must_split = J.must_split
gate = J.gate
refine_pixel = J.refine_pixel


@numba.njit(parallel=True, cache=True, nogil=True, error_model="numpy")
def render_batch(params, origin, size, eps_gate, eps_abs, eps_rel, eps_cusp, max_level, out):
    """Pixel integrals of the lensed source for each stamp, at unit source flux.

    params: float64 [n, NPARAM] (``physics.layout``); origin: float64 [n, 2], the lens centre
    in render-grid pixel coordinates (x, y); out: float64 [n, size, size]. Pixel (i, j) is the
    unit square centred on x = i, y = j. The 4 corners and the centre of every pixel come from
    two grids shared between neighbours; refine_pixel walks only the pixels the gate refuses.
    """
    n = params.shape[0]
    for k in numba.prange(n):
        p = params[k]
        ox = origin[k, 0]
        oy = origin[k, 1]
        fcor = np.empty((size + 1, size + 1))
        ucor = np.empty((size + 1, size + 1))
        vcor = np.empty((size + 1, size + 1))
        mem = np.empty(NODE_MEM)
        for j in range(size + 1):
            for i in range(size + 1):
                f, u, v = lensed_sample(i - 0.5 - ox, j - 0.5 - oy, p)
                fcor[j, i] = f
                ucor[j, i] = u
                vcor[j, i] = v
        for j in range(size):
            y0 = j - 0.5 - oy
            for i in range(size):
                x0 = i - 0.5 - ox
                fc, uc, vc = lensed_sample(x0 + 0.5, y0 + 0.5, p)
                s, ok = gate(fcor[j, i], fcor[j, i + 1], fcor[j + 1, i], fcor[j + 1, i + 1],
                             fc, eps_gate)
                if ok:
                    ok = not must_split(x0, y0, 1.0, uc, vc, ucor[j, i], vcor[j, i],
                                        ucor[j, i + 1], vcor[j, i + 1], ucor[j + 1, i],
                                        vcor[j + 1, i], ucor[j + 1, i + 1],
                                        vcor[j + 1, i + 1], p, eps_cusp)
                if not ok:
                    s = refine_pixel(x0, y0, p, eps_abs, eps_rel, eps_cusp, max_level, mem)
                out[k, j, i] = s
