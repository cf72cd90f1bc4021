"""PSF kernels and linear (no wrap-around) batched FFT convolution (SPEC section 2).

Array-module agnostic: functions that touch big arrays take ``xp`` (numpy, or cupy on GPU)
and run the same code on either. Kernels and transfer functions depend only on their own
stamp's FWHM and the render size L, never on the rest of the batch, so a stamp gives the
same bits whatever batch it is convolved in.

Layout: a pre-PSF render is L x L with the S x S stamp at ``[m:m+S, m:m+S]`` (m = margin).
Kernels are built directly in FFT order: offset 0 at index 0, negative offsets wrapped to
the end of the length-L axis.
"""
import math

import numpy

# FWHM / sigma of a Gaussian, 2 sqrt(2 ln 2).
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
# SPEC 2: the kernel is truncated no closer than 5 sigma.
TRUNCATION_SIGMAS = 5.0


def _smooth_even_ladder(limit):
    """Even 2/3/5-smooth integers up to ``limit``, ascending: sizes pocketfft and cuFFT do
    fast, and few enough that the engine has few render-size groups."""
    out = []
    p2 = 2
    while p2 <= limit:
        p3 = p2
        while p3 <= limit:
            p5 = p3
            while p5 <= limit:
                out.append(p5)
                p5 *= 5
            p3 *= 3
        p2 *= 2
    return numpy.array(sorted(out), dtype=numpy.int64)


# The fixed ladder of render sizes L (render_size picks from it).
LADDER = _smooth_even_ladder(1 << 14)


def _check_fwhm(fwhm):
    if not numpy.all(numpy.isfinite(fwhm)) or numpy.any(fwhm < 0):
        raise ValueError("PSF FWHM must be finite and >= 0 (0 = no convolution)")


def psf_radius(fwhm_px):
    """Truncation radius (pixels) of the PSF kernel of FWHM ``fwhm_px`` (pixels):
    ``ceil(5 sigma)``, at least 1; 0 for FWHM 0 (a delta PSF). The Moffat of the same FWHM
    uses the same radius. Scalar in -> int out; array in -> int64 array out."""
    f = numpy.asarray(fwhm_px, dtype=numpy.float64)
    _check_fwhm(f)
    r = numpy.ceil(TRUNCATION_SIGMAS * f / FWHM_PER_SIGMA).astype(numpy.int64)
    r = numpy.where(f > 0, numpy.maximum(r, 1), 0)
    return int(r) if r.ndim == 0 else r


psf_radii = psf_radius  # the same function, for callers that prefer the plural on arrays


def render_size(stamp_size, fwhm_px_max):
    """Render grid side L and margin for a stamp of side S whose widest band has FWHM
    ``fwhm_px_max`` (pixels): L is the smallest ladder size >= S + 2 * psf_radius, and
    margin = (L - S) // 2 (>= the radius on both sides). FWHM 0 -> (S, 0).

    Depends only on S and that FWHM, so a stamp's render, and hence its output bits, do not
    depend on which other stamps share its batch. Scalar in -> ints; array in -> arrays.
    """
    S = int(stamp_size)
    r = numpy.asarray(psf_radius(fwhm_px_max), dtype=numpy.int64)
    need = S + 2 * r
    if numpy.any(need > LADDER[-1]):
        raise ValueError(f"render size {int(need.max())} exceeds the ladder ({LADDER[-1]})")
    L = numpy.where(r > 0, LADDER[numpy.searchsorted(LADDER, need)], S)
    margin = (L - S) // 2
    if L.ndim == 0:
        return int(L), int(margin)
    return L, margin


def gaussian_kernel_1d(fwhm_px, radius):
    """1-D Gaussian of FWHM ``fwhm_px`` sampled at integer offsets -radius..radius, unit sum.
    The 2-D Gaussian PSF of SPEC 2 is the outer product of two of these."""
    d = numpy.arange(-radius, radius + 1, dtype=numpy.float64)
    if fwhm_px <= 0:
        return (d == 0).astype(numpy.float64)
    sigma = fwhm_px / FWHM_PER_SIGMA
    g = numpy.exp(-0.5 * (d / sigma) ** 2)
    return g / g.sum()


def moffat_alpha(fwhm_px, beta):
    """Moffat core radius alpha for a FWHM and beta: FWHM = 2 alpha sqrt(2^(1/beta) - 1)."""
    return fwhm_px / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))


def moffat_kernel_2d(fwhm_px, beta, radius):
    """Moffat ``(1 + (r/alpha)^2)^-beta`` of FWHM ``fwhm_px`` sampled at pixel centres on the
    (2 radius + 1)^2 square (index [dy + radius, dx + radius]), unit sum."""
    d = numpy.arange(-radius, radius + 1, dtype=numpy.float64)
    if fwhm_px <= 0:
        return numpy.outer(d == 0, d == 0).astype(numpy.float64)
    a = moffat_alpha(fwhm_px, beta)
    r2 = d[:, None] ** 2 + d[None, :] ** 2
    k = (1.0 + r2 / (a * a)) ** (-beta)
    return k / k.sum()


def _wrapped_offsets(L, xp):
    """Signed offset held by each index of a length-L FFT axis: 0, 1, ..., -2, -1."""
    i = xp.arange(L, dtype=xp.int64)
    return xp.where(i <= L // 2, i, i - L).astype(xp.float64)


def _gaussian_factors(fwhm, radius, L, xp):
    """(gy [m, L], gx [m, L//2+1]), real: the 2-D Gaussians of ``fwhm`` [m] have transfer
    functions gy[:, :, None] * gx[:, None, :].

    The 2-D kernel is g(dy) g(dx), so its 2-D DFT is the outer product of 1-D DFTs: an
    O(L) rfft per kernel instead of an O(L^2 log L) rfft2. The kernel is even, so its DFT
    is real (the imaginary parts are rounding only and dropped); the y axis (full DFT) is
    the x axis (half DFT) mirrored, G[k] = G[L - k]."""
    d = _wrapped_offsets(L, xp)[None, :]
    f = xp.asarray(fwhm, dtype=xp.float64)[:, None]
    r = xp.asarray(radius, dtype=xp.float64)[:, None]
    sigma = xp.where(f > 0, f / FWHM_PER_SIGMA, 1.0)  # f = 0: r = 0 leaves only the delta
    g = xp.where(xp.abs(d) <= r, xp.exp(-0.5 * (d / sigma) ** 2), 0.0)
    g = g / g.sum(axis=1, keepdims=True)
    gx = xp.fft.rfft(g, axis=1).real                                # [m, L//2+1]
    gy = xp.concatenate([gx, gx[:, 1:L - L // 2][:, ::-1]], axis=1)  # [m, L]
    return gy, gx


def _gaussian_transfer(fwhm, radius, L, xp):
    """Transfer functions [m, L, L//2+1] (real) of the 2-D Gaussians of ``fwhm`` [m]."""
    gy, gx = _gaussian_factors(fwhm, radius, L, xp)
    return gy[:, :, None] * gx[:, None, :]


def _moffat_transfer(fwhm, radius, beta, L, xp):
    """Transfer functions [m, L, L//2+1] (real) of the 2-D Moffats of ``fwhm`` [m]: not
    separable, so the kernel is laid out on the wrapped L x L grid and rfft2'd. It is even
    under (dx, dy) -> (-dx, -dy), so its DFT is real (imaginary rounding dropped)."""
    d = _wrapped_offsets(L, xp)
    dy = d[None, :, None]
    dx = d[None, None, :]
    f = xp.asarray(fwhm, dtype=xp.float64)[:, None, None]
    r = xp.asarray(radius, dtype=xp.float64)[:, None, None]
    alpha = xp.where(f > 0, f, 1.0) / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))
    inside = (xp.abs(dx) <= r) & (xp.abs(dy) <= r)
    k = xp.where(inside, (1.0 + (dx * dx + dy * dy) / (alpha * alpha)) ** (-beta), 0.0)
    k = k / k.sum(axis=(1, 2), keepdims=True)
    return xp.fft.rfft2(k).real


def transfer_functions(fwhm_px, L, model="gaussian", beta=3.5, xp=numpy):
    """Real transfer functions [m, L, L//2+1] of the PSFs of ``fwhm_px`` [m] (pixels) on an
    L x L grid (FWHM 0 gives all ones, the delta PSF)."""
    f = numpy.asarray(_to_host(fwhm_px), dtype=numpy.float64).reshape(-1)
    radius = psf_radius(f)
    if model == "gaussian":
        return _gaussian_transfer(f, radius, L, xp)
    if model == "moffat":
        return _moffat_transfer(f, radius, float(beta), L, xp)
    raise ValueError(f"unknown PSF model {model!r} (gaussian or moffat)")


def _to_host(a):
    return a.get() if hasattr(a, "get") else a


def _fft(xp):
    """(rfft2, irfft2, ifft over axis 1, irfft over axis 2 to length n) for xp: scipy.fft
    on the CPU, threaded over the machine's cores (pocketfft, like numpy.fft, but it can use
    them all), xp.fft otherwise (cuFFT)."""
    if xp is numpy:
        import os

        import scipy.fft

        workers = os.cpu_count() or 1
        return (lambda a: scipy.fft.rfft2(a, workers=workers),
                lambda a, s: scipy.fft.irfft2(a, s=s, workers=workers),
                lambda a: scipy.fft.ifft(a, axis=1, workers=workers),
                lambda a, n: scipy.fft.irfft(a, n=n, axis=2, workers=workers))
    return (xp.fft.rfft2, lambda a, s: xp.fft.irfft2(a, s=s), lambda a: xp.fft.ifft(a, axis=1),
            lambda a, n: xp.fft.irfft(a, n=n, axis=2))


def crop_radii(shape, fwhm_px, stamp_size, margin):
    """(fwhm float64 [n, B], PSF radii [n, B]) for convolving renders of ``shape`` [n, L, L]
    and cropping their S x S stamp at ``margin``; ValueError if the PSF would wrap around.

    The FFT product is a circular convolution on the L x L torus. An output pixel in the
    crop, at index y in [m, m+S), sums render[y - dy] for |dy| <= radius, i.e. indices in
    [m - radius, m + S - 1 + radius], which lie inside [0, L) when radius <= m and
    radius <= L - S - m: then no term wraps around, and the cropped circular convolution
    equals the linear one. Wrapped terms land only in the margin, which is cropped away."""
    n, L, L2 = shape
    S, m = int(stamp_size), int(margin)
    if L2 != L or m < 0 or m + S > L:
        raise ValueError(f"render {tuple(shape)} cannot hold a {S}-pixel stamp at margin {m}")
    fwhm = numpy.asarray(_to_host(fwhm_px), dtype=numpy.float64)
    if fwhm.ndim != 2 or fwhm.shape[0] != n:
        raise ValueError(f"fwhm_px must be [n={n}, nbands], got {fwhm.shape}")
    radius = psf_radius(fwhm)
    if numpy.any(radius > min(m, L - S - m)):
        raise ValueError(f"PSF radius {int(radius.max())} exceeds the margin {m} (render {L})")
    return fwhm, radius


def convolve_crop(render, fwhm_px, stamp_size, margin, model="gaussian", beta=3.5, xp=numpy):
    """Convolve each pre-PSF render with each band's PSF and crop the stamp (SPEC 2).

    render: float64 or float32 [n, L, L], one unit-flux render per stamp (one morphology for
    every band), stamp at ``[m:m+S, m:m+S]``; the FFTs run in its precision. fwhm_px: [n, B]
    pixels, 0 = no convolution (output is the exact crop). Returns float64 [n, B, S, S],
    the linear convolution cropped.
    """
    n, L, _ = render.shape
    S, m = int(stamp_size), int(margin)
    fwhm, radius = crop_radii(render.shape, fwhm_px, S, m)
    nb = fwhm.shape[1]
    out = xp.empty((n, nb, S, S), dtype=xp.float64)
    crop = render[:, m:m + S, m:m + S]
    convolved = fwhm > 0
    rfft2, irfft2, ifft_y, irfft_x = _fft(xp)
    if convolved.any():
        spectrum = rfft2(render)  # once per stamp, shared by every band
    for b in range(nb):
        if convolved[:, b].any():
            # Transfer functions in the render's precision (the engine hands float32 renders,
            # see engine.py) and real, so each product is two real multiplies: no
            # FMA-dependent rounding.
            if model == "gaussian":
                # Separable: the inverse runs along y first, then only the S rows of the
                # crop go along x, and the x factor is applied to those rows only.
                gy, gx = _gaussian_factors(fwhm[:, b], radius[:, b], L, xp)
                rows = ifft_y(spectrum * gy.astype(render.dtype)[:, :, None])[:, m:m + S]
                rows *= gx.astype(render.dtype)[:, None, :]
                out[:, b] = irfft_x(rows, L)[:, :, m:m + S]
            else:
                t = transfer_functions(fwhm[:, b], L, model, beta, xp).astype(render.dtype)
                out[:, b] = irfft2(spectrum * t, (L, L))[:, m:m + S, m:m + S]
        # A delta PSF is the identity: copy the crop itself rather than an FFT round trip.
        exact = numpy.flatnonzero(~convolved[:, b])
        if exact.size:
            idx = xp.asarray(exact)
            out[idx, b] = crop[idx]
    return out
