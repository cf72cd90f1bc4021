"""Adaptive integration of the lensed surface brightness over pixels (SPEC sections 2 and 6).

Each pixel's value is the integral of I(beta(theta)) over the unit square of the pixel, in
units of the source's unlensed total flux (the engine renders at unit flux and scales per
band afterwards). Lengths are pixels, model coordinates centred on the lens.

Rule. On a square cell of side h with corner values f00..f11 and centre value fc, midpoint
M = fc and trapezoid T = mean(corners) have errors -h^2 lap(f)/24 and +h^2 lap(f)/12, so
S5 = h^2 (2M + T) / 3 cancels the h^2 term (exact for cubics).

Adaptivity, per pixel:
  0. Stencil gate: from the corner samples alone (1 evaluation per pixel), the tensor cubic
     rule S4 on the 4 x 4 corners around the pixel (error O(h^4), like S5), accepted when
     |S4 - T| <= STENCIL_GATE eps_gate and the source plane under the stencil is smooth:
     the stencil stays STENCIL_CLEAR pixels from the lens centre and the pixel's image lies
     STENCIL_FAR reaches from the source centre. Most lit pixels end here.
     Before it, rule 0b: the same test on the 2 x 2 block of pixels that holds the pixel,
     from the corners at even indices only (a stencil of spacing 2, guards BLOCK_CLEAR and
     BLOCK_FAR), each pixel integrated by the cubic through those samples (block_pixel).
     Where it holds (the faint, smooth wings that fill most of the lit grid of an n > 1
     source) the odd corners are never sampled: the CPU loop samples even corners first.
  1. Gate: with the 5 samples of the pixel itself (shared with its neighbours: 2 evaluations
     per pixel), accept S5 when h^2 |M - T| <= eps_gate, or when the pixel has a rule-0
     stencil (its guard from the lens centre, not from the source centre) whose S4 agrees
     with S5 to eps_gate (rule 1b), and the pixel can hold neither the Sersic centre nor the
     lens centre. This is where the source plane is empty or smooth
     and faint; |M - T| bounds the S5 error there with a wide margin.
  2. Otherwise walk the pixel's quadtree depth first. A node compares its own S5 with the
     sum of its 4 children's S5 (13 samples, shared between the children; 5 of them come
     from its parent when a scratch still holds the parent's, and the root's from the
     gate); it is accepted when they differ by at most eps_abs h^2 + eps_rel |sum|, with
     the children's sum plus (sum - parent) / 15 as its value (Richardson: the rule's
     error is O(h^4), 16 times smaller for the children), else its children are visited.
  3. Two places where samples can miss what matters are refined regardless of the test while
     h^2 I(0) > eps_cusp (the most such a cell could hold): a cell holding the lens centre
     (the deflection has no limit there), and a cell whose source-plane image may contain
     the source centre, until that image is small next to R_e (a compact or demagnified
     image can fall between samples) and, for n > 1, all the way down (the profile is a
     cusp narrower than any sample spacing). A cell that only neighbours the source centre
     (its image lies more than one reach from it) stops NEAR_CUSP times earlier in h^2.
  4. A node that could not hold FLOOR of the flux even at the profile's peak is never split
     (near a cusp or the lens centre the test of rule 2 shrinks only like h^2).
The walk keeps only (level, ix, iy), children in Morton order, no stack and no recursion, so
that the same code is a CUDA device function; the summation order is fixed (deterministic).
"""
import math

from .layout import (P_G1, P_G2, P_LENS_B, P_LENS_COS, P_LENS_F, P_LENS_SIN, P_SRC_BN,
                     P_SRC_COS, P_SRC_I0, P_SRC_IE, P_SRC_INV_N, P_SRC_Q, P_SRC_R2CUT,
                     P_SRC_REFF, P_SRC_SIN, P_SRC_X, P_SRC_Y)
from .lens import (SIE_SERIES_F, ray_shoot_from, sie_arguments, sie_rotated,
                   sie_transcendentals)
from .sersic import (elliptical_radius2, sersic_exponent, sersic_log_argument,
                     sersic_power_exponent, sersic_profile_r2)

# A cell whose source-plane footprint (largest elliptical distance from its centre's image to
# its corners' images, "reach") times CUSP_REACH reaches the source centre may hold it; > 1
# covers the curvature of the lens map across one cell.
CUSP_REACH = 2.0
# Such a cell is split until its reach is below RESOLVE R_e, where the samples resolve the
# profile (n <= 1), and for cusps (n > 1) until it could not hold eps_cusp at all.
RESOLVE = 0.25
# ... and one within CUSP_REACH reaches but not within one (a neighbour, refined because the
# rule is poor next to a cusp, not because it may hold it) until it could not hold
# NEAR_CUSP eps_cusp. Measured on 3,516 draws against converged references (scratch sweep,
# the cached references of benchmarks/accuracy.py) and a count on random_tasks(256, seed 0):
# NEAR_CUSP 1 (none): worst flux 3.18e-4, peak 4.28e-3, 9,700 refinement samples per
# 90 x 90 stamp; 8: 3.15e-4, 4.89e-3, 8,430; 16: 4.49e-4, 6.27e-3, 8,060.
NEAR_CUSP = 8.0
# Samples of one node (3 x 3 children's corners, 4 children's centres), as stored in ``mem``.
NODE_SAMPLES = 13
NODE_MEM = 3 * NODE_SAMPLES  # float64 values of the scratch ``mem`` (f, u, v per sample)
# The CPU build keeps, per level of the walk, the samples of the last node that split there
# and those that node_samples_batched took for the 4 children below it (4 x 8 samples),
# after the 7 scratch arrays of its sample_points (32 values each).
NODE_SCRATCH = 7 * 32
NODE_LEVEL = NODE_MEM + 4 * 24


def level_base(level):
    """Where in ``mem`` a node of this level finds its parent's samples (and a node that
    splits leaves its own, at level + 1): one place for all levels here (the CUDA build,
    whose ``mem`` is a small local array); level_base_kept in the CPU build."""
    return 0


def level_base_kept(level):
    """level_base with a place per level (node_mem_size), so that no node's samples are
    overwritten by its descendants': every node finds its parent's."""
    return NODE_SCRATCH + level * NODE_LEVEL


def node_mem_size(max_level):
    """Length of the ``mem`` that level_base_kept and node_samples_batched need for walks
    to max_level."""
    return NODE_SCRATCH + (max_level + 2) * NODE_LEVEL
# Rule 4: a node with h^2 I(0) <= FLOOR (units of the source flux) is not split.
FLOOR = 1e-6
# Rule 0 (stencil_gate). |S4 - T| ~ h^2 |lap f| / 12 where rule 1's |M - T| is h^2 |lap f|
# / 8: 2/3 asks the same of the Laplacian. The cubic cannot follow the lens map near its
# centre (derivatives ~ 1 / r^k) nor the profile near its centre (a cusp for n > 1): the
# stencil keeps STENCIL_CLEAR pixels from the one and STENCIL_FAR reaches from the other.
# Measured with benchmarks/accuracy.py (--seed 0, and --draws 400 --seed 1 --no-corners)
# under the tolerances of then (eps_gate 3e-5): STENCIL_FAR = 2 let 4 of 608 draws out of
# SPEC 6, 4 and 8 none, with the worst errors of rule 1 alone.
STENCIL_GATE = 2.0 / 3.0
STENCIL_CLEAR = 4.0
STENCIL_FAR = 8.0
# Rule 0b on 2 x 2 blocks (spacing 2): twice rule 0's clearance from the lens centre, and
# rule 0's distance from the source centre in the (twice larger) reaches of the block.
# BLOCK_FAR 12 -> 8 against the converged references of benchmarks/accuracy.py (3,516
# draws: --draws 200 --seed 0, 300 --seed 3; --no-corners 400 --seed 1, 600 --seed 2,
# 2000 --seed 4): worst flux 3.05e-4 -> 3.04e-4, worst peak 4.89e-3 (unchanged), median
# flux error 1.2e-5 -> 1.7e-5 (6: 3.2e-5); pixels it accepts per 90 x 90 stamp 5,513 ->
# 6,480 of 8,100, so fewer odd corners to sample (`python benchmarks/sample_count.py` with
# BLOCK_FAR set to each); `gpu-inject bench`, 3 interleaved pairs: 1,179-1,295 -> 1,326-1,393.
BLOCK_CLEAR = 8.0
BLOCK_FAR = 8.0
# Side (pixels) of the blocks that the CPU loop proves dark (region_is_dark) before sampling.
DARK_BLOCK = 4


def lensed_sample(x, y, p):
    """I(beta(x, y)) and the source-plane offset (u, v) of beta from the source centre."""
    f = p[P_LENS_F]
    xp, yp, psi = sie_rotated(x, y, f, p[P_LENS_COS], p[P_LENS_SIN])
    atan_ft, log_ratio = sie_transcendentals(xp, yp, psi, f)
    u, v, r2 = source_offset(x, y, xp, yp, psi, p, atan_ft, log_ratio)
    if r2 > p[P_SRC_R2CUT]:
        return 0.0, u, v
    return sersic_profile_r2(r2, p[P_SRC_REFF], p[P_SRC_INV_N], p[P_SRC_BN], p[P_SRC_IE]), u, v


def source_offset(x, y, xp, yp, psi, p, atan_ft, log_ratio):
    """(u, v, R^2): the offset of beta(x, y) from the source centre and its elliptical
    radius squared, from the rotated point and the SIE's transcendentals (see lens.py)."""
    bx, by = ray_shoot_from(x, y, xp, yp, psi, p[P_LENS_B], p[P_LENS_F], p[P_LENS_COS],
                            p[P_LENS_SIN], p[P_G1], p[P_G2], atan_ft, log_ratio)
    u = bx - p[P_SRC_X]
    v = by - p[P_SRC_Y]
    return u, v, elliptical_radius2(u, v, p[P_SRC_Q], p[P_SRC_COS], p[P_SRC_SIN])


# Vector math of sample_points: a[:n] = exp(a[:n]) etc. and the count a call covers. Plain
# loops here, which say what they do; the CPU build (the one that calls sample_points) puts
# kernels/vecmath.py's in their place, which make one libmvec call per 8 values. Compiled,
# log(0) is -inf (sample_points relies on it at R = 0); Python's math.log raises there.
def lanes(n):
    """n rounded up to the vector width (1 here)."""
    return n


def exp_all(a, n):
    for k in range(n):
        a[k] = math.exp(a[k])


def log_all(a, n):
    for k in range(n):
        a[k] = math.log(a[k])


def atan_all(a, n):
    for k in range(n):
        a[k] = math.atan(a[k])


def sample_points(xs, ys, n, p, fo, uo, vo, t1, t2):
    """lensed_sample at the n points (xs[k], ys[k]) into fo/uo/vo[k], each transcendental
    call made on all of them at once: lensed_sample's own pieces (lens.py, sersic.py), with
    a loop between each call. t1, t2 are scratch; every array holds lanes(n) values (the
    lanes past n compute on harmless values)."""
    m = lanes(n)
    f = p[P_LENS_F]
    c = p[P_LENS_COS]
    s = p[P_LENS_SIN]
    series = f < SIE_SERIES_F   # the series needs no call
    for k in range(m):
        if k < n and not series:
            xp, yp, psi = sie_rotated(xs[k], ys[k], f, c, s)
            t1[k], t2[k] = sie_arguments(xp, yp, psi, f)
        else:
            t1[k] = 0.0
            t2[k] = 1.0
    if not series:
        atan_all(t1, m)
        log_all(t2, m)
    reff = p[P_SRC_REFF]
    for k in range(n):
        xp, yp, psi = sie_rotated(xs[k], ys[k], f, c, s)
        # fo holds R^2 until the last loop
        uo[k], vo[k], fo[k] = source_offset(xs[k], ys[k], xp, yp, psi, p, t1[k], t2[k])
        t1[k] = sersic_log_argument(fo[k], reff)   # at R = 0: log -inf, then I(0)
    for k in range(n, m):
        t1[k] = 1.0
    log_all(t1, m)
    inv_n = p[P_SRC_INV_N]
    for k in range(m):
        t1[k] = sersic_power_exponent(t1[k], inv_n)
    exp_all(t1, m)
    bn = p[P_SRC_BN]
    for k in range(m):
        t1[k] = sersic_exponent(t1[k], bn)
    exp_all(t1, m)
    cut = p[P_SRC_R2CUT]
    ie = p[P_SRC_IE]
    for k in range(n):
        fo[k] = 0.0 if fo[k] > cut else ie * t1[k]


def lens_distance2(x_lo, y_lo, x_hi, y_hi):
    """Squared distance from the lens centre (the origin) to the rectangle [x_lo, x_hi] x
    [y_lo, y_hi]; 0 when the rectangle holds it."""
    dx = max(max(x_lo, -x_hi), 0.0)
    dy = max(max(y_lo, -y_hi), 0.0)
    return dx * dx + dy * dy


def region_is_dark(x_lo, y_lo, x_hi, y_hi, p):
    """True when no point of the rectangle [x_lo, x_hi] x [y_lo, y_hi] can light up: every
    sample there has R^2 > R2CUT (lensed_sample returns 0), and no unit cell inside is one
    that must_split could refine. Then the gate would give each of its pixels exactly 0,
    and the caller may skip them. From a single ray shot at the centre:
      * the lens map beta = theta - alpha(theta) is Lipschitz on the rectangle with
        K = 1 + |gamma| + b / (q r_min): an isothermal potential has Hessian eigenvalues 0
        and 2 kappa, and 2 kappa = theta_E / sqrt(q x'^2 + y'^2 / q) <= b / (q r) for the SIE
        of lens.sie_deflection (b = theta_E sqrt(q)); r_min > 0 is the rectangle's distance
        to the lens centre (it must not hold it), and the rectangle is convex;
      * R is a norm with R(w) <= |w| / sqrt(q_src), so every point's R is at least
        R_centre - K d / sqrt(q_src), d the half-diagonal;
      * must_split's reach of a cell inside is at most K sqrt(1/2) / sqrt(q_src), and it
        refines only cells whose centre lies within CUSP_REACH reaches of the source.
    The 1e-9 margins cover the rounding of the bound itself."""
    cx, cy = region_centre(x_lo, y_lo, x_hi, y_hi)
    _, u, v = lensed_sample(cx, cy, p)
    return region_is_dark_from(x_lo, y_lo, x_hi, y_hi, p, u, v)


def region_centre(x_lo, y_lo, x_hi, y_hi):
    """The centre of the rectangle, where region_is_dark samples."""
    return x_lo + 0.5 * (x_hi - x_lo), y_lo + 0.5 * (y_hi - y_lo)


def region_is_dark_from(x_lo, y_lo, x_hi, y_hi, p, u, v):
    """region_is_dark given the source-plane offset (u, v) at region_centre (so that the
    CPU loop can sample a row of rectangles together)."""
    r_min = math.sqrt(lens_distance2(x_lo, y_lo, x_hi, y_hi))
    if r_min <= 0.0 or p[P_SRC_R2CUT] < 0.0:
        return False
    q_lens = math.sqrt(1.0 - p[P_LENS_F] * p[P_LENS_F])
    k = 1.0 + math.sqrt(p[P_G1] * p[P_G1] + p[P_G2] * p[P_G2]) + p[P_LENS_B] / (q_lens * r_min)
    stretch = k / math.sqrt(p[P_SRC_Q])
    half_x = 0.5 * (x_hi - x_lo)
    half_y = 0.5 * (y_hi - y_lo)
    r_low = (math.sqrt(elliptical_radius2(u, v, p[P_SRC_Q], p[P_SRC_COS], p[P_SRC_SIN]))
             - stretch * math.sqrt(half_x * half_x + half_y * half_y))
    need = max(math.sqrt(p[P_SRC_R2CUT]), CUSP_REACH * stretch * math.sqrt(0.5))
    return r_low > need * (1.0 + 1e-9) + 1e-9


def must_split(x0, y0, h, uc, vc, u00, v00, u10, v10, u01, v01, u11, v11, p, eps_cusp):
    """Rule 3 from the source-plane offsets of a cell's centre and corners: the cell may hold
    the lens centre or the source centre (see RESOLVE), and enough light to matter."""
    if h * h * p[P_SRC_I0] <= eps_cusp:
        return False
    if x0 <= 0.0 <= x0 + h and y0 <= 0.0 <= y0 + h:
        return True
    # On squared elliptical radii (R is a norm, so comparing squares is the same test and
    # saves the 5 square roots: this runs for most pixels of the gate).
    far2, reach2 = source_distance2(uc, vc, u00, v00, u10, v10, u01, v01, u11, v11, p)
    if far2 > CUSP_REACH * CUSP_REACH * reach2:
        return False
    if far2 > reach2 and h * h * p[P_SRC_I0] <= NEAR_CUSP * eps_cusp:
        return False
    return p[P_SRC_INV_N] < 1.0 or reach2 > RESOLVE * RESOLVE * p[P_SRC_REFF] * p[P_SRC_REFF]


def source_distance2(uc, vc, u00, v00, u10, v10, u01, v01, u11, v11, p):
    """(R^2 of the cell centre's image from the source centre, reach^2: the largest R^2
    from that image to its corners' images), R the source's elliptical radius."""
    q = p[P_SRC_Q]
    c = p[P_SRC_COS]
    s = p[P_SRC_SIN]
    reach2 = max(max(elliptical_radius2(u00 - uc, v00 - vc, q, c, s),
                     elliptical_radius2(u10 - uc, v10 - vc, q, c, s)),
                 max(elliptical_radius2(u01 - uc, v01 - vc, q, c, s),
                     elliptical_radius2(u11 - uc, v11 - vc, q, c, s)))
    return elliptical_radius2(uc, vc, q, c, s), reach2


def s5(h, f00, f10, f01, f11, fc):
    """h^2 (2 M + T) / 3."""
    return h * h * (2.0 * fc + 0.25 * ((f00 + f10) + (f01 + f11))) * (1.0 / 3.0)


def gate(f00, f10, f01, f11, fc, eps_gate):
    """Rule 1 on a unit pixel from its 5 shared samples: (S5, smooth enough); the caller
    also asks must_split."""
    t = 0.25 * ((f00 + f10) + (f01 + f11))
    return s5(1.0, f00, f10, f01, f11, fc), abs(fc - t) <= eps_gate


def mem_put(mem, at, k, f, u, v):
    """Store sample k (f, u, v) of a node in ``mem`` from index ``at`` (level_base)."""
    mem[at + 3 * k] = f
    mem[at + 3 * k + 1] = u
    mem[at + 3 * k + 2] = v


def mem_get(mem, at, k):
    return mem[at + 3 * k], mem[at + 3 * k + 1], mem[at + 3 * k + 2]


def node_points(x0, y0, h):
    """(x, y) of the 8 samples a node adds to the 5 it can share with its parent (its
    corners and centre): the midpoints of its edges, f01, f10, f12, f21, and its children's
    centres, ca, cb, cc, cd (names of ``node``)."""
    g = 0.5 * h
    x1 = x0 + g
    x2 = x0 + h
    y1 = y0 + g
    y2 = y0 + h
    return (x1, y0, x0, y1, x2, y1, x1, y2,
            x0 + 0.5 * g, y0 + 0.5 * g, x1 + 0.5 * g, y0 + 0.5 * g,
            x0 + 0.5 * g, y1 + 0.5 * g, x1 + 0.5 * g, y1 + 0.5 * g)


def node_samples(x0, y0, h, p, mem, level, cx, cy):
    """(f, u, v) of lensed_sample at each of the 8 node_points, in order. One function so
    that the CPU build can put node_samples_batched in its place (the other arguments are
    for that one)."""
    t = node_points(x0, y0, h)
    f0, u0, v0 = lensed_sample(t[0], t[1], p)
    f1, u1, v1 = lensed_sample(t[2], t[3], p)
    f2, u2, v2 = lensed_sample(t[4], t[5], p)
    f3, u3, v3 = lensed_sample(t[6], t[7], p)
    f4, u4, v4 = lensed_sample(t[8], t[9], p)
    f5, u5, v5 = lensed_sample(t[10], t[11], p)
    f6, u6, v6 = lensed_sample(t[12], t[13], p)
    f7, u7, v7 = lensed_sample(t[14], t[15], p)
    return (f0, u0, v0, f1, u1, v1, f2, u2, v2, f3, u3, v3,
            f4, u4, v4, f5, u5, v5, f6, u6, v6, f7, u7, v7)


def node_samples_batched(x0, y0, h, p, mem, level, cx, cy):
    """node_samples through sample_points, each transcendental call made on many points at
    once. Below the root the walk visits the 4 children of a node that split one after the
    other, child (cx, cy) = (0, 0) first, and each needs its 8: that one samples the 32 of
    all 4 and keeps them in ``mem`` at its level for the other 3 (their descendants keep
    theirs at deeper levels): it needs level_base_kept's layout."""
    at = level_base(level) + NODE_MEM
    if level == 0 or (cx == 0 and cy == 0):
        siblings = 1 if level == 0 else 4
        xs = mem[0:32]   # the NODE_SCRATCH at the start of mem: 7 arrays of 32
        ys = mem[32:64]
        fo = mem[64:96]
        uo = mem[96:128]
        vo = mem[128:160]
        for c in range(siblings):
            t = node_points(x0 + (c & 1) * h, y0 + (c >> 1) * h, h)
            for k in range(8):
                xs[8 * c + k] = t[2 * k]
                ys[8 * c + k] = t[2 * k + 1]
        sample_points(xs, ys, 8 * siblings, p, fo, uo, vo, mem[160:192], mem[192:224])
        for k in range(8 * siblings):
            mem_put(mem, at, k, fo[k], uo[k], vo[k])
    m = mem[at + 24 * (cx + 2 * cy):at + 24 * (cx + 2 * cy) + 24]
    return (m[0], m[1], m[2], m[3], m[4], m[5], m[6], m[7], m[8], m[9], m[10], m[11],
            m[12], m[13], m[14], m[15], m[16], m[17], m[18], m[19], m[20], m[21], m[22], m[23])


def node(x0, y0, h, p, eps_abs, eps_rel, eps_cusp, mem, known, level, cx, cy):
    """Rules 2 and 3 on one quadtree node: (sum of the children's S5, split further).

    Its 13 samples: the 3 x 3 grid of its children's corners (f<row><col>, sample 3 row +
    col in ``mem`` from level_base) and its 4 children's centres (samples 9 + Morton
    index). When ``known``, ``mem`` holds those of its parent at level_base(level), and this
    node is the parent's child (cx, cy): its corners and centre are read from there, 8
    samples are new (node_samples). A node that splits leaves its own 13 at
    level_base(level + 1) for its children."""
    g = 0.5 * h
    x1 = x0 + g
    x2 = x0 + h
    y1 = y0 + g
    y2 = y0 + h
    at = level_base(level)
    if known:
        f00, u00, v00 = mem_get(mem, at, 3 * cy + cx)
        f02, u02, v02 = mem_get(mem, at, 3 * cy + cx + 1)
        f20, u20, v20 = mem_get(mem, at, 3 * cy + cx + 3)
        f22, u22, v22 = mem_get(mem, at, 3 * cy + cx + 4)
        f11, u11, v11 = mem_get(mem, at, 9 + cx + 2 * cy)
    else:
        f00, u00, v00 = lensed_sample(x0, y0, p)
        f02, u02, v02 = lensed_sample(x2, y0, p)
        f20, u20, v20 = lensed_sample(x0, y2, p)
        f22, u22, v22 = lensed_sample(x2, y2, p)
        f11, u11, v11 = lensed_sample(x1, y1, p)
    (f01, u01, v01, f10, u10, v10, f12, u12, v12, f21, u21, v21,
     ca, uca, vca, cb, ucb, vcb, cc, ucc, vcc, cd, ucd, vcd) = node_samples(x0, y0, h, p, mem,
                                                                            level, cx, cy)
    parent = s5(h, f00, f02, f20, f22, f11)
    children = ((s5(g, f00, f01, f10, f11, ca) + s5(g, f01, f02, f11, f12, cb))
                + (s5(g, f10, f11, f20, f21, cc) + s5(g, f11, f12, f21, f22, cd)))
    if h * h * p[P_SRC_I0] <= FLOOR:  # rule 4
        return children, False
    split = abs(children - parent) > eps_abs * h * h + eps_rel * abs(children)
    if not split:
        split = must_split(x0, y0, h, u11, v11, u00, v00, u02, v02, u20, v20, u22, v22, p,
                           eps_cusp)
    if split:
        below = level_base(level + 1)
        mem_put(mem, below, 0, f00, u00, v00)
        mem_put(mem, below, 1, f01, u01, v01)
        mem_put(mem, below, 2, f02, u02, v02)
        mem_put(mem, below, 3, f10, u10, v10)
        mem_put(mem, below, 4, f11, u11, v11)
        mem_put(mem, below, 5, f12, u12, v12)
        mem_put(mem, below, 6, f20, u20, v20)
        mem_put(mem, below, 7, f21, u21, v21)
        mem_put(mem, below, 8, f22, u22, v22)
        mem_put(mem, below, 9, ca, uca, vca)
        mem_put(mem, below, 10, cb, ucb, vcb)
        mem_put(mem, below, 11, cc, ucc, vcc)
        mem_put(mem, below, 12, cd, ucd, vcd)
    # Richardson's extrapolation of the O(h^4) rule; with it the node tolerances could be
    # 5 times looser (engine.Accuracy) for the same worst errors (see engine.Accuracy).
    return children + (children - parent) * (1.0 / 15.0), split


def cubic_rule(f0, f1, f2, f3):
    """(-f0 + 13 f1 + 13 f2 - f3) / 24: the integral over [0, 1] of the cubic through samples
    at -1, 0, 1, 2 (exact for cubics)."""
    return (13.0 * (f1 + f2) - (f0 + f3)) * (1.0 / 24.0)


def half_rule(f0, f1, f2, f3, half):
    """The integral of the cubic through samples at -1, 0, 1, 2 over [0, 1/2] (half 0) or
    [1/2, 1] (half 1), times 2: one pixel of a block of two on samples of spacing 2. The
    weights are the integrals of the Lagrange basis polynomials; the halves add up to
    twice cubic_rule."""
    if half == 1:
        return (155.0 * f2 + 53.0 * f1 - (9.0 * f3 + 7.0 * f0)) * (1.0 / 192.0)
    return (155.0 * f1 + 53.0 * f2 - (9.0 * f0 + 7.0 * f3)) * (1.0 / 192.0)


def cubic_row(fcor, j, i, step):
    """cubic_rule along row j of the corner grid, on corners i - step .. i + 2 step."""
    return cubic_rule(fcor[j, i - step], fcor[j, i], fcor[j, i + step], fcor[j, i + 2 * step])


def stencil_value(fcor, j, i, step):
    """Mean over the cell with corners fcor[j, i] and fcor[j + step, i + step] (a pixel for
    step 1, a 2 x 2 block for step 2) by the tensor product of the cubic rule on the 4 x 4
    corners of spacing step around it, and its trapezoid T."""
    r0 = cubic_row(fcor, j - step, i, step)
    r1 = cubic_row(fcor, j, i, step)
    r2 = cubic_row(fcor, j + step, i, step)
    r3 = cubic_row(fcor, j + 2 * step, i, step)
    t = 0.25 * ((fcor[j, i] + fcor[j, i + step]) + (fcor[j + step, i] + fcor[j + step, i + step]))
    return cubic_rule(r0, r1, r2, r3), t


def stencil_gate(fcor, ucor, vcor, j, i, step, x0, y0, p, eps_gate):
    """Rule 0 (step 1) or 0b (step 2) on the cell with corners fcor/ucor/vcor[j, i] and
    [j + step, i + step] and lower corner (x0, y0): (its mean S4, whether there is one,
    accepted). Cells on the grid's edge or whose stencil comes near the lens centre have
    none (S4 0, not accepted)."""
    if not (step <= j < fcor.shape[0] - 2 * step and step <= i < fcor.shape[1] - 2 * step):
        return 0.0, False, False
    clear = STENCIL_CLEAR if step == 1 else BLOCK_CLEAR
    far = STENCIL_FAR if step == 1 else BLOCK_FAR
    # the stencil's extent
    if lens_distance2(x0 - step, y0 - step, x0 + 2.0 * step, y0 + 2.0 * step) < clear * clear:
        return 0.0, False, False
    s4, t = stencil_value(fcor, j, i, step)
    if abs(s4 - t) > STENCIL_GATE * eps_gate:
        return s4, True, False
    u00 = ucor[j, i]
    u10 = ucor[j, i + step]
    u01 = ucor[j + step, i]
    u11 = ucor[j + step, i + step]
    v00 = vcor[j, i]
    v10 = vcor[j, i + step]
    v01 = vcor[j + step, i]
    v11 = vcor[j + step, i + step]
    far2, reach2 = source_distance2(0.25 * ((u00 + u10) + (u01 + u11)),
                                    0.25 * ((v00 + v10) + (v01 + v11)),
                                    u00, v00, u10, v10, u01, v01, u11, v11, p)
    return s4, True, far2 > far * far * reach2


def block_gate(fcor, ucor, vcor, j, i, x0, y0, p, eps_gate):
    """Rule 0b for pixel (j, i) with lower corner (x0, y0): is its 2 x 2 block (pixels
    2 (j // 2) .. + 1, same in i) accepted, from the corners at even indices."""
    jb = j - j % 2
    ib = i - i % 2
    return stencil_gate(fcor, ucor, vcor, jb, ib, 2, x0 - (i % 2), y0 - (j % 2), p,
                        eps_gate)[2]


def half_row(fcor, j, ib, half):
    """half_rule along row j of the corner grid, on the even corners ib - 2 .. ib + 4."""
    return half_rule(fcor[j, ib - 2], fcor[j, ib], fcor[j, ib + 2], fcor[j, ib + 4], half)


def block_pixel(fcor, j, i):
    """Integral over pixel (j, i) of the tensor cubic through the 4 x 4 even corners
    around its 2 x 2 block (rule 0b's value)."""
    jb = j - j % 2
    ib = i - i % 2
    return half_rule(half_row(fcor, jb - 2, ib, i % 2), half_row(fcor, jb, ib, i % 2),
                     half_row(fcor, jb + 2, ib, i % 2), half_row(fcor, jb + 4, ib, i % 2),
                     j % 2)


def pixel_value(fcor, ucor, vcor, j, i, x0, y0, p, eps_gate, eps_abs, eps_rel, eps_cusp,
                max_level, mem):
    """Integral over the unit pixel with lower corner (x0, y0), whose corners are
    fcor/ucor/vcor[j:j+2, i:i+2] on a grid of corner samples: rule 0 (reading the
    neighbours' corners too), else pixel_from_centre. The CUDA loop calls this; the CPU
    loop calls stencil_gate and pixel_from_centre itself, to sample the centres of a row
    of pixels together."""
    s4, stencil, ok = stencil_gate(fcor, ucor, vcor, j, i, 1, x0, y0, p, eps_gate)
    if ok:
        return s4
    fc, uc, vc = lensed_sample(x0 + 0.5, y0 + 0.5, p)
    return pixel_from_centre(fcor, ucor, vcor, j, i, x0, y0, p, s4, stencil, fc, uc, vc,
                             eps_gate, eps_abs, eps_rel, eps_cusp, max_level, mem)


def pixel_from_centre(fcor, ucor, vcor, j, i, x0, y0, p, s4, stencil, fc, uc, vc, eps_gate,
                      eps_abs, eps_rel, eps_cusp, max_level, mem):
    """pixel_value after rule 0 (its S4 and whether there was a stencil), given the sample
    (fc, uc, vc) at the pixel's centre: rule 1 with it, else the quadtree walk, whose root
    reuses these 5 samples."""
    f00, u00, v00 = fcor[j, i], ucor[j, i], vcor[j, i]
    f10, u10, v10 = fcor[j, i + 1], ucor[j, i + 1], vcor[j, i + 1]
    f01, u01, v01 = fcor[j + 1, i], ucor[j + 1, i], vcor[j + 1, i]
    f11, u11, v11 = fcor[j + 1, i + 1], ucor[j + 1, i + 1], vcor[j + 1, i + 1]
    s, ok = gate(f00, f10, f01, f11, fc, eps_gate)
    # rule 1b: S4 and S5 are two rules of order h^4 on different samples; when they agree
    # the pixel needs no walk either
    if (ok or (stencil and abs(s4 - s) <= eps_gate)) and not must_split(
            x0, y0, 1.0, uc, vc, u00, v00, u10, v10, u01, v01, u11, v11, p, eps_cusp):
        return s
    # The root node reads its corners and centre where a child reads them from its parent's
    # samples: child (0, 0) of a parent whose 3 x 3 grid has this pixel's corners at 0, 1,
    # 3, 4 and whose first child-centre (9) is this pixel's centre.
    root = level_base(0)
    mem_put(mem, root, 0, f00, u00, v00)
    mem_put(mem, root, 1, f10, u10, v10)
    mem_put(mem, root, 3, f01, u01, v01)
    mem_put(mem, root, 4, f11, u11, v11)
    mem_put(mem, root, 9, fc, uc, vc)
    return refine_pixel(x0, y0, p, eps_abs, eps_rel, eps_cusp, max_level, mem, True)


def refine_pixel(x0, y0, p, eps_abs, eps_rel, eps_cusp, max_level, mem, known):
    """Integral over the unit pixel with lower corner (x0, y0), by the quadtree walk.

    ``mem``: float64 scratch (the loops own it: a local array of NODE_MEM on the GPU, an
    array of node_mem_size per thread on the CPU). A node reuses its parent's samples when
    ``mem`` still holds them: always with the CPU's level_base_kept; with one place for all
    levels, for a first child, and for later ones when their elder siblings were leaves
    (the common case near the bottom of the tree). ``known``: ``mem`` already holds the
    pixel's own corners and centre, laid out as ``pixel_value`` puts them."""
    kept = level_base(1) != level_base(0)   # no node's samples are ever overwritten
    total = 0.0
    level = 0
    ix = 0
    iy = 0
    while True:
        h = math.ldexp(1.0, -level)
        val, split = node(x0 + ix * h, y0 + iy * h, h, p, eps_abs, eps_rel, eps_cusp, mem,
                          known, level, ix & 1, iy & 1)
        if split and level < max_level:
            level += 1
            ix *= 2
            iy *= 2
            known = True
            continue
        total += val
        if split:
            known = kept  # it overwrote its parent's samples, unless kept
        # next node: the next sibling, else the parent's next sibling, ...
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
            known = kept  # mem holds a descendant's samples, unless kept
        if level == 0:
            return total
