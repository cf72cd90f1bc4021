"""``gpu-inject validate``: a clean run passes; each defect planted in the Parquet output (a
PSF of 0, a CONTROL with an arc metric, a null magnification, a repeated task, a stamp that
disagrees with its metrics, a brick in two splits...) is caught by the check meant for it and
by no other; the judgements (trends, split medians, quantiles) on numbers made to order; the
command's exit codes; the same run read from S3."""
import json
import os
import shutil
from glob import glob

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from gpu_inject.cli import _demo_validate, main
from gpu_inject.demo import run_demo
from gpu_inject.validate import (
    FAIL,
    LOG_EDGES,
    PASS,
    PSF_EDGES,
    WARN,
    BinnedMean,
    Hist,
    PsfAcc,
    ValidateError,
    _excess,
    judge_trend,
    validate_run,
)

EXP = "demo"
TASK_ONCE = "rows: every task once"
CONFIG = "rows: run recorded complete"
CONTROLS = "controls: theta_e 0 and arc metrics null"
RAW = "controls: stamps equal the raw cutout (sample)"
COVERAGE = "physics: arc metrics on every injection"
MAGNIFICATION = "physics: magnification >= 1 for sources beyond 2 theta_e"
FLUX = "physics: injection - CONTROL = total_injected_flux (sample)"
PSF_POSITIVE = "psf: every psf_fwhm_used > 0"
PSF_PROVENANCE = "psf: provenance and r fallback rate"
PSF_LOW = "psf: values under 0.8\" listed for audit"
PSF_SPLITS = "psf: distributions agree across splits"
BRICKS = "splits: no brick in two splits"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A real run: 2 mock bricks x 4 targets, one injection and one CONTROL each, 2 error
    rows on a missing brick."""
    folder = tmp_path_factory.mktemp("validate")
    return run_demo(str(folder), size=400, per_brick=4, bricks=2, backend="cpu",
                    log=lambda m: None, progress=False)


@pytest.fixture
def copy(demo, tmp_path):
    """A private copy of the demo's output to plant a defect in."""
    out = tmp_path / "out"
    shutil.copytree(demo.out, out, ignore=shutil.ignore_patterns("_validate"))
    return str(out)


def _validate(out, demo, **kw):
    kw.setdefault("manifest", demo.manifest)
    kw.setdefault("sample", 1.0)
    kw.setdefault("write", False)     # the report (plots) is tested once, below
    return validate_run(out, EXP, **kw)


def _status(result) -> dict:
    return {c.name: c.status for c in result.checks}


def _check(result, name):
    return next(c for c in result.checks if c.name == name)


def _failed(result) -> set:
    return {c.name for c in result.checks if c.status == FAIL}


def _parts(out, dataset="metrics"):
    return sorted(glob(os.path.join(out, dataset, EXP, "region_split=*", "part-*.parquet")))


def _set(table, name, row, value):
    values = table[name].to_pylist()
    values[row] = value
    return table.set_column(table.column_names.index(name), name,
                            pa.array(values, table.schema.field(name).type))


def _first(table, kind):
    """Index of the first ok injection (kind 'injection') or ok CONTROL of a part."""
    ok = table["cutout_ok"].to_pylist()
    model = table["lens_model"].to_pylist()
    return next(i for i in range(table.num_rows)
                if ok[i] == 1 and (model[i] == "CONTROL") == (kind == "control"))


def _edit_first_part(out, fn):
    """fn(metrics table) -> table, on the first metrics part; returns that part's path."""
    path = _parts(out)[0]
    pq.write_table(fn(pq.read_table(path)), path)
    return path


def _plant(out, demo, kind="injection", **values):
    """Set columns of the first ok row of ``kind`` in the first metrics part; validate."""
    def edit(t):
        i = _first(t, kind)
        for name, value in values.items():
            t = _set(t, name, i, value)
        return t

    _edit_first_part(out, edit)
    return _validate(out, demo)


def _add_to_image(out, task_id, value):
    """Add ``value`` to every pixel of task_id's stamp image."""
    for path in _parts(out, "stamps"):
        t = pq.read_table(path)
        ids = t["task_id"].to_pylist()
        if task_id not in ids:
            continue
        k = ids.index(task_id)
        img = t["image"].combine_chunks()
        size = img.storage.type.list_size
        flat = img.storage.values.to_numpy(zero_copy_only=False).copy()
        flat[k * size:(k + 1) * size] += np.float32(value)
        new = pa.ExtensionArray.from_storage(img.type, pa.FixedSizeListArray.from_arrays(
            pa.array(flat), size, mask=img.storage.is_null()))
        pq.write_table(t.set_column(t.column_names.index("image"), "image", new), path)
        return
    raise AssertionError(f"task {task_id} not found")


# --------------------------------------------------------------------------- clean run
def test_clean_run_passes_with_every_check_judged_that_can_be(demo, copy):
    res = _validate(copy, demo, coadd_root=demo.coadd_root)
    status = _status(res)
    assert not res.failed, [c for c in res.checks if c.status == FAIL]
    for name in (TASK_ONCE, CONFIG, CONTROLS, RAW, COVERAGE, FLUX, PSF_POSITIVE,
                 PSF_PROVENANCE, PSF_LOW, BRICKS):
        assert status[name] == PASS, name
    # the demo's 2 rows on a missing brick are error rows: flagged, counted, not a failure
    outcome = next(c for c in res.checks if c.name.startswith("rows: cutout_ok"))
    assert outcome.status == WARN and outcome.numbers["errors"] == 2
    assert "not found" in outcome.numbers["error_reasons"][0]["reason"]
    raw = _check(res, RAW).numbers
    assert raw["control_compared"] == raw["control_equal"] == 8
    assert raw["psf_compared"] == raw["psf_equal"] > 0
    flux = _check(res, FLUX).numbers
    assert flux["pairs"] == 8 and flux["worst_error_over_tolerance"] < 1


def test_report_folder_holds_tables_plots_and_checks(demo, copy):
    res = _validate(copy, demo, write=True)
    assert res.report_dir == os.path.join(copy, "_validate", EXP)
    with open(os.path.join(res.report_dir, "report.md")) as f:
        md = f.read()
    for title in ("## Checks", "## Physics", "## PSF", "## Quality", "## Splits",
                  "## Completeness-ready counts", "Error reasons", "by split and band",
                  "theta_e / psf_fwhm_used_r"):
        assert title in md, title
    for png in ("flux_trends.png", "arc_metrics.png", "psf_by_split.png",
                "completeness_bins.png", "gallery.png"):
        assert f"]({png})" in md
        with open(os.path.join(res.report_dir, png), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(os.path.join(res.report_dir, "checks.json")) as f:
        saved = json.load(f)
    assert [c["name"] for c in saved["checks"]] == [c.name for c in res.checks]
    assert saved["status"] == res.status


def test_streaming_batches_give_the_same_answers(demo, copy):
    whole = _validate(copy, demo)
    tiny = _validate(copy, demo, batch_rows=3)
    assert [(c.name, c.status, c.detail) for c in tiny.checks] == \
        [(c.name, c.status, c.detail) for c in whole.checks]


# --------------------------------------------------------------------------- planted defects
def test_psf_of_zero_fails_the_psf_check(demo, copy):
    res = _plant(copy, demo, psf_fwhm_used_g=0.0)
    assert _failed(res) == {PSF_POSITIVE}
    assert _check(res, PSF_POSITIVE).numbers["not_positive"]["g"] == 1


def test_control_with_an_arc_metric_fails_the_control_check(demo, copy):
    res = _plant(copy, demo, "control", arc_snr=5.0)
    assert _failed(res) == {CONTROLS}
    assert _check(res, CONTROLS).numbers[
        "arc_metric_not_null"]["arc_snr"] == 1


def test_null_magnification_fails_coverage(demo, copy):
    res = _plant(copy, demo, magnification=None)
    assert _failed(res) == {COVERAGE}
    assert "magnification 87.5 %" in _check(res, COVERAGE).detail


def test_demagnified_source_far_outside_fails_magnification(demo, copy):
    res = _plant(copy, demo, src_x_arcsec=5.0, magnification=0.5)
    assert _failed(res) == {MAGNIFICATION}


def _copy_row_to_new_part(out, split_from, split_to, pick):
    """Rows ``pick(metrics table)`` of split_from's part, written again (metrics and stamps)
    as a new part in split_to; returns their task ids."""
    src = os.path.join(out, "metrics", EXP, f"region_split={split_from}", "part-000000.parquet")
    rows = pick(pq.read_table(src))
    ids = pq.read_table(src).take(pa.array(rows))["task_id"].to_pylist()
    for dataset in ("metrics", "stamps"):
        path = src.replace(f"{os.sep}metrics{os.sep}", f"{os.sep}{dataset}{os.sep}")
        t = pq.read_table(path)
        sel = pc.is_in(t["task_id"], pa.array(ids))
        dest = os.path.join(out, dataset, EXP, f"region_split={split_to}")
        os.makedirs(dest, exist_ok=True)
        pq.write_table(t.filter(sel), os.path.join(dest, "part-900000.parquet"))
        yield path, t, sel


@pytest.mark.parametrize("with_manifest", [True, False])
def test_repeated_task_in_another_part_fails_rows(demo, copy, with_manifest):
    list(_copy_row_to_new_part(copy, "train", "train", lambda t: [_first(t, "injection")]))
    res = _validate(copy, demo, manifest=demo.manifest if with_manifest else None)
    # the run's own record (18 rows) no longer matches either
    assert _failed(res) == {TASK_ONCE, CONFIG}
    nums = _check(res, TASK_ONCE).numbers
    assert nums.get("surplus", nums.get("duplicated_rows")) == 1


def test_brick_in_two_splits_fails_splits(demo, copy):
    # move the first two rows of the train part (one brick) to a new part under val
    for path, t, sel in _copy_row_to_new_part(copy, "train", "val", lambda t: [0, 1]):
        pq.write_table(t.filter(pc.invert(sel)), path)
    res = _validate(copy, demo)
    assert _failed(res) == {BRICKS}
    assert _check(res, BRICKS).numbers["in_two_splits"] == 1


def test_recorded_flux_that_disagrees_with_the_stamps_fails_the_sample(demo, copy):
    def more(t):
        i = _first(t, "injection")
        return _set(t, "total_injected_flux_r", i, t["total_injected_flux_r"][i].as_py() * 1.01)

    _edit_first_part(copy, more)
    res = _validate(copy, demo)
    assert _failed(res) == {FLUX}
    ex = _check(res, FLUX).numbers["examples"][0]
    assert ex["band"] == "r"


def test_stamp_with_light_added_fails_the_sample(demo, copy):
    t = pq.read_table(_parts(copy)[0])
    _add_to_image(copy, t["task_id"][_first(t, "injection")].as_py(), 1.0)
    assert _failed(_validate(copy, demo)) == {FLUX}


def test_control_stamp_changed_fails_the_raw_cutout_comparison(demo, copy):
    t = pq.read_table(_parts(copy)[0])
    _add_to_image(copy, t["task_id"][_first(t, "control")].as_py(), 1e-3)
    res = _validate(copy, demo, coadd_root=demo.coadd_root)
    assert RAW in _failed(res)
    assert _check(res, RAW).numbers["control_equal"] == 7
    # without the coadds the comparison is skipped, and says so
    res = _validate(copy, demo)
    assert RAW not in _status(res)
    assert any("no --coadd-root" in n for n in res.notes)


def test_fallback_value_that_is_not_r_fails_provenance(demo, copy):
    res = _plant(copy, demo, psf_source_z=2, psf_fwhm_used_z=0.7)
    assert _failed(res) == {PSF_PROVENANCE}
    # the 0.7" value is listed for audit, with its task
    low = _check(res, PSF_LOW)
    assert low.status == WARN and low.numbers["rows"]["z"] == 1
    assert low.numbers["examples"][0]["value"] == 0.7


def test_psf_under_0p8_listed_smallest_first_and_read_back(demo, copy):
    def edit(t):
        first, second = sorted((_first(t, "injection"), _first(t, "control")))
        return _set(_set(t, "psf_fwhm_used_z", first, 0.75), "psf_fwhm_used_z", second, 0.6)

    _edit_first_part(copy, edit)
    res = _validate(copy, demo)
    low = _check(res, PSF_LOW)
    assert low.status == WARN and not res.failed
    assert [e["value"] for e in low.numbers["examples"]] == [0.6, 0.75]
    # read back from the coadds, the psfsize map at the stamp centre says otherwise
    res = _validate(copy, demo, coadd_root=demo.coadd_root)
    assert PSF_LOW in _failed(res)
    assert [r["equal"] for r in _check(res, PSF_LOW).numbers["reread"]] == [False, False]


# --------------------------------------------------------------------------- judgements
def test_trend_judged_against_its_noise():
    rng = np.random.default_rng(0)
    x = rng.uniform(0.3, 1.0, 3000)
    rising = BinnedMean((0.5, 0.8))
    rising.add(x, 5 + 4 * x + rng.normal(0, 1, x.size))
    assert judge_trend(rising, rising=True)[0] == PASS
    assert judge_trend(rising, rising=False)[0] == WARN
    flat = BinnedMean((0.5, 0.8))          # no trend: dips within the noise are not flagged
    flat.add(x, 5 + rng.normal(0, 1, x.size))
    assert judge_trend(flat, rising=True)[0] == PASS
    few = BinnedMean((0.5, 0.8))
    few.add(x[:5], x[:5])
    assert judge_trend(few, rising=True)[1].startswith("not judged")


def test_split_whose_psf_median_is_off_is_flagged():
    rng = np.random.default_rng(1)
    acc = PsfAcc(("g", "r", "z"))
    for split in ("train", "val", "test"):
        for band in "grz":
            acc.hist[(split, band)] = Hist(PSF_EDGES)
            acc.hist[(split, band)].add(rng.normal(1.3, 0.15, 2000))
    assert acc.check_splits().status == PASS
    acc.hist[("test", "g")].add(np.full(20000, 1.6))    # a test-only artefact in g
    check = acc.check_splits()
    assert check.status == WARN
    assert [(o["band"], o["split"]) for o in check.numbers["outliers"]] == [("g", "test")]


def test_histogram_quantiles_within_a_bin_of_numpy():
    rng = np.random.default_rng(2)
    v = rng.lognormal(1.0, 1.0, 50000)
    h = Hist(LOG_EDGES)
    for chunk in np.array_split(v, 7):
        h.add(chunk)
    for q in (0.01, 0.5, 0.95):
        assert h.quantile(q) == pytest.approx(np.quantile(v, q), rel=0.012)
    assert (h.min, h.max, h.n) == (v.min(), v.max(), v.size)


def test_multiset_difference_by_slices_matches_counters():
    """Missing / surplus task ids, computed by bounded slices of the sorted ids."""
    from collections import Counter

    rng = np.random.default_rng(3)
    for _ in range(200):
        a = np.sort(rng.integers(0, 40, rng.integers(0, 60)))
        b = np.sort(rng.integers(0, 40, rng.integers(0, 60)))
        count, examples, absent = _excess(a, b, chunk=int(rng.integers(1, 9)))
        ca, cb = Counter(a.tolist()), Counter(b.tolist())
        assert count == sum((ca - cb).values())
        assert examples == sorted(ca - cb)[:5]
        assert absent == sum(n for v, n in ca.items() if v not in cb)


# --------------------------------------------------------------------------- command line
def test_cli_exit_codes(demo, copy, tmp_path):
    runner = CliRunner()
    args = ["validate", copy, "--experiment-id", EXP, "--manifest", demo.manifest,
            "--sample", "1", "--report", str(tmp_path / "rep")]
    r = runner.invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "validate demo: WARN (0 FAIL" in r.output
    assert os.path.exists(tmp_path / "rep" / "report.md")

    _edit_first_part(copy, lambda t: _set(t, "psf_fwhm_used_r", _first(t, "control"), 0.0))
    r = runner.invoke(main, args)
    assert r.exit_code == 1
    assert f"FAIL  {PSF_POSITIVE}" in r.output and "Traceback" not in r.output

    r = runner.invoke(main, ["validate", str(tmp_path / "nothing"), "--experiment-id", EXP])
    assert r.exit_code == 1 and "Traceback" not in r.output
    errors = [ln for ln in r.output.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1 and "no metrics for experiment 'demo'" in errors[0]


def test_unreadable_manifest_is_a_one_line_error(demo, copy, tmp_path):
    with pytest.raises(ValidateError, match="cannot read manifest"):
        validate_run(copy, EXP, manifest=str(tmp_path / "missing.parquet"), write=False)


def test_demo_ends_with_validate(demo, capsys):
    result = _demo_validate(demo)
    out = capsys.readouterr().out
    assert not result.failed
    assert "validate: " in out and "0 failed" in out
    assert all(line.startswith("WARN") for line in out.strip().splitlines()[:-1])


# --------------------------------------------------------------------------- S3
def test_same_answers_from_s3_through_moto(demo, moto_s3, monkeypatch, tmp_path):
    client, bucket = moto_s3["client"], "gpu-inject-validate"
    client.create_bucket(Bucket=bucket)
    for d, _, files in os.walk(demo.out):
        for f in files:
            rel = os.path.relpath(os.path.join(d, f), demo.out).replace(os.sep, "/")
            if not rel.startswith("_validate"):
                client.upload_file(os.path.join(d, f), bucket, f"run/{rel}")
    client.upload_file(demo.manifest, bucket, "manifest.parquet")
    for k, v in {"AWS_ENDPOINT_URL": moto_s3["endpoint"], "AWS_ACCESS_KEY_ID": "testing",
                 "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.chdir(tmp_path)
    remote = validate_run(f"s3://{bucket}/run", EXP, manifest=f"s3://{bucket}/manifest.parquet",
                          sample=1.0)
    local = validate_run(demo.out, EXP, manifest=demo.manifest, sample=1.0, write=False)
    assert [(c.name, c.status, c.detail) for c in remote.checks] == \
        [(c.name, c.status, c.detail) for c in local.checks]
    assert remote.report_dir == str(tmp_path / "_validate" / EXP)
    assert os.path.exists(tmp_path / "_validate" / EXP / "report.md")
