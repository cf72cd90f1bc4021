"""The output datasets of SPEC section 5: Arrow tables with ``fixed_shape_tensor`` stamp
columns, one Parquet part per work unit and split, each appearing atomically.

Local parts are written under a temporary name in the same folder and renamed into place
(``os.replace``); S3 parts are single PUTs, which S3 makes visible only when complete. A part
that exists is therefore whole: that is what a restart relies on.
"""
from __future__ import annotations

import io
import os
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

DATASETS = ("stamps", "metrics")


def tensor_column(values: np.ndarray, ok: np.ndarray) -> pa.ExtensionArray:
    """``fixed_shape_tensor`` column of values [n, *shape]; rows where ``ok`` is False are
    null (error rows have null arrays, SPEC 5)."""
    n = values.shape[0]
    shape = list(values.shape[1:])
    size = int(np.prod(shape, dtype=np.int64))
    flat = pa.array(np.ascontiguousarray(values).reshape(n * size))
    storage = pa.FixedSizeListArray.from_arrays(flat, size, mask=pa.array(~np.asarray(ok)))
    return pa.ExtensionArray.from_storage(pa.fixed_shape_tensor(flat.type, shape), storage)


def stamps_table(task_id, brickname, ra, dec, lens_model, bands, image, invvar, maskbits,
                 ok) -> pa.Table:
    """The stamps dataset of SPEC 5 for n rows: image/invvar float32 [n, B, N, N], maskbits
    int32 [n, N, N]; rows where ``ok`` is False get null arrays."""
    n, _, size, _ = image.shape
    return pa.table({
        "task_id": pa.array(task_id, pa.int64()),
        "brickname": pa.array(brickname, pa.string()),
        "ra": pa.array(ra, pa.float64()),
        "dec": pa.array(dec, pa.float64()),
        "lens_model": pa.array(lens_model, pa.string()),
        "stamp_size": pa.array(np.full(n, size, np.int32)),
        "bands": pa.array(["".join(bands)] * n, pa.string()),
        "image": tensor_column(image.astype(np.float32, copy=False), ok),
        "invvar": tensor_column(invvar.astype(np.float32, copy=False), ok),
        "maskbits": tensor_column(maskbits.astype(np.int32, copy=False), ok),
    })


def part_path(out: str, dataset: str, experiment_id: str, split: str, unit_id: str) -> str:
    """``<out>/<dataset>/<experiment_id>/region_split=<split>/part-<unit_id>.parquet``."""
    if dataset not in DATASETS:
        raise ValueError(f"dataset = {dataset!r}: choose {' or '.join(DATASETS)}")
    return (f"{str(out).rstrip('/')}/{dataset}/{experiment_id}/region_split={split}/"
            f"part-{unit_id}.parquet")


def write_part(table: pa.Table, path: str, storage_options=None) -> str:
    """Write ``table`` to ``path`` (local or ``s3://``) so that the file appears whole or not
    at all; returns the path."""
    if str(path).startswith("s3://"):
        import fsspec

        buf = io.BytesIO()
        pq.write_table(table, buf)
        fs = fsspec.filesystem("s3", **(storage_options or {}))
        fs.pipe_file(str(path)[5:], buf.getvalue())  # one PUT: visible only when complete
        return path
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
