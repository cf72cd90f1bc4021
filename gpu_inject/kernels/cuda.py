"""CUDA loops around the physics: the same functions as kernels/cpu.py, compiled as device
functions by ``_jit.compile_physics``; only the loops differ (a thread per pixel).

``engine.GpuBackend`` runs them on CuPy arrays (cuFFT for the PSF, ``reduce_cuda`` for the
metrics); the tests run them under Numba's CUDA simulator against the CPU.
"""
import numpy as np
from numba import cuda, float64

from ..physics.integrate import NODE_MEM
from ._jit import compile_physics

D = compile_physics(cuda.jit(device=True, inline=True))
lensed_sample = D.lensed_sample
pixel_value = D.pixel_value


@cuda.jit
def corner_grid(params, origin, size, fcor, ucor, vcor):
    """Samples at the pixel corners of each stamp: [n, size + 1, size + 1] each."""
    k, j, i = cuda.grid(3)
    if k < params.shape[0] and j <= size and i <= size:
        f, u, v = lensed_sample(i - 0.5 - origin[k, 0], j - 0.5 - origin[k, 1], params[k])
        fcor[k, j, i] = f
        ucor[k, j, i] = u
        vcor[k, j, i] = v


@cuda.jit
def render_pixels(params, origin, size, fcor, ucor, vcor, eps_gate, eps_abs, eps_rel,
                  eps_cusp, max_level, out):
    """One thread per pixel: the gate from the shared corners, the quadtree where refused."""
    k, j, i = cuda.grid(3)
    if k < params.shape[0] and j < size and i < size:
        mem = cuda.local.array(NODE_MEM, float64)
        out[k, j, i] = pixel_value(fcor[k], ucor[k], vcor[k], j, i, i - 0.5 - origin[k, 0],
                                   j - 0.5 - origin[k, 1], params[k], eps_gate, eps_abs,
                                   eps_rel, eps_cusp, max_level, mem)


def render(params, origin, size, acc, xp=None, threads=(1, 8, 8)):
    """Pre-PSF renders [n, size, size] of float64 params [n, NPARAM] (host arrays).

    ``xp``: the array module of the result, cupy (it stays on the device) or numpy (under the
    simulator); None copies the result back to a numpy array."""
    n = params.shape[0]
    params = np.ascontiguousarray(params, dtype=np.float64)
    origin = np.ascontiguousarray(origin, dtype=np.float64)
    if xp is None or xp is np:
        d_params, d_origin = cuda.to_device(params), cuda.to_device(origin)
        grid = [cuda.device_array((n, size + 1, size + 1)) for _ in range(3)]
        out = cuda.device_array((n, size, size))
    else:
        d_params, d_origin = xp.asarray(params), xp.asarray(origin)
        grid = [xp.empty((n, size + 1, size + 1)) for _ in range(3)]
        out = xp.empty((n, size, size))
    if n:
        blocks = tuple((d + t - 1) // t for d, t in zip((n, size + 1, size + 1), threads))
        corner_grid[blocks, threads](d_params, d_origin, size, *grid)
        render_pixels[blocks, threads](d_params, d_origin, size, *grid, acc.eps_gate,
                                       acc.eps_abs, acc.eps_rel, acc.eps_cusp, acc.max_level,
                                       out)
    if xp is None or xp is np:
        return out.copy_to_host()
    return out
