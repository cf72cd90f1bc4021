"""Manifest rows -> validated, packed kernel parameters (SPEC sections 2 and 4).

The thin layer in front of the physics: it checks every value a row needs, says which row,
which column and which range when one is bad, and converts arcsec / degrees / e into the
pixel units and cos-sin pairs of ``physics.layout``.
"""
import math

import numpy as np

from .physics import layout as L
from .physics.sersic import sersic_bn, sersic_ie_for_unit_flux, sersic_radius_below

LENS_MODELS = ("SIS", "SIE", "CONTROL")

# Columns of SPEC section 4 that an injection needs, with their valid interval and whether
# each end is closed. Shear is bounded by 1 (a shear of 1 makes the lens map singular).
RANGES = {
    "theta_e_arcsec": (0.0, math.inf, True, False),
    "lens_e": (0.0, 1.0, True, False),
    "lens_phi_deg": (-math.inf, math.inf, False, False),
    "shear": (0.0, 1.0, True, False),
    "shear_phi_deg": (-math.inf, math.inf, False, False),
    "src_dmag": (-math.inf, math.inf, False, False),
    "src_reff_arcsec": (0.0, math.inf, False, False),
    "src_n": (0.36, 8.0, True, True),
    "src_e": (0.0, 1.0, True, False),
    "src_phi_deg": (-math.inf, math.inf, False, False),
    "src_x_arcsec": (-math.inf, math.inf, False, False),
    "src_y_arcsec": (-math.inf, math.inf, False, False),
    "src_gr": (-math.inf, math.inf, False, False),
    "src_rz": (-math.inf, math.inf, False, False),
    "lens_flux_r": (0.0, math.inf, False, False),
}
INJECTION_COLUMNS = ("lens_model",) + tuple(RANGES)


def _column(tasks, name):
    """A column of a pyarrow Table or a mapping as a numpy array (nulls -> NaN / None)."""
    col = tasks[name]
    if hasattr(col, "to_numpy"):  # pyarrow ChunkedArray / Array
        if name == "lens_model":
            return np.asarray(col.to_pylist(), dtype=object)
        return np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64)
    if name == "lens_model":
        return np.asarray(col, dtype=object)
    return np.asarray(col, dtype=np.float64)


def _interval(lo, hi, closed_lo, closed_hi):
    return f"{'[' if closed_lo else '('}{lo:g}, {hi:g}{']' if closed_hi else ')'}"


def read_columns(tasks):
    """Every column an injection needs, as numpy arrays; ValueError naming all missing ones."""
    names = tasks.column_names if hasattr(tasks, "column_names") else list(tasks.keys())
    missing = [c for c in INJECTION_COLUMNS if c not in names]
    if missing:
        raise ValueError("tasks lack required column(s): " + ", ".join(missing))
    cols = {c: _column(tasks, c) for c in INJECTION_COLUMNS}
    n = {len(v) for v in cols.values()}
    if len(n) != 1:
        raise ValueError(f"task columns differ in length: {sorted(n)}")
    return cols


def row_errors(cols):
    """One reason per row (None when the row is a valid injection or CONTROL), vectorised:
    a million rows take well under a second. The reason names the first bad column, in the
    order of RANGES."""
    model = np.asarray(cols["lens_model"], dtype=object)
    n = len(model)
    errors = [None] * n
    known = np.isin(model, np.array(LENS_MODELS, dtype=object))
    for i in np.flatnonzero(~known):
        errors[i] = f"lens_model = {model[i]!r} is not one of {', '.join(LENS_MODELS)}"
    todo = known & (model != "CONTROL")
    sis = model == "SIS"
    for c, (lo, hi, clo, chi) in RANGES.items():
        v = np.asarray(cols[c], dtype=np.float64)
        with np.errstate(invalid="ignore"):
            ok = (np.isfinite(v) & ((v > lo) | (clo & (v == lo)))
                  & ((v < hi) | (chi & (v == hi))))
        if c in ("lens_e", "lens_phi_deg"):
            ok |= sis  # ignored for SIS: may be null
        for i in np.flatnonzero(todo & ~ok):
            what = "null or NaN" if math.isnan(v[i]) else f"{v[i]:g}"
            errors[i] = f"{c} = {what} outside {_interval(lo, hi, clo, chi)}"
        todo &= ok
    return errors


def pack_params(cols, pixscale):
    """float64 [n, NPARAM] kernel parameters and float64 [n] unlensed r flux F_r.

    Rows must be valid (``row_errors``); CONTROL rows get theta_e 0 and F_r 0."""
    model = cols["lens_model"]
    n = len(model)
    p = np.zeros((n, L.NPARAM))
    inj = model != "CONTROL"
    sie = model == "SIE"
    g = {c: np.where(inj, np.nan_to_num(cols[c]), 0.0) for c in RANGES}
    lens_q = np.where(sie, (1.0 - g["lens_e"]) / (1.0 + g["lens_e"]), 1.0)
    lens_phi = np.where(sie, np.radians(g["lens_phi_deg"]), 0.0)
    shear_phi = 2.0 * np.radians(g["shear_phi_deg"])
    src_q = (1.0 - g["src_e"]) / (1.0 + g["src_e"])
    src_phi = np.radians(g["src_phi_deg"])
    n_sersic = np.where(inj, g["src_n"], 1.0)
    reff = np.where(inj, g["src_reff_arcsec"], pixscale) / pixscale
    bn = np.array([sersic_bn(v) for v in n_sersic])
    ie = np.array([sersic_ie_for_unit_flux(a, b, c) for a, b, c in zip(n_sersic, reff, bn)])
    p[:, L.P_LENS_B] = g["theta_e_arcsec"] / pixscale * np.sqrt(lens_q)
    p[:, L.P_LENS_F] = np.sqrt(1.0 - lens_q * lens_q)
    p[:, L.P_LENS_COS] = np.cos(lens_phi)
    p[:, L.P_LENS_SIN] = np.sin(lens_phi)
    p[:, L.P_G1] = g["shear"] * np.cos(shear_phi)
    p[:, L.P_G2] = g["shear"] * np.sin(shear_phi)
    p[:, L.P_SRC_X] = g["src_x_arcsec"] / pixscale
    p[:, L.P_SRC_Y] = g["src_y_arcsec"] / pixscale
    p[:, L.P_SRC_Q] = src_q
    p[:, L.P_SRC_COS] = np.cos(src_phi)
    p[:, L.P_SRC_SIN] = np.sin(src_phi)
    p[:, L.P_SRC_REFF] = reff
    p[:, L.P_SRC_INV_N] = 1.0 / n_sersic
    p[:, L.P_SRC_BN] = bn
    p[:, L.P_SRC_IE] = np.where(inj, ie, 0.0)
    p[:, L.P_SRC_I0] = p[:, L.P_SRC_IE] * np.exp(bn)
    rcut = np.array([sersic_radius_below(L.FAINT, *a) for a in zip(reff, n_sersic, bn, ie)])
    p[:, L.P_SRC_R2CUT] = np.where(inj, rcut * rcut, -1.0)
    flux_r = np.where(inj, g["lens_flux_r"] * 10.0 ** (-0.4 * g["src_dmag"]), 0.0)
    return p, flux_r


def band_fluxes(cols, flux_r, bands):
    """float64 [n, B] unlensed source flux per band: F_g = F_r 10^(-0.4 g-r),
    F_z = F_r 10^(+0.4 r-z) (SPEC section 2). Only g, r, z have colours in the manifest."""
    gr = np.nan_to_num(cols["src_gr"])
    rz = np.nan_to_num(cols["src_rz"])
    per_band = {"g": flux_r * 10.0 ** (-0.4 * gr), "r": flux_r, "z": flux_r * 10.0 ** (0.4 * rz)}
    unknown = [b for b in bands if b not in per_band]
    if unknown:
        raise ValueError(f"bands: {', '.join(unknown)} not supported (the manifest has colours "
                         "for g, r, z only)")
    return np.stack([per_band[b] for b in bands], axis=1)
