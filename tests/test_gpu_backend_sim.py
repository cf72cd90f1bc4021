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
kept = inject_batch(be, *a["args"], **a["kw"], to_host=False)   # the benchmark's split
be.synchronize()
kept = {k: be.to_host(v) for k, v in kept.items()}
sys.stdout.buffer.write(pickle.dumps({"res": res, "kept": kept, "device": be.device,
                                      "auto": auto.name, "why": auto.why}))
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
    # results kept on the device, then synchronised and copied back: the same bits
    assert out["kept"].keys() == gpu.keys()
    for name in gpu:
        np.testing.assert_array_equal(out["kept"][name], gpu[name], err_msg=name)


PIPELINE_CHILD = """
import sys
from gpu_inject.cli import main
main(sys.argv[1:])
"""


def test_pipeline_on_the_gpu_backend_under_the_simulator(tmp_path):
    """`gpu-inject run --backend gpu` end to end (simulated device) equals the CPU run to
    1e-5, and the stage config names the backend it ran on. Batches of one stamp: the host
    loop feeds three batches (one a CONTROL) through engine.inject_batches, queued ahead."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from astropy.wcs import WCS

    from gpu_inject.mock import wcs_header, write_mock_brick

    brick = "0489m442"
    write_mock_brick(tmp_path / "coadd", brick, size=200, seed=0)
    ra, dec = WCS(wcs_header(brick, 200)).pixel_to_world_values([60.0, 120.0, 150.0],
                                                                [70.0, 100.0, 40.0])
    t = random_tasks(3, seed=8)
    t.update(ra=ra, dec=dec, brickname=np.array([brick] * 3, dtype=object),
             region_split=np.array(["train"] * 3, dtype=object))
    t["lens_model"][2], t["theta_e_arcsec"][2] = "CONTROL", 0.0
    for b in "grz":
        t[f"psfsize_{b}"] = np.full(3, 0.35)   # small PSF: small render grids
    pq.write_table(pa.table({k: list(v) for k, v in t.items()}), tmp_path / "m.parquet")
    common = ["run", "--manifest", str(tmp_path / "m.parquet"), "--coadd-root",
              str(tmp_path / "coadd"), "--experiment-id", "e", "--stamp-size", "16",
              "--no-use-psfsize-maps", "--no-progress", "--workers", "1", "--batch-size", "1"]
    outs = {}
    for backend in ("cpu", "gpu"):
        env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1" if backend == "gpu" else "0"}
        out = tmp_path / backend
        done = subprocess.run([sys.executable, "-c", PIPELINE_CHILD, *common, "--out",
                               str(out), "--backend", backend], env=env, capture_output=True,
                              text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        outs[backend] = pq.read_table(out / "metrics" / "e").sort_by("task_id")
        cfg = json.loads((out / "_stage_config.json").read_text())
        assert cfg["backend"]["name"] == backend
    cpu, gpu = outs["cpu"], outs["gpu"]
    assert gpu["cutout_ok"].to_pylist() == [1, 1, 1]
    for name in ("magnification", "arc_snr", "arc_snr_opt", "total_injected_flux_r",
                 "bad_pixel_frac"):
        a = np.asarray(gpu[name].to_pylist(), dtype=float)
        b = np.asarray(cpu[name].to_pylist(), dtype=float)
        np.testing.assert_allclose(a, b, rtol=1e-5, equal_nan=True, err_msg=name)
