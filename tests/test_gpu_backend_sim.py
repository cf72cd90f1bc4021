"""The GPU backend end to end (render, CuPy-path PSF, injection, device reductions) under
Numba's CUDA simulator, where the CuPy code runs on numpy: it must agree with the CPU backend
to 1e-5 relative on every output (SPEC 6), and `auto` must not pick the simulator.
The simulator has to be on before Numba is imported, hence a subprocess; stamps are tiny
because the simulator runs every CUDA thread in Python."""
import json
import os
import pickle
import subprocess
import sys

import numpy as np

from gpu_inject.draws import random_tasks
from gpu_inject.engine import get_backend, inject_batch
from gpu_inject.tasks import read_columns

S = 16
CHILD = """
import pickle, sys
from gpu_inject.engine import get_backend, inject_batch
a = pickle.loads(sys.stdin.buffer.read())
be = get_backend("gpu")
auto = get_backend("auto")
res = inject_batch(be, *a["args"], **a["kw"])
sys.stdout.buffer.write(pickle.dumps({"res": res, "device": be.device, "auto": auto.name,
                                      "why": auto.why}))
"""


def _inputs():
    t = random_tasks(4, seed=11)
    t["lens_model"][1] = "CONTROL"
    t["src_n"][0], t["src_reff_arcsec"][0] = 4.0, 0.1   # a cusp: deep refinement
    cols = read_columns(t)
    rng = np.random.default_rng(3)
    cutout = rng.normal(0, 0.01, (4, 3, S, S)).astype(np.float32)
    invvar = np.full((4, 3, S, S), 1e4, np.float32)
    invvar[2, 1, :3] = 0.0                                  # dead pixels in one band
    maskbits = np.zeros((4, S, S), np.int32)
    maskbits[0, 5:8, 5:8] = 1 << 1                          # BRIGHT: bad
    maskbits[3, :, :4] = 1 << 8                             # WISEM1
    psf = np.full((4, 3), 0.35)                             # small PSF: a small render grid
    offset = rng.uniform(-0.5, 0.5, (4, 2))
    args = (cols, psf, cutout, invvar, maskbits)
    kw = dict(pixscale=0.262, bands="grz", lens_offset=offset)
    return args, kw


def test_gpu_backend_under_the_simulator_matches_the_cpu():
    args, kw = _inputs()
    cpu = inject_batch(get_backend("cpu"), *args, **kw)
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    done = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True,
                          timeout=900, input=pickle.dumps({"args": args, "kw": kw}))
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    out = pickle.loads(done.stdout)
    assert "simulator" in out["device"]
    assert out["auto"] == "cpu" and "simulator" in out["why"]
    gpu = out["res"]
    assert gpu.keys() == cpu.keys()
    for name in cpu:
        a, b = np.asarray(gpu[name], np.float64), np.asarray(cpu[name], np.float64)
        assert a.shape == b.shape, name
        assert np.array_equal(np.isnan(a), np.isnan(b)), name   # CONTROL arc metrics NaN
        scale = np.nanmax(np.abs(b)) if np.isfinite(b).any() else 1.0
        np.testing.assert_allclose(np.nan_to_num(a), np.nan_to_num(b), rtol=1e-5,
                                   atol=1e-5 * scale, err_msg=name)
    # the masks and dead pixels were seen
    assert gpu["bad_pixel_frac"][0] > 0 and gpu["bad_pixel_frac"][2] > 0
    assert gpu["wise_brightmask_frac"][3] == 0.25
    assert np.array_equal(gpu["image"][1], args[2][1])       # CONTROL: the cutout
