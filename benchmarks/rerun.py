"""Is every figure reproducible within its printed spread? Compare two runs of the suite.

    scripts/bench_suite.sh cpu2 && cp -r benchmarks/results /tmp/first
    scripts/bench_suite.sh cpu2
    python benchmarks/rerun.py /tmp/first benchmarks/results --label cpu2 --json OUT.json

For every timed figure that the first run printed with a spread (the min and max of its
repeats), the second run's median must lie inside that spread: ``within``, else ``outside``
with how far, relative to the first median. Figures measured once (no spread: lenstronomy's
and caustics' rates, the accuracy benchmark's throughputs, peak memory) are listed with
their relative change, as ``no spread``. Exit status 0 when no figure is outside.
"""
import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import report  # noqa: E402


def _spread(rates):
    """(median, min, max) of a list of rates."""
    return statistics.median(rates), min(rates), max(rates)


def figures(kind, d):
    """{figure name: (median, low, high)} (low = high = None when measured once) of one
    result file of ``kind`` (engine-sweep, vs-lenstronomy, pipeline..., cutout, memory,
    accuracy); units: stamps/s or MiB."""
    out = {}
    if kind == "engine-sweep":
        for p in d.get("points", []):
            out[f"engine {p['backend']} {p['stamp_size']}px batch {p['batch_size']} "
                f"stamps/s"] = (p["stamps_per_s"], p["stamps_per_s_min"], p["stamps_per_s_max"])
        for p in d.get("threads", []):
            out[f"engine {p['backend']} {p['threads']} threads stamps/s"] = (
                p["stamps_per_s"], p["stamps_per_s_min"], p["stamps_per_s_max"])
    elif kind == "vs-lenstronomy":
        g = d["gpu_inject"]
        out["vs-lenstronomy: ours stamps/s"] = (g["stamps_per_s"], g["stamps_per_s_min"],
                                               g["stamps_per_s_max"])
        out["vs-lenstronomy: lenstronomy stamps/s"] = (d["lenstronomy"]["stamps_per_s"],
                                                       None, None)
    elif kind.startswith("pipeline") and "wall_s_all" in d:
        rates = [d["rows"] / w for w in d["wall_s_all"]]
        out[f"{kind} stamps/s"] = _spread(rates)
    elif kind == "cutout":
        for r in d["results"]:
            rates = [r["stamps_per_brick"] / s for s in r["seconds_all"]]
            out[f"cutout {r['strategy']} {r['stamps_per_brick']}/brick stamps/s"] = (
                _spread(rates))
    elif kind == "memory":
        for r in d:
            out[f"memory batch {r['batch_size']} peak MiB"] = (r["peak_rss_mib"], None, None)
    elif kind == "accuracy":
        for k, v in d.get("throughput", {}).items():
            if "stamps_per_s" not in k:
                continue
            for sub, rate in (v.items() if isinstance(v, dict) else [("", v)]):
                out[f"accuracy {k} {sub}".rstrip()] = (rate, None, None)
    return out


def load(folder, label):
    """{kind: parsed JSON} of the newest result file of each kind for ``label``."""
    return {kind: d for kind, (_, d) in report.load(folder).get(label, {}).items()}


def compare(first, second):
    """Rows (figure, first median, low, high, second median, relative change, verdict)."""
    rows = []
    for kind in sorted(set(first) & set(second)):
        a, b = figures(kind, first[kind]), figures(kind, second[kind])
        for name in sorted(set(a) & set(b)):
            med, lo, hi = a[name]
            new = b[name][0]
            change = new / med - 1 if med else float("nan")
            if lo is None:
                verdict = "no spread"
            elif lo <= new <= hi:
                verdict = "within"
            else:
                verdict = "outside"
            rows.append((name, med, lo, hi, new, change, verdict))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("first", help="folder of the first run's result files")
    ap.add_argument("second", help="folder of the rerun's result files")
    ap.add_argument("--label", required=True, help="machine label of the files (e.g. cpu2)")
    ap.add_argument("--json", help="write the comparison here")
    a = ap.parse_args(argv)
    first, second = load(a.first, a.label), load(a.second, a.label)
    if not first or not second:
        sys.exit(f"no result files for label {a.label!r} in {a.first if not first else a.second}")
    rows = compare(first, second)
    if not rows:
        sys.exit("the two runs have no figure in common")
    print(f"{'figure':58s} {'first':>9s} {'spread':>19s} {'rerun':>9s} {'change':>7s}  verdict")
    for name, med, lo, hi, new, change, verdict in rows:
        spread = f"{lo:,.1f} - {hi:,.1f}" if lo is not None else "-"
        print(f"{name:58s} {med:9,.1f} {spread:>19s} {new:9,.1f} {change:+7.1%}  {verdict}")
    counts = {v: sum(r[6] == v for r in rows) for v in ("within", "outside", "no spread")}
    print(", ".join(f"{n} {v}" for v, n in counts.items()))
    if a.json:
        Path(a.json).write_text(json.dumps({
            "label": a.label, "counts": counts,
            "figures": [dict(zip(("figure", "first", "low", "high", "rerun", "change",
                                  "verdict"), r)) for r in rows]}, indent=1))
    return 1 if counts["outside"] else 0


if __name__ == "__main__":
    sys.exit(main())
