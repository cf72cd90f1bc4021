"""The benchmark suite's own code: the projection model's arithmetic and its measurements,
and the report built from result files (tables and plots)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpu_inject.projection import Rates, measure_reading, measure_writing, project

ROOT = Path(__file__).resolve().parents[1]


def _rates(backend="gpu", engine=1000.0, cores=8):
    return Rates(read_s_per_brick=0.05, read_s_per_stamp=0.002, write_s_per_stamp=0.0001,
                 engine_stamps_per_s=engine, backend=backend, device="test", cores=cores)


def test_projection_gpu_is_limited_by_its_slowest_stage():
    rows, bricks = 1_000_000, 10_000
    p = project(rows, bricks, _rates("gpu", engine=100_000.0), readers=7, executors=10,
                price_per_hour=2.0)
    read_h = (bricks * 0.05 + rows * 0.5 * 0.002) / 7 / 3600
    assert p["stage_hours"]["reading"] == pytest.approx(read_h)
    assert p["stage_hours"]["engine"] == pytest.approx(rows / 100_000 / 3600)
    assert p["limited_by"] == "reading"
    assert p["hours_one_machine"] == pytest.approx(read_h)
    assert p["hours_spark"] == pytest.approx(read_h / 10)
    assert p["cost_one_machine"] == pytest.approx(2.0 * read_h)


def test_projection_cpu_stages_share_the_cores():
    p = project(360_000, 6_000, _rates("cpu", engine=600.0, cores=2), cut_fraction=1.0)
    s = p["stage_hours"]
    assert p["hours_one_machine"] == pytest.approx(s["reading"] + s["engine"] + s["writing"])
    assert s["engine"] == pytest.approx(360_000 / 600 / 3600)
    assert s["reading"] == pytest.approx((6_000 * 0.05 + 360_000 * 0.002) / 2 / 3600)


def test_measured_rates_are_positive_and_per_stamp_below_per_brick(tmp_path):
    per_brick, per_stamp = measure_reading(str(tmp_path), size=600, counts=(4, 16))
    assert 0 < per_stamp < 0.5 and per_brick >= 0
    assert 0 < measure_writing(n=16) < 0.1


def test_report_from_result_files(tmp_path):
    res = tmp_path / "results"
    res.mkdir()
    point = {"backend": "cpu", "device": "CPU, 2 Numba threads", "stamp_size": 64,
             "stamps_per_s": 700.0, "stamps_per_s_min": 650.0, "stamps_per_s_max": 720.0}
    split = {"stamps": 2000, "copy_in_seconds": 0.01, "kernel_seconds": 2.5,
             "copy_out_seconds": 0.2}
    sweep = {"points": [dict(point, batch_size=1), dict(point, batch_size=128, **split)],
             "threads": [dict(point, threads=1, stamps_per_s=400.0),
                         dict(point, threads=2, stamps_per_s=700.0)]}
    (res / "2026-11-24-boxA-engine-sweep.json").write_text(json.dumps(sweep))
    (res / "2026-11-20-boxA-engine-sweep.json").write_text(json.dumps({"points": [],
                                                                      "threads": []}))
    (res / "unrelated.json").write_text("{}")
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "report.py"), str(res),
                           "--out", str(tmp_path / "rep")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "| boxA | 2026-11-24 | cpu |" in text          # the newest file of the machine
    assert "| boxA | 2 | 700 | 88% |" in text             # 700 / (2 x 400)
    assert "| 128 | 700 | 650 - 720 | 5.0 / 1,250.0 / 100.0 |" in text  # ms per 1k stamps
    assert "| 1 | 700 | 650 - 720 | - |" in text            # a point without the split
    assert os.path.getsize(tmp_path / "rep" / "engine_batch.png") > 1000
    assert os.path.getsize(tmp_path / "rep" / "threads.png") > 1000


def test_bench_project_manifest_rejects_a_bad_value_before_timing():
    from click.testing import CliRunner

    from gpu_inject.cli import main

    r = CliRunner().invoke(main, ["bench", "--stamps", "4", "--project-manifest", "12"])
    assert r.exit_code == 1 and "ROWS,BRICKS" in r.output and "stamps/s" not in r.output


def _accuracy_result(methods, caustics):
    stats = {"median": 1e-4, "p95": 2e-4, "worst": 3e-4, "worst_draw": 0, "worst_label": "x"}
    thr = {"ours_render_stamps_per_s": 1200.0, "ours_numba_threads": 2,
           "lenstronomy_ss4_stamps_per_s_1proc": 280.0}
    if caustics:
        thr.update({"lenstronomy_stamps_per_s_1proc": {"ss4": 280.0},
                    "caustics_version": "1.7.1", "caustics_dtype": "float32",
                    "caustics_torch_threads": 2, "caustics_stamps_per_s_1proc": {"ss16": 31.0}})
    return {"summary": {m: {"flux": stats, "peak": stats, "outside_spec": 5} for m in methods},
            "throughput": thr}


def test_report_speed_and_accuracy_with_and_without_caustics(tmp_path):
    res = tmp_path / "results"
    res.mkdir()
    (res / "2026-11-24-boxA-accuracy.json").write_text(json.dumps(_accuracy_result(
        ["ours", "lenstronomy_ss4", "caustics_ss16"], caustics=True)))
    # an older file: no caustics, no per-factor lenstronomy rates
    (res / "2026-11-20-boxB-accuracy.json").write_text(json.dumps(_accuracy_result(
        ["ours", "lenstronomy_ss4"], caustics=False)))
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "report.py"), str(res),
                           "--out", str(tmp_path / "rep"), "--no-plots"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    text = (tmp_path / "rep" / "report.md").read_text()
    assert ("| boxA | caustics 1.7.1 upsample 16 (1 process, 2 torch threads, float32) | 31 | "
            "1.0e-04 | 2.0e-04 | 3.0e-04 | 3.0e-04 | 5 |") in text
    assert "| boxA | lenstronomy supersampling 4 (1 process) | 280 |" in text
    assert "| boxB | lenstronomy supersampling 4 (1 process) | 280 |" in text
    assert "boxB | caustics" not in text


def test_rerun_flags_a_figure_outside_its_spread(tmp_path):
    """benchmarks/rerun.py: a rerun median inside the first run's min-max is 'within', one
    outside is 'outside' (exit 1), a figure measured once is 'no spread'."""
    sweep = {"points": [{"backend": "cpu", "stamp_size": 64, "batch_size": b,
                         "stamps_per_s": 900.0, "stamps_per_s_min": 850.0,
                         "stamps_per_s_max": 950.0} for b in (16, 128)], "threads": []}
    pipe = {"rows": 100}
    first, second = tmp_path / "a", tmp_path / "b"
    for folder, (r16, r128, walls) in ((first, (900.0, 900.0, [1.0, 1.1, 0.9])),
                                       (second, (940.0, 700.0, [1.05, 1.0, 1.02]))):
        folder.mkdir()
        s = json.loads(json.dumps(sweep))
        s["points"][0]["stamps_per_s"], s["points"][1]["stamps_per_s"] = r16, r128
        (folder / "2026-11-24-boxA-engine-sweep.json").write_text(json.dumps(s))
        (folder / "2026-11-24-boxA-pipeline.json").write_text(
            json.dumps(dict(pipe, wall_s_all=walls)))
        (folder / "2026-11-24-boxA-memory.json").write_text(json.dumps(
            [{"batch_size": 512, "peak_rss_mib": 300.0 if folder == first else 330.0}]))
    out = tmp_path / "cmp.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "rerun.py"), str(first),
                           str(second), "--label", "boxA", "--json", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 1, done.stdout + done.stderr
    got = {f["figure"]: f for f in json.loads(out.read_text())["figures"]}
    assert got["engine cpu 64px batch 16 stamps/s"]["verdict"] == "within"
    assert got["engine cpu 64px batch 128 stamps/s"]["verdict"] == "outside"
    assert got["pipeline stamps/s"]["verdict"] == "within"        # 100 / 1.02 in 90.9-111
    assert got["memory batch 512 peak MiB"]["verdict"] == "no spread"
    assert got["memory batch 512 peak MiB"]["change"] == pytest.approx(0.1)
    # the report shows the comparison, figure by figure
    only = tmp_path / "c"
    only.mkdir()
    (only / "2026-11-24-boxA-rerun.json").write_text(out.read_text())
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "report.py"), str(only),
                           "--out", str(tmp_path / "rep"), "--no-plots"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "boxA (2026-11-24): 2 timed figures within the first run's spread, 1 outside" in text
    assert "| engine cpu 64px batch 128 stamps/s | 900.0 | 850.0 - 950.0 | 700.0 | -22.2% |" in text
