"""How long a run of ROWS rows over BRICKS bricks takes, from per-stage rates measured on this
machine (``gpu-inject bench --project-manifest ROWS,BRICKS``).

Stages and their measured rates:

* reading: a linear cost per brick (open and check its files) plus per stamp cut, fitted on a
  DR10-format 3600x3600 mock brick cut at two stamp counts (``measure_reading``), divided
  over the reader processes;
* engine: stamps/s of ``run_bench`` for the backend (render, PSF, injection, metrics);
* writing: seconds per stamp of one Parquet stamps part (``measure_writing``), one writer.

The pipeline overlaps the stages, so a GPU instance (engine on the GPU, readers on the CPU
cores) takes about the slowest stage; on the CPU backend the stages share the cores, so their
core-seconds add. A Spark run divides the units over its executors (each one such machine).
A model, not a measurement of a full run: ``benchmarks/pipeline_speed.py`` measures that.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass

import numpy as np

#: The user's train tier (../shared/seed/): rows and bricks.
USER_TRAIN_TIER = (10_627_158, 180_152)


@dataclass
class Rates:
    read_s_per_brick: float     # one reader process
    read_s_per_stamp: float
    write_s_per_stamp: float
    engine_stamps_per_s: float  # the whole backend (all its cores, or the GPU)
    backend: str
    device: str
    cores: int


def measure_reading(folder=None, size=3600, counts=(10, 60), stamp_size=64):
    """(seconds per brick, seconds per stamp) of cutting grz stamps with image, invvar,
    maskbits and psfsize from one mock brick, one process: a line through two counts."""
    from astropy.wcs import WCS

    from .bench import median_seconds
    from .io import CoaddSource, cut_brick
    from .mock import wcs_header, write_mock_brick

    folder = folder or os.path.join(tempfile.gettempdir(), "gpu_inject_projection")
    brick = "0489m442"
    if not os.path.isdir(os.path.join(folder, brick[:3], brick)):
        write_mock_brick(folder, brick, size=size, seed=0)
    src = CoaddSource(folder)
    rng = np.random.default_rng(0)
    t = []
    for n in counts:
        px, py = rng.uniform(50, size - 50, (2, n))
        ra, dec = WCS(wcs_header(brick, size)).pixel_to_world_values(px, py)
        # the first, untimed call warms the page cache and the imports
        t.append(median_seconds(lambda: cut_brick(src, brick, ra, dec, stamp_size, "grz")))
    per_stamp = (t[1] - t[0]) / (counts[1] - counts[0])
    return max(t[0] - per_stamp * counts[0], 0.0), per_stamp


def measure_writing(n=256, stamp_size=64):
    """Seconds per stamp of writing a stamps part of n rows (Parquet, local disk)."""
    from .bench import median_seconds, synthetic_inputs
    from .io.writer import stamps_table, write_part

    cutout, invvar, maskbits = synthetic_inputs(n, stamp_size)
    ids = list(range(n))
    with tempfile.TemporaryDirectory() as tmp:
        def write():
            t = stamps_table(ids, ["0489m442"] * n, [1.0] * n, [1.0] * n, ["SIE"] * n, "grz",
                             cutout, invvar, maskbits, np.ones(n, bool))
            write_part(t, os.path.join(tmp, "part.parquet"))
        return median_seconds(write) / n


def project(rows, bricks, rates: Rates, *, readers=None, cut_fraction=0.5, executors=None,
            price_per_hour=None):
    """Hours for ``rows`` rows over ``bricks`` bricks on one such machine and on
    ``executors`` of them (Spark), with the stage that limits; cost when a price is given.

    cut_fraction: the share of rows whose stamp must be cut (0.5 when every injection has a
    CONTROL at its target, as the user's train tier: the pair is cut once)."""
    readers = readers or max(rates.cores - 1, 1)
    read_core_s = bricks * rates.read_s_per_brick + rows * cut_fraction * rates.read_s_per_stamp
    engine_s = rows / rates.engine_stamps_per_s
    write_s = rows * rates.write_s_per_stamp
    if rates.backend == "gpu":
        stages = {"reading": read_core_s / readers, "engine": engine_s, "writing": write_s}
        wall = max(stages.values())
    else:   # the engine's stamps/s already uses every core: the other stages take theirs
        stages = {"reading": read_core_s / rates.cores, "engine": engine_s,
                  "writing": write_s / rates.cores}
        wall = sum(stages.values())
    out = {"rows": rows, "bricks": bricks, "readers": readers, "cut_fraction": cut_fraction,
           "rates": asdict(rates), "stage_hours": {k: v / 3600 for k, v in stages.items()},
           "limited_by": max(stages, key=stages.get), "hours_one_machine": wall / 3600}
    if executors:
        out["executors"] = executors
        out["hours_spark"] = wall / 3600 / executors
    if price_per_hour is not None:
        out["cost_one_machine"] = wall / 3600 * price_per_hour
        if executors:
            out["cost_spark"] = out["cost_one_machine"]   # same machine-hours, spread out
    return out
