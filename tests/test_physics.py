"""Analytic identities of the scalar physics (pure Python and the Numba-compiled copy)."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, special

from gpu_inject.kernels.cpu import J
from gpu_inject.physics import lens, sersic

BOTH = [pytest.param(lens, id="python"), pytest.param(J, id="numba")]


@pytest.mark.parametrize("mod", BOTH)
@settings(max_examples=200, deadline=None)
@given(x=st.floats(-5, 5), y=st.floats(-5, 5), theta_e=st.floats(0.1, 3.0),
       phi=st.floats(0, math.pi))
def test_sis_deflection_has_modulus_theta_e(mod, x, y, theta_e, phi):
    """SIS: |alpha| = theta_E everywhere but the centre, pointing away from it."""
    if math.hypot(x, y) < 1e-9:
        return
    ax, ay = mod.sie_deflection(x, y, theta_e, 1.0, math.cos(phi), math.sin(phi))
    assert math.hypot(ax, ay) == pytest.approx(theta_e, rel=1e-12)
    assert ax * x + ay * y == pytest.approx(theta_e * math.hypot(x, y), rel=1e-12)


@pytest.mark.parametrize("mod", BOTH)
@pytest.mark.parametrize("dq", [1e-2, 1e-3, 1.001e-3, 0.999e-3, 1e-5, 1e-9])
def test_sie_tends_smoothly_to_sis(mod, dq):
    """q -> 1: the SIE deflection approaches the SIS one as O(1 - q), on both sides of the
    switch between closed form and series (f = sqrt(1 - q^2) = 1e-3), with no 0/0."""
    rng = np.random.default_rng(3)
    q = 1.0 - dq
    for x, y in rng.uniform(-3, 3, (50, 2)):
        c, s = math.cos(0.7), math.sin(0.7)
        ax, ay = mod.sie_deflection(x, y, 1.0, q, c, s)
        bx, by = mod.sie_deflection(x, y, 1.0, 1.0, c, s)
        # |d alpha / d q| <= ~1 theta_E for these radii: the difference is at most a few dq
        assert abs(ax - bx) + abs(ay - by) < 3 * dq + 1e-14


def test_sie_series_and_closed_form_agree_at_the_switch():
    """Just below and above f = SIE_SERIES_F the deflection (the series there, the closed
    form through sie_transcendentals here) agrees to 1e-13 of |alpha|: log((1 + z) / (1 - z))
    near z = 1e-3 is good to ~1e-16 absolute, 5e-14 of 2 z (measured up to 5.5e-14)."""
    f = lens.SIE_SERIES_F
    c, s = math.cos(0.3), math.sin(0.3)
    lo, hi = f * (1 - 1e-12), f * (1 + 1e-12)
    for x, y in [(0.7, 0.2), (-1.1, 0.9), (0.3, -1.7), (2.0, 0.0), (0.0, -0.5)]:
        below = lens.sie_deflection_bf(x, y, 1.0, lo, c, s)
        above = lens.sie_deflection_bf(x, y, 1.0, hi, c, s)
        assert max(abs(a - b) for a, b in zip(below, above)) <= 1e-13 * math.hypot(*above)


@pytest.mark.parametrize("mod", BOTH)
def test_sie_convergence_matches_spec(mod):
    """kappa = (d alpha_x/dx + d alpha_y/dy) / 2 = theta_E / (2 sqrt(q x'^2 + y'^2 / q)),
    by central differences (step 1e-5: truncation error ~1e-10 relative)."""
    te, q, phi = 1.3, 0.55, 0.4
    c, s = math.cos(phi), math.sin(phi)
    h = 1e-5
    for x, y in [(0.7, 0.2), (-1.1, 0.9), (0.3, -1.7)]:
        dax = (mod.sie_deflection(x + h, y, te, q, c, s)[0]
               - mod.sie_deflection(x - h, y, te, q, c, s)[0]) / (2 * h)
        day = (mod.sie_deflection(x, y + h, te, q, c, s)[1]
               - mod.sie_deflection(x, y - h, te, q, c, s)[1]) / (2 * h)
        xp, yp = c * x + s * y, -s * x + c * y
        kappa = te / (2 * math.sqrt(q * xp * xp + yp * yp / q))
        assert 0.5 * (dax + day) == pytest.approx(kappa, rel=1e-7)


@pytest.mark.parametrize("mod", BOTH)
def test_shear_deflection_is_the_gradient_of_its_potential(mod):
    """alpha = grad psi with psi = (g1 (x^2 - y^2) + 2 g2 x y) / 2 (Keeton 2001, eq. 15), by
    central differences (exact for a quadratic up to rounding: 1e-9)."""
    g1, g2, h = 0.04, -0.07, 1e-4

    def psi(x, y):
        return 0.5 * (g1 * (x * x - y * y) + 2 * g2 * x * y)

    for x, y in [(0.8, -0.3), (-2.0, 1.5), (0.0, 3.0)]:
        ax, ay = mod.shear_deflection(x, y, g1, g2)
        assert ax == pytest.approx((psi(x + h, y) - psi(x - h, y)) / (2 * h), abs=1e-9)
        assert ay == pytest.approx((psi(x, y + h) - psi(x, y - h)) / (2 * h), abs=1e-9)


def test_ciotti_bertin_bn_against_the_incomplete_gamma():
    """b_n solves P(2n, b_n) = 1/2 (scipy's gammaincinv is the reference). SPEC says the
    series is good to 1e-6 for n >= 0.36; measured, that holds only for n >= ~2: the
    relative error is 3.6e-4 at n = 0.5, 2.5e-5 at n = 1, 1.3e-6 at n = 2, 7e-8 at n = 4
    (an asymptotic series in 1/n). The SPEC formula is used as written."""
    for n, tol in [(0.36, 4e-4), (0.5, 4e-4), (1.0, 3e-5), (2.0, 2e-6), (4.0, 1e-7),
                   (8.0, 1e-8)]:
        exact = special.gammaincinv(2 * n, 0.5)
        assert sersic.sersic_bn(n) == pytest.approx(exact, rel=tol)


@pytest.mark.parametrize("n", [0.5, 1.0, 2.5, 4.0, 8.0])
def test_sersic_total_flux_is_one(n):
    """The elliptical profile with I_e from sersic_ie_for_unit_flux integrates to 1: the
    map (u, v) -> R has unit Jacobian (q * 1/q), so the plane integral is int 2 pi R I dR."""
    reff = 1.7
    bn = sersic.sersic_bn(n)
    ie = sersic.sersic_ie_for_unit_flux(n, reff, bn)
    val, err = integrate.quad(lambda r: 2 * math.pi * r * sersic.sersic_profile(
        r, reff, 1.0 / n, bn, ie), 0, math.inf, limit=500)
    assert val == pytest.approx(1.0, rel=1e-8)


def test_sersic_n_half_is_a_gaussian():
    """n = 1/2: I(R) = I_e exp(b) exp(-b R^2 / R_e^2), a Gaussian of sigma = R_e/sqrt(2 b)."""
    bn = sersic.sersic_bn(0.5)
    ie = sersic.sersic_ie_for_unit_flux(0.5, 1.0, bn)
    sigma = 1.0 / math.sqrt(2 * bn)
    for r in (0.0, 0.3, 1.0, 2.2):
        gauss = math.exp(-r * r / (2 * sigma**2)) / (2 * math.pi * sigma**2)
        assert sersic.sersic_profile(r, 1.0, 2.0, bn, ie) == pytest.approx(gauss, rel=1e-12)


def test_elliptical_radius_is_circularised():
    """R = sqrt(q u'^2 + v'^2 / q): the major axis (along phi) is stretched by 1/sqrt(q)."""
    q, phi = 0.25, 0.3
    c, s = math.cos(phi), math.sin(phi)
    assert sersic.elliptical_radius(2 * c, 2 * s, q, c, s) == pytest.approx(1.0)
    assert sersic.elliptical_radius(-0.5 * s, 0.5 * c, q, c, s) == pytest.approx(1.0)


def test_stencil_rule_is_exact_for_cubics():
    """physics.integrate.stencil_value (the tensor cubic rule on 4 x 4 corners, rule 0) integrates a
    bicubic polynomial over the pixel exactly (against its antiderivative), while the
    trapezoid of the 4 own corners does not; and it reads only the 4 x 4 stencil."""
    from gpu_inject.physics import integrate as quad

    rng = np.random.default_rng(4)
    c = rng.normal(size=(4, 4))                    # f = sum c[a, b] x^a y^b

    def f(x, y):
        return sum(c[a, b] * x ** a * y ** b for a in range(4) for b in range(4))

    x0, y0 = 0.3, -1.7                             # the pixel [x0, x0+1] x [y0, y0+1]
    exact = sum(c[a, b] * ((x0 + 1) ** (a + 1) - x0 ** (a + 1)) / (a + 1)
                * ((y0 + 1) ** (b + 1) - y0 ** (b + 1)) / (b + 1)
                for a in range(4) for b in range(4))
    j, i = 3, 5                                    # the pixel's place in a corner grid
    ys = y0 + np.arange(-j, 8 - j)
    xs = x0 + np.arange(-i, 9 - i)
    grid = f(xs[None, :], ys[:, None])
    s4, t = quad.stencil_value(grid, j, i, 1)
    assert s4 == pytest.approx(exact, rel=1e-12, abs=1e-12)
    assert abs(t - exact) > 1e-3                   # the trapezoid is not exact
    far = grid.copy()
    far[j + 3:, :] = far[:j - 1, :] = far[:, i + 3:] = far[:, :i - 1] = np.nan
    assert quad.stencil_value(far, j, i, 1)[0] == s4


def test_block_rule_is_exact_for_cubics():
    """Rule 0b: physics.integrate.block_pixel integrates a bicubic polynomial exactly over
    each of the 4 pixels of a 2 x 2 block from the 4 x 4 corners of spacing 2 around the
    block (against the antiderivative), reading nothing else; stencil_value with step 2 is
    the block's mean; and the pixels' values add up to the block's integral."""
    from gpu_inject.physics import integrate as quad

    rng = np.random.default_rng(5)
    c = rng.normal(size=(4, 4))                    # f = sum c[a, b] x^a y^b

    def f(x, y):
        return sum(c[a, b] * x ** a * y ** b for a in range(4) for b in range(4))

    def exact(x0, y0, w):
        return sum(c[a, b] * ((x0 + w) ** (a + 1) - x0 ** (a + 1)) / (a + 1)
                   * ((y0 + w) ** (b + 1) - y0 ** (b + 1)) / (b + 1)
                   for a in range(4) for b in range(4))

    jb, ib = 4, 6                                  # the block's lower corner in the grid
    x0, y0 = 0.3, -1.7                             # ... and in the plane
    ys = y0 + np.arange(-jb, 12 - jb)
    xs = x0 + np.arange(-ib, 13 - ib)
    grid = f(xs[None, :], ys[:, None])
    odd = np.ones_like(grid, dtype=bool)
    odd[::2, ::2] = False
    only_even = np.where(odd, np.nan, grid)        # block_pixel must not read odd corners
    only_even[jb + 5:, :] = only_even[:jb - 2, :] = np.nan
    only_even[:, ib + 5:] = only_even[:, :ib - 2] = np.nan
    values = []
    for dj in (0, 1):
        for di in (0, 1):
            v = quad.block_pixel(only_even, jb + dj, ib + di)
            assert v == pytest.approx(exact(x0 + di, y0 + dj, 1.0), rel=1e-12, abs=1e-12)
            values.append(v)
    mean, t = quad.stencil_value(only_even, jb, ib, 2)
    assert 4.0 * mean == pytest.approx(exact(x0, y0, 2.0), rel=1e-12, abs=1e-12)
    assert sum(values) == pytest.approx(4.0 * mean, rel=1e-12)
    assert abs(4.0 * t - exact(x0, y0, 2.0)) > 1e-3   # the trapezoid is not exact
