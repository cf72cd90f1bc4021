"""render_arcs and the CPU engine against analytic results: pixel integration, lensing
magnifications, PSF identities, determinism, and the errors a user sees."""
import math

import numba
import numpy as np
import pyarrow as pa
import pytest
from scipy import special

import gpu_inject
from gpu_inject.draws import random_tasks
from gpu_inject.physics.sersic import sersic_bn

PIX = 0.262


def one_task(n=1, **kw):
    base = dict(lens_model="SIS", theta_e_arcsec=0.0, lens_e=0.0, lens_phi_deg=0.0, shear=0.0,
                shear_phi_deg=0.0, src_dmag=0.0, src_reff_arcsec=0.3, src_n=0.5, src_e=0.0,
                src_phi_deg=0.0, src_x_arcsec=0.0, src_y_arcsec=0.0, src_gr=0.0, src_rz=0.0,
                lens_flux_r=1.0)
    base.update(kw)
    return {k: np.array([v] * n, dtype=object if k == "lens_model" else float)
            for k, v in base.items()}


def pixel_gaussian(s, sigma_px, cx, cy):
    """Exact pixel integrals of a unit-flux round Gaussian centred at (cx, cy), from erf."""
    edges = np.arange(s + 1) - 0.5
    ex = 0.5 * special.erf((edges - cx) / (math.sqrt(2) * sigma_px))
    ey = 0.5 * special.erf((edges - cy) / (math.sqrt(2) * sigma_px))
    return np.outer(np.diff(ey), np.diff(ex))


@pytest.mark.parametrize("reff,dx,dy", [(0.3, 0.0, 0.0), (0.1, 0.13, -0.41), (0.5, 0.5, 0.5)])
def test_unlensed_gaussian_equals_exact_pixel_integrals(reff, dx, dy):
    """theta_E = 0, no shear, n = 1/2, round: each pixel must equal the erf pixel integral of
    the Gaussian of sigma = R_e / sqrt(2 b_n) (exact; b_n from the same series on both sides).
    Tolerance: SPEC 6 asks 1 % of the peak pixel; 1e-3 keeps a 10x margin (measured ~1e-4
    with the default tolerances)."""
    s = 32
    t = one_task(src_reff_arcsec=reff, src_x_arcsec=dx * PIX, src_y_arcsec=dy * PIX)
    out = gpu_inject.render_arcs(t, stamp_size=s, psf_fwhm=[[0.0]], bands="r", backend="cpu")
    sigma = reff / PIX / math.sqrt(2 * sersic_bn(0.5))
    want = pixel_gaussian(s, sigma, s // 2 + dx, s // 2 + dy)
    got = out.images[0, 0].astype(np.float64)
    assert np.abs(got - want).max() < 1e-3 * want.max()
    # SPEC 6: 0.1 % of the flux (measured: 2e-5 to 2.5e-4, the most for R_e = 0.1")
    assert out.magnification[0] == pytest.approx(1.0, rel=1e-3)


@pytest.mark.parametrize("theta_e,beta", [(0.5, 0.9), (0.3, 1.0), (0.8, 1.2)])
def test_sis_point_source_outside_einstein_radius(theta_e, beta):
    """A compact source at beta > theta_E behind an SIS has one image, mu = 1 + theta_E/beta.
    Finite-source correction (Gaussian of sigma ~ 0.02"): ~theta_E sigma^2 / beta^3 < 1e-3."""
    t = one_task(theta_e_arcsec=theta_e, src_reff_arcsec=0.02, src_x_arcsec=beta * 0.6,
                 src_y_arcsec=beta * 0.8)
    out = gpu_inject.render_arcs(t, stamp_size=32, psf_fwhm=[[0.0]], bands="r", backend="cpu")
    assert out.magnification[0] == pytest.approx(1 + theta_e / beta, rel=1e-3)


@pytest.mark.parametrize("theta_e,beta", [(1.0, 0.5), (0.8, 0.3)])
def test_sis_point_source_inside_einstein_radius(theta_e, beta):
    """Inside theta_E two images, |mu| = theta_E/beta +- 1: total 2 theta_E / beta."""
    t = one_task(theta_e_arcsec=theta_e, src_reff_arcsec=0.02, src_x_arcsec=beta)
    out = gpu_inject.render_arcs(t, stamp_size=32, psf_fwhm=[[0.0]], bands="r", backend="cpu")
    assert out.magnification[0] == pytest.approx(2 * theta_e / beta, rel=2e-3)


def test_theta_e_zero_gives_the_unlensed_source_for_any_model():
    """theta_E = 0 (SIS or SIE of any ellipticity) without shear is no lens at all: the same
    bits, and a flux between the Sersic fluxes enclosed by the circles inscribed in and
    circumscribing the stamp (P(2n, b_n (R/R_e)^(1/n)), scipy's gammainc)."""
    a = one_task(lens_model="SIS", src_n=2.5, src_x_arcsec=0.1)
    b = one_task(lens_model="SIE", lens_e=0.5, lens_phi_deg=70.0, src_n=2.5, src_x_arcsec=0.1)
    ra = gpu_inject.render_arcs(a, stamp_size=32, psf_fwhm=[[0.0]], bands="r", backend="cpu")
    rb = gpu_inject.render_arcs(b, stamp_size=32, psf_fwhm=[[0.0]], bands="r", backend="cpu")
    np.testing.assert_array_equal(ra.images, rb.images)
    n, bn, reff = 2.5, sersic_bn(2.5), 0.3 / PIX
    inner = 16 - 0.1 / PIX
    outer = math.hypot(16 + 0.1 / PIX, 16)
    lo = special.gammainc(2 * n, bn * (inner / reff) ** (1 / n))
    hi = special.gammainc(2 * n, bn * (outer / reff) ** (1 / n))
    assert lo - 1e-5 < ra.magnification[0] < hi + 1e-5


def test_psf_keeps_flux_and_delta_psf_is_identity():
    """Convolution conserves flux (source far from the edges); FWHM 0 returns the pre-PSF
    image; the fluxes per band follow the colours of SPEC section 2."""
    t = one_task(theta_e_arcsec=0.8, src_x_arcsec=0.2, src_reff_arcsec=0.2, src_n=1.5,
                 src_dmag=1.0, src_gr=0.5, src_rz=0.3, lens_flux_r=20.0)
    none = gpu_inject.render_arcs(t, stamp_size=48, psf_fwhm=[[0.0, 0.0, 0.0]],
                                  backend="cpu")
    conv = gpu_inject.render_arcs(t, stamp_size=48, psf_fwhm=[[1.5, 1.2, 1.1]],
                                  backend="cpu")
    f_r = 20.0 * 10 ** -0.4
    want = np.array([f_r * 10 ** (-0.2), f_r, f_r * 10 ** 0.12]) * none.magnification[0]
    # light outside the 48-px stamp: < 1e-4 of the total for this compact source
    np.testing.assert_allclose(none.total_flux[0], want, rtol=1e-4)
    np.testing.assert_allclose(conv.total_flux[0], none.total_flux[0], rtol=1e-4)
    # identity: each band of the unconvolved image is the same image scaled by its flux
    ratio = none.images[0, 0] / np.maximum(none.images[0, 1], 1e-30)
    big = none.images[0, 1] > 1e-6
    np.testing.assert_allclose(ratio[big], 10 ** -0.2, rtol=1e-6)


def test_bit_identical_across_batch_sizes_and_threads():
    """SPEC 6: the same rows give the same bits alone, in any batch, with 1 or 2 threads."""
    tasks = random_tasks(12, seed=5)
    fwhm = np.stack([tasks[f"psfsize_{b}"] for b in "grz"], axis=1)
    off = np.random.default_rng(1).uniform(-0.5, 0.5, (12, 2))
    full = gpu_inject.render_arcs(tasks, stamp_size=32, psf_fwhm=fwhm, lens_offset=off,
                                  backend="cpu")
    sub = {k: v[3:7] for k, v in tasks.items()}
    part = gpu_inject.render_arcs(sub, stamp_size=32, psf_fwhm=fwhm[3:7], lens_offset=off[3:7],
                                  backend="cpu")
    np.testing.assert_array_equal(part.images, full.images[3:7])
    np.testing.assert_array_equal(part.magnification, full.magnification[3:7])
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = gpu_inject.render_arcs(tasks, stamp_size=32, psf_fwhm=fwhm, lens_offset=off,
                                     backend="cpu")
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(one.images, full.images)


def test_chunks_cover_every_row_once_with_the_same_bits_as_one_chunk(monkeypatch):
    """engine.iter_arcs cuts the rows into chunks of at most backend.chunk rows of one
    render size: chunks of 5 over 12 rows with two render sizes cover every row once, and
    each row gets the same bits as when its whole render size is one chunk."""
    from gpu_inject import engine
    from gpu_inject import tasks as T

    tasks = random_tasks(12, seed=6)
    cols = T.read_columns(tasks)
    params, flux_r = T.pack_params(cols, 0.262)
    flux = T.band_fluxes(cols, flux_r, "grz")
    fwhm = np.stack([tasks[f"psfsize_{b}"] for b in "grz"], axis=1) / 0.262
    fwhm[::3] *= 2.0                                     # a second render size
    off = np.random.default_rng(2).uniform(-0.5, 0.5, (12, 2))
    be = engine.get_backend("cpu")

    def run(chunk):
        monkeypatch.setattr(be, "chunk", chunk)
        out = list(engine.iter_arcs(be, params, flux, fwhm, off, 32, "gaussian", 3.5))
        rows = np.concatenate([c[0] for c in out])
        order = np.argsort(rows)
        return [len(c[0]) for c in out], rows[order], [np.concatenate(f)[order]
                                                        for f in zip(*out)][1:]

    n_small, rows_small, small = run(5)
    n_big, rows_big, big = run(128)
    assert max(n_small) <= 5 and len(n_small) > len(n_big) >= 2
    assert rows_small.tolist() == rows_big.tolist() == list(range(12))
    for a, b in zip(small, big):
        np.testing.assert_array_equal(a, b)


def test_lens_offset_moves_the_image_with_the_lens():
    """Shifting the lens by whole pixels shifts the rendered image by the same pixels."""
    t = one_task(theta_e_arcsec=0.6, src_x_arcsec=0.1, src_reff_arcsec=0.2, src_n=1.0)
    a = gpu_inject.render_arcs(t, stamp_size=32, psf_fwhm=[[0.0]], bands="r", backend="cpu")
    b = gpu_inject.render_arcs(t, stamp_size=32, psf_fwhm=[[0.0]], bands="r", backend="cpu",
                               lens_offset=[[2.0, -3.0]])
    np.testing.assert_allclose(b.images[0, 0, 5:-5, 5:-5], a.images[0, 0, 8:-2, 3:-7],
                               rtol=1e-6, atol=1e-9)


def test_pyarrow_table_input_and_control_rows():
    t = one_task(2, theta_e_arcsec=0.5, src_x_arcsec=0.1)
    t["lens_model"] = np.array(["SIS", "CONTROL"], dtype=object)
    out = gpu_inject.render_arcs(pa.table(t), stamp_size=16, psf_fwhm=np.ones((2, 3)),
                                 backend="cpu")
    assert out.images.shape == (2, 3, 16, 16) and out.images.dtype == np.float32
    assert np.isnan(out.magnification[1]) and not out.images[1].any()
    assert out.magnification[0] > 1


@pytest.mark.parametrize("col,val,msg", [
    ("src_n", 9.0, "row 1: src_n = 9 outside [0.36, 8]"),
    ("src_e", 1.0, "row 1: src_e = 1 outside [0, 1)"),
    ("theta_e_arcsec", -0.1, "row 1: theta_e_arcsec = -0.1 outside [0, inf)"),
    ("src_reff_arcsec", np.nan, "row 1: src_reff_arcsec = null or NaN outside (0, inf)"),
    ("lens_model", "NFW", "row 1: lens_model = 'NFW' is not one of SIS, SIE, CONTROL"),
])
def test_bad_rows_name_row_column_and_range(col, val, msg):
    t = one_task(3, theta_e_arcsec=0.5)
    t[col] = t[col].copy()
    t[col][1] = val
    with pytest.raises(ValueError) as err:
        gpu_inject.render_arcs(t, stamp_size=16, psf_fwhm=np.ones((3, 3)), backend="cpu")
    assert str(err.value) == msg


def test_bad_arguments_are_named():
    t = one_task(2)
    with pytest.raises(ValueError, match="lack required column.*src_n"):
        gpu_inject.render_arcs({k: v for k, v in t.items() if k != "src_n"}, stamp_size=16,
                               psf_fwhm=np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"psf_fwhm has shape \(2, 1\), expected \(2, 3\)"):
        gpu_inject.render_arcs(t, stamp_size=16, psf_fwhm=np.ones((2, 1)))
    with pytest.raises(ValueError, match="row 0: psf_fwhm"):
        gpu_inject.render_arcs(t, stamp_size=16, psf_fwhm=-np.ones((2, 3)))
    with pytest.raises(ValueError, match="stamp_size = 15"):
        gpu_inject.render_arcs(t, stamp_size=15, psf_fwhm=np.ones((2, 3)))
    with pytest.raises(ValueError, match="backend = 'tpu'"):
        gpu_inject.render_arcs(t, stamp_size=16, psf_fwhm=np.ones((2, 3)), backend="tpu")


def test_moffat_psf_keeps_flux_and_is_wider_than_the_gaussian():
    """--psf-model moffat: same FWHM, unit-sum kernel (flux kept), heavier wings (less light
    in the central pixel than the Gaussian of the same FWHM)."""
    t = one_task(theta_e_arcsec=0.0, src_reff_arcsec=0.1, src_n=0.5)
    kw = dict(stamp_size=64, psf_fwhm=[[1.3]], bands="r", backend="cpu")
    gauss = gpu_inject.render_arcs(t, **kw)
    moff = gpu_inject.render_arcs(t, psf_model="moffat", moffat_beta=2.5, **kw)
    # flux outside the 64-px stamp: < 2e-4 for beta = 2.5 wings truncated at 5 sigma
    np.testing.assert_allclose(moff.total_flux, gauss.total_flux, rtol=2e-4)
    assert moff.images[0, 0, 32, 32] < gauss.images[0, 0, 32, 32]
    with pytest.raises(ValueError, match="moffat_beta = 1"):
        gpu_inject.render_arcs(t, psf_model="moffat", moffat_beta=1.0, **kw)


# ---------------------------------------------------------------- dark blocks

def _packed(n, seed):
    from gpu_inject import tasks as T

    draws = random_tasks(n, seed)
    # add extreme sources: far off-axis, very flattened, tiny and large, strong shear
    draws["src_x_arcsec"][:8] = np.linspace(-6, 6, 8)
    draws["src_e"][8:16] = 0.9
    draws["lens_e"][16:24] = 0.9
    draws["src_reff_arcsec"][24:32] = np.r_[[0.02] * 4, [3.0] * 4]
    draws["shear"][32:40] = 0.5
    params, _ = T.pack_params(T.read_columns(draws), PIX)
    return draws, params


def test_dark_rectangles_hold_no_light():
    """Every point of a rectangle that region_is_dark calls dark samples to exactly 0, and
    lies beyond CUSP_REACH of the source (so no cell inside would be refined): checked on
    dense random points of many rectangles, near and far from the lens, against the plain
    Python physics (not the bound)."""
    from gpu_inject.physics import integrate
    from gpu_inject.physics import layout as L
    from gpu_inject.physics.sersic import elliptical_radius2

    _, params = _packed(48, 11)
    rng = np.random.default_rng(5)
    proven = 0
    for p in params:
        for _ in range(60):
            x_lo, y_lo = rng.uniform(-40, 36, 2)
            w, h = rng.uniform(0.5, 8, 2)
            if not integrate.region_is_dark(x_lo, y_lo, x_lo + w, y_lo + h, p):
                continue
            proven += 1
            xs = rng.uniform(x_lo, x_lo + w, 64)
            ys = rng.uniform(y_lo, y_lo + h, 64)
            for x, y in zip(np.r_[xs, x_lo, x_lo + w], np.r_[ys, y_lo + h, y_lo]):
                f, u, v = integrate.lensed_sample(x, y, p)
                assert f == 0.0
                assert elliptical_radius2(u, v, p[L.P_SRC_Q], p[L.P_SRC_COS],
                                          p[L.P_SRC_SIN]) > p[L.P_SRC_R2CUT]
    assert proven > 300  # the test exercised the bound


def test_dark_block_skipping_changes_only_dark_pixels():
    """render_batch with dark blocks skipped equals render_batch sampling every pixel, bit for
    bit, except on pixels it skipped: there it gives 0 (their exact integral) where sampling
    gives the cubic stencils' ringing from lit corners beyond them (rule 0 reads corners one
    pixel beyond its own, rule 0b up to four): per stamp, less than 1e-6 of the source flux,
    a thousandth of SPEC 6's flux tolerance, for block sizes 1, 4 and 8."""
    from gpu_inject.engine import DEFAULT_ACCURACY as acc
    from gpu_inject.kernels import cpu

    _, params = _packed(64, 12)
    n, size = len(params), 80
    origin = size / 2 + np.random.default_rng(3).uniform(-0.5, 0.5, (n, 2))
    eps = (acc.eps_gate, acc.eps_abs, acc.eps_rel, acc.eps_cusp, acc.max_level)
    every = np.empty((n, size, size))
    cpu.render_batch(params, origin, size, *eps, every, 0)
    assert (every == 0).mean() > 0.1  # there are dark pixels to skip
    for block in (1, 4, 8):
        skipped = np.empty((n, size, size))
        cpu.render_batch(params, origin, size, *eps, skipped, block)
        differ = skipped != every
        assert (skipped[differ] == 0).all(), block
        assert np.abs(np.where(differ, every, 0.0)).sum(axis=(1, 2)).max() < 1e-6, block
        assert differ.mean() < 0.05, block


def test_rule_1b_accepts_s5_without_a_walk_only_when_the_two_rules_agree(monkeypatch):
    """physics.integrate.pixel_value, plain Python: a pixel that fails the gate (|M - T| >
    eps_gate) but has a rule-0 stencil whose S4 agrees with S5 to eps_gate, and cannot hold
    a centre, is S5 from its one centre sample; one whose rules disagree is walked (more
    samples). Both kinds are found on real draws."""
    from gpu_inject.engine import DEFAULT_ACCURACY as acc
    from gpu_inject.physics import integrate as I
    from gpu_inject.physics.integrate import NODE_MEM

    sample = I.lensed_sample
    calls = [0]

    def counted(x, y, p):
        calls[0] += 1
        return sample(x, y, p)

    eps = (acc.eps_gate, acc.eps_abs, acc.eps_rel, acc.eps_cusp, acc.max_level)
    _, params = _packed(48, 21)
    size, o = 32, 16.3
    agreed = walked = 0
    for p in params[40:46]:  # ordinary draws (the first 40 are extreme)
        grid = np.array([[sample(i - 0.5 - o, j - 0.5 - o, p) for i in range(size + 1)]
                         for j in range(size + 1)])
        f, u, v = (np.ascontiguousarray(grid[:, :, c]) for c in range(3))
        for j in range(size):
            for i in range(size):
                x0, y0 = i - 0.5 - o, j - 0.5 - o
                s4, stencil, ok = I.stencil_gate(f, u, v, j, i, 1, x0, y0, p, acc.eps_gate)
                fc, uc, vc = sample(x0 + 0.5, y0 + 0.5, p)
                s5, gate_ok = I.gate(f[j, i], f[j, i + 1], f[j + 1, i], f[j + 1, i + 1], fc,
                                     acc.eps_gate)
                centre = I.must_split(x0, y0, 1.0, uc, vc, u[j, i], v[j, i], u[j, i + 1],
                                      v[j, i + 1], u[j + 1, i], v[j + 1, i], u[j + 1, i + 1],
                                      v[j + 1, i + 1], p, acc.eps_cusp)
                if ok or gate_ok or centre:
                    continue
                monkeypatch.setattr(I, "lensed_sample", counted)
                calls[0] = 0
                value = I.pixel_value(f, u, v, j, i, x0, y0, p, *eps, np.empty(NODE_MEM))
                monkeypatch.setattr(I, "lensed_sample", sample)
                if stencil and abs(s4 - s5) <= acc.eps_gate:
                    assert (calls[0], value) == (1, s5)
                    agreed += 1
                else:
                    assert calls[0] > 1
                    walked += 1
    assert agreed > 0 and walked > 0
