"""Resolve and open the coadd files of a DR10 brick, locally or on S3.

Layouts (SPEC section 4, DATA_MODEL.md):

* ``legacysurvey``: ``<root>/<AAA>/<brick>/legacysurvey-<brick>-<product>[-<band>].fits.fz``
  (``<AAA>`` = first three characters of the brick name);
* ``flat``: ``<root>/<brick>/legacysurvey-<brick>-<product>[-<band>].fits.fz``.

``root`` is a local directory or an ``s3://bucket/prefix`` URL (read through fsspec/s3fs,
credentials from the usual AWS sources; the endpoint comes from ``endpoint_url`` or the
``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` environment variables).

Every failure (missing root, missing brick, missing band file, truncated or corrupt FITS,
network error) raises :class:`CoaddError` with a one-line message naming the path. Remote
reads have connect/read timeouts and a bounded number of retries, so nothing hangs.

Remote files are either read whole into memory (no ``cache_dir``) or downloaded once into
``cache_dir`` (mirroring ``bucket/key``) with an atomic write: a unique temporary file in the
destination directory, then ``os.replace``. Several workers may fill the same cache at once:
each writes its own temporary file and the last ``os.replace`` wins with identical bytes;
readers never see a partial file.
"""
from __future__ import annotations

import contextlib
import io
import os
import uuid
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from astropy.io import fits

__all__ = [
    "CoaddError",
    "CoaddSource",
    "BrickFiles",
    "LAYOUTS",
    "brick_file_name",
]

LAYOUTS = ("legacysurvey", "flat")
PER_BAND_PRODUCTS = ("image", "invvar", "model", "blobmodel", "chi2", "depth", "galdepth",
                     "nexp", "psfsize")
PER_BRICK_PRODUCTS = ("maskbits",)


class CoaddError(Exception):
    """A coadd file or directory cannot be found or read. The message is one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def _one_line(exc: BaseException) -> str:
    msg = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


@contextlib.contextmanager
def _io_errors(name: str, failure: str):
    """Any exception inside becomes a one-line CoaddError naming ``name``: "file not found"
    for a missing file, else ``failure`` (e.g. "cannot read") and the cause."""
    try:
        yield
    except CoaddError:
        raise
    except FileNotFoundError as exc:
        raise CoaddError(f"file not found: {name}") from exc
    except Exception as exc:
        raise CoaddError(f"{failure} {name}: {_one_line(exc)}") from exc


def brick_file_name(brick: str, product: str, band: str | None = None) -> str:
    """``legacysurvey-<brick>-<product>[-<band>].fits.fz``."""
    if band is None:
        return f"legacysurvey-{brick}-{product}.fits.fz"
    return f"legacysurvey-{brick}-{product}-{band}.fits.fz"


def _is_remote(root: str) -> bool:
    return "://" in root and not root.startswith("file://")


@dataclass
class BrickFiles:
    """The files of one brick: ``paths[(product, band)]`` (band ``None`` for maskbits)."""

    brick: str
    bands: tuple[str, ...]
    paths: dict[tuple[str, str | None], str]
    source: "CoaddSource" = field(repr=False)

    def path(self, product: str, band: str | None = None) -> str:
        return self.paths[(product, band)]

    def has(self, product: str, band: str | None = None) -> bool:
        return (product, band) in self.paths

    def open(self, product: str, band: str | None = None) -> fits.HDUList:
        """Open and validate one file; the caller closes the returned HDUList."""
        return self.source.open_fits(self.paths[(product, band)])


class CoaddSource:
    """A coadd root (local directory or ``s3://`` URL) in a given layout.

    Parameters
    ----------
    root: local directory or ``s3://bucket/prefix``.
    layout: ``"legacysurvey"`` (default) or ``"flat"``.
    cache_dir: optional local directory that caches remote files (ignored for local roots).
    endpoint_url: S3 endpoint override (else ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL``).
    storage_options: extra keyword arguments for the fsspec filesystem.
    timeout: connect and read timeout in seconds for remote access.
    """

    def __init__(self, root: str | os.PathLike, layout: str = "legacysurvey", *,
                 cache_dir: str | os.PathLike | None = None, endpoint_url: str | None = None,
                 storage_options: Mapping | None = None, timeout: float = 30.0):
        if layout not in LAYOUTS:
            raise CoaddError(f"unknown coadd layout {layout!r} (expected one of {', '.join(LAYOUTS)})")
        root = os.fspath(root)
        self.layout = layout
        self.remote = _is_remote(root)
        self.cache_dir = os.fspath(cache_dir) if (cache_dir is not None and self.remote) else None
        if self.remote:
            import fsspec

            protocol = root.split("://", 1)[0]
            opts = dict(storage_options or {})
            if protocol in ("s3", "s3a"):
                endpoint = (endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3")
                            or os.environ.get("AWS_ENDPOINT_URL"))
                if endpoint:
                    opts.setdefault("endpoint_url", endpoint)
                ck = dict(opts.pop("config_kwargs", {}) or {})
                ck.setdefault("connect_timeout", timeout)
                ck.setdefault("read_timeout", timeout)
                ck.setdefault("retries", {"max_attempts": 3, "mode": "standard"})
                opts["config_kwargs"] = ck
                opts.setdefault("skip_instance_cache", True)
            try:
                self.fs = fsspec.filesystem(protocol, **opts)
            except Exception as exc:  # bad options, missing s3fs
                raise CoaddError(f"cannot open coadd root {root}: {_one_line(exc)}") from exc
            self.root = root.rstrip("/")
        else:
            if root.startswith("file://"):
                root = root[len("file://"):]
            self.fs = None
            self.root = os.path.abspath(root)
        self._root_checked = False

    # ---------------------------------------------------------------- paths
    def _join(self, *parts: str) -> str:
        if self.remote:
            return "/".join([self.root, *parts])
        return os.path.join(self.root, *parts)

    def brick_dir(self, brick: str) -> str:
        if self.layout == "legacysurvey":
            return self._join(brick[:3], brick)
        return self._join(brick)

    def file_path(self, brick: str, product: str, band: str | None = None) -> str:
        return self._join_dir(self.brick_dir(brick), brick_file_name(brick, product, band))

    def _join_dir(self, d: str, name: str) -> str:
        return f"{d}/{name}" if self.remote else os.path.join(d, name)

    # ---------------------------------------------------------- existence
    def _isdir(self, path: str) -> bool:
        if not self.remote:
            return os.path.isdir(path)
        try:
            return bool(self.fs.isdir(path))
        except Exception as exc:
            raise CoaddError(f"cannot list {path}: {_one_line(exc)}") from exc

    def _listdir(self, path: str) -> set[str]:
        if not self.remote:
            try:
                return set(os.listdir(path))
            except OSError:
                return set()
        try:
            entries = self.fs.ls(path, detail=False)
        except FileNotFoundError:
            return set()
        except Exception as exc:
            raise CoaddError(f"cannot list {path}: {_one_line(exc)}") from exc
        return {e.rstrip("/").rsplit("/", 1)[-1] for e in entries}

    def check_root(self) -> None:
        """Raise CoaddError when the root does not exist (checked once)."""
        if self._root_checked:
            return
        if not self._isdir(self.root):
            raise CoaddError(f"coadd root not found: {self.root}")
        self._root_checked = True

    def brick_files(self, brick: str, bands: Iterable[str],
                    products: Iterable[str] = ("image", "invvar", "psfsize"),
                    maskbits: bool = True) -> BrickFiles:
        """Resolve the files of ``brick``; raise CoaddError naming what is missing.

        One directory listing per brick. A missing band file raises an error naming the
        band, product and path.
        """
        bands = tuple(bands)
        self.check_root()
        d = self.brick_dir(brick)
        names = self._listdir(d)
        if not names and not self._isdir(d):
            raise CoaddError(f"brick {brick} not found: no directory {d} "
                             f"(coadd layout {self.layout!r})")
        paths: dict[tuple[str, str | None], str] = {}
        for product in products:
            for band in bands:
                name = brick_file_name(brick, product, band)
                p = self._join_dir(d, name)
                if name not in names:
                    raise CoaddError(f"brick {brick}: band {band} {product} file missing: {p}")
                paths[(product, band)] = p
        if maskbits:
            name = brick_file_name(brick, "maskbits")
            p = self._join_dir(d, name)
            if name not in names:
                raise CoaddError(f"brick {brick}: maskbits file missing: {p}")
            paths[("maskbits", None)] = p
        return BrickFiles(brick=brick, bands=bands, paths=paths, source=self)

    # ---------------------------------------------------------- opening
    def _cache_path(self, url: str) -> str:
        key = url.split("://", 1)[1].lstrip("/")
        return os.path.join(self.cache_dir, *key.split("/"))

    def _fetch_to_cache(self, url: str) -> str:
        dest = self._cache_path(url)
        if os.path.exists(dest):
            return dest
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        tmp = f"{dest}.{os.getpid()}.{uuid.uuid4().hex}.part"
        try:
            with _io_errors(url, "cannot download"):
                self.fs.get_file(url, tmp)
                os.replace(tmp, dest)
        finally:
            if os.path.exists(tmp):
                try:
                    os.remove(tmp)
                except OSError:
                    pass
        return dest

    def open_fits(self, path: str) -> fits.HDUList:
        """Open ``path`` (a path/URL this source produced) and validate it.

        Returns an HDUList whose HDU 1 is the (compressed) image, lazily loaded: only the
        tiles that are sliced through ``hdul[1].section`` are decompressed.
        """
        if not self.remote:
            return _open_validated(path, path)
        if self.cache_dir is not None:
            local = self._fetch_to_cache(path)
            try:
                return _open_validated(local, path)
            except CoaddError:
                # A corrupt cache entry (e.g. written by another tool): fetch once more.
                try:
                    os.remove(local)
                except OSError:
                    pass
                local = self._fetch_to_cache(path)
                return _open_validated(local, path)
        with _io_errors(path, "cannot read"):
            data = self.fs.cat_file(path)
        return _open_validated(io.BytesIO(data), path, size=len(data))


def _open_validated(src, name: str, size: int | None = None) -> fits.HDUList:
    """fits.open + checks: HDU 1 exists, is a 2-D image, and its data lies within the file."""
    import warnings

    if size is None:
        with _io_errors(name, "cannot read"):
            size = os.path.getsize(src)
    with _io_errors(name, "corrupt FITS file"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hdul = fits.open(src, memmap=False, lazy_load_hdus=False)
    try:
        if len(hdul) < 2:
            raise CoaddError(f"truncated or corrupt FITS file {name}: no image extension "
                             f"(HDU 1) found in {size} bytes")
        hdu = hdul[1]
        shape = getattr(hdu, "shape", None)
        if not isinstance(hdu, (fits.CompImageHDU, fits.ImageHDU)) or shape is None or len(shape) != 2:
            raise CoaddError(f"corrupt FITS file {name}: HDU 1 is not a 2-D image "
                             f"({type(hdu).__name__}, shape {shape})")
        info = hdul.fileinfo(1)
        end = info["datLoc"] + info["datSpan"]
        if isinstance(hdu, fits.CompImageHDU):
            # The binary table plus heap: header NAXIS1*NAXIS2 + PCOUNT bytes.
            h = hdu._bintable.header if hasattr(hdu, "_bintable") else None
            if h is not None:
                need = int(h.get("NAXIS1", 0)) * int(h.get("NAXIS2", 0)) + int(h.get("PCOUNT", 0))
                end = max(end, info["datLoc"] + need)
        else:
            end = info["datLoc"] + hdu._data_size if hasattr(hdu, "_data_size") else end
        if end > size:
            raise CoaddError(f"truncated FITS file {name}: image data needs {end} bytes, "
                             f"file has {size}")
    except CoaddError:
        hdul.close()
        raise
    except Exception as exc:
        hdul.close()
        raise CoaddError(f"corrupt FITS file {name}: {_one_line(exc)}") from exc
    return hdul
