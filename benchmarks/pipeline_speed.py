"""End-to-end ``gpu-inject run`` throughput on DR10-format mock bricks (issue 4 benchmark).

Writes (once, then reuses) ``--bricks`` mock 3600x3600 bricks with real fpack compression,
a manifest of ``--per-brick`` stamps per brick (half injections over the SPEC ranges, half
CONTROLs on the same targets, as the user's train tier), and times the whole run from local
compressed bricks to Parquet, after one warm-up run on a single brick (Numba's cache). Prints
stamps/s, stamps/s per core, and where the time went: reading (thread-seconds in the brick
readers, overlapping the engine), engine and writing; ``--json`` keeps the record.

    python benchmarks/pipeline_speed.py --bricks 72 --per-brick 60 --repeats 3
"""
import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from astropy.wcs import WCS

from gpu_inject.bench import peak_rss_mib
from gpu_inject.draws import random_tasks
from gpu_inject.mock import wcs_header, write_mock_brick
from gpu_inject.pipeline import RunOptions, run

#: Distinct mock bricks written (8 s each at 3600 px); further bricks are renamed links to
#: these files (same pixels and WCS, their own names), so the benchmark scales to many
#: bricks without minutes of mock writing. Each brick is still opened and decoded anew.
REAL_BRICKS = 6


def brick_name(k):
    return f"{489 + 3 * k:04d}m442"


def build(folder, nbricks, per_brick, size, seed, controls=True):
    coadd = os.path.join(folder, f"coadd{size}")
    rng = np.random.default_rng(seed)
    parts = []
    for k in range(nbricks):
        brick, real = brick_name(k), brick_name(k % REAL_BRICKS)
        ntarget = per_brick // 2 if controls else per_brick
        px, py = rng.uniform(50, size - 50, (2, ntarget))
        ra, dec = WCS(wcs_header(real, size)).pixel_to_world_values(px, py)
        real_dir = os.path.join(coadd, real[:3], real)
        if not os.path.isdir(real_dir):
            write_mock_brick(coadd, real, size=size, seed=k)
        link_dir = os.path.join(coadd, brick[:3], brick)
        if brick != real and not os.path.isdir(link_dir):
            os.makedirs(link_dir)
            for name in os.listdir(real_dir):
                os.symlink(os.path.join(real_dir, name),
                           os.path.join(link_dir, name.replace(real, brick)))
        t = random_tasks(ntarget, seed=seed + k)
        ctrl = {c: np.full(ntarget, np.nan) for c in t}
        ctrl["lens_model"] = np.array(["CONTROL"] * ntarget, dtype=object)
        ctrl["theta_e_arcsec"] = np.zeros(ntarget)
        for c in ("psfsize_g", "psfsize_r", "psfsize_z"):
            ctrl[c] = t[c]
        for rows in (t, ctrl) if controls else (t,):
            rows["ra"], rows["dec"] = np.asarray(ra), np.asarray(dec)
            rows["brickname"] = np.array([brick] * ntarget, dtype=object)
            rows["region_split"] = np.array([("train", "val", "test")[k % 3]] * ntarget,
                                            dtype=object)
            parts.append(rows)
    cols = {c: np.concatenate([p[c] for p in parts]) for c in parts[0]}
    cols["task_id"] = np.arange(len(cols["ra"]), dtype=np.int64)
    table = pa.table({c: pa.array(list(v)) if v.dtype == object else pa.array(v)
                      for c, v in cols.items()})
    kind = "" if controls else "-injections"
    manifest = os.path.join(folder, f"manifest-{nbricks}x{per_brick}{kind}.parquet")
    pq.write_table(table, manifest)
    return coadd, manifest, table.num_rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bricks", type=int, default=72)
    ap.add_argument("--per-brick", type=int, default=60)
    ap.add_argument("--size", type=int, default=3600)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "gpu_inject_e2e"),
                    help="where the mock bricks are kept between runs")
    ap.add_argument("--no-controls", dest="controls", action="store_false",
                    help="every stamp an injection at its own target (default: half CONTROLs "
                         "sharing their injection's target)")
    ap.add_argument("--json", dest="json_path")
    a = ap.parse_args(argv)
    os.makedirs(a.data, exist_ok=True)
    coadd, manifest, rows = build(a.data, a.bricks, a.per_brick, a.size, seed=0,
                                  controls=a.controls)
    _, warm_manifest, _ = build(a.data, 1, 4, a.size, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        common = dict(coadd_root=coadd, experiment_id="bench", workers=a.workers,
                      batch_size=a.batch_size, force=True)
        run(RunOptions(manifest=warm_manifest, out=os.path.join(tmp, "warm"), **common),
            progress=False, log=lambda m: None)
        records = []
        for r in range(a.repeats):
            s = run(RunOptions(manifest=manifest, out=os.path.join(tmp, f"r{r}"), **common),
                    progress=False, log=lambda m: None)
            records.append(s.timings)
    wall = [t["wall_s"] for t in records]
    med = records[int(np.argsort(wall)[len(wall) // 2])]
    import numba

    cores = numba.get_num_threads()
    res = {
        "benchmark": "pipeline_speed", "machine": f"{platform.machine()} {platform.processor()}",
        "cpus": os.cpu_count(), "numba_threads": cores, "bricks": a.bricks,
        "per_brick": a.per_brick, "controls": a.controls, "brick_size": a.size, "rows": rows, "workers": a.workers,
        "batch_size": a.batch_size, "repeats": a.repeats, "wall_s_all": wall,
        "wall_s": med["wall_s"], "stamps_per_s": rows / med["wall_s"],
        "stamps_per_s_per_core": rows / med["wall_s"] / cores,
        "read_thread_s": med["read_s"], "engine_s": med["engine_s"], "write_s": med["write_s"],
        "engine_share": med["engine_s"] / med["wall_s"],
        "write_share": med["write_s"] / med["wall_s"],
        "read_thread_share": med["read_s"] / med["wall_s"],
        "peak_rss_mib": peak_rss_mib(),
    }
    print(f"{rows} stamps ({a.bricks} bricks x {a.per_brick}, {a.size}px, "
          f"{'half CONTROL' if a.controls else 'all injections'}) in "
          f"{res['wall_s']:.2f} s (median of {a.repeats}: "
          f"{', '.join(f'{w:.2f}' for w in wall)}) = {res['stamps_per_s']:.0f} stamps/s, "
          f"{res['stamps_per_s_per_core']:.0f} per core ({cores} cores)")
    print(f"time: engine {res['engine_share']:.0%} of wall, writing {res['write_share']:.0%}, "
          f"brick reading {res['read_thread_s']:.2f} "
          f"thread-s ({res['read_thread_share']:.0%} of wall, in {a.workers} reader processes "
          f"overlapping the engine); peak RSS {res['peak_rss_mib']:.0f} MiB")
    if a.json_path:
        with open(a.json_path, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
