"""Mock DESI Legacy Surveys DR10 coadd bricks: real fpack files with DR10 names, HDUs,
compression, TAN WCS and units (../shared/DATA_MODEL.md), filled with a plausible sky.

What a mock brick holds (everything is deterministic given ``seed``):

* ``legacysurvey-<brick>-image-<b>.fits.fz``: Gaussian sky noise at a DR10-like depth
  (``SKY_SIGMA``, nanomaggy per pixel, modulated by a smooth +-10 % depth pattern) plus stars
  and galaxies rendered as PSF-convolved profiles.  Galaxies are exponential (n=1) or de
  Vaucouleurs (n=4) Sersic profiles approximated by mixtures of Gaussians (fitted once by NNLS),
  so each component convolved with the Gaussian PSF (and a 1/12 px^2 pixel-integration term)
  stays an analytic Gaussian, evaluated in a small window around the source.
  RICE, SUBTRACTIVE_DITHER_2, absolute quantization step 1e-4 nanomaggy, 100x100 tiles.
* ``-invvar-<b>``: 1/sigma^2 of the noise actually drawn (RICE, NO_DITHER, absolute step 1e-4
  of the nominal value: see ``INVVAR_REL_STEP``).
  Source (Poisson) noise is not added and not in invvar (like the legacypipe coadd invvar).
* ``-psfsize-<b>``: Gaussian FWHM (arcsec) varying smoothly by at most +-9 % over the brick
  (g ~1.5", r ~1.3", i ~1.2", z ~1.25"; values on a 0.001" grid); every source is convolved
  with the local value. GZIP_1 lossless float32.
* ``-maskbits``: int32 ``MASKBITS`` (NPRIMARY outside the brick's primary area, one bright star
  with BRIGHT, SATUR_<b>, ALLMASK_<b> (invvar 0 there), MEDIUM around stars brighter than
  r=16, WISEM1/WISEM2 circles, one SUB_BLOB (bit 16) disc), ``WISEM1``/``WISEM2`` uint8 (1 where
  the corresponding bit is set), HCOMPRESS_1 lossless (tiles 100 x 100, or the largest square
  below that leaves no 1-3 pixel edge tile, which HCOMPRESS refuses: e.g. 99 x 99 for 301 px).
* ``missing_band_coverage={band: "none"|"partial"}``: image 0, invvar 0, psfsize 0 over the whole
  brick ("none") or over the region given by :func:`coverage_mask` ("partial": the pixels with
  ``(x - 0.55 size) + 0.25 (y - size/2) > 0``, about 45 % of the brick), as in DR10 South g gaps.

Brick centres: the DR10 brick grid (desiutil ``Bricks``, bricksize 0.25 deg) is recomputed:
rows centred at Dec -90, -89.75, ..., each row cut into an even number of equal RA columns
``2 ceil(1440 cos(|dec|-0.125)/2)``. A name that is on that grid gets its exact centre, bounds
and BRICKID (``0489m442`` -> 48.9168278529981, -44.25, BRICKID 100048, as the real header).
A name that is not on the grid (allowed for mocks) is centred in its name cell:
``RA = (RRRR + 0.5)/10``, ``Dec = +-(DDD + 0.5)/10`` with a 0.25 deg square primary area.

Not reproduced exactly by astropy: the empty primary has ``BITPIX = 8`` (the real file: 16);
astropy adds ``ZNAME3='NOISEBIT'`` cards and an ``EXTNAME`` to HDU 1. ``ZCMPTYPE`` is patched
to ``'RICE_ONE'`` (what the real DR10 files say; astropy writes the synonym ``RICE_1``) and
``ZQUANTIZ = 'NO_DITHER'`` is added to invvar files (astropy omits it).
"""
from __future__ import annotations

import functools
import math
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

PIXSCALE = 0.262                       # arcsec / pixel
CD = 7.27777777777778e-05              # deg / pixel
BRICKSIZE = 0.25                       # deg
TILE = (100, 100)
IMAGE_QUANT_STEP = 1e-4                # nanomaggy, absolute (quantize_level = -1e-4)
# invvar: absolute step = 1e-4 x the band's nominal invvar (1/SKY_SIGMA^2). legacypipe asks
# for a relative level (step = noise / 16, DATA_MODEL), but on a noise-free, piecewise-constant
# map cfitsio's per-tile noise estimate is erratic (steps of up to 3 % of the value seen).
INVVAR_REL_STEP = 1e-4

SKY_SIGMA = {"g": 0.0061, "r": 0.0085, "i": 0.012, "z": 0.021}   # nanomaggy / pixel
PSF_FWHM = {"g": 1.5, "r": 1.3, "i": 1.2, "z": 1.25}            # arcsec
# psfsize maps take values on a 0.001" grid: smooth to the eye, and the runs of equal values
# keep the lossless GZIP_1 compression fast (real DR10 maps are piecewise constant, too).
PSF_STEP = 1e-3
# nanomaggy / pixel, about a DECam full well in a 90 s exposure: above it SATUR_<b>,
# above 3x it ALLMASK_<b> (invvar 0)
SAT_LEVEL = 30.0

MASKBITS = {
    "NPRIMARY": 0, "BRIGHT": 1, "SATUR_G": 2, "SATUR_R": 3, "SATUR_Z": 4,
    "ALLMASK_G": 5, "ALLMASK_R": 6, "ALLMASK_Z": 7, "WISEM1": 8, "WISEM2": 9,
    "BAILOUT": 10, "MEDIUM": 11, "GALAXY": 12, "CLUSTER": 13, "SATUR_I": 14,
    "ALLMASK_I": 15, "SUB_BLOB": 16,
}

_NAME_RE = re.compile(r"^(\d{4})([pm])(\d{3})$")


# --------------------------------------------------------------------------- bricks
@dataclass(frozen=True)
class BrickInfo:
    brickname: str
    brickid: int          # 0 when the name is not on the DR10 grid
    ra: float
    dec: float
    ra1: float
    ra2: float
    dec1: float
    dec2: float
    on_grid: bool


@functools.lru_cache(maxsize=1)
def _grid():
    centers = -90.0 + BRICKSIZE * np.arange(721)
    ncol = np.empty(721, dtype=np.int64)
    for i, d in enumerate(centers):
        declo = abs(d) - BRICKSIZE / 2
        ncol[i] = int(np.ceil(360.0 / BRICKSIZE * np.cos(np.deg2rad(declo)) / 2) * 2)
    ncol[0] = ncol[-1] = 1
    first_id = np.concatenate([[1], 1 + np.cumsum(ncol)[:-1]])
    return centers, ncol, first_id


def brick_info(brickname: str) -> BrickInfo:
    """Centre, primary bounds and BRICKID of a DR10 brick name (see the module docstring)."""
    m = _NAME_RE.match(brickname)
    if m is None:
        raise ValueError(f"not a DR10 brick name (RRRr[pm]DDD): {brickname!r}")
    ra10, sign, dec10 = int(m.group(1)), m.group(2), int(m.group(3))
    centers, ncol, first_id = _grid()
    for irow, dc in enumerate(centers):
        if int(abs(dc) * 10) != dec10 or ("p" if dc >= 0 else "m") != sign:
            continue
        edges = np.linspace(0.0, 360.0, ncol[irow] + 1)
        ras = 0.5 * (edges[:-1] + edges[1:])
        hit = np.nonzero((ras * 10).astype(np.int64) == ra10)[0]
        if len(hit):
            j = int(hit[0])
            return BrickInfo(brickname, int(first_id[irow] + j), float(ras[j]), float(dc),
                             float(edges[j]), float(edges[j + 1]),
                             float(max(dc - BRICKSIZE / 2, -90.0)),
                             float(min(dc + BRICKSIZE / 2, 90.0)), True)
    ra = (ra10 + 0.5) / 10.0
    dec = (dec10 + 0.5) / 10.0 * (1 if sign == "p" else -1)
    if not (0 <= ra < 360 and -90 <= dec <= 90):
        raise ValueError(f"brick name out of range: {brickname!r}")
    half_ra = BRICKSIZE / 2 / max(math.cos(math.radians(abs(dec))), 1e-3)
    return BrickInfo(brickname, 0, ra, dec, ra - half_ra, ra + half_ra,
                     dec - BRICKSIZE / 2, dec + BRICKSIZE / 2, False)


def brick_center(brickname: str) -> tuple[float, float]:
    """(RA, Dec) in degrees of the brick centre used by the mock (= CRVAL)."""
    b = brick_info(brickname)
    return b.ra, b.dec


def brick_dir(root, brickname: str, layout: str = "legacysurvey") -> Path:
    if layout == "legacysurvey":
        return Path(root) / brickname[:3] / brickname
    if layout == "flat":
        return Path(root) / brickname
    raise ValueError(f"layout must be 'legacysurvey' or 'flat', not {layout!r}")


def wcs_header(brickname: str, size: int = 3600):
    """A TAN WCS header as DR10: CRVAL = brick centre, CRPIX = (size+1)/2, CD = -+0.262"/px."""
    from astropy.io import fits
    b = brick_info(brickname)
    h = fits.Header()
    h["CTYPE1"] = ("RA---TAN", "TANgent plane")
    h["CTYPE2"] = ("DEC--TAN", "TANgent plane")
    h["CRVAL1"] = (b.ra, "Reference RA")
    h["CRVAL2"] = (b.dec, "Reference Dec")
    h["CRPIX1"] = ((size + 1) / 2.0, "Reference x")
    h["CRPIX2"] = ((size + 1) / 2.0, "Reference y")
    # verbatim DR10 cards: astropy would cut -7.27777777777778E-05 (21 characters) to 20
    h.append(fits.Card.fromstring("CD1_1   = -7.27777777777778E-05 / CD matrix"))
    h["CD1_2"] = (0.0, "CD matrix")
    h["CD2_1"] = (0.0, "CD matrix")
    h.append(fits.Card.fromstring("CD2_2   = 7.27777777777778E-05 / CD matrix"))
    h["IMAGEW"] = (float(size), "Image width")
    h["IMAGEH"] = (float(size), "Image height")
    h["EQUINOX"] = (2000.0, "WCS epoch")
    return h


def coverage_mask(size: int, kind: str | None) -> np.ndarray:
    """Boolean [size, size], True where the band has data ('none': nowhere; 'partial': see
    the module docstring; None: everywhere)."""
    if kind is None:
        return np.ones((size, size), dtype=bool)
    if kind == "none":
        return np.zeros((size, size), dtype=bool)
    if kind == "partial":
        x = np.arange(size, dtype=np.float64)[None, :]
        y = np.arange(size, dtype=np.float64)[:, None]
        return ((x - 0.55 * size) + 0.25 * (y - size / 2.0)) <= 0
    raise ValueError(f"missing_band_coverage values must be 'none' or 'partial', not {kind!r}")


# --------------------------------------------------------------------------- profiles
@functools.lru_cache(maxsize=None)
def _mog(n: float):
    """Mixture-of-Gaussians approximation of a unit-flux Sersic profile of index n and unit
    circularised half-light radius: (amplitudes, variances), amplitudes summing to 1."""
    from scipy.optimize import nnls
    from scipy.special import gammaincinv
    bn = gammaincinv(2 * n, 0.5)
    r = np.geomspace(1e-3, 8.0, 600)
    prof = np.exp(-bn * (r ** (1.0 / n) - 1.0))
    var = np.geomspace(1e-5 if n > 2 else 1e-3, 8.0 if n > 2 else 3.0, 14)
    basis = np.exp(-r[:, None] ** 2 / (2 * var[None, :])) / (2 * np.pi * var[None, :])
    w = np.sqrt(r * np.gradient(r))           # least squares in flux, not surface brightness
    amp, _ = nnls(basis * w[:, None], prof * w)
    keep = amp > 1e-3 * amp.sum()              # drop negligible components (speed)
    amp, var = amp[keep], var[keep]
    return amp / amp.sum(), var


def _add_source(img, x, y, flux, sigma_psf, n=None, re_px=0.0, q=1.0, phi=0.0,
                max_half=80, halo=None):
    """Add a PSF-convolved source of total ``flux`` centred at pixel (x, y) (0-based) to img.

    ``n=None`` is a point source.  ``halo=(frac, sigma)`` adds a wide Gaussian wing."""
    if n is None or re_px <= 0:
        amps, covs = np.array([1.0]), [np.zeros((2, 2))]
    else:
        a, v = _mog(float(n))
        c, s = math.cos(phi), math.sin(phi)
        rot = np.array([[c, -s], [s, c]])
        covs = [rot @ np.diag([vk * re_px ** 2 / q, vk * re_px ** 2 * q]) @ rot.T for vk in v]
        amps = a
    comps = [(amp, cov + (sigma_psf ** 2 + 1.0 / 12.0) * np.eye(2)) for amp, cov in zip(amps, covs)]
    if halo is not None:
        comps = [(amp * (1 - halo[0]), cov) for amp, cov in comps]
        comps.append((halo[0], (halo[1] ** 2 + 1.0 / 12.0) * np.eye(2)))
    big = max(np.linalg.eigvalsh(cov)[-1] for amp, cov in comps if amp > 3e-3)
    half = int(min(max_half, math.ceil(4.5 * math.sqrt(big))))
    h, w = img.shape
    ix, iy = int(round(x)), int(round(y))
    x0, x1 = max(ix - half, 0), min(ix + half + 1, w)
    y0, y1 = max(iy - half, 0), min(iy + half + 1, h)
    if x0 >= x1 or y0 >= y1:
        return
    dx = (np.arange(x0, x1) - x)[None, :]
    dy = (np.arange(y0, y1) - y)[:, None]
    out = np.zeros((y1 - y0, x1 - x0))
    for amp, cov in comps:
        inv = np.linalg.inv(cov)
        norm = flux * amp / (2 * np.pi * math.sqrt(np.linalg.det(cov)))
        out += norm * np.exp(-0.5 * (inv[0, 0] * dx * dx + 2 * inv[0, 1] * dx * dy
                                     + inv[1, 1] * dy * dy))
    img[y0:y1, x0:x1] += out.astype(img.dtype)


# --------------------------------------------------------------------------- plan
@dataclass
class MockPlan:
    """Everything random about a mock brick, drawn before any pixel: sources and masks."""
    info: BrickInfo
    size: int
    bands: str
    seed: int
    # sources: dict of arrays: x, y (0-based pixels), kind ('star'|'galaxy'|'target'),
    # mag_<b>, n, re_arcsec, q, phi (rad)
    sources: dict
    targets_xy: np.ndarray                      # [ntarget, 2] (x, y), NaN when off the image
    bright_star: dict | None                    # x, y, mag_r, radius_px
    wise_discs: list = field(default_factory=list)    # (x, y, radius_px, bit)
    medium_discs: list = field(default_factory=list)  # (x, y, radius_px)
    sub_blob: tuple | None = None                      # (x, y, radius_px)
    psf_pattern: tuple = ()                            # coefficients (see _smooth)
    depth_pattern: tuple = ()
    coverage: dict = field(default_factory=dict)
    masks: bool = True

    def psf_fwhm(self, band, x, y):
        """FWHM (arcsec) of the psfsize map of ``band`` at pixel (x, y), ignoring coverage."""
        px, py = self._psf_1d(band)
        f = PSF_FWHM[band] * np.interp(x, np.arange(self.size), px) * \
            np.interp(y, np.arange(self.size), py)
        return np.round(f / PSF_STEP) * PSF_STEP

    def _psf_1d(self, band):
        k = self.bands.index(band)
        return _smooth(self.size, self.psf_pattern[k])

    def _depth_1d(self, band):
        # on a 0.5 % grid: runs of equal invvar keep the RICE files small (real coadd invvar
        # is piecewise constant, too)
        k = self.bands.index(band)
        fx, fy = _smooth(self.size, self.depth_pattern[k])
        return np.round(fx / 5e-3) * 5e-3, np.round(fy / 5e-3) * 5e-3


def _smooth(size, coef):
    """Two 1-D smooth factors (along x, along y): 1 + a u + b (u^2 - 1/3), u in [-1, 1]."""
    ax, bx, ay, by = coef
    u = np.linspace(-1.0, 1.0, size)
    fx = 1.0 + ax * u + bx * (u * u - 1.0 / 3.0)
    fy = 1.0 + ay * u + by * (u * u - 1.0 / 3.0)
    return fx, fy


def _world2pix(brickname, size, ra, dec):
    from astropy.wcs import WCS
    w = WCS(wcs_header(brickname, size))
    x, y = w.all_world2pix(np.atleast_1d(ra), np.atleast_1d(dec), 0)
    return np.asarray(x, float), np.asarray(y, float)


def _mask_radius_arcsec(mag):
    """legacypipe reference.py mask_radius_for_mag: BRIGHT-star mask radius (arcsec)."""
    return 1630.0 * 1.396 ** (-mag)


def plan_mock_brick(brickname, *, size=3600, bands="grz", seed=0, targets=None,
                    missing_band_coverage=None, masks=True, n_stars=None,
                    n_galaxies=None) -> MockPlan:
    """Draw the sources and masks of a mock brick (cheap, no pixels). Same arguments, same
    result: :func:`write_mock_brick` renders this plan."""
    bands = "".join(bands.split(",")) if "," in bands else bands
    for b in bands:
        if b not in SKY_SIGMA:
            raise ValueError(f"unknown band {b!r} (known: {''.join(SKY_SIGMA)})")
    if not bands or len(set(bands)) != len(bands):
        raise ValueError(f"bands must be distinct, at least one: {bands!r}")
    if size < 16:
        raise ValueError("size must be >= 16")
    info = brick_info(brickname)
    rng = np.random.default_rng([seed, 0])
    area = (size / 3600.0) ** 2
    n_stars = int(round(300 * area)) if n_stars is None else int(n_stars)
    n_galaxies = int(round(1500 * area)) if n_galaxies is None else int(n_galaxies)

    # targets
    if targets is not None and len(targets):
        t = np.asarray(targets, dtype=float).reshape(-1, 2)
        tx, ty = _world2pix(brickname, size, t[:, 0], t[:, 1])
        off = (tx < -0.5) | (tx > size - 0.5) | (ty < -0.5) | (ty > size - 0.5)
        if off.any():
            warnings.warn(f"{int(off.sum())} mock target(s) off the {size}px image of "
                          f"{brickname}: not placed", stacklevel=2)
        tx, ty = np.where(off, np.nan, tx), np.where(off, np.nan, ty)
    else:
        tx = ty = np.zeros(0)
    txy = np.stack([tx, ty], axis=1)
    tgood = txy[np.isfinite(txy[:, 0])]

    def far_from_targets(x, y, d):
        if len(tgood) == 0:
            return np.ones(np.shape(x), dtype=bool)
        dd = np.hypot(np.asarray(x)[..., None] - tgood[:, 0],
                      np.asarray(y)[..., None] - tgood[:, 1])
        return (dd > d).all(axis=-1)

    # bright star (first, so the other masks can avoid it): BRIGHT radius ~ size / 10 (12 to
    # 160 px), its legacypipe magnitude for that radius, but never fainter than r = 13 so that
    # its core saturates (SATUR/ALLMASK) even in small bricks.
    bright = None
    if masks:
        r_px = min(max(size / 10.0, 12.0), 160.0)
        mag = min(math.log(1630.0 / (r_px * PIXSCALE)) / math.log(1.396), 13.0)
        for _ in range(200):
            x, y = rng.uniform(0.15 * size, 0.85 * size, 2)
            if far_from_targets(x, y, r_px * 1.3 + 24):
                bright = dict(x=float(x), y=float(y), mag_r=float(mag), radius_px=float(r_px))
                break

    # population
    src = {k: [] for k in ("x", "y", "kind", "n", "re_arcsec", "q", "phi", "mag_r", "gr", "rz")}

    def add(kind, x, y, mag_r, gr, rz, n=0.0, re=0.0, q=1.0, phi=0.0):
        for k, v in zip(src, (x, y, kind, n, re, q, phi, mag_r, gr, rz)):
            src[k].append(v)

    for (x, y) in tgood:                        # LRG-like: deV, r 19-20, red
        add("target", x, y, rng.uniform(19.0, 20.0), rng.uniform(1.6, 1.9),
            rng.uniform(0.9, 1.2), 4.0, rng.uniform(0.9, 1.5), rng.uniform(0.7, 0.9),
            rng.uniform(0, np.pi))
    clear = 12.0 / PIXSCALE                     # keep 12" around targets free of other sources

    def positions(m):
        x = rng.uniform(-10, size + 10, m)
        y = rng.uniform(-10, size + 10, m)
        return x, y

    x, y = positions(n_stars)
    mags = 16.0 + 6.5 * rng.random(n_stars) ** 0.6          # more faint stars
    nbright_stars = min(n_stars, max(1, n_stars // 100))
    mags[:nbright_stars] = rng.uniform(14.0, 16.0, nbright_stars)   # MEDIUM-masked stars,
    for i in range(nbright_stars):                                   # kept on the image
        for _ in range(100):
            x[i], y[i] = rng.uniform(0.05 * size, 0.95 * size, 2)
            if far_from_targets(x[i], y[i], clear + 20):
                break
    for i in range(n_stars):
        if far_from_targets(x[i], y[i], clear):
            add("star", x[i], y[i], mags[i], rng.uniform(0.3, 1.4), rng.uniform(0.1, 0.6))
    x, y = positions(n_galaxies)
    # number counts rising ~ 10^(0.3 m) between r = 18 and 23.5
    u = rng.random(n_galaxies)
    lo, hi, s = 18.0, 23.5, 0.3 * math.log(10)
    mags = np.log(np.exp(s * lo) + u * (np.exp(s * hi) - np.exp(s * lo))) / s
    for i in range(n_galaxies):
        if not far_from_targets(x[i], y[i], clear):
            continue
        re = float(np.clip(10 ** (0.25 - 0.12 * (mags[i] - 18.0) + 0.15 * rng.standard_normal()),
                           0.15, 4.0))
        n = 4.0 if rng.random() < 0.35 else 1.0
        add("galaxy", x[i], y[i], mags[i], rng.uniform(0.3, 1.5), rng.uniform(0.2, 1.0),
            n, re, rng.uniform(0.3, 1.0), rng.uniform(0, np.pi))
    sources = {k: np.array(v) for k, v in src.items()}

    wise, medium, sub_blob = [], [], None
    if masks:
        if bright is not None:
            wise.append((bright["x"], bright["y"], 0.6 * bright["radius_px"], MASKBITS["WISEM1"]))
            wise.append((bright["x"], bright["y"], 0.45 * bright["radius_px"], MASKBITS["WISEM2"]))
        for _ in range(200):                    # a WISE-only bright-W1 source elsewhere
            x, y = rng.uniform(0.1 * size, 0.9 * size, 2)
            r = max(0.04 * size, 8.0)
            ok = far_from_targets(x, y, r + 16)
            if ok and bright is not None:
                ok = math.hypot(x - bright["x"], y - bright["y"]) > bright["radius_px"] + r
            if ok:
                wise.append((float(x), float(y), float(r), MASKBITS["WISEM1"]))
                wise.append((float(x), float(y), float(0.7 * r), MASKBITS["WISEM2"]))
                break
        st = sources["kind"] == "star"
        for i in np.nonzero(st & (sources["mag_r"] < 16.0))[0]:
            medium.append((float(sources["x"][i]), float(sources["y"][i]),
                           float(0.5 * _mask_radius_arcsec(sources["mag_r"][i]) / PIXSCALE)))
        rb = max(0.02 * size, 6.0)               # SUB_BLOB (bit 16) around the brightest
        gal = np.nonzero((sources["kind"] == "galaxy")                   # galaxy on the image
                         & (sources["x"] > rb) & (sources["x"] < size - 1 - rb)
                         & (sources["y"] > rb) & (sources["y"] < size - 1 - rb))[0]
        if len(gal):
            i = gal[np.argmin(sources["mag_r"][gal])]
            sub_blob = (float(sources["x"][i]), float(sources["y"][i]), rb)
        else:
            sub_blob = (float(rng.uniform(0.2, 0.8) * size), float(rng.uniform(0.2, 0.8) * size),
                        rb)

    nb = len(bands)
    # each 1-D factor 1 + a u + b (u^2 - 1/3) stays within 1 +- 5/3 max(|a|, |b|): psfsize
    # within +-9 % of nominal (shared pattern + a small per-band part), invvar within +-10 %
    shared = rng.uniform(-0.022, 0.022, 4)
    psf_pattern = tuple(tuple(shared + rng.uniform(-0.005, 0.005, 4)) for _ in range(nb))
    depth_pattern = tuple(tuple(rng.uniform(-0.03, 0.03, 4)) for _ in range(nb))
    coverage = dict(missing_band_coverage or {})
    for b, kind in coverage.items():
        if b not in bands:
            raise ValueError(f"missing_band_coverage names band {b!r} not in bands {bands!r}")
        coverage_mask(4, kind)                   # validates kind
    return MockPlan(info, size, bands, seed, sources, txy, bright, wise, medium, sub_blob,
                    psf_pattern, depth_pattern, coverage, masks)


# --------------------------------------------------------------------------- rendering
def _disc(mask, x, y, r, value):
    h, w = mask.shape
    x0, x1 = max(int(math.floor(x - r)), 0), min(int(math.ceil(x + r)) + 1, w)
    y0, y1 = max(int(math.floor(y - r)), 0), min(int(math.ceil(y + r)) + 1, h)
    if x0 >= x1 or y0 >= y1:
        return
    dx = np.arange(x0, x1)[None, :] - x
    dy = np.arange(y0, y1)[:, None] - y
    sub = mask[y0:y1, x0:x1]
    sub[dx * dx + dy * dy <= r * r] |= value


def _band_mag(plan, i, band):
    s = plan.sources
    m = s["mag_r"][i]
    if band == "g":
        return m + s["gr"][i]
    if band == "z":
        return m - s["rz"][i]
    if band == "i":
        return m - 0.5 * s["rz"][i]
    return m


def render_band(plan: MockPlan, band: str):
    """(image, invvar, psfsize, satur, allmask) of one band, float32 / bool arrays."""
    size = plan.size
    k = plan.bands.index(band)
    cov = coverage_mask(size, plan.coverage.get(band))
    px, py = plan._psf_1d(band)
    psfsize = (np.round(PSF_FWHM[band] * py[:, None] * px[None, :] / PSF_STEP)
               * PSF_STEP).astype(np.float32)
    dx_, dy_ = plan._depth_1d(band)
    sig_y = (SKY_SIGMA[band] / np.sqrt(dy_)).astype(np.float32)
    sig_x = (1.0 / np.sqrt(dx_)).astype(np.float32)
    rng = np.random.default_rng([plan.seed, 1, k])
    img = rng.standard_normal((size, size), dtype=np.float32)
    img *= sig_y[:, None]
    img *= sig_x[None, :]
    invvar = (1.0 / (sig_y[:, None] * sig_x[None, :]) ** 2).astype(np.float32)

    s = plan.sources
    fwhm2sig = 1.0 / (2 * math.sqrt(2 * math.log(2)) * PIXSCALE)
    for i in range(len(s["x"])):
        x, y = float(s["x"][i]), float(s["y"][i])
        flux = 10 ** (-0.4 * (_band_mag(plan, i, band) - 22.5))
        sig = float(plan.psf_fwhm(band, x, y)) * fwhm2sig
        if s["kind"][i] == "star":
            _add_source(img, x, y, flux, sig, max_half=40)
        else:
            _add_source(img, x, y, flux, sig, n=float(s["n"][i]),
                        re_px=float(s["re_arcsec"][i]) / PIXSCALE, q=float(s["q"][i]),
                        phi=float(s["phi"][i]), max_half=80)
    star, satur, allmask = _bright_star(plan, band, cov)
    if star is not None:
        img += star
        invvar[allmask] = 0.0
        del star
    img[~cov] = 0.0
    invvar[~cov] = 0.0
    psfsize[~cov] = 0.0
    return img, invvar, psfsize, satur, allmask


def _bright_star(plan, band, cov):
    """(image, SATUR mask, ALLMASK mask) of the bright star in ``band``, or (None,) * 3."""
    if plan.bright_star is None:
        return None, None, None
    size = plan.size
    b = plan.bright_star
    fwhm2sig = 1.0 / (2 * math.sqrt(2 * math.log(2)) * PIXSCALE)
    mag = b["mag_r"] + {"g": 0.8, "r": 0.0, "i": -0.2, "z": -0.35}[band]
    star = np.zeros((size, size), np.float32)
    sig = float(plan.psf_fwhm(band, b["x"], b["y"])) * fwhm2sig
    _add_source(star, b["x"], b["y"], 10 ** (-0.4 * (mag - 22.5)), sig,
                max_half=int(b["radius_px"]), halo=(0.05, 4.0 * sig))
    satur = (star > SAT_LEVEL) & cov
    allmask = (star > 3 * SAT_LEVEL) & cov
    np.minimum(star, SAT_LEVEL, out=star)        # flat-topped saturated core
    return star, satur, allmask


def render_maskbits(plan: MockPlan):
    """(MASKBITS int32, WISEM1 uint8, WISEM2 uint8) arrays of the mock brick."""
    size = plan.size
    maskbits = np.zeros((size, size), dtype=np.int32)
    wm1 = np.zeros((size, size), dtype=np.uint8)
    wm2 = np.zeros((size, size), dtype=np.uint8)
    if plan.bright_star is not None:
        for band in plan.bands:
            cov = coverage_mask(size, plan.coverage.get(band))
            _, satur, allmask = _bright_star(plan, band, cov)
            bu = band.upper()
            maskbits[satur] |= np.int32(1 << MASKBITS[f"SATUR_{bu}"])
            maskbits[allmask] |= np.int32(1 << MASKBITS[f"ALLMASK_{bu}"])
    if not plan.masks:
        return maskbits, wm1, wm2
    maskbits[_nprimary(plan)] |= np.int32(1 << MASKBITS["NPRIMARY"])
    if plan.bright_star is not None:
        b = plan.bright_star
        _disc(maskbits, b["x"], b["y"], b["radius_px"], np.int32(1 << MASKBITS["BRIGHT"]))
    for (x, y, r) in plan.medium_discs:
        _disc(maskbits, x, y, r, np.int32(1 << MASKBITS["MEDIUM"]))
    for (x, y, r, bit) in plan.wise_discs:
        _disc(maskbits, x, y, r, np.int32(1 << bit))
    if plan.sub_blob is not None:
        x, y, r = plan.sub_blob
        _disc(maskbits, x, y, r, np.int32(1 << MASKBITS["SUB_BLOB"]))
    wm1[(maskbits & (1 << MASKBITS["WISEM1"])) != 0] = 1
    wm2[(maskbits & (1 << MASKBITS["WISEM2"])) != 0] = 1
    return maskbits, wm1, wm2


def _nprimary(plan: MockPlan):
    """Boolean mask of pixels outside the brick's primary RA/Dec bounds (border strips only:
    the primary area reaches within ~300 px of the 3600 px edges for |Dec| < 85)."""
    from astropy.wcs import WCS
    size, info = plan.size, plan.info
    out = np.zeros((size, size), dtype=bool)
    w = WCS(wcs_header(info.brickname, size))
    strip = min(300, size // 2 + 1)
    ra_mid, ra_half = 0.5 * (info.ra1 + info.ra2), 0.5 * (info.ra2 - info.ra1)

    def outside(ys, xs):
        yy, xx = np.meshgrid(ys, xs, indexing="ij")
        ra, dec = w.all_pix2world(xx.ravel(), yy.ravel(), 0)
        dra = (ra - ra_mid + 180.0) % 360.0 - 180.0
        bad = (np.abs(dra) > ra_half) | (dec < info.dec1) | (dec >= info.dec2)
        return bad.reshape(yy.shape)

    all_x, all_y = np.arange(size), np.arange(size)
    out[:strip, :] |= outside(all_y[:strip], all_x)
    out[size - strip:, :] |= outside(all_y[size - strip:], all_x)
    out[:, :strip] |= outside(all_y, all_x[:strip])
    out[:, size - strip:] |= outside(all_y, all_x[size - strip:])
    return out


def _common_cards(h, plan, product, band=None):
    info = plan.info
    h["LEGPIPEV"] = ("gpu_inject-mock", "legacypipe git version (mock)")
    h["LSDR"] = ("DR10", "Data release number")
    h["SURVEY"] = ("DECaLS+BASS+MzLS", "The LegacySurveys")
    h["DRVERSIO"] = (10000, "LegacySurveys Data Release number")
    h["MOCK"] = (True, "gpu_inject mock brick: simulated pixels")
    h["MOCKSEED"] = (plan.seed, "gpu_inject mock seed")
    h["BRICK"] = (info.brickname, "LegacySurveys brick RRRr[pm]DDd")
    h["BRICKID"] = (info.brickid, "LegacySurveys brick id")
    h["RAMIN"] = (info.ra1, "Brick RA min (deg)")
    h["RAMAX"] = (info.ra2, "Brick RA max (deg)")
    h["DECMIN"] = (info.dec1, "Brick Dec min (deg)")
    h["DECMAX"] = (info.dec2, "Brick Dec max (deg)")
    h["CENTRA"] = (info.ra, "Brick center RA (deg)")
    h["CENTDEC"] = (info.dec, "Brick center Dec (deg)")
    h["BANDS"] = (plan.bands, "Bands touching this brick")
    for i, b in enumerate(plan.bands):
        h[f"BAND{i}"] = (b, f"Band {i}")
    h.extend(wcs_header(info.brickname, plan.size), update=True)
    h["INSTRUME"] = ("DECam", "Instrument name")
    if band is not None:
        h["FILTERX"] = (band, "Filter short name")
    h["IMTYPE"] = (product, "LegacySurveys image type")
    h["PRODTYPE"] = (product, "NOAO image type")
    return h


def _write(path, hdus, patch=None):
    from astropy.io import fits
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        fits.HDUList([fits.PrimaryHDU()] + hdus).writeto(tmp, overwrite=True)
        if patch:
            with fits.open(tmp, mode="update", disable_image_compression=True) as f:
                for ext, cards in patch.items():
                    for key, val, comment, after in cards:
                        f[ext].header.set(key, val, comment, after=after)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _hcompress_tile(size):
    """100 x 100, unless the last tile would be 1-3 pixels wide (HCOMPRESS needs >= 4): then
    the largest square tile below 100 that leaves 0 or >= 4 pixels."""
    for t in range(100, 49, -1):
        if size <= t or size % t == 0 or size % t >= 4:
            return (t, t)
    return (size, size)


def write_mock_brick(root, brickname, *, size=3600, bands="grz", layout="legacysurvey",
                     seed=0, targets=None, missing_band_coverage=None, masks=True,
                     n_stars=None, n_galaxies=None) -> dict:
    """Write a DR10-format mock brick under ``root`` and return its paths:
    ``{"image-g": Path, "invvar-g": ..., "psfsize-g": ..., ..., "maskbits": Path}``.

    ``targets``: (ra, dec) pairs (deg) where LRG-like galaxies (de Vaucouleurs, r 19-20,
    R_e 0.9-1.5", g-r 1.6-1.9, r-z 0.9-1.2) are centred; other sources keep 12" away from them
    and the bright-star mask avoids them. ``n_stars``/``n_galaxies`` default to 300/1500 per
    3600^2 pixels, scaled by area. ``masks=False``: no mask regions and no bright star
    (maskbits all 0). Files are written atomically (temporary name + rename)."""
    from astropy.io import fits
    plan = plan_mock_brick(brickname, size=size, bands=bands, seed=seed, targets=targets,
                           missing_band_coverage=missing_band_coverage, masks=masks,
                           n_stars=n_stars, n_galaxies=n_galaxies)
    d = brick_dir(root, brickname, layout)
    d.mkdir(parents=True, exist_ok=True)
    paths = {}
    for k, band in enumerate(plan.bands):
        img, invvar, psfsize, _, _ = render_band(plan, band)
        # image
        h = _common_cards(fits.Header(), plan, "image", band)
        h["MAGZERO"] = (22.5, "Magnitude zeropoint")
        h["BUNIT"] = ("nanomaggy", "AB mag = 22.5 - 2.5*log10(nanomaggy)")
        h[f"COSKY_{band.upper()}"] = (0.0, "Sky level estimated (+subtracted) from coadd")
        dither = 1 + (seed * 7919 + 101 * k + sum(map(ord, brickname))) % 10000
        hdu = fits.CompImageHDU(img, header=h, compression_type="RICE_1", tile_shape=TILE,
                                quantize_level=-IMAGE_QUANT_STEP, quantize_method=2,
                                dither_seed=dither)
        p = d / f"legacysurvey-{brickname}-image-{band}.fits.fz"
        _write(p, [hdu], {1: [("ZCMPTYPE", "RICE_ONE", "compression algorithm", None)]})
        paths[f"image-{band}"] = p
        # invvar
        h = _common_cards(fits.Header(), plan, "invvar", band)
        h["BUNIT"] = ("1/nanomaggy^2", "Ivar of ABmag=22.5-2.5*log10(nmgy)")
        hdu = fits.CompImageHDU(invvar, header=h, compression_type="RICE_1", tile_shape=TILE,
                                quantize_level=-INVVAR_REL_STEP / SKY_SIGMA[band] ** 2,
                                quantize_method=-1)
        p = d / f"legacysurvey-{brickname}-invvar-{band}.fits.fz"
        _write(p, [hdu], {1: [("ZCMPTYPE", "RICE_ONE", "compression algorithm", None),
                              ("ZQUANTIZ", "NO_DITHER", "Pixel Quantization Algorithm",
                               "ZCMPTYPE")]})
        paths[f"invvar-{band}"] = p
        # psfsize
        h = _common_cards(fits.Header(), plan, "psfsize", band)
        h["BUNIT"] = ("arcsec", "FWHM of the PSF")
        hdu = fits.CompImageHDU(psfsize, header=h, compression_type="GZIP_1", tile_shape=TILE,
                                quantize_level=0.0)
        p = d / f"legacysurvey-{brickname}-psfsize-{band}.fits.fz"
        _write(p, [hdu])
        paths[f"psfsize-{band}"] = p
        del img, invvar, psfsize

    maskbits, wm1, wm2 = render_maskbits(plan)
    hdus = []
    for name, arr in (("MASKBITS", maskbits), ("WISEM1", wm1), ("WISEM2", wm2)):
        h = _common_cards(fits.Header(), plan, "maskbits")
        if name == "MASKBITS":
            for bname, bit in MASKBITS.items():
                h[f"MBIT{bit}"] = (bname, f"maskbits bit {bit}")
        else:
            h["COMMENT"] = f"1 where MASKBITS bit {MASKBITS[name]} ({name}) is set (mock)"
        hdus.append(fits.CompImageHDU(arr, header=h, name=name, compression_type="HCOMPRESS_1",
                                      tile_shape=_hcompress_tile(size), hcomp_scale=0))
    p = d / f"legacysurvey-{brickname}-maskbits.fits.fz"
    _write(p, hdus)
    paths["maskbits"] = p
    return paths
