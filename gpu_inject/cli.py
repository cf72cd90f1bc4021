"""``gpu-inject``: the command line (click). Parses options, calls one library function each,
reports; errors are one line and a non-zero exit, never a traceback for a user mistake."""
import json
import platform
import sys

import click
import numpy as np

from . import __version__


class _Failure(click.ClickException):
    """One-line error, exit status 1."""


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gpu-inject")
def main():
    """Inject simulated strongly-lensed galaxies into DESI Legacy Surveys DR10 stamps."""


@main.command()
def info():
    """Versions, backends and device."""
    import numba
    import numpy

    from .engine import BackendUnavailable, get_backend

    click.echo(f"gpu_inject {__version__}")
    click.echo(f"python {platform.python_version()} on {platform.machine()}, "
               f"numpy {numpy.__version__}, numba {numba.__version__}")
    for name in ("cpu", "gpu"):
        try:
            be = get_backend(name)
            click.echo(f"backend {name}: available ({be.device})")
        except BackendUnavailable as exc:
            click.echo(f"backend {name}: unavailable ({exc})")
    auto = get_backend("auto")
    click.echo(f"backend auto -> {auto.name} ({auto.why})")


@main.command()
@click.option("--backend", type=click.Choice(["cpu", "gpu", "all"]), default="cpu",
              show_default=True, help="Backend(s) to time; 'all' times every available one.")
@click.option("--stamps", type=click.IntRange(min=1), default=2048, show_default=True,
              help="Stamps per timed batch.")
@click.option("--stamp-size", type=click.IntRange(min=16), default=64, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Stamps per engine batch (sets the memory used).")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True,
              help="Timed repeats after the warm-up; the median is reported.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, writable=True),
              help="Write the results (a list, one entry per backend) to this file.")
@click.option("--project-manifest", "project", default=None, metavar="ROWS,BRICKS",
              help="Also measure reading and writing here and project a full run of ROWS "
                   "rows over BRICKS bricks (the user's train tier: 10627158,180152).")
@click.option("--executors", type=click.IntRange(min=1), default=None,
              help="With --project-manifest: also project a Spark run on this many "
                   "executors like this machine.")
@click.option("--price-per-hour", type=click.FloatRange(min=0), default=None,
              help="With --project-manifest: the machine's price, for the cost.")
def bench(backend, stamps, stamp_size, batch_size, repeats, seed, json_path, project,
          executors, price_per_hour):
    """Time the engine (render, PSF, inject, metrics) on random draws in memory."""
    from .bench import run_bench
    from .engine import BackendUnavailable

    if stamp_size % 2:
        raise _Failure(f"--stamp-size {stamp_size}: must be even")
    if project:
        _project_spec(project)   # a bad value fails before anything is timed
    names = ["cpu", "gpu"] if backend == "all" else [backend]
    results = []
    for name in names:
        try:
            res = run_bench(name, stamps=stamps, stamp_size=stamp_size, repeats=repeats,
                            seed=seed, batch_size=batch_size)
        except BackendUnavailable as exc:
            if backend == "all":
                click.echo(f"{name}: skipped ({exc})", err=True)
                continue
            raise _Failure(str(exc)) from None
        results.append(res)
        click.echo(f"{res['backend']:>4} [{res['device']}]: {res['stamps']} stamps "
                   f"{res['stamp_size']}x{res['stamp_size']} {res['bands']} in "
                   f"{res['seconds']:.3f} s (median of {repeats}) = "
                   f"{res['stamps_per_s']:,.0f} stamps/s, peak RSS "
                   f"{res['peak_rss_mib']:,.0f} MiB (batches of {batch_size}); medians: "
                   f"copy-in {res['copy_in_seconds']:.3f} s, kernels "
                   f"{res['kernel_seconds']:.3f} s, copy-out {res['copy_out_seconds']:.3f} s; "
                   f"host to host with batches overlapping: "
                   f"{res['stamps_per_s_overlapped']:,.0f} stamps/s")
    if project:
        results = _projections(project, results, executors, price_per_hour)
    if json_path:
        with open(json_path, "w") as fh:
            json.dump(results, fh, indent=2)
        click.echo(f"results written to {json_path}")


def _project_spec(spec):
    try:
        rows, bricks = (int(v) for v in spec.split(","))
        if rows < 1 or bricks < 1:
            raise ValueError
    except ValueError:
        raise _Failure(f"--project-manifest {spec}: expected ROWS,BRICKS, two integers "
                       ">= 1") from None
    return rows, bricks


def _projections(spec, bench_results, executors, price_per_hour):
    """--project-manifest: measure reading and writing, then project per backend timed."""
    import os

    from .projection import Rates, measure_reading, measure_writing, project

    rows, bricks = _project_spec(spec)
    click.echo("measuring reading (a mock 3600x3600 brick) and writing...")
    per_brick, per_stamp = measure_reading()
    write = measure_writing()
    click.echo(f"reading: {per_brick * 1e3:.1f} ms per brick + {per_stamp * 1e3:.2f} ms per "
               f"stamp (one process); writing: {write * 1e3:.3f} ms per stamp")
    out = []
    for res in bench_results:
        rates = Rates(per_brick, per_stamp, write, res["stamps_per_s"], res["backend"],
                      res["device"], os.cpu_count() or 1)
        p = project(rows, bricks, rates, executors=executors, price_per_hour=price_per_hour)
        out.append(p)
        stages = ", ".join(f"{k} {v:.2f} h" for k, v in p["stage_hours"].items())
        line = (f"{res['backend']}: {rows:,} rows / {bricks:,} bricks -> "
                f"{p['hours_one_machine']:.2f} h on this machine ({stages}; limited by "
                f"{p['limited_by']})")
        if executors:
            line += f"; {p['hours_spark']:.3f} h on {executors} Spark executors like it"
        if price_per_hour is not None:
            line += f"; cost {p['cost_one_machine']:.2f} at {price_per_hour}/h"
        click.echo(line)
    return out


def _bands(value):
    """'g,r,z' or 'grz' -> ('g', 'r', 'z')."""
    return tuple(b.strip() for b in value.split(",")) if "," in value else tuple(value)


def _print_summary(summary):
    t = summary.timings
    # under Spark each task reads its own bricks: the stage times are sums over the tasks
    where = ("Spark tasks (stage times summed over them)" if summary.executor == "spark"
             else "reader processes")
    click.echo(f"{summary.experiment_id}: {summary.rows} rows written under {summary.out} "
               f"({summary.ok} ok: {summary.ok - summary.controls} injections, "
               f"{summary.controls} controls; {summary.errors} error rows)")
    click.echo(f"units: {summary.units} ({summary.units_done_before} done before this run); "
               f"{t.get('rows', 0)} rows in {summary.seconds:.1f} s = "
               f"{t.get('stamps_per_s', 0):,.0f} stamps/s (reading {t.get('read_s', 0):.1f} s "
               f"in {where}, engine {t.get('engine_s', 0):.1f} s, writing "
               f"{t.get('write_s', 0):.1f} s)")
    for reason, count in list(summary.error_reasons.items())[:10]:
        click.echo(f"  {count:>8}  {reason}")


@main.command()
@click.option("--manifest", required=True, help="Manifest Parquet file or folder (local or s3://).")
@click.option("--coadd-root", required=True, help="Coadd folder or s3:// URL.")
@click.option("--out", required=True, help="Output folder or s3:// URL.")
@click.option("--experiment-id", required=True, help="Name of this run's datasets.")
@click.option("--bands", default="g,r,z", show_default=True, help="Bands, in output order.")
@click.option("--stamp-size", type=int, default=64, show_default=True)
@click.option("--backend", type=click.Choice(["auto", "cpu", "gpu"]), default="auto",
              show_default=True)
@click.option("--batch-size", type=int, default=1024, show_default=True,
              help="Stamps per engine batch (memory grows with it).")
@click.option("--workers", type=int, default=4, show_default=True,
              help="Brick-reading processes ahead of the engine (--executor local; a "
                   "Spark task reads its unit in its own process).")
@click.option("--coadd-layout", type=click.Choice(["legacysurvey", "flat"]),
              default="legacysurvey", show_default=True)
@click.option("--use-psfsize-maps/--no-use-psfsize-maps", default=True, show_default=True,
              help="PSF FWHM from the psfsize maps at the stamp centre (else the manifest).")
@click.option("--psf-model", type=click.Choice(["gaussian", "moffat"]), default="gaussian",
              show_default=True)
@click.option("--moffat-beta", type=float, default=3.5, show_default=True)
@click.option("--cache-dir", default=None, help="Local cache of remote coadd files.")
@click.option("--force", is_flag=True, help="Start over: delete this experiment's parts.")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar (default: on a terminal; log lines otherwise).")
@click.option("--unit-rows", type=int, default=256, show_default=True,
              help="Rows per work unit (whole bricks; one part per unit and split).")
@click.option("--executor", type=click.Choice(["local", "spark"]), default="local",
              show_default=True,
              help="Run the units here, or as Spark tasks (one unit per task; same output).")
@click.option("--spark-master", default=None,
              help="With --executor spark: the master URL (local[4], yarn, spark://...); "
                   "default: the active or spark-submit session, else local[*].")
def run(manifest, coadd_root, out, experiment_id, bands, stamp_size, backend, batch_size,
        workers, coadd_layout, use_psfsize_maps, psf_model, moffat_beta, cache_dir, force,
        progress, unit_rows, executor, spark_master):
    """Inject arcs for every row of a manifest; write stamps and metrics as Parquet."""
    from .pipeline import PipelineError, RunOptions
    from .pipeline import run as run_pipeline

    opts = RunOptions(manifest=manifest, coadd_root=coadd_root, out=out,
                      experiment_id=experiment_id, bands=_bands(bands), stamp_size=stamp_size,
                      backend=backend, batch_size=batch_size, workers=workers,
                      coadd_layout=coadd_layout, use_psfsize_maps=use_psfsize_maps,
                      psf_model=psf_model, moffat_beta=moffat_beta, cache_dir=cache_dir,
                      force=force, unit_rows=unit_rows, executor=executor,
                      spark_master=spark_master)
    try:
        summary = run_pipeline(opts, progress=progress)
    except PipelineError as exc:
        raise _Failure(str(exc)) from None
    _print_summary(summary)


@main.command()
@click.option("--out", "out", default="gpu_inject_demo", show_default=True,
              type=click.Path(file_okay=False), help="Folder for the bricks, manifest and run.")
@click.option("--backend", type=click.Choice(["auto", "cpu", "gpu"]), default="auto",
              show_default=True)
@click.option("--bricks", type=click.IntRange(1, 4), default=2, show_default=True)
@click.option("--brick-size", type=click.IntRange(min=200), default=3600, show_default=True,
              help="Mock brick side in pixels (DR10: 3600).")
@click.option("--targets-per-brick", type=click.IntRange(min=1), default=30, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--progress/--no-progress", default=None)
def demo(out, backend, bricks, brick_size, targets_per_brick, seed, progress):
    """Mock bricks + manifest + run + checks, offline: the whole tool in a minute."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from .demo import run_demo
    from .pipeline import PipelineError

    try:
        res = run_demo(out, backend=backend, bricks=bricks, size=brick_size,
                       per_brick=targets_per_brick, seed=seed, progress=progress,
                       log=lambda m: click.echo(m, err=True))
    except (PipelineError, ValueError) as exc:
        raise _Failure(str(exc)) from None
    _print_summary(res.summary)
    click.echo(f"\ncoadds    {res.coadd_root}\nmanifest  {res.manifest}\n"
               f"stamps    {res.out}/stamps/{res.experiment_id}/region_split=*/\n"
               f"metrics   {res.out}/metrics/{res.experiment_id}/region_split=*/\n"
               f"config    {res.out}/_stage_config.json\n")
    m = pq.read_table(f"{res.out}/metrics/{res.experiment_id}")
    inj = m.filter(pc.and_(pc.equal(m["cutout_ok"], 1),
                           pc.not_equal(m["lens_model"], "CONTROL")))
    click.echo(f"{'injections: metric':<30}{'min':>10}{'median':>10}{'max':>10}")
    for col in ("theta_e_arcsec", "magnification", "arc_snr", "total_injected_flux_r",
                "psf_fwhm_used_r", "bad_pixel_frac"):
        v = inj[col].to_numpy(zero_copy_only=False)
        click.echo(f"{col:<30}{np.nanmin(v):>10.3g}{np.nanmedian(v):>10.3g}"
                   f"{np.nanmax(v):>10.3g}")
    click.echo("")
    for name, ok, detail in res.checks:
        click.echo(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}")
    report = _demo_validate(res)
    if not res.passed:
        raise _Failure("demo: a check failed (see above)")
    if report.failed:
        raise _Failure("demo: gpu-inject validate found a failure (see above)")


def _demo_validate(res):
    """``gpu-inject validate`` on the demo's run (every brick sampled, controls re-cut from
    the mock coadds): prints the checks that are not PASS and a summary line, returns the
    result."""
    from .validate import ValidateError, validate_run

    try:
        result = validate_run(res.out, res.experiment_id, manifest=res.manifest,
                              coadd_root=res.coadd_root, sample=1.0)
    except ValidateError as exc:
        raise _Failure(str(exc)) from None
    click.echo("")
    _print_checks(result, flagged_only=True)
    n = result.counts
    click.echo(f"validate: {len(result.checks)} checks, {n['FAIL']} failed, {n['WARN']} "
               f"to look at (above), {n['PASS']} passed; report "
               f"{result.report_dir}/report.md")
    return result


def _print_checks(result, flagged_only=False):
    for c in result.checks:
        if not (flagged_only and c.status == "PASS"):
            click.echo(f"{c.status}  {c.name}: {c.detail}")


@main.command()
@click.argument("out")
@click.option("--experiment-id", required=True, help="The run's experiment id.")
@click.option("--manifest", default=None,
              help="The run's manifest (local or s3://): every row must be written once.")
@click.option("--report", "report", default=None,
              help="Report folder (local). Default: <OUT>/_validate/<ID> for a local OUT, "
                   "./_validate/<ID> for an s3:// one.")
@click.option("--sample", type=click.FloatRange(0, 1), default=0.001, show_default=True,
              help="Share of bricks whose stamps are read (chosen by a hash of the brick "
                   "name; at least 2 bricks; 0: none).")
@click.option("--coadd-root", default=None,
              help="The run's coadds: sampled stamps are compared with the raw cutouts.")
@click.option("--coadd-layout", type=click.Choice(["legacysurvey", "flat"]), default=None,
              help="Layout of --coadd-root (default: the run's).")
@click.option("--batch-size", type=click.IntRange(min=1), default=65536, show_default=True,
              help="Metrics rows per streamed batch (memory follows it).")
@click.pass_context
def validate(ctx, out, experiment_id, manifest, report, sample, coadd_root, coadd_layout,
             batch_size):
    """Audit a finished run: rows, controls, physics, PSF, quality, splits (exit 1 on FAIL)."""
    from .validate import ValidateError, validate_run

    try:
        result = validate_run(out, experiment_id, manifest=manifest, report_dir=report,
                              sample=sample, coadd_root=coadd_root, coadd_layout=coadd_layout,
                              batch_rows=batch_size, log=lambda m: click.echo(m, err=True))
    except ValidateError as exc:
        raise _Failure(str(exc)) from None
    _print_checks(result)
    for note in result.notes:
        click.echo(f"note: {note}")
    n = result.counts
    click.echo(f"validate {experiment_id}: {result.status} ({n['FAIL']} FAIL, {n['WARN']} "
               f"WARN, {n['PASS']} PASS); report {result.report_dir}/report.md")
    if result.failed:
        ctx.exit(1)


def _grid_option(items):
    """('theta_e_arcsec=0.4,0.8', 'lens_model=SIS,SIE') -> {column: [values]}."""
    grid = {}
    for item in items:
        name, sep, values = item.partition("=")
        if not sep or not values:
            raise _Failure(f"--grid {item}: expected COLUMN=V1,V2,...")
        vals = [v.strip() for v in values.split(",")]
        if name.strip() != "lens_model":
            try:
                vals = [float(v) for v in vals]
            except ValueError:
                raise _Failure(f"--grid {item}: values must be numbers") from None
        grid[name.strip()] = vals
    return grid


@main.command("make-manifest")
@click.option("--catalog", required=True,
              help="Targets: Parquet file/folder or FITS table (local or s3://) with brickname, "
                   "ra, dec, flux_r [, psfsize_g/r/z] (any case, e.g. a DR10 sweep).")
@click.option("--out", "out", required=True, help="Manifest Parquet file to write (or s3://).")
@click.option("--injections-per-target", type=click.IntRange(min=0), default=1,
              show_default=True, help="Random draws per target (per grid point with --grid).")
@click.option("--grid", "grid", multiple=True, metavar="COLUMN=V1,V2,...",
              help="Grid over a manifest column (repeatable; the product of all is taken); "
                   "other columns are drawn at random over the SPEC ranges.")
@click.option("--controls", type=click.Choice(["per-target", "per-injection", "none"]),
              default="per-target", show_default=True, help="CONTROL rows to add.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--region-column", default=None,
              help="Catalogue column of the region id hashed for the split (default: brickname).")
@click.option("--split-fractions", default="0.7,0.15,0.15", show_default=True,
              help="train,val,test shares of regions (xxhash64 of the region id).")
@click.option("--lens-models", default="SIE", show_default=True,
              help="Lens models drawn from (SIS, SIE; comma separated).")
@click.option("--first-task-id", type=int, default=0, show_default=True)
@click.option("--force", is_flag=True, help="Replace an existing manifest file.")
def make_manifest_cmd(catalog, out, injections_per_target, grid, controls, seed, region_column,
                      split_fractions, lens_models, first_task_id, force):
    """Tasks from a target catalogue: injections (grid or random draws) and CONTROLs."""
    import os

    from .make_manifest import format_summary, make_manifest, write_manifest

    if not out.startswith("s3://") and os.path.exists(out) and not force:
        raise _Failure(f"--out {out} exists: choose another path or add --force")
    try:
        fractions = tuple(float(f) for f in split_fractions.split(","))
    except ValueError:
        raise _Failure(f"--split-fractions {split_fractions}: expected three numbers, "
                       "e.g. 0.7,0.15,0.15") from None
    try:
        table = make_manifest(catalog, injections_per_target=injections_per_target,
                              grid=_grid_option(grid) or None, controls=controls, seed=seed,
                              region_column=region_column, split_fractions=fractions,
                              first_task_id=first_task_id,
                              lens_models=tuple(m.strip() for m in lens_models.split(",")))
        summary = write_manifest(table, out)
    except ValueError as exc:
        raise _Failure(str(exc)) from None
    click.echo(format_summary(summary))


def _read_targets(path):
    """(ra, dec, brickname or None) rows from a Parquet or CSV file."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    try:
        table = pacsv.read_csv(path) if str(path).endswith(".csv") else pq.read_table(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a user error here
        raise _Failure(f"--targets {path}: cannot read ({exc.__class__.__name__}: "
                       f"{str(exc).splitlines()[0]})") from None
    missing = [c for c in ("ra", "dec") if c not in table.column_names]
    if missing:
        raise _Failure(f"--targets {path}: missing column(s) {', '.join(missing)}")
    bricks = (table["brickname"].to_pylist() if "brickname" in table.column_names
              else [None] * table.num_rows)
    return list(zip(table["ra"].to_pylist(), table["dec"].to_pylist(), bricks))


@main.command("mock-bricks")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False),
              help="Root folder of the mock coadds.")
@click.option("--brick", "bricks", multiple=True, default=("0489m442",), show_default=True,
              help="DR10 brick name; repeat for several.")
@click.option("--size", type=click.IntRange(min=16), default=3600, show_default=True,
              help="Image side in pixels (DR10: 3600).")
@click.option("--bands", default="grz", show_default=True)
@click.option("--layout", type=click.Choice(["legacysurvey", "flat"]), default="legacysurvey",
              show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--targets", type=click.Path(exists=True, dir_okay=False),
              help="Parquet or CSV with ra, dec [, brickname]: LRG-like galaxies placed there.")
@click.option("--missing-coverage", multiple=True, metavar="BAND:none|partial",
              help="A band without coverage (psfsize 0 there), e.g. g:partial.")
@click.option("--no-masks", is_flag=True, help="No bright-star, WISE or other masks.")
def mock_bricks(out, bricks, size, bands, layout, seed, targets, missing_coverage, no_masks):
    """Write DR10-format mock bricks (real fpack files) for demos and tests."""
    from .mock import write_mock_brick

    gaps = {}
    for item in missing_coverage:
        band, _, kind = item.partition(":")
        if band not in bands.replace(",", "") or kind not in ("none", "partial"):
            raise _Failure(f"--missing-coverage {item}: expected BAND:none|partial with BAND "
                           f"in {bands}")
        gaps[band] = kind
    rows = _read_targets(targets) if targets else []
    for k, brick in enumerate(bricks):
        mine = [(ra, dec) for ra, dec, b in rows if b in (None, brick)]
        try:
            paths = write_mock_brick(out, brick, size=size, bands=bands, layout=layout,
                                     seed=seed + k, targets=mine or None,
                                     missing_band_coverage=gaps or None, masks=not no_masks)
        except ValueError as exc:
            raise _Failure(f"--brick {brick}: {exc}") from None
        folder = next(iter(paths.values())).parent
        click.echo(f"{brick}: {len(paths)} files, {len(mine)} targets -> {folder}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
