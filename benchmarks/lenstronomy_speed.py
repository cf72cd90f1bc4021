"""How fast lenstronomy renders the same injections, the way its users do it.

    python benchmarks/lenstronomy_speed.py --stamps 200 --stamp-size 64 [--processes N]

Same draws as ``gpu-inject bench`` (``gpu_inject.draws.random_tasks``). Per stamp: one
``ImageModel`` per band (g, r, z), each with that band's Gaussian PSF
(``PSF(psf_type='GAUSSIAN', fwhm=psfsize_<b>)``, the manifest's brick-level FWHM) and
``supersampling_factor=4``, and one ``image()`` call per band (lensed SIE/SIS + SHEAR Sersic,
amp scaled to the band's flux; lenstronomy's own b_n: only the time matters here). One
process per core (multiprocessing, fork); the imports, the LensModel / LightModel / pixel grid
and one warm-up stamp are done in each worker's initialiser and excluded from the timing,
which covers the per-stamp work only: building the PSF and ImageModel (the PSF changes from
stamp to stamp) and rendering 3 bands. Workers send back a 3-number checksum, not the images,
so that pickling does not count.
"""
import argparse
import json
import math
import multiprocessing as mp
import os
import time

import numpy as np

PIXSCALE = 0.262
BANDS = ("g", "r", "z")
_W = {}


def _setup(tasks, stamp_size, barrier):
    from lenstronomy.Data.pixel_grid import PixelGrid
    from lenstronomy.Data.psf import PSF
    from lenstronomy.ImSim.image_model import ImageModel
    from lenstronomy.LensModel.lens_model import LensModel
    from lenstronomy.LightModel.light_model import LightModel

    c = stamp_size // 2
    _W.update(
        tasks=tasks, PSF=PSF, ImageModel=ImageModel,
        grid=PixelGrid(stamp_size, stamp_size, PIXSCALE * np.eye(2), -c * PIXSCALE,
                       -c * PIXSCALE),
        lens={m: LensModel([m, "SHEAR"]) for m in ("SIE", "SIS")},
        light=LightModel(["SERSIC_ELLIPSE"]))
    _render(0)  # warm-up
    if barrier is not None:
        barrier.wait()


def _kwargs(t, k):
    gphi = 2 * math.radians(t["shear_phi_deg"][k])
    shear = {"gamma1": t["shear"][k] * math.cos(gphi), "gamma2": t["shear"][k] * math.sin(gphi),
             "ra_0": 0.0, "dec_0": 0.0}
    model = t["lens_model"][k]
    main = {"theta_E": t["theta_e_arcsec"][k], "center_x": 0.0, "center_y": 0.0}
    if model == "SIE":
        e, phi = t["lens_e"][k], math.radians(t["lens_phi_deg"][k])
        main.update(e1=e * math.cos(2 * phi), e2=e * math.sin(2 * phi))
    n, reff = t["src_n"][k], t["src_reff_arcsec"][k]
    bn = 1.9992 * n - 0.3271
    ie = math.exp(-(math.log(2 * math.pi * n * reff * reff) + bn - 2 * n * math.log(bn)
                    + math.lgamma(2 * n)))  # I_e of unit flux (arcsec^-2)
    f_r = t["lens_flux_r"][k] * 10 ** (-0.4 * t["src_dmag"][k])
    flux = {"g": f_r * 10 ** (-0.4 * t["src_gr"][k]), "r": f_r,
            "z": f_r * 10 ** (0.4 * t["src_rz"][k])}
    se, sp = t["src_e"][k], math.radians(t["src_phi_deg"][k])
    src = {"R_sersic": reff, "n_sersic": n, "e1": se * math.cos(2 * sp),
           "e2": se * math.sin(2 * sp), "center_x": t["src_x_arcsec"][k],
           "center_y": t["src_y_arcsec"][k]}
    return model, [main, shear], {b: [dict(src, amp=ie * flux[b])] for b in BANDS}


def _render(k):
    t = _W["tasks"]
    model, kw_lens, kw_src = _kwargs(t, k)
    out = []
    for b in BANDS:
        psf = _W["PSF"](psf_type="GAUSSIAN", fwhm=float(t[f"psfsize_{b}"][k]))
        im = _W["ImageModel"](_W["grid"], psf, lens_model_class=_W["lens"][model],
                              source_model_class=_W["light"],
                              kwargs_numerics={"supersampling_factor": 4})
        out.append(float(im.image(kw_lens, kw_src[b]).sum()))
    return out


def _ready(_):
    return os.getpid()


def lenstronomy_stamps_per_s(n_stamps, stamp_size=64, seed=0, processes=None):
    """Time lenstronomy (ss=4, 3 bands, Gaussian PSF each) on ``random_tasks(n_stamps, seed)``
    with one process per core; returns {"stamps", "seconds", "stamps_per_s", "processes"}."""
    from gpu_inject.draws import random_tasks

    processes = processes or os.cpu_count()
    tasks = random_tasks(n_stamps, seed)
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(processes + 1)
    with ctx.Pool(processes, initializer=_setup, initargs=(tasks, stamp_size, barrier)) as pool:
        barrier.wait()  # every worker has finished its set-up and warm-up
        t = time.perf_counter()
        sums = pool.map(_render, range(n_stamps), chunksize=max(1, n_stamps // (8 * processes)))
        dt = time.perf_counter() - t
    assert len(sums) == n_stamps and np.isfinite(sums).all()
    return {"stamps": n_stamps, "seconds": dt, "stamps_per_s": n_stamps / dt,
            "processes": processes}


def main(argv=None):
    ap = argparse.ArgumentParser(description="lenstronomy stamps/s (ss=4, g r z, Gaussian PSF)")
    ap.add_argument("--stamps", type=int, default=200)
    ap.add_argument("--stamp-size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--processes", type=int, default=None)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    r = lenstronomy_stamps_per_s(a.stamps, a.stamp_size, a.seed, a.processes)
    r["stamp_size"] = a.stamp_size
    r["bands"] = "".join(BANDS)
    print(json.dumps(r))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(r, fh, indent=1)
    return r


if __name__ == "__main__":
    main()
