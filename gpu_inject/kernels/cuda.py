"""CUDA loops around the physics: the same functions as kernels/cpu.py, compiled as device
functions by ``_jit.compile_physics``; only the loops differ (a thread per pixel).

``engine.GpuBackend`` runs them on CuPy arrays (cuFFT for the PSF, ``reduce_cuda`` for the
metrics); the tests run them under Numba's CUDA simulator against the CPU. Every launch goes
on CuPy's current stream (``launch_stream``), so ``with stream:`` around the engine puts its
CuPy operations and its Numba kernels on one stream, in program order.
"""
import numpy as np
from numba import cuda, float64

from ..physics.integrate import NODE_MEM
from ._jit import compile_physics

D = compile_physics(cuda.jit(device=True, inline=True))
lensed_sample = D.lensed_sample
pixel_value = D.pixel_value
block_gate = D.block_gate
block_pixel = D.block_pixel


def launch_stream(xp):
    """The stream a kernel on ``xp`` arrays is launched on: CuPy's current stream (the
    legacy default stream when none is set), 0 under the simulator (numpy, no streams)."""
    if xp is None or xp is np:
        return 0
    ptr = xp.cuda.get_current_stream().ptr
    return cuda.external_stream(ptr) if ptr else 0


def device_args(*arrays):
    """Kernel arguments: CuPy arrays as Numba device arrays *without* the host-side
    synchronisation Numba otherwise does on importing them (CUDA array interface v3, the
    array's stream): they are used on the stream that made them, which already orders the
    work on the device, and a host wait at every launch would stop batches overlapping.
    numpy arrays (the simulator) and scalars pass as they are."""
    return [cuda.as_cuda_array(a, sync=False) if hasattr(a, "__cuda_array_interface__")
            else a for a in arrays]


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
    """One thread per pixel: rule 0b on its 2 x 2 block (each of the block's threads
    decides it: the CPU decides once per block), else the gates from the shared corners and
    the quadtree where refused."""
    k, j, i = cuda.grid(3)
    if k < params.shape[0] and j < size and i < size:
        x0 = i - 0.5 - origin[k, 0]
        y0 = j - 0.5 - origin[k, 1]
        if block_gate(fcor[k], ucor[k], vcor[k], j, i, x0, y0, params[k], eps_gate):
            out[k, j, i] = block_pixel(fcor[k], j, i)
            return
        mem = cuda.local.array(NODE_MEM, float64)
        out[k, j, i] = pixel_value(fcor[k], ucor[k], vcor[k], j, i, x0, y0, params[k],
                                   eps_gate, eps_abs, eps_rel, eps_cusp, max_level, mem)


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
        stream = launch_stream(xp)
        d_params, d_origin, d_out, *d_grid = device_args(d_params, d_origin, out, *grid)
        corner_grid[blocks, threads, stream](d_params, d_origin, size, *d_grid)
        render_pixels[blocks, threads, stream](d_params, d_origin, size, *d_grid,
                                               acc.eps_gate, acc.eps_abs, acc.eps_rel,
                                               acc.eps_cusp, acc.max_level, d_out)
    if xp is None or xp is np:
        return out.copy_to_host()
    return out
