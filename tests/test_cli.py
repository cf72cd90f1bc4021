"""The click front end: exit codes, one-line errors, the SPEC section 7 bench record."""
import json

import numpy as np

import pytest
from click.testing import CliRunner

from gpu_inject.bench import run_bench
from gpu_inject.cli import main

SPEC_KEYS = {"backend", "stamps", "stamp_size", "bands", "seconds", "stamps_per_s"}
TINY = ["--stamps", "4", "--stamp-size", "16", "--repeats", "1"]


def test_info_names_backends_and_the_auto_choice():
    res = CliRunner().invoke(main, ["info"])
    assert res.exit_code == 0, res.output
    assert "backend cpu: available" in res.output
    assert "backend auto -> cpu" in res.output


def test_bench_writes_the_spec_record(tmp_path):
    path = tmp_path / "bench.json"
    res = CliRunner().invoke(main, ["bench", "--backend", "cpu", *TINY, "--json", str(path)])
    assert res.exit_code == 0, res.output
    (rec,) = json.loads(path.read_text())
    assert SPEC_KEYS <= rec.keys()
    assert (rec["backend"], rec["stamps"], rec["stamp_size"], rec["bands"]) == ("cpu", 4, 16,
                                                                                 "grz")
    assert rec["seconds"] > 0
    assert rec["stamps_per_s"] == pytest.approx(4 / rec["seconds"])
    assert rec["batch_size"] == 1024 and rec["peak_rss_mib"] > 0
    assert "peak RSS" in res.output
    assert f"batches overlapping: {rec['stamps_per_s_overlapped']:,.0f} stamps/s" in res.output


@pytest.mark.parametrize("args,msg", [
    (["--backend", "gpu"], "--backend gpu"),
    (["--stamp-size", "15"], "--stamp-size"),
    (["--stamp-size", "17"], "--stamp-size 17: must be even"),
    (["--batch-size", "0"], "--batch-size"),
    (["--stamp-size", "8"], "--stamp-size"),
    (["--stamps", "0"], "--stamps"),
])
def test_bad_options_fail_in_one_line(args, msg):
    res = CliRunner().invoke(main, ["bench", *TINY, *args])
    assert res.exit_code != 0
    assert msg in res.output
    assert "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    assert len([ln for ln in res.output.splitlines() if ln.startswith("Error:")]) == 1


def test_backend_all_skips_what_is_missing(tmp_path):
    path = tmp_path / "all.json"
    res = CliRunner().invoke(main, ["bench", "--backend", "all", *TINY, "--json", str(path)])
    assert res.exit_code == 0, res.output
    assert "gpu: skipped" in res.output
    assert "Traceback" not in res.output
    assert [r["backend"] for r in json.loads(path.read_text())] == ["cpu"]


def test_run_bench_counts_every_stamp_across_batches():
    res = run_bench("cpu", stamps=5, stamp_size=16, repeats=1, batch_size=2)
    assert (res["stamps"], res["batch_size"]) == (5, 2)
    assert res["stamps_per_s"] == pytest.approx(5 / res["seconds"])
    # one repeat: the engine figure is its kernels plus its copy back, each timed apart
    assert res["kernel_seconds"] > 0
    assert res["seconds"] == pytest.approx(res["kernel_seconds"] + res["copy_out_seconds"])
    assert res["peak_rss_mib"] > 0


@pytest.mark.parametrize("kw", [{"batch_size": 0}, {"stamps": 0}, {"stamp_size": 15}])
def test_run_bench_rejects_bad_arguments(kw):
    with pytest.raises(ValueError, match=next(iter(kw))):
        run_bench("cpu", **{"stamps": 4, "stamp_size": 16, "repeats": 1, **kw})


def test_make_manifest_cli_writes_a_valid_manifest_and_refuses_to_overwrite(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from gpu_inject.io.manifest import read_manifest

    n = 40
    pq.write_table(pa.table({"BRICKNAME": [f"{1000 + k % 20:04d}p100" for k in range(n)],
                             "RA": np.linspace(100, 101, n), "DEC": np.full(n, 10.0),
                             "FLUX_R": np.full(n, 20.0)}), tmp_path / "cat.parquet")
    out = tmp_path / "m.parquet"
    args = ["make-manifest", "--catalog", str(tmp_path / "cat.parquet"), "--out", str(out),
            "--grid", "theta_e_arcsec=0.4,0.8", "--grid", "lens_model=SIS,SIE",
            "--controls", "per-injection", "--seed", "3"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    m = read_manifest(str(out))
    assert m.table.num_rows == n * 4 * 2 and all(e is None for e in m.errors)
    inj = m.table.filter(pa.compute.not_equal(m.table["lens_model"], "CONTROL"))
    assert sorted(set(inj["theta_e_arcsec"].to_pylist())) == [0.4, 0.8]
    for split in ("train", "val", "test"):
        assert split in r.output          # each split's share is printed
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 1 and "exists" in r.output
    r = CliRunner().invoke(main, args[:-2] + ["--grid", "src_n=9", "--force"])
    assert r.exit_code == 1 and "src_n" in r.output and "Traceback" not in r.output
