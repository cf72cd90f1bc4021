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
import resource
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(__file__))
from pipeline_speed import build  # noqa: E402  (the mock bricks and their manifest)

from gpu_inject.pipeline import RunOptions, run  # noqa: E402


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
        del table, filler, real
        t0 = time.perf_counter()
        s = run(RunOptions(manifest=manifest, coadd_root=coadd, out=os.path.join(tmp, "out"),
                           experiment_id="mem", workers=a.workers, batch_size=a.batch_size),
                progress=False, log=lambda m: None)
        wall = time.perf_counter() - t0
    kib = 1024.0
    res = {
        "benchmark": "pipeline_memory", "rows": s.rows, "rows_injected_or_cut": s.ok,
        "error_rows": s.errors, "units": s.units, "workers": a.workers,
        "batch_size": a.batch_size, "wall_s": wall,
        "peak_rss_main_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / kib,
        "peak_rss_largest_reader_mib":
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / kib,
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
