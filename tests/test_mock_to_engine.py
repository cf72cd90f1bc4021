"""Mock DR10 bricks -> brick reader -> PSF provenance -> engine -> injection, end to end:
the pieces of issues 2 and 3 fitted together as the pipeline will use them."""
import os

import numpy as np
from astropy.wcs import WCS
from click.testing import CliRunner

import gpu_inject
from gpu_inject.cli import main
from gpu_inject.draws import random_tasks
from gpu_inject.io import CoaddSource, cut_brick, resolve_psf_fwhm
from gpu_inject.kernels.reduce import BAD_BITS, WISE_BITS, mask_fractions
from gpu_inject.mock import (brick_center, plan_mock_brick, render_band, render_maskbits,
                             wcs_header, write_mock_brick)

BRICK = "0489m442"
N = 32


def test_mock_bricks_through_reader_and_engine(tmp_path):
    ra0, dec0 = brick_center(BRICK)
    # targets a few arcsec from the centre, off the pixel grid
    ra = ra0 + np.array([-12.3, 7.7]) / 3600 / np.cos(np.radians(dec0))
    dec = dec0 + np.array([5.1, -9.4]) / 3600
    targets = tmp_path / "targets.csv"
    targets.write_text("ra,dec\n" + "".join(f"{a:.10f},{d:.10f}\n" for a, d in zip(ra, dec)))
    res = CliRunner().invoke(main, ["mock-bricks", "--out", str(tmp_path / "coadd"), "--brick",
                                    BRICK, "--size", "400", "--targets", str(targets),
                                    "--missing-coverage", "g:none"])
    assert res.exit_code == 0, res.output

    stamps = cut_brick(CoaddSource(tmp_path / "coadd"), BRICK, ra, dec, N, list("grz"))
    assert stamps.error == [None, None]
    # the LRG sits at the lens centre: N//2 + lens offset, to within a pixel (r band)
    for k in range(2):
        r = stamps.image[k, 1]
        peak = np.unravel_index(np.argmax(r), r.shape)
        want = N // 2 + stamps.lens_offset[k][::-1]
        assert np.all(np.abs(np.array(peak) - want) <= 1.0)

    # SPEC 3: g has no coverage (map 0) and the manifest says 0 too -> the r value (source 2)
    manifest = {"g": np.zeros(2), "r": np.full(2, 1.3), "z": np.full(2, 1.25)}
    psf = resolve_psf_fwhm("grz", manifest, stamps.psfsize)
    assert psf.ok.all()
    np.testing.assert_array_equal(psf.source, [[2, 0, 0], [2, 0, 0]])
    np.testing.assert_array_equal(psf.fwhm[:, 0], psf.fwhm[:, 1])

    tasks = random_tasks(2, seed=3)
    arcs = gpu_inject.render_arcs(tasks, stamp_size=N, psf_fwhm=psf.fwhm,
                                  lens_offset=stamps.lens_offset, backend="cpu")
    injected = stamps.image + arcs.images
    np.testing.assert_allclose((injected - stamps.image).sum(axis=(2, 3)), arcs.total_flux,
                               rtol=1e-5)


def test_mask_fractions_on_planted_masks(tmp_path):
    """Stamps cut over the mock's planted masks: the fractions of SPEC 5 computed from the
    reader's maskbits and invvar equal those of the planted pixel maps (render_maskbits,
    render_band), and a stamp inside a WISE disc is WISE-masked in proportion to its area."""
    size, n = 600, 48
    kw = dict(size=size, bands="grz", seed=5)
    plan = plan_mock_brick(BRICK, **kw)
    write_mock_brick(tmp_path, BRICK, **kw)
    maskbits, _, _ = render_maskbits(plan)
    invvar = np.stack([render_band(plan, b)[1] for b in "grz"])
    centres = [(x, y) for x, y, r, _ in plan.wise_discs]
    if plan.bright_star:
        centres.append((plan.bright_star["x"], plan.bright_star["y"]))
    centres = [(min(max(x, n), size - n), min(max(y, n), size - n)) for x, y in centres]
    w = WCS(wcs_header(BRICK, size))
    ra, dec = w.all_pix2world([c[0] for c in centres], [c[1] for c in centres], 0)
    st = cut_brick(CoaddSource(tmp_path), BRICK, ra, dec, n, list("grz"))
    assert all(e is None for e in st.error)
    bad, wise = mask_fractions(st.maskbits, st.invvar)
    for k in range(len(centres)):
        x0, y0 = int(st.x0[k]), int(st.y0[k])
        mb = maskbits[y0:y0 + n, x0:x0 + n]
        iv = invvar[:, y0:y0 + n, x0:x0 + n]
        np.testing.assert_array_equal(st.maskbits[k], mb)
        want_bad = ((mb & BAD_BITS) != 0) | (iv <= 0).any(axis=0)
        assert bad[k] == want_bad.mean()
        assert wise[k] == ((mb & WISE_BITS) != 0).mean()
    assert wise[: len(plan.wise_discs)].min() > 0.1  # the discs are really there


def test_mock_bricks_read_through_s3_equal_local(tmp_path, moto_s3):
    """The same mock brick read from S3 (moto's server on loopback) and from disk."""
    paths = write_mock_brick(tmp_path / "local", BRICK, size=300, seed=2)
    s3 = moto_s3["client"]
    s3.create_bucket(Bucket="dr10")
    for p in paths.values():
        s3.upload_file(str(p), "dr10", f"south/coadd/{BRICK[:3]}/{BRICK}/{p.name}")
    opts = {k: v for k, v in moto_s3["opts"].items() if k != "endpoint_url"}
    remote = CoaddSource("s3://dr10/south/coadd", endpoint_url=moto_s3["endpoint"],
                         storage_options=opts, cache_dir=tmp_path / "cache", timeout=10)
    ra0, dec0 = brick_center(BRICK)
    ra = ra0 + np.array([0.0, 10.0]) / 3600
    dec = dec0 + np.array([0.0, -8.0]) / 3600
    a = cut_brick(remote, BRICK, ra, dec, 32, list("grz"))
    b = cut_brick(CoaddSource(tmp_path / "local"), BRICK, ra, dec, 32, list("grz"))
    assert a.error == [None, None] and b.error == [None, None]
    for name in ("image", "invvar", "maskbits", "psfsize"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert os.listdir(tmp_path / "cache")  # served through the local cache
