"""``gpu-inject validate``: the physics and data-quality audit of a finished run (issue 7).

What the user checked by hand after each run (../shared/seed/), automated: every check is a
function of streamed aggregates returning a :class:`Check` (PASS / WARN / FAIL, a one-line
detail, its numbers). FAIL means the output is wrong (a row lost or repeated, a CONTROL with
an arc, a silent null, a PSF of 0, a stamp that disagrees with its metrics, a brick in two
splits); WARN means a person should look (error rows, a trend reversed beyond its noise,
PSF values under 0.8" to audit, something too small to judge).

Memory: the metrics parts are read a few at a time (only the columns used) and folded into
fixed-size histograms and sums; what grows is the sorted task ids (8 bytes a row, the
stamps' and the manifest's as many again) and one small record per brick. A synthetic
10-million-row run in 39,000 parts took 70 s and 0.8 GB at most on 2 cores. Stamps are read
for a sample of bricks only (``sample``, chosen by a hash of the brick name, the same bricks
every time), part by part, one brick's rows held at a time.

Quantiles come from the histograms: PSF to 0.002", mask fractions to 0.001, the log-scaled
quantities (arc_snr, magnification, fluxes) to 1.2 %.
"""
from __future__ import annotations

import heapq
import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from .io.manifest import SPLITS
from .io.psf import SOURCE_MANIFEST, SOURCE_MAP, SOURCE_R_FALLBACK

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"
CONTROL = "CONTROL"

#: The user's clean-subset cut (QUALITY_CUT_BAD_PIXEL_FRAC) and the share of injections
#: passing it below which the run is flagged (their train tier: 89.9 %).
CLEAN_BAD_PIXEL_FRAC = 0.2
CLEAN_SHARE_WARN = 0.8
#: PSF FWHM (arcsec) under which values are listed for audit (the user's open item).
PSF_AUDIT_BELOW = 0.8
#: r-band fallback share of a band above which the run is flagged (theirs: 0.07 % in g).
FALLBACK_WARN = 0.01
#: A split whose median PSF differs from the median of the split medians by more than this
#: fraction is flagged; splits with fewer ok rows than MIN_SPLIT_ROWS are not judged.
SPLIT_MEDIAN_REL = 0.05
MIN_SPLIT_ROWS = 100
#: Trends: bins with fewer rows are not judged; a reversal counts when it exceeds this many
#: standard errors of the difference of the two means.
TREND_MIN_ROWS = 10
TREND_SIGMA = 2.0
#: The user's theta_e bins for the flux trend ([0.3,0.5) [0.5,0.8) [0.8,1.0]), finer bins for
#: the plot, src_dmag bins (SPEC range 0.5-3.0).
THETA_E_EDGES = (0.5, 0.8)
THETA_E_FINE = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
SRC_DMAG_EDGES = (1.0, 1.5, 2.0, 2.5)
#: theta_e / psf_fwhm_used_r bins of the completeness tables (the user's Phase 4d bins).
RESOLUTION_EDGES = (0.4, 0.6, 0.8, 1.0)
#: Magnification: a source whose centre lies beyond MAG_OUTSIDE theta_e from the lens in the
#: source plane has one image at least (the minimum of the arrival time) with mu >= 1 for any
#: kappa >= 0 and any shear, so the total is >= 1; MAG_TOL is the rendering accuracy (0.1 %).
#: Below MAG_FAIL_SHARE of such rows at or above 1 is a FAIL, below all of them a WARN.
MAG_OUTSIDE = 2.0
MAG_TOL = 1e-3
MAG_FAIL_SHARE = 0.99
#: injection - CONTROL summed over a band must equal total_injected_flux_<b> within
#: FLUX_TOL_ULP * sum(|injection| + |control|) (each pixel of the sum is rounded to float32
#: twice at most: the arc, then cutout + arc) + FLUX_TOL_REL * |flux| (CPU/GPU agreement).
FLUX_TOL_ULP = 2.0 ** -23
FLUX_TOL_REL = 1e-5
#: Share of bricks whose stamps are read: ~180 bricks (~10k stamps, ~2 GB of parts read) of
#: the user's 10.6M-row train tier.
DEFAULT_SAMPLE = 0.001
MIN_SAMPLE_BRICKS = 2
BATCH_ROWS = 65536
#: Parts read ahead at once (a run has one part per unit and split: thousands of small files).
FRAGMENT_READAHEAD = 16
EXAMPLES = 5
GALLERY_ROWS = 6
GALLERY_CANDIDATES = 64

PSF_EDGES = np.round(np.arange(0.0, 6.0 + 1e-9, 0.002), 6)
FRAC_EDGES = np.linspace(0.0, 1.0, 1001)
LOG_EDGES = 10.0 ** np.arange(-4.0, 5.0 + 1e-9, 1.0 / 200)


class ValidateError(RuntimeError):
    """An input that cannot be read at all: one line, exit status 1."""


@dataclass
class Check:
    name: str
    status: str
    detail: str
    numbers: dict = field(default_factory=dict)


@dataclass
class Table:
    title: str
    header: list
    rows: list
    note: str = ""


@dataclass
class ValidateResult:
    out: str
    experiment_id: str
    checks: list
    tables: dict            # section -> [Table]
    notes: list
    report_dir: str | None = None

    @property
    def failed(self) -> bool:
        return any(c.status == FAIL for c in self.checks)

    @property
    def counts(self) -> dict:
        n = Counter(c.status for c in self.checks)
        return {s: n.get(s, 0) for s in (PASS, WARN, FAIL)}

    @property
    def status(self) -> str:
        return FAIL if self.failed else (WARN if self.counts[WARN] else PASS)


def _status(fail=False, warn=False) -> str:
    return FAIL if fail else (WARN if warn else PASS)


def _g(x) -> str:
    """A number for people: 4 significant digits, integers as they are."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, (int, np.integer)):
        return f"{int(x):,}"
    return f"{float(x):.4g}"


def _pct(k, n) -> str:
    return f"{100.0 * k / n:.3g} %" if n else "-"


def _py(x):
    """numpy scalars -> Python, for JSON."""
    return x.item() if isinstance(x, np.generic) else x


# --------------------------------------------------------------------------- aggregates
class Hist:
    """Counts over fixed edges (under- and overflow included), with exact n, sum, min, max:
    mergeable, bounded, and enough for quantiles and plots."""

    def __init__(self, edges):
        self.edges = np.asarray(edges, dtype=np.float64)
        self.counts = np.zeros(self.edges.size + 1, dtype=np.int64)
        self.n, self.sum, self.min, self.max = 0, 0.0, math.inf, -math.inf

    def add(self, x) -> None:
        x = np.asarray(x, dtype=np.float64)
        x = x[np.isfinite(x)]
        if not x.size:
            return
        idx = np.searchsorted(self.edges, x, side="right")
        self.counts += np.bincount(idx, minlength=self.counts.size)
        self.n += x.size
        self.sum += float(x.sum())
        self.min, self.max = min(self.min, float(x.min())), max(self.max, float(x.max()))

    def merge(self, other: Hist) -> Hist:
        out = Hist(self.edges)
        for h in (self, other):
            out.counts += h.counts
            out.n += h.n
            out.sum += h.sum
            out.min, out.max = min(out.min, h.min), max(out.max, h.max)
        return out

    @property
    def mean(self) -> float:
        return self.sum / self.n if self.n else math.nan

    def quantile(self, q: float) -> float:
        if not self.n:
            return math.nan
        cum = np.cumsum(self.counts)
        target = q * self.n
        k = int(np.searchsorted(cum, target, side="left"))
        if k == 0:
            return self.min
        if k >= self.edges.size:
            return self.max
        before = cum[k - 1]
        frac = (target - before) / self.counts[k] if self.counts[k] else 0.0
        lo, hi = self.edges[k - 1], self.edges[k]
        return float(min(max(lo + frac * (hi - lo), self.min), self.max))


class BinnedMean:
    """Count, sum and sum of squares of a value per bin of another (np.digitize on edges)."""

    def __init__(self, edges):
        self.edges = np.asarray(edges, dtype=np.float64)
        k = self.edges.size + 1
        self.n, self.s, self.s2 = np.zeros(k), np.zeros(k), np.zeros(k)

    def add(self, x, v) -> None:
        good = np.isfinite(x) & np.isfinite(v)
        idx = np.digitize(x[good], self.edges)
        v = v[good]
        k = self.n.size
        self.n += np.bincount(idx, minlength=k)
        self.s += np.bincount(idx, weights=v, minlength=k)
        self.s2 += np.bincount(idx, weights=v * v, minlength=k)

    def labels(self) -> list:
        e = [f"{x:g}" for x in self.edges]
        return [f"< {e[0]}"] + [f"{a}-{b}" for a, b in pairwise(e)] + [f">= {e[-1]}"]

    def means(self):
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = self.s / self.n
            var = (self.s2 - self.n * mean ** 2) / (self.n - 1)
            se = np.sqrt(np.maximum(var, 0.0) / self.n)
        return mean, np.where(self.n > 1, se, np.nan)


def judge_trend(binned: BinnedMean, rising: bool, min_rows=TREND_MIN_ROWS,
                sigma=TREND_SIGMA):
    """(status, detail, numbers) of a monotonic trend of the bin means: WARN when two
    consecutive judged bins (>= min_rows rows) reverse it by more than ``sigma`` standard
    errors of their difference, or when fewer than two bins can be judged."""
    mean, se = binned.means()
    judged = [i for i in range(mean.size) if binned.n[i] >= min_rows]
    numbers = {"bins": binned.labels(), "n": binned.n.astype(int).tolist(),
               "mean": [None if not np.isfinite(m) else float(m) for m in mean],
               "se": [None if not np.isfinite(s) else float(s) for s in se],
               "judged": [binned.labels()[i] for i in judged]}
    shown = ", ".join(f"{binned.labels()[i]}: {mean[i]:.4g}" for i in judged)
    if len(judged) < 2:
        return WARN, (f"not judged: fewer than 2 bins with >= {min_rows} rows "
                      f"(rows per bin {binned.n.astype(int).tolist()})"), numbers
    reversals, dips = [], 0
    for a, b in pairwise(judged):
        step = (mean[b] - mean[a]) * (1 if rising else -1)
        if step < 0:
            dips += 1
            if -step > sigma * math.hypot(se[a], se[b]):
                reversals.append(f"{binned.labels()[a]} -> {binned.labels()[b]}")
    numbers["reversals"] = reversals
    way = "rising" if rising else "falling"
    if reversals:
        return WARN, (f"not {way}: {'; '.join(reversals)} reverse beyond {sigma:g} sigma "
                      f"({shown})"), numbers
    note = f" ({dips} dip(s) within {sigma:g} sigma)" if dips else ""
    return PASS, f"{way}{note}: {shown}", numbers


class Examples:
    """The k smallest (key, record) pairs seen: bounded examples for the report."""

    def __init__(self, k=EXAMPLES):
        self.k, self.heap, self.count = k, [], 0

    def add(self, keys, records) -> None:
        for key, rec in zip(keys, records):
            self.count += 1
            item = (-float(key), self.count, rec)
            if len(self.heap) < self.k:
                heapq.heappush(self.heap, item)
            elif item[0] > self.heap[0][0]:
                heapq.heapreplace(self.heap, item)

    def items(self) -> list:
        return [rec for _, _, rec in sorted(self.heap, key=lambda t: (-t[0], t[1]))]


# --------------------------------------------------------------------------- batches
class Batch:
    """One record batch of the metrics, with numpy views made once."""

    def __init__(self, rb: pa.RecordBatch):
        self.rb = rb
        self.n = rb.num_rows
        self._cache = {}

    def col(self, name) -> pa.Array:
        a = self.rb.column(name)
        return a.dictionary_decode() if pa.types.is_dictionary(a.type) else a

    def num(self, name) -> np.ndarray:
        """float64, NaN where null."""
        if name not in self._cache:
            a = pc.cast(self.col(name), pa.float64())
            self._cache[name] = pc.fill_null(a, math.nan).to_numpy(zero_copy_only=False)
        return self._cache[name]

    def null(self, name) -> np.ndarray:
        return self.col(name).is_null().to_numpy(zero_copy_only=False)

    def text(self, name) -> np.ndarray:
        return np.asarray(self.col(name).to_pylist(), dtype=object)

    def records(self, rows, *names) -> list:
        """Example records (task_id, brickname, split, ra, dec + names) of ``rows``."""
        idx = np.flatnonzero(rows)[:EXAMPLES]
        keys = ("task_id", "brickname", "region_split", "ra", "dec") + names
        cols = {k: self.col(k).take(pa.array(idx)).to_pylist() for k in keys}
        return [{k: cols[k][j] for k in keys} for j in range(idx.size)]

    @property
    def ok(self) -> np.ndarray:
        if "_ok" not in self._cache:
            self._cache["_ok"] = self.num("cutout_ok") == 1
        return self._cache["_ok"]

    @property
    def control(self) -> np.ndarray:
        if "_ctrl" not in self._cache:
            eq = pc.fill_null(pc.equal(self.col("lens_model"), CONTROL), False)
            self._cache["_ctrl"] = eq.to_numpy(zero_copy_only=False)
        return self._cache["_ctrl"]

    @property
    def injection(self) -> np.ndarray:
        return self.ok & ~self.control


def _ids(col: pa.Array) -> np.ndarray:
    if pa.types.is_integer(col.type):
        return pc.fill_null(pc.cast(col, pa.int64()), np.iinfo(np.int64).min).to_numpy(
            zero_copy_only=False)
    return np.asarray(pc.fill_null(pc.cast(col, pa.string()), "").to_pylist(), dtype=str)


def _excess(a: np.ndarray, b: np.ndarray, chunk=1 << 20):
    """Rows of sorted ``a`` beyond their value's multiplicity in sorted ``b``: (count, first
    examples, rows whose value is not in ``b`` at all). Done by slices of about ``chunk``
    values (with the matching slice of ``b``), so memory stays bounded."""
    if np.array_equal(a, b):        # the usual case
        return 0, [], 0
    count = absent = 0
    examples = []
    start = 0
    while start < a.size:
        end = int(np.searchsorted(a, a[min(start + chunk, a.size) - 1], side="right"))
        sa = a[start:end]
        sb = b[np.searchsorted(b, sa[0], "left"):np.searchsorted(b, sa[-1], "right")]
        ua, ca = np.unique(sa, return_counts=True)
        ub, cb = np.unique(sb, return_counts=True)
        j = np.minimum(np.searchsorted(ub, ua), max(ub.size - 1, 0))
        found = (ub[j] == ua) if ub.size else np.zeros(ua.size, bool)
        extra = ca - np.where(found, cb[j] if ub.size else 0, 0)
        keep = extra > 0
        count += int(extra[keep].sum())
        absent += int(ca[~found].sum())
        examples += [_py(v) for v in ua[keep][:EXAMPLES - len(examples)]]
        start = end
    return count, examples, absent


# --------------------------------------------------------------------------- rows
class RowsAcc:
    """Task ids (for once-each), the outcome counts and the error reasons."""

    def __init__(self):
        self.ids, self.n, self.ok, self.controls = [], 0, 0, 0
        self.errors = Counter()

    def update(self, b: Batch) -> None:
        self.ids.append(_ids(b.col("task_id")))
        self.n += b.n
        self.ok += int(b.ok.sum())
        self.controls += int((b.ok & b.control).sum())
        err = b.col("error").drop_null()
        if len(err):
            for r in pc.value_counts(err).to_pylist():
                self.errors[r["values"]] += r["counts"]

    def sorted_ids(self) -> np.ndarray:
        ids = np.sort(np.concatenate(self.ids)) if self.ids else np.zeros(0, np.int64)
        self.ids = [ids]
        return ids


def check_task_ids(ids: np.ndarray, manifest_ids: np.ndarray | None) -> Check:
    """Every manifest row once (as many times as the manifest holds its id), or without a
    manifest no task id twice."""
    dup = int(np.count_nonzero(ids[1:] == ids[:-1])) if ids.size else 0
    dup_ex = [_py(v) for v in np.unique(ids[1:][ids[1:] == ids[:-1]])[:EXAMPLES]]
    if manifest_ids is None:
        nums = {"rows": int(ids.size), "duplicated_rows": dup, "examples": dup_ex}
        return Check("rows: every task once", _status(fail=dup > 0),
                     f"{ids.size:,} rows, {dup:,} repeated task ids{_ex(dup_ex)} "
                     "(no --manifest: not compared with the manifest)", nums)
    missing, miss_ex, _ = _excess(manifest_ids, ids)
    surplus, sur_ex, unknown = _excess(ids, manifest_ids)
    nums = {"rows": int(ids.size), "manifest_rows": int(manifest_ids.size), "missing": missing,
            "surplus": surplus, "not_in_manifest": unknown, "repeated_in_output": dup,
            "missing_examples": miss_ex, "surplus_examples": sur_ex}
    bad = missing or surplus
    detail = (f"{ids.size:,} rows for {manifest_ids.size:,} manifest rows: {missing:,} missing"
              f"{_ex(miss_ex)}, {surplus:,} surplus{_ex(sur_ex)} ({unknown:,} not in the "
              "manifest)")
    return Check("rows: every task once", _status(fail=bad), detail, nums)


def _ex(values) -> str:
    return f" (e.g. {', '.join(str(v) for v in values)})" if values else ""


def check_stamp_ids(ids: np.ndarray, stamp_ids: np.ndarray) -> Check:
    missing, miss_ex, _ = _excess(ids, stamp_ids)
    surplus, sur_ex, _ = _excess(stamp_ids, ids)
    nums = {"metrics_rows": int(ids.size), "stamp_rows": int(stamp_ids.size),
            "without_stamp": missing, "stamps_without_metrics": surplus}
    return Check("rows: stamps and metrics hold the same tasks",
                 _status(fail=missing or surplus),
                 f"{stamp_ids.size:,} stamp rows, {ids.size:,} metrics rows: {missing:,} "
                 f"tasks without a stamp row{_ex(miss_ex)}, {surplus:,} stamp rows without "
                 f"metrics{_ex(sur_ex)}", nums)


def check_outcomes(acc: RowsAcc) -> Check:
    top = acc.errors.most_common(10)
    nums = {"rows": acc.n, "ok": acc.ok, "controls": acc.controls,
            "injections": acc.ok - acc.controls, "errors": acc.n - acc.ok,
            "error_reasons": [{"reason": r, "count": c} for r, c in top]}
    detail = (f"cutout_ok {_pct(acc.ok, acc.n)} ({acc.ok:,} of {acc.n:,}: "
              f"{acc.ok - acc.controls:,} injections, {acc.controls:,} controls)")
    if acc.n > acc.ok:
        detail += f"; {acc.n - acc.ok:,} error rows, top: " + "; ".join(
            f"{c:,} x {r}" for r, c in top[:3])
    return Check("rows: cutout_ok and error reasons",
                 _status(fail=acc.ok == 0, warn=acc.ok < acc.n), detail, nums)


def check_config(config: dict | None, acc: RowsAcc, experiment_id: str) -> Check:
    """_stage_config.json says the run completed, with the counts found here."""
    if config is None:
        return Check("rows: run recorded complete", WARN,
                     "no _stage_config.json: the run's options and counts are unknown", {})
    counts = config.get("counts") or {}
    found = {"in": acc.n, "ok": acc.ok, "controls": acc.controls, "errors": acc.n - acc.ok}
    differ = {k: (counts.get(k), v) for k, v in found.items() if counts.get(k) != v}
    if config.get("experiment_id") not in (None, experiment_id):
        return Check("rows: run recorded complete", WARN,
                     f"_stage_config.json is for experiment {config['experiment_id']!r}: "
                     "counts not compared", {"recorded_experiment": config["experiment_id"]})
    status = config.get("status")
    bad = status != "complete" or bool(differ)
    detail = f"status {status!r}"
    if differ:
        detail += "; counts recorded vs found: " + ", ".join(
            f"{k} {a} vs {b}" for k, (a, b) in differ.items())
    elif counts:
        detail += f", counts agree ({counts.get('in')} rows)"
    return Check("rows: run recorded complete", _status(fail=bad), detail,
                 {"status": status, "recorded": counts, "found": found})


# --------------------------------------------------------------------------- controls
def arc_columns(bands) -> tuple:
    return ("arc_snr", "arc_snr_opt", "magnification") + tuple(
        f"total_injected_flux_{b}" for b in bands)


class ControlsAcc:
    """CONTROL rows: theta_e 0 (or null, SPEC 4) on ok rows, every arc metric null."""

    def __init__(self, bands):
        self.cols = arc_columns(bands)
        self.n = self.n_ok = self.theta_bad = 0
        self.arc = Counter()
        self.examples = []

    def update(self, b: Batch) -> None:
        c = b.control
        self.n += int(c.sum())
        self.n_ok += int((c & b.ok).sum())
        theta = b.num("theta_e_arcsec")
        bad_theta = c & b.ok & ~b.null("theta_e_arcsec") & (theta != 0)
        self.theta_bad += int(bad_theta.sum())
        bad_any = bad_theta.copy()
        for name in self.cols:
            has = c & ~b.null(name)
            self.arc[name] += int(has.sum())
            bad_any |= has
        if bad_any.any() and len(self.examples) < EXAMPLES:
            self.examples += b.records(bad_any, "theta_e_arcsec", *self.cols)

    def check(self) -> Check:
        arc = {k: v for k, v in self.arc.items() if v}
        nums = {"controls": self.n, "controls_ok": self.n_ok, "theta_e_not_0": self.theta_bad,
                "arc_metric_not_null": dict(self.arc), "examples": self.examples[:EXAMPLES]}
        bad = self.theta_bad or arc
        detail = (f"{self.n:,} CONTROL rows ({self.n_ok:,} ok): theta_e not 0 on "
                  f"{self.theta_bad:,}; arc metrics not null: "
                  + (", ".join(f"{k} {v:,}" for k, v in arc.items()) if arc else "none"))
        if bad:
            detail += _ex([e["task_id"] for e in self.examples])
        if not self.n:
            return Check("controls: theta_e 0 and arc metrics null", WARN,
                         "no CONTROL rows: nothing to check", nums)
        return Check("controls: theta_e 0 and arc metrics null", _status(fail=bad), detail,
                     nums)


# --------------------------------------------------------------------------- physics
class PhysicsAcc:
    """Ok injections: coverage of the arc metrics, their distributions, the flux trends and
    the magnification of sources well outside the Einstein radius."""

    def __init__(self, bands):
        self.bands = bands
        self.cols = arc_columns(bands)
        self.n = 0
        self.missing = Counter()
        self.missing_examples = []
        self.hists = {c: Hist(LOG_EDGES) for c in self.cols}
        self.theta = BinnedMean(THETA_E_EDGES)
        self.theta_fine = BinnedMean(THETA_E_FINE)
        self.dmag = BinnedMean(SRC_DMAG_EDGES)
        self.out_n = self.out_ge1 = 0
        self.out_min = math.inf
        self.out_bad = []
        self.mag_ge1 = 0

    def update(self, b: Batch) -> None:
        inj = b.injection
        if not inj.any():
            return
        self.n += int(inj.sum())
        for name in self.cols:
            v = b.num(name)
            bad = inj & ~np.isfinite(v)
            self.missing[name] += int(bad.sum())
            if bad.any() and len(self.missing_examples) < EXAMPLES:
                self.missing_examples += b.records(bad, name)
            self.hists[name].add(v[inj])
        theta, flux = b.num("theta_e_arcsec")[inj], b.num("total_injected_flux_r")[inj]
        self.theta.add(theta, flux)
        self.theta_fine.add(theta, flux)
        self.dmag.add(b.num("src_dmag")[inj], flux)
        mu = b.num("magnification")
        self.mag_ge1 += int((inj & (mu >= 1 - MAG_TOL)).sum())
        beta = np.hypot(b.num("src_x_arcsec"), b.num("src_y_arcsec"))
        with np.errstate(invalid="ignore"):
            out = inj & (beta > MAG_OUTSIDE * b.num("theta_e_arcsec")) & np.isfinite(mu)
            low = out & (mu < 1 - MAG_TOL)
        self.out_n += int(out.sum())
        self.out_ge1 += int(out.sum() - low.sum())
        if out.any():
            self.out_min = min(self.out_min, float(mu[out].min()))
        if low.any() and len(self.out_bad) < EXAMPLES:
            self.out_bad += b.records(low, "magnification", "theta_e_arcsec", "src_x_arcsec",
                                   "src_y_arcsec")

    def check_coverage(self) -> Check:
        miss = {k: v for k, v in self.missing.items() if v}
        nums = {"injections_ok": self.n, "null_or_nan": dict(self.missing),
                "examples": self.missing_examples[:EXAMPLES]}
        cover = ", ".join(f"{k} {_pct(self.n - self.missing[k], self.n)}" for k in self.cols)
        detail = f"{self.n:,} ok injections; coverage {cover}"
        if miss:
            detail += _ex([e["task_id"] for e in self.missing_examples])
        if not self.n:
            return Check("physics: arc metrics on every injection", WARN,
                         "no ok injection: nothing to check", nums)
        return Check("physics: arc metrics on every injection", _status(fail=bool(miss)),
                     detail, nums)

    def check_theta_trend(self) -> Check:
        status, detail, nums = judge_trend(self.theta, rising=True)
        return Check("physics: mean total_injected_flux_r rises with theta_e", status,
                     detail, nums)

    def check_dmag_trend(self) -> Check:
        status, detail, nums = judge_trend(self.dmag, rising=False)
        return Check("physics: mean total_injected_flux_r falls with src_dmag", status,
                     detail, nums)

    def check_magnification(self) -> Check:
        name = f"physics: magnification >= 1 for sources beyond {MAG_OUTSIDE:g} theta_e"
        share = self.out_ge1 / self.out_n if self.out_n else math.nan
        nums = {"criterion": f"hypot(src_x, src_y) > {MAG_OUTSIDE:g} theta_e, "
                             f"magnification >= 1 - {MAG_TOL:g}",
                "rows": self.out_n, "at_least_1": self.out_ge1,
                "min": self.out_min if self.out_n else None,
                "share_all_injections_at_least_1": self.mag_ge1 / self.n if self.n else None,
                "examples": self.out_bad[:EXAMPLES]}
        if not self.out_n:
            return Check(name, WARN, "not judged: no ok injection with its source centre "
                         f"beyond {MAG_OUTSIDE:g} theta_e", nums)
        detail = (f"{self.out_ge1:,} of {self.out_n:,} ({_pct(self.out_ge1, self.out_n)}) at "
                  f">= 1 - {MAG_TOL:g}, min {self.out_min:.4g}; all injections: "
                  f"{_pct(self.mag_ge1, self.n)} >= 1")
        if self.out_bad:
            detail += _ex([e["task_id"] for e in self.out_bad])
        return Check(name, _status(fail=share < MAG_FAIL_SHARE, warn=share < 1), detail, nums)

    def tables(self) -> list:
        rows = []
        for c in self.cols:
            h = self.hists[c]
            rows.append([c, _pct(self.n - self.missing[c], self.n), _g(h.min if h.n else None),
                         _g(h.quantile(0.5)), _g(h.mean), _g(h.max if h.n else None)])
        out = [Table("Arc metrics of the ok injections", ["metric", "coverage", "min", "median",
                                                          "mean", "max"], rows)]
        for title, binned in (("Mean total_injected_flux_r (nanomaggies) by theta_e (arcsec)",
                               self.theta_fine),
                              ("Mean total_injected_flux_r by theta_e, the user's bins",
                               self.theta),
                              ("Mean total_injected_flux_r by src_dmag", self.dmag)):
            mean, se = binned.means()
            out.append(Table(title, ["bin", "rows", "mean", "std. error"],
                             [[lab, _g(int(n)), _g(m), _g(s)] for lab, n, m, s in
                              zip(binned.labels(), binned.n, mean, se)]))
        return out


# --------------------------------------------------------------------------- PSF
class PsfAcc:
    """psf_fwhm_used_<b> and psf_source_<b> of ok rows: positivity, provenance, the r
    fallback rate, values to audit, and the distributions per split."""

    def __init__(self, bands):
        self.bands = bands
        self.n = 0
        self.bad = Counter()
        self.bad_examples = []
        self.fallback = Counter()
        self.mismatch = Counter()
        self.mismatch_examples = []
        self.low = Counter()
        self.low_examples = {b: Examples() for b in bands}
        self.hist = {}          # (split, band) -> Hist
        self.split_fallback = Counter()

    def update(self, b: Batch) -> None:
        ok = b.ok
        if not ok.any():
            return
        self.n += int(ok.sum())
        split = b.text("region_split")
        r_used = b.num("psf_fwhm_used_r") if "r" in self.bands else None
        by_split = {s: ok & (split == s) for s in np.unique(split[ok].astype(str))}
        for band in self.bands:
            v, src = b.num(f"psf_fwhm_used_{band}"), b.num(f"psf_source_{band}")
            with np.errstate(invalid="ignore"):
                bad = ok & ~(np.isfinite(v) & (v > 0))
            self.bad[band] += int(bad.sum())
            if bad.any() and len(self.bad_examples) < EXAMPLES:
                self.bad_examples += [dict(e, band=band) for e in
                                      b.records(bad, f"psf_fwhm_used_{band}")]
            fb = ok & (src == SOURCE_R_FALLBACK)
            self.fallback[band] += int(fb.sum())
            wrong = ok & self._provenance_wrong(b, band, v, src, r_used)
            self.mismatch[band] += int(wrong.sum())
            if wrong.any() and len(self.mismatch_examples) < EXAMPLES:
                self.mismatch_examples += [dict(e, band=band) for e in b.records(
                    wrong, f"psf_fwhm_used_{band}", f"psf_source_{band}", f"psfsize_{band}")]
            with np.errstate(invalid="ignore"):
                low = ok & (v < PSF_AUDIT_BELOW) & ~bad
            self.low[band] += int(low.sum())
            if low.any():
                idx = np.flatnonzero(low)
                recs = [dict(e, band=band) for e in self._records(b, idx, band)]
                self.low_examples[band].add([r["value"] for r in recs], recs)
            for s, rows in by_split.items():
                self.hist.setdefault((s, band), Hist(PSF_EDGES)).add(v[rows])
                self.split_fallback[(s, band)] += int((rows & fb).sum())

    @staticmethod
    def _records(b: Batch, idx, band):
        """Records of the rows idx (the smallest values first, at most EXAMPLES)."""
        v = b.num(f"psf_fwhm_used_{band}")[idx]
        idx = idx[np.argsort(v, kind="stable")][:EXAMPLES]
        keys = ("task_id", "brickname", "region_split", "ra", "dec",
                f"psf_fwhm_used_{band}", f"psf_source_{band}")
        cols = {k: b.col(k).take(pa.array(idx)).to_pylist() for k in keys}
        return [{**{k: cols[k][j] for k in keys[:5]}, "value": cols[keys[5]][j],
                 "source": cols[keys[6]][j]} for j in range(idx.size)]

    @staticmethod
    def _provenance_wrong(b: Batch, band, v, src, r_used):
        """Rows whose value is not what psf_source says: 1 the manifest's psfsize_<b>,
        2 the r value (never for r itself), and 0, 1 or 2 only."""
        with np.errstate(invalid="ignore"):
            wrong = ~np.isin(src, (SOURCE_MAP, SOURCE_MANIFEST, SOURCE_R_FALLBACK))
            man = b.num(f"psfsize_{band}")   # a column open_run requires
            wrong |= (src == SOURCE_MANIFEST) & ~np.isclose(v, man, rtol=1e-9, atol=0)
            if band == "r":
                wrong |= src == SOURCE_R_FALLBACK
            elif r_used is not None:
                wrong |= (src == SOURCE_R_FALLBACK) & (v != r_used)
        return wrong

    def check_positive(self) -> Check:
        bad = {k: v for k, v in self.bad.items() if v}
        nums = {"ok_rows": self.n, "not_positive": dict(self.bad),
                "examples": self.bad_examples[:EXAMPLES]}
        detail = (f"{self.n:,} ok rows; psf_fwhm_used <= 0, null or NaN: "
                  + ", ".join(f"{b} {self.bad[b]:,}" for b in self.bands))
        if bad:
            detail += _ex([(e["task_id"], e["band"]) for e in self.bad_examples])
        return Check("psf: every psf_fwhm_used > 0", _status(fail=bool(bad)), detail, nums)

    def check_provenance(self) -> Check:
        rates = {b: self.fallback[b] / self.n if self.n else 0.0 for b in self.bands}
        wrong = {k: v for k, v in self.mismatch.items() if v}
        nums = {"fallback_rows": dict(self.fallback), "fallback_rate": rates,
                "provenance_mismatch": dict(self.mismatch),
                "examples": self.mismatch_examples[:EXAMPLES],
                "warn_above": FALLBACK_WARN}
        detail = ("r fallback (psf_source 2): " + ", ".join(
            f"{b} {self.fallback[b]:,} ({_pct(self.fallback[b], self.n)})" for b in self.bands)
            + "; values not matching their psf_source: "
            + (", ".join(f"{b} {v:,}" for b, v in wrong.items()) if wrong else "none"))
        if wrong:
            detail += _ex([(e["task_id"], e["band"]) for e in self.mismatch_examples])
        high = [b for b, r in rates.items() if r > FALLBACK_WARN]
        if high:
            detail += f"; above {FALLBACK_WARN:.0%} in {', '.join(high)}"
        return Check("psf: provenance and r fallback rate", _status(fail=bool(wrong),
                                                                      warn=bool(high)),
                     detail, nums)

    def check_low(self, reread=None) -> Check:
        total = sum(self.low.values())
        ex = [e for b in self.bands for e in self.low_examples[b].items()]
        nums = {"below": PSF_AUDIT_BELOW, "rows": dict(self.low), "examples": ex}
        detail = f"under {PSF_AUDIT_BELOW:g}\": " + ", ".join(
            f"{b} {self.low[b]:,} ({_pct(self.low[b], self.n)})" for b in self.bands)
        fail = False
        if ex:
            detail += "; smallest: " + ", ".join(
                f"{e['band']} {e['value']:.3f}\" (task {e['task_id']}, {e['brickname']}, "
                f"source {e['source']})" for e in ex[:EXAMPLES])
        if reread is not None and ex:
            nums["reread"] = reread
            same = sum(1 for r in reread if r["equal"])
            fail = same < len(reread)
            detail += (f"; {same} of {len(reread)} map-sourced examples equal the psfsize map "
                       "read back from the coadds")
        return Check(f"psf: values under {PSF_AUDIT_BELOW:g}\" listed for audit",
                     _status(fail=fail, warn=total > 0), detail, nums)

    def split_medians(self) -> dict:
        """band -> {split: (rows, median, reference)}: the reference is the median of the
        judged splits' medians, so one odd split stands out whatever its size."""
        out = {}
        for band in self.bands:
            judged = {s: self.hist[(s, band)] for s in SPLITS if (s, band) in self.hist
                      and self.hist[(s, band)].n >= MIN_SPLIT_ROWS}
            if len(judged) < 2:
                out[band] = {}
                continue
            meds = {s: h.quantile(0.5) for s, h in judged.items()}
            ref = float(np.median(list(meds.values())))
            out[band] = {s: (judged[s].n, m, ref) for s, m in meds.items()}
        return out

    def check_splits(self) -> Check:
        meds = self.split_medians()
        off = [(band, s, m, o) for band, res in meds.items() for s, (_, m, o) in res.items()
               if abs(m - o) > SPLIT_MEDIAN_REL * o]
        nums = {"rel_tolerance": SPLIT_MEDIAN_REL, "min_rows": MIN_SPLIT_ROWS,
                "medians": {b: {s: {"rows": n, "median": m, "reference": o}
                                for s, (n, m, o) in res.items()} for b, res in meds.items()},
                "outliers": [{"band": b, "split": s, "median": m, "reference": o}
                             for b, s, m, o in off]}
        name = "psf: distributions agree across splits"
        if not any(meds.values()):
            return Check(name, WARN, f"not judged: fewer than two splits with >= "
                         f"{MIN_SPLIT_ROWS} ok rows", nums)
        shown = "; ".join(f"{b}: " + ", ".join(f"{s} {m:.3f}" for s, (_, m, _) in res.items())
                          for b, res in meds.items() if res)
        detail = f"medians {shown}"
        if off:
            detail += ("; off the median of the split medians by more than "
                       f"{SPLIT_MEDIAN_REL:.0%}: " + ", ".join(
                           f"{b} {s} {m:.3f} vs {o:.3f}" for b, s, m, o in off))
        return Check(name, _status(warn=bool(off)), detail, nums)

    def tables(self) -> list:
        qs = (0.01, 0.05, 0.5, 0.95)
        head = ["split", "band", "rows", "min", "p1", "p5", "median", "p95", "max",
                "r fallback"]
        rows = []
        for band in self.bands:
            per = [(s, self.hist[(s, band)]) for s in sorted({s for s, bb in self.hist
                                                             if bb == band})]
            allh = None
            for _, h in per:
                allh = h if allh is None else allh.merge(h)
            for s, h in ([("all", allh)] if allh is not None else []) + per:
                fb = (self.fallback[band] if s == "all"
                      else self.split_fallback[(s, band)])
                rows.append([s, band, _g(h.n), _g(h.min)] + [_g(h.quantile(q)) for q in qs]
                            + [_g(h.max), _pct(fb, h.n)])
        low = [[e["band"], f"{e['value']:.4f}", e["task_id"], e["brickname"],
                e["region_split"], e["source"]]
               for b in self.bands for e in self.low_examples[b].items()]
        return [Table("psf_fwhm_used (arcsec) of ok rows, by split and band", head, rows),
                Table(f"Smallest values under {PSF_AUDIT_BELOW:g}\" (audit)",
                      ["band", "value", "task_id", "brickname", "split", "psf_source"], low,
                      note="psf_source: 0 psfsize map, 1 manifest psfsize, 2 r fallback")]


# --------------------------------------------------------------------------- quality
class QualityAcc:
    COLS = ("bad_pixel_frac", "wise_brightmask_frac")

    def __init__(self):
        self.hist = {(c, k): Hist(FRAC_EDGES) for c in self.COLS
                     for k in ("injections", "controls")}
        self.n_inj = self.clean_inj = self.n_ok = self.clean_ok = 0
        self.bad = Counter()

    def update(self, b: Batch) -> None:
        ok = b.ok
        for c in self.COLS:
            v = b.num(c)
            with np.errstate(invalid="ignore"):
                self.bad[c] += int((ok & ~((v >= 0) & (v <= 1))).sum())
            self.hist[(c, "injections")].add(v[b.injection])
            self.hist[(c, "controls")].add(v[ok & b.control])
        v = b.num("bad_pixel_frac")
        with np.errstate(invalid="ignore"):
            clean = v <= CLEAN_BAD_PIXEL_FRAC
        self.n_inj += int(b.injection.sum())
        self.clean_inj += int((b.injection & clean).sum())
        self.n_ok += int(ok.sum())
        self.clean_ok += int((ok & clean).sum())

    def check(self) -> Check:
        share = self.clean_inj / self.n_inj if self.n_inj else math.nan
        bad = {k: v for k, v in self.bad.items() if v}
        h = self.hist[("bad_pixel_frac", "injections")]
        w = self.hist[("wise_brightmask_frac", "injections")]
        nums = {"cut": f"bad_pixel_frac <= {CLEAN_BAD_PIXEL_FRAC}", "clean_injections": share,
                "clean_ok_rows": self.clean_ok / self.n_ok if self.n_ok else None,
                "outside_0_1_or_null": dict(self.bad), "warn_below": CLEAN_SHARE_WARN}
        detail = (f"clean subset (bad_pixel_frac <= {CLEAN_BAD_PIXEL_FRAC:g}): "
                  f"{_pct(self.clean_inj, self.n_inj)} of injections, "
                  f"{_pct(self.clean_ok, self.n_ok)} of ok rows; injections bad_pixel_frac "
                  f"median {_g(h.quantile(0.5))} p95 {_g(h.quantile(0.95))}, "
                  f"wise_brightmask_frac median {_g(w.quantile(0.5))} p95 "
                  f"{_g(w.quantile(0.95))}")
        if bad:
            detail += "; outside [0, 1] or null: " + ", ".join(f"{k} {v:,}"
                                                               for k, v in bad.items())
        return Check("quality: mask fractions and the clean subset",
                     _status(fail=bool(bad), warn=share < CLEAN_SHARE_WARN), detail, nums)

    def tables(self) -> list:
        qs = (0.5, 0.9, 0.95, 0.99)
        rows = [[c, k, _g(h.n), _g(h.mean)] + [_g(h.quantile(q)) for q in qs] + [_g(h.max)]
                for (c, k), h in self.hist.items() if h.n]
        return [Table("Mask fractions of ok rows", ["column", "rows", "n", "mean", "median",
                                                    "p90", "p95", "p99", "max"], rows)]


# --------------------------------------------------------------------------- splits
@dataclass
class BrickInfo:
    splits: set = field(default_factory=set)
    parts: set = field(default_factory=set)
    ok: int = 0


class SplitsAcc:
    """Rows per region_split (the partition folder) and where each brick's rows are."""

    def __init__(self):
        self.rows, self.ok = Counter(), Counter()
        self.bricks: dict = {}

    def update(self, b: Batch) -> None:
        t = pa.table({"brickname": b.col("brickname"), "split": b.col("region_split"),
                      "ok": pa.array(b.ok.astype(np.int64))})
        g = t.group_by(["brickname", "split"]).aggregate([("ok", "sum"), ("ok", "count")])
        for brick, split, ok, n in zip(g["brickname"].to_pylist(), g["split"].to_pylist(),
                                       g["ok_sum"].to_pylist(), g["ok_count"].to_pylist()):
            info = self.bricks.setdefault(brick, BrickInfo())
            info.splits.add(split)
            info.ok += ok
            self.rows[split] += n
            self.ok[split] += ok

    def note_part(self, t: pa.Table, part: str) -> None:
        for brick in pc.unique(t["brickname"]).to_pylist():
            self.bricks.setdefault(brick, BrickInfo()).parts.add(part)

    def check_bricks(self) -> Check:
        both = sorted(k for k, v in self.bricks.items()
                      if len(v.splits & set(SPLITS)) > 1)
        stray = {s: n for s, n in self.ok.items() if s not in SPLITS and n}
        nums = {"bricks": len(self.bricks), "in_two_splits": len(both),
                "examples": [{"brickname": k, "splits": sorted(self.bricks[k].splits)}
                             for k in both[:EXAMPLES]],
                "ok_rows_outside_train_val_test": stray}
        detail = f"{len(self.bricks):,} bricks, {len(both):,} in more than one split"
        if both:
            detail += _ex(f"{k} in {'+'.join(sorted(self.bricks[k].splits))}"
                          for k in both[:EXAMPLES])
        if stray:
            detail += "; ok rows outside train/val/test: " + ", ".join(
                f"{s} {n:,}" for s, n in stray.items())
        return Check("splits: no brick in two splits", _status(fail=bool(both or stray)),
                     detail, nums)

    def check_shares(self) -> Check:
        n = sum(self.rows.values())
        per = {s: self.bricks_in(s) for s in self.rows}
        nums = {"rows": dict(self.rows), "ok": dict(self.ok), "bricks": per,
                "share": {s: k / n for s, k in self.rows.items()} if n else {}}
        detail = ", ".join(f"{s} {_pct(k, n)} ({k:,} rows, {per[s]:,} bricks)"
                           for s, k in sorted(self.rows.items()))
        return Check("splits: row shares per region_split", PASS, detail or "no rows", nums)

    def bricks_in(self, split) -> int:
        return sum(1 for v in self.bricks.values() if split in v.splits)

    def tables(self) -> list:
        n = sum(self.rows.values())
        return [Table("Rows per region_split", ["split", "rows", "share", "ok rows", "bricks"],
                      [[s, _g(k), _pct(k, n), _g(self.ok[s]), _g(self.bricks_in(s))]
                       for s, k in sorted(self.rows.items())])]


# --------------------------------------------------------------------------- completeness
class CompletenessAcc:
    """Ok injections per theta_e / psf_fwhm_used_r bin: the denominators of the user's
    completeness curves (all, clean subset, no PSF fallback) and their mean arc_snr."""

    def __init__(self, bands):
        self.bands = bands
        k = len(RESOLUTION_EDGES) + 1
        self.all, self.clean, self.nofb, self.snr = (np.zeros(k, np.int64), np.zeros(k, np.int64),
                                                     np.zeros(k, np.int64), np.zeros(k))

    def update(self, b: Batch) -> None:
        inj = b.injection
        if not inj.any():
            return
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = b.num("theta_e_arcsec") / b.num("psf_fwhm_used_r")
            clean = b.num("bad_pixel_frac") <= CLEAN_BAD_PIXEL_FRAC
        nofb = np.ones(b.n, bool)
        for band in self.bands:
            nofb &= b.num(f"psf_source_{band}") != SOURCE_R_FALLBACK
        good = inj & np.isfinite(ratio)
        idx = np.digitize(ratio[good], RESOLUTION_EDGES)
        k = self.all.size
        self.all += np.bincount(idx, minlength=k)
        self.clean += np.bincount(idx[clean[good]], minlength=k)
        self.nofb += np.bincount(idx[nofb[good]], minlength=k)
        snr = np.nan_to_num(b.num("arc_snr")[good])
        self.snr += np.bincount(idx, weights=snr, minlength=k)

    def labels(self) -> list:
        return BinnedMean(RESOLUTION_EDGES).labels()

    def tables(self) -> list:
        rows = [[lab, _g(int(a)), _g(int(c)), _g(int(f)), _g(s / a if a else None)]
                for lab, a, c, f, s in zip(self.labels(), self.all, self.clean, self.nofb,
                                           self.snr)]
        return [Table("Ok injections by theta_e / psf_fwhm_used_r (completeness denominators)",
                      ["theta_e / psf_r", "all",
                       f"clean (bad_pixel_frac <= {CLEAN_BAD_PIXEL_FRAC:g})",
                       "no PSF fallback", "mean arc_snr"], rows)]


# --------------------------------------------------------------------------- the run
@dataclass
class Run:
    out: str
    experiment_id: str
    fs: object               # fsspec filesystem for s3://, else None
    root: str                # <out> as a local path or an S3 key
    config: dict | None
    bands: tuple
    metrics: ds.Dataset | None = None   # opened once by open_run

    def path(self, *parts) -> str:
        return "/".join([self.root, *parts])

    def dataset(self, name) -> ds.Dataset:
        path = self.path(name, self.experiment_id)
        try:
            return ds.dataset(path, format="parquet", partitioning="hive", filesystem=self.fs)
        except Exception as exc:  # noqa: BLE001 - unreadable input: one line
            raise ValidateError(f"cannot read {name} of {self.out}: {_one_line(exc)}") from None


def _one_line(exc) -> str:
    return (" ".join(str(exc).split()) or type(exc).__name__)[:300]


def _s3_options() -> dict:
    from .io.coadd import s3_endpoint_from_env

    opts = {"skip_instance_cache": True}
    endpoint = s3_endpoint_from_env()
    if endpoint:
        opts["endpoint_url"] = endpoint
    return opts


def _s3fs():
    import fsspec

    return fsspec.filesystem("s3", **_s3_options())


def open_run(out: str, experiment_id: str) -> Run:
    """The run under ``out`` (local folder or s3:// URL); ValidateError when its metrics
    cannot be found or lack a column the checks need."""
    from .io.writer import CONFIG_NAME, Store

    out = str(out).rstrip("/")
    store = Store(out, _s3_options() if out.startswith("s3://") else None)
    fs, remote = store.fs, store.remote
    root = store._key(store.out)
    exists = (lambda p: fs.exists(p)) if remote else os.path.isdir
    try:
        if not exists(f"{root}/metrics/{experiment_id}"):
            found = fs.ls(f"{root}/metrics") if remote and fs.exists(f"{root}/metrics") else (
                os.listdir(f"{root}/metrics") if not remote and os.path.isdir(
                    f"{root}/metrics") else [])
            names = sorted(os.path.basename(str(p).rstrip("/")) for p in found)
            raise ValidateError(f"{out}: no metrics for experiment {experiment_id!r} "
                                f"(found: {', '.join(names) or 'none'})")
        config = store.read_json(CONFIG_NAME)
    except ValidateError:
        raise
    except Exception as exc:  # noqa: BLE001 - unreachable output: one line
        raise ValidateError(f"cannot read {out}: {_one_line(exc)}") from None
    run = Run(out, experiment_id, fs, root, config, ())
    run.metrics = run.dataset("metrics")
    schema = run.metrics.schema
    bands = tuple(b for b in "grz" if f"psf_fwhm_used_{b}" in schema.names)
    if config and config.get("options", {}).get("bands"):
        bands = tuple(b for b in config["options"]["bands"].split(",") if b in bands) or bands
    run.bands = bands
    missing = [c for c in metrics_columns(bands) if c not in schema.names]
    if missing or "r" not in bands:
        raise ValidateError(f"{out}: metrics of {experiment_id} lack column(s) "
                            f"{', '.join(missing or ['psf_fwhm_used_r'])}")
    return run


def metrics_columns(bands) -> list:
    per_band = [f"{p}_{b}" for b in bands for p in ("psf_fwhm_used", "psf_source", "psfsize",
                                                     "total_injected_flux")]
    return ["task_id", "brickname", "ra", "dec", "region_split", "lens_model", "cutout_ok",
            "error", "theta_e_arcsec", "src_dmag", "src_x_arcsec", "src_y_arcsec", "arc_snr",
            "arc_snr_opt", "magnification", "bad_pixel_frac", "wise_brightmask_frac",
            *per_band]


def _relative(path: str, top: str) -> str:
    path, top = path.replace(os.sep, "/"), top.replace(os.sep, "/").rstrip("/") + "/"
    return path.removeprefix(top)


def read_fragments(dataset: ds.Dataset, columns, window=FRAGMENT_READAHEAD):
    """(table, path) of each part of ``dataset`` in order, ``columns`` only (hive partition
    columns from the path), read by a few threads at most ``window`` parts ahead. Memory
    follows the window, not the dataset: each file is opened on its own (a dataset's
    fragments keep every file's Parquet metadata once read, and its scanner reads ahead of a
    slow consumer without bound)."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    schema = dataset.schema
    fs = dataset.filesystem
    wanted = [schema.field(c) for c in columns]

    def read(path):
        import pyarrow.parquet as pq

        keys = dict(part.split("=", 1) for part in path.split("/") if "=" in part)
        with fs.open_input_file(path) as fh:
            f = pq.ParquetFile(fh)
            here = set(f.schema_arrow.names)
            t = f.read(columns=[c.name for c in wanted if c.name in here], use_threads=False)
        cols = [t[c.name] if c.name in here else
                pa.array([_unquote(keys.get(c.name))] * t.num_rows, pa.string())
                for c in wanted]
        return pa.table(cols, names=[c.name for c in wanted])

    with ThreadPoolExecutor(max_workers=min(window, 8)) as pool:
        ahead = deque()
        for path in dataset.files:
            ahead.append((pool.submit(read, path), path))
            if len(ahead) >= window:
                fut, p = ahead.popleft()
                yield fut.result(), p
        while ahead:
            fut, p = ahead.popleft()
            yield fut.result(), p


def _unquote(value):
    from urllib.parse import unquote

    return None if value is None else unquote(value)


def scan_metrics(run: Run, accs, splits: SplitsAcc, batch_rows=BATCH_ROWS, log=None) -> int:
    """Stream the metrics through every accumulator; returns the rows read. Parts are small
    (a unit's rows), so they are gathered to ``batch_rows`` rows before the accumulators see
    them; ``splits`` notes which part holds which brick on the way."""
    dataset = run.metrics
    top = run.path("metrics", run.experiment_id)
    n, buf, held = 0, [], 0

    def flush():
        t = pa.concat_tables(buf).combine_chunks()
        buf.clear()
        for rb in t.to_batches(max_chunksize=batch_rows):
            b = Batch(rb)
            for acc in accs:
                acc.update(b)

    try:
        for t, path in read_fragments(dataset, metrics_columns(run.bands)):
            if not t.num_rows:
                continue
            splits.note_part(t, _relative(path, top))
            buf.append(t)
            held += t.num_rows
            if held >= batch_rows:
                flush()
                held = 0
            n += t.num_rows
            if log and n // 1_000_000 != (n - t.num_rows) // 1_000_000:
                log(f"validate: {n:,} metrics rows read")
        if buf:
            flush()
    except ValidateError:
        raise
    except Exception as exc:  # noqa: BLE001 - a corrupt part: one line
        raise ValidateError(f"cannot read metrics of {run.out}: {_one_line(exc)}") from None
    return n


def _scan_ids(dataset: ds.Dataset, what: str) -> np.ndarray:
    try:
        parts = [_ids(t["task_id"].combine_chunks()) for t, _ in
                 read_fragments(dataset, ["task_id"])]
    except Exception as exc:  # noqa: BLE001
        raise ValidateError(f"cannot read task_id of {what}: {_one_line(exc)}") from None
    return np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)


def read_manifest_ids(path: str) -> np.ndarray:
    try:
        fs = _s3fs() if str(path).startswith("s3://") else None
        d = ds.dataset(str(path)[5:] if fs else str(path), format="parquet", filesystem=fs)
        if "task_id" not in d.schema.names:
            raise ValidateError(f"manifest {path}: no task_id column")
    except ValidateError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise ValidateError(f"cannot read manifest {path}: {_one_line(exc)}") from None
    return _scan_ids(d, f"manifest {path}")


# --------------------------------------------------------------------------- stamp sample
def _brick_hash(name: str) -> float:
    import xxhash

    return xxhash.xxh64_intdigest(str(name).encode()) / 2.0 ** 64


def choose_bricks(bricks: dict, fraction: float, least=MIN_SAMPLE_BRICKS) -> list:
    """Bricks with ok rows whose name hashes below ``fraction`` (the same every time), or the
    ``least`` lowest hashes when that is fewer; none for fraction 0."""
    if fraction <= 0:
        return []
    cand = sorted((_brick_hash(k), k) for k, v in bricks.items() if v.ok)
    chosen = [k for h, k in cand if h < fraction]
    return chosen if len(chosen) >= least else [k for _, k in cand[:least]]


def _tensor(col: pa.ChunkedArray, i: int):
    v = col[i]
    return v.to_numpy() if v.is_valid else None


class SampleAcc:
    """Stamps of the sampled bricks: injection - CONTROL against total_injected_flux_<b>,
    CONTROL stamps against the raw cutout (when the coadds are given), gallery candidates."""

    def __init__(self, bands):
        self.bands = bands
        self.bricks = self.rows = self.pairs = self.pair_bad = self.unpaired = 0
        self.worst = 0.0
        self.pair_examples = []
        self.stamp_bad = 0
        self.stamp_examples = []
        self.raw = Counter()
        self.raw_examples = []
        self.cut_errors = Counter()
        self.gallery = []        # heap of (-hash, task_id, record)

    # ---- per brick
    def add_brick(self, brick, metrics: list, stamps: dict, source, stamp_size) -> None:
        self.bricks += 1
        self.rows += len(metrics)
        for r in metrics:
            s = stamps.get(r["task_id"])
            if s is None or (s["image"] is None) == bool(r["cutout_ok"]):
                self.stamp_bad += 1
                if len(self.stamp_examples) < EXAMPLES:
                    self.stamp_examples.append(r["task_id"])
        ok = [r for r in metrics if r["cutout_ok"] and stamps.get(r["task_id"]) is not None
              and stamps[r["task_id"]]["image"] is not None]
        self._pairs(ok, stamps)
        if source is not None and ok:
            self._raw(brick, ok, stamps, source, stamp_size)

    def _pairs(self, ok, stamps) -> None:
        controls = {}
        for r in ok:
            if r["lens_model"] == CONTROL:
                controls.setdefault((r["ra"], r["dec"]), r)
        for r in ok:
            if r["lens_model"] == CONTROL:
                continue
            c = controls.get((r["ra"], r["dec"]))
            if c is None:
                self.unpaired += 1
                continue
            inj = stamps[r["task_id"]]["image"].astype(np.float64)
            ctrl = stamps[c["task_id"]]["image"].astype(np.float64)
            self.pairs += 1
            self._compare_flux(r, inj, ctrl)
            self._keep_for_gallery(r, c, inj, ctrl)

    def _compare_flux(self, r, inj, ctrl) -> None:
        both = np.isfinite(inj) & np.isfinite(ctrl)
        diff = np.where(both, inj - ctrl, 0.0).sum(axis=(-2, -1))
        scale = np.where(both, np.abs(inj) + np.abs(ctrl), 0.0).sum(axis=(-2, -1))
        flux = np.array([r.get(f"total_injected_flux_{b}") for b in self.bands], dtype=float)
        tol = FLUX_TOL_ULP * scale + FLUX_TOL_REL * np.abs(flux)
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.abs(diff - flux) / tol
        ratio = np.where(np.isfinite(ratio), ratio, np.inf)
        self.worst = max(self.worst, float(ratio.max()))
        if (ratio > 1).any():
            self.pair_bad += 1
            if len(self.pair_examples) < EXAMPLES:
                k = int(np.argmax(ratio))
                self.pair_examples.append({"task_id": r["task_id"], "band": self.bands[k],
                                           "difference_sum": float(diff[k]),
                                           "total_injected_flux": float(flux[k]),
                                           "tolerance": float(tol[k])})

    def _keep_for_gallery(self, r, c, inj, ctrl) -> None:
        rec = {"task_id": r["task_id"], "control_id": c["task_id"],
               "brickname": r["brickname"], "theta_e": r.get("theta_e_arcsec"),
               "arc_snr": r.get("arc_snr"), "injection": inj.astype(np.float32),
               "control": ctrl.astype(np.float32)}
        item = (-_brick_hash(f"task{r['task_id']}"), str(r["task_id"]), rec)
        if len(self.gallery) < GALLERY_CANDIDATES:
            heapq.heappush(self.gallery, item)
        elif item[0] > self.gallery[0][0]:
            heapq.heapreplace(self.gallery, item)

    def _raw(self, brick, ok, stamps, source, stamp_size) -> None:
        """Re-cut every sampled ok row from the coadds: a CONTROL stamp must be the cutout bit
        for bit; an injection keeps its invvar and maskbits; a psf_source 0 value is the
        psfsize map at the stamp centre."""
        from .io.cutout import cut_brick

        raw = cut_brick(source, brick, [r["ra"] for r in ok], [r["dec"] for r in ok],
                        stamp_size, self.bands)
        for k, r in enumerate(ok):
            if raw.error[k] is not None:
                self.cut_errors[raw.error[k]] += 1
                continue
            s = stamps[r["task_id"]]
            kind = "control" if r["lens_model"] == CONTROL else "injection"
            planes = [("invvar", raw.invvar[k]), ("maskbits", raw.maskbits[k])]
            if kind == "control":
                planes.insert(0, ("image", raw.image[k]))
            same = all(s[name] is not None and _bitwise_equal(s[name], want)
                       for name, want in planes)
            self.raw[f"{kind}_compared"] += 1
            self.raw[f"{kind}_equal"] += int(same)
            for j, b in enumerate(self.bands):
                if r.get(f"psf_source_{b}") == SOURCE_MAP:
                    self.raw["psf_compared"] += 1
                    eq = r.get(f"psf_fwhm_used_{b}") == float(raw.psfsize[k, j])
                    self.raw["psf_equal"] += int(eq)
                    same = same and eq
            if not same and len(self.raw_examples) < EXAMPLES:
                self.raw_examples.append({"task_id": r["task_id"], "kind": kind})

    # ---- checks
    def check_stamps(self) -> Check:
        nums = {"bricks": self.bricks, "rows": self.rows, "inconsistent": self.stamp_bad,
                "examples": self.stamp_examples}
        return Check("rows: sampled stamps match their metrics",
                     _status(fail=self.stamp_bad > 0),
                     f"{self.rows:,} rows of {self.bricks:,} sampled bricks: {self.stamp_bad:,} "
                     f"without a stamp row, or with an image where cutout_ok is 0 (or none "
                     f"where it is 1){_ex(self.stamp_examples)}", nums)

    def check_flux(self) -> Check:
        name = "physics: injection - CONTROL = total_injected_flux (sample)"
        nums = {"pairs": self.pairs, "disagree": self.pair_bad, "unpaired": self.unpaired,
                "worst_error_over_tolerance": self.worst, "examples": self.pair_examples,
                "tolerance": f"{FLUX_TOL_ULP:.3g} * sum(|inj| + |ctrl|) + "
                             f"{FLUX_TOL_REL:g} * |flux|"}
        if not self.pairs:
            return Check(name, WARN, f"not judged: no injection with a CONTROL at the same "
                         f"brick, ra, dec in the sample ({self.unpaired} unpaired)", nums)
        detail = (f"{self.pairs:,} pairs, {self.pair_bad:,} disagree; worst error "
                  f"{self.worst:.3g} x tolerance ({FLUX_TOL_ULP:.3g} sum|pixels| + "
                  f"{FLUX_TOL_REL:g} |flux|)")
        if self.pair_examples:
            e = self.pair_examples[0]
            detail += (f"; e.g. task {e['task_id']} {e['band']}: sum of difference "
                       f"{e['difference_sum']:.6g}, recorded {e['total_injected_flux']:.6g}")
        return Check(name, _status(fail=self.pair_bad > 0), detail, nums)

    def check_raw(self) -> Check:
        r = self.raw
        nums = {**dict(r), "cut_errors": dict(self.cut_errors), "examples": self.raw_examples}
        name = "controls: stamps equal the raw cutout (sample)"
        if not r["control_compared"] and not r["injection_compared"]:
            return Check(name, WARN, "not judged: no sampled row could be re-cut"
                         + (f" ({next(iter(self.cut_errors))})" if self.cut_errors else ""),
                         nums)
        bad = (r["control_compared"] - r["control_equal"]
               + r["injection_compared"] - r["injection_equal"] + r["psf_compared"]
               - r["psf_equal"])
        detail = (f"CONTROL stamps equal to the cutout bit for bit: {r['control_equal']:,} of "
                  f"{r['control_compared']:,}; injections with its invvar and maskbits: "
                  f"{r['injection_equal']:,} of {r['injection_compared']:,}; psf_source 0 "
                  f"values equal to the psfsize map: {r['psf_equal']:,} of "
                  f"{r['psf_compared']:,}")
        if self.cut_errors:
            detail += f"; {sum(self.cut_errors.values()):,} rows could not be re-cut"
        if self.raw_examples:
            detail += _ex([e["task_id"] for e in self.raw_examples])
        return Check(name, _status(fail=bad > 0, warn=bool(self.cut_errors)), detail, nums)

    def gallery_rows(self, k=GALLERY_ROWS) -> list:
        """Up to k pairs spread over the arc_snr range of the candidates."""
        recs = sorted((rec for _, _, rec in self.gallery),
                      key=lambda r: (r["arc_snr"] if r["arc_snr"] is not None else -1,
                                     str(r["task_id"])))
        if len(recs) <= k:
            return recs
        idx = np.unique(np.round(np.linspace(0, len(recs) - 1, k)).astype(int))
        return [recs[i] for i in idx]


def _bitwise_equal(a, b) -> bool:
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    return a.shape == b.shape and a.dtype.itemsize == b.dtype.itemsize and bool(
        np.array_equal(a.view(f"u{a.dtype.itemsize}"), b.view(f"u{b.dtype.itemsize}")))


SAMPLE_METRICS = ("task_id", "brickname", "ra", "dec", "lens_model", "cutout_ok",
                  "theta_e_arcsec", "arc_snr")


def _read_part(run: Run, dataset: str, rel: str, columns, bricks) -> pa.Table:
    path = run.path(dataset, run.experiment_id, rel)
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path, columns=list(columns), filesystem=run.fs,
                             filters=[("brickname", "in", sorted(bricks))])
    except FileNotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001
        if run.fs is not None and not run.fs.exists(path):
            return None
        raise ValidateError(f"cannot read {dataset} part {path}: {_one_line(exc)}") from None


def check_sample(run: Run, bricks: dict, chosen: list, source=None, log=None) -> SampleAcc:
    """Read the stamps (and metrics) parts holding the chosen bricks, one part at a time, and
    hand each brick to the SampleAcc once all its parts are read."""
    acc = SampleAcc(run.bands)
    want = set(chosen)
    left = {k: set(bricks[k].parts) for k in chosen}
    pending = {k: ([], {}) for k in chosen}
    mcols = list(SAMPLE_METRICS) + [f"{p}_{b}" for b in run.bands for p in (
        "total_injected_flux", "psf_fwhm_used", "psf_source")]
    scols = ["task_id", "brickname", "stamp_size", "image"] + (
        ["invvar", "maskbits"] if source is not None else [])
    stamp_size = _stamp_size(run)
    for rel in sorted(set().union(*left.values()) if left else ()):
        here = {k for k in want if rel in left[k]}
        m = _read_part(run, "metrics", rel, mcols, here)
        s = _read_part(run, "stamps", rel, scols, here)
        for r in (m.to_pylist() if m is not None else []):
            pending[r["brickname"]][0].append(r)
        if s is not None:
            ids = s["task_id"].to_pylist()
            bricks_s = s["brickname"].to_pylist()
            for i, tid in enumerate(ids):
                pending[bricks_s[i]][1][tid] = {c: _tensor(s[c], i) for c in scols[3:]}
            if s.num_rows:
                stamp_size = int(s["stamp_size"][0].as_py())
        for k in here:
            left[k].discard(rel)
            if not left[k]:
                metrics, stamps = pending.pop(k)
                acc.add_brick(k, metrics, stamps, source, stamp_size)
    if log:
        log(f"validate: stamps of {acc.bricks} sampled bricks read ({acc.rows} rows)")
    return acc


def reread_psf(source, examples, bands, stamp_size) -> list:
    """The psfsize map at the centre of each map-sourced audit example, read back."""
    from .io.cutout import cut_brick

    out = []
    for e in examples:
        if e["source"] != 0:
            continue
        raw = cut_brick(source, e["brickname"], [e["ra"]], [e["dec"]], stamp_size, bands)
        j = list(bands).index(e["band"])
        value = float(raw.psfsize[0, j]) if raw.error[0] is None else None
        out.append({"task_id": e["task_id"], "band": e["band"], "recorded": e["value"],
                    "map": value, "equal": value == e["value"]})
    return out


# --------------------------------------------------------------------------- entry point
def default_report_dir(out: str, experiment_id: str) -> str:
    """``<OUT>/_validate/<ID>`` for a local run, ``./_validate/<ID>`` for an S3 one."""
    if str(out).startswith("s3://"):
        return os.path.abspath(os.path.join("_validate", experiment_id))
    return os.path.join(os.path.abspath(out), "_validate", experiment_id)


def validate_run(out: str, experiment_id: str, *, manifest: str | None = None,
                 report_dir: str | None = None, sample: float = DEFAULT_SAMPLE,
                 coadd_root: str | None = None, coadd_layout: str | None = None,
                 batch_rows: int = BATCH_ROWS, write: bool = True,
                 log=None) -> ValidateResult:
    """Every check of ``gpu-inject validate`` on the run under ``out``; the report written
    to ``report_dir`` (default :func:`default_report_dir`). ValidateError for an input that
    cannot be read."""
    log = log or (lambda m: None)
    if report_dir and str(report_dir).startswith("s3://"):
        raise ValidateError("--report: give a local folder")
    run = open_run(out, experiment_id)
    manifest_ids = read_manifest_ids(manifest) if manifest else None
    source = _coadds(run, coadd_root, coadd_layout)
    bands = run.bands
    rows, controls, physics = RowsAcc(), ControlsAcc(bands), PhysicsAcc(bands)
    psf, quality, splits = PsfAcc(bands), QualityAcc(), SplitsAcc()
    complete = CompletenessAcc(bands)
    n = scan_metrics(run, [rows, controls, physics, psf, quality, splits, complete], splits,
                     batch_rows, log)
    log(f"validate: {n:,} metrics rows read")
    ids = rows.sorted_ids()
    stamp_ids = _scan_ids(run.dataset("stamps"), f"stamps of {out}")
    chosen = choose_bricks(splits.bricks, sample)
    smp = check_sample(run, splits.bricks, chosen, source, log)
    reread = None
    if source is not None:
        low = [e for b in bands for e in psf.low_examples[b].items()]
        reread = reread_psf(source, low, bands, _stamp_size(run))
    notes = _notes(run, manifest, source, sample, chosen, splits)
    checks = [
        check_task_ids(ids, manifest_ids), check_stamp_ids(ids, stamp_ids),
        check_outcomes(rows), check_config(run.config, rows, experiment_id),
        *([smp.check_stamps()] if chosen else []), controls.check(),
        *([smp.check_raw()] if source is not None else []),
        physics.check_coverage(), physics.check_theta_trend(), physics.check_dmag_trend(),
        physics.check_magnification(),
        *([smp.check_flux()] if chosen else []),
        psf.check_positive(), psf.check_provenance(), psf.check_low(reread),
        psf.check_splits(), quality.check(), splits.check_bricks(), splits.check_shares(),
    ]
    tables = {"rows": [_error_table(rows)], "physics": physics.tables(), "psf": psf.tables(),
              "quality": quality.tables(), "splits": splits.tables(),
              "completeness": complete.tables()}
    result = ValidateResult(run.out, experiment_id, checks, tables, notes)
    if write:
        result.report_dir = report_dir or default_report_dir(out, experiment_id)
        write_report(result, result.report_dir, physics=physics, psf=psf, complete=complete,
                     sample=smp, bands=bands)
    return result


def _coadds(run: Run, root, layout):
    if not root:
        return None
    from .io.coadd import CoaddError, CoaddSource

    layout = layout or (run.config or {}).get("options", {}).get("coadd_layout") or \
        "legacysurvey"
    try:
        source = CoaddSource(root, layout)
        source.check_root()
    except CoaddError as exc:
        raise ValidateError(f"--coadd-root: {exc}") from None
    return source


def _stamp_size(run: Run) -> int:
    return int((run.config or {}).get("options", {}).get("stamp_size") or 64)


def _error_table(rows: RowsAcc) -> Table:
    return Table("Error reasons (top 10)", ["rows", "reason"],
                 [[_g(c), r] for r, c in rows.errors.most_common(10)])


def _notes(run, manifest, source, sample, chosen, splits) -> list:
    notes = []
    if not manifest:
        recorded = (run.config or {}).get("manifest", {}).get("path")
        notes.append("no --manifest: task ids checked for repeats only, not against the "
                     "manifest" + (f" (the run read {recorded})" if recorded else ""))
    if source is None:
        recorded = (run.config or {}).get("options", {}).get("coadd_root")
        notes.append("no --coadd-root: CONTROL stamps not compared with the raw cutouts, PSF "
                     "audit values not read back" + (f" (the run read {recorded})"
                                                    if recorded else ""))
    if not chosen:
        notes.append("--sample 0: no stamps read (injection - CONTROL not checked)")
    else:
        notes.append(f"stamp sample: {len(chosen):,} of {len(splits.bricks):,} bricks "
                     f"(--sample {sample:g}, at least {MIN_SAMPLE_BRICKS}, chosen by "
                     "xxhash64 of the brick name)")
    return notes


# --------------------------------------------------------------------------- report
SECTIONS = (("rows", "Rows"), ("controls", "Controls"), ("physics", "Physics"), ("psf", "PSF"),
            ("quality", "Quality"), ("splits", "Splits"),
            ("completeness", "Completeness-ready counts"))


def _cell(x) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def _md_table(header, rows) -> list:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |",
             "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _markdown(result: ValidateResult, plots: dict) -> str:
    c = result.counts
    lines = [f"# Validation of `{result.experiment_id}`", "",
             (f"Run `{result.out}`: **{result.status}** ({c[FAIL]} FAIL, {c[WARN]} WARN, "
              f"{c[PASS]} PASS)."), "",
             ("FAIL: the output is wrong. WARN: a person should look. Criteria and tolerances "
              "are stated in each check and in `gpu_inject/validate.py`."), "", "## Checks", ""]
    lines += _md_table(["status", "check", "detail"],
                       [[ch.status, ch.name, ch.detail] for ch in result.checks])
    if result.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in result.notes]
    for key, title in SECTIONS:
        body = []
        for t in result.tables.get(key, []):
            body += ["", f"### {t.title}", ""]
            body += _md_table(t.header, t.rows) if t.rows else ["(none)"]
            if t.note:
                body += ["", t.note]
        for name, caption in plots.get(key, []):
            body += ["", f"![{caption}]({name})"]
        if body:
            lines += ["", f"## {title}"] + body
    return "\n".join(lines) + "\n"


def write_report(result: ValidateResult, folder: str, *, physics, psf, complete, sample,
                 bands) -> str:
    """report.md, checks.json and the PNG plots under ``folder``; returns report.md's path."""
    os.makedirs(folder, exist_ok=True)
    plots = make_plots(folder, physics=physics, psf=psf, complete=complete, sample=sample,
                       bands=bands)
    path = os.path.join(folder, "report.md")
    with open(path, "w") as f:
        f.write(_markdown(result, plots))
    with open(os.path.join(folder, "checks.json"), "w") as f:
        json.dump({"out": result.out, "experiment_id": result.experiment_id,
                   "status": result.status, "counts": result.counts, "notes": result.notes,
                   "checks": [vars(ch) for ch in result.checks]}, f, indent=2,
                  default=_json_default)
    return path


def _json_default(x):
    if isinstance(x, (np.generic,)):
        return x.item()
    if isinstance(x, (set, tuple, np.ndarray)):
        return list(x)
    return str(x)


def _figure(ncols, nrows=1, w=4.2, h=3.4):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w * ncols, h * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def make_plots(folder, *, physics, psf, complete, sample, bands) -> dict:
    """section -> [(file name, caption)]: matplotlib without pyplot (Agg canvas)."""
    out = {}

    def save(fig, name, section, caption):
        fig.savefig(os.path.join(folder, name), dpi=90)
        out.setdefault(section, []).append((name, caption))

    save(_plot_trends(physics), "flux_trends.png", "physics",
         "mean total_injected_flux_r against theta_e and src_dmag")
    save(_plot_arc_metrics(physics), "arc_metrics.png", "physics",
         "arc_snr, magnification and total_injected_flux_r of ok injections")
    save(_plot_psf(psf, bands), "psf_by_split.png", "psf",
         "psf_fwhm_used per band and split")
    save(_plot_completeness(complete), "completeness_bins.png", "completeness",
         "ok injections per theta_e / psf_fwhm_used_r bin")
    rows = sample.gallery_rows() if sample is not None else []
    if rows:
        save(_plot_gallery(rows, bands), "gallery.png", "physics",
             "sample stamps: injection, CONTROL, difference (r) and grz colour")
    return out


def _plot_trends(physics):
    fig, axes = _figure(2)
    for ax, binned, xlabel in ((axes[0, 0], physics.theta_fine, "theta_e (arcsec)"),
                               (axes[0, 1], physics.dmag, "src_dmag (mag)")):
        mean, se = binned.means()
        x = np.arange(mean.size)
        keep = binned.n > 0
        ax.errorbar(x[keep], mean[keep], yerr=np.nan_to_num(se[keep]), fmt="o-", capsize=3)
        ax.set_xticks(x, binned.labels(), rotation=30, fontsize=8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("mean total_injected_flux_r (nMgy)")
        for xi, n in zip(x[keep], binned.n[keep]):
            ax.annotate(f"{int(n)}", (xi, 0), xycoords=("data", "axes fraction"),
                        ha="center", va="bottom", fontsize=7, color="grey")
    return fig


def _rebinned(h: Hist, factor: int):
    inner = h.counts[1:-1]
    k = inner.size // factor * factor
    counts = inner[:k].reshape(-1, factor).sum(axis=1)
    return h.edges[:k + 1:factor], counts


def _plot_arc_metrics(physics):
    fig, axes = _figure(3)
    for ax, name in zip(axes[0], ("arc_snr", "magnification", "total_injected_flux_r")):
        h = physics.hists[name]
        edges, counts = _rebinned(h, 10)
        if h.n:
            ax.stairs(counts, edges, fill=True, alpha=0.6)
            lo = max(h.min, edges[0]) if h.min > 0 else edges[0]
            ax.set_xlim(lo / 1.5, max(h.max, lo) * 1.5)
        ax.set_xscale("log")
        zero = int(h.counts[0])
        ax.set_title(f"{name} (n {h.n:,}" + (f", {zero:,} <= 1e-4" if zero else "") + ")",
                     fontsize=9)
        ax.set_ylabel("rows")
    return fig


def _plot_psf(psf, bands):
    fig, axes = _figure(len(bands))
    for ax, band in zip(axes[0], bands):
        hists = [(s, psf.hist[(s, band)]) for s in sorted({s for s, b in psf.hist if b == band})
                 if psf.hist[(s, band)].n]
        if hists:
            lo = min(h.min for _, h in hists)
            hi = max(h.max for _, h in hists)
            step = PSF_EDGES[1] - PSF_EDGES[0]
            factor = int(np.clip(round((hi - lo) / 40 / step), 1, 25))
            pad = max(0.05, 0.05 * (hi - lo))
            for s, h in hists:
                edges, counts = _rebinned(h, factor)
                keep = slice(max(0, np.searchsorted(edges, lo - pad) - 1),
                             np.searchsorted(edges, hi + pad) + 1)
                ax.stairs(counts[keep] / h.n, edges[keep.start:keep.stop + 1],
                          label=f"{s} ({h.n:,})")
            ax.set_xlim(max(0.0, lo - pad), hi + pad)
            if lo - pad < PSF_AUDIT_BELOW < hi + pad:
                ax.axvline(PSF_AUDIT_BELOW, ls="--", color="grey", lw=0.8)
            ax.legend(fontsize=7, loc="upper right")
            ax.set_ylabel(f"share of the split's ok rows per {factor * step:.3g}\"")
        ax.set_xlabel(f"psf_fwhm_used_{band} (arcsec)")
    return fig


def _plot_completeness(complete):
    fig, axes = _figure(1, w=6)
    ax = axes[0, 0]
    x = np.arange(complete.all.size)
    for k, (label, v) in enumerate((("all", complete.all), ("clean", complete.clean),
                                    ("no PSF fallback", complete.nofb))):
        ax.bar(x + (k - 1) * 0.27, v, width=0.27, label=label)
    ax.set_xticks(x, complete.labels())
    ax.set_xlabel("theta_e / psf_fwhm_used_r")
    ax.set_ylabel("ok injections")
    ax.legend(fontsize=8)
    return fig


def _sigma(img) -> float:
    v = img[np.isfinite(img)]
    if not v.size:
        return 1.0
    mad = float(np.median(np.abs(v - np.median(v))))
    return 1.4826 * mad if mad > 0 else (float(np.std(v)) or 1.0)


def _colour(img, bands, sigma):
    """z, r, g as red, green, blue (r where a band is missing), asinh-stretched."""
    from astropy.visualization import make_lupton_rgb

    r = img[bands.index("r")]
    pick = [img[bands.index(b)] if b in bands else r for b in ("z", "r", "g")]
    pick = [np.nan_to_num(p) for p in pick]
    return make_lupton_rgb(*pick, minimum=-sigma, stretch=20 * sigma, Q=8)


def _plot_gallery(rows, bands):
    bands = list(bands)
    fig, axes = _figure(4, nrows=len(rows), w=2.3, h=2.4)
    j = bands.index("r")
    for ax_row, rec in zip(axes, rows):
        inj, ctrl = rec["injection"], rec["control"]
        sigma = _sigma(ctrl[j])
        diff = np.arcsinh((inj[j].astype(np.float64) - ctrl[j]) / sigma)
        dmax = max(float(np.nanmax(np.abs(diff))), 1.0)
        show = [(np.arcsinh(inj[j] / (3 * sigma)), "injection r", "gray", None),
                (np.arcsinh(ctrl[j] / (3 * sigma)), "CONTROL r", "gray", None),
                (diff, "difference r (asinh)", "RdBu_r", (-dmax, dmax)),
                (_colour(inj, bands, sigma), "injection grz", None, None)]
        lim = (np.nanpercentile(show[1][0], 1), np.nanmax(show[0][0]))
        for ax, (im, title, cmap, vr) in zip(ax_row, show):
            if cmap == "gray":
                vr = lim
            ax.imshow(im, origin="lower", cmap=cmap, vmin=None if vr is None else vr[0],
                      vmax=None if vr is None else vr[1], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(title, fontsize=8)
        theta = "-" if rec["theta_e"] is None else f"{rec['theta_e']:.2f}\""
        snr = "-" if rec["arc_snr"] is None else f"{rec['arc_snr']:.1f}"
        ax_row[0].set_ylabel(f"task {rec['task_id']}\n{rec['brickname']}\ntheta_e {theta}, "
                             f"snr {snr}", fontsize=7)
    return fig
