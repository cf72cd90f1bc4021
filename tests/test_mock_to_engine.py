"""Mock DR10 bricks -> brick reader -> PSF provenance -> engine -> injection, end to end:
the pieces of issues 2 and 3 fitted together as the pipeline will use them."""
import numpy as np
from click.testing import CliRunner

import gpu_inject
from gpu_inject.cli import main
from gpu_inject.draws import random_tasks
from gpu_inject.io import CoaddSource, cut_brick, resolve_psf_fwhm
from gpu_inject.mock import brick_center

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
