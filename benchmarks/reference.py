"""Independent, converged reference of the pre-PSF lensed image (SPEC sections 2 and 6).

Shares no code with ``gpu_inject``: the lens mapping beta(theta) is lenstronomy's
``LensModel.ray_shooting`` (SIE or SIS, plus SHEAR), the source a numpy Sersic written here, and
the pixel integrals come from a breadth-first adaptive cubature unrelated to
``gpu_inject/physics/integrate.py``:

* every cell is integrated with the tensor 4x4 Gauss-Legendre rule (exact for polynomials of
  degree 7 in each variable), and compared with the sum of the same rule over its 4 children;
* a cell is split while |Q(cell) - sum Q(children)| > ``tol`` (absolute, in units of the
  source's unlensed flux; 1e-10 by default), and its children's sum is accepted otherwise;
* whatever the estimate says, a cell is split while it is larger than ``h_min`` (1e-5 px) and
  lies within ``near`` cell sizes of an image of the source centre (lenstronomy's
  ``LensEquationSolver``; the Sersic profile is a cusp there, which the Gauss nodes could step
  over) or of the lens centre (the deflection has no limit there);
* all active cells of one level are one numpy batch (chunked to bound memory).

``reference_image(task, stamp_size, lens_offset, pixscale)`` returns float64 [S, S], the
integral of the surface brightness over each stamp pixel at unit unlensed source flux, with the
lens centre at pixel coordinates (S//2 + offset); pixel (i, j) is the unit square centred on
x = i, y = j, arrays [y, x] (SPEC section 1).

Run ``python benchmarks/reference.py`` for a convergence check of the cuspiest case
(n = 4, R_e = 0.1"): the image with ``tol`` and ``tol / 2`` (and ``h_min / 10``).
"""
import argparse
import math
import time

import numpy as np
from scipy.spatial import cKDTree
from scipy.special import gammaln

from lenstronomy.LensModel.lens_model import LensModel
from lenstronomy.LensModel.Solver.lens_equation_solver import LensEquationSolver

_T, _W = np.polynomial.legendre.leggauss(4)           # nodes, weights on [-1, 1]
_U = 0.5 * (_T + 1.0)                                 # nodes on [0, 1]
_W2 = np.outer(_W, _W).ravel() / 4.0                  # tensor weights on the unit square (sum 1)
_UX = np.tile(_U, 4)                                  # node k = (iy, ix): x = _U[ix], y = _U[iy]
_UY = np.repeat(_U, 4)
# The 64 nodes of the 4 children of the unit cell (children in order (0,0),(1,0),(0,1),(1,1)).
_CX = np.array([0.0, 0.5, 0.0, 0.5])
_CY = np.array([0.0, 0.0, 0.5, 0.5])
_KX = (_CX[:, None] + 0.5 * _UX[None, :]).ravel()
_KY = (_CY[:, None] + 0.5 * _UY[None, :]).ravel()

CHUNK = 1 << 20  # integrand points per numpy batch


def bn_ciotti_bertin(n):
    """b_n of SPEC section 2: the Ciotti & Bertin (1999) asymptotic series."""
    n = float(n)
    return (2 * n - 1 / 3 + 4 / (405 * n) + 46 / (25515 * n ** 2) + 131 / (1148175 * n ** 3)
            - 2194697 / (30690717750 * n ** 4))


def bn_lenstronomy(n):
    """lenstronomy's linear b_n (SersicUtil.b_n)."""
    return max(1.9992 * float(n) - 0.3271, 1e-5)


def ie_unit_flux(n, reff, bn):
    """I_e of a Sersic of unit total flux: 1 = 2 pi n R_e^2 I_e e^b b^(-2n) Gamma(2n)."""
    return math.exp(-(math.log(2 * math.pi * n * reff * reff) + bn - 2 * n * math.log(bn)
                      + gammaln(2 * n)))


class LensedSersic:
    """I(beta(theta)) of one task row, in pixel coordinates of the stamp, flux per pixel^2."""

    def __init__(self, task, stamp_size, lens_offset=(0.0, 0.0), pixscale=0.262, bn="ours"):
        self.pixscale = float(pixscale)
        self.xc = stamp_size // 2 + float(lens_offset[0])
        self.yc = stamp_size // 2 + float(lens_offset[1])
        model = str(task["lens_model"])
        self.empty = model == "CONTROL"
        if self.empty:
            return
        theta_e = float(task["theta_e_arcsec"])
        g = float(task["shear"])
        sphi = math.radians(float(task["shear_phi_deg"]))
        shear = {"gamma1": g * math.cos(2 * sphi), "gamma2": g * math.sin(2 * sphi),
                 "ra_0": 0.0, "dec_0": 0.0}
        if model == "SIS":
            lens = ["SIS", "SHEAR"]
            main = {"theta_E": theta_e, "center_x": 0.0, "center_y": 0.0}
        else:
            e = float(task["lens_e"])
            phi = math.radians(float(task["lens_phi_deg"]))
            lens = ["SIE", "SHEAR"]
            main = {"theta_E": theta_e, "e1": e * math.cos(2 * phi), "e2": e * math.sin(2 * phi),
                    "center_x": 0.0, "center_y": 0.0}
        self.theta_e = theta_e
        self.lens_model = LensModel(lens)
        self.kwargs_lens = [main, shear]
        n = float(task["src_n"])
        reff = float(task["src_reff_arcsec"])
        self.bn = bn_ciotti_bertin(n) if bn == "ours" else bn_lenstronomy(n)
        self.inv_n = 1.0 / n
        self.reff = reff
        self.ie = ie_unit_flux(n, reff, self.bn)          # per arcsec^2, unit flux
        se = float(task["src_e"])
        self.sq = (1 - se) / (1 + se)
        sp = math.radians(float(task["src_phi_deg"]))
        self.sc, self.ss = math.cos(sp), math.sin(sp)
        self.sx = float(task["src_x_arcsec"])
        self.sy = float(task["src_y_arcsec"])

    def __call__(self, x, y):
        """Surface brightness (unit source flux) per pixel^2 at stamp pixel coords x, y."""
        ps = self.pixscale
        bx, by = self.lens_model.ray_shooting((x - self.xc) * ps, (y - self.yc) * ps,
                                              self.kwargs_lens)
        u = bx - self.sx
        v = by - self.sy
        up = self.sc * u + self.ss * v
        vp = -self.ss * u + self.sc * v
        r = np.sqrt(self.sq * up * up + vp * vp / self.sq) / self.reff
        return (self.ie * ps * ps) * np.exp(self.bn * (1.0 - r ** self.inv_n))

    def special_points(self):
        """Pixel coordinates where the integrand is not smooth: the images of the source
        centre and the lens centre."""
        pts = []
        if self.theta_e > 0:
            solver = LensEquationSolver(self.lens_model)
            reach = self.theta_e + math.hypot(self.sx, self.sy) + 1.0
            xs, ys = solver.image_position_from_source(
                self.sx, self.sy, self.kwargs_lens, min_distance=0.005,
                search_window=2 * reach, precision_limit=1e-12, num_iter_max=200,
                arrival_time_sort=False)
            pts += list(zip(np.atleast_1d(xs), np.atleast_1d(ys)))
            pts.append((0.0, 0.0))
        else:
            pts.append((self.sx, self.sy))
        pts = np.array(pts, dtype=np.float64).reshape(-1, 2)
        return np.column_stack([self.xc + pts[:, 0] / self.pixscale,
                                self.yc + pts[:, 1] / self.pixscale])


def _eval(f, x, y):
    """f at the points x, y (same shape), in chunks."""
    xf, yf = x.ravel(), y.ravel()
    out = np.empty_like(xf)
    for a in range(0, xf.size, CHUNK):
        out[a:a + CHUNK] = f(xf[a:a + CHUNK], yf[a:a + CHUNK])
    return out.reshape(x.shape)


def _children_rule(f, x0, y0, h):
    """float64 [m, 4]: the 4x4 Gauss rule over each of the 4 children of the cells of side h
    with lower corners (x0, y0), in chunks of cells (bounded memory)."""
    out = np.empty((x0.size, 4))
    step = CHUNK // 64
    for a in range(0, x0.size, step):
        xs = x0[a:a + step, None] + h * _KX
        ys = y0[a:a + step, None] + h * _KY
        fc = f(xs.ravel(), ys.ravel()).reshape(-1, 4, 16)
        out[a:a + step] = (fc @ _W2) * (0.25 * h * h)
    return out


def integrate_pixels(f, stamp_size, special, tol=1e-10, h_min=1e-5, near=2.0, max_level=40,
                     min_level=0):
    """Adaptive integrals of f over the unit pixels of an S x S grid (see module docstring);
    every cell is split at least down to level ``min_level`` (side 2^-min_level px).

    Returns (image float64 [S, S], info dict)."""
    s = stamp_size
    jj, ii = np.mgrid[0:s, 0:s]
    x0 = (ii.ravel() - 0.5).astype(np.float64)
    y0 = (jj.ravel() - 0.5).astype(np.float64)
    pix = np.arange(s * s)
    q = _eval(f, x0[:, None] + _UX, y0[:, None] + _UY) @ _W2
    img = np.zeros(s * s)
    info = {"evaluations": s * s * 16, "cells": 0, "levels": 0, "max_level_cells": 0,
            "error_estimate": 0.0, "peak_cells": 0, "special_points": len(special)}
    special = np.asarray(special, dtype=np.float64).reshape(-1, 2)
    tree = cKDTree(special) if len(special) else None  # Chebyshev distance to the nearest
    h = 1.0
    level = 0
    while x0.size:
        qc = _children_rule(f, x0, y0, h)
        info["evaluations"] += 64 * x0.size
        info["peak_cells"] = max(info["peak_cells"], x0.size)
        sc = qc.sum(axis=1)
        diff = np.abs(q - sc)
        split = (diff > tol) | (level < min_level)
        if h > h_min and tree is not None:
            d, _ = tree.query(np.column_stack([x0 + 0.5 * h, y0 + 0.5 * h]), k=1, p=np.inf)
            split |= d < (0.5 + near) * h
        if level + 1 >= max_level:
            info["max_level_cells"] = int(split.sum())
            split[:] = False
        done = ~split
        img += np.bincount(pix[done], weights=sc[done], minlength=s * s)
        info["error_estimate"] += float(diff[done].sum())
        info["cells"] += int(done.sum())
        keep = np.flatnonzero(split)
        h *= 0.5
        level += 1
        x0 = (x0[keep, None] + 2 * h * _CX).ravel()
        y0 = (y0[keep, None] + 2 * h * _CY).ravel()
        pix = np.repeat(pix[keep], 4)
        q = qc[keep].ravel()
    info["levels"] = level
    return img.reshape(s, s), info


def reference_image(task, stamp_size, lens_offset=(0.0, 0.0), pixscale=0.262, *, tol=1e-10,
                    h_min=1e-5, near=2.0, min_level=0, bn="ours", return_info=False):
    """Converged pre-PSF image float64 [S, S] of one task row (a mapping of manifest column ->
    scalar) at unit unlensed source flux, lens centre at (S//2 + lens_offset) in stamp pixels.

    bn: "ours" (Ciotti & Bertin, SPEC section 2) or "lenstronomy" (its linear b_n)."""
    f = LensedSersic(task, stamp_size, lens_offset, pixscale, bn)
    if f.empty:
        img = np.zeros((stamp_size, stamp_size))
        return (img, {"evaluations": 0}) if return_info else img
    img, info = integrate_pixels(f, stamp_size, f.special_points(), tol, h_min, near,
                                 min_level=min_level)
    return (img, info) if return_info else img


CUSPIEST = {"lens_model": "SIE", "theta_e_arcsec": 0.6, "lens_e": 0.3, "lens_phi_deg": 30.0,
            "shear": 0.05, "shear_phi_deg": 100.0, "src_n": 4.0, "src_reff_arcsec": 0.1,
            "src_e": 0.4, "src_phi_deg": 60.0, "src_x_arcsec": 0.12, "src_y_arcsec": -0.05}


def _main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stamp-size", type=int, default=64)
    ap.add_argument("--tol", type=float, default=1e-10)
    a = ap.parse_args()
    offset = (0.3, -0.2)
    runs = {}
    for label, kw in (("tol", {"tol": a.tol}), ("tol/2", {"tol": a.tol / 2}),
                      ("tol/2, h_min/10", {"tol": a.tol / 2, "h_min": 1e-6}),
                      ("tol/2, near 6, every cell split to 1/8 px",
                       {"tol": a.tol / 2, "near": 6.0, "min_level": 3})):
        t = time.perf_counter()
        img, info = reference_image(CUSPIEST, a.stamp_size, offset, return_info=True, **kw)
        dt = time.perf_counter() - t
        runs[label] = img
        print(f"{label:42s} {dt:6.2f} s  flux {img.sum():.12f}  peak {img.max():.9f}  "
              f"evals {info['evaluations']:,}  levels {info['levels']}  "
              f"est.err {info['error_estimate']:.2e}  capped {info['max_level_cells']}")
    base = runs["tol"]
    for label, img in runs.items():
        if label == "tol":
            continue
        print(f"change tol -> {label}: flux {abs(img.sum() - base.sum()) / base.sum():.2e} "
              f"relative, max pixel {np.abs(img - base).max() / base.max():.2e} of the peak")


if __name__ == "__main__":
    _main()
