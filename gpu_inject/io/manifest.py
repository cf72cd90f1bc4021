"""The task manifest (SPEC section 4): read, check the schema before any work, and give every
row either no error or a one-line reason. Rows in = rows out: a bad row is not dropped, it
becomes an error row downstream.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from .. import tasks as T

#: Every column of SPEC section 4, in its order.
REQUIRED = (
    "task_id", "brickname", "ra", "dec", "region_split", "lens_model", "theta_e_arcsec",
    "lens_e", "lens_phi_deg", "shear", "shear_phi_deg", "src_dmag", "src_reff_arcsec", "src_n",
    "src_e", "src_phi_deg", "src_x_arcsec", "src_y_arcsec", "src_gr", "src_rz", "lens_flux_r",
    "psfsize_g", "psfsize_r", "psfsize_z",
)
SPLITS = ("train", "val", "test")


class ManifestError(ValueError):
    """The manifest cannot be used at all (unreadable, missing columns): one line."""


@dataclass
class Manifest:
    table: pa.Table              # every row, every column as read (extra columns carried)
    errors: list                 # None, or the one-line reason the row cannot be injected

    @property
    def ok(self) -> np.ndarray:
        return np.array([e is None for e in self.errors], dtype=bool)


def read_manifest(path, storage_options=None) -> Manifest:
    """Read a Parquet file or directory (local or ``s3://``), check its schema, and find the
    reason each bad row is bad. ManifestError for an unreadable path or missing columns."""
    import pyarrow.dataset as ds

    try:
        if str(path).startswith("s3://"):
            import fsspec
            from pyarrow.fs import FSSpecHandler, PyFileSystem

            fs = PyFileSystem(FSSpecHandler(fsspec.filesystem("s3", **(storage_options or {}))))
            table = ds.dataset(str(path)[5:], format="parquet", filesystem=fs).to_table()
        else:
            table = ds.dataset(str(path), format="parquet").to_table()
    except Exception as exc:  # noqa: BLE001 - any failure to read is the user's to fix
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ManifestError(f"cannot read manifest {path}: {first}") from None
    check_schema(table.schema, path)
    return Manifest(table=table, errors=row_errors(table))


def check_schema(schema: pa.Schema, path="manifest") -> None:
    """ManifestError naming every missing SPEC 4 column at once."""
    missing = [c for c in REQUIRED if c not in schema.names]
    if missing:
        raise ManifestError(f"{path}: missing column(s): {', '.join(missing)}")


def _duplicates(task_id: pa.ChunkedArray) -> np.ndarray:
    """Rows whose (non-null) task_id already appeared on an earlier row."""
    if pa.types.is_integer(task_id.type):
        ids = task_id.fill_null(0).to_numpy(zero_copy_only=False)
    else:
        ids = np.asarray(task_id.cast(pa.string()).fill_null("").to_numpy(zero_copy_only=False))
    order = np.argsort(ids, kind="stable")   # stable: the first occurrence comes first
    repeat = np.zeros(len(ids), dtype=bool)
    repeat[order[1:]] = ids[order[1:]] == ids[order[:-1]]
    return repeat & ~np.asarray(task_id.is_null().to_numpy(zero_copy_only=False))


def row_errors(table: pa.Table) -> list:
    """One reason per row, or None: identity and placement columns here, the physics of
    injection rows in ``tasks.row_errors`` (one set of ranges for the engine and for this).
    The checks run in the order below and a row gets the first that fails; vectorised, so
    a million-row manifest is checked in seconds and without a Python object per value."""
    import pyarrow.compute as pc

    n = table.num_rows
    cols = T.read_columns(table)
    ra = np.asarray(table["ra"].to_numpy(zero_copy_only=False), dtype=np.float64)
    dec = np.asarray(table["dec"].to_numpy(zero_copy_only=False), dtype=np.float64)
    brick = table["brickname"].cast(pa.string())
    split = table["region_split"].cast(pa.string())
    theta_e = cols["theta_e_arcsec"]

    def arr(x):
        return np.asarray(x.to_numpy(zero_copy_only=False), dtype=bool)

    with np.errstate(invalid="ignore"):
        checks = [
            (arr(table["task_id"].is_null()), lambda i: "task_id is null"),
            (_duplicates(table["task_id"]),
             lambda i: f"task_id {table['task_id'][i].as_py()} is not unique"),
            (arr(pc.fill_null(pc.equal(brick, ""), True)),
             lambda i: "brickname is null or empty"),
            (~(np.isfinite(ra) & (ra >= 0.0) & (ra < 360.0)),
             lambda i: f"ra = {ra[i]:g} outside [0, 360)"),
            (~(np.isfinite(dec) & (dec >= -90.0) & (dec <= 90.0)),
             lambda i: f"dec = {dec[i]:g} outside [-90, 90]"),
            (~arr(pc.fill_null(pc.is_in(split, pa.array(SPLITS)), False)),
             lambda i: f"region_split = {split[i].as_py()!r} is not one of "
                       f"{', '.join(SPLITS)}"),
            ((cols["lens_model"] == "CONTROL") & ~((theta_e == 0.0) | np.isnan(theta_e)),
             lambda i: f"CONTROL row with theta_e_arcsec = {theta_e[i]:g} (must be 0 or null)"),
        ]
    errors = [None] * n
    unset = np.ones(n, dtype=bool)
    for bad, reason in checks:
        for i in np.flatnonzero(bad & unset):
            errors[i] = reason(i)
        unset &= ~bad
    for i, e in enumerate(T.row_errors(cols)):
        if e is not None and unset[i]:
            errors[i] = e
    return errors
