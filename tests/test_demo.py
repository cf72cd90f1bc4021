"""``gpu-inject demo``: the offline end-to-end run and its own checks (which must be able to
fail: a tampered CONTROL stamp is caught)."""
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from click.testing import CliRunner

from gpu_inject.cli import main
from gpu_inject.demo import check_output


def test_demo_runs_and_passes_its_checks(tmp_path):
    r = CliRunner().invoke(main, ["demo", "--out", str(tmp_path), "--brick-size", "400",
                                  "--targets-per-brick", "4", "--backend", "cpu",
                                  "--no-progress"])
    assert r.exit_code == 0, r.output
    assert r.output.count("PASS") == 4 and "FAIL" not in r.output
    for what in ("coadds", "manifest", "stamps", "metrics", "config"):
        assert what in r.output
    assert "18 rows written" in r.output      # 2 bricks x 4 targets x 2 + 2 on a missing brick
    assert os.path.exists(tmp_path / "out" / "_stage_config.json")

    # the control check is real: change one CONTROL pixel in place and it fails
    out = str(tmp_path / "out")
    metrics = pq.read_table(os.path.join(out, "metrics", "demo"))
    ctrl = metrics.filter(pa.compute.equal(metrics["lens_model"], "CONTROL"))
    tid = ctrl["task_id"][0].as_py()
    for d, _, files in os.walk(os.path.join(out, "stamps", "demo")):
        for f in files:
            path = os.path.join(d, f)
            t = pq.read_table(path)
            ids = t["task_id"].to_pylist()
            if tid in ids:
                k = ids.index(tid)
                img = t["image"].combine_chunks()
                flat = img.storage.values.to_numpy(zero_copy_only=False).copy()   # null rows keep their slots
                flat[k * img.storage.type.list_size] += np.float32(1.0)
                new = pa.ExtensionArray.from_storage(img.type, pa.FixedSizeListArray.from_arrays(
                    pa.array(flat), img.storage.type.list_size, mask=img.storage.is_null()))
                pq.write_table(t.set_column(t.column_names.index("image"), "image", new), path)
    checks = dict((name, ok) for name, ok, _ in check_output(
        out, "demo", str(tmp_path / "manifest.parquet"), str(tmp_path / "coadd"), 64, "grz"))
    assert checks["controls untouched (bit for bit)"] is False
    assert checks["rows in = rows out"] is True
