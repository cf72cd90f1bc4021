"""Result files -> one Markdown report with tables and PNG plots, machines side by side.

Reads ``<date>-<machine>-<kind>.json`` files (what ``scripts/bench_suite.sh`` and
``scripts/gpu_check.sh`` write under benchmarks/results/), keeps the newest date per machine
and kind, and writes ``report.md`` plus ``engine_batch.png``, ``threads.png`` and
``pipeline_stages.png`` into ``--out``.

    python benchmarks/report.py benchmarks/results --out benchmarks/results/report
"""
import argparse
import glob
import json
import os
import re
import sys

KINDS = ("engine-sweep", "vs-lenstronomy", "accuracy", "memory", "cutout",
         "pipeline-injections", "pipeline-memory", "pipeline", "bench", "agreement",
         "projection", "rerun")
NAME = re.compile(r"^(\d{4}-\d{2}-\d{2})-(.+?)-(" + "|".join(KINDS) + r")\.json$")


def load(folder):
    """{machine: {kind: (date, data)}}, the newest date per machine and kind."""
    found = {}
    for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
        m = NAME.match(os.path.basename(path))
        if not m:
            continue
        date, machine, kind = m.groups()
        with open(path) as f:
            data = json.load(f)
        have = found.setdefault(machine, {}).get(kind)
        if have is None or have[0] <= date:
            found[machine][kind] = (date, data)
    return found


def _save(fig, plots, name, alt):
    """Write the figure as plots/name and return its Markdown image line."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(os.path.join(plots, name), dpi=120)
    plt.close(fig)
    return f"\n\n![{alt}]({name})"


def _table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def _split(p):
    """Medians of copy-in, kernels and copy-out per 1,000 stamps ('-' in older files)."""
    keys = ("copy_in_seconds", "kernel_seconds", "copy_out_seconds")
    if not all(k in p for k in keys):
        return "-"
    return " / ".join(f"{1e6 * p[k] / p['stamps']:,.1f}" for k in keys)


def engine_section(res, plots):
    rows = []
    for machine, kinds in sorted(res.items()):
        if "engine-sweep" not in kinds:
            continue
        date, d = kinds["engine-sweep"]
        for p in d["points"]:
            rows.append((machine, date, p["backend"], p["device"], p["stamp_size"],
                         p["batch_size"], f"{p['stamps_per_s']:,.0f}",
                         f"{p['stamps_per_s_min']:,.0f} - {p['stamps_per_s_max']:,.0f}",
                         _split(p)))
    if not rows:
        return ""
    text = "## Engine throughput (render + PSF + inject + metrics, grz)\n\n" + _table(
        ("machine", "date", "backend", "device", "stamp", "batch", "stamps/s (median)",
         "min - max", "copy-in / kernels / copy-out, ms per 1k stamps"), rows)
    if plots is not None:
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for machine, kinds in sorted(res.items()):
            if "engine-sweep" not in kinds:
                continue
            pts = kinds["engine-sweep"][1]["points"]
            for key in sorted({(p["backend"], p["stamp_size"]) for p in pts}):
                sel = sorted((p for p in pts if (p["backend"], p["stamp_size"]) == key),
                             key=lambda p: p["batch_size"])
                x = [p["batch_size"] for p in sel]
                ax.errorbar(x, [p["stamps_per_s"] for p in sel],
                            yerr=[[p["stamps_per_s"] - p["stamps_per_s_min"] for p in sel],
                                  [p["stamps_per_s_max"] - p["stamps_per_s"] for p in sel]],
                            marker="o", capsize=3, label=f"{machine} {key[0]} {key[1]}px")
        ax.set(xscale="log", yscale="log", xlabel="batch size (stamps)",
               ylabel="stamps/s", title="Engine throughput")
        ax.legend(fontsize=7)
        text += _save(fig, plots, "engine_batch.png", "engine throughput against batch size")
    return text + "\n"


def threads_section(res, plots):
    rows, curves = [], {}
    for machine, kinds in sorted(res.items()):
        if "engine-sweep" not in kinds or not kinds["engine-sweep"][1].get("threads"):
            continue
        pts = kinds["engine-sweep"][1]["threads"]
        base = pts[0]["stamps_per_s"] / pts[0]["threads"]
        for p in pts:
            rows.append((machine, p["threads"], f"{p['stamps_per_s']:,.0f}",
                         f"{p['stamps_per_s'] / (base * p['threads']):.0%}"))
        curves[machine] = pts
    if not rows:
        return ""
    text = "## CPU scaling with threads (64x64 grz)\n\n" + _table(
        ("machine", "threads", "stamps/s", "parallel efficiency"), rows)
    if plots is not None:
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.5))
        for machine, pts in curves.items():
            ax.plot([p["threads"] for p in pts], [p["stamps_per_s"] for p in pts], "o-",
                    label=machine)
        ax.set(xlabel="Numba threads", ylabel="stamps/s", title="CPU backend scaling")
        ax.legend(fontsize=7)
        text += _save(fig, plots, "threads.png", "CPU scaling")
    return text + "\n"


def references_section(res):
    """Speed beside accuracy: the full-stamp comparison (vs-lenstronomy) and, per method
    (ours, lenstronomy, caustics where the run had it) and supersampling, the pre-PSF render
    rate with its accuracy (accuracy.json; older files without caustics or per-factor rates
    still read)."""
    rows, acc_rows = [], []
    for machine, kinds in sorted(res.items()):
        if "vs-lenstronomy" in kinds:
            d = kinds["vs-lenstronomy"][1]
            ours, theirs = d["gpu_inject"], d["lenstronomy"]
            rows.append((machine, f"gpu_inject {ours.get('backend', 'cpu')}",
                         f"{ours['stamps_per_s']:,.0f}"))
            rows.append((machine, f"lenstronomy ss4, {theirs.get('processes', '?')} processes",
                         f"{theirs['stamps_per_s']:,.0f}"))
        if "accuracy" in kinds:
            d = kinds["accuracy"][1]
            thr = d["throughput"]
            rates = {"ours": thr["ours_render_stamps_per_s"],
                     **{f"lenstronomy_{k}": v for k, v in
                        thr.get("lenstronomy_stamps_per_s_1proc",
                                {"ss4": thr["lenstronomy_ss4_stamps_per_s_1proc"]}).items()},
                     **{f"caustics_{k}": v for k, v in
                        thr.get("caustics_stamps_per_s_1proc", {}).items()}}
            for method, a in d["summary"].items():
                code, _, ss = method.partition("_ss")
                if method == "ours":
                    who = f"gpu_inject ({thr['ours_numba_threads']} threads)"
                elif code == "caustics":
                    who = (f"caustics {thr.get('caustics_version', '')} upsample {ss} (1 process, "
                           f"{thr.get('caustics_torch_threads', '?')} torch threads, "
                           f"{thr.get('caustics_dtype', '?')})")
                else:
                    who = f"{code} supersampling {ss} (1 process)"
                rate = rates.get(method)
                acc_rows.append((machine, who, f"{rate:,.1f}" if rate and rate < 10 else
                                 f"{rate:,.0f}" if rate else "?",
                                 f"{a['flux']['median']:.1e}", f"{a['flux']['p95']:.1e}",
                                 f"{a['flux']['worst']:.1e}", f"{a['peak']['worst']:.1e}",
                                 a.get("outside_spec", "?")))
    text = ""
    if rows:
        text += ("## Against lenstronomy, same draws, same run (64x64 grz stamps, PSF)\n\n" +
                 _table(("machine", "simulator", "stamps/s"), rows) + "\n\n")
    if acc_rows:
        text += ("## Speed beside accuracy (pre-PSF render, one band, against a converged "
                 "reference; SPEC 6: flux 1e-3, peak 1e-2)\n\n" +
                 _table(("machine", "method", "renders/s", "flux err median", "flux err p95",
                         "flux err worst", "peak err worst", "draws outside SPEC 6"),
                        acc_rows) + "\n")
    return text


def pipeline_section(res, plots):
    rows, bars = [], []
    for machine, kinds in sorted(res.items()):
        for kind in ("pipeline", "pipeline-injections"):
            if kind not in kinds:
                continue
            d = kinds[kind][1]
            label = f"{machine} {'half CONTROL' if d.get('controls', True) else 'injections'}"
            rows.append((label, d["rows"], d["workers"], f"{d['stamps_per_s']:,.0f}",
                         f"{d['stamps_per_s_per_core']:,.0f}", f"{d['engine_share']:.0%}",
                         f"{d['write_share']:.0%}", f"{d['read_thread_share']:.0%}"))
            bars.append((label, d["engine_share"], d["write_share"], d["read_thread_share"]))
    if not rows:
        return ""
    text = ("## End to end: local fpack bricks -> Parquet, 60 stamps per brick\n\n" + _table(
        ("run", "stamps", "readers", "stamps/s", "per core", "engine busy", "writing",
         "reading (process-s / wall)"), rows))
    if plots is not None:
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 0.6 * len(bars) + 1.5))
        for k, (label, e, w, r) in enumerate(bars):
            ax.barh([k - 0.25, k, k + 0.25], [r, e, w], height=0.25,
                    color=["C0", "C1", "C2"])
        ax.set_yticks(range(len(bars)), [b[0] for b in bars], fontsize=7)
        ax.set(xlabel="share of wall time", title="Where the time goes (reading overlaps)")
        ax.legend(["reading (process-s)", "engine", "writing"], fontsize=7)
        text += _save(fig, plots, "pipeline_stages.png", "pipeline stage shares")
    return text + "\n"


def io_memory_section(res):
    parts = []
    rows = []
    for machine, kinds in sorted(res.items()):
        if "cutout" in kinds:
            for r in kinds["cutout"][1]["results"]:
                rows.append((machine, r.get("strategy"), r.get("stamps_per_brick"),
                             f"{r.get('stamps_per_s', 0):,.0f}"))
    if rows:
        parts.append("## Cutting stamps from compressed bricks (one core)\n\n" + _table(
            ("machine", "strategy", "stamps per brick", "stamps/s"), rows))
    rows = []
    for machine, kinds in sorted(res.items()):
        if "memory" in kinds:
            for r in kinds["memory"][1]:
                rows.append((machine, r["stamps"], r["batch_size"],
                             f"{r['peak_rss_mib']:,.0f}"))
        if "pipeline-memory" in kinds:
            d = kinds["pipeline-memory"][1]
            rows.append((machine, f"run of {d['rows']:,} manifest rows", d["batch_size"],
                         f"{d['peak_rss_main_mib']:,.0f} (+ {d['peak_rss_largest_reader_mib']:,.0f}"
                         " per reader)"))
    if rows:
        parts.append("## Peak memory\n\n" + _table(("machine", "stamps", "batch size",
                                                     "peak RSS (MiB)"), rows))
    return "\n\n".join(parts) + ("\n" if parts else "")


def projection_section(res):
    rows = []
    for machine, kinds in sorted(res.items()):
        if "projection" not in kinds:
            continue
        for p in kinds["projection"][1]:
            rows.append((machine, p["rates"]["backend"], f"{p['rows']:,}", f"{p['bricks']:,}",
                         f"{p['hours_one_machine']:.2f}", p["limited_by"],
                         f"{p.get('hours_spark', float('nan')):.3f}", p.get("executors", "")))
    if not rows:
        return ""
    return ("## Projection of a full run from the measured stage rates\n\n" + _table(
        ("machine", "backend", "rows", "bricks", "hours, one machine", "limited by",
         "hours on Spark", "executors"), rows) + "\n")


def rerun_section(res):
    """benchmarks/rerun.py's comparison of two runs of the suite, per machine."""
    out = []
    for machine, kinds in sorted(res.items()):
        if "rerun" not in kinds:
            continue
        date, d = kinds["rerun"]
        c = d["counts"]
        rows = [(f["figure"], f"{f['first']:,.1f}", f"{f['low']:,.1f} - {f['high']:,.1f}",
                 f"{f['rerun']:,.1f}", f"{f['change']:+.1%}", f["verdict"])
                for f in d["figures"] if f["verdict"] != "no spread"]
        out.append(f"{machine} ({date}): {c['within']} timed figures within the first run's "
                   f"spread, {c['outside']} outside; {c['no spread']} measured once.\n\n"
                   + _table(("figure", "first run", "its spread", "rerun", "change",
                             "verdict"), rows))
    if not out:
        return ""
    return ("## Reproducibility: the suite run twice (benchmarks/rerun.py)\n\n"
            + "\n\n".join(out) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", nargs="?", default=os.path.join(os.path.dirname(__file__),
                                                              "results"))
    ap.add_argument("--out", default=None, help="report folder (default FOLDER/report)")
    ap.add_argument("--no-plots", action="store_true")
    a = ap.parse_args(argv)
    res = load(a.folder)
    if not res:
        sys.exit(f"no result files named <date>-<machine>-<kind>.json in {a.folder}")
    out = a.out or os.path.join(a.folder, "report")
    os.makedirs(out, exist_ok=True)
    plots = None
    if not a.no_plots:
        import matplotlib

        matplotlib.use("Agg")
        plots = out
    sections = [engine_section(res, plots), threads_section(res, plots),
                references_section(res), pipeline_section(res, plots), io_memory_section(res),
                projection_section(res), rerun_section(res)]
    machines = ", ".join(sorted(res))
    text = (f"# gpu_inject benchmarks\n\nMachines: {machines}. Generated by "
            f"`benchmarks/report.py` from the result files in `{a.folder}`.\n\n" +
            "\n".join(s for s in sections if s))
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(text)
    print(f"report written to {os.path.join(out, 'report.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
