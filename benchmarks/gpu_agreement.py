"""CPU and GPU backends on the same random stamps (SPEC 6: agree to 1e-5 relative; repeated
GPU runs identical). Needs a GPU; scripts/gpu_check.sh runs it.

    python benchmarks/gpu_agreement.py --stamps 10000 --json out.json
"""
import argparse
import json
import sys

import numpy as np

from gpu_inject.bench import synthetic_inputs
from gpu_inject.draws import random_tasks
from gpu_inject.engine import get_backend, inject_batch
from gpu_inject.tasks import read_columns

METRICS = ("magnification", "total_injected_flux", "arc_snr", "arc_snr_opt",
           "bad_pixel_frac", "wise_brightmask_frac")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stamps", type=int, default=10000)
    ap.add_argument("--stamp-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", dest="json_path")
    a = ap.parse_args(argv)
    cpu, gpu = get_backend("cpu"), get_backend("gpu")
    t = random_tasks(a.stamps, seed=a.seed)
    cols = read_columns(t)
    psf = np.stack([t[f"psfsize_{b}"] for b in "grz"], axis=1)
    offset = np.random.default_rng(a.seed).uniform(-0.5, 0.5, (a.stamps, 2))
    worst_arc, worst = 0.0, {m: 0.0 for m in METRICS}
    over, identical = 0, True
    for start in range(0, a.stamps, a.batch_size):
        sl = slice(start, min(start + a.batch_size, a.stamps))
        inputs = synthetic_inputs(sl.stop - sl.start, a.stamp_size, a.seed + start)
        args = ({k: v[sl] for k, v in cols.items()}, psf[sl], *inputs)
        kw = dict(pixscale=0.262, bands="grz", lens_offset=offset[sl])
        c, g = inject_batch(cpu, *args, **kw), inject_batch(gpu, *args, **kw)
        identical &= all(np.array_equal(g[m], v, equal_nan=True)
                         for m, v in inject_batch(gpu, *args, **kw).items())
        cut = inputs[0].astype(np.float64)
        arc_c, arc_g = c["image"] - cut, g["image"] - cut
        scale = np.abs(arc_c).max(axis=(1, 2, 3))
        rel = np.abs(arc_g - arc_c).max(axis=(1, 2, 3)) / np.maximum(scale, 1e-30)
        over += int((rel > 1e-5).sum())
        worst_arc = max(worst_arc, float(rel.max()))
        for m in METRICS:
            d = np.abs(g[m] - c[m]) / np.maximum(np.abs(c[m]), 1e-30)
            worst[m] = max(worst[m], float(np.nanmax(d)))
    res = {"benchmark": "gpu_agreement", "device": gpu.device, "stamps": a.stamps,
           "stamp_size": a.stamp_size, "worst_arc_rel": worst_arc,
           "stamps_over_1e-5": over, "worst_metric_rel": worst,
           "repeated_gpu_identical": bool(identical)}
    print(json.dumps(res, indent=2))
    if a.json_path:
        with open(a.json_path, "w") as f:
            json.dump(res, f, indent=2)
    return 0 if over == 0 and identical and max(worst.values()) <= 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
