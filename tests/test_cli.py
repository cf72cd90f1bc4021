"""The click front end: exit codes, one-line errors, the SPEC section 7 bench record."""
import json

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
    assert res["peak_rss_mib"] > 0


@pytest.mark.parametrize("kw", [{"batch_size": 0}, {"stamps": 0}, {"stamp_size": 15}])
def test_run_bench_rejects_bad_arguments(kw):
    with pytest.raises(ValueError, match=next(iter(kw))):
        run_bench("cpu", **{"stamps": 4, "stamp_size": 16, "repeats": 1, **kw})
