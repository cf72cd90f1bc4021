"""``gpu-inject run --executor spark``: the work units of a run as Spark tasks.

The driver (:func:`gpu_inject.pipeline.run`) plans the units, checks and writes
``_stage_config.json`` and finds the units already done exactly as a local run does; here the
units left are sent to Spark, one unit per partition, each with only its own manifest rows
(a ``pyarrow.Table`` of up to ``2 unit_rows - 1`` rows), never the whole manifest. Each task
runs :func:`gpu_inject.pipeline.process_units` (the local run's host loop: read, engine,
write) on its unit, reading its bricks in the task's own process (Spark's tasks are the
parallelism), and returns a small summary per unit. Parts have the local run's names and are
written the same atomic way, so:

- a retried or speculative attempt of a task rewrites the same parts with the same bytes
  (temporaries are hidden files with a random suffix, never read as parts, removed by the
  driver): no row is ever doubled or partial;
- local and Spark outputs are interchangeable, and either executor resumes the other's run.

The backend is chosen in each executor (``--backend auto``: the GPU when the executor has a
working one); with Spark's GPU scheduling a Python worker uses the GPU address of the first
task it runs (one GPU per executor is the supported layout), and Numba's CPU threads are
capped at ``spark.task.cpus``.
"""
from __future__ import annotations

import functools
import os
import re
import socket
import sys
import threading
import time

from .pipeline import PipelineError, RunOptions, process_units

#: Test seam: ``"<experiment_id>/<unit uid>"`` makes the first attempt of that unit's task
#: exit (``os._exit``, no cleanup) right after its stamps part is written, before its metrics
#: part: Spark must retry it and the output still hold every row once.
CRASH_ENV = "GPU_INJECT_TEST_CRASH_ONCE"

#: Per Python worker (Spark reuses them across tasks): the backend built by its first task.
_WORKER: dict = {}


def check_available():
    """PipelineError unless pyspark can be imported."""
    try:
        import pyspark  # noqa: F401
    except ImportError:
        raise PipelineError("--executor spark: pyspark is not installed (pip install "
                            "'gpu_inject[spark]', or run under spark-submit)") from None


_EXC_LINE = re.compile(r"^:?\s*((?:[A-Za-z_]\w*\.)*([A-Za-z_]\w*(?:Error|Exception|Unavailable)))"
                       r"(: .*)?$")


def spark_reason(exc) -> str:
    """One line out of a Spark error (a Py4JJavaError's text holds Java stack traces and, for
    a failed task, the Python traceback): the task's Python exception when there is one,
    else the first Java exception, as ``Name: message``; else the first line."""
    text = str(exc)
    found = [m for m in map(_EXC_LINE.match, (x.strip() for x in text.splitlines())) if m]
    java = ("py4j.", "org.", "java.", "scala.")
    python = [m for m in found if not m.group(1).startswith(java)]
    other = [m for m in found if m.group(1).startswith(java)
             and m.group(2) not in ("Py4JJavaError", "PythonException")]
    for m in (python[-1:] or other[:1]):
        return f"{m.group(2)}{m.group(3) or ''}"
    return next((x.strip() for x in text.splitlines() if x.strip()), type(exc).__name__)


# --------------------------------------------------------------------------- driver
def _session(opts: RunOptions, log):
    """(SparkSession, whether this run started it): the active session when there is one
    (spark-submit, a notebook, the tests), else a new one on ``--spark-master``."""
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        master = active.sparkContext.master
        if opts.spark_master and opts.spark_master != master:
            log(f"gpu-inject run: --spark-master {opts.spark_master} ignored, using the active "
                f"Spark session on {master}")
        return active, False
    master = opts.spark_master or ("local[*]" if "PYSPARK_GATEWAY_PORT" not in os.environ
                                   else None)
    if master and master.startswith("local"):
        # local workers are this interpreter (with gpu_inject), not whatever python3 is first
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(f"gpu-inject {opts.experiment_id}")
    if opts.spark_master:
        builder = builder.master(opts.spark_master)
    try:
        return builder.getOrCreate(), True
    except Exception as exc:  # noqa: BLE001 - no Java, bad master URL...
        raise PipelineError(f"--executor spark: cannot start Spark "
                            f"({opts.spark_master or 'default master'}): {spark_reason(exc)}"
                            ) from None


class _Watch:
    """Log line every ``every`` seconds: units done out of the job's tasks."""

    def __init__(self, sc, group, total, log, every=30.0):
        self.sc, self.group, self.total, self.log, self.every = sc, group, total, log, every
        self.stop_ = threading.Event()
        self.t0 = time.perf_counter()
        self.thread = threading.Thread(target=self._loop, daemon=True, name="spark-progress")

    def _loop(self):
        tracker = self.sc.statusTracker()
        while not self.stop_.wait(self.every):
            try:
                done = 0
                for job in tracker.getJobIdsForGroup(self.group):
                    info = tracker.getJobInfo(job)
                    for stage in (info.stageIds if info else ()):
                        st = tracker.getStageInfo(stage)
                        done += st.numCompletedTasks if st else 0
            except Exception:  # noqa: BLE001 - progress is best effort
                continue
            rate = done / max(time.perf_counter() - self.t0, 1e-9)
            eta = (self.total - done) / rate if rate > 0 else float("inf")
            self.log(f"gpu-inject run: {done}/{self.total} units (Spark tasks), "
                     f"{rate * 60:,.1f} units/min, ETA {eta:,.0f} s")

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_.set()


def _backends(summaries) -> dict:
    """The stage config's ``backend``: the one every task used, or ``mixed`` with each."""
    groups = {}
    for s in summaries:
        g = groups.setdefault((s["backend"], s["device"]),
                              {"name": s["backend"], "device": s["device"], "why": s["why"],
                               "hosts": set(), "units": 0})
        g["hosts"].add(s["host"])
        g["units"] += 1
    out = [{**g, "hosts": sorted(g["hosts"])} for g in groups.values()]
    if len(out) == 1:
        return out[0]
    return {"name": "mixed", "device": "; ".join(f"{g['name']}: {g['device']}" for g in out),
            "why": "the executors differ", "executors": out}


def run_units(items, opts: RunOptions, storage_options=None, log=print):
    """Run ``items`` [(Unit, manifest rows, their errors)] as Spark tasks, one unit per
    partition; returns (per-unit summaries, a record for the stage config). PipelineError
    when Spark cannot start or the job fails (after Spark's own retries)."""
    if not items:
        return [], {"executor": {}, "backend": None}
    spark, own = _session(opts, log)
    sc = spark.sparkContext
    group = f"gpu-inject-{opts.experiment_id}-{os.getpid()}-{time.time_ns()}"
    try:
        sc.setJobGroup(group, f"gpu-inject run {opts.experiment_id}: {len(items)} units")
        rdd = sc.parallelize(items, numSlices=len(items))
        task = functools.partial(_run_task, opts, storage_options)
        log(f"gpu-inject run: {len(items)} units as Spark tasks on {sc.master} "
            f"(application {sc.applicationId}, default parallelism {sc.defaultParallelism})")
        with _Watch(sc, group, len(items), log):
            try:
                summaries = rdd.mapPartitions(task).collect()
            except Exception as exc:  # noqa: BLE001 - Py4JJavaError: a task failed for good
                raise PipelineError(f"--executor spark: the Spark job failed: "
                                    f"{spark_reason(exc)}") from None
        record = {"executor": {
            "master": sc.master, "application_id": sc.applicationId, "spark": sc.version,
            "tasks": len(items),
            "units_retried": sum(1 for s in summaries if s["attempt"] > 0),
            "hosts": sorted({s["host"] for s in summaries})},
            "backend": _backends(summaries)}
    finally:
        if own:
            spark.stop()
    return summaries, record


# --------------------------------------------------------------------------- executor
def _worker_backend(name: str, gpu_addresses):
    """This Python worker's backend, built once: with Spark GPU scheduling the first task's
    GPU address becomes the worker's CUDA device."""
    from . import engine

    if name not in _WORKER:
        if gpu_addresses and name != "cpu":
            try:
                import cupy

                cupy.cuda.runtime.setDevice(int(gpu_addresses[0]))
                _WORKER["gpu_address"] = gpu_addresses[0]
            except Exception:  # noqa: BLE001 - no CuPy or no such device: get_backend says
                pass
        _WORKER[name] = engine.get_backend(name)
    return _WORKER[name]


def _limit_threads(cpus):
    """Numba's CPU threads for this task: ``spark.task.cpus`` (tasks share the executor)."""
    if not cpus:
        return
    try:
        import numba

        numba.set_num_threads(max(1, min(int(cpus), numba.config.NUMBA_NUM_THREADS)))
    except Exception:  # noqa: BLE001 - keep Numba's default
        pass


def _crash_hook(opts: RunOptions, attempt: int):
    target = os.environ.get(CRASH_ENV, "")
    exp, _, uid = target.partition("/")
    if attempt > 0 or not uid or exp != opts.experiment_id:
        return None

    def hook(dataset, path, unit):
        if dataset == "stamps" and unit.uid == uid:
            os._exit(17)

    return hook


def _run_task(opts: RunOptions, storage_options, items):
    """A Spark task: the host loop on this partition's units; yields their summaries."""
    from pyspark import TaskContext

    from .io.coadd import CoaddSource
    from .io.writer import Store

    items = list(items)
    if not items:
        return
    tc = TaskContext.get()
    attempt = tc.attemptNumber() if tc is not None else 0
    resources = tc.resources() if tc is not None else {}
    gpus = list(resources["gpu"].addresses) if "gpu" in resources else []
    _limit_threads(tc.cpus() if tc is not None and hasattr(tc, "cpus") else None)
    backend = _worker_backend(opts.backend, gpus)
    source = CoaddSource(opts.coadd_root, opts.coadd_layout, cache_dir=opts.cache_dir)
    store = Store(opts.out, storage_options)
    summaries = process_units(items, backend, store, source, opts, workers=0,
                              after_part=_crash_hook(opts, attempt))
    extra = {"attempt": attempt, "host": socket.gethostname(), "pid": os.getpid(),
             "backend": backend.name, "device": backend.device, "why": backend.why,
             "gpu_address": _WORKER.get("gpu_address")}
    for s in summaries:
        yield {**s, **extra}
