"""Cut grz stamps (image, invvar, maskbits, psfsize at the centre) from the coadds of a brick.

Placement is SPEC section 1 exactly. For a target at brick pixel ``(px, py)`` (0-based, from
the WCS in each file's own header; nothing assumes 3600 pixels or CRPIX 1800.5)::

    x0 = floor(px + 0.5) - N//2        y0 = floor(py + 0.5) - N//2
    stamp = brick[y0:y0+N, x0:x0+N]
    lens_offset = (px - x0 - N//2, py - y0 - N//2)      # in [-0.5, 0.5)

The psfsize value of a stamp is the map at its centre pixel ``brick[y0+N//2, x0+N//2]``.

Edges: a stamp that runs off the image is padded with image 0, invvar 0 and maskbits 0 and
flagged ``edge=True`` (padded pixels are exactly those with invvar 0 *outside* the image;
maskbits 0 keeps "no bit set" meaning "nothing known", and the invvar of 0 already excludes
them from any weighted statistic). A target whose centre pixel ``(floor(px+0.5),
floor(py+0.5))`` is off the image (or whose ra/dec is not finite) fails its row with an error
naming ra, dec and the brick; its arrays are all zero.

Reading strategy, decided per brick from the number of stamps (``choose_strategy``):

* ``"tiles"``: each stamp reads its region through fitsio (local files) or
  ``CompImageHDU.section`` (files held in memory), which decompress only the tiles (100x100
  in DR10) the region overlaps: <= 4 tiles for a 64x64 stamp.
* ``"whole"``: each file is decompressed once (by astropy) and every stamp is a slice of it.

Files are opened by :meth:`CoaddSource.open_fits` (see ``coadd.py``): a local file through
fitsio alone: 2.6 ms for the 10 files of a grz brick, where astropy's ``fits.open`` takes 36
ms, most of it building the image headers of the tile-compressed HDUs.

Measured on 3600x3600 DR10-format mock bricks (RICE image/invvar, GZIP psfsize, HCOMPRESS
maskbits), grz, 64x64 stamps, one core (``benchmarks/cutout_speed.py``): astropy's
``section`` costs 0.45-0.65 ms of fixed overhead per call (its header checks) plus ~0.05 ms
per tile, so local files are read by tiles through fitsio (cfitsio, as legacypipe does; the
same tiles, bit for bit): per window 0.41 ms image, 0.12 ms invvar, 0.13 ms for the psfsize
pixel (one GZIP tile), 0.44 ms maskbits, ~2.3 ms per grz stamp in all. A whole-image
decompression through astropy costs about 0.06 ms per tile, 0.8 s per brick (cfitsio's is
1.5-3x slower, hence astropy). A stamp read by tiles therefore costs about
``TILE_CALL_COSTS[reader]`` (0.93 with fitsio, 1.6 through astropy for files held in memory)
x its tile count in whole-image tile equivalents, and ``tiles`` wins while
``n_stamps * tiles_per_stamp * tile_call_cost < n_tiles_in_image``: for DR10 (1296 tiles of
100x100; a 64x64 or 96x96 stamp overlaps at most 2x2 of them) fewer than ~350 stamps per
brick (measured: 300 stamps 0.68 s by tiles, 0.80 s whole; 400 stamps 0.95 s by tiles,
0.89 s whole). ``choose_strategy`` computes it from the actual image and tile shapes of the
brick, so small or differently tiled images are handled too. Either way each file is opened
once per brick and no pixel is read twice in ``whole`` mode.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from .coadd import BrickFiles, CoaddError, ImageFile, fitsio

__all__ = [
    "StampSet",
    "cut_stamps",
    "cut_brick",
    "choose_strategy",
    "wcs_from_header",
    "sky_to_pixel",
    "stamp_origin",
    "TILE_CALL_COST",
    "TILE_CALL_COSTS",
]

#: Cost of one stamp's tile read per tile touched, relative to the per-tile cost of a
#: whole-image decompression (measured, see module docstring), by the library that reads
#: the tiles (:attr:`ImageFile.reader`): fitsio for local files, astropy's ``section`` for
#: files held in memory.
TILE_CALL_COSTS = {"fitsio": 0.93, "astropy": 1.6}
#: The cost for local files, which is what most runs read.
TILE_CALL_COST = TILE_CALL_COSTS["fitsio" if fitsio is not None else "astropy"]


# --------------------------------------------------------------------------- WCS helpers
def wcs_from_header(header: fits.Header) -> WCS:
    """Celestial WCS from an image header (for a CompImageHDU: its image header)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        w = WCS(header, naxis=2)
    if not w.has_celestial:
        raise ValueError("header has no celestial WCS")
    return w


def sky_to_pixel(wcs: WCS, ra, dec) -> tuple[np.ndarray, np.ndarray]:
    """0-based pixel ``(px, py)`` as 1-D float64 arrays (never 0-d arrays).

    For one target use ``float(px[0])``.
    """
    ra = np.atleast_1d(np.asarray(ra, dtype=np.float64))
    dec = np.atleast_1d(np.asarray(dec, dtype=np.float64))
    px, py = wcs.all_world2pix(ra, dec, 0)
    return (np.atleast_1d(np.asarray(px, dtype=np.float64)),
            np.atleast_1d(np.asarray(py, dtype=np.float64)))


def stamp_origin(px, py, size: int):
    """``(x0, y0, offset_x, offset_y)`` of SPEC section 1; int64 origins, float64 offsets."""
    px = np.asarray(px, dtype=np.float64)
    py = np.asarray(py, dtype=np.float64)
    h = size // 2
    with np.errstate(invalid="ignore"):
        cx = np.floor(px + 0.5)
        cy = np.floor(py + 0.5)
    x0 = np.where(np.isfinite(cx), cx, 0).astype(np.int64) - h
    y0 = np.where(np.isfinite(cy), cy, 0).astype(np.int64) - h
    return x0, y0, px - x0 - h, py - y0 - h


def _pixscale_arcsec(wcs: WCS) -> float:
    from astropy.wcs.utils import proj_plane_pixel_scales

    s = proj_plane_pixel_scales(wcs.celestial)
    return float(np.sqrt(abs(s[0] * s[1])) * 3600.0)


_WCS_KEYS = ("CTYPE1", "CTYPE2", "CRVAL1", "CRVAL2", "CRPIX1", "CRPIX2", "CD1_1", "CD1_2",
             "CD2_1", "CD2_2", "CDELT1", "CDELT2", "PC1_1", "PC1_2", "PC2_1", "PC2_2")


def _wcs_cards(header) -> tuple:
    return tuple(header.get(k) for k in _WCS_KEYS)


def _same_cards(a: tuple, b: tuple) -> bool:
    """The pixel grids agree: same WCS cards (numbers to 1e-9 relative)."""
    for x, y in zip(a, b):
        if isinstance(x, (int, float)) and isinstance(y, (int, float)):
            if not math.isclose(float(x), float(y), rel_tol=1e-9, abs_tol=1e-12):
                return False
        elif (x.strip() if isinstance(x, str) else x) != (y.strip() if isinstance(y, str) else y):
            return False
    return True


def choose_strategy(n_stamps: int, size: int, image_shape: Sequence[int],
                    tile_shape: Sequence[int] | None,
                    tile_call_cost: float = TILE_CALL_COST) -> str:
    """``"tiles"`` or ``"whole"`` for a brick, from the number of stamps (see module doc).

    ``tile_call_cost``: :data:`TILE_CALL_COSTS` of the library that reads the tiles."""
    ny, nx = int(image_shape[0]), int(image_shape[1])
    if not tile_shape:
        return "whole"
    ty, tx = max(1, int(tile_shape[0])), max(1, int(tile_shape[1]))
    n_tiles = math.ceil(ny / ty) * math.ceil(nx / tx)
    # Tiles a size x size stamp overlaps, in the typical (unaligned) case.
    per_stamp = (math.ceil((size - 1) / ty) + 1) * (math.ceil((size - 1) / tx) + 1)
    per_stamp = min(per_stamp, n_tiles)
    return "tiles" if n_stamps * per_stamp * tile_call_cost < n_tiles else "whole"


# --------------------------------------------------------------------------- result
@dataclass
class StampSet:
    """Stamps of n targets of one brick. Rows in = rows out; failed rows are all-zero.

    image, invvar: float32 [n, nbands, N, N]; maskbits: int32 [n, N, N] (all bits kept);
    psfsize: float32 [n, nbands], the psfsize map at the stamp centre pixel (NaN when maps
    were not read or the row failed); px, py: float64 [n] brick pixel of the target;
    x0, y0: int64 [n]; lens_offset: float64 [n, 2] = (px - x0 - N//2, py - y0 - N//2);
    edge: bool [n], the stamp runs off the image (padded); error: per row, None when ok.
    """

    brick: str
    bands: tuple[str, ...]
    size: int
    image: np.ndarray
    invvar: np.ndarray
    maskbits: np.ndarray | None
    psfsize: np.ndarray
    px: np.ndarray
    py: np.ndarray
    x0: np.ndarray
    y0: np.ndarray
    lens_offset: np.ndarray
    edge: np.ndarray
    error: list
    pixscale: float = float("nan")
    strategy: str = ""
    image_shape: tuple[int, int] = (0, 0)
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.error)

    @property
    def ok(self) -> np.ndarray:
        return np.array([e is None for e in self.error], dtype=bool)

    @classmethod
    def empty(cls, brick: str, n: int, size: int, bands, maskbits: bool = True) -> "StampSet":
        nb = len(bands)
        return cls(
            brick=brick, bands=tuple(bands), size=size,
            image=np.zeros((n, nb, size, size), np.float32),
            invvar=np.zeros((n, nb, size, size), np.float32),
            maskbits=np.zeros((n, size, size), np.int32) if maskbits else None,
            psfsize=np.full((n, nb), np.nan, np.float32),
            px=np.full(n, np.nan), py=np.full(n, np.nan),
            x0=np.zeros(n, np.int64), y0=np.zeros(n, np.int64),
            lens_offset=np.full((n, 2), np.nan), edge=np.zeros(n, bool),
            error=[None] * n,
        )


# --------------------------------------------------------------------------- reading
def _as_int32_mask(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.kind == "i" and a.dtype.itemsize < 4:
        # Reinterpret as unsigned so a set top bit does not sign-extend into bits 16..31.
        a = a.astype(np.dtype(f"u{a.dtype.itemsize}"))
    return a.astype(np.int32)


def cut_stamps(files: BrickFiles, ra, dec, size: int, bands: Sequence[str] | None = None, *,
               maskbits: bool = True, psfsize: bool = True, strategy: str = "auto",
               raise_errors: bool = False) -> StampSet:
    """Cut ``size`` x ``size`` stamps around (ra, dec) [deg] for every target of one brick.

    ``files`` comes from :meth:`CoaddSource.brick_files` and must hold image and invvar for
    each band (psfsize too when ``psfsize``, maskbits when ``maskbits``). Each file is opened
    once. ``strategy``: ``"auto"`` (see :func:`choose_strategy`), ``"tiles"`` or ``"whole"``.

    A brick-level problem (unreadable or inconsistent files) fails every row with the same
    one-line message, or raises :class:`CoaddError` when ``raise_errors``. Row-level problems
    (target off the image, non-finite ra/dec) fail only that row.
    """
    if int(size) != size or size < 2 or int(size) % 2:
        raise ValueError(f"stamp size must be a positive even integer, got {size!r}")
    size = int(size)
    bands = tuple(files.bands if bands is None else bands)
    ra = np.atleast_1d(np.asarray(ra, dtype=np.float64))
    dec = np.atleast_1d(np.asarray(dec, dtype=np.float64))
    if ra.shape != dec.shape or ra.ndim != 1:
        raise ValueError("ra and dec must be 1-D arrays of the same length")
    n = ra.size
    out = StampSet.empty(files.brick, n, size, bands, maskbits=maskbits)
    try:
        _cut_into(out, files, ra, dec, size, bands, maskbits, psfsize, strategy)
    except CoaddError as exc:
        if raise_errors:
            raise
        fail = StampSet.empty(files.brick, n, size, bands, maskbits=maskbits)
        fail.error = [str(exc)] * n
        fail.strategy = out.strategy
        return fail
    return out


def cut_brick(source, brick: str, ra, dec, size: int, bands: Sequence[str], *,
              maskbits: bool = True, psfsize: bool = True, strategy: str = "auto") -> StampSet:
    """Resolve the files of ``brick`` under ``source`` (a :class:`CoaddSource`) and cut.

    Never raises for data problems: a missing brick, a missing band file (the message names
    the band and the file), an unreadable file or a target off the image become per-row
    errors, so rows in = rows out.
    """
    ra = np.atleast_1d(np.asarray(ra, dtype=np.float64))
    dec = np.atleast_1d(np.asarray(dec, dtype=np.float64))
    products = ("image", "invvar", "psfsize") if psfsize else ("image", "invvar")
    try:
        files = source.brick_files(brick, bands, products=products, maskbits=maskbits)
    except CoaddError as exc:
        out = StampSet.empty(brick, ra.size, int(size), bands, maskbits=maskbits)
        out.error = [str(exc)] * ra.size
        return out
    return cut_stamps(files, ra, dec, size, bands, maskbits=maskbits, psfsize=psfsize,
                      strategy=strategy)


def _cut_into(out: StampSet, files: BrickFiles, ra, dec, size, bands, want_mask, want_psf,
              strategy):
    h = size // 2
    opened: list[ImageFile] = []
    try:
        # Open every file once; check shapes and WCS agree with the reference (first image).
        specs = [("image", b) for b in bands] + [("invvar", b) for b in bands]
        if want_psf:
            specs += [("psfsize", b) for b in bands]
        if want_mask:
            specs.append(("maskbits", None))
        imgs: dict = {}
        wcs_ref = None
        for spec in specs:
            if not files.has(*spec):
                band = f"band {spec[1]} " if spec[1] else ""
                raise CoaddError(f"brick {files.brick}: {band}{spec[0]} file not resolved")
            img = files.open(*spec)
            opened.append(img)
            if wcs_ref is None:
                try:
                    wcs_ref = wcs_from_header(img.header)
                except Exception as exc:
                    raise CoaddError(f"no usable WCS in {img.name}: {type(exc).__name__}: "
                                     f"{exc}") from exc
                ref, cards_ref = img, _wcs_cards(img.header)
            elif img.shape != ref.shape or (img.wcs_cards != ref.wcs_cards and not _same_cards(
                    _wcs_cards(img.header), cards_ref)):
                raise CoaddError(f"brick {files.brick}: {img.name} (shape {img.shape}) does "
                                 f"not share the pixel grid of {ref.name} (shape {ref.shape})")
            imgs[spec] = img

        ny, nx = ref.shape
        out.image_shape = (ny, nx)
        out.pixscale = _pixscale_arcsec(wcs_ref)
        px, py = sky_to_pixel(wcs_ref, ra, dec)
        x0, y0, ox, oy = stamp_origin(px, py, size)
        out.px, out.py, out.x0, out.y0 = px, py, x0, y0
        out.lens_offset = np.stack([ox, oy], axis=1)
        cx, cy = x0 + h, y0 + h
        finite = np.isfinite(px) & np.isfinite(py)
        inside = finite & (cx >= 0) & (cx < nx) & (cy >= 0) & (cy < ny)
        for i in np.flatnonzero(~inside):
            if not (np.isfinite(ra[i]) and np.isfinite(dec[i])):
                out.error[i] = (f"target ra={ra[i]} dec={dec[i]} is not a finite position "
                                f"(brick {files.brick})")
            else:
                out.error[i] = (f"target ra={ra[i]:.6f} dec={dec[i]:.6f} is off the image of "
                                f"brick {files.brick} (pixel x={px[i]:.1f} y={py[i]:.1f}, "
                                f"image {nx}x{ny})")
        out.edge = inside & ((x0 < 0) | (y0 < 0) | (x0 + size > nx) | (y0 + size > ny))
        rows = np.flatnonzero(inside)

        if strategy == "auto":
            strategy = choose_strategy(len(rows), size, ref.shape, ref.tile_shape,
                                       TILE_CALL_COSTS[ref.reader])
        if strategy not in ("tiles", "whole"):
            raise ValueError(f"unknown strategy {strategy!r}")
        out.strategy = strategy
        if len(rows) == 0:
            return

        # Clipped windows, per row.
        xs = np.clip(x0, 0, nx)
        xe = np.clip(x0 + size, 0, nx)
        ys = np.clip(y0, 0, ny)
        ye = np.clip(y0 + size, 0, ny)

        def reader(spec, convert=None):
            """read(ys, ye, xs, xe) of one file: its tiles, or slices of the whole image
            (decompressed here, freed when the returned function is)."""
            if strategy == "tiles":
                read = imgs[spec].read
                return read if convert is None else (lambda *w: convert(read(*w)))
            full = imgs[spec].read_all()
            if convert is not None:
                full = convert(full)
            return lambda a, b, c, d: full[a:b, c:d]

        def fill(dst, read):
            for i in rows:
                a, b, c, d = int(ys[i]), int(ye[i]), int(xs[i]), int(xe[i])
                dst(i)[a - y0[i]:b - y0[i], c - x0[i]:d - x0[i]] = read(a, b, c, d)

        for k, b in enumerate(bands):
            for product, arr in (("image", out.image), ("invvar", out.invvar)):
                fill(lambda i, arr=arr, k=k: arr[i, k], reader((product, b)))
            if want_psf:
                read = reader(("psfsize", b))
                for i in rows:
                    out.psfsize[i, k] = read(int(cy[i]), int(cy[i]) + 1,
                                             int(cx[i]), int(cx[i]) + 1)[0, 0]
                del read
        if want_mask:
            fill(lambda i: out.maskbits[i], reader(("maskbits", None), _as_int32_mask))
    finally:
        for img in opened:
            try:
                img.close()
            except Exception:
                pass
