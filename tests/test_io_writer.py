"""Output parts of SPEC 5: tensor columns with their shapes and nulls, partitions by split,
atomic appearance (no partial part, no temporary left behind)."""
import io
import os
import threading

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from gpu_inject.io import writer as W


def sample(n=3, nb=3, size=16, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(n, nb, size, size)).astype(np.float32)
    invvar = rng.uniform(1, 2, (n, nb, size, size)).astype(np.float32)
    maskbits = rng.integers(0, 1 << 17, (n, size, size)).astype(np.int32)
    ok = np.array([True, False, True])[:n]
    t = W.stamps_table(np.arange(n) + 100, ["0489m442"] * n, np.full(n, 48.9),
                       np.full(n, -44.2), ["SIE", "SIS", "CONTROL"][:n], "grz", image, invvar,
                       maskbits, ok)
    return t, image, invvar, maskbits, ok


def test_stamps_round_trip_with_shapes_and_null_error_rows(tmp_path):
    t, image, invvar, maskbits, ok = sample()
    path = W.write_part(t, W.part_path(tmp_path, "stamps", "exp", "train", "u0001"))
    back = pq.read_table(path)
    assert str(back["image"].type) == "extension<arrow.fixed_shape_tensor[value_type=float, shape=[3,16,16]]>"
    assert back["image"].null_count == 1 and back["maskbits"].null_count == 1
    img = back["image"].combine_chunks()
    # the values of null rows come back null: compare the rows that are not
    got = img.storage.values.to_numpy(zero_copy_only=False).reshape(3, 3, 16, 16)
    np.testing.assert_array_equal(got[ok], image[ok])
    mb = back["maskbits"].combine_chunks().storage.values.to_numpy(zero_copy_only=False)
    mb = mb.reshape(3, 16, 16)
    np.testing.assert_array_equal(mb[ok], maskbits[ok])
    assert "value_type=int32" in str(back["maskbits"].type)  # bit 16 survives
    assert back["stamp_size"].to_pylist() == [16] * 3 and back["bands"][0].as_py() == "grz"


def test_parts_partition_by_split(tmp_path):
    t, *_ = sample()
    for split in ("train", "val"):
        W.write_part(t, W.part_path(tmp_path, "stamps", "exp", split, "u0001"))
    d = ds.dataset(tmp_path / "stamps" / "exp", format="parquet", partitioning="hive")
    got = d.to_table(columns=["task_id", "region_split"])
    assert sorted(set(got["region_split"].to_pylist())) == ["train", "val"]
    assert got.num_rows == 6


def test_a_failed_write_leaves_nothing(tmp_path, monkeypatch):
    t, *_ = sample()
    path = W.part_path(tmp_path, "metrics", "exp", "test", "u0002")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(W.pq, "write_table", boom)
    with pytest.raises(OSError, match="disk full"):
        W.write_part(t, path)
    folder = os.path.dirname(path)
    assert os.listdir(folder) == []  # neither the part nor a temporary
    with pytest.raises(ValueError, match="dataset = 'images'"):
        W.part_path(tmp_path, "images", "exp", "test", "u0002")


def test_parts_written_to_s3_through_moto(moto_s3):
    import fsspec

    moto_s3["client"].create_bucket(Bucket="out")
    t, *_ = sample()
    path = W.write_part(t, W.part_path("s3://out/run", "stamps", "exp", "val", "u0003"),
                        storage_options=moto_s3["opts"])
    with fsspec.filesystem("s3", **moto_s3["opts"]).open(path[5:], "rb") as fh:
        assert pq.read_table(fh).equals(t)


def test_concurrent_attempts_writing_one_part_leave_one_whole_part(tmp_path):
    """Attempts of one task (a retry racing a speculative copy) write the same part at once:
    whenever the part is opened it is one attempt's whole file, and no temporary is left.
    (Tables differ here to tell attempts apart; real attempts write identical bytes.)"""
    path = str(tmp_path / "region_split=train" / "part-000000.parquet")
    tables = [pa.table({"task_id": np.arange(k * 1000, (k + 1) * 1000), "x": np.full(1000, k)})
              for k in range(4)]
    errors, seen = [], set()

    def attempt(t):
        try:
            for _ in range(20):
                W.write_part(t, path)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=attempt, args=(t,)) for t in tables]
    for th in threads:
        th.start()
    while any(th.is_alive() for th in threads):
        try:
            with open(path, "rb") as f:       # one open: one inode, whatever replaces it
                data = f.read()
        except FileNotFoundError:
            continue
        t = pq.read_table(io.BytesIO(data))
        assert t.num_rows == 1000 and len(set(t["x"].to_pylist())) == 1
        seen.add(t["x"][0].as_py())
    for th in threads:
        th.join()
    assert not errors and seen
    assert os.listdir(os.path.dirname(path)) == ["part-000000.parquet"]
