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
* ``"whole"``: each file is decompressed once and every stamp is a slice of it.

Measured on 3600x3600 DR10-format mock bricks (RICE image/invvar, GZIP psfsize, HCOMPRESS
maskbits), grz, 64x64 stamps, one core (``benchmarks/cutout_speed.py``): astropy's
``section`` costs 0.45-0.65 ms of fixed overhead per call (its header checks) plus ~0.05 ms
per tile, so local files are read by tiles through fitsio (cfitsio, as legacypipe does; the
same tiles, bit for bit), ~0.23 ms per 64x64 window; a whole-image decompression costs about
0.06 ms per tile. A stamp read by tiles therefore costs about ``TILE_CALL_COST`` (1.0 with
fitsio, 1.6 through astropy for files held in memory) x its tile count in whole-image tile
equivalents, and ``tiles`` wins while
``n_stamps * tiles_per_stamp * TILE_CALL_COST < n_tiles_in_image``: for DR10 (1296 tiles of
100x100; a 64x64 or 96x96 stamp overlaps at most 2x2 of them) fewer than ~320 stamps per
brick (measured at 300: 0.73 s by tiles, 0.80 s whole). ``choose_strategy`` computes it
from the actual image and tile shapes of the brick, so small or differently tiled images are
handled too. Either way each
file is opened once per brick and no pixel is read twice in ``whole`` mode.
"""
from __future__ import annotations

import math
import os
import threading
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

try:  # cfitsio for tile reads of local files (see _Reader); astropy does the rest
    import fitsio
except ImportError:  # pragma: no cover - fitsio is a dependency; astropy alone also works
    fitsio = None

from .coadd import BrickFiles, CoaddError

__all__ = [
    "StampSet",
    "cut_stamps",
    "cut_brick",
    "choose_strategy",
    "wcs_from_header",
    "sky_to_pixel",
    "stamp_origin",
    "TILE_CALL_COST",
]

#: Cost of one stamp's tile read per tile touched, relative to the per-tile cost of a
#: whole-image decompression (measured, see module docstring): 1.6 through astropy's
#: ``section``, 1.0 through fitsio, which local files use.
TILE_CALL_COST = 1.0 if fitsio is not None else 1.6


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
                    tile_shape: Sequence[int] | None) -> str:
    """``"tiles"`` or ``"whole"`` for a brick, from the number of stamps (see module doc)."""
    ny, nx = int(image_shape[0]), int(image_shape[1])
    if not tile_shape:
        return "whole"
    ty, tx = max(1, int(tile_shape[0])), max(1, int(tile_shape[1]))
    n_tiles = math.ceil(ny / ty) * math.ceil(nx / tx)
    # Tiles a size x size stamp overlaps, in the typical (unaligned) case.
    per_stamp = (math.ceil((size - 1) / ty) + 1) * (math.ceil((size - 1) / tx) + 1)
    per_stamp = min(per_stamp, n_tiles)
    return "tiles" if n_stamps * per_stamp * TILE_CALL_COST < n_tiles else "whole"


def _tile_shape(hdu) -> tuple[int, int] | None:
    if not isinstance(hdu, fits.CompImageHDU):
        return None
    h = hdu._bintable.header if hasattr(hdu, "_bintable") else hdu.header
    t1, t2 = h.get("ZTILE1"), h.get("ZTILE2")
    if t1 is None or t2 is None:
        return None
    return int(t2), int(t1)  # (rows, cols)


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
#: astropy's HCOMPRESS decoder (cfitsio's hdecompress) keeps its state in C globals: two
#: threads decoding at once corrupt each other ("qtree_decode64: bad format code", seen in
#: tests/test_io_coadd.py::test_s3_cache_concurrent_workers). HCOMPRESS reads are serialised.
_HCOMPRESS_LOCK = threading.Lock()


class _NoLock:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _Reader:
    """Reads windows of one HDU by tiles (section) or from the decompressed image."""

    def __init__(self, hdu, path: str, *, strategy: str, local_file: str | None = None):
        self.hdu = hdu
        self.path = path
        self.full = None
        # Tile reads through cfitsio (fitsio, as legacypipe reads these files) when the file
        # is on local disk: the same tiles decoded by the same algorithm, without astropy's
        # per-call header checks, which cost more than decoding the tiles themselves.
        self.fx = None
        if (strategy == "tiles" and fitsio is not None and isinstance(local_file, str)
                and os.path.isfile(local_file)):
            self._fits = fitsio.FITS(local_file)
            self.fx = self._fits[1]
        ctype = str(getattr(hdu, "compression_type", "") or "").upper()
        self.lock = _HCOMPRESS_LOCK if ctype.startswith("HCOMPRESS") else _NoLock()
        if strategy == "whole":
            try:
                # section[...] decompresses every tile once without caching the result on
                # the HDU, so the array is freed as soon as this reader is.
                if isinstance(hdu, fits.CompImageHDU):
                    with self.lock:
                        self.full = np.asarray(hdu.section[...])
                else:
                    self.full = np.asarray(hdu.data)
            except Exception as exc:
                raise CoaddError(f"corrupt FITS file {path}: cannot decompress: "
                                 f"{type(exc).__name__}: {exc}") from exc
            if self.full is None or self.full.shape != tuple(hdu.shape):
                raise CoaddError(f"corrupt FITS file {path}: image data unreadable")

    def close(self):
        if self.fx is not None:
            self._fits.close()
            self.fx = None

    def window(self, ys: int, ye: int, xs: int, xe: int) -> np.ndarray:
        if self.full is not None:
            return self.full[ys:ye, xs:xe]
        try:
            with self.lock:
                if self.fx is not None:
                    return self.fx[ys:ye, xs:xe]
                return np.asarray(self.hdu.section[ys:ye, xs:xe])
        except Exception as exc:
            raise CoaddError(f"corrupt FITS file {self.path}: cannot decompress "
                             f"[{ys}:{ye}, {xs}:{xe}]: {type(exc).__name__}: {exc}") from exc


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
    opened: list[fits.HDUList] = []
    try:
        # Open every file once; check shapes and WCS agree with the reference (first image).
        specs = [("image", b) for b in bands] + [("invvar", b) for b in bands]
        if want_psf:
            specs += [("psfsize", b) for b in bands]
        if want_mask:
            specs.append(("maskbits", None))
        hdus = {}
        wcs_ref = None
        shape_ref = None
        ref_path = None
        for spec in specs:
            if not files.has(*spec):
                band = f"band {spec[1]} " if spec[1] else ""
                raise CoaddError(f"brick {files.brick}: {band}{spec[0]} file not resolved")
            path = files.path(*spec)
            hdul = files.open(*spec)
            opened.append(hdul)
            hdu = hdul[1]
            if wcs_ref is None:
                try:
                    wcs_ref = wcs_from_header(hdu.header)
                except Exception as exc:
                    raise CoaddError(f"no usable WCS in {path}: {type(exc).__name__}: "
                                     f"{exc}") from exc
                shape_ref, ref_path, cards_ref = tuple(hdu.shape), path, _wcs_cards(hdu.header)
            elif tuple(hdu.shape) != shape_ref or not _same_cards(_wcs_cards(hdu.header),
                                                                 cards_ref):
                raise CoaddError(f"brick {files.brick}: {path} (shape {tuple(hdu.shape)}) does "
                                 f"not share the pixel grid of {ref_path} (shape {shape_ref})")
            hdus[spec] = (hdu, path, hdul.filename())

        ny, nx = shape_ref
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

        first = hdus[("image", bands[0])][0]
        if strategy == "auto":
            strategy = choose_strategy(len(rows), size, shape_ref, _tile_shape(first))
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

        def fill(dst, reader):
            for i in rows:
                a, b, c, d = int(ys[i]), int(ye[i]), int(xs[i]), int(xe[i])
                win = reader.window(a, b, c, d)
                dst(i)[a - y0[i]:b - y0[i], c - x0[i]:d - x0[i]] = win

        for k, b in enumerate(bands):
            for product, arr in (("image", out.image), ("invvar", out.invvar)):
                hdu, path, local = hdus[(product, b)]
                reader = _Reader(hdu, path, strategy=strategy, local_file=local)
                fill(lambda i, arr=arr, k=k: arr[i, k], reader)
                reader.close()
            if want_psf:
                hdu, path, local = hdus[("psfsize", b)]
                reader = _Reader(hdu, path, strategy=strategy, local_file=local)
                for i in rows:
                    out.psfsize[i, k] = reader.window(int(cy[i]), int(cy[i]) + 1,
                                                      int(cx[i]), int(cx[i]) + 1)[0, 0]
                reader.close()
        if want_mask:
            hdu, path, local = hdus[("maskbits", None)]
            reader = _Reader(hdu, path, strategy=strategy, local_file=local)
            if reader.full is not None:
                reader.full = _as_int32_mask(reader.full)
            for i in rows:
                a, b_, c, d = int(ys[i]), int(ye[i]), int(xs[i]), int(xe[i])
                out.maskbits[i, a - y0[i]:b_ - y0[i], c - x0[i]:d - x0[i]] = \
                    _as_int32_mask(reader.window(a, b_, c, d))
            reader.close()
    finally:
        for hdul in opened:
            try:
                hdul.close()
            except Exception:
                pass
