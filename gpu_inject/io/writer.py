"""The output datasets of SPEC section 5: Arrow tables with ``fixed_shape_tensor`` stamp
columns, one Parquet part per work unit and split, each appearing atomically.

Local parts are written under a temporary name in the same folder and renamed into place
(``os.replace``); S3 parts are single PUTs, which S3 makes visible only when complete. A part
that exists is therefore whole: that is what a restart relies on.
"""
from __future__ import annotations

import io
import json
import os
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

DATASETS = ("stamps", "metrics")


def tensor_column(values: np.ndarray, ok: np.ndarray, shape=None, dtype=None):
    """``fixed_shape_tensor`` column of values [n, *shape]; rows where ``ok`` is False are
    null (error rows have null arrays, SPEC 5). ``values`` None: every row null, of the
    given ``shape`` and numpy ``dtype``."""
    ok = np.asarray(ok, dtype=bool)
    if values is None:
        vtype = pa.from_numpy_dtype(np.dtype(dtype))
        ttype = pa.fixed_shape_tensor(vtype, list(shape))
        return pa.ExtensionArray.from_storage(ttype, pa.nulls(ok.size, ttype.storage_type))
    n = values.shape[0]
    shape = list(values.shape[1:])
    size = int(np.prod(shape, dtype=np.int64))
    flat = pa.array(np.ascontiguousarray(values).reshape(n * size))
    storage = pa.FixedSizeListArray.from_arrays(flat, size, mask=pa.array(~ok))
    return pa.ExtensionArray.from_storage(pa.fixed_shape_tensor(flat.type, shape), storage)


def stamps_table(task_id, brickname, ra, dec, lens_model, bands, image, invvar, maskbits,
                 ok, size=None) -> pa.Table:
    """The stamps dataset of SPEC 5 for n rows: image/invvar float32 [n, B, N, N], maskbits
    int32 [n, N, N]; rows where ``ok`` is False get null arrays. image, invvar and maskbits
    may be None when no row is ok (``size`` then gives N)."""
    n = len(ok)
    size = image.shape[-1] if image is not None else size
    nb = len(bands)

    def col(values, shape, dtype):
        if values is not None:
            values = values.astype(dtype, copy=False)
        return tensor_column(values, ok, shape, dtype)

    return pa.table({
        "task_id": pa.array(task_id, pa.int64()),
        "brickname": pa.array(brickname, pa.string()),
        "ra": pa.array(ra, pa.float64()),
        "dec": pa.array(dec, pa.float64()),
        "lens_model": pa.array(lens_model, pa.string()),
        "stamp_size": pa.array(np.full(n, size, np.int32)),
        "bands": pa.array(["".join(bands)] * n, pa.string()),
        "image": col(image, (nb, size, size), np.float32),
        "invvar": col(invvar, (nb, size, size), np.float32),
        "maskbits": col(maskbits, (size, size), np.int32),
    })


def part_path(out: str, dataset: str, experiment_id: str, split: str, unit_id: str) -> str:
    """``<out>/<dataset>/<experiment_id>/region_split=<split>/part-<unit_id>.parquet``."""
    if dataset not in DATASETS:
        raise ValueError(f"dataset = {dataset!r}: choose {' or '.join(DATASETS)}")
    return (f"{str(out).rstrip('/')}/{dataset}/{experiment_id}/region_split={split}/"
            f"part-{unit_id}.parquet")


def _write_parquet(table: pa.Table, where) -> None:
    """Parquet with dictionary encoding and statistics for the scalar columns only: on the
    stamp tensors (noise-like floats) they cost 40 % of the write time and buy nothing."""
    scalar = [f.name for f in table.schema if not isinstance(f.type, pa.BaseExtensionType)]
    pq.write_table(table, where, use_dictionary=scalar, write_statistics=scalar)


def write_part(table: pa.Table, path: str, storage_options=None) -> str:
    """Write ``table`` to ``path`` (local or ``s3://``) so that the file appears whole or not
    at all; returns the path."""
    if str(path).startswith("s3://"):
        import fsspec

        buf = io.BytesIO()
        _write_parquet(table, buf)
        fs = fsspec.filesystem("s3", **(storage_options or {}))
        fs.pipe_file(str(path)[5:], buf.getvalue())  # one PUT: visible only when complete
        return path
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
    try:
        _write_parquet(table, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


#: The stage config of a run, at ``<out>/CONFIG_NAME`` (written by the pipeline).
CONFIG_NAME = "_stage_config.json"


class Store:
    """The ``--out`` location, a local folder or an ``s3://`` URL: part files, the stage
    config, and what a restart needs to know (which parts exist)."""

    def __init__(self, out: str, storage_options=None):
        self.out = str(out).rstrip("/")
        self.remote = self.out.startswith("s3://")
        self.storage_options = storage_options
        if self.remote:
            import fsspec

            self.fs = fsspec.filesystem("s3", **(storage_options or {}))
        else:
            self.out = os.path.abspath(self.out)
            self.fs = None

    def path(self, *parts: str) -> str:
        return "/".join([self.out, *parts])

    def _key(self, path: str) -> str:
        return path[5:] if self.remote else path

    def part(self, dataset: str, experiment_id: str, split: str, unit_id: str) -> str:
        return part_path(self.out, dataset, experiment_id, split, unit_id)

    def write_part(self, table: pa.Table, path: str) -> str:
        return write_part(table, path, self.storage_options)

    def existing_parts(self, experiment_id: str) -> set:
        """Paths of the part files of ``experiment_id`` that exist (complete, by atomicity)."""
        found = set()
        for dataset in DATASETS:
            top = self.path(dataset, experiment_id)
            if self.remote:
                names = self.fs.find(self._key(top)) if self.fs.exists(self._key(top)) else []
                found.update("s3://" + n for n in names)
            else:
                for folder, _, files in os.walk(top):
                    found.update(os.path.join(folder, f) for f in files)
        return {p for p in found if os.path.basename(p).startswith("part-")
                and p.endswith(".parquet")}

    def remove_experiment(self, experiment_id: str) -> None:
        """Delete every part of ``experiment_id`` (``--force``)."""
        import shutil

        for dataset in DATASETS:
            top = self.path(dataset, experiment_id)
            if self.remote:
                if self.fs.exists(self._key(top)):
                    self.fs.rm(self._key(top), recursive=True)
            else:
                shutil.rmtree(top, ignore_errors=True)

    def remove_stale_temporaries(self, experiment_id: str) -> int:
        """Temporary files left by a killed local run (never visible as parts); their count."""
        if self.remote:
            return 0
        n = 0
        for dataset in DATASETS:
            for folder, _, files in os.walk(self.path(dataset, experiment_id)):
                for f in files:
                    if f.startswith(".part-") and f.endswith(".tmp"):
                        os.remove(os.path.join(folder, f))
                        n += 1
        return n

    def read_json(self, name: str):
        """The JSON object stored at ``<out>/<name>``, or None when there is none."""
        path = self.path(name)
        if self.remote:
            if not self.fs.exists(self._key(path)):
                return None
            return json.loads(self.fs.cat_file(self._key(path)))
        if not os.path.exists(path):
            return None
        with open(path) as f:
            return json.load(f)

    def write_json(self, name: str, obj) -> str:
        """Write ``obj`` to ``<out>/<name>`` atomically (temporary name + rename, one PUT)."""
        data = (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode()
        path = self.path(name)
        if self.remote:
            self.fs.pipe_file(self._key(path), data)
            return path
        os.makedirs(self.out, exist_ok=True)
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return path
