"""Stamp cutting: WCS, SPEC section 1 placement, tiles vs whole image, edges, maskbits."""
import os

import numpy as np
import pytest
from astropy.io import fits
from scipy.special import erf

from conftest import LEGACYSURVEY_DATA, tan_header, write_brick
from gpu_inject.io import CoaddSource, choose_strategy, cut_stamps, sky_to_pixel, wcs_from_header
from gpu_inject.io.cutout import TILE_CALL_COST, TILE_CALL_COSTS
from gpu_inject.io.coadd import CoaddError

DR6 = LEGACYSURVEY_DATA / "desitarget_dr6"
DR6_BRICK = "0959p805"


def _need_dr6():
    if not (DR6 / f"legacysurvey-{DR6_BRICK}-image-g.fits.fz").exists():
        pytest.skip(f"real legacypipe files not present under {DR6}")


@pytest.fixture
def dr6_source(tmp_path):
    """The real DR6 files, linked into a flat layout <root>/<brick>/."""
    _need_dr6()
    d = tmp_path / "dr6" / DR6_BRICK
    d.mkdir(parents=True)
    for f in DR6.glob(f"legacysurvey-{DR6_BRICK}-*.fits.fz"):
        os.symlink(f, d / f.name)
    return CoaddSource(tmp_path / "dr6", layout="flat")


# ------------------------------------------------------------------ real legacypipe files
def test_real_wcs_round_trips_brick_centre():
    _need_dr6()
    with fits.open(DR6 / f"legacysurvey-{DR6_BRICK}-image-g.fits.fz") as hdul:
        w = wcs_from_header(hdul[1].header)
        shape = hdul[1].shape
    assert shape == (3600, 3600)
    with fits.open(DR6 / "survey-bricks.fits.gz") as b:
        row = b[1].data[b[1].data["BRICKNAME"] == DR6_BRICK][0]
        ra_c, dec_c = float(row["RA"]), float(row["DEC"])
    px, py = sky_to_pixel(w, ra_c, dec_c)
    assert px.shape == (1,) and py.shape == (1,)   # never 0-d arrays
    assert isinstance(float(px[0]), float)
    # CRVAL = brick centre, CRPIX 1800.5 (1-based) -> 0-based 1799.5
    assert abs(px[0] - 1799.5) < 1e-6 and abs(py[0] - 1799.5) < 1e-6
    ra2, dec2 = w.all_pix2world(px, py, 0)
    assert abs(ra2[0] - ra_c) < 1e-9 and abs(dec2[0] - dec_c) < 1e-9


def test_real_tiles_equal_whole_image_bit_for_bit(dr6_source):
    files = dr6_source.brick_files(DR6_BRICK, "gz", products=("image", "invvar"), maskbits=False)
    with fits.open(DR6 / f"legacysurvey-{DR6_BRICK}-image-g.fits.fz") as hdul:
        w = wcs_from_header(hdul[1].header)
    # targets inside the data region (rows 0..1887, cols 0..882), one straddling tiles
    pix = np.array([[400.3, 900.7], [99.6, 199.4], [820.2, 1850.9], [32.0, 32.0]])
    ra, dec = w.all_pix2world(pix[:, 0], pix[:, 1], 0)
    a = cut_stamps(files, ra, dec, 64, maskbits=False, psfsize=False, strategy="tiles")
    b = cut_stamps(files, ra, dec, 64, maskbits=False, psfsize=False, strategy="whole")
    assert a.strategy == "tiles" and b.strategy == "whole"
    assert all(e is None for e in a.error) and all(e is None for e in b.error)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.invvar, b.invvar)
    assert a.image.dtype == np.float32 and a.image.shape == (4, 2, 64, 64)
    for k, band in enumerate("gz"):
        for prod, arr in (("image", a.image), ("invvar", a.invvar)):
            full = fits.getdata(DR6 / f"legacysurvey-{DR6_BRICK}-{prod}-{band}.fits.fz")
            for i in range(len(pix)):
                y0, x0 = a.y0[i], a.x0[i]
                assert np.array_equal(arr[i, k], full[y0:y0 + 64, x0:x0 + 64])
    assert np.any(a.image[:, 0] != 0) and np.any(a.invvar[:, 0] > 0)
    assert not a.edge[:3].any()
    assert cut_stamps(files, ra[:1], dec[:1], 64, maskbits=False, psfsize=False).strategy == "tiles"


# ------------------------------------------------------------------ placement (own files)
def _plant_gaussian(shape, x, y, sigma, flux):
    """Pixel-integrated circular Gaussian at 0-based (x, y)."""
    def integ(n, c):
        e = np.arange(n + 1) - 0.5
        return np.diff(0.5 * (1 + erf((e - c) / (np.sqrt(2) * sigma))))
    return (flux * np.outer(integ(shape[0], y), integ(shape[1], x))).astype(np.float32)


@pytest.mark.parametrize("strategy", ["tiles", "whole"])
@pytest.mark.parametrize("size", [32, 64])
def test_point_source_lands_at_spec_position(tmp_path, strategy, size):
    brick = "2100m050"
    shape = (233, 317)                              # not 3600, odd sizes
    header = tan_header(shape, crpix=(150.37, 101.62), crval=(210.0, -5.0))
    w = wcs_from_header(header)
    # sky positions with sub-pixel offsets, one exactly at CRVAL (pixel = CRPIX - 1)
    targets = np.array([[149.37, 100.62], [60.81, 170.28], [250.45, 50.49]])
    ra, dec = w.all_pix2world(targets[:, 0], targets[:, 1], 0)
    ra[0], dec[0] = 210.0, -5.0
    image = np.zeros(shape, np.float32)
    for x, y in targets:
        image += _plant_gaussian(shape, x, y, 1.6, 100.0)
    planes = {("image", "r"): image, ("invvar", "r"): np.ones(shape, np.float32)}
    write_brick(tmp_path / brick, brick, header, planes)
    src = CoaddSource(tmp_path, layout="flat")
    files = src.brick_files(brick, "r", products=("image", "invvar"), maskbits=False)
    st = cut_stamps(files, ra, dec, size, maskbits=False, psfsize=False, strategy=strategy)
    assert st.ok.all()
    assert abs(st.px[0] - 149.37) < 1e-6 and abs(st.py[0] - 100.62) < 1e-6
    h = size // 2
    yy, xx = np.mgrid[0:size, 0:size]
    for i, (x, y) in enumerate(targets):
        assert st.x0[i] == np.floor(x + 0.5) - h and st.y0[i] == np.floor(y + 0.5) - h
        assert np.allclose(st.lens_offset[i], (x - st.x0[i] - h, y - st.y0[i] - h), atol=1e-6)
        assert np.all(np.abs(st.lens_offset[i]) <= 0.5)
        im = st.image[i, 0].astype(np.float64)
        cx, cy = (im * xx).sum() / im.sum(), (im * yy).sum() / im.sum()
        assert abs(cx - (h + st.lens_offset[i, 0])) < 0.02
        assert abs(cy - (h + st.lens_offset[i, 1])) < 0.02


def test_maskbits_psfsize_and_edges(small_brick):
    src = CoaddSource(small_brick["root"], layout="flat")
    files = src.brick_files(small_brick["brick"], "grz")
    w = wcs_from_header(small_brick["header"])
    ny, nx = small_brick["shape"]
    pix = np.array([[35.2, 15.4],          # on the bit-16 mask, 32x32 stamp runs off the corner
                    [150.0, 130.0],        # interior
                    [nx - 1.2, ny - 0.7],  # last pixel: edge
                    [-0.6, 10.0],          # centre pixel -1: off image
                    [20.0, ny + 3.0]])     # off image
    ra, dec = w.all_pix2world(pix[:, 0], pix[:, 1], 0)
    outs = [cut_stamps(files, ra, dec, 32, strategy=s) for s in ("tiles", "whole")]
    for st in outs:
        assert len(st) == 5
        assert st.maskbits.dtype == np.int32 and st.maskbits.shape == (5, 32, 32)
        assert st.image.shape == (5, 3, 32, 32) and st.psfsize.shape == (5, 3)
        assert st.ok.tolist() == [True, True, True, False, False]
        assert st.edge.tolist() == [True, False, True, False, False]
        for i in (3, 4):
            assert small_brick["brick"] in st.error[i] and f"ra={ra[i]:.6f}" in st.error[i]
            assert "off the image" in st.error[i] and "\n" not in st.error[i]
            assert not st.image[i].any() and not st.maskbits[i].any()
        # all bits kept, including bit 16
        assert (st.maskbits[0] == ((1 << 16) | 2)).sum() == 100
        # padded region: zeros; valid region equals the brick
        for i in (0, 1, 2):
            x0, y0 = st.x0[i], st.y0[i]
            for k, b in enumerate("grz"):
                full = fits.getdata(files.path("invvar", b))   # as decompressed
                exp = np.zeros((32, 32), np.float32)
                ys, xs = max(y0, 0), max(x0, 0)
                ye, xe = min(y0 + 32, ny), min(x0 + 32, nx)
                exp[ys - y0:ye - y0, xs - x0:xe - x0] = full[ys:ye, xs:xe]
                assert np.array_equal(st.invvar[i, k], exp)
                ps = small_brick["planes"][("psfsize", b)]
                assert st.psfsize[i, k] == ps[y0 + 16, x0 + 16]
    assert np.array_equal(outs[0].image, outs[1].image)
    assert np.array_equal(outs[0].maskbits, outs[1].maskbits)
    assert np.array_equal(outs[0].psfsize, outs[1].psfsize, equal_nan=True)


def test_int16_maskbits_keep_top_bit(tmp_path, small_brick):
    brick = small_brick["brick"]
    m = np.zeros(small_brick["shape"], np.int16)
    m[100:140, 100:140] = np.int16(-32768) | np.int16(2)   # bit 15 + bit 1
    write_brick(small_brick["root"] / brick, brick, small_brick["header"], {("maskbits", None): m})
    files = CoaddSource(small_brick["root"], layout="flat").brick_files(brick, "r")
    w = wcs_from_header(small_brick["header"])
    ra, dec = w.all_pix2world([120.0], [120.0], 0)
    st = cut_stamps(files, ra, dec, 16)
    assert st.maskbits.max() == (1 << 15) | 2 and st.maskbits.min() >= 0


def test_strategy_threshold():
    dr10 = (3600, 3600)
    assert choose_strategy(1, 64, dr10, (100, 100)) == "tiles"
    assert choose_strategy(60, 64, dr10, (100, 100)) == "tiles"
    # the crossover: 1296 tiles / (4 tiles per stamp * TILE_CALL_COST)
    edge = int(1296 / (4 * TILE_CALL_COST))
    assert choose_strategy(edge - 1, 64, dr10, (100, 100)) == "tiles"
    assert choose_strategy(edge + 1, 64, dr10, (100, 100)) == "whole"
    assert choose_strategy(edge + 1, 96, dr10, (100, 100)) == "whole"
    assert choose_strategy(1, 64, dr10, None) == "whole"       # uncompressed image
    # files held in memory are read by tiles through astropy, which costs more per call
    edge = int(1296 / (4 * TILE_CALL_COSTS["astropy"]))
    assert choose_strategy(edge - 1, 64, dr10, (100, 100), TILE_CALL_COSTS["astropy"]) == "tiles"
    assert choose_strategy(edge + 1, 64, dr10, (100, 100), TILE_CALL_COSTS["astropy"]) == "whole"


def test_auto_strategy_and_brick_level_failure(small_brick, tmp_path):
    files = CoaddSource(small_brick["root"], layout="flat").brick_files(small_brick["brick"], "grz")
    w = wcs_from_header(small_brick["header"])
    ra, dec = w.all_pix2world([150.0], [130.0], 0)
    # a 3x3-tile image: 1 stamp (4 tiles) -> tiles; 3 stamps (12 tile reads > 9) -> whole
    assert cut_stamps(files, ra, dec, 32).strategy == "tiles"
    assert cut_stamps(files, np.r_[ra, ra, ra], np.r_[dec, dec, dec], 32).strategy == "whole"
    # a file that becomes unreadable after resolution fails every row, naming the file
    p = files.path("invvar", "z")
    os.remove(p)
    with open(p, "wb") as f:
        f.write(b"not a FITS file at all" * 200)
    st = cut_stamps(files, np.r_[ra, ra], np.r_[dec, dec], 32)
    assert not st.ok.any() and all(p in e for e in st.error)
    with pytest.raises(CoaddError, match="corrupt FITS"):
        cut_stamps(files, ra, dec, 32, raise_errors=True)


def test_cut_brick_rows_in_rows_out(small_brick):
    from gpu_inject.io import cut_brick

    src = CoaddSource(small_brick["root"], layout="flat")
    brick = small_brick["brick"]
    w = wcs_from_header(small_brick["header"])
    ra, dec = w.all_pix2world([100.0, 150.0, 5000.0], [100.0, 120.0, 10.0], 0)
    st = cut_brick(src, brick, ra, dec, 32, "grz")
    assert st.ok.tolist() == [True, True, False]
    st = cut_brick(src, "0001p000", ra, dec, 32, "grz")
    assert len(st) == 3 and not st.ok.any() and "brick 0001p000 not found" in st.error[0]
    os.remove(small_brick["root"] / brick / f"legacysurvey-{brick}-image-g.fits.fz")
    st = cut_brick(src, brick, ra, dec, 32, "grz")
    assert not st.ok.any() and "band g" in st.error[0] and f"{brick}-image-g.fits.fz" in st.error[0]
    # without psfsize maps the psfsize files are not needed
    st = cut_brick(src, brick, ra, dec, 32, "rz", psfsize=False)
    assert st.ok.tolist() == [True, True, False] and np.isnan(st.psfsize).all()
    with pytest.raises(ValueError, match="even"):
        cut_brick(src, brick, ra, dec, 33, "rz")


def test_files_on_different_pixel_grids_fail_the_brick(small_brick):
    brick = small_brick["brick"]
    h = small_brick["header"].copy()
    h["CRPIX1"] += 1.0
    write_brick(small_brick["root"] / brick, brick, h,
                {("invvar", "z"): small_brick["planes"][("invvar", "z")]})
    files = CoaddSource(small_brick["root"], layout="flat").brick_files(brick, "grz")
    st = cut_stamps(files, [150.0], [2.25], 32)
    assert not st.ok[0] and "does not share the pixel grid" in st.error[0]
    assert files.path("invvar", "z") in st.error[0]


STAMP_FIELDS = ("image", "invvar", "maskbits", "psfsize", "px", "py", "x0", "y0", "lens_offset",
                "edge", "pixscale", "image_shape")


def _assert_same_stamps(a, b):
    assert a.error == b.error
    for name in STAMP_FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        if x is None:
            assert y is None
            continue
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), name


@pytest.mark.parametrize("strategy", ["tiles", "whole", "auto"])
def test_fitsio_and_astropy_readers_cut_identical_stamps(small_brick, monkeypatch, strategy):
    import gpu_inject.io.coadd as coadd

    files = CoaddSource(small_brick["root"], layout="flat").brick_files(small_brick["brick"], "grz")
    w = wcs_from_header(small_brick["header"])
    ny, nx = small_brick["shape"]
    pix = np.array([[35.2, 15.4], [150.0, 130.0], [nx - 1.2, ny - 0.7], [99.5, 100.5],
                    [-3.0, 10.0]])
    ra, dec = w.all_pix2world(pix[:, 0], pix[:, 1], 0)
    with files.open("image", "g") as f:
        assert f.reader == "fitsio"
    a = cut_stamps(files, ra[:2], dec[:2], 32, strategy=strategy)
    a5 = cut_stamps(files, ra, dec, 32, strategy=strategy)
    monkeypatch.setattr(coadd, "fitsio", None)
    with files.open("image", "g") as f:
        assert f.reader == "astropy"
    b = cut_stamps(files, ra[:2], dec[:2], 32, strategy=strategy)
    b5 = cut_stamps(files, ra, dec, 32, strategy=strategy)
    _assert_same_stamps(a, b)
    _assert_same_stamps(a5, b5)
    assert a5.ok.tolist() == [True, True, True, True, False]
    if strategy == "auto":
        # 2 stamps of 4 tiles in a 9-tile image: by tiles through fitsio (2*4*0.93 < 9),
        # whole through astropy, whose tile reads cost more (2*4*1.6 > 9)
        assert (a.strategy, b.strategy) == ("tiles", "whole")
        assert a5.strategy == b5.strategy == "whole"
    else:
        assert a.strategy == b.strategy == a5.strategy == b5.strategy == strategy


def test_real_files_fitsio_and_astropy_readers_agree(dr6_source, monkeypatch):
    import gpu_inject.io.coadd as coadd

    files = dr6_source.brick_files(DR6_BRICK, "gz", products=("image", "invvar"), maskbits=False)
    with files.open("image", "g") as f:
        assert f.reader == "fitsio" and f.tile_shape == (100, 100)
        w = wcs_from_header(f.header)
    pix = np.array([[400.3, 900.7], [99.6, 199.4], [820.2, 1850.9], [5.4, 3.0]])  # last: edge
    ra, dec = w.all_pix2world(pix[:, 0], pix[:, 1], 0)
    kw = dict(maskbits=False, psfsize=False)
    a = [cut_stamps(files, ra, dec, 64, strategy=s, **kw) for s in ("tiles", "whole")]
    monkeypatch.setattr(coadd, "fitsio", None)
    b = [cut_stamps(files, ra, dec, 64, strategy=s, **kw) for s in ("tiles", "whole")]
    for x, y in zip(a, b):
        assert x.ok.all() and x.strategy == y.strategy
        assert x.edge.tolist() == [False, False, False, True]
        _assert_same_stamps(x, y)
    assert np.array_equal(a[0].image, a[1].image)
