"""The PSF on the CPU: each stamp's FFT convolution, band scaling, crop and band sums in one
Numba loop over stamps (prange), the FFTs called from inside it (rocket-fft, which wraps
ducc0's FFT, the successor of the pocketfft that scipy.fft uses).

The transfer functions come from ``psf`` (one formula there for the CPU and the GPU); only
the loop differs from ``psf.convolve_crop``, which the GPU runs on whole chunks with cuFFT.
On the CPU, the numpy version spent most of its time outside the FFTs: casts, products and
fresh temporaries the size of a chunk, each a pass over memory, mostly on one core. Here a
stamp's spectrum stays in the cache, and every core convolves its own stamps.
"""
import numba
import numpy as np
import rocket_fft  # noqa: F401 - teaches Numba numpy.fft; float32 stays float32

from . import psf
from ._jit import configure_numba_cache

configure_numba_cache()


@numba.njit(inline="always")
def _scaled_crop(img, j0, i0, f, out):
    """out [S, S] (float32) = img[j0:j0+S, i0:i0+S] * f, each product in float64; returns
    the sum of those float64 products (the band's total before the cast)."""
    S = out.shape[0]
    s = 0.0
    for j in range(S):
        for i in range(S):
            v = np.float64(img[j0 + j, i0 + i]) * f
            out[j, i] = np.float32(v)
            s += v
    return s


@numba.njit(parallel=True, cache=True, nogil=True)
def _convolve_scale(render, convolved, gy, gx, full, flux, m, out, magnification, total):
    """render float64 [n, L, L]; convolved bool [n, B] (False: the delta PSF, the crop
    itself); the transfer function of (k, b) is gy[k, b][:, None] * gx[k, b][None, :] when
    ``full`` is empty, else full[k, b] (float32 [n, B, L, L//2+1]); flux [n, B];
    out float32 [n, B, S, S]; magnification float64 [n], the render's sum; total float64
    [n, B]."""
    n, L = render.shape[0], render.shape[1]
    nb = flux.shape[1]
    S = out.shape[2]
    separable = full.shape[0] == 0
    for k in numba.prange(n):
        # the FFTs in float32, as on the GPU (engine.py); the sum in float64
        r32 = np.empty((L, L), dtype=np.float32)
        mag = 0.0
        for j in range(L):
            for i in range(L):
                mag += render[k, j, i]
                r32[j, i] = render[k, j, i]
        magnification[k] = mag
        spec = np.fft.rfft2(r32)              # once per stamp, shared by every band
        h = spec.shape[1]
        product = np.empty_like(spec)
        for b in range(nb):
            if not convolved[k, b]:
                total[k, b] = _scaled_crop(r32, m, m, flux[k, b], out[k, b])
                continue
            # real transfer functions: each product is two real multiplies
            if separable:
                # the inverse runs along y first, then only the S rows of the crop along x
                for j in range(L):
                    g = gy[k, b, j]
                    for i in range(h):
                        product[j, i] = spec[j, i] * g
                rows = np.fft.ifft(product, axis=0)[m:m + S]
                for j in range(S):
                    for i in range(h):
                        rows[j, i] *= gx[k, b, i]
                img = np.fft.irfft(rows, L, axis=1)
                total[k, b] = _scaled_crop(img, 0, m, flux[k, b], out[k, b])
            else:
                for j in range(L):
                    for i in range(h):
                        product[j, i] = spec[j, i] * full[k, b, j, i]
                img = np.fft.irfft2(product, (L, L))
                total[k, b] = _scaled_crop(img, m, m, flux[k, b], out[k, b])


def convolve_scale(render, fwhm_px, flux, stamp_size, margin, model="gaussian", beta=3.5):
    """Each stamp's arcs: its pre-PSF render convolved with each band's PSF, cropped and
    scaled by the band's flux (SPEC 2). Returns (images float32 [n, B, S, S], magnification
    float64 [n], each render's sum, and total float64 [n, B], each band's sum of the scaled
    values before their cast to float32).

    render: float64 [n, L, L], unit flux, stamp at ``[m:m+S, m:m+S]``; fwhm_px [n, B]
    pixels (0: no convolution, the exact crop); flux [n, B]. The FFTs run in float32, as in
    ``psf.convolve_crop`` on float32 renders (tests/test_psf_cpu.py holds the two to 1e-6
    of the peak)."""
    n, L, _ = render.shape
    S, m = int(stamp_size), int(margin)
    fwhm, radius = psf.crop_radii(render.shape, fwhm_px, S, m)
    nb = fwhm.shape[1]
    h = L // 2 + 1
    gy = np.ones((n, nb, L), dtype=np.float32)
    gx = np.ones((n, nb, h), dtype=np.float32)
    full = np.ones((0, 0, 0, 0), dtype=np.float32)
    if model == "gaussian":
        for b in range(nb):
            gy[:, b], gx[:, b] = psf._gaussian_factors(fwhm[:, b], radius[:, b], L, np)
    else:
        full = np.stack([psf.transfer_functions(fwhm[:, b], L, model, beta)
                         for b in range(nb)], axis=1).astype(np.float32)
    out = np.empty((n, nb, S, S), dtype=np.float32)
    magnification = np.empty(n, dtype=np.float64)
    total = np.empty((n, nb), dtype=np.float64)
    _convolve_scale(np.ascontiguousarray(render, dtype=np.float64), fwhm > 0, gy, gx, full,
                    np.ascontiguousarray(flux, dtype=np.float64), m, out, magnification, total)
    return out, magnification, total
