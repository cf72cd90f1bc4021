"""PSF FWHM per band with provenance (SPEC section 3), vectorised over rows.

For each band b, ``fwhm[:, b]`` and ``source[:, b]`` (int8) come from the first valid value
(finite and > 0) of:

* 0: the psfsize map of band b at the stamp centre pixel (only when ``use_psfsize_maps``);
* 1: the manifest's ``psfsize_b``;
* 2: the value used for r (itself from the r map, else the r manifest value).

A row whose r band has neither a valid map value nor a valid manifest value fails with the
error ``no valid PSF for r``; its unresolved entries are NaN with source -1 (entries that a
band resolved from its own map or manifest keep their value). r is resolved even when it is
not among ``bands``, from the ``"r"`` entry of the inputs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

__all__ = ["PsfResolution", "resolve_psf_fwhm", "SOURCE_MAP", "SOURCE_MANIFEST",
           "SOURCE_R_FALLBACK", "NO_VALID_R"]

SOURCE_MAP = 0
SOURCE_MANIFEST = 1
SOURCE_R_FALLBACK = 2
NO_VALID_R = "no valid PSF for r"


@dataclass
class PsfResolution:
    bands: tuple[str, ...]
    fwhm: np.ndarray        # float64 [n, nbands], arcsec; NaN where unresolved
    source: np.ndarray      # int8 [n, nbands]; -1 where unresolved
    r_fwhm: np.ndarray      # float64 [n], the r value (fallback 2); NaN when none
    r_source: np.ndarray    # int8 [n]
    ok: np.ndarray          # bool [n]
    error: list             # str or None per row

    def column(self, band: str) -> tuple[np.ndarray, np.ndarray]:
        """``(psf_fwhm_used_<band>, psf_source_<band>)``."""
        k = self.bands.index(band)
        return self.fwhm[:, k], self.source[:, k]


def _valid(v: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return np.isfinite(v) & (v > 0)


def _get(values, bands: Sequence[str], band: str, n: int | None) -> np.ndarray | None:
    """Column ``band`` of a mapping band -> [n], or of an [n, nbands] array in ``bands`` order."""
    if values is None:
        return None
    if isinstance(values, Mapping):
        if band not in values or values[band] is None:
            return None
        v = values[band]
    else:
        arr = np.asarray(values, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] != len(bands):
            raise ValueError(f"expected an array [n, {len(bands)}] in band order {''.join(bands)}")
        if band not in bands:
            return None
        v = arr[:, list(bands).index(band)]
    # None (null) entries -> NaN
    v = np.asarray([np.nan if x is None else x for x in v] if isinstance(v, (list, tuple))
                   else v, dtype=np.float64)
    v = np.atleast_1d(v)
    if n is not None and v.shape != (n,):
        raise ValueError(f"psf values for band {band} have shape {v.shape}, expected ({n},)")
    return v


def _nrows(*vals) -> int:
    for values in vals:
        if values is None:
            continue
        if isinstance(values, Mapping):
            for v in values.values():
                if v is not None:
                    return int(np.atleast_1d(np.asarray(v, dtype=object)).shape[0])
        else:
            return int(np.asarray(values).shape[0])
    raise ValueError("no PSF inputs given")


def resolve_psf_fwhm(bands: Sequence[str], manifest_fwhm, map_fwhm=None, *,
                     use_psfsize_maps: bool = True) -> PsfResolution:
    """Resolve ``psf_fwhm_used_b`` / ``psf_source_b`` for every band and row.

    ``manifest_fwhm``: mapping band -> [n] (the manifest's ``psfsize_<band>`` columns; null or
    NaN allowed) or an array [n, nbands] in ``bands`` order. ``map_fwhm``: the same shapes,
    the psfsize map at the stamp centre pixel (e.g. ``StampSet.psfsize``), or None. When it is
    an array, r must be in ``bands`` for the r fallback; pass mappings to supply r otherwise.
    """
    bands = tuple(bands)
    n = _nrows(manifest_fwhm, map_fwhm)
    nan = np.full(n, np.nan)

    def candidates(band):
        m = _get(map_fwhm, bands, band, n) if use_psfsize_maps else None
        f = _get(manifest_fwhm, bands, band, n)
        return (nan if m is None else m), (nan if f is None else f)

    r_map, r_man = candidates("r")
    r_fwhm = np.where(_valid(r_map), r_map, np.where(_valid(r_man), r_man, np.nan))
    r_source = np.where(_valid(r_map), SOURCE_MAP,
                        np.where(_valid(r_man), SOURCE_MANIFEST, -1)).astype(np.int8)
    ok = _valid(r_fwhm)

    fwhm = np.full((n, len(bands)), np.nan)
    source = np.full((n, len(bands)), -1, dtype=np.int8)
    for k, b in enumerate(bands):
        if b == "r":
            fwhm[:, k], source[:, k] = r_fwhm, r_source
            continue
        m, f = candidates(b)
        vm, vf = _valid(m), _valid(f)
        fwhm[:, k] = np.where(vm, m, np.where(vf, f, r_fwhm))
        source[:, k] = np.where(vm, SOURCE_MAP, np.where(vf, SOURCE_MANIFEST,
                                np.where(ok, SOURCE_R_FALLBACK, -1)))
    error = [None if good else NO_VALID_R for good in ok]
    return PsfResolution(bands=bands, fwhm=fwhm, source=source, r_fwhm=r_fwhm,
                         r_source=r_source, ok=ok, error=error)
