"""Brick file resolution: layouts, one-line errors naming the path, S3 through moto's server."""
import os
import shutil
import socket
import time

import numpy as np
import pytest

from astropy.io import fits

import gpu_inject.io.coadd as coadd
from conftest import LEGACYSURVEY_DATA
from gpu_inject.io import CoaddError, CoaddSource, cut_stamps, wcs_from_header
from gpu_inject.io.coadd import AstropyImage, FitsioImage


def _one_line(exc):
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_layouts_resolve(small_brick, tmp_path):
    brick = small_brick["brick"]
    flat = CoaddSource(small_brick["root"], layout="flat")
    files = flat.brick_files(brick, "grz")
    assert files.path("image", "g") == str(small_brick["root"] / brick / f"legacysurvey-{brick}-image-g.fits.fz")
    assert files.path("maskbits") .endswith(f"{brick}/legacysurvey-{brick}-maskbits.fits.fz")
    assert len(files.paths) == 10
    # the same files in the DR10 layout <root>/<AAA>/<brick>/
    ls_root = tmp_path / "ls"
    shutil.copytree(small_brick["root"] / brick, ls_root / brick[:3] / brick)
    ls = CoaddSource(ls_root)
    assert ls.layout == "legacysurvey"
    f2 = ls.brick_files(brick, "grz")
    assert f2.path("psfsize", "z") == str(ls_root / "150" / brick / f"legacysurvey-{brick}-psfsize-z.fits.fz")
    w = wcs_from_header(small_brick["header"])
    ra, dec = w.all_pix2world([100.0, 200.0], [100.0, 60.0], 0)
    a, b = cut_stamps(files, ra, dec, 32), cut_stamps(f2, ra, dec, 32)
    assert a.ok.all() and np.array_equal(a.image, b.image) and np.array_equal(a.maskbits, b.maskbits)
    # wrong layout for the tree: a clear "brick not found" naming the directory looked at
    with pytest.raises(CoaddError) as e:
        CoaddSource(ls_root, layout="flat").brick_files(brick, "grz")
    assert str(ls_root / brick) in _one_line(e)
    with pytest.raises(CoaddError, match="unknown coadd layout"):
        CoaddSource(ls_root, layout="nested")


def test_missing_root(tmp_path):
    root = tmp_path / "nope"
    with pytest.raises(CoaddError) as e:
        CoaddSource(root).brick_files("1500p022", "grz")
    msg = _one_line(e)
    assert "coadd root not found" in msg and str(root) in msg


def test_missing_brick(small_brick):
    with pytest.raises(CoaddError) as e:
        CoaddSource(small_brick["root"], layout="flat").brick_files("0001p000", "grz")
    msg = _one_line(e)
    assert "brick 0001p000 not found" in msg and str(small_brick["root"] / "0001p000") in msg


def test_missing_band_file(small_brick):
    brick = small_brick["brick"]
    p = small_brick["root"] / brick / f"legacysurvey-{brick}-invvar-z.fits.fz"
    os.remove(p)
    with pytest.raises(CoaddError) as e:
        CoaddSource(small_brick["root"], layout="flat").brick_files(brick, "grz")
    msg = _one_line(e)
    assert "band z" in msg and str(p) in msg
    # maskbits
    os.remove(small_brick["root"] / brick / f"legacysurvey-{brick}-maskbits.fits.fz")
    with pytest.raises(CoaddError, match="maskbits file missing"):
        CoaddSource(small_brick["root"], layout="flat").brick_files(brick, "gr")


@pytest.fixture(params=["fitsio", "astropy"])
def reader(request, monkeypatch):
    """Open local files through fitsio (the default) or astropy (as without fitsio)."""
    if request.param == "astropy":
        monkeypatch.setattr(coadd, "fitsio", None)
    return request.param


@pytest.mark.parametrize("damage", ["half", "header_only", "garbage", "empty", "zeroed_header",
                                    "cut_in_hdu1_header", "table_hdu"])
def test_truncated_or_corrupt_file(small_brick, damage, reader):
    brick = small_brick["brick"]
    src = CoaddSource(small_brick["root"], layout="flat")
    files = src.brick_files(brick, "grz")
    p = files.path("image", "r")
    with files.open("image", "r") as img:   # intact: opened by the expected library
        assert img.reader == reader and img.shape == small_brick["shape"]
    data = open(p, "rb").read()
    if damage == "half":
        data = data[: len(data) // 2]
    elif damage == "header_only":
        data = data[:5760]
    elif damage == "garbage":
        data = bytes(np.random.default_rng(0).integers(0, 256, len(data), dtype=np.uint8))
    elif damage == "empty":
        data = b""
    elif damage == "cut_in_hdu1_header":
        data = data[:2880 + 1000]
    elif damage == "table_hdu":   # HDU 1 is a binary table, not an image
        os.remove(p)
        fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(
            [fits.Column("A", "E", array=np.zeros(5, np.float32))])]).writeto(p)
        data = open(p, "rb").read()
    else:
        data = b"\0" * 2880 + data[2880:]
    with open(p, "wb") as f:
        f.write(data)
    t = time.time()
    with pytest.raises(CoaddError) as e:
        files.open("image", "r")
    msg = _one_line(e)
    assert p in msg and ("truncated" in msg or "corrupt" in msg)
    if damage in ("half", "header_only", "cut_in_hdu1_header"):
        assert "truncated" in msg
    if damage == "table_hdu":
        assert "not a 2-D image" in msg
    st = cut_stamps(files, [150.0], [2.25], 32)
    assert not st.ok[0] and p in st.error[0]
    assert time.time() - t < 10


def test_real_truncated_dr6_file(tmp_path, reader):
    src_file = LEGACYSURVEY_DATA / "desitarget_dr6" / "legacysurvey-0959p805-image-g.fits.fz"
    if not src_file.exists():
        pytest.skip("real legacypipe files not present")
    d = tmp_path / "0959p805"
    d.mkdir()
    b = src_file.read_bytes()
    (d / src_file.name).write_bytes(b[: len(b) // 2])
    files = CoaddSource(tmp_path, layout="flat").brick_files("0959p805", "g", products=("image",),
                                                            maskbits=False)
    with pytest.raises(CoaddError, match="truncated FITS file") as e:
        files.open("image", "g")
    assert str(d / src_file.name) in _one_line(e)


def test_fitsio_and_astropy_open_the_same_image(small_brick, tmp_path):
    """Local files open through fitsio without astropy's fits.open; both readers report the
    same shape, tiles, compression and WCS cards, and read the same pixels."""
    from gpu_inject.io.cutout import _wcs_cards

    files = CoaddSource(small_brick["root"], layout="flat").brick_files(small_brick["brick"], "grz")
    for spec, comp in ((("image", "g"), "RICE_1"), (("invvar", "z"), "RICE_1"),
                       (("psfsize", "r"), "GZIP_1"), (("maskbits", None), "HCOMPRESS_1")):
        path = files.path(*spec)
        with files.open(*spec) as f, AstropyImage.open(path, path) as a:
            assert isinstance(f, FitsioImage) and isinstance(a, AstropyImage)
            assert f.shape == a.shape == small_brick["shape"]
            assert f.tile_shape == a.tile_shape == (100, 100)
            assert f.compression == a.compression == comp
            assert (f.lock is coadd._HCOMPRESS_LOCK) == (comp == "HCOMPRESS_1")
            assert (a.lock is coadd._HCOMPRESS_LOCK) == (comp == "HCOMPRESS_1")
            assert _wcs_cards(f.header) == _wcs_cards(a.header)
            assert f.header["NAXIS1"] == 300 and f.header["NAXIS2"] == 260
            wf, wa = wcs_from_header(f.header), wcs_from_header(a.header)
            assert np.array_equal(wf.all_pix2world([[3.5, 250.25]], 0),
                                  wa.all_pix2world([[3.5, 250.25]], 0))
            full = f.read_all()
            assert np.array_equal(full, a.read_all())
            assert np.array_equal(f.read(95, 205, 7, 101), a.read(95, 205, 7, 101))
            assert np.array_equal(f.read(95, 205, 7, 101), full[95:205, 7:101])
    # a path cfitsio would parse as extended syntax goes through astropy, same pixels
    odd = tmp_path / "odd[1]"
    shutil.copytree(small_brick["root"], odd)
    ofiles = CoaddSource(odd, layout="flat").brick_files(small_brick["brick"], "grz")
    with ofiles.open("image", "g") as o, files.open("image", "g") as f:
        assert o.reader == "astropy" and np.array_equal(o.read(0, 50, 0, 50), f.read(0, 50, 0, 50))


def test_uncompressed_image_through_fitsio(tmp_path, small_brick):
    """A plain (not tile-compressed) image HDU: no tiles, whole image and windows read."""
    data = np.arange(260 * 300, dtype=np.float32).reshape(260, 300)
    p = tmp_path / "plain.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(data, header=small_brick["header"])]).writeto(p)
    with FitsioImage.open(str(p), str(p)) as f:
        assert f.shape == (260, 300) and f.tile_shape is None and f.compression == ""
        assert np.array_equal(f.read_all(), data)
        assert np.array_equal(f.read(3, 9, 4, 7), data[3:9, 4:7])
        assert f.header["CRPIX1"] == small_brick["header"]["CRPIX1"]
    b = p.read_bytes()
    p.write_bytes(b[: len(b) - 10000])
    with pytest.raises(CoaddError, match="truncated FITS file") as e:
        FitsioImage.open(str(p), str(p))
    assert str(p) in _one_line(e)


# ------------------------------------------------------------------ S3 through moto's server
def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def moto_endpoint():
    pytest.importorskip("moto.server")
    pytest.importorskip("s3fs")
    from moto.server import ThreadedMotoServer

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


S3_OPTS = {"key": "testing", "secret": "testing", "client_kwargs": {"region_name": "us-east-1"}}


@pytest.fixture
def s3_brick(moto_endpoint, small_brick):
    import boto3

    bucket = f"coadds-{os.getpid()}-{time.time_ns() % 10**9}"
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, aws_access_key_id="testing",
                      aws_secret_access_key="testing", region_name="us-east-1")
    s3.create_bucket(Bucket=bucket)
    brick = small_brick["brick"]
    for f in (small_brick["root"] / brick).iterdir():
        s3.upload_file(str(f), bucket, f"dr10/south/coadd/{brick[:3]}/{brick}/{f.name}")
    return dict(small_brick, bucket=bucket, url=f"s3://{bucket}/dr10/south/coadd",
                endpoint=moto_endpoint, client=s3)


@pytest.mark.parametrize("use_cache", [False, True])
def test_s3_matches_local(s3_brick, tmp_path, use_cache):
    brick = s3_brick["brick"]
    cache = tmp_path / "cache" if use_cache else None
    remote = CoaddSource(s3_brick["url"], endpoint_url=s3_brick["endpoint"], cache_dir=cache,
                         storage_options=S3_OPTS, timeout=10)
    rf = remote.brick_files(brick, "grz")
    assert rf.path("image", "g") == f"{s3_brick['url']}/150/{brick}/legacysurvey-{brick}-image-g.fits.fz"
    lf = CoaddSource(s3_brick["root"], layout="flat").brick_files(brick, "grz")
    w = wcs_from_header(s3_brick["header"])
    ra, dec = w.all_pix2world([100.0, 290.0], [100.0, 60.0], 0)
    a, b = cut_stamps(rf, ra, dec, 32), cut_stamps(lf, ra, dec, 32)
    assert a.ok.all(), a.error
    # a cached file is local: fitsio; a file held in memory: astropy
    with rf.open("image", "g") as f:
        assert f.reader == ("fitsio" if use_cache else "astropy")
    for name in ("image", "invvar", "maskbits", "psfsize", "edge", "x0", "y0"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    if use_cache:
        cached = sorted(p.name for p in cache.rglob("*") if p.is_file())
        assert len(cached) == 10 and not any(n.endswith(".part") for n in cached)
        # second read comes from the cache, even with the object gone
        s3_brick["client"].delete_object(
            Bucket=s3_brick["bucket"],
            Key=f"dr10/south/coadd/150/{brick}/legacysurvey-{brick}-image-g.fits.fz")
        c = cut_stamps(rf, ra, dec, 32)
        assert c.ok.all() and np.array_equal(c.image, a.image)


def test_s3_errors(s3_brick):
    remote = CoaddSource(s3_brick["url"], endpoint_url=s3_brick["endpoint"],
                         storage_options=S3_OPTS, timeout=10)
    with pytest.raises(CoaddError) as e:
        remote.brick_files("0001p000", "grz")
    assert f"{s3_brick['url']}/000/0001p000" in _one_line(e)
    # the user's wrong-cache-prefix bug: a root that does not exist is named at once
    bad = CoaddSource(f"s3://{s3_brick['bucket']}/dr10/coadd_cache_wrong",
                      endpoint_url=s3_brick["endpoint"], storage_options=S3_OPTS, timeout=10)
    with pytest.raises(CoaddError, match="coadd root not found") as e:
        bad.brick_files(s3_brick["brick"], "grz")
    assert "coadd_cache_wrong" in _one_line(e)
    # missing band file on S3
    brick = s3_brick["brick"]
    s3_brick["client"].delete_object(
        Bucket=s3_brick["bucket"],
        Key=f"dr10/south/coadd/150/{brick}/legacysurvey-{brick}-psfsize-g.fits.fz")
    with pytest.raises(CoaddError, match="band g psfsize file missing") as e:
        remote.brick_files(brick, "grz")
    assert f"legacysurvey-{brick}-psfsize-g.fits.fz" in _one_line(e)


def test_s3_env_endpoint_and_unreachable(monkeypatch, s3_brick):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_brick["endpoint"])
    remote = CoaddSource(s3_brick["url"], storage_options=S3_OPTS, timeout=10)
    assert remote.brick_files(s3_brick["brick"], "r").has("image", "r")
    # nothing listens here: a quick one-line error, not a hang
    dead = CoaddSource(s3_brick["url"], endpoint_url=f"http://127.0.0.1:{_free_port()}",
                       storage_options=S3_OPTS, timeout=2)
    t = time.time()
    with pytest.raises(CoaddError) as e:
        dead.brick_files(s3_brick["brick"], "r")
    _one_line(e)
    assert time.time() - t < 30


def test_s3_cache_concurrent_workers(s3_brick, tmp_path):
    """Several workers filling one cache at once: every read is whole, no temp file is left."""
    from concurrent.futures import ThreadPoolExecutor

    brick = s3_brick["brick"]
    cache = tmp_path / "shared-cache"
    w = wcs_from_header(s3_brick["header"])
    ra, dec = w.all_pix2world([120.0, 40.0], [80.0, 200.0], 0)
    ref = cut_stamps(CoaddSource(s3_brick["root"], layout="flat").brick_files(brick, "grz"),
                     ra, dec, 32)

    def work(_):
        src = CoaddSource(s3_brick["url"], endpoint_url=s3_brick["endpoint"], cache_dir=cache,
                          storage_options=S3_OPTS, timeout=10)
        return cut_stamps(src.brick_files(brick, "grz"), ra, dec, 32, raise_errors=True)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(work, range(8)))
    for st in results:
        assert st.ok.all() and np.array_equal(st.image, ref.image)
        assert np.array_equal(st.maskbits, ref.maskbits)
    names = [p.name for p in cache.rglob("*") if p.is_file()]
    assert len(names) == 10 and not any(".part" in n for n in names)
