"""make-manifest: a target catalogue in, SPEC section 4 rows out, which the pipeline's own
manifest check accepts; draws, grid, CONTROL rows and xxh64 region splits as documented."""
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import xxhash

from gpu_inject.draws import SPEC_RANGES, draw_params, random_tasks
from gpu_inject.io.manifest import REQUIRED, read_manifest, row_errors
from gpu_inject.make_manifest import (
    PARAM_COLUMNS,
    CatalogError,
    format_summary,
    make_manifest,
    manifest_summary,
    read_catalog,
    split_of,
    split_summary,
    write_manifest,
)

SOURCE_COLUMNS = [c for c in PARAM_COLUMNS if c != "theta_e_arcsec"]


def catalogue(n=6, bricks=3, seed=1):
    rng = np.random.default_rng(seed)
    return pa.table({
        "brickname": [f"{100 + i % bricks:04d}p{i % bricks:03d}" for i in range(n)],
        "ra": rng.uniform(0, 360, n),
        "dec": rng.uniform(-30, 30, n),
        "flux_r": rng.uniform(5, 30, n),
        "psfsize_g": rng.uniform(1.1, 2.0, n),
        "psfsize_r": rng.uniform(0.9, 1.7, n),
        "psfsize_z": rng.uniform(0.85, 1.6, n),
    })


def test_schema_is_spec_section_4_plus_region_id():
    t = make_manifest(catalogue())
    assert t.column_names == [*REQUIRED, "region_id"]
    types = dict(zip(t.column_names, t.schema.types))
    assert types["task_id"] == pa.int64()
    for c in ("brickname", "region_split", "lens_model", "region_id"):
        assert types[c] == pa.string(), c
    for c in REQUIRED[2:]:
        if c not in ("region_split", "lens_model"):
            assert types[c] == pa.float64(), c


@pytest.mark.parametrize("controls", ["per-target", "per-injection", "none"])
def test_every_row_passes_the_pipeline_manifest_check(controls):
    t = make_manifest(catalogue(20), injections_per_target=3, controls=controls,
                      grid={"src_dmag": [0.5, 2.0]}, lens_models=("SIS", "SIE"))
    assert t.num_rows > 0
    assert row_errors(t) == [None] * t.num_rows
    assert manifest_summary(t)["invalid_rows"] == 0


def test_draws_lie_in_the_spec_ranges_and_lens_flux_is_the_catalogue_flux():
    cat = catalogue(200)
    t = make_manifest(cat, controls="none")
    for name in ("theta_e_arcsec", "src_reff_arcsec", "src_n", "src_e", "lens_e", "shear",
                 "src_dmag"):
        v = t[name].to_numpy()
        lo, hi = SPEC_RANGES[name]
        assert v.min() >= lo and v.max() <= hi, name
        assert v.max() - v.min() > 0.5 * (hi - lo), name  # really drawn, not a constant
    r = np.hypot(t["src_x_arcsec"].to_numpy(), t["src_y_arcsec"].to_numpy())
    assert r.max() <= SPEC_RANGES["src_offset_arcsec"][1]
    for a, b in (("lens_flux_r", "flux_r"), ("psfsize_z", "psfsize_z"), ("ra", "ra")):
        assert t[a].to_pylist() == cat[b].to_pylist()
    assert set(t["lens_model"].to_pylist()) == {"SIE"}


def test_same_seed_same_table_other_seed_other_draws():
    cat = catalogue(30)
    a = make_manifest(cat, injections_per_target=2, seed=7)
    assert a.equals(make_manifest(cat, injections_per_target=2, seed=7))
    b = make_manifest(cat, injections_per_target=2, seed=8)
    assert a.select(["task_id", "brickname", "ra", "region_split", "lens_model"]).equals(
        b.select(["task_id", "brickname", "ra", "region_split", "lens_model"]))
    assert not a["theta_e_arcsec"].equals(b["theta_e_arcsec"])
    assert not a["src_x_arcsec"].equals(b["src_x_arcsec"])


def test_draws_are_those_of_draw_params_and_random_tasks_is_unchanged_by_it():
    t = make_manifest(catalogue(10), controls="none", seed=3, lens_models=("SIS", "SIE"))
    want = draw_params(np.random.default_rng(3), 10, ("SIS", "SIE"))
    assert list(want) == ["lens_model", *PARAM_COLUMNS]
    for c in want:
        assert t[c].to_pylist() == list(want[c]), c
    rt = random_tasks(10, seed=3)
    assert all(np.array_equal(rt[c], want[c]) for c in want)


def test_grid_is_a_cartesian_product_per_target_with_the_rest_drawn():
    grid = {"theta_e_arcsec": [0.4, 0.8, 1.2], "src_dmag": [1.0, 2.5],
            "lens_model": ["SIS", "SIE"]}
    n, k = 5, 2
    t = make_manifest(catalogue(n), grid=grid, injections_per_target=k, controls="none",
                      first_task_id=1000)
    assert t.num_rows == n * 12 * k
    assert t["task_id"].to_pylist() == list(range(1000, 1000 + t.num_rows))
    rows = t.to_pylist()
    for i in range(n):
        mine = rows[i * 24:(i + 1) * 24]
        assert len({(r["ra"], r["dec"]) for r in mine}) == 1  # one target's rows together
        combos = [(r["theta_e_arcsec"], r["src_dmag"], r["lens_model"]) for r in mine]
        # itertools.product order, each combination repeated k times in a row
        expect = [(a, b, c) for a in grid["theta_e_arcsec"] for b in grid["src_dmag"]
                  for c in grid["lens_model"] for _ in range(k)]
        assert combos == expect
    assert len(set(t["src_reff_arcsec"].to_pylist())) == t.num_rows  # not a grid column


@pytest.mark.parametrize("controls,per_target", [("per-target", 4 + 1),
                                                 ("per-injection", 2 * 4), ("none", 4)])
def test_control_counts_placement_and_null_physics(controls, per_target):
    n = 7
    t = make_manifest(catalogue(n), injections_per_target=2, grid={"shear": [0.0, 0.05]},
                      controls=controls)
    assert t.num_rows == n * per_target
    rows = t.to_pylist()
    ctrl = [r for r in rows if r["lens_model"] == "CONTROL"]
    assert len(ctrl) == {"per-target": n, "per-injection": n * 4, "none": 0}[controls]
    for r in ctrl:
        assert r["theta_e_arcsec"] == 0.0
        assert all(r[c] is None for c in SOURCE_COLUMNS)
        assert r["lens_flux_r"] > 0 and r["psfsize_r"] > 0
    for i, r in enumerate(rows):
        if controls == "per-injection":
            assert (r["lens_model"] == "CONTROL") == (i % 2 == 1)
            if i % 2:  # its injection's target, split and PSF
                prev = rows[i - 1]
                for c in ("brickname", "ra", "dec", "region_split", "psfsize_g", "lens_flux_r"):
                    assert r[c] == prev[c], c
        elif controls == "per-target":
            assert (r["lens_model"] == "CONTROL") == (i % per_target == per_target - 1)


def test_controls_only_and_empty_catalogue():
    t = make_manifest(catalogue(4), injections_per_target=0)
    assert t["lens_model"].to_pylist() == ["CONTROL"] * 4
    assert make_manifest(catalogue(0)).num_rows == 0


def test_xxh64_is_the_reference_hash_and_split_of_follows_it():
    assert xxhash.xxh64_intdigest(b"") == 0xEF46DB3751D8E999  # xxHash reference vectors
    assert xxhash.xxh64_intdigest(b"a") == 0xD24EC4F1A98C6E5B
    f = (0.5, 0.3, 0.2)
    for rid in ("0001p000", "3572m307", "region-17", "42"):
        u = xxhash.xxh64_intdigest(rid.encode()) / 2**64
        assert split_of(rid, f) == ("train" if u < 0.5 else "val" if u < 0.8 else "test")
    assert split_of("x", (1.0, 0.0, 0.0)) == "train" and split_of("x", (0, 0, 1)) == "test"


def test_splits_are_per_region_and_no_brick_is_in_two_splits():
    t = make_manifest(catalogue(300, bricks=40), injections_per_target=2,
                      controls="per-injection")
    split_of_brick = {}
    for b, s, rid in zip(t["brickname"].to_pylist(), t["region_split"].to_pylist(),
                         t["region_id"].to_pylist()):
        assert rid == b and s == split_of(b)
        assert split_of_brick.setdefault(b, s) == s
    assert len(set(split_of_brick.values())) == 3
    assert manifest_summary(t)["bricks_in_several_splits"] == 0


def test_region_column_decides_the_split():
    cat = catalogue(60, bricks=12).append_column("HPX_REGION", pa.array(
        np.arange(60) % 12 // 4, pa.int64()))  # 3 regions of 4 bricks each
    t = make_manifest(cat, region_column="hpx_region", split_fractions=(0.4, 0.3, 0.3))
    assert set(t["region_id"].to_pylist()) == {"0", "1", "2"}
    for rid, s in zip(t["region_id"].to_pylist(), t["region_split"].to_pylist()):
        assert s == split_of(rid, (0.4, 0.3, 0.3))
    with pytest.raises(CatalogError, match="missing column.*no_such_col"):
        make_manifest(cat, region_column="no_such_col")
    with pytest.raises(CatalogError, match="region column flux_r is double"):
        make_manifest(cat, region_column="flux_r")


def test_split_shares_match_the_fractions_over_many_bricks():
    n, fractions = 2000, (0.7, 0.15, 0.15)
    t = make_manifest(catalogue(n, bricks=n), split_fractions=fractions, controls="none")
    summary = split_summary(t)
    assert [s for s, _, _ in summary] == ["train", "val", "test"]
    assert sum(rows for _, rows, _ in summary) == n
    for (split, rows, share), p in zip(summary, fractions):
        assert share == rows / n
        assert abs(share - p) < 5 * math.sqrt(p * (1 - p) / n), (split, share)


@pytest.mark.parametrize("bad", [(0.7, 0.2), (0.7, 0.2, 0.2), (1.2, -0.1, -0.1),
                                 (0.5, float("nan"), 0.5)])
def test_bad_split_fractions_are_refused(bad):
    with pytest.raises(ValueError, match="split_fractions") as err:
        make_manifest(catalogue(), split_fractions=bad)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("suffix", [".fits", ".fits.gz"])
def test_fits_catalogue_with_uppercase_columns(tmp_path, suffix):
    from astropy.table import Table

    cat = catalogue(8)
    t = Table({"BRICKNAME": np.array(cat["brickname"].to_pylist(), dtype="S8"),
               "RA": cat["ra"].to_numpy(), "DEC": cat["dec"].to_numpy(),
               "FLUX_R": cat["flux_r"].to_numpy().astype(np.float32),
               "PSFSIZE_R": cat["psfsize_r"].to_numpy().astype(np.float32),
               "TYPE": np.array(["DEV"] * 8), "FLUX_G": np.ones(8, np.float32)})
    path = tmp_path / ("sweep-000p000-010p005" + suffix)
    t.write(path)
    got = read_catalog(path)
    assert got.column_names == ["brickname", "ra", "dec", "flux_r", "psfsize_g", "psfsize_r",
                                "psfsize_z"]
    assert got["brickname"].to_pylist() == cat["brickname"].to_pylist()
    assert got["ra"].to_pylist() == cat["ra"].to_pylist()
    assert np.allclose(got["flux_r"].to_numpy(), cat["flux_r"].to_numpy(), rtol=1e-6)
    assert got["psfsize_g"].null_count == 8
    m = make_manifest(path, injections_per_target=2)
    assert m.num_rows == 8 * 3 and row_errors(m) == [None] * m.num_rows


def test_parquet_directory_with_mixed_case_names(tmp_path):
    cat = catalogue(10).rename_columns(["BrickName", "RA", "dec", "Flux_R", "PSFSIZE_G",
                                        "psfsize_r", "PsfSize_Z"])
    (tmp_path / "cat").mkdir()
    pq.write_table(cat.slice(0, 4), tmp_path / "cat" / "part-0.parquet")
    pq.write_table(cat.slice(4), tmp_path / "cat" / "part-1.parquet")
    got = read_catalog(tmp_path / "cat")
    assert got.num_rows == 10 and got["psfsize_z"].null_count == 0
    assert sorted(got["ra"].to_pylist()) == sorted(cat["RA"].to_pylist())


def test_missing_columns_and_unreadable_files_are_one_line_errors(tmp_path):
    path = tmp_path / "lrg.parquet"
    pq.write_table(catalogue().drop(["ra", "flux_r"]), path)
    with pytest.raises(CatalogError) as err:
        read_catalog(path, region_column="REGION")
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg
    for c in ("ra", "flux_r", "REGION"):
        assert c in msg
    assert "dec" not in msg.split("missing")[1]
    (tmp_path / "bad.fits").write_bytes(b"SIMPLE  = junk")
    for bad in (tmp_path / "bad.fits", tmp_path / "absent.parquet"):
        with pytest.raises(CatalogError, match="cannot read catalogue .*" + bad.name) as err:
            read_catalog(bad)
        assert "\n" not in str(err.value)


@pytest.mark.parametrize("grid,match", [
    ({"theta_e": [0.5]}, "'theta_e' is not a parameter column"),
    ({"lens_flux_r": [10.0]}, "'lens_flux_r' is not a parameter column"),
    ({"theta_e_arcsec": [0.5, -0.1]}, "theta_e_arcsec = -0.1 outside"),
    ({"src_n": [9.0]}, r"src_n = 9.0 outside \[0.36, 8\]"),
    ({"src_e": [1.0]}, "src_e = 1.0 outside"),
    ({"shear": [float("nan")]}, "shear = nan outside"),
    ({"src_dmag": ["1.0"]}, "src_dmag = '1.0' outside"),
    ({"src_dmag": []}, "src_dmag has no values"),
    ({"src_dmag": 1.0}, "src_dmag needs a list"),
    ({"lens_model": ["CONTROL"]}, "lens_model = 'CONTROL' is not one of SIS, SIE"),
])
def test_bad_grids_are_refused_naming_the_column(grid, match):
    with pytest.raises(ValueError, match=match) as err:
        make_manifest(catalogue(), grid=grid)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("kw,match", [
    ({"controls": "both"}, "controls = 'both'"),
    ({"injections_per_target": -1}, "injections_per_target"),
    ({"injections_per_target": 1.5}, "injections_per_target"),
    ({"lens_models": ("SIE", "NFW")}, "lens_models"),
])
def test_bad_options_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        make_manifest(catalogue(), **kw)


def test_bad_targets_are_kept_and_counted_not_dropped():
    cat = catalogue(6).to_pydict()
    cat["flux_r"][1] = -2.0          # injection rows fail, its CONTROL is fine
    cat["ra"][3] = float("nan")      # every row of the target fails
    cat["brickname"][4] = None       # every row fails, and its split is null
    t = make_manifest(pa.table(cat), injections_per_target=1, controls="per-target")
    assert t.num_rows == 12
    errors = row_errors(t)
    assert [i for i, e in enumerate(errors) if e] == [2, 6, 7, 8, 9]
    assert t["lens_flux_r"][2].as_py() == -2.0 and math.isnan(t["ra"][6].as_py())
    assert t["region_split"][8].as_py() is None
    s = manifest_summary(t)
    assert s["invalid_rows"] == 5 and s["first_invalid"].startswith("task 2: lens_flux_r")
    assert split_summary(t)[-1] == (None, 2, 2 / 12)
    assert "error rows: 5" in format_summary(s)


def test_write_manifest_is_read_back_by_the_pipeline(tmp_path):
    t = make_manifest(catalogue(9), injections_per_target=2, controls="per-injection")
    path = tmp_path / "out" / "manifest.parquet"
    summary = write_manifest(t, path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["manifest.parquet"]
    m = read_manifest(path)
    assert m.table.equals(t) and m.ok.all()
    assert (summary["rows"], summary["injections"], summary["controls"]) == (36, 18, 18)
    assert summary["bricks"] == 3 and summary["path"] == str(path)
    text = format_summary(summary)
    for split, rows, share in summary["splits"]:
        assert f"{100 * share:6.2f} %" in text and split in text
