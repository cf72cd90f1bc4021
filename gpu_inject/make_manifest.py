"""Tasks from a target catalogue (the library of ``gpu-inject make-manifest``): SPEC section 4
manifest rows for every target of a DR10 sweep, an LRG list or any table with brickname, ra,
dec and flux_r.

Catalogue (``read_catalog``)
    Parquet (a file or a directory of parts, local or ``s3://``) or a FITS binary table (the
    first table HDU of a ``.fits``/``.fit``/``.fts`` file, optionally ``.gz``). Column names
    match case-insensitively, so DR10 sweeps (BRICKNAME, RA, DEC, FLUX_R, PSFSIZE_G, ...) read
    as they are. Required: brickname, ra, dec, flux_r; optional: psfsize_g/r/z (null when
    absent: the pipeline then falls back as in SPEC section 3) and the region column. Only
    these columns are read. A missing column or an unreadable file is a one-line
    ``CatalogError`` (a ValueError) naming the file and every missing column.

Rows, in this order (task_id = first_task_id + row index)
    Targets in catalogue order. Per target, its m = G x injections_per_target injections,
    where G is the number of grid combinations (``itertools.product`` over the grid's columns
    in the order given; each combination repeated injections_per_target times in a row;
    G = 1 without a grid). Then, by ``controls``:
    ``per-target``: one CONTROL after the target's injections (m + 1 rows per target);
    ``per-injection``: each injection directly followed by its own CONTROL (2 m rows);
    ``none``: injections only (m rows).

Parameters
    ``draws.draw_params`` (the distributions of ``random_tasks``: uniform over SPEC section 6)
    on ``numpy.random.default_rng(seed)``, one draw for all injection rows in row order; grid
    columns then take their grid value. The same catalogue, options and seed give the same
    table; adding or removing a target changes the draws of the targets after it. lens_model
    is drawn from ``lens_models`` unless the grid sets it. Grid values must lie inside the
    ranges the engine accepts (``tasks.RANGES``); the accuracy of SPEC section 6 is promised
    only inside its own, narrower ranges. lens_flux_r is the catalogue's flux_r, psfsize_* are
    copied.

CONTROL rows
    lens_model CONTROL, theta_e_arcsec 0, every other lens and source column null;
    brickname, ra, dec, lens_flux_r, psfsize_* and the split are those of their target.

Splits (as the user's Phase 3: ``xxhash64(region_id)``)
    region_id is the catalogue's ``region_column`` (string, or integer written in decimal),
    else the brickname; it is carried as the extra string column ``region_id``. With h the
    xxh64 (seed 0) of its UTF-8 bytes and u = h / 2**64: train if u < f_train, val if
    u < f_train + f_val, else test. All rows of a region share a split; with the brick as
    region no brick is in two splits (with a region column, only if regions are unions of
    bricks: ``manifest_summary`` counts the bricks in several splits). A null or empty
    region id gives a null split.

Bad catalogue values are kept, never dropped or defaulted
    A null brickname, a NaN ra/dec, a flux_r that is NaN or <= 0, a null region id: the row is
    written as it is and the pipeline turns it into an error row with its reason (rows in =
    rows out; CONTROL rows do not need flux_r). ``manifest_summary`` counts these rows with
    the pipeline's own check (``io.manifest.row_errors``) and quotes the first reason.
"""
from __future__ import annotations

import itertools
import math
import numbers
import os
from collections.abc import Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from . import tasks as T
from .draws import draw_params
from .io.manifest import REQUIRED, SPLITS, row_errors
from .io.writer import write_part

TARGET_COLUMNS = {"brickname": pa.string(), "ra": pa.float64(), "dec": pa.float64(),
                  "flux_r": pa.float64()}
PSF_COLUMNS = ("psfsize_g", "psfsize_r", "psfsize_z")
#: Float lens and source columns of SPEC section 4 (null in CONTROL rows, but theta_e = 0).
PARAM_COLUMNS = tuple(c for c in T.RANGES if c != "lens_flux_r")
GRID_COLUMNS = ("lens_model",) + PARAM_COLUMNS
INJECTED_MODELS = ("SIS", "SIE")
CONTROLS = ("per-target", "per-injection", "none")
FITS_SUFFIXES = tuple(s + z for s in (".fits", ".fit", ".fts") for z in ("", ".gz"))


class CatalogError(ValueError):
    """The catalogue cannot be used (unreadable, missing or unusable columns): one line."""


def _one_line(exc: BaseException) -> str:
    msg = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def _lower_names(names, source) -> dict:
    """lower-case name -> actual name; CatalogError when two names differ only in case."""
    out = {}
    for name in names:
        key = name.lower()
        if key in out:
            raise CatalogError(f"{source}: columns {out[key]!r} and {name!r} differ only in case")
        out[key] = name
    return out


def _wanted(region_column) -> set:
    return {*TARGET_COLUMNS, *PSF_COLUMNS} | ({region_column.lower()} if region_column else set())


def _cast(col, to, name, source):
    try:
        return pc.cast(col, to)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise CatalogError(f"{source}: column {name} cannot be read as {to}: "
                           f"{_one_line(exc)}") from None


def _targets(table: pa.Table, region_column, source) -> pa.Table:
    """The catalogue columns make_manifest needs, under lower-case names and SPEC types;
    CatalogError naming every missing column."""
    names = _lower_names(table.column_names, source)
    missing = [c for c in TARGET_COLUMNS if c not in names]
    if region_column and region_column.lower() not in names:
        missing.append(region_column)
    if missing:
        raise CatalogError(f"{source}: missing column(s): {', '.join(missing)}")
    out = {c: _cast(table[names[c]], to, names[c], source) for c, to in TARGET_COLUMNS.items()}
    for c in PSF_COLUMNS:
        out[c] = (_cast(table[names[c]], pa.float64(), names[c], source) if c in names
                  else pa.nulls(table.num_rows, pa.float64()))
    if region_column:
        col = table[names[region_column.lower()]]
        if not (pa.types.is_integer(col.type) or pa.types.is_string(col.type)
                or pa.types.is_large_string(col.type) or pa.types.is_binary(col.type)):
            raise CatalogError(f"{source}: region column {region_column} is {col.type}, "
                               "not a string or an integer")
        out[region_column.lower()] = _cast(col, pa.string(), region_column, source)
    return pa.table(out)


def _read_parquet(path, storage_options, wanted) -> pa.Table:
    import fsspec
    import pyarrow.dataset as ds

    fs, root = fsspec.core.url_to_fs(path, **(storage_options or {}))
    dataset = ds.dataset(root, format="parquet", filesystem=fs)
    return dataset.to_table(columns=[n for n in dataset.schema.names if n.lower() in wanted])


def _read_fits(path, storage_options, wanted) -> pa.Table:
    import fsspec
    from astropy.io import fits

    with fsspec.open(path, "rb", **(storage_options or {})) as fh, fits.open(fh) as hdul:
        hdu = next((h for h in hdul if isinstance(h, (fits.BinTableHDU, fits.TableHDU))), None)
        if hdu is None:
            raise ValueError("no table HDU")
        cols = {}
        for name in hdu.columns.names:
            if name.lower() in wanted:
                a = np.asarray(hdu.data[name])
                if a.dtype.kind == "S":
                    a = np.char.decode(a, "ascii")
                cols[name] = a.astype(a.dtype.newbyteorder("="))  # FITS is big-endian
        return pa.table(cols)


def read_catalog(path, *, region_column=None, storage_options=None) -> pa.Table:
    """Targets of a Parquet or FITS catalogue: brickname (string), ra, dec, flux_r,
    psfsize_g/r/z (float64, null when absent) and, if asked, the region column (as a string,
    under its lower-case name). CatalogError, one line naming the file, when it cannot be
    read or lacks a column."""
    path = str(path)
    reader = _read_fits if path.lower().endswith(FITS_SUFFIXES) else _read_parquet
    try:
        table = reader(path, storage_options, _wanted(region_column))
    except Exception as exc:  # noqa: BLE001 - any failure to read is the user's to fix
        raise CatalogError(f"cannot read catalogue {path}: {_one_line(exc)}") from None
    return _targets(table, region_column, path)


def split_of(region_id: str, fractions=(0.7, 0.15, 0.15)) -> str:
    """train, val or test for a region id: u = xxh64(UTF-8 id, seed 0) / 2**64 against the
    cumulative fractions."""
    u = xxhash.xxh64_intdigest(region_id.encode("utf-8")) / 2.0**64
    if u < fractions[0]:
        return "train"
    return "val" if u < fractions[0] + fractions[1] else "test"


def _region_splits(region_ids: pa.ChunkedArray, fractions) -> pa.Array:
    """split_of for every id, hashing each distinct id once; null for a null or empty id."""
    enc = region_ids.combine_chunks().dictionary_encode()
    splits = [split_of(r, fractions) if r else None for r in enc.dictionary.to_pylist()]
    return pa.array(splits, pa.string()).take(enc.indices)


def _check_fractions(split_fractions) -> tuple:
    f = tuple(split_fractions)
    if (len(f) != 3 or not all(isinstance(v, numbers.Real) and math.isfinite(v) and v >= 0
                               for v in f) or not math.isclose(sum(f), 1.0, abs_tol=1e-9)):
        raise ValueError(f"split_fractions = {split_fractions!r}: need 3 non-negative numbers "
                         "(train, val, test) summing to 1")
    return f


def _inside(v, lo, hi, closed_lo, closed_hi) -> bool:
    return (math.isfinite(v) and (v > lo or (closed_lo and v == lo))
            and (v < hi or (closed_hi and v == hi)))


def _check_grid(grid) -> dict:
    """column -> list of values, each checked: ValueError naming the column."""
    if grid is None:
        return {}
    if not isinstance(grid, Mapping):
        raise ValueError("grid must map column names to lists of values")
    out = {}
    for name, values in grid.items():
        if name not in GRID_COLUMNS:
            raise ValueError(f"grid: {name!r} is not a parameter column (choose from "
                             f"{', '.join(GRID_COLUMNS)})")
        if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
            raise ValueError(f"grid: {name} needs a list of values, not {values!r}")
        values = list(values)
        if not values:
            raise ValueError(f"grid: {name} has no values")
        for v in values:
            if name == "lens_model":
                if v not in INJECTED_MODELS:
                    raise ValueError(f"grid: lens_model = {v!r} is not one of "
                                     f"{', '.join(INJECTED_MODELS)}")
                continue
            lo, hi, clo, chi = T.RANGES[name]
            if (isinstance(v, bool) or not isinstance(v, numbers.Real)
                    or not _inside(float(v), lo, hi, clo, chi)):
                raise ValueError(f"grid: {name} = {v!r} outside "
                                 f"{T._interval(lo, hi, clo, chi)}")
        out[name] = values
    return out


def _row_layout(n_targets, m, controls):
    """Per output row: its target and its injection number within the target (-1: CONTROL)."""
    if controls == "per-target":
        slots = np.append(np.arange(m), -1)
    elif controls == "per-injection":
        slots = np.stack([np.arange(m), np.full(m, -1)], axis=1).ravel()
    else:
        slots = np.arange(m)
    target = np.repeat(np.arange(n_targets, dtype=np.int64), len(slots))
    return target, np.tile(slots, n_targets)


def make_manifest(catalog, *, injections_per_target=1, grid=None, controls="per-target",
                  seed=0, region_column=None, split_fractions=(0.7, 0.15, 0.15),
                  first_task_id=0, lens_models=("SIE",)) -> pa.Table:
    """The manifest (SPEC section 4 columns in order, plus ``region_id``) for every target of
    ``catalog``: a table or mapping of columns (names matched case-insensitively) or a path
    for ``read_catalog``. Row order, draws, CONTROL rows and splits: see the module doc."""
    fractions = _check_fractions(split_fractions)
    grid = _check_grid(grid)
    if controls not in CONTROLS:
        raise ValueError(f"controls = {controls!r}: choose {', '.join(CONTROLS)}")
    if (isinstance(injections_per_target, bool)
            or not isinstance(injections_per_target, numbers.Integral)
            or injections_per_target < 0):
        raise ValueError(f"injections_per_target = {injections_per_target!r}: need an "
                         "integer >= 0")
    lens_models = tuple(lens_models)
    if not lens_models or any(m not in INJECTED_MODELS for m in lens_models):
        raise ValueError(f"lens_models = {lens_models!r}: choose among "
                         f"{', '.join(INJECTED_MODELS)}")

    if isinstance(catalog, (str, os.PathLike)):
        targets = read_catalog(catalog, region_column=region_column)
    else:
        targets = _targets(catalog if isinstance(catalog, pa.Table) else pa.table(catalog),
                           region_column, "catalogue")
    region_ids = targets[region_column.lower()] if region_column else targets["brickname"]
    splits = _region_splits(region_ids, fractions)

    combos = list(itertools.product(*grid.values()))  # [()] without a grid
    k = int(injections_per_target)
    m = len(combos) * k
    target, slot = _row_layout(targets.num_rows, m, controls)
    control = slot < 0
    n_inj = int((~control).sum())
    params = draw_params(np.random.default_rng(seed), n_inj, lens_models)
    combo_of = slot[~control] // k if k else slot[~control]
    for j, name in enumerate(grid):
        params[name] = np.array([c[j] for c in combos], dtype=params[name].dtype)[combo_of]

    take = pa.array(target)
    cols = {
        "task_id": pa.array(first_task_id + np.arange(len(target), dtype=np.int64)),
        "brickname": targets["brickname"].take(take),
        "ra": targets["ra"].take(take),
        "dec": targets["dec"].take(take),
        "region_split": splits.take(take),
    }
    model = np.full(len(target), "CONTROL", dtype=object)
    model[~control] = params["lens_model"]
    cols["lens_model"] = pa.array(model, pa.string())
    for name in PARAM_COLUMNS:
        values = np.zeros(len(target))
        values[~control] = params[name]
        cols[name] = pa.array(values, mask=None if name == "theta_e_arcsec" else control)
    cols["lens_flux_r"] = targets["flux_r"].take(take)
    for name in PSF_COLUMNS:
        cols[name] = targets[name].take(take)
    cols["region_id"] = pc.cast(region_ids, pa.string()).take(take)
    return pa.table({c: cols[c] for c in (*REQUIRED, "region_id")})


def split_summary(table: pa.Table) -> list:
    """[(split, rows, share)] for train, val and test, then (None, rows, share) if any row
    has a null split."""
    n = table.num_rows
    counts = {v["values"]: v["counts"] for v in pc.value_counts(table["region_split"]).to_pylist()}
    keys = list(SPLITS) + [s for s in counts if s not in SPLITS]
    return [(s, counts.get(s, 0), counts.get(s, 0) / n if n else 0.0) for s in keys]


def manifest_summary(table: pa.Table) -> dict:
    """Counts to print after make-manifest: rows, injections, controls, bricks, splits
    (``split_summary``), bricks in more than one split, and the rows the pipeline will write
    as error rows (its own check), with the first reason."""
    errors = row_errors(table)
    bad = [(tid, e) for tid, e in zip(table["task_id"].to_pylist(), errors) if e is not None]
    per_brick = table.group_by("brickname").aggregate([("region_split", "count_distinct")])
    controls = pc.sum(pc.equal(table["lens_model"], "CONTROL")).as_py() or 0
    return {
        "rows": table.num_rows,
        "injections": table.num_rows - controls,
        "controls": controls,
        "bricks": per_brick.num_rows,
        "splits": split_summary(table),
        "bricks_in_several_splits": pc.sum(
            pc.greater(per_brick["region_split_count_distinct"], 1)).as_py() or 0,
        "invalid_rows": len(bad),
        "first_invalid": f"task {bad[0][0]}: {bad[0][1]}" if bad else None,
    }


def format_summary(summary: dict) -> str:
    """``manifest_summary`` as lines for a terminal: totals, then each split's rows and share."""
    lines = [(f"{summary['rows']} rows: {summary['injections']} injections, "
              f"{summary['controls']} CONTROL, {summary['bricks']} bricks")]
    lines += [f"  {s!s:<5} {n:>10} {100 * share:6.2f} %" for s, n, share in summary["splits"]]
    if summary["bricks_in_several_splits"]:
        lines.append(f"bricks in more than one split: {summary['bricks_in_several_splits']}")
    if summary["invalid_rows"]:
        lines.append(f"rows the pipeline will write as error rows: {summary['invalid_rows']} "
                     f"(first: {summary['first_invalid']})")
    if "path" in summary:
        lines.append(f"written to {summary['path']}")
    return "\n".join(lines)


def write_manifest(table: pa.Table, path, storage_options=None) -> dict:
    """Write the manifest as one Parquet file (local: temporary name then ``os.replace``;
    ``s3://``: one PUT), replacing any file there; returns ``manifest_summary`` plus path."""
    path = str(path)
    if not path.startswith("s3://"):
        path = os.path.abspath(path)
    write_part(table, path, storage_options)
    return {**manifest_summary(table), "path": path}
