"""Peak memory of ``gpu-inject run`` on a 1,000,000-row manifest (issue 4 memory target).

Memory must follow the batch size and the prefetch depth, not the manifest. A million real
injections take most of an hour here, so the manifest is built to exercise everything that
grows with the row count (reading and validating the manifest, planning, one job per unit,
writing a part per unit and split, the closing rows-in = rows-out count over the whole
metrics dataset) while only ``--real`` rows are cut and injected: the others point at bricks
that do not exist and come out as error rows, as a manifest built for another release would.
Peak RSS is reported for the main process and for the largest reader process.

    python benchmarks/pipeline_memory.py --rows 1000000 --real 2000
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(__file__))
from pipeline_speed import build  # noqa: E402  (the mock bricks and their manifest)

#: The run, as the CLI runs it, reporting its own peak RSS and its largest child's (MiB).
CHILD = """
import json, resource, sys
from gpu_inject.cli import main
try:
    main(sys.argv[1:], standalone_mode=False)
finally:
    mib = lambda who: resource.getrusage(who).ru_maxrss / 1024.0
    print(json.dumps({"self": mib(resource.RUSAGE_SELF),
                      "children": mib(resource.RUSAGE_CHILDREN)}))
"""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--real", type=int, default=2000, help="rows on real mock bricks")
    ap.add_argument("--missing-bricks", type=int, default=20000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "gpu_inject_e2e"))
    ap.add_argument("--json", dest="json_path")
    a = ap.parse_args(argv)
    os.makedirs(a.data, exist_ok=True)
    coadd, real_manifest, nreal = build(a.data, max(1, a.real // 60), 60, 3600, seed=0)
    real = pq.read_table(real_manifest)
    n_missing = a.rows - real.num_rows
    rng = np.random.default_rng(1)
    pick = rng.integers(0, real.num_rows, n_missing)
    filler = real.take(pa.array(pick))
    names = np.array([f"{k % 3600:04d}p{k // 3600 + 100:03d}" for k in range(a.missing_bricks)],
                     dtype=object)
    bricks = names[rng.integers(0, a.missing_bricks, n_missing)]
    filler = filler.set_column(filler.column_names.index("brickname"), "brickname",
                               pa.array(list(bricks), pa.string()))
    table = pa.concat_tables([real, filler])
    table = table.set_column(table.column_names.index("task_id"), "task_id",
                             pa.array(np.arange(table.num_rows, dtype=np.int64)))
    with tempfile.TemporaryDirectory() as tmp:
        manifest = os.path.join(tmp, "manifest.parquet")
        pq.write_table(table, manifest)
        # The run gets a process of its own, so that building this manifest does not count.
        cmd = [sys.executable, "-c", CHILD, "run", "--manifest", manifest, "--coadd-root",
               coadd, "--out", os.path.join(tmp, "out"), "--experiment-id", "mem",
               "--workers", str(a.workers), "--batch-size", str(a.batch_size), "--no-progress"]
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if done.returncode != 0:
            sys.exit(f"run failed: {done.stderr.strip().splitlines()[-1]}")
        usage = json.loads(done.stdout.strip().splitlines()[-1])
        with open(os.path.join(tmp, "out", "_stage_config.json")) as f:
            cfg = json.load(f)
    res = {
        "benchmark": "pipeline_memory", "rows": cfg["counts"]["in"],
        "rows_injected_or_cut": cfg["counts"]["ok"], "error_rows": cfg["counts"]["errors"],
        "units": cfg["plan"]["units"], "workers": a.workers, "batch_size": a.batch_size,
        "wall_s": wall, "peak_rss_main_mib": usage["self"],
        "peak_rss_largest_reader_mib": usage["children"],
    }
    print(f"{res['rows']:,} rows ({res['rows_injected_or_cut']:,} cut and injected, "
          f"{res['error_rows']:,} error rows) in {res['units']:,} units, {wall:.0f} s; peak RSS "
          f"main {res['peak_rss_main_mib']:.0f} MiB, largest reader process "
          f"{res['peak_rss_largest_reader_mib']:.0f} MiB")
    if a.json_path:
        with open(a.json_path, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
