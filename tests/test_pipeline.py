"""End to end: manifest + DR10-format mock bricks -> gpu-inject run -> Parquet (SPEC 4-7).

The references here are things the pipeline did not produce: the raw cutouts read back with
``cut_brick`` (controls must equal them bit for bit) and ``render_arcs`` for the same row
(injection minus cutout must equal it), and the manifest itself (rows in = rows out).
"""
import json
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy.wcs import WCS
from click.testing import CliRunner

import gpu_inject
from gpu_inject.cli import main
from gpu_inject.draws import random_tasks
from gpu_inject.io import CoaddSource, cut_brick
from gpu_inject.mock import wcs_header, write_mock_brick
from gpu_inject.pipeline import PipelineError, RunOptions, plan_units, run

SIZE = 400                       # mock brick side (pixels): small and fast, DR10 otherwise
GOOD = ("0489m442", "0492m442")  # complete bricks
NO_R = "0495m442"                # no r coverage: psfsize_r map is 0 everywhere
NO_Z_FILE = "0498m442"           # z image file deleted
BANDS = ("g", "r", "z")


def _sky(brick, px, py):
    w = WCS(wcs_header(brick, SIZE))
    ra, dec = w.pixel_to_world_values(np.asarray(px, float), np.asarray(py, float))
    return np.asarray(ra, float), np.asarray(dec, float)


def _rows(brick, n, split, seed, first_id):
    """n rows on ``brick``: random SPEC-range injections, every third a CONTROL."""
    rng = np.random.default_rng(seed)
    t = random_tasks(n, seed=seed)
    px, py = rng.uniform(40, SIZE - 40, n), rng.uniform(40, SIZE - 40, n)
    t["ra"], t["dec"] = _sky(brick, px, py)
    t["task_id"] = np.arange(first_id, first_id + n, dtype=np.int64)
    t["brickname"] = np.array([brick] * n, dtype=object)
    t["region_split"] = np.array([split] * n, dtype=object)
    model = t["lens_model"].copy()
    model[::3] = "CONTROL"
    t["lens_model"] = model
    t["theta_e_arcsec"] = np.where(model == "CONTROL", 0.0, t["theta_e_arcsec"])
    return t


def _table(parts):
    cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return pa.table({k: pa.array(list(v)) if v.dtype == object else pa.array(v)
                     for k, v in cols.items()})


# Bad rows: (what to change in a valid row, a substring of the expected error).
BAD = [
    ({"region_split": "tran"}, "region_split = 'tran'"),
    ({"theta_e_arcsec": np.nan}, "theta_e_arcsec = null or NaN"),
    ({"src_reff_arcsec": -0.1}, "src_reff_arcsec = -0.1"),
    ({"src_e": 1.2}, "src_e = 1.2"),
    ({"src_n": 9.0}, "src_n = 9"),
    ({"lens_model": "NFW"}, "lens_model = 'NFW'"),
    ({"brickname": "1234p567"}, "brick 1234p567 not found"),
    ({"ra_pix": -200.0}, "off the image"),
    ({"lens_model": "CONTROL", "theta_e_arcsec": 0.5}, "CONTROL row with theta_e_arcsec"),
    ({"brickname": NO_R, "psfsize_r": np.nan}, "no valid PSF for r"),
    ({"brickname": NO_Z_FILE}, "band z image file missing"),
]


def _bad_rows(first_id):
    parts = []
    for k, (change, _) in enumerate(BAD):
        t = _rows(GOOD[0], 1, "train", 1000 + k, first_id + k)
        t["lens_model"] = np.array(["SIE"], dtype=object)
        brick = change.get("brickname", GOOD[0])
        px = change.get("ra_pix", 200.0)
        t["ra"], t["dec"] = _sky(brick if brick in GOOD + (NO_R, NO_Z_FILE) else GOOD[0],
                                 [px], [200.0])
        for c, v in change.items():
            if c != "ra_pix":
                t[c] = np.array([v], dtype=object if isinstance(v, str) else float)
        parts.append(t)
    return parts


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Coadds (4 mock bricks), a manifest with good and bad rows, and one finished run."""
    root = tmp_path_factory.mktemp("pipeline")
    coadd = root / "coadd"
    for k, brick in enumerate(GOOD + (NO_R, NO_Z_FILE)):
        write_mock_brick(coadd, brick, size=SIZE, seed=k,
                         missing_band_coverage={"r": "none"} if brick == NO_R else None)
    os.remove(coadd / NO_Z_FILE[:3] / NO_Z_FILE / f"legacysurvey-{NO_Z_FILE}-image-z.fits.fz")
    good = [_rows(GOOD[0], 14, "train", 1, 0), _rows(GOOD[1], 10, "val", 2, 100),
            _rows(NO_R, 3, "test", 3, 200)]
    table = _table(good + _bad_rows(500))
    table = table.append_column("extra_note", pa.array([f"n{i}" for i in range(table.num_rows)]))
    manifest = root / "manifest.parquet"
    pq.write_table(table, manifest)
    opts = RunOptions(manifest=str(manifest), coadd_root=str(coadd), out=str(root / "out"),
                      experiment_id="e1", batch_size=512, workers=2, unit_rows=1)
    summary = run(opts, progress=False, log=lambda m: None)
    return dict(root=root, coadd=coadd, manifest=manifest, table=table, opts=opts,
                summary=summary)


def _read(out, dataset, exp="e1"):
    t = pq.read_table(os.path.join(out, dataset, exp))
    return t.sort_by("task_id")


def test_rows_in_equal_rows_out_with_partitions(world):
    out, table = world["opts"].out, world["table"]
    for dataset in ("stamps", "metrics"):
        t = _read(out, dataset)
        assert t.num_rows == table.num_rows
        assert sorted(t["task_id"].to_pylist()) == sorted(table["task_id"].to_pylist())
        split = dict(zip(table["task_id"].to_pylist(), table["region_split"].to_pylist()))
        for tid, part in zip(t["task_id"].to_pylist(), t["region_split"].to_pylist()):
            assert part == (split[tid] if split[tid] in ("train", "val", "test") else "invalid")
    s = world["summary"]
    assert s.units > 2 * world["opts"].workers   # more units than the readers run ahead
    assert s.rows == table.num_rows and s.errors == len(BAD)
    assert s.ok + s.errors == s.rows


def test_metrics_schema_carries_manifest_and_metrics(world):
    m = _read(world["opts"].out, "metrics")
    for c in world["table"].column_names:
        assert c in m.column_names, c
    assert m["extra_note"].to_pylist() == [
        n for _, n in sorted(zip(world["table"]["task_id"].to_pylist(),
                                 world["table"]["extra_note"].to_pylist()))]
    for c in ["cutout_ok", "error", "arc_snr", "arc_snr_opt", "magnification",
              "bad_pixel_frac", "wise_brightmask_frac"] + \
             [f"{p}_{b}" for p in ("psf_fwhm_used", "psf_source", "total_injected_flux")
              for b in BANDS]:
        assert c in m.column_names, c
    assert m.schema.field("psf_source_g").type == pa.int8()
    assert m.schema.field("magnification").type == pa.float64()


def test_stamps_schema_is_fixed_shape_tensors(world):
    s = _read(world["opts"].out, "stamps")
    for c, dtype, shape in (("image", pa.float32(), [3, 64, 64]),
                            ("invvar", pa.float32(), [3, 64, 64]),
                            ("maskbits", pa.int32(), [64, 64])):
        t = s.schema.field(c).type
        assert isinstance(t, pa.FixedShapeTensorType)
        assert t.value_type == dtype and list(t.shape) == shape
    assert set(s["stamp_size"].to_pylist()) == {64}
    assert set(s["bands"].to_pylist()) == {"grz"}


def test_error_rows_have_reasons_and_null_arrays(world):
    m = _read(world["opts"].out, "metrics")
    s = _read(world["opts"].out, "stamps")
    by_id = {r["task_id"]: r for r in m.to_pylist()}
    for k, (_, reason) in enumerate(BAD):
        row = by_id[500 + k]
        assert row["cutout_ok"] == 0
        assert reason in row["error"], (reason, row["error"])
        assert "\n" not in row["error"]
        assert row["arc_snr"] is None and row["psf_fwhm_used_r"] is None
    bad = np.asarray(m["cutout_ok"].to_pylist()) == 0
    assert s["image"].null_count == bad.sum() == len(BAD)
    assert all(s["image"][i].is_valid != bad[i] for i in range(s.num_rows))


def test_controls_equal_raw_cutout_bit_for_bit(world):
    m = _read(world["opts"].out, "metrics")
    s = _read(world["opts"].out, "stamps")
    src = CoaddSource(world["coadd"])
    ctrl = [i for i, (lm, ok) in enumerate(zip(m["lens_model"].to_pylist(),
                                               m["cutout_ok"].to_pylist()))
            if lm == "CONTROL" and ok == 1]
    assert len(ctrl) >= 8
    for i in ctrl:
        r = m.slice(i, 1).to_pylist()[0]
        raw = cut_brick(src, r["brickname"], [r["ra"]], [r["dec"]], 64, BANDS)
        img = s["image"][i].to_numpy()
        assert np.array_equal(img.view(np.uint32), raw.image[0].view(np.uint32))
        assert np.array_equal(s["invvar"][i].to_numpy(),
                              raw.invvar[0])
        assert np.array_equal(s["maskbits"][i].to_numpy(),
                              raw.maskbits[0])
        assert r["arc_snr"] is None and r["magnification"] is None
        assert r["total_injected_flux_r"] is None and r["bad_pixel_frac"] is not None


def test_injection_minus_cutout_is_render_arcs(world):
    m = _read(world["opts"].out, "metrics")
    s = _read(world["opts"].out, "stamps")
    src = CoaddSource(world["coadd"])
    inj = [i for i, (lm, ok) in enumerate(zip(m["lens_model"].to_pylist(),
                                              m["cutout_ok"].to_pylist()))
           if lm != "CONTROL" and ok == 1]
    assert len(inj) >= 12
    rows = m.take(inj)
    raws = [cut_brick(src, r["brickname"], [r["ra"]], [r["dec"]], 64, BANDS)
            for r in rows.to_pylist()]
    psf = np.stack([rows[f"psf_fwhm_used_{b}"].to_numpy() for b in BANDS], axis=1)
    offset = np.stack([rows["lens_offset_x_pix"].to_numpy(),
                       rows["lens_offset_y_pix"].to_numpy()], axis=1)
    assert np.allclose(offset, np.concatenate([r.lens_offset for r in raws]))
    pixscale = {raw.pixscale for raw in raws}
    assert len(pixscale) == 1
    arcs = gpu_inject.render_arcs(rows, stamp_size=64, psf_fwhm=psf,
                                  pixscale=pixscale.pop(), lens_offset=offset, backend="cpu")
    for k, i in enumerate(inj):
        img = s["image"][i].to_numpy()
        diff = img - raws[k].image[0]
        # image = float32(cutout) + float32(arc): the difference is the arc up to one float32
        # rounding of the sum.
        tol = 2 * np.finfo(np.float32).eps * (np.abs(img).max() + np.abs(arcs.images[k]).max())
        assert np.abs(diff - arcs.images[k]).max() <= tol
    for k, b in enumerate(BANDS):
        assert np.allclose(rows[f"total_injected_flux_{b}"].to_numpy(), arcs.total_flux[:, k],
                           rtol=1e-12)
    assert np.allclose(rows["magnification"].to_numpy(), arcs.magnification, rtol=1e-12)
    assert (rows["arc_snr_opt"].to_numpy() > 0).all()


def test_psf_provenance_recorded(world):
    m = _read(world["opts"].out, "metrics")
    no_r = [r for r in m.to_pylist() if r["brickname"] == NO_R and r["cutout_ok"] == 1]
    assert no_r, "rows on the brick without r coverage"
    for r in no_r:   # r map is 0 there: the manifest value (source 1) is used
        assert r["psf_source_r"] == 1 and r["psf_fwhm_used_r"] == r["psfsize_r"]
    good = [r for r in m.to_pylist() if r["brickname"] in GOOD and r["cutout_ok"] == 1]
    assert all(r[f"psf_source_{b}"] == 0 for r in good for b in BANDS)


def test_stage_config_records_the_run(world):
    cfg = json.loads(open(os.path.join(world["opts"].out, "_stage_config.json")).read())
    assert cfg["status"] == "complete" and cfg["experiment_id"] == "e1"
    assert cfg["options"]["stamp_size"] == 64 and cfg["options"]["bands"] == "g,r,z"
    assert cfg["counts"]["in"] == world["table"].num_rows
    assert cfg["counts"]["errors"] == len(BAD)
    assert cfg["counts"]["controls"] + cfg["counts"]["injections"] == cfg["counts"]["ok"]
    assert cfg["backend"]["name"] == "cpu" and "numba" in cfg["versions"]
    assert cfg["start_time"] <= cfg["end_time"]


def _tables(out, exp):
    return [_read(out, d, exp) for d in ("stamps", "metrics")]


def _same(a, b):
    """Tables equal value for value (NaN equal to NaN: the manifest has NaN inputs)."""
    for x, y in zip(a, b):
        assert x.schema.equals(y.schema)
        for name in x.column_names:
            cx, cy = x[name].combine_chunks(), y[name].combine_chunks()
            if isinstance(cx.type, pa.FixedShapeTensorType):
                cx, cy = cx.storage, cy.storage
            if pa.types.is_floating(cx.type):
                assert cx.is_null().equals(cy.is_null()), name
                assert np.array_equal(cx.fill_null(0).to_numpy(), cy.fill_null(0).to_numpy(),
                                      equal_nan=True), name
            else:
                assert cx.equals(cy), name


@pytest.mark.parametrize("batch_size,workers", [(1, 1), (7, 2), (512, 1)])
def test_output_independent_of_batch_size_and_workers(world, tmp_path, batch_size, workers):
    opts = RunOptions(**{**world["opts"].__dict__, "out": str(tmp_path / "o"),
                         "batch_size": batch_size, "workers": workers})
    run(opts, progress=False, log=lambda m: None)
    _same(_tables(opts.out, "e1"), _tables(world["opts"].out, "e1"))


def test_restart_refuses_other_options_and_force_starts_over(world, tmp_path):
    out = tmp_path / "o"
    shutil.copytree(world["opts"].out, out)
    base = {**world["opts"].__dict__, "out": str(out)}
    with pytest.raises(PipelineError, match="--stamp-size 64 -> 96"):
        run(RunOptions(**{**base, "stamp_size": 96}), progress=False, log=lambda m: None)
    # same options, only the batch size differs: resumes (nothing to do)
    s = run(RunOptions(**{**base, "batch_size": 3}), progress=False, log=lambda m: None)
    assert s.units_done_before == s.units and s.timings["rows"] == 0
    # a lost part is redone, and only its unit
    part = sorted((out / "metrics" / "e1" / "region_split=val").iterdir())[0]
    part.unlink()
    s = run(RunOptions(**base), progress=False, log=lambda m: None)
    assert s.units_done_before == s.units - 1
    _same(_tables(str(out), "e1"), _tables(world["opts"].out, "e1"))
    s = run(RunOptions(**{**base, "stamp_size": 96, "force": True}), progress=False,
            log=lambda m: None)
    assert s.units_done_before == 0
    assert _read(str(out), "stamps")["image"].type.shape == [3, 96, 96]


def test_plan_units_whole_bricks_and_deterministic(world):
    table = world["table"]
    units = plan_units(table, 8)
    assert [u.rows.tolist() for u in units] == [u.rows.tolist() for u in plan_units(table, 8)]
    rows = np.concatenate([u.rows for u in units])
    assert sorted(rows.tolist()) == list(range(table.num_rows))
    assert all(8 <= u.rows.size <= 15 for u in units[:-1])   # memory follows unit_rows
    split = [s if s in ("train", "val", "test") else "invalid"
             for s in table["region_split"].to_pylist()]
    group = list(zip(split, table["brickname"].to_pylist()))
    home = {}
    for u in units:
        for i in u.rows:
            home.setdefault(group[i], set()).add(u.index)
    sizes = {g: group.count(g) for g in home}
    for g, where in home.items():
        # a brick (within one partition) lies in one unit, unless it has more rows than a
        # unit holds: then in consecutive pieces of unit_rows
        assert len(where) == -(-sizes[g] // 8) if sizes[g] > 8 else len(where) == 1
        assert max(where) - min(where) == len(where) - 1


def test_cli_run_exit_codes(world, tmp_path):
    runner = CliRunner()
    args = ["run", "--coadd-root", str(world["coadd"]), "--experiment-id", "x",
            "--no-progress"]
    bad = tmp_path / "bad.parquet"
    pq.write_table(world["table"].drop_columns(["src_n", "shear"]), bad)
    r = runner.invoke(main, args + ["--manifest", str(bad), "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and "missing column(s): shear, src_n" in r.output
    assert "Traceback" not in r.output
    r = runner.invoke(main, args + ["--manifest", str(tmp_path / "nope.parquet"),
                                    "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and "cannot read manifest" in r.output
    r = runner.invoke(main, ["run", "--coadd-root", str(tmp_path / "nocoadd"), "--manifest",
                             str(world["manifest"]), "--out", str(tmp_path / "o"),
                             "--experiment-id", "x"])
    assert r.exit_code == 1 and "coadd root not found" in r.output
    r = runner.invoke(main, args + ["--manifest", str(world["manifest"]), "--out",
                                    str(tmp_path / "o"), "--bands", "g,z"])
    assert r.exit_code == 1 and "must include r" in r.output
    r = runner.invoke(main, args + ["--manifest", str(world["manifest"]), "--out",
                                    str(tmp_path / "o"), "--unit-rows", "8"])
    assert r.exit_code == 0, r.output
    assert f"{world['table'].num_rows} rows written" in r.output


def _parts(out):
    return [os.path.join(d, f) for d, _, fs in os.walk(out) for f in fs
            if f.startswith("part-")]


def _children(pid):
    """PIDs whose parent is ``pid`` (Linux /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return out


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc (Linux)")
def test_sigkill_at_random_points_then_rerun_gives_every_row_once(world, tmp_path):
    """A run killed with SIGKILL (no cleanup at all) at random moments, then started again
    with the same command, ends with the same rows as an uninterrupted run, each once."""
    import signal
    import subprocess
    import sys
    import time

    # the world's manifest five times over (new task ids): long enough to be killed mid-run
    t = world["table"]
    k_id = t.column_names.index("task_id")
    big = pa.concat_tables([t.set_column(k_id, "task_id", pa.array(
        np.asarray(t["task_id"]) + 10000 * k)) for k in range(5)])
    manifest = tmp_path / "big.parquet"
    pq.write_table(big, manifest)
    ref = RunOptions(**{**world["opts"].__dict__, "manifest": str(manifest),
                        "out": str(tmp_path / "ref")})
    run(ref, progress=False, log=lambda m: None)
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "gpu_inject.cli", "run", "--manifest", str(manifest),
           "--coadd-root", str(world["coadd"]), "--out", str(out), "--experiment-id", "e1",
           "--unit-rows", "2", "--batch-size", "3", "--workers", "2", "--no-progress"]
    rng = np.random.default_rng(7)
    kills = seen_readers = 0
    for _ in range(3):
        before = len(_parts(out))
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while len(_parts(out)) <= before and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.5))
        if p.poll() is None:
            readers = _children(p.pid)
            seen_readers += len(readers)
            p.send_signal(signal.SIGKILL)
            kills += 1
            p.wait()
            # its reader processes do not outlive it
            deadline = time.monotonic() + 10
            while any(_alive(r) for r in readers) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not [r for r in readers if _alive(r)], "orphaned reader processes"
        p.wait()
    assert kills >= 2, "the runs finished before they could be killed"
    assert seen_readers > 0, "no reader process was seen, so none was checked for orphans"
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert not [f for d, _, fs in os.walk(out) for f in fs if f.endswith(".tmp")]
    _same(_tables(str(out), "e1"), _tables(ref.out, "e1"))


def test_s3_manifest_coadds_and_output_through_moto(world, moto_s3, monkeypatch):
    """The whole run against a real S3 API (moto's server on loopback), configured as a user
    would: AWS_* environment variables, s3:// URLs on the command line."""
    client, bucket = moto_s3["client"], "gpu-inject-e2e"
    client.create_bucket(Bucket=bucket)
    coadd = world["coadd"]
    for d, _, files in os.walk(coadd):
        for f in files:
            key = "dr10/" + os.path.relpath(os.path.join(d, f), coadd).replace(os.sep, "/")
            client.upload_file(os.path.join(d, f), bucket, key)
    client.upload_file(str(world["manifest"]), bucket, "manifests/m.parquet")
    for k, v in {"AWS_ENDPOINT_URL": moto_s3["endpoint"], "AWS_ACCESS_KEY_ID": "testing",
                 "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    out = f"s3://{bucket}/runs"
    args = ["run", "--manifest", f"s3://{bucket}/manifests/m.parquet", "--coadd-root",
            f"s3://{bucket}/dr10", "--out", out, "--experiment-id", "e1", "--unit-rows", "8",
            "--no-progress"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="runs/")["Contents"]}
    assert "runs/_stage_config.json" in keys
    assert any(k.startswith("runs/metrics/e1/region_split=val/part-") for k in keys)
    import s3fs

    fs = s3fs.S3FileSystem(**moto_s3["opts"])
    got = [pq.read_table(f"{bucket}/runs/{d}/e1", filesystem=fs).sort_by("task_id")
           for d in ("stamps", "metrics")]
    # error messages name the file where it was looked for: the S3 URL here
    err = [e and e.replace(f"s3://{bucket}/dr10", str(coadd)) for e in got[1]["error"].to_pylist()]
    got[1] = got[1].set_column(got[1].column_names.index("error"), "error", pa.array(err))
    _same(got, _tables(world["opts"].out, "e1"))
    # rerun: every unit is found done on S3
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0 and "done before this run" in r.output
    n_units = len(plan_units(world["table"], 8))
    assert f"units: {n_units} ({n_units} done before this run)" in r.output


def test_progress_bar_on_a_terminal_log_lines_otherwise():
    import io

    from gpu_inject.pipeline import _Progress

    class Tty(io.StringIO):
        def isatty(self):
            return True

    plain = io.StringIO()
    p = _Progress(100, 4, stream=plain, every=0.0)
    p.update(50, 2, 1)
    p.update(50, 2, 0)
    p.close()
    lines = plain.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in plain.getvalue()
    assert "100/100 stamps" in lines[-1] and "bricks 4/4" in lines[-1]
    assert "errors 1" in lines[-1] and "stamps/s" in lines[-1] and "ETA" in lines[-1]
    tty = Tty()
    p = _Progress(100, 4, stream=tty)
    p.update(100, 4, 3)
    p.close()
    assert "\r" in tty.getvalue() and "bricks 4/4, errors 3" in tty.getvalue()
