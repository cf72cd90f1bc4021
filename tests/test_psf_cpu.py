"""The CPU engine's PSF (kernels.psf_cpu): FFT convolution, band scaling and sums per stamp
in one Numba loop. Checked against scipy's direct convolution, against the array code the GPU
runs (psf.convolve_crop), and for batch and thread independence."""
import numba
import numpy as np
import pytest

from gpu_inject.kernels import psf, psf_cpu
from test_psf import S, scipy_reference


def renders(n, fwhm, seed):
    """n random float64 renders for the PSFs of ``fwhm``, light over the whole render grid
    (the margin's light scatters into the stamp), and their margin."""
    L, m = psf.render_size(S, fwhm.max())
    return np.random.default_rng(seed).random((n, L, L)), m


@pytest.mark.parametrize("model", ["gaussian", "moffat"])
def test_against_scipy_direct_convolution(model):
    """Each band's image is the direct float64 convolution (scipy) times the band's flux,
    to float32 FFT rounding: 2e-6 of the peak (a wrong offset or kernel is ~1e-2), and the
    total is its sum (1e-6). A band of FWHM 0 is the crop itself (in float32), scaled."""
    fwhm = np.array([[2.2, 0.0, 6.5], [4.96, 3.1, 0.0]])
    flux = np.array([[1.5, 2.0, 0.25], [3.0, 0.5, 7.0]])
    render, m = renders(2, fwhm, 3)
    images, mag, total = psf_cpu.convolve_scale(render, fwhm, flux, S, m, model=model,
                                                 beta=3.0)
    assert images.shape == (2, 3, S, S) and images.dtype == np.float32
    assert total.shape == (2, 3) and total.dtype == np.float64
    np.testing.assert_allclose(mag, render.sum(axis=(1, 2)), rtol=1e-13)
    for k in range(2):
        for b in range(3):
            if fwhm[k, b] == 0:
                crop = render[k, m:m + S, m:m + S].astype(np.float32).astype(np.float64)
                np.testing.assert_array_equal(images[k, b], (crop * flux[k, b]).astype(np.float32))
                continue
            ref = scipy_reference(render[k], fwhm[k, b], m, model, beta=3.0) * flux[k, b]
            assert np.max(np.abs(images[k, b] - ref)) < 2e-6 * ref.max()
            assert abs(total[k, b] / ref.sum() - 1) < 1e-6


@pytest.mark.parametrize("model", ["gaussian", "moffat"])
def test_agrees_with_the_array_code_the_gpu_runs(model):
    """psf.convolve_crop on float32 renders, scaled as GpuBackend.psf_arcs does, gives the
    same images (both float32 FFTs, pocketfft and its successor ducc0: 1e-6 of the peak
    allows for another build's order of operations)."""
    rng = np.random.default_rng(5)
    fwhm = rng.uniform(2.0, 6.0, (6, 3))
    fwhm[1, 2] = 0.0
    flux = rng.uniform(0.5, 5.0, (6, 3))
    render, m = renders(6, fwhm, 6)
    images, _, total = psf_cpu.convolve_scale(render, fwhm, flux, S, m, model=model)
    conv = psf.convolve_crop(render.astype(np.float32), fwhm, S, m, model=model)
    conv *= flux[:, :, None, None]
    peak = np.abs(conv).max(axis=(2, 3), keepdims=True)
    assert np.max(np.abs(images - conv) / peak) < 1e-6
    np.testing.assert_allclose(total, conv.sum(axis=(2, 3)), rtol=1e-6)


def test_a_stamp_gets_the_same_bits_in_any_batch_and_thread_count():
    rng = np.random.default_rng(7)
    fwhm = rng.uniform(2.0, 6.0, (9, 3))
    fwhm[4] = 0.0
    flux = rng.uniform(0.5, 5.0, (9, 3))
    render, m = renders(9, fwhm, 8)
    whole = psf_cpu.convolve_scale(render, fwhm, flux, S, m)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        for k in range(9):
            one = psf_cpu.convolve_scale(render[k:k + 1], fwhm[k:k + 1], flux[k:k + 1], S, m)
            for a, b in zip(one, whole):
                np.testing.assert_array_equal(a[0], b[k])
    finally:
        numba.set_num_threads(before)


def test_bad_inputs_are_refused_with_the_reason():
    render = np.zeros((1, 80, 80))
    flux = np.ones((1, 1))
    with pytest.raises(ValueError, match="exceeds the margin"):
        psf_cpu.convolve_scale(render, np.array([[4.96]]), flux, S, 8)
    with pytest.raises(ValueError, match="finite and >= 0"):
        psf_cpu.convolve_scale(render, np.array([[-1.0]]), flux, S, 8)
    with pytest.raises(ValueError, match="unknown PSF model 'airy'"):
        psf_cpu.convolve_scale(np.zeros((1, 90, 90)), np.array([[4.96]]), flux, S, 13,
                               model="airy")
