"""The manifest of SPEC 4: schema checked before any work, every bad row an error row with
its reason, rows in = rows out, extra columns carried."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gpu_inject.draws import random_tasks
from gpu_inject.io.manifest import REQUIRED, ManifestError, check_schema, read_manifest


def manifest_table(n=6):
    t = random_tasks(n, seed=9)
    cols = {k: v for k, v in t.items()}
    cols["brickname"] = np.array(["0489m442"] * n, dtype=object)
    cols["ra"] = np.full(n, 48.9)
    cols["dec"] = np.full(n, -44.2)
    cols["region_split"] = np.array(["train", "val", "test"] * (n // 3), dtype=object)
    cols["my_extra"] = np.arange(n) * 10
    return pa.table({k: pa.array(list(v)) for k, v in cols.items()})


def test_a_clean_manifest_directory_reads_whole(tmp_path):
    t = manifest_table()
    (tmp_path / "m").mkdir()
    pq.write_table(t.slice(0, 3), tmp_path / "m" / "part-0.parquet")
    pq.write_table(t.slice(3), tmp_path / "m" / "part-1.parquet")
    m = read_manifest(tmp_path / "m")
    assert m.table.num_rows == 6 and m.ok.all()
    assert sorted(m.table["my_extra"].to_pylist()) == [0, 10, 20, 30, 40, 50]


def test_every_missing_column_is_named_at_once(tmp_path):
    t = manifest_table().drop(["src_n", "psfsize_z", "brickname"])
    pq.write_table(t, tmp_path / "m.parquet")
    with pytest.raises(ManifestError) as err:
        read_manifest(tmp_path / "m.parquet")
    msg = str(err.value)
    assert "\n" not in msg
    for c in ("src_n", "psfsize_z", "brickname"):
        assert c in msg
    check_schema(manifest_table().schema)  # all of REQUIRED present: no error
    assert len(REQUIRED) == 24


def test_unreadable_manifest_is_one_line(tmp_path):
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(ManifestError, match="cannot read manifest .*bad.parquet"):
        read_manifest(tmp_path / "bad.parquet")
    with pytest.raises(ManifestError, match="cannot read manifest"):
        read_manifest(tmp_path / "absent")


@pytest.mark.parametrize("col,val,reason", [
    ("task_id", None, "task_id is null"),
    ("task_id", 0, "task_id 0 is not unique"),
    ("brickname", None, "brickname is null or empty"),
    ("ra", 361.0, "ra = 361 outside [0, 360)"),
    ("dec", float("nan"), "dec = nan outside [-90, 90]"),
    ("region_split", "holdout", "region_split = 'holdout' is not one of train, val, test"),
    ("lens_model", "NFW", "lens_model = 'NFW' is not one of SIS, SIE, CONTROL"),
    ("src_n", 12.0, "src_n = 12 outside [0.36, 8]"),
    ("theta_e_arcsec", -1.0, "theta_e_arcsec = -1 outside [0, inf)"),
])
def test_each_bad_value_becomes_an_error_row(tmp_path, col, val, reason):
    t = manifest_table()
    values = t[col].to_pylist()
    values[4] = val
    t = t.set_column(t.schema.get_field_index(col), col, pa.array(values, t[col].type))
    pq.write_table(t, tmp_path / "m.parquet")
    m = read_manifest(tmp_path / "m.parquet")
    assert m.table.num_rows == 6  # rows in = rows out
    assert m.errors[4] == reason
    assert [e is None for k, e in enumerate(m.errors) if k != 4] == [True] * 5


def test_control_rows_may_leave_lens_and_source_null_but_not_set_theta_e(tmp_path):
    t = manifest_table()
    lens_cols = [c for c in REQUIRED[6:21]]
    for c in lens_cols:
        vals = t[c].to_pylist()
        vals[1] = None
        t = t.set_column(t.schema.get_field_index(c), c, pa.array(vals, pa.float64()))
    models = t["lens_model"].to_pylist()
    models[1] = models[2] = "CONTROL"
    t = t.set_column(t.schema.get_field_index("lens_model"), "lens_model", pa.array(models))
    pq.write_table(t, tmp_path / "m.parquet")
    m = read_manifest(tmp_path / "m.parquet")
    assert m.errors[1] is None
    assert m.errors[2].startswith("CONTROL row with theta_e_arcsec = ")


def test_manifest_read_from_s3_through_moto(tmp_path, moto_s3):
    """The same manifest read from S3 (moto's server on loopback) as from disk."""
    pq.write_table(manifest_table(), tmp_path / "part-0.parquet")
    s3 = moto_s3["client"]
    s3.create_bucket(Bucket="manifests")
    s3.upload_file(str(tmp_path / "part-0.parquet"), "manifests", "exp1/part-0.parquet")
    m = read_manifest("s3://manifests/exp1", storage_options=moto_s3["opts"])
    assert m.table.equals(read_manifest(tmp_path / "part-0.parquet").table)
    with pytest.raises(ManifestError, match="cannot read manifest s3://manifests/none"):
        read_manifest("s3://manifests/none", storage_options=moto_s3["opts"])
