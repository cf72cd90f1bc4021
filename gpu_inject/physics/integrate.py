"""Adaptive integration of the lensed surface brightness over pixels (SPEC sections 2 and 6).

Each pixel's value is the integral of I(beta(theta)) over the unit square of the pixel, in
units of the source's unlensed total flux (the engine renders at unit flux and scales per
band afterwards). Lengths are pixels, model coordinates centred on the lens.

The rule for a square cell of side h with corner values f00..f11 and centre value fc:
midpoint M = fc, trapezoid T = mean(corners); S = h^2 (2M + T) / 3 is exact for cubics (the
2-D Simpson weight on the centre), and h^2 |M - T| overestimates the error of S for smooth
integrands by a large factor (it is ~3x the midpoint error, itself ~h^2 f''). A cell is
refined into 4 when
  - h^2 |M - T| > eps_abs h^2 + eps_rel |S| (the integrand still varies), or
  - its source-plane image may hold the Sersic centre (for n > 1/2 the profile is a cusp
    between samples that M and T can both miss) and h^2 I(0) > eps_cusp, or
  - it holds the lens centre (the deflection has no limit there) and h^2 I(0) > eps_cusp.
The last two make the worst case of an accepted cell bounded by eps_cusp, whatever the
samples say. The root cell of each pixel takes its 5 samples from grids shared with its
neighbours (2 evaluations per pixel where nothing varies); refinement walks the quadtree of
the pixel depth first without a stack (level, ix, iy only), so that the same code runs as a
CUDA device function.
"""
import math

from .layout import (P_G1, P_G2, P_LENS_COS, P_LENS_Q, P_LENS_SIN, P_SRC_BN, P_SRC_COS,
                     P_SRC_I0, P_SRC_IE, P_SRC_INV_N, P_SRC_Q, P_SRC_REFF, P_SRC_SIN,
                     P_SRC_X, P_SRC_Y, P_THETA_E)
from .lens import ray_shoot
from .sersic import elliptical_radius, sersic_profile

# A cell whose source-plane footprint (max elliptical distance from its centre's image to its
# corners' images) times this factor reaches the source centre may hold the cusp. The factor
# > 1 covers the curvature of the lens map across one cell.
CUSP_REACH = 2.0


def lensed_sample(x, y, p):
    """I(beta(x, y)) and the source-plane offset (u, v) of beta from the source centre."""
    bx, by = ray_shoot(x, y, p[P_THETA_E], p[P_LENS_Q], p[P_LENS_COS], p[P_LENS_SIN],
                       p[P_G1], p[P_G2])
    u = bx - p[P_SRC_X]
    v = by - p[P_SRC_Y]
    r = elliptical_radius(u, v, p[P_SRC_Q], p[P_SRC_COS], p[P_SRC_SIN])
    return sersic_profile(r, p[P_SRC_REFF], p[P_SRC_INV_N], p[P_SRC_BN], p[P_SRC_IE]), u, v


def may_hold_cusp(uc, vc, u00, v00, u10, v10, u01, v01, u11, v11, p):
    """True when the source centre may lie in the source-plane image of the cell."""
    q = p[P_SRC_Q]
    c = p[P_SRC_COS]
    s = p[P_SRC_SIN]
    reach = max(max(elliptical_radius(u00 - uc, v00 - vc, q, c, s),
                    elliptical_radius(u10 - uc, v10 - vc, q, c, s)),
                max(elliptical_radius(u01 - uc, v01 - vc, q, c, s),
                    elliptical_radius(u11 - uc, v11 - vc, q, c, s)))
    return elliptical_radius(uc, vc, q, c, s) <= CUSP_REACH * reach


def cell_rule(x0, y0, h, f00, f10, f01, f11, fc, near_cusp, p, eps_abs, eps_rel, eps_cusp):
    """(S, refine) for the cell [x0, x0 + h] x [y0, y0 + h] from its 5 samples."""
    area = h * h
    t = 0.25 * ((f00 + f10) + (f01 + f11))
    s = area * (2.0 * fc + t) / 3.0
    refine = area * abs(fc - t) > eps_abs * area + eps_rel * abs(s)
    if not refine and area * p[P_SRC_I0] > eps_cusp:
        holds_lens = x0 <= 0.0 and 0.0 <= x0 + h and y0 <= 0.0 and 0.0 <= y0 + h
        refine = near_cusp or holds_lens
    return s, refine


def sample_cell(x0, y0, h, p, eps_abs, eps_rel, eps_cusp):
    """Evaluate the 5 samples of a cell and apply the rule: (S, refine)."""
    f00, u00, v00 = lensed_sample(x0, y0, p)
    f10, u10, v10 = lensed_sample(x0 + h, y0, p)
    f01, u01, v01 = lensed_sample(x0, y0 + h, p)
    f11, u11, v11 = lensed_sample(x0 + h, y0 + h, p)
    fc, uc, vc = lensed_sample(x0 + 0.5 * h, y0 + 0.5 * h, p)
    near = may_hold_cusp(uc, vc, u00, v00, u10, v10, u01, v01, u11, v11, p)
    return cell_rule(x0, y0, h, f00, f10, f01, f11, fc, near, p, eps_abs, eps_rel, eps_cusp)


def refine_pixel(x0, y0, p, eps_abs, eps_rel, eps_cusp, max_level):
    """Integral over the unit pixel with lower corner (x0, y0) whose root cell asked for
    refinement: depth-first over its quadtree, children in Morton order (deterministic)."""
    total = 0.0
    level = 1
    ix = 0
    iy = 0
    while level > 0:
        h = math.ldexp(1.0, -level)
        s, refine = sample_cell(x0 + ix * h, y0 + iy * h, h, p, eps_abs, eps_rel, eps_cusp)
        if refine and level < max_level:
            level += 1
            ix *= 2
            iy *= 2
            continue
        total += s
        # next cell: the next sibling, or the parent's next sibling, ...
        while level > 0:
            child = (ix & 1) | ((iy & 1) << 1)
            if child == 0:
                ix += 1
                break
            if child == 1:
                ix -= 1
                iy += 1
                break
            if child == 2:
                ix += 1
                break
            ix >>= 1
            iy >>= 1
            level -= 1
    return total
