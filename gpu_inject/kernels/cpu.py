"""CPU loops around the physics: one stamp per thread (prange), pixels in a fixed order.

Only the loops live here; every formula comes from ``gpu_inject.physics`` through
``_jit.compile_physics``. Results do not depend on the thread count or batch composition:
each stamp is computed by one thread from its own parameters only.
"""
import numba
import numpy as np

from ..physics.integrate import DARK_BLOCK
from . import vecmath
from ._jit import compile_physics, configure_numba_cache

configure_numba_cache()
# Vector math where this machine has it (vecmath), the walk's nodes sampling their new
# points through it, and a place in ``mem`` per level of the walk.
J = compile_physics(numba.njit(error_model="numpy"),
                    numba.njit(error_model="numpy", inline="always"),
                    {"lanes": vecmath.padded, "exp_all": vecmath.vexp, "log_all": vecmath.vlog,
                     "atan_all": vecmath.vatan, "node_samples": "node_samples_batched",
                     "level_base": "level_base_kept"})
lensed_sample = J.lensed_sample
region_centre = J.region_centre
region_is_dark_from = J.region_is_dark_from
block_gate = J.block_gate
block_pixel = J.block_pixel
stencil_gate = J.stencil_gate
pixel_from_centre = J.pixel_from_centre
sample_points = J.sample_points
node_mem_size = J.node_mem_size


@numba.njit(inline="always")
def _sample_row(fcor, ucor, vcor, j, need, start, step, size, ox, oy, p, cols, xs, ys, fo, uo,
                vo, t1, t2):
    """The corners (j, i) with need[j, i], i = start, start + step, .. <= size, at (i - 0.5 -
    ox, j - 0.5 - oy), sampled together into the grids (the rest are scratch)."""
    n = 0
    for i in range(start, size + 1, step):
        if need[j, i]:
            cols[n] = i
            xs[n] = i - 0.5 - ox
            ys[n] = j - 0.5 - oy
            n += 1
    sample_points(xs, ys, n, p, fo, uo, vo, t1, t2)
    for k in range(n):
        fcor[j, cols[k]] = fo[k]
        ucor[j, cols[k]] = uo[k]
        vcor[j, cols[k]] = vo[k]


@numba.njit(parallel=True, cache=True, nogil=True, error_model="numpy")
def render_batch(params, origin, size, eps_gate, eps_abs, eps_rel, eps_cusp, max_level, out,
                 block=DARK_BLOCK):
    """Pixel integrals of the lensed source for each stamp, at unit source flux.

    params: float64 [n, NPARAM] (``physics.layout``); origin: float64 [n, 2], the lens centre
    in render-grid pixel coordinates (x, y); out: float64 [n, size, size]. Pixel (i, j) is the
    unit square centred on x = i, y = j. Blocks of block x block pixels that
    ``region_is_dark`` proves dark are 0 without a sample (block 0: none is tried; sampled,
    such a pixel gets below 1e-9 (tested), the stencils reading corners beyond it; and every
    other pixel is the same bit for bit). The corners of every other pixel come from a grid
    shared between neighbours, sampled in two passes: the corners at even indices, which
    rule 0b (``block_gate``) reads, then the others where a pixel of a block it refused
    reads them (its 4 x 4 stencil, rule 0's, then its centre and the walk if the gates
    refuse it: ``pixel_value``'s steps, the centres of a row sampled together).
    """
    n = params.shape[0]
    b = max(block, 1)
    nblock = (size + b - 1) // b
    half = (size + 1) // 2
    for k in numba.prange(n):
        p = params[k]
        ox = origin[k, 0]
        oy = origin[k, 1]
        fcor = np.empty((size + 1, size + 1))
        ucor = np.empty((size + 1, size + 1))
        vcor = np.empty((size + 1, size + 1))
        mem = np.empty(node_mem_size(max_level))
        # a row of points to sample, and sample_points' outputs and scratch
        row = vecmath.padded(size + 1)
        cols = np.empty(row, dtype=np.int64)
        xs = np.empty(row)
        ys = np.empty(row)
        fo = np.empty(row)
        uo = np.empty(row)
        vo = np.empty(row)
        t1 = np.empty(row)
        t2 = np.empty(row)
        s4s = np.empty(row)   # rule 0's S4 of a row's pixels that go on from their centres
        stencils = np.empty(row, dtype=np.bool_)
        # 0. the dark blocks, from a sample at each one's centre, a row of blocks at a time
        dark = np.zeros((nblock, nblock), dtype=np.bool_)
        if block > 0:
            for bj in range(nblock):
                y_lo = bj * b - 0.5 - oy
                y_hi = min(bj * b + b, size) - 0.5 - oy
                for bi in range(nblock):
                    xs[bi], ys[bi] = region_centre(bi * b - 0.5 - ox, y_lo,
                                                   min(bi * b + b, size) - 0.5 - ox, y_hi)
                sample_points(xs, ys, nblock, p, fo, uo, vo, t1, t2)
                for bi in range(nblock):
                    dark[bj, bi] = region_is_dark_from(bi * b - 0.5 - ox, y_lo,
                                                       min(bi * b + b, size) - 0.5 - ox, y_hi,
                                                       p, uo[bi], vo[bi])
        cell = np.arange(size) // b   # a pixel's dark block (b is not a constant: no
        # division per pixel)
        # the 2 x 2 blocks of rule 0b holding a pixel that is not dark
        lit = np.zeros((half, half), dtype=np.bool_)
        for jb in range(half):
            for ib in range(half):
                j1 = min(2 * jb + 1, size - 1)
                i1 = min(2 * ib + 1, size - 1)
                lit[jb, ib] = not (dark[cell[2 * jb], cell[2 * ib]]
                                   and dark[cell[2 * jb], cell[i1]]
                                   and dark[cell[j1], cell[2 * ib]] and dark[cell[j1], cell[i1]])
        # 1. the even corners that a lit block's stencil reads (rows and columns
        # 2 jb - 2 .. 2 jb + 4)
        need = np.zeros((size + 1, size + 1), dtype=np.bool_)
        for jb in range(half):
            for ib in range(half):
                if lit[jb, ib]:
                    for j in range(max(2 * jb - 2, 0), min(2 * jb + 4, size) + 1, 2):
                        for i in range(max(2 * ib - 2, 0), min(2 * ib + 4, size) + 1, 2):
                            need[j, i] = True
        for j in range(0, size + 1, 2):
            _sample_row(fcor, ucor, vcor, j, need, 0, 2, size, ox, oy, p, cols, xs, ys, fo, uo,
                        vo, t1, t2)
        # 2. rule 0b once per lit block
        accepted = np.zeros((half, half), dtype=np.bool_)
        refused = np.zeros((half, half), dtype=np.bool_)
        for jb in range(half):
            for ib in range(half):
                if lit[jb, ib]:
                    accepted[jb, ib] = block_gate(fcor, ucor, vcor, 2 * jb, 2 * ib,
                                                  2 * ib - 0.5 - ox, 2 * jb - 0.5 - oy, p,
                                                  eps_gate)
                    refused[jb, ib] = not accepted[jb, ib]
        # 3. the other corners that a pixel of a refused block reads (the 4 x 4 corners of
        # its pixels: rows and columns 2 jb - 1 .. 2 jb + 3); the even ones are sampled
        need[:, :] = False
        for jb in range(half):
            for ib in range(half):
                if refused[jb, ib]:
                    for j in range(max(2 * jb - 1, 0), min(2 * jb + 3, size) + 1):
                        for i in range(max(2 * ib - 1, 0), min(2 * ib + 3, size) + 1):
                            need[j, i] = j % 2 == 1 or i % 2 == 1
        for j in range(size + 1):
            _sample_row(fcor, ucor, vcor, j, need, 0, 1, size, ox, oy, p, cols, xs, ys, fo, uo,
                        vo, t1, t2)
        # 4. each pixel: 0 if dark, rule 0b's value if its block was accepted, else rule 0;
        # the pixels rule 0 refuses go on from their centres, sampled a row at a time
        for j in range(size):
            y0 = j - 0.5 - oy
            n_row = 0
            for i in range(size):
                if dark[cell[j], cell[i]]:
                    out[k, j, i] = 0.0
                elif accepted[j // 2, i // 2]:
                    out[k, j, i] = block_pixel(fcor, j, i)
                else:
                    x0 = i - 0.5 - ox
                    s4, stencil, ok = stencil_gate(fcor, ucor, vcor, j, i, 1, x0, y0, p,
                                                   eps_gate)
                    if ok:
                        out[k, j, i] = s4
                    else:
                        cols[n_row] = i
                        xs[n_row] = x0 + 0.5
                        ys[n_row] = y0 + 0.5
                        s4s[n_row] = s4
                        stencils[n_row] = stencil
                        n_row += 1
            sample_points(xs, ys, n_row, p, fo, uo, vo, t1, t2)
            for c in range(n_row):
                i = cols[c]
                out[k, j, i] = pixel_from_centre(fcor, ucor, vcor, j, i, i - 0.5 - ox, y0, p,
                                                 s4s[c], stencils[c], fo[c], uo[c], vo[c],
                                                 eps_gate, eps_abs, eps_rel, eps_cusp,
                                                 max_level, mem)
