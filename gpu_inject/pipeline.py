"""The host loop of ``gpu-inject run``: manifest -> work units -> brick reads (reader
processes ahead of the engine) -> batches across bricks -> engine -> Parquet parts (SPEC
sections 4-7). :func:`process_units` is that loop for a list of units; it runs here
(``--executor local``) or inside Spark tasks (``--executor spark``, gpu_inject.spark).

Resume is the plan itself: units are deterministic (the manifest's bricks in a fixed order,
cut into units of whole bricks once a unit holds ``UNIT_ROWS`` rows), each unit writes one
part per dataset and split with a name made from its index, parts appear atomically, and a
unit whose parts all exist is done. A run killed at any moment and started again with the
same command redoes only the units with a missing part, overwriting any part of theirs that
did get written with the same rows: every row ends up exactly once.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import itertools
import math
import os
import platform
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa

from . import __version__, engine
from . import tasks as T
from .io.coadd import CoaddError, CoaddSource
from .io.cutout import cut_brick
from .io.manifest import SPLITS, read_manifest
from .io.psf import resolve_psf_fwhm
from .io.writer import CONFIG_NAME, Store, stamps_table
#: A unit closes once it holds this many rows (whole bricks only). Unit ids depend on it,
#: so a restart with another value is refused like any output-changing option.
UNIT_ROWS = 256
#: Partition of rows whose region_split is not train, val or test (error rows).
INVALID_SPLIT = "invalid"
#: Options whose change alters the output: a restart with other values is refused.
COMPARED_OPTIONS = ("manifest", "coadd_root", "coadd_layout", "bands", "stamp_size",
                    "use_psfsize_maps", "psf_model", "moffat_beta", "unit_rows")
#: Where the units run: this machine, or Spark tasks (the same parts either way).
EXECUTORS = ("local", "spark")


class PipelineError(RuntimeError):
    """A fatal problem (bad option, unreadable manifest, unreachable root or output): one
    line, nothing written beyond what was already complete."""


@dataclass(frozen=True)
class RunOptions:
    """Every option of ``gpu-inject run`` (SPEC section 7)."""
    manifest: str
    coadd_root: str
    out: str
    experiment_id: str
    bands: tuple = ("g", "r", "z")
    stamp_size: int = 64
    backend: str = "auto"
    batch_size: int = 1024
    workers: int = 4
    coadd_layout: str = "legacysurvey"
    use_psfsize_maps: bool = True
    psf_model: str = "gaussian"
    moffat_beta: float = 3.5
    cache_dir: str | None = None
    force: bool = False
    unit_rows: int = UNIT_ROWS
    #: ``local`` (this machine: reader processes + engine) or ``spark`` (one Spark task per
    #: unit, gpu_inject.spark); the output does not depend on it.
    executor: str = "local"
    spark_master: str | None = None

    def check(self):
        """PipelineError naming the first bad option."""
        if not self.experiment_id or "/" in self.experiment_id or self.experiment_id in (".", ".."):
            raise PipelineError(f"--experiment-id {self.experiment_id!r}: must be a non-empty "
                                "name without '/'")
        bad = [b for b in self.bands if b not in "grz" or len(b) != 1]
        if bad or len(set(self.bands)) != len(self.bands) or not self.bands:
            raise PipelineError(f"--bands {','.join(self.bands)}: choose distinct bands among "
                                "g, r, z (the manifest has colours for these only)")
        if "r" not in self.bands:
            raise PipelineError(f"--bands {','.join(self.bands)}: must include r (arc_snr, "
                                "src_dmag and the PSF fallback are defined on r)")
        if self.stamp_size < 16 or self.stamp_size % 2:
            raise PipelineError(f"--stamp-size {self.stamp_size}: must be an even integer >= 16")
        for name in ("batch_size", "workers", "unit_rows"):
            if getattr(self, name) < 1:
                raise PipelineError(f"--{name.replace('_', '-')} {getattr(self, name)}: must "
                                    "be >= 1")
        if self.psf_model not in ("gaussian", "moffat"):
            raise PipelineError(f"--psf-model {self.psf_model}: choose gaussian or moffat")
        if not (math.isfinite(self.moffat_beta) and self.moffat_beta > 1):
            raise PipelineError(f"--moffat-beta {self.moffat_beta}: must be > 1")
        if self.executor not in EXECUTORS:
            raise PipelineError(f"--executor {self.executor}: choose {' or '.join(EXECUTORS)}")
        if self.spark_master and self.executor != "spark":
            raise PipelineError(f"--spark-master {self.spark_master}: only with --executor spark")


@dataclass
class Unit:
    """A few whole bricks of the manifest: rows (manifest indices, manifest order within each
    brick) and the partitions it writes."""
    index: int
    rows: np.ndarray
    bricks: list
    splits: tuple

    @property
    def uid(self) -> str:
        return f"{self.index:06d}"


@dataclass
class RunSummary:
    out: str
    experiment_id: str
    units: int
    units_done_before: int
    rows: int
    ok: int
    controls: int
    errors: int
    seconds: float
    timings: dict = field(default_factory=dict)
    error_reasons: dict = field(default_factory=dict)
    executor: str = "local"


def _partition(split) -> str:
    return split if split in SPLITS else INVALID_SPLIT


def plan_units(table: pa.Table, unit_rows: int = UNIT_ROWS) -> list:
    """Deterministic work units: bricks ordered by (partition, brickname), a null or empty
    brickname being its own group, rows of a brick in manifest order; a unit takes whole
    bricks (or pieces of unit_rows rows of a bigger one) until it holds at least
    ``unit_rows`` rows."""
    import pyarrow.compute as pc

    n = table.num_rows
    if n == 0:
        return []
    brick = pc.fill_null(table["brickname"].cast(pa.string()), "")
    split = [_partition(s) for s in table["region_split"].cast(pa.string()).to_pylist()]
    enc = pc.dictionary_encode(brick).combine_chunks()
    names = enc.dictionary.to_pylist()
    codes = enc.indices.to_numpy(zero_copy_only=False)
    sp_names = sorted(set(split))
    sp_code = np.asarray([sp_names.index(s) for s in split], dtype=np.int64)
    name_rank = np.empty(len(names), dtype=np.int64)
    name_rank[np.argsort(np.asarray(names, dtype=object), kind="stable")] = np.arange(len(names))
    # A brick appearing under two splits (a manifest bug) is one group per (split, brick).
    order = np.lexsort((np.arange(n), name_rank[codes], sp_code))
    key = sp_code[order] * len(names) + name_rank[codes[order]]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    ends = np.r_[starts[1:], n]
    units, rows, bricks, parts = [], [], [], set()
    count = 0
    # A brick with more than unit_rows rows is cut into pieces of unit_rows (each piece
    # opens the brick again): a unit never holds more than 2 unit_rows - 1 rows, so memory
    # follows unit_rows whatever the number of targets per brick.
    pieces = [(a, min(a + unit_rows, b)) for a, b in zip(starts, ends)
              for a in range(a, b, unit_rows)]
    for a, b in pieces:
        rows.append(order[a:b])
        bricks.append(names[codes[order[a]]])
        parts.add(sp_names[sp_code[order[a]]])
        count += b - a
        if count >= unit_rows:
            units.append(Unit(len(units), np.concatenate(rows), bricks, tuple(sorted(parts))))
            rows, bricks, parts, count = [], [], set(), 0
    if rows:
        units.append(Unit(len(units), np.concatenate(rows), bricks, tuple(sorted(parts))))
    return units


def manifest_fingerprint(table: pa.Table) -> str:
    """sha256 of the manifest's content (Arrow IPC stream), to tell a restart on the same
    manifest from one on another."""
    h = hashlib.sha256()

    class _Sink:
        closed = False

        def write(self, b):
            h.update(b)
            return len(b)

        def flush(self):
            pass

    with pa.ipc.new_stream(pa.PythonFile(_Sink(), mode="w"), table.schema) as w:
        for batch in table.to_batches(max_chunksize=65536):
            w.write_batch(batch)
    return h.hexdigest()


# --------------------------------------------------------------------------- one unit
@dataclass
class UnitData:
    """The rows of a unit on their way through: inputs read ahead, results filled in."""
    unit: Unit
    table: pa.Table          # manifest rows of the unit (all columns)
    cols: dict               # tasks.read_columns(table)
    error: list              # None or the one-line reason, per row
    image: np.ndarray        # float32 [n, B, S, S]: the cutout, then the injected stamp
    invvar: np.ndarray       # (image, invvar, maskbits: None when no row of the unit is ok)
    maskbits: np.ndarray
    pixscale: np.ndarray     # [n]
    lens_offset: np.ndarray  # [n, 2]
    edge: np.ndarray         # [n] bool
    psf_fwhm: np.ndarray     # [n, B]
    psf_source: np.ndarray   # [n, B] int8, -1 unresolved
    results: dict            # metric name -> [n] or [n, B], NaN where not computed
    read_s: float = 0.0
    engine_s: float = 0.0    # its share (by rows) of the engine batches it was in
    pending: int = 0         # rows still in the engine

    @property
    def good(self) -> np.ndarray:
        return np.array([e is None for e in self.error], dtype=bool)


def read_unit(unit: Unit, table: pa.Table, errors: list, source: CoaddSource,
              opts: RunOptions) -> UnitData:
    """Cut the stamps of every valid row of ``unit`` (``table``: its manifest rows, ``errors``:
    their manifest errors) and resolve their PSF (SPEC 3). Never raises for data problems: a
    failing brick fails its rows. Rows of a brick at the same (ra, dec), as an injection and
    its CONTROL, are cut once."""
    t0 = time.perf_counter()
    n, nb, s = table.num_rows, len(opts.bands), opts.stamp_size
    error = list(errors)
    d = UnitData(
        unit=unit, table=table, cols=T.read_columns(table), error=error,
        image=np.zeros((n, nb, s, s), np.float32), invvar=np.zeros((n, nb, s, s), np.float32),
        maskbits=np.zeros((n, s, s), np.int32), pixscale=np.full(n, np.nan),
        lens_offset=np.zeros((n, 2)), edge=np.zeros(n, bool),
        psf_fwhm=np.full((n, nb), np.nan), psf_source=np.full((n, nb), -1, np.int8),
        results={})
    bricks = np.asarray(table["brickname"].to_pylist(), dtype=object)
    ra = table["ra"].to_numpy(zero_copy_only=False).astype(np.float64)
    dec = table["dec"].to_numpy(zero_copy_only=False).astype(np.float64)
    map_fwhm = np.full((n, nb), np.nan)
    for brick in dict.fromkeys(unit.bricks):   # a brick listed under two splits: read once
        rows = np.flatnonzero((bricks == brick) & d.good)
        if brick == "" or rows.size == 0:
            continue
        pos, first, back = np.unique(np.stack([ra[rows], dec[rows]], axis=1), axis=0,
                                     return_index=True, return_inverse=True)
        back = back.reshape(-1)
        try:
            st = cut_brick(source, brick, pos[:, 0], pos[:, 1], s, opts.bands,
                           psfsize=opts.use_psfsize_maps)
        except Exception as exc:  # noqa: BLE001 - a failing brick fails its rows, not the run
            msg = " ".join(f"{type(exc).__name__}: {exc}".split())
            for i in rows:
                error[i] = f"brick {brick}: unexpected error while reading: {msg}"
            continue
        d.image[rows], d.invvar[rows], d.maskbits[rows] = (st.image[back], st.invvar[back],
                                                           st.maskbits[back])
        d.pixscale[rows], d.lens_offset[rows] = st.pixscale, st.lens_offset[back]
        d.edge[rows], map_fwhm[rows] = st.edge[back], st.psfsize[back]
        for i, k in zip(rows, back):
            if st.error[k] is not None:
                error[i] = st.error[k]
    good = d.good
    manifest_fwhm = {b: table[f"psfsize_{b}"].to_numpy(zero_copy_only=False).astype(float)
                     for b in "grz"}
    maps = {b: map_fwhm[:, k] for k, b in enumerate(opts.bands)}
    psf = resolve_psf_fwhm(opts.bands, manifest_fwhm, maps,
                           use_psfsize_maps=opts.use_psfsize_maps)
    d.psf_fwhm[good], d.psf_source[good] = psf.fwhm[good], psf.source[good]
    for i in np.flatnonzero(good & ~psf.ok):
        error[i] = psf.error[i]
    for name in ("magnification", "arc_snr", "arc_snr_opt", "bad_pixel_frac",
                 "wise_brightmask_frac"):
        d.results[name] = np.full(n, np.nan)
    d.results["total_injected_flux"] = np.full((n, nb), np.nan)
    if not good.any():   # nothing to inject or write: do not ship n empty stamps around
        d.image = d.invvar = d.maskbits = None
    d.read_s = time.perf_counter() - t0
    return d


def _f64(values, valid) -> pa.Array:
    return pa.array(np.asarray(values, dtype=np.float64), mask=~np.asarray(valid, bool))


def metrics_table(d: UnitData, bands, rows: np.ndarray) -> pa.Table:
    """The metrics dataset of SPEC 5 for ``rows`` of a unit: every manifest column (but
    region_split, which the partition folder holds), then the outcome, the PSF used and the
    metrics; arc metrics null for CONTROL and error rows, every computed column null for
    error rows."""
    ok = d.good[rows]
    control = d.cols["lens_model"][rows] == "CONTROL"
    arc = ok & ~control
    t = d.table.take(pa.array(rows)).drop_columns(["region_split"])
    cols = {name: t[name] for name in t.column_names}
    cols["cutout_ok"] = pa.array(ok.astype(np.int8))
    cols["error"] = pa.array([d.error[i] for i in rows], pa.string())
    src = d.psf_source[rows]
    for k, b in enumerate(bands):
        cols[f"psf_fwhm_used_{b}"] = _f64(d.psf_fwhm[rows, k], ok)
        cols[f"psf_source_{b}"] = pa.array(src[:, k], pa.int8(), mask=~ok)
    res = d.results
    for name in ("arc_snr", "arc_snr_opt", "magnification"):
        cols[name] = _f64(res[name][rows], arc)
    for k, b in enumerate(bands):
        cols[f"total_injected_flux_{b}"] = _f64(res["total_injected_flux"][rows, k], arc)
    for name in ("bad_pixel_frac", "wise_brightmask_frac"):
        cols[name] = _f64(res[name][rows], ok)
    cols["stamp_edge"] = pa.array(d.edge[rows], mask=~ok)
    cols["lens_offset_x_pix"] = _f64(d.lens_offset[rows, 0], ok)
    cols["lens_offset_y_pix"] = _f64(d.lens_offset[rows, 1], ok)
    return pa.table(cols)


def write_unit(d: UnitData, store: Store, opts: RunOptions, after_part=None) -> float:
    """Write every part of a unit (stamps first, then metrics); returns the seconds taken.
    PipelineError when the output cannot be written. ``after_part(dataset, path, unit)``, when
    given, is called after each part is in place (a test seam: kill a task between parts)."""
    t0 = time.perf_counter()
    try:
        _write_parts(d, store, opts, after_part)
    except Exception as exc:  # noqa: BLE001 - output not writable: fatal, one line
        raise PipelineError(f"--out {opts.out}: cannot write unit {d.unit.uid}: "
                            f"{' '.join(f'{type(exc).__name__}: {exc}'.split())}") from None
    return time.perf_counter() - t0


def _write_parts(d: UnitData, store: Store, opts: RunOptions, after_part=None):
    split = np.asarray([_partition(s) for s in d.table["region_split"].to_pylist()])
    ok = d.good
    for part in d.unit.splits:
        rows = np.flatnonzero(split == part)
        t = d.table.take(pa.array(rows))
        arrays = ((None,) * 3 if d.image is None or not ok[rows].any()
                  else (d.image[rows], d.invvar[rows], d.maskbits[rows]))
        stamps = stamps_table(*(t[c].to_pylist() for c in
                                ("task_id", "brickname", "ra", "dec", "lens_model")),
                              opts.bands, *arrays, ok[rows], size=opts.stamp_size)
        for dataset in ("stamps", "metrics"):
            table = stamps if dataset == "stamps" else metrics_table(d, opts.bands, rows)
            path = store.part(dataset, opts.experiment_id, part, d.unit.uid)
            store.write_part(table, path)
            if after_part is not None:
                after_part(dataset, path, d.unit)


# --------------------------------------------------------------------------- the run
def _expected_parts(unit: Unit, store: Store, experiment_id: str) -> list:
    return [store.part(ds, experiment_id, part, unit.uid)
            for part in unit.splits for ds in ("stamps", "metrics")]


def _versions() -> dict:
    import astropy
    import numba

    v = {"gpu_inject": __version__, "python": platform.python_version(),
         "numpy": np.__version__, "numba": numba.__version__, "pyarrow": pa.__version__,
         "astropy": astropy.__version__}
    for mod in ("fitsio", "cupy", "numba_cuda", "s3fs", "fsspec"):
        try:
            v[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - absent optional module
            pass
    return v


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _options_record(opts: RunOptions) -> dict:
    rec = asdict(opts)
    rec["bands"] = ",".join(opts.bands)
    return rec


def _check_previous(prev, opts: RunOptions, fingerprint: str, out: str):
    """Refuse a restart whose output-changing options differ from the stored ones."""
    if prev is None or opts.force:
        return
    if prev.get("experiment_id") != opts.experiment_id:
        raise PipelineError(
            f"--out {out} holds experiment {prev.get('experiment_id')!r} "
            f"({CONFIG_NAME}); use another --out for {opts.experiment_id!r}, or --force")
    old, new = prev.get("options", {}), _options_record(opts)
    diff = [f"--{k.replace('_', '-')} {old.get(k)!r} -> {new[k]!r}" for k in COMPARED_OPTIONS
            if old.get(k) != new[k]]
    if prev.get("manifest", {}).get("fingerprint") != fingerprint:
        diff.append("manifest content changed")
    if diff:
        raise PipelineError(f"experiment {opts.experiment_id!r} in {out} was run with other "
                            f"options ({'; '.join(diff)}): rerun with the same options to "
                            "resume, or add --force to start over")


class _Progress:
    """A tqdm bar on a terminal; a plain log line every ``every`` seconds otherwise."""

    def __init__(self, total_rows, total_bricks, enabled=None, every=10.0, stream=None):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if enabled is None else enabled
        self.total, self.total_bricks = total_rows, total_bricks
        self.rows = self.bricks = self.errors = 0
        self.t0 = self.last = time.perf_counter()
        self.every = every
        self.bar = None
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total_rows, unit="stamp", file=self.stream, smoothing=0.1)

    def update(self, rows, bricks, errors):
        self.rows += rows
        self.bricks += bricks
        self.errors += errors
        if self.bar is not None:
            self.bar.update(rows)
            self.bar.set_postfix_str(f"bricks {self.bricks}/{self.total_bricks}, "
                                     f"errors {self.errors}", refresh=False)
            return
        now = time.perf_counter()
        if now - self.last >= self.every or self.rows == self.total:
            self.last = now
            rate = self.rows / max(now - self.t0, 1e-9)
            eta = (self.total - self.rows) / rate if rate > 0 else float("inf")
            print(f"gpu-inject run: {self.rows}/{self.total} stamps, bricks "
                  f"{self.bricks}/{self.total_bricks}, errors {self.errors}, "
                  f"{rate:,.0f} stamps/s, ETA {eta:,.0f} s", file=self.stream, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _exit_with_parent(parent_pid, every=1.0):
    """In a reader process: exit as soon as the run that started it is gone (killed with
    SIGKILL, say), instead of lingering with its memory until the machine reboots."""
    def watch():
        while os.getppid() == parent_pid:
            time.sleep(every)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def _prefetch(jobs, fn, workers, depth):
    """fn(*job) for each job, in order, computed by ``workers`` processes at most ``depth``
    jobs ahead of the consumer (memory is bounded by depth, not by the manifest).

    Processes, not threads: the FITS decoders (cfitsio through fitsio, astropy) hold the GIL,
    so reader threads would take turns. Started with ``spawn``: the parent runs Numba's
    thread pool, which is not safe to fork."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    it = iter(jobs)
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                             initializer=_exit_with_parent, initargs=(os.getpid(),)) as pool:
        futures = deque(pool.submit(fn, *job) for _, job in zip(range(depth), it))
        try:
            while futures:
                result = futures.popleft().result()
                nxt = next(it, None)
                if nxt is not None:
                    futures.append(pool.submit(fn, *nxt))
                yield result
        finally:
            for f in futures:
                f.cancel()


def _batch_args(segments, opts: RunOptions):
    """``inject_batch``'s (args, kwargs) for the valid rows of ``segments`` [(UnitData,
    rows)], concatenated in order."""
    def cat(get):
        return np.concatenate([get(d)[rows] for d, rows in segments])

    cols = {k: cat(lambda d, k=k: d.cols[k]) for k in segments[0][0].cols}
    args = (cols, cat(lambda d: d.psf_fwhm), cat(lambda d: d.image), cat(lambda d: d.invvar),
            cat(lambda d: d.maskbits))
    kw = dict(pixscale=cat(lambda d: d.pixscale), bands=opts.bands,
              lens_offset=cat(lambda d: d.lens_offset), psf_model=opts.psf_model,
              moffat_beta=opts.moffat_beta)
    return args, kw


def _put_results(segments, res):
    """Put a batch's engine results back into the units of ``segments``, in order."""
    start = 0
    for d, rows in segments:
        sl = slice(start, start + rows.size)
        d.image[rows] = res["image"][sl]
        for name, arr in res.items():
            if name != "image":
                d.results[name][rows] = arr[sl]
        d.pending -= rows.size
        start += rows.size


def process_units(jobs, backend, store: Store, source: CoaddSource, opts: RunOptions, *,
                  workers: int, on_unit=None, after_part=None) -> list:
    """The host loop, shared by every executor: for each ``(Unit, table, errors)`` of
    ``jobs`` (the unit, its manifest rows, their manifest errors) read its bricks (``workers``
    processes ahead of the engine, or in this process when ``workers`` is 0), run the engine
    on batches of ``opts.batch_size`` stamps across units, and write the unit's parts (a
    writer thread). Returns one summary per unit, in the order they were written:
    ``{unit, uid, rows, ok, controls, errors, bricks, read_s, engine_s, write_s}``.
    ``on_unit(summary)`` is called as each unit is written. PipelineError when the output
    cannot be written."""
    summaries = []
    lock = threading.Lock()

    def finish(d):
        write_s = write_unit(d, store, opts, after_part)
        good = d.good
        control = d.cols["lens_model"] == "CONTROL"
        s = {"unit": d.unit.index, "uid": d.unit.uid, "rows": int(d.unit.rows.size),
             "ok": int(good.sum()), "controls": int((good & control).sum()),
             "errors": int((~good).sum()), "bricks": len(d.unit.bricks),
             "read_s": d.read_s, "engine_s": d.engine_s, "write_s": write_s}
        with lock:
            summaries.append(s)
            if on_unit is not None:
                on_unit(s)

    written = deque()
    waiting = []                # units read, not yet written
    queue = []                  # (UnitData, rows) not yet sent to the engine
    queued = 0
    depth = 2 * max(workers, 1)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="writer") as writer:
        def write_ready():
            """Hand every finished unit to the writer; at most 2 wait for it."""
            for d in [d for d in waiting if d.pending == 0]:
                waiting.remove(d)
                written.append(writer.submit(finish, d))
                while len(written) > 2:
                    written.popleft().result()

        sent = deque()        # the segments of each batch given to the engine, oldest first
        host_s = [0.0]        # time spent in batches(): reading, batching, handing to writer

        def take(limit):
            """Batches of opts.batch_size rows from the queue while it holds ``limit``."""
            nonlocal queued
            while queued >= limit and queued > 0:
                take, segs = min(opts.batch_size, queued), []
                while take:
                    d, rows = queue[0]
                    k = min(take, rows.size)
                    segs.append((d, rows[:k]))
                    if k == rows.size:
                        queue.pop(0)
                    else:
                        queue[0] = (d, rows[k:])
                    take -= k
                    queued -= k
                yield segs

        def arrivals():
            """Read the units (``workers`` processes ahead); after each, the number of queued
            rows that makes a batch: a full one, or a partial one once too many units wait
            on it (sparse valid rows among error rows), which bounds memory; at the end,
            whatever is left. Batch composition does not change any result."""
            nonlocal queued
            reads = ((u, t, e, source, opts) for u, t, e in jobs)
            stream = (_prefetch(reads, read_unit, workers, depth) if workers > 0
                      else itertools.starmap(read_unit, reads))
            for d in stream:
                rows = np.flatnonzero(d.good)
                d.pending = rows.size
                waiting.append(d)
                if rows.size:
                    queue.append((d, rows))
                    queued += rows.size
                write_ready()   # a unit without valid rows is done already
                yield opts.batch_size if len(waiting) <= depth else 1
            yield 1

        def batches():
            """The engine's input, each batch's inject_batch arguments (its segments go to
            ``sent``): a generator, so that the engine takes the next batch while those
            before it compute (on a GPU, engine.IN_FLIGHT batches overlap)."""
            clock = time.perf_counter()
            for limit in arrivals():
                for segs in take(limit):
                    args = _batch_args(segs, opts)
                    sent.append(segs)
                    host_s[0] += time.perf_counter() - clock
                    yield args
                    clock = time.perf_counter()
            host_s[0] += time.perf_counter() - clock

        results = engine.inject_batches(backend, batches())
        while True:
            t0, h0 = time.perf_counter(), host_s[0]
            res = next(results, None)
            if res is None:
                break
            # engine time: the wait for this batch's results, less the host's own work done
            # meanwhile in batches() (with batches overlapping, it includes queueing the next)
            dt = time.perf_counter() - t0 - (host_s[0] - h0)
            segs = sent.popleft()
            _put_results(segs, res)
            total = sum(rows.size for _, rows in segs)
            for d, rows in segs:
                d.engine_s += dt * rows.size / total
            write_ready()
        write_ready()
        for f in written:
            f.result()
    return summaries


def sum_timings(summaries) -> dict:
    """Seconds spent reading, in the engine and writing, summed over units (over every
    executor: CPU-seconds, not wall time, on a cluster)."""
    return {k: float(sum(s[k] for s in summaries)) for k in ("read_s", "engine_s", "write_s")}


def _backend_record(backend) -> dict:
    return {"name": backend.name, "device": backend.device, "why": backend.why}


def run(opts: RunOptions, *, progress=None, storage_options=None, log=None) -> RunSummary:
    """``gpu-inject run``: every row of the manifest written exactly once (error rows
    included) under ``opts.out``. PipelineError for a fatal problem.

    The units not yet done run here (``opts.executor == "local"``) or as Spark tasks
    (``"spark"``, gpu_inject.spark): the same plan, the same :func:`process_units`, the same
    parts, so either executor resumes the other's run."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    t_start = time.perf_counter()
    started = _now()
    opts.check()
    backend = None
    if opts.executor == "local":
        try:
            backend = engine.get_backend(opts.backend)
        except engine.BackendUnavailable as exc:
            raise PipelineError(str(exc)) from None
    else:
        from . import spark

        spark.check_available()
    from .io.manifest import ManifestError

    try:
        manifest = read_manifest(opts.manifest, storage_options)
    except ManifestError as exc:
        raise PipelineError(str(exc)) from None
    try:
        source = CoaddSource(opts.coadd_root, opts.coadd_layout, cache_dir=opts.cache_dir)
        source.check_root()
    except CoaddError as exc:
        raise PipelineError(f"--coadd-root: {exc}") from None
    store = Store(opts.out, storage_options)
    fingerprint = manifest_fingerprint(manifest.table)
    try:
        prev = store.read_json(CONFIG_NAME)
    except Exception as exc:  # noqa: BLE001 - unreachable or unreadable output
        raise PipelineError(f"--out {opts.out}: cannot read {CONFIG_NAME}: "
                            f"{' '.join(str(exc).split())}") from None
    _check_previous(prev, opts, fingerprint, opts.out)
    units = plan_units(manifest.table, opts.unit_rows)
    config = {
        "experiment_id": opts.experiment_id,
        "status": "running",
        "options": _options_record(opts),
        "manifest": {"path": opts.manifest, "rows": manifest.table.num_rows,
                     "fingerprint": fingerprint},
        "plan": {"units": len(units), "unit_rows": opts.unit_rows,
                 "bricks": int(sum(len(u.bricks) for u in units))},
        "executor": {"name": opts.executor},
        "backend": (_backend_record(backend) if backend is not None else
                    {"name": opts.backend, "device": "chosen by each Spark task",
                     "why": f"--backend {opts.backend} on the executors"}),
        "versions": _versions(),
        "host": {"machine": platform.machine(), "node": platform.node(),
                 "cpus": os.cpu_count()},
        "start_time": (prev or {}).get("start_time", started) if not opts.force else started,
        "invocations": ((prev or {}).get("invocations", []) if not opts.force else []),
    }
    try:
        if opts.force:
            store.remove_experiment(opts.experiment_id)
        store.remove_stale_temporaries(opts.experiment_id)
        store.write_json(CONFIG_NAME, config)
        existing = store.existing_parts(opts.experiment_id)
    except Exception as exc:  # noqa: BLE001 - output not writable or not reachable
        raise PipelineError(f"--out {opts.out}: {' '.join(str(exc).split())}") from None
    todo = [u for u in units
            if not all(p in existing for p in _expected_parts(u, store, opts.experiment_id))]
    done_before = len(units) - len(todo)
    where = (f"backend {backend.name} ({backend.why}; {backend.device})" if backend is not None
             else f"Spark tasks, --backend {opts.backend} on each executor")
    log(f"gpu-inject run: {manifest.table.num_rows} rows, {len(units)} units "
        f"({done_before} already done), {where}")

    jobs = ((u, manifest.table.take(pa.array(u.rows)), [manifest.errors[i] for i in u.rows])
            for u in todo)
    if opts.executor == "local":
        bar = _Progress(int(sum(u.rows.size for u in todo)),
                        int(sum(len(u.bricks) for u in todo)), enabled=progress)
        summaries = process_units(
            jobs, backend, store, source, opts, workers=opts.workers,
            on_unit=lambda s: bar.update(s["rows"], s["bricks"], s["errors"]))
        bar.close()
    else:
        summaries, record = spark.run_units(list(jobs), opts, storage_options, log)
        config["executor"].update(record["executor"])
        if record.get("backend"):
            config["backend"] = record["backend"]
        # A task killed while writing leaves a hidden temporary (never read as a part).
        store.remove_stale_temporaries(opts.experiment_id)
    reported = sorted(s["unit"] for s in summaries)
    if reported != sorted(u.index for u in todo):
        raise PipelineError(f"experiment {opts.experiment_id}: {len(todo)} units to run, "
                            f"{len(reported)} reported done ({len(set(reported))} distinct)")

    counts, reasons = count_rows(store, opts.experiment_id, manifest.table)
    wall = time.perf_counter() - t_start
    rows_done = int(sum(u.rows.size for u in todo))
    timings = sum_timings(summaries)
    timings.update(wall_s=wall, rows=rows_done,
                   stamps_per_s=rows_done / wall if wall > 0 else 0.0)
    config.update(status="complete", end_time=_now(), counts=counts,
                  error_reasons=reasons, timings=timings)
    config["invocations"] = config["invocations"] + [
        {"start_time": started, "end_time": config["end_time"], "executor": opts.executor,
         "units_run": len(todo), "units_done_before": done_before, **timings}]
    store.write_json(CONFIG_NAME, config)
    return RunSummary(out=opts.out, experiment_id=opts.experiment_id, units=len(units),
                      units_done_before=done_before, rows=counts["in"], ok=counts["ok"],
                      controls=counts["controls"], errors=counts["errors"], seconds=wall,
                      timings=timings, error_reasons=reasons, executor=opts.executor)


def count_rows(store: Store, experiment_id: str, manifest: pa.Table):
    """Counts over the finished metrics dataset ({in, ok, injections, controls, errors}) and
    the error reasons with their counts; PipelineError unless the task ids written are the
    manifest's, each as many times as there (once, but for duplicate-id error rows).
    Arrow compute throughout: ten million rows without a Python object per row."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    paths = sorted(p for p in store.existing_parts(experiment_id)
                   if f"/metrics/{experiment_id}/" in p.replace(os.sep, "/"))
    fs = store.fs if store.remote else None
    keys = [p[5:] for p in paths] if store.remote else paths
    t = ds.dataset(keys, format="parquet", filesystem=fs).to_table(
        columns=["task_id", "lens_model", "cutout_ok", "error"])
    n = t.num_rows

    def ids(col):
        if pa.types.is_integer(col.type):
            return np.sort(col.fill_null(np.iinfo(np.int64).min).to_numpy(zero_copy_only=False))
        return np.sort(np.asarray(col.cast(pa.string()).fill_null("").to_pylist(), dtype=str))

    if n != manifest.num_rows or not np.array_equal(ids(t["task_id"]),
                                                    ids(manifest["task_id"])):
        raise PipelineError(f"experiment {experiment_id}: {n} rows written for "
                            f"{manifest.num_rows} manifest rows, or not the same task ids")
    ok = pc.equal(t["cutout_ok"], 1)
    control = pc.fill_null(pc.equal(t["lens_model"], "CONTROL"), False)
    n_ok = pc.sum(ok).as_py() or 0
    n_ctrl = pc.sum(pc.and_(ok, control)).as_py() or 0
    reasons = pc.value_counts(t["error"].drop_null()).to_pylist()
    reasons.sort(key=lambda r: -r["counts"])
    counts = {"in": n, "ok": n_ok, "injections": n_ok - n_ctrl, "controls": n_ctrl,
              "errors": n - n_ok}
    return counts, {r["values"]: r["counts"] for r in reasons}
