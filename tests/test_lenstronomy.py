"""Physics against lenstronomy, an independent and widely used implementation (SPEC sections
1, 2 and 6).

Conventions shared with lenstronomy: SIE with the "product average" theta_E and
e1 = e cos 2phi, e2 = e sin 2phi, e = (1 - q) / (1 + q); SHEAR (gamma1, gamma2); SERSIC_ELLIPSE
with R = sqrt(q x'^2 + y'^2 / q) and amp = I_e (surface brightness at R_e).

The one deliberate difference is b_n: lenstronomy uses the linear b_n = 1.9992 n - 0.3271, we
use the Ciotti & Bertin (1999) series. To compare profiles and images we therefore overwrite our
P_SRC_BN with lenstronomy's b_n and recompute P_SRC_IE (and P_SRC_I0 = I_e e^b) for unit flux
with ``sersic_ie_for_unit_flux(n, reff, b)`` (the flux formula holds for any b). Our parameters
are in pixels and our I_e is per pixel^2; lenstronomy works in arcsec, so its amp is the same
I_e computed with reff in arcsec, i.e. I_e(px) / pixscale^2, and its images (mean surface
brightness over sub-pixels times pixel_width^2) are fluxes per pixel, like ours.
lenstronomy also floors R at 1e-4 arcsec (numerical smoothing), so the profile test stays
away from the very centre.
"""
import math

import numpy as np
import pytest

pytest.importorskip("lenstronomy")

from lenstronomy.Data.pixel_grid import PixelGrid  # noqa: E402
from lenstronomy.Data.psf import PSF  # noqa: E402
from lenstronomy.ImSim.image_model import ImageModel  # noqa: E402
from lenstronomy.LensModel.lens_model import LensModel  # noqa: E402
from lenstronomy.LightModel.light_model import LightModel  # noqa: E402
from scipy.special import gammaincinv  # noqa: E402

import gpu_inject  # noqa: E402
from gpu_inject import tasks as T  # noqa: E402
from gpu_inject.draws import random_tasks  # noqa: E402
from gpu_inject.engine import DEFAULT_ACCURACY, get_backend  # noqa: E402
from gpu_inject.kernels import cpu  # noqa: E402
from gpu_inject.physics import layout as L  # noqa: E402
from gpu_inject.physics import integrate, lens, sersic  # noqa: E402

PIXSCALE = 0.262
RTOL_DEFLECTION = 1e-8
RTOL_SERSIC = 1e-10
# SPEC section 6
FLUX_TOL = 1e-3
PEAK_TOL = 1e-2

# axis ratios: ordinary, close to 1, both sides of lens.SIE_SERIES_F (f = 1e-3 at q = 1 - 5e-7)
Q_VALUES = [0.4, 0.55, 0.7, 0.9, 0.99, 0.999, 1 - 1e-4, 1 - 1e-5, 0.999999, 1 - 5.01e-7,
            1 - 4.99e-7, 1 - 1e-7, 1 - 1e-9, 1.0]


def bn_lenstronomy(n):
    return 1.9992 * n - 0.3271


def use_lenstronomy_bn(p):
    """Replace b_n in a packed row by lenstronomy's, with I_e and I(0) for unit flux again
    (the module docstring says why)."""
    n = 1.0 / p[L.P_SRC_INV_N]
    bn = bn_lenstronomy(n)
    p[L.P_SRC_BN] = bn
    p[L.P_SRC_IE] = sersic.sersic_ie_for_unit_flux(n, p[L.P_SRC_REFF], bn)
    p[L.P_SRC_I0] = p[L.P_SRC_IE] * math.exp(bn)


def lenstronomy_lens(theta_e, q, phi, g1, g2):
    """(LensModel, kwargs) of our SIE + shear; q = 1 is lenstronomy's SIS (its SIE replaces
    q = 1 by q = 1 - 1e-8 internally, a 1e-8 relative change we do not want to test against)."""
    shear = {"gamma1": g1, "gamma2": g2, "ra_0": 0.0, "dec_0": 0.0}
    if q == 1.0:
        return LensModel(["SIS", "SHEAR"]), [{"theta_E": theta_e, "center_x": 0.0,
                                              "center_y": 0.0}, shear]
    e = (1 - q) / (1 + q)
    return LensModel(["SIE", "SHEAR"]), [{"theta_E": theta_e, "e1": e * math.cos(2 * phi),
                                          "e2": e * math.sin(2 * phi), "center_x": 0.0,
                                          "center_y": 0.0}, shear]


def random_points(rng, n, rmin=0.1, rmax=4.0):
    """Points in an annulus (arcsec): lenstronomy's SIE has a 1e-10" core, so the very centre
    (where the deflection has no limit anyway) is excluded."""
    r = rng.uniform(rmin, rmax, n)
    a = rng.uniform(0, 2 * np.pi, n)
    return r * np.cos(a), r * np.sin(a)


# ---------------------------------------------------------------- deflections

@pytest.mark.parametrize("q", Q_VALUES)
def test_deflection_and_ray_shoot_match_lenstronomy(q):
    rng = np.random.default_rng(int(q * 1e9) % 2 ** 32)
    x, y = random_points(rng, 200)
    for trial in range(3):
        theta_e = rng.uniform(0.3, 2.0)
        phi = rng.uniform(0, np.pi)
        gamma = rng.uniform(0, 0.1)
        gphi = rng.uniform(0, np.pi)
        g1, g2 = gamma * math.cos(2 * gphi), gamma * math.sin(2 * gphi)
        lm, kw = lenstronomy_lens(theta_e, q, phi, g1, g2)
        ax_l, ay_l = lm.alpha(x, y, kw)
        bx_l, by_l = lm.ray_shooting(x, y, kw)
        c, s = math.cos(phi), math.sin(phi)
        for impl in (lens, cpu.J):
            got = np.array([np.add(impl.sie_deflection(xi, yi, theta_e, q, c, s),
                                   impl.shear_deflection(xi, yi, g1, g2)) for xi, yi in zip(x, y)])
            err = np.hypot(got[:, 0] - ax_l, got[:, 1] - ay_l) / np.hypot(ax_l, ay_l)
            assert err.max() < RTOL_DEFLECTION, (impl, q, trial, err.max())
            beta = np.array([impl.ray_shoot(xi, yi, theta_e, q, c, s, g1, g2)
                             for xi, yi in zip(x, y)])
            scale = np.hypot(x, y) + np.hypot(ax_l, ay_l)  # beta = theta - alpha cancels
            err = np.hypot(beta[:, 0] - bx_l, beta[:, 1] - by_l) / scale
            assert err.max() < RTOL_DEFLECTION, (impl, q, trial, err.max())


def test_pure_python_and_compiled_physics_agree():
    rng = np.random.default_rng(7)
    x, y = random_points(rng, 100, 0.01, 5.0)
    for q in Q_VALUES:
        for xi, yi in zip(x, y):
            a = lens.ray_shoot(xi, yi, 0.8, q, 0.6, 0.8, 0.03, -0.02)
            b = cpu.J.ray_shoot(xi, yi, 0.8, q, 0.6, 0.8, 0.03, -0.02)
            assert np.allclose(a, b, rtol=1e-14, atol=1e-15)


def test_sie_q_to_one_is_continuous():
    """alpha(q) is smooth in q through 1 (the SIS): no jump where the code switches from the
    closed form to the series. The change from q = 1 is linear in 1 - q, so the differences at
    1 - 1e-4 and 1 - 1e-7 must scale by 1000 (and, with q = 1 - 1e-7 closer than the series
    threshold, also the difference across the switch at q = 1 - 5e-7 is tiny)."""
    rng = np.random.default_rng(3)
    x, y = random_points(rng, 300, 0.05, 3.0)
    for impl in (lens, cpu.J):
        for phi in (0.0, 0.4, 1.3):
            c, s = math.cos(phi), math.sin(phi)

            def alpha(q):
                return np.array([impl.sie_deflection(xi, yi, 1.0, q, c, s)
                                 for xi, yi in zip(x, y)])

            a1 = alpha(1.0)
            sis = np.column_stack([x, y]) / np.hypot(x, y)[:, None]
            assert np.abs(a1 - sis).max() < 1e-15
            d4 = alpha(1 - 1e-4) - a1
            d7 = alpha(1 - 1e-7) - a1
            assert np.abs(d4).max() < 1e-4 and np.abs(d7).max() < 1e-7
            assert np.abs(1e3 * d7 - d4).max() < 1e-3 * np.abs(d4).max() + 1e-12
            # across the closed-form / series switch
            lo = alpha(1 - 5.0001e-7)
            hi = alpha(1 - 4.9999e-7)
            assert np.abs(hi - lo).max() < 1e-11


# ---------------------------------------------------------------- Sersic profile

@pytest.mark.parametrize("n", [0.5, 0.8, 1.0, 1.7, 2.5, 4.0])
def test_sersic_matches_lenstronomy(n):
    rng = np.random.default_rng(int(n * 10))
    light = LightModel(["SERSIC_ELLIPSE"])
    for _ in range(4):
        reff = rng.uniform(0.1, 0.5)
        e = rng.uniform(0, 0.6)
        phi = rng.uniform(0, np.pi)
        q = (1 - e) / (1 + e)
        cx, cy = rng.uniform(-1, 1, 2)
        bn = bn_lenstronomy(n)                       # b_n substitution (see module docstring)
        ie = sersic.sersic_ie_for_unit_flux(n, reff, bn)
        kw = [{"amp": ie, "R_sersic": reff, "n_sersic": n, "e1": e * math.cos(2 * phi),
               "e2": e * math.sin(2 * phi), "center_x": cx, "center_y": cy}]
        r = reff * 10 ** rng.uniform(-2.5, 1.0, 300)    # R from ~3e-4" to 10 R_e
        a = rng.uniform(0, 2 * np.pi, 300)
        x, y = cx + r * np.cos(a), cy + r * np.sin(a)
        want = light.surface_brightness(x, y, kw)
        c, s = math.cos(phi), math.sin(phi)
        for impl in (sersic, cpu.J):
            rad = np.array([impl.elliptical_radius(xi - cx, yi - cy, q, c, s)
                            for xi, yi in zip(x, y)])
            assert rad.min() > 1e-3 * reff           # lenstronomy floors R at 1e-4"
            got = np.array([impl.sersic_profile(ri, reff, 1.0 / n, bn, ie) for ri in rad])
            assert np.abs(got / want - 1).max() < RTOL_SERSIC, (impl, n)


def test_sersic_flux_normalisation_and_bn():
    """sersic_ie_for_unit_flux integrates to 1 (lenstronomy's total_flux, which uses its own
    b_n: so pass ours through the substitution); b_n solves P(2n, b) = 1/2 to the accuracy the
    Ciotti & Bertin series actually has (see the note: ~4e-4 at n = 0.5, not 1e-6)."""
    light = LightModel(["SERSIC_ELLIPSE"])
    for n in (0.5, 1.0, 2.3, 4.0):
        bn = bn_lenstronomy(n)
        ie = sersic.sersic_ie_for_unit_flux(n, 0.3, bn)
        kw = [{"amp": ie, "R_sersic": 0.3, "n_sersic": n, "e1": 0.1, "e2": -0.2,
               "center_x": 0, "center_y": 0}]
        assert abs(light.total_flux(kw)[0] - 1) < 1e-12
    for n in (0.36, 0.5, 1.0, 2.0, 4.0, 8.0):
        exact = gammaincinv(2 * n, 0.5)
        rel = abs(sersic.sersic_bn(n) / exact - 1)
        assert rel < (4e-4 if n < 2 else 2e-6), (n, rel)


def test_lensed_sample_matches_lenstronomy():
    """The integrand itself, I(beta(theta)), at random points: our packed parameters (pixels)
    against lenstronomy's ray_shooting + surface_brightness (arcsec). Deflections agree to
    ~1e-9, which the Sersic slope amplifies, hence 1e-6."""
    tasks = random_tasks(20, seed=11)
    cols = T.read_columns(tasks)
    params, _ = T.pack_params(cols, PIXSCALE)
    rng = np.random.default_rng(5)
    light = LightModel(["SERSIC_ELLIPSE"])
    for k in range(20):
        p = params[k].copy()
        use_lenstronomy_bn(p)
        lm, kwl, kws = lenstronomy_task(tasks, k)
        x, y = random_points(rng, 100, 0.2, 3.0)
        bx, by = lm.ray_shooting(x, y, kwl)
        want = light.surface_brightness(bx, by, kws) * PIXSCALE ** 2
        for impl in (integrate, cpu.J):
            got = np.array([impl.lensed_sample(xi / PIXSCALE, yi / PIXSCALE, p)[0]
                            for xi, yi in zip(x, y)])
            assert np.abs(got - want).max() < 1e-6 * want.max() + 1e-300, k


# ---------------------------------------------------------------- lensed images

def lenstronomy_task(tasks, k, bn_ours=False):
    """lenstronomy (LensModel, kwargs_lens, kwargs_source) of row k at unit source flux, with
    lenstronomy's own b_n, or (bn_ours) our profile exactly: a Sersic depends on b_n and R_e
    only through k = b_n R_e^(-1/n) and I_e e^(b_n), so R_sersic' = R_e (b_L / b_ours)^n and
    amp' = I_e e^(b_ours - b_L) make lenstronomy's profile identical to ours."""
    model = tasks["lens_model"][k]
    q = 1.0
    phi = 0.0
    if model == "SIE":
        e = tasks["lens_e"][k]
        q = (1 - e) / (1 + e)
        phi = math.radians(tasks["lens_phi_deg"][k])
    gphi = 2 * math.radians(tasks["shear_phi_deg"][k])
    g = tasks["shear"][k]
    lm, kwl = lenstronomy_lens(tasks["theta_e_arcsec"][k], q, phi, g * math.cos(gphi),
                               g * math.sin(gphi))
    n = tasks["src_n"][k]
    reff = tasks["src_reff_arcsec"][k]
    se = tasks["src_e"][k]
    sphi = math.radians(tasks["src_phi_deg"][k])
    bl = bn_lenstronomy(n)
    if bn_ours:
        bo = sersic.sersic_bn(n)
        ie = sersic.sersic_ie_for_unit_flux(n, reff, bo)
        amp, r_l = ie * math.exp(bo - bl), reff * (bl / bo) ** n
    else:
        amp, r_l = sersic.sersic_ie_for_unit_flux(n, reff, bl), reff
    kws = [{"amp": amp, "R_sersic": r_l, "n_sersic": n, "e1": se * math.cos(2 * sphi),
            "e2": se * math.sin(2 * sphi), "center_x": tasks["src_x_arcsec"][k],
            "center_y": tasks["src_y_arcsec"][k]}]
    return lm, kwl, kws


def lenstronomy_image(tasks, k, size, origin, ss, fwhm=None, bn_ours=False):
    """lenstronomy's image of row k on a size x size grid whose lens centre is at pixel
    coordinates origin = (x, y): transform_pix2angle = pixscale * identity, so x = column,
    y = row, and ra_at_xy_0 = -x pixscale puts the lens (0, 0) at origin."""
    lm, kwl, kws = lenstronomy_task(tasks, k, bn_ours)
    grid = PixelGrid(size, size, PIXSCALE * np.eye(2), -origin[0] * PIXSCALE,
                     -origin[1] * PIXSCALE)
    psf = PSF("NONE") if fwhm is None else PSF("GAUSSIAN", fwhm=fwhm, truncation=6)
    im = ImageModel(grid, psf, lens_model_class=lm,
                    source_model_class=LightModel(["SERSIC_ELLIPSE"]),
                    kwargs_numerics={"supersampling_factor": ss})
    return im.image(kwl, kws)


def render_pre_psf(params, origin, size, acc=DEFAULT_ACCURACY):
    """The CPU backend's pre-PSF render (unit source flux) with tolerances ``acc``."""
    return get_backend("cpu").render(params, origin, size, acc)


def smooth_cases():
    """Cases where lenstronomy's midpoint supersampling converges: n 1-2, R_e >= 0.3"."""
    t = random_tasks(5, seed=2024)
    t["src_n"] = np.array([1.0, 1.3, 1.6, 2.0, 1.2])
    t["src_reff_arcsec"] = np.array([0.3, 0.5, 0.35, 0.45, 0.4])
    t["lens_model"] = np.array(["SIE", "SIS", "SIE", "SIE", "SIE"], dtype=object)
    t["src_x_arcsec"][4], t["src_y_arcsec"][4] = 0.0, 0.0  # source behind the lens: a cross
    return t


def compare(img, ref):
    return abs(img.sum() / ref.sum() - 1), np.abs(img - ref).max() / ref.max()


def test_lensed_images_match_lenstronomy_supersampled():
    """render_batch (pre-PSF, lenstronomy's b_n substituted) against lenstronomy with 40x40
    sub-pixels per pixel; lenstronomy's own convergence (ss 20 -> 40) is checked to be well
    inside the tolerance first (measured: ~1e-5 in flux, ~1e-4 of the peak)."""
    tasks = smooth_cases()
    size = 32
    cols = T.read_columns(tasks)
    params, _ = T.pack_params(cols, PIXSCALE)
    n = params.shape[0]
    for k in range(n):
        use_lenstronomy_bn(params[k])
    offsets = np.random.default_rng(1).uniform(-0.5, 0.5, (n, 2))
    origin = size // 2 + offsets
    out = render_pre_psf(params, origin, size)
    for k in range(n):
        l20 = lenstronomy_image(tasks, k, size, origin[k], 20)
        l40 = lenstronomy_image(tasks, k, size, origin[k], 40)
        df, dp = compare(l20, l40)
        assert df < FLUX_TOL / 5 and dp < PEAK_TOL / 5, ("lenstronomy not converged", k, df, dp)
        df, dp = compare(out[k], l40)
        assert df < FLUX_TOL and dp < PEAK_TOL, (k, df, dp)


def test_render_arcs_with_psf_matches_lenstronomy():
    """The public render_arcs (our b_n; lenstronomy given the identical profile through the
    R_sersic / amp rescaling of lenstronomy_task), pre-PSF and after a Gaussian PSF, with a
    lens offset: the frame (x = column, y = row, lens at S//2 + offset), the flux scaling and
    the PSF convention (kernel sampled at pixel centres, unit sum) all agree."""
    tasks = smooth_cases()
    sel = [0, 2, 4]
    tasks = {c: v[sel] for c, v in tasks.items()}
    size = 48
    n = len(sel)
    fwhm = np.array([[0.0, 1.1], [0.0, 1.3], [0.0, 0.9]])
    offsets = np.array([[0.3, -0.4], [-0.2, 0.1], [0.45, 0.45]])
    batch = gpu_inject.render_arcs(tasks, stamp_size=size, psf_fwhm=fwhm, pixscale=PIXSCALE,
                                   bands="rr", lens_offset=offsets, backend="cpu")
    flux_r = tasks["lens_flux_r"] * 10 ** (-0.4 * tasks["src_dmag"])
    for k in range(n):
        origin = size // 2 + offsets[k]
        pre = lenstronomy_image(tasks, k, size, origin, 40, bn_ours=True) * flux_r[k]
        post = lenstronomy_image(tasks, k, size, origin, 40, fwhm[k, 1], bn_ours=True) * flux_r[k]
        for got, want in ((batch.images[k, 0], pre), (batch.images[k, 1], post)):
            df, dp = compare(got.astype(np.float64), want)
            assert df < FLUX_TOL and dp < PEAK_TOL, (k, df, dp)
