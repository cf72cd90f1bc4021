"""Accuracy of the pre-PSF lensed image against an independent converged reference (SPEC 6).

    python benchmarks/accuracy.py --draws 200 --stamp-size 64 --seed 0 --json out.json \
        --lenstronomy-ss 4,16,32 --caustics-ss 4,16,32

Draws: ``random_tasks`` over the full SPEC ranges, plus forced corner cases (the cuspiest
source n = 4, R_e = 0.1"; the broadest flattest n = 0.5, R_e = 0.5"; the source behind the
lens centre, with an SIE (a cross) and with an SIS without shear (an Einstein ring, where the
source's cusp maps onto a whole circle); the source on the tangential caustic at a fold and at
a cusp, also with n = 4, R_e = 0.1"; the source on the cut, so that one image sits on the lens
centre). Each stamp gets a random sub-pixel lens offset.

For each draw, against ``reference.reference_image`` (benchmarks/reference.py: lenstronomy's
ray shooting, a numpy Sersic with our b_n, adaptive Gauss-Legendre cubature to 1e-10 of the
flux per cell; run in a process pool):
  * ours: the CPU backend's render with ``engine.DEFAULT_ACCURACY``, render grid = stamp, lens at
    S//2 + offset;
  * lenstronomy: ImageModel with supersampling_factor = 4, no PSF, the way its users render.
    lenstronomy's Sersic has the linear b_n = 1.9992 n - 0.3271; rather than a second reference
    with that b_n, lenstronomy is handed OUR profile exactly: a Sersic depends on (b_n, R_e)
    only through k = b_n R_e^(-1/n) and the amplitude I_e e^(b_n), so
    R_sersic = R_e (b_lenstronomy / b_ours)^n and amp = I_e e^(b_ours - b_lenstronomy)
    reproduce I(R) of our b_n to rounding (lenstronomy only floors R at 1e-4", irrelevant at
    4x4 sub-pixels; at 16x16 it moves the Einstein-ring corner case, whose source cusp lies
    along the whole ring, by 5e-3 of its peak), and both methods are compared with the same
    reference. Other factors with ``--lenstronomy-ss``.
  * caustics (when ``import caustics`` and torch work; otherwise skipped with a message):
    ``caustics.LensSource`` with ``upsample_factor`` = each of ``--caustics-ss`` (default 4),
    no PSF, one simulator per lens model built once (``SinglePlane([SIE or SIS,
    ExternalShear])``, ``Sersic`` source), each draw one call with its dynamic-parameter
    tensor, torch ``--caustics-dtype`` (float32, caustics' default, unless asked), CPU, one
    process, torch's intra-op threads (recorded). Its conventions, mapped onto SPEC 2's so
    that it renders the same physical model:
      - frame: caustics works in arcsec like our model coordinates. Its N x N grid is centred
        on the simulator's (x0, y0): pixel i's centre is at (i - (N-1)/2) pixscale + x0, its
        u x u sub-pixels (upsample_factor u) lie symmetric about it and are averaged
        (avg_pool2d). Ours has pixel i centred on x = i and the lens at xc = S//2 + offset,
        so the lens and shear centres are caustics' origin and the simulator's
        x0 = ((N-1)/2 - xc) pixscale (same for y); arrays are [y, x] in both (its meshgrid
        is "xy"-indexed, y growing with the row).
      - flux: LensSource returns the mean surface brightness over each pixel in the units of
        the Sersic's Ie (here per arcsec^2): times pixscale^2 is the flux per pixel.
      - SIE (Keeton 2001, its Rein = b / sqrt(q)): kappa = sqrt(q) Rein / (2 psi),
        psi = sqrt(q^2 x'^2 + y'^2), i.e. Rein / (2 sqrt(q x'^2 + y'^2 / q)): lenstronomy's
        "product average" normalisation and SPEC 2's deflection formula. So Rein = theta_E,
        q = (1 - lens_e) / (1 + lens_e), phi = lens_phi_deg in radians (its translate_rotate
        applies R(-phi): x' along the major axis, counter-clockwise from +x, as ours). At
        q == 1 exactly caustics' SIE uses q = 1 - 1e-6; SIS rows use ``caustics.SIS``
        (Rein = theta_E) instead, which is SPEC's SIS exactly.
      - shear: ExternalShear (cartesian) deflects by (g1 x + g2 y, g2 x - g1 y), SPEC 2's:
        gamma_1 = shear cos(2 shear_phi), gamma_2 = shear sin(2 shear_phi), centred on the
        lens.
      - Sersic: its k (``k_sersic``) is the same Ciotti & Bertin series as our b_n, and Ie
        is the intensity at Re as ours, but its radius is sqrt(u'^2 + v'^2 / q^2) (the
        semi-major axis: ``to_elliptical`` divides y' by q) where ours is
        sqrt(q u'^2 + v'^2 / q) = sqrt(q) times it (circularised). So Re = R_e / sqrt(q),
        q = (1 - src_e) / (1 + src_e), phi = src_phi_deg in radians, Ie = our I_e of unit
        flux, softening s = 0.
    Checked in tests/test_caustics_reference.py: caustics' ray shooting and lensed surface
    brightness agree pointwise with lenstronomy's ray shooting and reference.py's Sersic to
    < 1e-6 relative in float64 (about 1e-14 for the SIS, 1e-9 for the SIE, the size of
    lenstronomy's 1e-10" SIE core), its image at upsample 4 equals lenstronomy's at
    supersampling 4 to 1e-6 of the peak, and at upsample 32 it is within SPEC 6 of the
    reference.
    caustics and lenstronomy sample the same u x u sub-pixel centres with equal weights, so
    at one factor their errors agree (on the 208 draws: median difference <= 2e-6, the same
    number of draws outside SPEC) but for two precision effects at source cusps: caustics builds its grid in
    float32 whatever the dtype (``meshgrid``'s default, cast afterwards), so its samples sit
    up to 1e-6" off (64 px, upsample 4 to 16), which moves the ring and the n = 4 cusp cases
    by about 1.3e-4 of their peak at upsample 4; and lenstronomy's 1e-4" floor above. (caustics'
    ``quad_level``, Gauss-Legendre nodes in each sub-pixel, is not in the table: on 6 draws
    upsample 4 with quad_level 3 was about as accurate as upsample 12, the same 144
    evaluations per pixel.)
Metrics: relative total-flux error |sum - sum_ref| / sum_ref and max |pixel - ref| / max(ref);
SPEC 6 asks 1e-3 and 1e-2. Printed: median, 95th percentile and worst (with the draw) per
method, the number of draws outside SPEC, our render throughput (stamps/s, this machine's
Numba threads, after a warm-up), lenstronomy's (one process) and caustics' (one process, torch
threads); all of them in the JSON (``--json``), per draw too.
"""
import argparse
import dataclasses
import json
import math
import multiprocessing as mp
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference  # noqa: E402

from gpu_inject import tasks as T  # noqa: E402
from gpu_inject.draws import random_tasks  # noqa: E402
from gpu_inject.engine import DEFAULT_ACCURACY, get_backend  # noqa: E402
from gpu_inject.physics.sersic import sersic_bn, sersic_ie_for_unit_flux  # noqa: E402

FLUX_TOL = 1e-3
PEAK_TOL = 1e-2
PIXSCALE = 0.262


# ---------------------------------------------------------------- draws

def _caustic_points(theta_e, e, phi_deg, shear, shear_phi_deg):
    """(fold, cusp) points of the tangential caustic of an SIE + shear (lenstronomy)."""
    from lenstronomy.LensModel.lens_model import LensModel
    from lenstronomy.LensModel.lens_model_extensions import LensModelExtensions

    phi, gphi = math.radians(phi_deg), 2 * math.radians(shear_phi_deg)
    kw = [{"theta_E": theta_e, "e1": e * math.cos(2 * phi), "e2": e * math.sin(2 * phi),
           "center_x": 0.0, "center_y": 0.0},
          {"gamma1": shear * math.cos(gphi), "gamma2": shear * math.sin(gphi), "ra_0": 0.0,
           "dec_0": 0.0}]
    _, _, cx, cy = LensModelExtensions(LensModel(["SIE", "SHEAR"])).critical_curve_caustics(
        kw, compute_window=4 * theta_e, grid_scale=0.002)
    k = int(np.argmax([np.ptp(np.asarray(x)) for x in cx]))  # the tangential caustic
    x, y = np.asarray(cx[k]), np.asarray(cy[k])
    r = np.hypot(x, y)
    return (x[np.argmin(r)], y[np.argmin(r)]), (x[np.argmax(r)], y[np.argmax(r)])


def corner_cases():
    """[(label, overrides)] of the forced corner cases."""
    sie = {"lens_model": "SIE", "theta_e_arcsec": 0.8, "lens_e": 0.3, "lens_phi_deg": 25.0,
           "shear": 0.05, "shear_phi_deg": 70.0}
    fold, cusp = _caustic_points(0.8, 0.3, 25.0, 0.05, 70.0)
    return [
        ("cusp source n=4 reff=0.1", dict(sie, src_n=4.0, src_reff_arcsec=0.1,
                                          src_x_arcsec=0.2, src_y_arcsec=-0.1)),
        ("flat source n=0.5 reff=0.5", dict(sie, src_n=0.5, src_reff_arcsec=0.5,
                                            src_x_arcsec=-0.3, src_y_arcsec=0.2)),
        ("source at lens centre (SIE)", dict(sie, src_n=2.0, src_reff_arcsec=0.2,
                                             src_x_arcsec=0.0, src_y_arcsec=0.0)),
        ("source at lens centre (SIS, no shear: ring)",
         {"lens_model": "SIS", "theta_e_arcsec": 0.7, "shear": 0.0, "shear_phi_deg": 0.0,
          "src_n": 2.5, "src_reff_arcsec": 0.2, "src_e": 0.0, "src_x_arcsec": 0.0,
          "src_y_arcsec": 0.0}),
        ("source on caustic fold", dict(sie, src_n=1.5, src_reff_arcsec=0.2,
                                        src_x_arcsec=fold[0], src_y_arcsec=fold[1])),
        ("source on caustic cusp", dict(sie, src_n=1.5, src_reff_arcsec=0.2,
                                        src_x_arcsec=cusp[0], src_y_arcsec=cusp[1])),
        ("n=4 reff=0.1 on caustic fold", dict(sie, src_n=4.0, src_reff_arcsec=0.1,
                                              src_x_arcsec=fold[0], src_y_arcsec=fold[1])),
        ("source on the cut (image at lens centre)",
         {"lens_model": "SIS", "theta_e_arcsec": 0.7, "shear": 0.05, "shear_phi_deg": 10.0,
          "src_n": 1.0, "src_reff_arcsec": 0.3, "src_x_arcsec": 0.7 * math.cos(1.0),
          "src_y_arcsec": 0.7 * math.sin(1.0)}),
    ]


def build_draws(n, seed, corners=True):
    """(columns dict of arrays, labels): n random draws, then the corner cases."""
    cases = corner_cases() if corners else []
    t = random_tasks(n + len(cases), seed)
    labels = [f"random {k}" for k in range(n)]
    for j, (label, over) in enumerate(cases):
        for c, v in over.items():
            t[c][n + j] = v
        labels.append(label)
    return t, labels


# ---------------------------------------------------------------- the three methods

def render_pre_psf(params, origin, size, acc=DEFAULT_ACCURACY):
    """The CPU backend's pre-PSF render (unit source flux) with tolerances ``acc``."""
    return get_backend("cpu").render(params, origin, size, acc)


def lenstronomy_pre_psf(row, size, offset, ss=4):
    """lenstronomy ImageModel, PSF 'NONE', supersampling ss, our profile (module docstring)."""
    from lenstronomy.Data.pixel_grid import PixelGrid
    from lenstronomy.Data.psf import PSF
    from lenstronomy.ImSim.image_model import ImageModel
    from lenstronomy.LightModel.light_model import LightModel

    f = reference.LensedSersic(row, size, offset, PIXSCALE)      # lens kwargs, same conventions
    n = float(row["src_n"])
    reff = float(row["src_reff_arcsec"])
    bo, bl = sersic_bn(n), reference.bn_lenstronomy(n)
    ie = sersic_ie_for_unit_flux(n, reff, bo)
    se, sp = float(row["src_e"]), math.radians(float(row["src_phi_deg"]))
    kws = [{"amp": ie * math.exp(bo - bl), "R_sersic": reff * (bl / bo) ** n, "n_sersic": n,
            "e1": se * math.cos(2 * sp), "e2": se * math.sin(2 * sp),
            "center_x": float(row["src_x_arcsec"]), "center_y": float(row["src_y_arcsec"])}]
    grid = PixelGrid(size, size, PIXSCALE * np.eye(2), -f.xc * PIXSCALE, -f.yc * PIXSCALE)
    im = ImageModel(grid, PSF("NONE"), lens_model_class=f.lens_model,
                    source_model_class=LightModel(["SERSIC_ELLIPSE"]),
                    kwargs_numerics={"supersampling_factor": ss})
    return im.image(f.kwargs_lens, kws)


def caustics_version():
    """caustics' version when caustics and torch import, else None (then it is skipped)."""
    try:
        import caustics
        import torch  # noqa: F401
    except ImportError:
        return None
    return caustics.__version__


class CausticsRender:
    """caustics' LensSource for the draws (module docstring): one simulator per lens model
    (SIE or SIS, each + ExternalShear in a SinglePlane, Sersic source), built once on the
    stamp grid with upsample_factor ``ss``; every draw is one call with its parameters as
    the simulator's dynamic-parameter tensor, in torch ``dtype`` (CPU, no autograd)."""

    def __init__(self, size, ss=4, dtype="float32", pixscale=PIXSCALE):
        import caustics
        import torch

        self.torch = torch
        self.size, self.ss, self.pixscale = int(size), int(ss), float(pixscale)
        self.dtype = getattr(torch, dtype)
        self.sims, self.slots = {}, {}
        for model in ("SIE", "SIS"):
            cosmo = caustics.FlatLambdaCDM(name="cosmo")   # unused: reduced deflections only
            main = getattr(caustics, model)(cosmology=cosmo, name="lens", x0=0.0, y0=0.0)
            shear = caustics.ExternalShear(cosmology=cosmo, name="shear", x0=0.0, y0=0.0)
            plane = caustics.SinglePlane(cosmology=cosmo, lenses=[main, shear], name="plane",
                                         z_l=0.5, z_s=1.0)
            src = caustics.Sersic(name="src")
            sim = caustics.LensSource(lens=plane, source=src, pixelscale=self.pixscale,
                                      pixels_x=self.size, upsample_factor=self.ss, x0=None,
                                      y0=None, name="sim")
            sim.to(dtype=self.dtype)
            named = {"fov_x": sim.x0, "fov_y": sim.y0, "Rein": main.Rein,
                     "gamma_1": shear.gamma_1, "gamma_2": shear.gamma_2, "src_x": src.x0,
                     "src_y": src.y0, "src_q": src.q, "src_phi": src.phi, "n": src.n,
                     "Re": src.Re, "Ie": src.Ie}
            if model == "SIE":
                named.update(q=main.q, phi=main.phi)
            order = list(sim.dynamic_params)
            assert len(order) == len(named), (model, [q.name for q in order])
            self.sims[model] = sim
            self.slots[model] = [next(k for k, q in named.items() if q is p) for p in order]

    def params(self, row, offset):
        """(lens model, torch parameter vector) of one draw, our conventions mapped onto
        caustics' (module docstring)."""
        s, ps = self.size, self.pixscale
        model = "SIS" if str(row["lens_model"]) == "SIS" else "SIE"
        g, gphi = float(row["shear"]), 2 * math.radians(float(row["shear_phi_deg"]))
        n, reff = float(row["src_n"]), float(row["src_reff_arcsec"])
        se = float(row["src_e"])
        sq = (1 - se) / (1 + se)
        le = float(row["lens_e"])
        v = {"fov_x": ((s - 1) / 2 - (s // 2 + float(offset[0]))) * ps,
             "fov_y": ((s - 1) / 2 - (s // 2 + float(offset[1]))) * ps,
             "Rein": float(row["theta_e_arcsec"]), "q": (1 - le) / (1 + le),
             "phi": math.radians(float(row["lens_phi_deg"])),
             "gamma_1": g * math.cos(gphi), "gamma_2": g * math.sin(gphi),
             "src_x": float(row["src_x_arcsec"]), "src_y": float(row["src_y_arcsec"]),
             "src_q": sq, "src_phi": math.radians(float(row["src_phi_deg"])), "n": n,
             "Re": reff / math.sqrt(sq),
             "Ie": sersic_ie_for_unit_flux(n, reff, sersic_bn(n))}
        return model, self.torch.tensor([v[k] for k in self.slots[model]], dtype=self.dtype)

    def __call__(self, row, offset):
        """float64 [S, S]: the pre-PSF image, flux per pixel at unit source flux."""
        model, p = self.params(row, offset)
        with self.torch.no_grad():
            img = self.sims[model](p)
        return img.numpy().astype(np.float64) * (self.pixscale * self.pixscale)

    def lensed_brightness(self, row, offset, x, y):
        """Surface brightness per arcsec^2 (unit source flux) at model coordinates x, y
        (arcsec from the lens centre, arrays): caustics' raytrace then its Sersic."""
        from caskade import ActiveContext

        model, p = self.params(row, offset)
        sim = self.sims[model]
        x, y = (self.torch.as_tensor(np.asarray(a, dtype=np.float64), dtype=self.dtype)
                for a in (x, y))
        with self.torch.no_grad(), ActiveContext(sim):
            sim.fill_params(p)
            bx, by = sim.lens.raytrace(x, y)
            sb = sim.source.brightness(bx, by)
        return bx.numpy(), by.numpy(), sb.numpy()


def _reference_job(args):
    k, row, size, offset, check = args
    t = time.perf_counter()
    img, info = reference.reference_image(row, size, offset, PIXSCALE, return_info=True)
    out = {"k": k, "img": img, "seconds": time.perf_counter() - t,
           "evaluations": info["evaluations"]}
    if check:  # self-check: tol / 2 and every cell split to 1/4 px
        alt = reference.reference_image(row, size, offset, PIXSCALE, tol=0.5e-10, min_level=2)
        out["self_flux"] = abs(alt.sum() / img.sum() - 1)
        out["self_peak"] = float(np.abs(alt - img).max() / img.max())
    return out


def errors(img, ref):
    return abs(img.sum() / ref.sum() - 1), float(np.abs(img - ref).max() / ref.max())


# ---------------------------------------------------------------- main

def summarise(values, labels):
    v = np.asarray(values)
    w = int(np.argmax(v))
    return {"median": float(np.median(v)), "p95": float(np.percentile(v, 95)),
            "worst": float(v[w]), "worst_draw": w, "worst_label": labels[w]}


def main(argv=None):
    ap = argparse.ArgumentParser(description="accuracy of the pre-PSF render vs a reference")
    ap.add_argument("--draws", type=int, default=200, help="random draws (plus corner cases)")
    ap.add_argument("--stamp-size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="write per-draw results and the summary here")
    ap.add_argument("--processes", type=int, default=os.cpu_count())
    ap.add_argument("--no-corners", action="store_true")
    ap.add_argument("--eps", action="append", default=[], metavar="NAME=VALUE",
                    help="our tolerances other than engine.DEFAULT_ACCURACY's, e.g. "
                         "--eps eps_gate=3e-5 (repeatable)")
    ap.add_argument("--lenstronomy-ss", default="4",
                    help="lenstronomy supersampling factors to measure, e.g. 4,16,32")
    ap.add_argument("--caustics-ss", default="4",
                    help="caustics upsample factors to measure, e.g. 4,16,32 (when installed)")
    ap.add_argument("--caustics-dtype", default="float32", choices=("float32", "float64"),
                    help="torch dtype of the caustics renders (float32: caustics' default)")
    ap.add_argument("--caustics-threads", type=int, default=0,
                    help="torch intra-op threads for caustics (0: torch's default)")
    a = ap.parse_args(argv)
    names = {f.name: f.type for f in dataclasses.fields(DEFAULT_ACCURACY)}
    try:
        pairs = [e.split("=", 1) for e in a.eps]
        acc = dataclasses.replace(DEFAULT_ACCURACY, **{
            k: (int(v) if names[k] in (int, "int") else float(v)) for k, v in pairs})
    except (ValueError, TypeError, KeyError) as exc:
        ap.error(f"--eps {a.eps}: {exc!r} (names: {', '.join(names)})")
    s = a.stamp_size
    t_all = time.perf_counter()
    tasks, labels = build_draws(a.draws, a.seed, not a.no_corners)
    n = len(labels)
    rng = np.random.default_rng(a.seed + 12345)
    offsets = rng.uniform(-0.5, 0.5, (n, 2))
    rows = [{c: v[k] for c, v in tasks.items()} for k in range(n)]
    corner = np.array([not lab.startswith("random") for lab in labels])

    # reference, in a pool (spawn: the parent has Numba threads after the render)
    t = time.perf_counter()
    jobs = [(k, rows[k], s, tuple(offsets[k]), bool(corner[k])) for k in range(n)]
    jobs.sort(key=lambda j: not j[4])  # the slow corner cases first
    refs = [None] * n
    ref_info = [None] * n
    with mp.get_context("spawn").Pool(a.processes) as pool:
        for r in pool.imap_unordered(_reference_job, jobs, chunksize=1):
            refs[r["k"]] = r.pop("img")
            ref_info[r["k"]] = r
    t_ref = time.perf_counter() - t

    # ours
    cols = T.read_columns(tasks)
    params, _ = T.pack_params(cols, PIXSCALE)
    origin = s // 2 + offsets
    render_pre_psf(params, origin, s, acc)  # warm-up: compilation, Numba's thread pool
    t = time.perf_counter()
    ours = render_pre_psf(params, origin, s, acc)
    t_ours = time.perf_counter() - t
    import numba

    # lenstronomy at each supersampling factor asked (4 is its users' usual choice; larger
    # ones show what matching our accuracy would cost it)
    res = {"ours": [errors(ours[k], refs[k]) for k in range(n)]}
    lens_rate = {}
    for ss in sorted(set([4] + [int(v) for v in a.lenstronomy_ss.split(",") if v])):
        lenstronomy_pre_psf(rows[0], s, offsets[0], ss=ss)   # warm-up: imports, caches
        t = time.perf_counter()
        imgs = [lenstronomy_pre_psf(rows[k], s, offsets[k], ss=ss) for k in range(n)]
        lens_rate[ss] = n / (time.perf_counter() - t)
        res[f"lenstronomy_ss{ss}"] = [errors(imgs[k], refs[k]) for k in range(n)]
    t_lens = n / lens_rate[4]

    # caustics, when installed, the same way (one process; torch's intra-op threads)
    caus_rate, caus = {}, caustics_version()
    if caus is None:
        print("caustics: not installed (pip install caustics, needs torch): skipped")
    else:
        import torch

        if a.caustics_threads > 0:
            torch.set_num_threads(a.caustics_threads)
        warm = sorted({str(rows[k]["lens_model"]): k for k in range(n)}.values())
        for ss in sorted(set(int(v) for v in a.caustics_ss.split(",") if v)):
            render = CausticsRender(s, ss, a.caustics_dtype)
            for k in warm:                                     # one per simulator
                render(rows[k], offsets[k])
            t = time.perf_counter()
            imgs = [render(rows[k], offsets[k]) for k in range(n)]
            caus_rate[ss] = n / (time.perf_counter() - t)
            res[f"caustics_ss{ss}"] = [errors(imgs[k], refs[k]) for k in range(n)]
    summary = {}
    print(f"{n} draws ({a.draws} random + {int(corner.sum())} corner cases), stamp {s}, "
          f"seed {a.seed}; accuracy {dataclasses.asdict(acc)}")
    print(f"{'method':16s} {'metric':10s} {'median':>9s} {'p95':>9s} {'worst':>9s}  "
          f"{'outside SPEC':>12s}  worst draw")
    for m, r in res.items():
        fl = [x[0] for x in r]
        pk = [x[1] for x in r]
        summary[m] = {"flux": summarise(fl, labels), "peak": summarise(pk, labels),
                      "outside_spec": int(sum((f > FLUX_TOL) or (p > PEAK_TOL)
                                              for f, p in zip(fl, pk)))}
        for metric, tol in (("flux", FLUX_TOL), ("peak", PEAK_TOL)):
            d = summary[m][metric]
            bad = sum(x > tol for x in (fl if metric == "flux" else pk))
            print(f"{m:16s} {metric:10s} {d['median']:9.2e} {d['p95']:9.2e} {d['worst']:9.2e}  "
                  f"{bad:>12d}  #{d['worst_draw']} ({d['worst_label']})")
    print("corner cases (flux err, peak err):")
    cmin = res.get(f"caustics_ss{min(caus_rate)}") if caus_rate else None
    for k in np.flatnonzero(corner):
        ri = ref_info[k]
        print(f"  #{k:<4d} {labels[k]:44s} ours {res['ours'][k][0]:.1e} {res['ours'][k][1]:.1e}"
              f"  lenstronomy {res['lenstronomy_ss4'][k][0]:.1e} "
              f"{res['lenstronomy_ss4'][k][1]:.1e}" +
              (f"  caustics ss{min(caus_rate)} {cmin[k][0]:.1e} {cmin[k][1]:.1e}" if cmin else "") +
              f"  ref {ri['seconds']:.1f} s, self-check {ri['self_flux']:.1e} "
              f"{ri['self_peak']:.1e}")
    thr = {"ours_render_stamps_per_s": n / t_ours, "ours_numba_threads": numba.get_num_threads(),
           "lenstronomy_ss4_stamps_per_s_1proc": n / t_lens,
           "lenstronomy_stamps_per_s_1proc": {f"ss{k}": v for k, v in lens_rate.items()},
           "reference_seconds_total": t_ref, "reference_processes": a.processes,
           "reference_seconds_per_stamp_max": max(r["seconds"] for r in ref_info),
           "reference_seconds_per_stamp_median": float(np.median([r["seconds"]
                                                                   for r in ref_info]))}
    if caus_rate:
        import torch

        thr.update({"caustics_version": caus, "torch_version": torch.__version__,
                    "caustics_dtype": a.caustics_dtype,
                    "caustics_torch_threads": torch.get_num_threads(),
                    "caustics_stamps_per_s_1proc": {f"ss{k}": v for k, v in caus_rate.items()}})
    print(f"throughput (pre-PSF render, {s}x{s}, one band): ours "
          f"{thr['ours_render_stamps_per_s']:.1f} stamps/s on {thr['ours_numba_threads']} Numba threads; lenstronomy ss=4 "
          f"{thr['lenstronomy_ss4_stamps_per_s_1proc']:.1f} stamps/s in one process" +
          "".join(f"; caustics ss={k} {v:.1f} stamps/s in one process on "
                  f"{thr['caustics_torch_threads']} torch threads ({a.caustics_dtype})"
                  for k, v in caus_rate.items()))
    print(f"reference: {t_ref:.0f} s on {a.processes} processes (median "
          f"{thr['reference_seconds_per_stamp_median']:.2f} s, max "
          f"{thr['reference_seconds_per_stamp_max']:.1f} s per stamp); total "
          f"{time.perf_counter() - t_all:.0f} s")
    if a.json:
        out = {"config": {"draws": a.draws, "stamp_size": s, "seed": a.seed, "pixscale": PIXSCALE,
                          "accuracy": dataclasses.asdict(acc),
                          "spec": {"flux": FLUX_TOL, "peak": PEAK_TOL},
                          "lenstronomy_ss": sorted(lens_rate), "caustics_ss": sorted(caus_rate)},
               "summary": summary, "throughput": thr,
               "draws": [{"index": k, "label": labels[k], "lens_offset": offsets[k].tolist(),
                          "row": {c: (v.item() if hasattr(v, "item") else v)
                                  for c, v in rows[k].items()},
                          "ours": {"flux": res["ours"][k][0], "peak": res["ours"][k][1]},
                          **{m: {"flux": res[m][k][0], "peak": res[m][k][1]}
                             for m in res if m != "ours"},
                          "reference": {kk: vv for kk, vv in ref_info[k].items() if kk != "k"}}
                         for k in range(n)]}
        with open(a.json, "w") as fh:
            json.dump(out, fh, indent=1)
    return summary


if __name__ == "__main__":
    main()
