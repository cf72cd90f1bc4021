"""``gpu-inject run --executor spark`` on a local Spark (``local[2,4]``: 2 task slots, a task
retried up to 4 times), with the mock-brick manifest of test_pipeline.

The reference is the local executor's output for the same manifest: Spark's must equal it row
for row and file for file (the same parts), a task killed between its two parts is retried
without doubling a row, and either executor resumes the other's run.
"""
import json
import os
import shutil
import sys
import time

import pyarrow as pa
import pytest
from click.testing import CliRunner

pyspark = pytest.importorskip("pyspark", reason="pyspark not installed (pip install -e '.[test]')")
if not (shutil.which("java") or os.environ.get("JAVA_HOME")):
    pytest.skip("no Java runtime (java on PATH or JAVA_HOME) for Spark", allow_module_level=True)

from test_pipeline import _same, _tables, world  # noqa: E402,F401 (world: the fixture)

from gpu_inject import spark as gspark  # noqa: E402
from gpu_inject.cli import main  # noqa: E402
from gpu_inject.io.manifest import read_manifest  # noqa: E402
from gpu_inject.pipeline import PipelineError, RunOptions, plan_units, run  # noqa: E402

CRASH_UNIT = "000001"     # the unit whose first attempt is killed in experiment "crash"


def _files(out, exp):
    """Every file under the experiment's datasets, relative to out (hidden ones included)."""
    found = []
    for ds in ("stamps", "metrics"):
        for folder, _, files in os.walk(os.path.join(out, ds, exp)):
            found += [os.path.relpath(os.path.join(folder, f), out) for f in files]
    return sorted(found)


def _config(out):
    with open(os.path.join(out, "_stage_config.json")) as f:
        return json.load(f)


def _quiet(msg):
    pass


@pytest.fixture(scope="module")
def session():
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    t0 = time.perf_counter()
    s = (SparkSession.builder.master("local[2,4]").appName("gpu_inject tests")
         .config("spark.ui.enabled", "false")
         .config("spark.ui.showConsoleProgress", "false")
         .config("spark.driver.host", "127.0.0.1")
         .config(f"spark.executorEnv.{gspark.CRASH_ENV}", f"crash/{CRASH_UNIT}")
         .getOrCreate())
    s.sparkContext.setLogLevel("ERROR")
    s.startup_s = time.perf_counter() - t0
    yield s
    s.stop()


def _opts(runs, out, **changes):
    return RunOptions(**{**runs["local"].__dict__, "out": str(out), **changes})


@pytest.fixture(scope="module")
def runs(world, session, tmp_path_factory):
    """test_pipeline's world (mock bricks, a manifest of good and bad rows, a finished local
    run), and the same run on Spark; both timed."""
    local = world["opts"]
    spark = RunOptions(**{**local.__dict__, "out": str(tmp_path_factory.mktemp("spark") / "o"),
                          "executor": "spark"})
    t0 = time.perf_counter()
    run(spark, progress=False, log=_quiet)
    seconds = {"local": world["summary"].seconds, "spark": time.perf_counter() - t0}
    units = len(plan_units(world["table"], local.unit_rows))
    print(f"\n[test_spark] {world['table'].num_rows} rows, {units} units: local executor "
          f"{seconds['local']:.1f} s, Spark local[2,4] {seconds['spark']:.1f} s (session "
          f"start {session.startup_s:.1f} s, not included)")
    return dict(world, local=local, spark=spark, units=units, seconds=seconds)


def test_spark_output_equals_local_row_for_row(runs):
    local, spark = runs["local"].out, runs["spark"].out
    _same(_tables(spark, "e1"), _tables(local, "e1"))
    assert _files(spark, "e1") == _files(local, "e1")         # the same parts, no temporaries
    cfg, ref = _config(spark), _config(local)
    assert cfg["status"] == "complete" and cfg["counts"] == ref["counts"]
    assert cfg["counts"]["in"] == runs["table"].num_rows
    assert cfg["error_reasons"] == ref["error_reasons"]
    assert cfg["executor"]["name"] == "spark" and cfg["executor"]["master"] == "local[2,4]"
    assert cfg["executor"]["tasks"] == runs["units"] and cfg["executor"]["units_retried"] == 0
    assert cfg["backend"]["name"] == ref["backend"]["name"]
    assert cfg["backend"]["units"] == cfg["plan"]["units"] == runs["units"]
    assert ref["executor"] == {"name": "local"} and cfg["options"]["executor"] == "spark"
    assert cfg["invocations"][-1]["executor"] == "spark"
    assert cfg["timings"]["rows"] == runs["table"].num_rows
    assert cfg["timings"]["engine_s"] > 0 and cfg["timings"]["read_s"] > 0


def test_task_killed_between_parts_is_retried_without_doubled_rows(runs, tmp_path):
    """The first attempt of unit CRASH_UNIT exits (os._exit) after writing its stamps part,
    before its metrics part; Spark retries it; every row is there exactly once."""
    opts = _opts(runs, tmp_path / "o", experiment_id="crash", executor="spark")
    assert CRASH_UNIT in [u.uid for u in plan_units(runs["table"], opts.unit_rows)]
    s = run(opts, progress=False, log=_quiet)
    assert _config(opts.out)["executor"]["units_retried"] == 1     # the crash did happen
    assert s.rows == runs["table"].num_rows
    stamps, metrics = _tables(opts.out, "crash")
    for t in (stamps, metrics):
        ids = t["task_id"].to_numpy()
        assert len(ids) == len(set(ids)) == runs["table"].num_rows
    _same((stamps, metrics), _tables(runs["local"].out, "e1"))
    assert _files(opts.out, "crash") == [f.replace("/e1/", "/crash/")
                                         for f in _files(runs["local"].out, "e1")]


def _drop(out, exp):
    """Delete a stamps part of one unit and a metrics part of another; leave a temporary of a
    killed writer. Returns the number of units to redo."""
    stamps = sorted(f for f in _files(out, exp) if f.startswith("stamps/"))
    metrics = sorted(f for f in _files(out, exp) if f.startswith("metrics/"))
    os.remove(os.path.join(out, stamps[0]))
    os.remove(os.path.join(out, metrics[-1]))
    folder = os.path.dirname(os.path.join(out, metrics[0]))
    with open(os.path.join(folder, ".part-000000.parquet.0123abcd.tmp"), "wb") as f:
        f.write(b"PAR1 half a file")
    return len({os.path.basename(stamps[0]), os.path.basename(metrics[-1])})


@pytest.mark.parametrize("first,then", [("local", "spark"), ("spark", "local")])
def test_either_executor_resumes_the_others_run(runs, tmp_path, first, then):
    out = tmp_path / "o"
    shutil.copytree(runs[first].out, out)
    redo = _drop(str(out), "e1")
    s = run(_opts(runs, out, executor=then), progress=False, log=_quiet)
    assert s.units_done_before == s.units - redo and s.executor == then
    _same(_tables(str(out), "e1"), _tables(runs["local"].out, "e1"))
    assert _files(str(out), "e1") == _files(runs["local"].out, "e1")   # temporary removed
    cfg = _config(str(out))
    assert [i["executor"] for i in cfg["invocations"]] == [first, then]
    assert cfg["counts"] == _config(runs["local"].out)["counts"]


def test_a_second_attempt_rewrites_identical_parts(runs, tmp_path):
    """A task's unit run again over its finished parts (a retry, a speculative copy that
    lost the race) writes the same bytes under the same names."""
    opts = _opts(runs, tmp_path / "o", executor="spark")
    shutil.copytree(runs["spark"].out, opts.out)
    m = read_manifest(str(runs["manifest"]))
    unit = plan_units(m.table, opts.unit_rows)[0]
    item = (unit, m.table.take(pa.array(unit.rows)), [m.errors[i] for i in unit.rows])
    before = {f: open(os.path.join(opts.out, f), "rb").read() for f in _files(opts.out, "e1")}
    out = list(gspark._run_task(opts, None, iter([item])))
    assert [s["uid"] for s in out] == [unit.uid] and out[0]["rows"] == unit.rows.size
    after = {f: open(os.path.join(opts.out, f), "rb").read() for f in _files(opts.out, "e1")}
    assert after == before


def test_cli_executor_spark_and_its_errors(runs, tmp_path):
    runner = CliRunner()
    args = ["run", "--manifest", str(runs["manifest"]), "--coadd-root", str(runs["coadd"]),
            "--experiment-id", "e1", "--unit-rows", str(runs["local"].unit_rows),
            "--no-progress"]
    out = tmp_path / "o"
    r = runner.invoke(main, args + ["--out", str(out), "--executor", "spark",
                                    "--spark-master", "local[2]"])
    assert r.exit_code == 0, r.output
    assert "--spark-master local[2] ignored" in r.output      # the active session is used
    assert "in Spark tasks" in r.output and "reader processes" not in r.output
    _same(_tables(str(out), "e1"), _tables(runs["local"].out, "e1"))
    r = runner.invoke(main, args + ["--out", str(tmp_path / "p"), "--spark-master", "yarn"])
    assert r.exit_code == 1 and "only with --executor spark" in r.output
    r = runner.invoke(main, args + ["--out", str(tmp_path / "p"), "--executor", "dask"])
    assert r.exit_code == 2


def test_a_failing_task_fails_the_run_in_one_line(runs, tmp_path):
    from gpu_inject import engine

    try:
        engine.get_backend("gpu")
        pytest.skip("a GPU works here: --backend gpu would not fail")
    except engine.BackendUnavailable:
        pass
    opts = _opts(runs, tmp_path / "o", backend="gpu", executor="spark")
    with pytest.raises(PipelineError, match=r"Spark job failed: BackendUnavailable: "
                                            r"--backend gpu") as e:
        run(opts, progress=False, log=_quiet)
    assert "\n" not in str(e.value)
    assert _config(opts.out)["status"] == "running"          # not marked complete


def test_spark_errors_become_one_line():
    java = ("An error occurred while calling None.org.apache.spark.api.java.JavaSparkContext.\n"
            ": org.apache.spark.SparkException: No executor resource configs were specified "
            "for the following task configs: gpu\n\tat org.apache.spark.resource.Resource"
            "Profile.calculateTasksAndLimitingResource(ResourceProfile.scala:249)\n")
    assert gspark.spark_reason(java) == ("SparkException: No executor resource configs were "
                                         "specified for the following task configs: gpu")
    task = ("An error occurred while calling o45.collectAndServe.\n: org.apache.spark.Spark"
            "Exception: Job aborted due to stage failure: Task 0 in stage 0.0 failed 4 times: "
            "org.apache.spark.api.python.PythonException: Traceback (most recent call last):\n"
            '  File "worker.py", line 1, in main\n'
            "gpu_inject.pipeline.PipelineError: --out s3://b: cannot write unit 000003\n\n"
            "\tat org.apache.spark.api.python.BasePythonRunner.handle(PythonRunner.scala:1)\n")
    assert gspark.spark_reason(task) == "PipelineError: --out s3://b: cannot write unit 000003"
