"""The task manifest (SPEC section 4): read, check the schema before any work, and give every
row either no error or a one-line reason. Rows in = rows out: a bad row is not dropped, it
becomes an error row downstream.
"""
from __future__ import annotations

import math
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


def row_errors(table: pa.Table) -> list:
    """One reason per row, or None: identity and placement columns here, the physics of
    injection rows in ``tasks.row_errors`` (one set of ranges for the engine and for this)."""
    n = table.num_rows
    task_id = table["task_id"].to_pylist()
    brick = table["brickname"].to_pylist()
    ra = np.asarray(table["ra"].to_numpy(zero_copy_only=False), dtype=np.float64)
    dec = np.asarray(table["dec"].to_numpy(zero_copy_only=False), dtype=np.float64)
    split = table["region_split"].to_pylist()
    cols = T.read_columns(table)
    physics = T.row_errors(cols)
    theta_e = cols["theta_e_arcsec"]
    seen = set()
    errors = [None] * n
    for i in range(n):
        if task_id[i] is None:
            err = "task_id is null"
        elif task_id[i] in seen:
            err = f"task_id {task_id[i]} is not unique"
        elif not brick[i]:
            err = "brickname is null or empty"
        elif not (math.isfinite(ra[i]) and 0.0 <= ra[i] < 360.0):
            err = f"ra = {ra[i]:g} outside [0, 360)"
        elif not (math.isfinite(dec[i]) and -90.0 <= dec[i] <= 90.0):
            err = f"dec = {dec[i]:g} outside [-90, 90]"
        elif split[i] not in SPLITS:
            err = f"region_split = {split[i]!r} is not one of {', '.join(SPLITS)}"
        elif cols["lens_model"][i] == "CONTROL" and not (theta_e[i] == 0.0
                                                        or math.isnan(theta_e[i])):
            err = f"CONTROL row with theta_e_arcsec = {theta_e[i]:g} (must be 0 or null)"
        else:
            err = physics[i]
        if task_id[i] is not None:
            seen.add(task_id[i])
        errors[i] = err
    return errors
