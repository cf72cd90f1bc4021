"""``gpu-inject demo``: the whole tool on one machine, offline, in under a minute.

Writes DR10-format mock bricks (real fpack files, ``mock.py``) with LRG-like targets, a
target catalogue and its manifest (``make_manifest``: one injection drawn over the SPEC
ranges and one CONTROL per target, plus one target on a brick that is not there, which must
come out as an error row), runs ``gpu-inject run`` on the best backend, and checks the
output against what it did not compute itself: every manifest row once, CONTROL stamps equal
to the cutouts read back from the bricks bit for bit, injections different from their
CONTROL, error rows with their reason.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .io.coadd import CoaddSource
from .io.cutout import cut_brick
from .make_manifest import make_manifest, write_manifest
from .mock import wcs_header, write_mock_brick
from .pipeline import RunOptions, run

BRICKS = ("0489m442", "0492m442", "0495m442", "0498m442")
MISSING_BRICK = "0501m442"   # named in the catalogue, absent from the coadds
LRG_FLUX_R = 10 ** ((22.5 - 19.5) / 2.5)   # r = 19.5, the mock LRGs' middle magnitude


@dataclass
class DemoResult:
    folder: str
    coadd_root: str
    manifest: str
    out: str
    experiment_id: str
    summary: object
    checks: list = field(default_factory=list)   # (name, passed, detail)

    @property
    def passed(self) -> bool:
        return all(ok for _, ok, _ in self.checks)


def _targets(bricks, per_brick, size, seed):
    rng = np.random.default_rng(seed)
    rows = []
    for brick in bricks:
        from astropy.wcs import WCS

        px, py = rng.uniform(0.1 * size, 0.9 * size, (2, per_brick))
        ra, dec = WCS(wcs_header(brick, size)).pixel_to_world_values(px, py)
        rows += [(brick, float(r), float(d)) for r, d in zip(ra, dec)]
    return rows


def build_inputs(folder, *, bricks=2, size=3600, per_brick=30, seed=0, log=print):
    """Mock coadds and the manifest under ``folder``; returns (coadd_root, manifest_path)."""
    if not 1 <= bricks <= len(BRICKS):
        raise ValueError(f"bricks = {bricks}: choose 1 to {len(BRICKS)}")
    coadd = os.path.join(folder, "coadd")
    names = BRICKS[:bricks]
    targets = _targets(names, per_brick, size, seed)
    for k, brick in enumerate(names):
        mine = [(r, d) for b, r, d in targets if b == brick]
        if not os.path.isdir(os.path.join(coadd, brick[:3], brick)):
            log(f"writing mock brick {brick} ({size}x{size}, grz, {len(mine)} LRG targets)")
            write_mock_brick(coadd, brick, size=size, seed=seed + k, targets=mine)
    ra0, dec0 = targets[0][1], targets[0][2]
    targets.append((MISSING_BRICK, ra0, dec0))
    catalog = pa.table({
        "brickname": [b for b, _, _ in targets],
        "ra": [r for _, r, _ in targets],
        "dec": [d for _, _, d in targets],
        "flux_r": [LRG_FLUX_R] * len(targets),
    })
    pq.write_table(catalog, os.path.join(folder, "targets.parquet"))
    table = make_manifest(catalog, injections_per_target=1, controls="per-injection",
                          seed=seed)
    manifest = os.path.join(folder, "manifest.parquet")
    write_manifest(table, manifest)
    return coadd, manifest


def check_output(out, experiment_id, manifest, coadd_root, stamp_size, bands):
    """The demo's invariants, each (name, passed, detail)."""
    m_in = pq.read_table(manifest)
    metrics = pq.read_table(os.path.join(out, "metrics", experiment_id)).sort_by("task_id")
    stamps = pq.read_table(os.path.join(out, "stamps", experiment_id)).sort_by("task_id")
    checks = []
    ids_in = sorted(m_in["task_id"].to_pylist())
    ok_rows = (metrics.num_rows == stamps.num_rows == m_in.num_rows
               and metrics["task_id"].to_pylist() == ids_in == stamps["task_id"].to_pylist())
    checks.append(("rows in = rows out", ok_rows,
                   f"manifest {m_in.num_rows}, metrics {metrics.num_rows}, "
                   f"stamps {stamps.num_rows}"))
    rows = metrics.to_pylist()
    src = CoaddSource(coadd_root)
    ctrl = [i for i, r in enumerate(rows) if r["lens_model"] == "CONTROL" and r["cutout_ok"]]
    same = 0
    for i in ctrl:
        r = rows[i]
        raw = cut_brick(src, r["brickname"], [r["ra"]], [r["dec"]], stamp_size, bands)
        img = stamps["image"][i].to_numpy()
        same += int(np.array_equal(img.view(np.uint32), raw.image[0].view(np.uint32)))
    checks.append(("controls untouched (bit for bit)", same == len(ctrl) > 0,
                   f"{same} of {len(ctrl)} CONTROL stamps equal the raw cutout"))
    by_target = {}
    for i, r in enumerate(rows):
        if r["cutout_ok"]:
            by_target.setdefault((r["brickname"], r["ra"], r["dec"]), []).append(i)
    changed = pairs = 0
    for idx in by_target.values():
        kinds = {rows[i]["lens_model"] == "CONTROL": i for i in idx}
        if len(kinds) == 2:
            pairs += 1
            a, b = stamps["image"][kinds[False]].to_numpy(), stamps["image"][kinds[True]].to_numpy()
            changed += int(not np.array_equal(a, b) and rows[kinds[False]]["arc_snr_opt"] > 0)
    checks.append(("injections add light", changed == pairs > 0,
                   f"{changed} of {pairs} injection stamps differ from their CONTROL"))
    missing = [r for r in rows if r["brickname"] == MISSING_BRICK]
    ok_err = bool(missing) and all(not r["cutout_ok"] and "not found" in (r["error"] or "")
                                   for r in missing)
    checks.append(("error rows kept with their reason", ok_err,
                   f"{len(missing)} rows on missing brick {MISSING_BRICK}: "
                   f"{missing[0]['error'] if missing else 'none'}"))
    return checks


def run_demo(folder, *, backend="auto", bricks=2, size=3600, per_brick=30, seed=0,
             workers=2, progress=None, log=print) -> DemoResult:
    """Mock inputs, the full run and its checks, all under ``folder``."""
    folder = os.path.abspath(folder)
    os.makedirs(folder, exist_ok=True)
    coadd, manifest = build_inputs(folder, bricks=bricks, size=size, per_brick=per_brick,
                                   seed=seed, log=log)
    opts = RunOptions(manifest=manifest, coadd_root=coadd, out=os.path.join(folder, "out"),
                      experiment_id="demo", backend=backend, workers=workers, force=True)
    summary = run(opts, progress=progress, log=log)
    checks = check_output(opts.out, opts.experiment_id, manifest, coadd, opts.stamp_size,
                          opts.bands)
    return DemoResult(folder=folder, coadd_root=coadd, manifest=manifest, out=opts.out,
                      experiment_id=opts.experiment_id, summary=summary, checks=checks)
