"""PSF kernels and the linear batched FFT convolution (SPEC section 2)."""
import math

import numpy as np
import pytest
from scipy import signal

from gpu_inject.kernels import psf

S = 64


def explicit_kernel(fwhm, model="gaussian", beta=3.5):
    """The 2-D kernel written out, [2r+1, 2r+1], centre at [r, r]."""
    r = psf.psf_radius(fwhm)
    if model == "gaussian":
        g = psf.gaussian_kernel_1d(fwhm, r)
        return np.outer(g, g)
    return psf.moffat_kernel_2d(fwhm, beta, r)


def scipy_reference(render, fwhm, margin, model="gaussian", beta=3.5):
    """Direct (no FFT) linear convolution by scipy, full mode, then the stamp crop: output
    pixel i of 'same' is full pixel i + r, so the stamp [m:m+S] is full [m+r:m+r+S]."""
    k = explicit_kernel(fwhm, model, beta)
    r = (k.shape[0] - 1) // 2
    full = signal.convolve2d(render, k, mode="full")
    return full[margin + r:margin + r + S, margin + r:margin + r + S]


def is_smooth(n):
    for p in (2, 3, 5):
        while n % p == 0:
            n //= p
    return n == 1


# ---------------------------------------------------------------- radius and render size

def test_psf_radius_is_ceil_of_five_sigma():
    for fwhm in (0.3, 1.0, 2.5, 3.7, 4.2, 5.0, 7.77, 12.0):
        r = psf.psf_radius(fwhm)
        five_sigma = 5 * fwhm / (2 * math.sqrt(2 * math.log(2)))
        assert isinstance(r, int)
        assert r >= five_sigma and r - 1 < five_sigma
        assert r >= 1
    assert psf.psf_radius(0.0) == 0
    assert psf.psf_radius(1e-6) == 1


def test_psf_radius_vectorised_and_rejects_bad_values():
    f = np.array([[0.0, 1.0, 4.2], [5.0, 7.77, 0.3]])
    r = psf.psf_radius(f)
    assert r.shape == f.shape
    assert [int(x) for x in r.ravel()] == [psf.psf_radius(float(x)) for x in f.ravel()]
    for bad in (-1.0, np.nan, np.inf):
        with pytest.raises(ValueError):
            psf.psf_radius(bad)


def test_render_size_ladder_properties():
    for s in (16, 64, 96, 98):
        for fwhm in np.linspace(0.1, 20, 57):
            L, m = psf.render_size(s, fwhm)
            r = psf.psf_radius(fwhm)
            assert L % 2 == 0 and is_smooth(L)
            assert L >= s + 2 * r
            # The smallest such size: no even smooth number in [s + 2r, L).
            assert not any(n % 2 == 0 and is_smooth(n) for n in range(s + 2 * r, L))
            assert m == (L - s) // 2 and m >= r and L - s - m >= r
    assert psf.render_size(S, 0.0) == (S, 0)
    # DR10-like seeing: 1.3" / 0.262 = 4.96 px -> r = 11, 64 + 22 = 86 -> 90.
    assert psf.render_size(S, 1.3 / 0.262) == (90, 13)


def test_render_size_depends_only_on_stamp_and_fwhm():
    rng = np.random.default_rng(0)
    f = rng.uniform(0, 15, 200)
    f[::7] = 0.0
    L, m = psf.render_size(S, f)
    # Element by element equal to the scalar call, whatever else is in the array.
    assert all((int(L[i]), int(m[i])) == psf.render_size(S, float(f[i])) for i in range(f.size))
    L2, m2 = psf.render_size(S, f[::-1])
    assert np.array_equal(L2, L[::-1]) and np.array_equal(m2, m[::-1])


# ---------------------------------------------------------------- Gaussian kernel

@pytest.mark.parametrize("fwhm", [2.0, 3.3, 4.96, 8.0])
def test_gaussian_kernel_unit_sum_and_width(fwhm):
    r = psf.psf_radius(fwhm)
    g = psf.gaussian_kernel_1d(fwhm, r)
    assert g.shape == (2 * r + 1,)
    assert abs(g.sum() - 1) < 1e-14
    assert np.array_equal(g, g[::-1])
    sigma = fwhm / (2 * math.sqrt(2 * math.log(2)))
    # Samples follow exp(-d^2 / 2 sigma^2) with sigma = FWHM / 2.3548 (the FWHM convention).
    d = np.arange(-r, r + 1)
    assert np.allclose(g / g[r], np.exp(-0.5 * (d / sigma) ** 2), rtol=1e-13, atol=0)
    # Second moment: sampling at integers changes the variance of a Gaussian only by terms
    # ~exp(-2 pi^2 sigma^2) (< 1e-7 for sigma >= 0.85, Poisson summation); truncation at
    # 5 sigma removes ~1.6e-5 of it. So 1e-4 relative, where a wrong sigma convention
    # (e.g. FWHM/2) would be off by tens of per cent.
    var = np.sum(d**2 * g)
    assert abs(var / sigma**2 - 1) < 1e-4


def test_gaussian_2d_outer_product_unit_sum():
    k = explicit_kernel(4.96)
    assert abs(k.sum() - 1) < 1e-14


def test_separable_transfer_matches_rfft2_of_explicit_kernel():
    L = 90
    for fwhm in (0.0, 1.7, 4.96, 9.0):
        k = explicit_kernel(fwhm)
        r = (k.shape[0] - 1) // 2
        wrapped = np.zeros((L, L))
        wrapped[:2 * r + 1, :2 * r + 1] = k
        wrapped = np.roll(wrapped, (-r, -r), axis=(0, 1))  # centre to [0, 0]
        ref = np.fft.rfft2(wrapped)
        t = psf.transfer_functions(np.array([fwhm]), L)[0]
        assert t.shape == (L, L // 2 + 1)
        # Both are the same DFT up to rounding (values <= 1): 1e-12 absolute.
        assert np.max(np.abs(t - ref)) < 1e-12


# ---------------------------------------------------------------- Moffat kernel

@pytest.mark.parametrize("beta", [2.5, 3.5, 4.765])
def test_moffat_kernel(beta):
    fwhm = 4.96
    r = psf.psf_radius(fwhm)
    k = psf.moffat_kernel_2d(fwhm, beta, r)
    assert k.shape == (2 * r + 1, 2 * r + 1)
    assert abs(k.sum() - 1) < 1e-14
    assert np.array_equal(k, k.T) and np.array_equal(k, k[::-1, ::-1])
    alpha = psf.moffat_alpha(fwhm, beta)
    # The continuous profile is at half maximum at r = FWHM / 2 (to rounding).
    assert abs((1 + (fwhm / 2 / alpha) ** 2) ** -beta - 0.5) < 1e-14
    # The samples follow the profile at pixel centres.
    assert abs(k[r, r + 1] / k[r, r] - (1 + 1 / alpha**2) ** -beta) < 1e-13
    assert abs(k[r + 2, r + 3] / k[r, r] - (1 + 13 / alpha**2) ** -beta) < 1e-13


# ---------------------------------------------------------------- convolution

def test_flux_is_kept():
    fwhm = np.array([[3.0, 4.96, 7.0]])
    L, m = psf.render_size(S, fwhm.max())
    r = psf.psf_radius(fwhm.max())
    rng = np.random.default_rng(1)
    render = np.zeros((1, L, L))
    # A blob well inside the stamp: its light spread by the PSF stays inside the crop.
    lo, hi = m + r + 2, m + S - r - 2
    render[0, lo:hi, lo:hi] = rng.random((hi - lo, hi - lo))
    out = psf.convolve_crop(render, fwhm, S, m)
    # Unit-sum kernels keep flux; FFT rounding is ~1e-16 of the total: 1e-10 relative.
    for b in range(3):
        assert abs(out[0, b].sum() / render.sum() - 1) < 1e-10


def test_delta_psf_is_the_exact_crop():
    rng = np.random.default_rng(2)
    fwhm = np.array([[0.0, 4.0, 0.0], [3.0, 0.0, 5.0]])
    L, m = psf.render_size(S, fwhm.max())
    render = rng.random((2, L, L))
    out = psf.convolve_crop(render, fwhm, S, m)
    crop = render[:, m:m + S, m:m + S]
    assert np.array_equal(out[0, 0], crop[0]) and np.array_equal(out[0, 2], crop[0])
    assert np.array_equal(out[1, 1], crop[1])
    assert not np.allclose(out[0, 1], crop[0])
    # FWHM 0 everywhere: L = S, no margin, the identity.
    assert np.array_equal(psf.convolve_crop(crop, np.zeros((2, 3)), S, 0)[:, 1], crop)


@pytest.mark.parametrize("model", ["gaussian", "moffat"])
def test_light_from_the_margin_scatters_in(model):
    fwhm = 4.96
    L, m = psf.render_size(S, fwhm)
    render = np.zeros((1, L, L))
    render[0, m - 2, m + S // 2] = 1.0  # two rows above the stamp, in the margin
    out = psf.convolve_crop(render, np.array([[fwhm]]), S, m, model=model)[0, 0]
    ref = scipy_reference(render[0], fwhm, m, model)
    # Light scattered into the top row (a Gaussian tail at 2 px is ~0.1 of the peak).
    assert out[0, S // 2] > 1e-3
    # Against scipy's direct convolution: FFT rounding ~1e-17 for unit flux; 1e-10 is loose
    # but far below any real discrepancy (a wrong offset or kernel is ~1e-3).
    assert np.max(np.abs(out - ref)) < 1e-10


@pytest.mark.parametrize("model", ["gaussian", "moffat"])
def test_no_wrap_around_to_the_opposite_edge(model):
    fwhm = 4.96
    L, m = psf.render_size(S, fwhm)
    r = psf.psf_radius(fwhm)
    render = np.zeros((1, L, L))
    render[0, m, m + S // 2] = 1.0     # top edge of the stamp
    render[0, m + 10, m + S - 1] = 1.0  # right edge of the stamp
    out = psf.convolve_crop(render, np.array([[fwhm]]), S, m, model=model)[0, 0]
    ref = scipy_reference(render[0], fwhm, m, model)
    assert np.max(np.abs(out - ref)) < 1e-10
    # Beyond the PSF radius nothing arrives: the bottom rows and left columns stay dark (to
    # FFT rounding, ~1e-17). A circular convolution on the stamp would put ~1e-2 there.
    # The top point reaches rows <= r and columns >= S/2 - r; the right one rows <= 10 + r.
    assert np.max(np.abs(out[r + 11:, :])) < 1e-15
    assert np.max(np.abs(out[:, :S // 2 - r])) < 1e-15
    assert out[r, S // 2] > 1e-8  # ... while the tail at the radius itself is there


@pytest.mark.parametrize("model", ["gaussian", "moffat"])
def test_random_render_matches_scipy(model):
    rng = np.random.default_rng(3)
    fwhm = np.array([[2.2, 4.96, 6.5]])
    L, m = psf.render_size(S, fwhm.max())
    render = rng.random((1, L, L))
    out = psf.convolve_crop(render, fwhm, S, m, model=model, beta=3.0)
    for b in range(3):
        ref = scipy_reference(render[0], fwhm[0, b], m, model, beta=3.0)
        # Values ~1 summed over ~500 terms: rounding ~1e-13; 1e-10 absolute.
        assert np.max(np.abs(out[0, b] - ref)) < 1e-10


@pytest.mark.parametrize("model", ["gaussian", "moffat"])
def test_batch_equals_one_at_a_time_bitwise(model):
    rng = np.random.default_rng(4)
    n = 9
    fwhm = rng.uniform(2.0, 6.0, (n, 3))
    fwhm[2, 1] = 0.0
    fwhm[5] = 0.0
    L, m = psf.render_size(S, fwhm.max())
    render = rng.random((n, L, L))
    out = psf.convolve_crop(render, fwhm, S, m, model=model)
    assert out.shape == (n, 3, S, S) and out.dtype == np.float64
    for k in range(n):
        one = psf.convolve_crop(render[k:k + 1], fwhm[k:k + 1], S, m, model=model)
        assert np.array_equal(one[0], out[k])
    part = psf.convolve_crop(render[3:8], fwhm[3:8], S, m, model=model)
    assert np.array_equal(part, out[3:8])


def test_margin_too_small_is_refused():
    render = np.zeros((1, 80, 80))
    with pytest.raises(ValueError):
        psf.convolve_crop(render, np.array([[4.96]]), S, 8)  # radius 11 > margin 8
    with pytest.raises(ValueError):
        psf.convolve_crop(render, np.array([[-1.0]]), S, 8)
    with pytest.raises(ValueError):
        psf.convolve_crop(np.zeros((1, 90, 90)), np.array([[4.96]]), S, 13, model="airy")


@pytest.mark.parametrize("model", ["gaussian", "moffat"])
def test_float32_render_is_convolved_in_float32_to_its_precision(model):
    """The engine hands float32 renders: the FFTs then run in float32. Against scipy's
    direct float64 convolution: float32 rounding (6e-8) over a few hundred terms, so 2e-6 of
    the peak, and flux kept to 1e-6 (a wrong offset or kernel is ~1e-2)."""
    rng = np.random.default_rng(8)
    fwhm = np.array([[2.2, 4.96, 6.5]])
    L, m = psf.render_size(S, fwhm.max())
    r = psf.psf_radius(fwhm.max())
    render = np.zeros((1, L, L))
    lo, hi = m + r + 2, m + S - r - 2
    render[0, lo:hi, lo:hi] = rng.random((hi - lo, hi - lo))
    out = psf.convolve_crop(render.astype(np.float32), fwhm, S, m, model=model, beta=3.0)
    assert out.dtype == np.float64
    for b in range(3):
        ref = scipy_reference(render[0], fwhm[0, b], m, model, beta=3.0)
        assert np.max(np.abs(out[0, b] - ref)) < 2e-6 * ref.max()
        assert abs(out[0, b].sum() / render.sum() - 1) < 1e-6
