"""Mock DR10 bricks (gpu_inject.mock): names, HDUs, compression, WCS, units, content."""
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from gpu_inject import mock

REAL_HDR = (Path(__file__).resolve().parents[2] / "shared" / "data" / "legacysurvey" / "headers"
            / "dr10-south-0489m442-image-r.hdr.txt")
BRICK = "0489m442"
SIZE = 400
PRODUCTS = ("image", "invvar", "psfsize")


def _target_radec(brick, size, xy):
    w = WCS(mock.wcs_header(brick, size))
    ra, dec = w.all_pix2world([p[0] for p in xy], [p[1] for p in xy], 0)
    return list(zip(ra.tolist(), dec.tolist()))


# Targets off the pixel centres (sub-pixel offsets), both in the g-covered part.
TARGET_XY = [(120.3, 250.6), (90.8, 110.2)]


@pytest.fixture(scope="module")
def brick(tmp_path_factory):
    root = tmp_path_factory.mktemp("coadd")
    targets = _target_radec(BRICK, SIZE, TARGET_XY)
    kw = dict(size=SIZE, seed=3, targets=targets, missing_band_coverage={"g": "partial"})
    paths = mock.write_mock_brick(root, BRICK, layout="legacysurvey", **kw)
    plan = mock.plan_mock_brick(BRICK, **kw)
    return dict(root=root, paths=paths, plan=plan, targets=targets, kw=kw)


@pytest.fixture(scope="module")
def flat_brick(tmp_path_factory):
    root = tmp_path_factory.mktemp("flat")
    paths = mock.write_mock_brick(root, "3572m307", size=256, layout="flat", seed=1,
                                  missing_band_coverage={"g": "none"})
    return dict(root=root, paths=paths)


def _raw_header(path, ext=1):
    with fits.open(path, disable_image_compression=True) as f:
        return f[ext].header.copy(), (f[ext].data["ZSCALE"].copy()
                                      if "ZSCALE" in f[ext].columns.names else None)


def _data(path, ext=1):
    with fits.open(path) as f:
        return f[ext].data.copy(), f[ext].header.copy()


def _real_cards():
    """{KEY: value} of the real DR10 header quoted in shared/data (strings unquoted)."""
    cards = {}
    for line in REAL_HDR.read_text().splitlines():
        m = re.match(r"^([A-Z0-9_-]{1,8})\s*=\s*('(?:[^']|'')*'|[^/]+?)\s*(/.*)?$", line)
        if not m:
            continue
        v = m.group(2).strip()
        if v.startswith("'"):
            v = v[1:-1].replace("''", "'").rstrip()
        elif v in ("T", "F"):
            v = v == "T"
        else:
            v = float(v) if any(c in v for c in ".E") else int(v)
        cards[m.group(1)] = v
    return cards


needs_real = pytest.mark.skipif(not REAL_HDR.exists(), reason="shared real DR10 header absent")


# ----------------------------------------------------------------------------- bricks
@needs_real
def test_brick_geometry_matches_real_dr10_header():
    real = _real_cards()
    b = mock.brick_info(BRICK)
    assert b.on_grid and b.brickid == real["BRICKID"]
    for key, val in (("CENTRA", b.ra), ("CENTDEC", b.dec), ("RAMIN", b.ra1), ("RAMAX", b.ra2),
                     ("DECMIN", b.dec1), ("DECMAX", b.dec2), ("CRVAL1", b.ra),
                     ("CRVAL2", b.dec)):
        assert val == pytest.approx(real[key], abs=1e-11), key
    # a full-size mock brick's WCS is the real one, card for card
    h = mock.wcs_header(BRICK, 3600)
    for key in ("CTYPE1", "CTYPE2", "CRPIX1", "CRPIX2", "CD1_1", "CD1_2", "CD2_1", "CD2_2",
                "EQUINOX"):
        assert h[key] == real[key], key
    assert h["CRVAL1"] == pytest.approx(real["CRVAL1"], abs=1e-11)


def test_brick_names():
    assert mock.brick_center("3572m307")[1] == -30.75           # DATA_MODEL example
    ra, dec = mock.brick_center("3572m307")
    assert int(ra * 10) == 3572
    off = mock.brick_info("1234p567")                           # not on the DR10 grid
    assert not off.on_grid and (off.ra, off.dec) == (123.45, 56.75)
    for bad in ("489m442", "0489x442", "0489m4420", ""):
        with pytest.raises(ValueError):
            mock.brick_info(bad)


# ----------------------------------------------------------------------------- files
def test_files_and_layouts(brick, flat_brick):
    d = brick["root"] / "048" / BRICK
    want = {f"legacysurvey-{BRICK}-{p}-{b}.fits.fz" for p in PRODUCTS for b in "grz"}
    want.add(f"legacysurvey-{BRICK}-maskbits.fits.fz")
    assert {p.name for p in d.iterdir()} == want               # no leftover temporary files
    assert {Path(p) for p in brick["paths"].values()} == {d / n for n in want}
    fd = flat_brick["root"] / "3572m307"
    assert sorted(p.name for p in fd.iterdir()) == sorted(
        n.replace(BRICK, "3572m307") for n in want)
    assert set(brick["paths"]) == {f"{p}-{b}" for p in PRODUCTS for b in "grz"} | {"maskbits"}
    with pytest.raises(ValueError):
        mock.brick_dir("x", BRICK, "nested")


def test_hdu_layout(brick):
    for key, path in brick["paths"].items():
        with fits.open(path) as f:
            assert f[0].header["NAXIS"] == 0 and f[0].data is None
            assert all(isinstance(h, fits.CompImageHDU) for h in f[1:])
            if key == "maskbits":
                assert [h.name for h in f[1:]] == ["MASKBITS", "WISEM1", "WISEM2"]
                assert f[1].data.dtype == np.int32
                assert f[2].data.dtype == np.uint8 and f[3].data.dtype == np.uint8
            else:
                assert len(f) == 2 and f[1].data.dtype == np.float32
            assert all(h.data.shape == (SIZE, SIZE) for h in f[1:])


def test_compression_cards(brick):
    paths = brick["paths"]
    for b in "grz":
        h, zscale = _raw_header(paths[f"image-{b}"])
        assert (h["ZCMPTYPE"], h["ZQUANTIZ"]) == ("RICE_ONE", "SUBTRACTIVE_DITHER_2")
        assert 1 <= h["ZDITHER0"] <= 10000
        # absolute quantization step 1e-4 nanomaggy in every tile (stored as float32(1e-4))
        assert np.allclose(zscale, 1e-4, rtol=1e-6, atol=0)
        h, zscale = _raw_header(paths[f"invvar-{b}"])
        assert (h["ZCMPTYPE"], h["ZQUANTIZ"]) == ("RICE_ONE", "NO_DITHER")
        step = mock.INVVAR_REL_STEP / mock.SKY_SIGMA[b] ** 2
        # every tile quantized with the step, or (all-zero / constant tiles) stored losslessly
        assert np.all(np.isclose(zscale, step, rtol=1e-6) | (zscale == 0))
        h, _ = _raw_header(paths[f"psfsize-{b}"])
        assert h["ZCMPTYPE"] == "GZIP_1" and h.get("ZQUANTIZ", "NONE") == "NONE"
        assert h["ZNAME1"] == "NOISEBIT" and h["ZVAL1"] == 0     # no quantization
    for ext in (1, 2, 3):
        h, _ = _raw_header(paths["maskbits"], ext)
        assert h["ZCMPTYPE"] == "HCOMPRESS_1" and (h["ZNAME1"], h["ZVAL1"]) == ("SCALE", 0)
    for path in paths.values():
        with fits.open(path, disable_image_compression=True) as f:
            for hdu in f[1:]:
                assert (hdu.header["ZTILE1"], hdu.header["ZTILE2"]) == (100, 100)


@needs_real
def test_image_cards_match_real_dr10(brick):
    real = _real_cards()
    raw, _ = _raw_header(brick["paths"]["image-r"])
    for key in ("ZIMAGE", "ZBITPIX", "ZNAXIS", "ZTILE1", "ZTILE2", "ZQUANTIZ", "ZCMPTYPE",
                "ZNAME1", "ZVAL1", "ZNAME2", "ZVAL2"):
        assert raw[key] == real[key], key
    _, h = _data(brick["paths"]["image-r"])
    for key in ("LSDR", "SURVEY", "DRVERSIO", "BRICK", "BRICKID", "CTYPE1", "CTYPE2",
                "CD1_1", "CD1_2", "CD2_1", "CD2_2", "EQUINOX", "INSTRUME", "FILTERX", "IMTYPE",
                "PRODTYPE", "MAGZERO", "BUNIT"):
        assert h[key] == real[key], key
    for key in ("RAMIN", "RAMAX", "DECMIN", "DECMAX", "CENTRA", "CENTDEC", "CRVAL1", "CRVAL2"):
        assert h[key] == pytest.approx(real[key], abs=1e-11), key
    assert h["CRPIX1"] == h["CRPIX2"] == (SIZE + 1) / 2      # real: 1800.5 for 3600 pixels


def test_lossless_and_quantized_round_trips(brick):
    plan = brick["plan"]
    for b in "grz":
        img, invvar, psfsize, _, _ = mock.render_band(plan, b)
        d, _ = _data(brick["paths"][f"psfsize-{b}"])
        assert np.array_equal(d, psfsize)                        # GZIP_1: exact
        d, _ = _data(brick["paths"][f"image-{b}"])
        # subtractive dithering: error within half a step; zeros (no data) restored exactly
        # (plus float32 rounding of the restored value: 2^-23 relative, bright pixels)
        assert (np.abs(d - img) <= 0.5e-4 * (1 + 1e-3) + 2.4e-7 * np.abs(img)).all()
        assert np.array_equal(d == 0, img == 0)
        d, _ = _data(brick["paths"][f"invvar-{b}"])
        assert np.array_equal(d == 0, invvar == 0)
        step = mock.INVVAR_REL_STEP / mock.SKY_SIGMA[b] ** 2           # absolute step
        assert np.abs(d - invvar).max() <= 0.5 * step * (1 + 1e-3) + 2.4e-7 * invvar.max()
    mb, w1, w2 = mock.render_maskbits(plan)
    with fits.open(brick["paths"]["maskbits"]) as f:                # HCOMPRESS scale 0: exact
        assert np.array_equal(f[1].data, mb)
        assert np.array_equal(f[2].data, w1) and np.array_equal(f[3].data, w2)


def test_bunit_and_band_cards(brick):
    want = {"image": "nanomaggy", "invvar": "1/nanomaggy^2", "psfsize": "arcsec"}
    for p in PRODUCTS:
        for b in "grz":
            _, h = _data(brick["paths"][f"{p}-{b}"])
            assert h["BUNIT"] == want[p] and h["FILTERX"] == b and h["BANDS"] == "grz"
            if p == "image":
                assert h["MAGZERO"] == 22.5


def test_wcs_round_trip(brick):
    b = mock.brick_info(BRICK)
    for key in ("image-r", "invvar-z", "psfsize-g", "maskbits"):
        _, h = _data(brick["paths"][key])
        w = WCS(h)
        assert (h["CRVAL1"], h["CRVAL2"]) == (b.ra, b.dec)
        assert (h["CD1_1"], h["CD2_2"]) == (-7.27777777777778e-05, 7.27777777777778e-05)
        x, y = w.all_world2pix(b.ra, b.dec, 1)                    # FITS 1-based
        assert abs(x - h["CRPIX1"]) < 1e-8 and abs(y - h["CRPIX2"]) < 1e-8
        x, y = w.all_world2pix(b.ra, b.dec, 0)                    # numpy 0-based: centre
        assert abs(x - (SIZE - 1) / 2) < 1e-8 and abs(y - (SIZE - 1) / 2) < 1e-8
        scale = np.sqrt(abs(np.linalg.det(w.pixel_scale_matrix))) * 3600
        assert scale == pytest.approx(0.262, abs=1e-9)
    w = WCS(_data(brick["paths"]["image-r"])[1])                  # targets where asked
    for (ra, dec), (x0, y0) in zip(brick["targets"], TARGET_XY):
        x, y = w.all_world2pix(ra, dec, 0)
        assert abs(x - x0) < 1e-6 and abs(y - y0) < 1e-6


# ----------------------------------------------------------------------------- content
def test_maskbits_int32_and_planted_masks(brick):
    mb, _ = _data(brick["paths"]["maskbits"], 1)
    w1, _ = _data(brick["paths"]["maskbits"], 2)
    w2, _ = _data(brick["paths"]["maskbits"], 3)
    assert mb.dtype == np.int32
    bits = {name: ((mb >> bit) & 1).astype(bool) for name, bit in mock.MASKBITS.items()}
    assert bits["SUB_BLOB"].any()                     # bit 16: lost if stored as int16
    assert not (mb.astype(np.int16).astype(np.int32) == mb).all()
    for name in ("BRIGHT", "WISEM1", "WISEM2", "MEDIUM", "SATUR_R", "SATUR_Z", "ALLMASK_Z"):
        assert bits[name].any(), name
    assert np.array_equal(w1 == 1, bits["WISEM1"]) and np.array_equal(w2 == 1, bits["WISEM2"])
    assert not bits["NPRIMARY"].any()                 # a 400 px brick lies inside the primary area
    for b in "grz":                                   # ALLMASK <=> invvar 0 (where covered)
        iv, _ = _data(brick["paths"][f"invvar-{b}"])
        cov = mock.coverage_mask(SIZE, brick["kw"]["missing_band_coverage"].get(b))
        assert np.array_equal(bits[f"ALLMASK_{b.upper()}"], (iv == 0) & cov)
        assert not (bits[f"SATUR_{b.upper()}"] & ~cov).any()
    # the bright-star mask does not touch the targets
    for (x, y) in TARGET_XY:
        assert not bits["BRIGHT"][int(round(y)), int(round(x))]


def test_full_size_brick(tmp_path):
    """A DR10-size (3600 px) brick, r only: CRPIX 1800.5 as the real file, NPRIMARY where the
    image overhangs the 0.25 deg primary area (~80 px per side), tile-aware section reads."""
    paths = mock.write_mock_brick(tmp_path, BRICK, size=3600, bands="r", n_stars=20,
                                  n_galaxies=100)
    with fits.open(paths["image-r"]) as f:
        h = f[1].header
        assert (h["NAXIS1"], h["NAXIS2"], h["CRPIX1"], h["CRPIX2"]) == (3600, 3600, 1800.5, 1800.5)
        assert f[1].section[1768:1832, 1768:1832].shape == (64, 64)
    if REAL_HDR.exists():
        real = _real_cards()
        for key in ("CRPIX1", "CRPIX2", "CD1_1", "CD2_2", "BRICKID"):
            assert h[key] == real[key], key
    with fits.open(paths["maskbits"]) as f:
        npr = (f[1].data & 1) != 0
    inside_x = np.nonzero(~npr[1800])[0]
    inside_y = np.nonzero(~npr[:, 1800])[0]
    for lo, hi in ((inside_x[0], inside_x[-1]), (inside_y[0], inside_y[-1])):
        assert 60 < lo < 100 and 3500 < hi < 3540
    assert not npr[200:3400, 200:3400].any()


@pytest.mark.parametrize("size", [102, 301])
def test_odd_sizes(tmp_path, size):
    """Any size: partial edge tiles; maskbits tiles shrink when HCOMPRESS would get < 4 px."""
    paths = mock.write_mock_brick(tmp_path, BRICK, size=size, bands="z")
    for path in paths.values():
        with fits.open(path) as f:
            assert all(hdu.data.shape == (size, size) for hdu in f[1:])
    mb, _ = _data(paths["maskbits"])
    plan = mock.plan_mock_brick(BRICK, size=size, bands="z")
    assert np.array_equal(mb, mock.render_maskbits(plan)[0])
    _, h = _data(paths["image-z"])
    assert h["CRPIX1"] == (size + 1) / 2


def test_missing_coverage(brick, flat_brick):
    cov = mock.coverage_mask(SIZE, "partial")
    assert 0.3 < 1 - cov.mean() < 0.6
    ps, _ = _data(brick["paths"]["psfsize-g"])
    im, _ = _data(brick["paths"]["image-g"])
    iv, _ = _data(brick["paths"]["invvar-g"])
    assert (ps[~cov] == 0).all() and (ps[cov] > 0).all()
    assert (im[~cov] == 0).all() and (iv[~cov] == 0).all() and (iv[cov] > 0).mean() > 0.99
    for b in "rz":
        ps, _ = _data(brick["paths"][f"psfsize-{b}"])
        assert (ps > 0).all()
    fp = flat_brick["paths"]
    for p in PRODUCTS:
        d, _ = _data(fp[f"{p}-g"])
        assert (d == 0).all(), p
    assert (_data(fp["psfsize-r"])[0] > 0).all() and (_data(fp["invvar-z"])[0] > 0).mean() > 0.99


def test_psfsize_maps_smooth_and_dr10_like(brick):
    nominal = {"g": 1.5, "r": 1.3, "z": 1.25}
    for b in "grz":
        ps, _ = _data(brick["paths"][f"psfsize-{b}"])
        v = ps[ps > 0]
        assert v.min() >= 0.9 * nominal[b] and v.max() <= 1.1 * nominal[b]
        assert v.max() > v.min()                                # it does vary
        both = (ps[:, 1:] > 0) & (ps[:, :-1] > 0)                # smoothly (where covered)
        assert np.abs(np.diff(ps, axis=1))[both].max() < 2e-3
        both = (ps[1:] > 0) & (ps[:-1] > 0)
        assert np.abs(np.diff(ps, axis=0))[both].max() < 2e-3


def test_sky_noise_level(brick):
    """In pixels >= 40 px from every source and outside every mask, image * sqrt(invvar) is
    the drawn unit Gaussian: std 1 to 3 % (8000+ pixels give <= 0.8 % sampling error; the
    1e-4 quantization adds 1e-4 in variance; faint wings of distant sources little more).
    The raw std is the per-band SKY_SIGMA to 10 % (the depth pattern is within +-6 %)."""
    plan = brick["plan"]
    s = plan.sources
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    empty = np.ones((SIZE, SIZE), bool)
    for x, y, re_arcsec in zip(s["x"], s["y"], s["re_arcsec"]):
        r = 40 + 4 * re_arcsec / 0.262
        x0, x1 = int(max(x - r, 0)), int(min(x + r + 1, SIZE))
        y0, y1 = int(max(y - r, 0)), int(min(y + r + 1, SIZE))
        if x0 < x1 and y0 < y1:
            sub = (xx[y0:y1, x0:x1] - x) ** 2 + (yy[y0:y1, x0:x1] - y) ** 2 < r * r
            empty[y0:y1, x0:x1] &= ~sub
    mb, _ = _data(brick["paths"]["maskbits"])
    b = plan.bright_star
    empty &= (mb == 0) & ((xx - b["x"]) ** 2 + (yy - b["y"]) ** 2 > (1.5 * b["radius_px"]) ** 2)
    for band in "grz":
        im, _ = _data(brick["paths"][f"image-{band}"])
        iv, _ = _data(brick["paths"][f"invvar-{band}"])
        sel = empty & (iv > 0)
        assert sel.sum() > 8000, sel.sum()
        chi = im[sel] * np.sqrt(iv[sel])
        assert chi.std() == pytest.approx(1.0, abs=0.03)
        assert abs(chi.mean()) < 0.03
        assert im[sel].std() == pytest.approx(mock.SKY_SIGMA[band], rel=0.10)


def test_targets_present(brick):
    """An LRG-like galaxy sits at each target: in r and z, the brightest pixel of the image
    smoothed by a 3 x 3 box (noise / 3: the de Vaucouleurs + PSF top is flat to ~10 % over
    +-2 px, so single noisy pixels could win) is within 1 px of the target's pixel and is a
    local maximum; in g (1.6-1.9 mag fainter than r, peak S/N only ~5-10) its 9 x 9 aperture
    flux is > 10 sigma."""
    w = WCS(_data(brick["paths"]["image-r"])[1])
    for band in "grz":
        raw, _ = _data(brick["paths"][f"image-{band}"])
        im = np.zeros_like(raw)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                im[1:-1, 1:-1] += raw[1 + dy:SIZE - 1 + dy, 1 + dx:SIZE - 1 + dx] / 9
        for ra, dec in brick["targets"]:
            x, y = w.all_world2pix(ra, dec, 0)
            ix, iy = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
            if band == "g":
                ap = raw[iy - 4:iy + 5, ix - 4:ix + 5].sum()
                assert ap > 10 * 9 * mock.SKY_SIGMA[band]
                continue
            win = im[iy - 5:iy + 6, ix - 5:ix + 6]
            py, px = np.unravel_index(np.argmax(win), win.shape)
            # the brightest pixel within 5 px is within 1 px of the target's pixel ...
            assert abs(py - 5) <= 1 and abs(px - 5) <= 1, (band, px, py)
            # ... it is a local maximum, far above the noise
            pk = im[iy - 5 + py, ix - 5 + px]
            assert pk == im[iy - 6 + py:iy - 3 + py, ix - 6 + px:ix - 3 + px].max()
            assert pk > 10 * mock.SKY_SIGMA[band]
        # total r flux of an LRG-like target (r 19-20): within a 41 px box, 70-105 %
        if band == "r":
            for ra, dec in brick["targets"]:
                x, y = w.all_world2pix(ra, dec, 0)
                ix, iy = int(round(float(x))), int(round(float(y)))
                tot = raw[iy - 20:iy + 21, ix - 20:ix + 21].sum()
                assert 0.7 * 10 ** (-0.4 * (20 - 22.5)) < tot < 1.05 * 10 ** (-0.4 * (19 - 22.5))


def test_deterministic_and_seeded(tmp_path):
    a = mock.write_mock_brick(tmp_path / "a", BRICK, size=128, bands="r", seed=5)
    b = mock.write_mock_brick(tmp_path / "b", BRICK, size=128, bands="r", seed=5)
    c = mock.write_mock_brick(tmp_path / "c", BRICK, size=128, bands="r", seed=6)
    da, db, dc = (_data(p["image-r"])[0] for p in (a, b, c))
    assert np.array_equal(da, db) and not np.array_equal(da, dc)


def test_bad_arguments(tmp_path):
    for bands in ("grq", "grr", ""):
        with pytest.raises(ValueError):
            mock.write_mock_brick(tmp_path, BRICK, size=64, bands=bands)
    with pytest.raises(ValueError):
        mock.write_mock_brick(tmp_path, BRICK, size=64, missing_band_coverage={"g": "some"})
    with pytest.raises(ValueError):
        mock.write_mock_brick(tmp_path, BRICK, size=64, missing_band_coverage={"i": "none"})
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        p = mock.plan_mock_brick(BRICK, size=64, targets=[(10.0, 10.0)])
    assert any("off the" in str(r.message) for r in rec)
    assert np.isnan(p.targets_xy).all() and not (p.sources["kind"] == "target").any()
