"""Rule 5 of physics/integrate.py: the pixel holding the lens centre, integrated in polar
coordinates about it (lens_centre_pixel), unless an image of the source centre may lie in
it (holds_source_image). Plain-Python physics: the CUDA simulator tests and the PTX
compilation test run the same functions compiled."""
import math

import numpy as np
import pytest
from scipy import integrate as scipy_integrate

from gpu_inject import tasks as T
from gpu_inject.draws import random_tasks
from gpu_inject.engine import DEFAULT_ACCURACY as ACC
from gpu_inject.physics import integrate as I
from gpu_inject.physics.integrate import NODE_MEM

PIX = 0.262


def _params(**kw):
    cols = dict(lens_model="SIS", theta_e_arcsec=0.8, lens_e=0.0, lens_phi_deg=0.0, shear=0.0,
                shear_phi_deg=0.0, src_dmag=0.0, src_reff_arcsec=0.3, src_n=4.0, src_e=0.0,
                src_phi_deg=0.0, src_x_arcsec=0.0, src_y_arcsec=0.0, src_gr=0.0, src_rz=0.0,
                lens_flux_r=1.0)
    cols.update(kw)
    cols = {k: np.array([v], dtype=object if k == "lens_model" else float)
            for k, v in cols.items()}
    return T.pack_params(cols, PIX)[0][0]


def _dblquad_pixel(x0, y0, p):
    """The pixel's integral of I(beta) by scipy's adaptive quadrature (QUADPACK), on the 4
    rectangles that meet at the lens centre (the deflection has a different limit in each
    direction there, so no rectangle holds it inside)."""
    total = 0.0
    for xa, xb in ((x0, 0.0), (0.0, x0 + 1.0)):
        for ya, yb in ((y0, 0.0), (0.0, y0 + 1.0)):
            value, _ = scipy_integrate.dblquad(lambda y, x: I.lensed_sample(x, y, p)[0],
                                               xa, xb, ya, yb, epsabs=1e-10, epsrel=1e-10)
            total += value
    return total


@pytest.mark.parametrize("kw", [
    dict(),                                                  # SIS, round n = 4 source behind it
    dict(lens_model="SIE", lens_e=0.3, lens_phi_deg=25.0, shear=0.06, shear_phi_deg=-40.0,
         src_n=1.5, src_e=0.3, src_phi_deg=70.0, src_x_arcsec=0.35, src_y_arcsec=-0.2),
])
def test_rule_5_matches_quadpack_on_the_lens_centre_pixel(kw):
    """Against scipy's QUADPACK on the same integrand: rule 5's tolerance is eps_gate per
    triangle, so 4 eps_gate (4e-5 of the source flux) for the pixel. In both draws the
    source centre's images lie outside the pixel (the Einstein radius is ~3 px), so pixel_value
    takes rule 5; the first is also the analytic case I(theta) = S(theta_E - |theta|)."""
    p = _params(**kw)
    x0, y0 = -0.3, -0.6   # the lens centre at (0.3, 0.6) of the pixel
    assert not I.holds_source_image(x0, y0, p)
    mem = np.empty(NODE_MEM)
    rule5 = I.lens_centre_pixel(x0, y0, p, ACC.eps_gate, mem)
    reference = _dblquad_pixel(x0, y0, p)
    assert reference > 1e-3    # the pixel holds light: the comparison is not of zeros
    assert abs(rule5 - reference) <= 4 * ACC.eps_gate, (rule5, reference)
    grid = np.zeros((5, 5))    # pixel_value on a pixel holding the lens centre reads no corner
    assert I.pixel_value(grid, grid, grid, 2, 2, x0, y0, p, ACC.eps_gate, ACC.eps_abs,
                         ACC.eps_rel, ACC.eps_cusp, ACC.max_level, mem) == rule5


def test_analytic_sis_ring_profile_along_rays():
    """SIS without shear, round source at the lens centre: beta(r e) = (r - theta_E) e, so
    the source-plane ray of lens_ray starts on the Einstein ring and moves along e."""
    p = _params()
    theta_e = 0.8 / PIX
    for phi in np.linspace(0.0, 2 * math.pi, 7):
        u0, v0, wu, wv = I.lens_ray(math.cos(phi), math.sin(phi), p)
        assert math.hypot(u0, v0) == pytest.approx(theta_e, rel=1e-12)
        assert (wu, wv) == pytest.approx((math.cos(phi), math.sin(phi)), abs=1e-15)
        r_min, side = I.closest_approach(u0, v0, wu, wv, p)
        assert r_min == pytest.approx(theta_e, rel=1e-12)   # the ray crosses the centre there
        assert abs(side) < 1e-12


@pytest.mark.parametrize("theta_e_px,holds", [(0.45, True), (0.9, True), (1.1, False),
                                              (3.0, False)])
def test_holds_source_image_finds_an_einstein_ring_through_the_pixel(theta_e_px, holds):
    """Source behind an SIS: its centre's image is the ring |theta| = theta_E. The pixel
    [-0.3, 0.7] x [-0.6, 0.4] (corners 0.5 to 0.92 px from the lens centre) holds part of
    the rings of 0.45 and 0.9 px; a ring of 1.1 px passes 0.18 px beyond its farthest corner,
    more than SCAN_MARGIN, and one of 3 px far from it."""
    p = _params(theta_e_arcsec=theta_e_px * PIX)
    assert I.holds_source_image(-0.3, -0.6, p) is holds


def test_a_pixel_holding_an_image_of_the_source_centre_keeps_the_walk(monkeypatch):
    """pixel_value does not use rule 5 when holds_source_image says an image of the source
    centre may lie in the pixel (a cusp across the rays), and does otherwise."""
    p_ring = _params(theta_e_arcsec=0.45 * PIX)
    p_far = _params()
    used = []
    rule5 = I.lens_centre_pixel
    monkeypatch.setattr(I, "lens_centre_pixel", lambda *a: used.append(1) or rule5(*a))
    grid = np.zeros((5, 5))
    mem = np.empty(NODE_MEM)
    for p in (p_ring, p_far):
        I.pixel_value(grid, grid, grid, 2, 2, -0.3, -0.6, p, ACC.eps_gate, ACC.eps_abs,
                      ACC.eps_rel, ACC.eps_cusp, ACC.max_level, mem)
    assert used == [1]


def test_rule_5_agrees_with_a_tight_quadtree_walk_on_random_draws():
    """Two different methods on the lens-centre pixel of random draws over the SPEC ranges:
    rule 5 and the quadtree walk of rules 2-3 with tolerances 100 to 10^4 times tighter than
    the defaults. They agree within rule 5's 4 eps_gate."""
    draws = random_tasks(12, seed=5)
    params, _ = T.pack_params(T.read_columns(draws), PIX)
    offsets = np.random.default_rng(5).uniform(-0.5, 0.5, (len(params), 2))
    checked = 0
    for p, (ox, oy) in zip(params, offsets):
        x0, y0 = -0.5 - ox, -0.5 - oy
        if I.holds_source_image(x0, y0, p):
            continue
        rule5 = I.lens_centre_pixel(x0, y0, p, ACC.eps_gate, np.empty(NODE_MEM))
        walk = I.refine_pixel(x0, y0, p, 1e-7, 1e-5, 1e-7, 30, np.empty(NODE_MEM), False)
        assert abs(rule5 - walk) <= 4 * ACC.eps_gate, (rule5, walk)
        checked += 1
    assert checked >= 6
