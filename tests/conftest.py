"""Shared test helpers: small DR10-style fpack bricks written with astropy."""
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

LEGACYSURVEY_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "legacysurvey"


def tan_header(shape, crpix, crval, scale_arcsec=0.262):
    h = fits.Header()
    h["CTYPE1"], h["CTYPE2"] = "RA---TAN", "DEC--TAN"
    h["CRVAL1"], h["CRVAL2"] = crval
    h["CRPIX1"], h["CRPIX2"] = crpix
    h["CD1_1"], h["CD1_2"] = -scale_arcsec / 3600.0, 0.0
    h["CD2_1"], h["CD2_2"] = 0.0, scale_arcsec / 3600.0
    h["EQUINOX"] = 2000.0
    return h


def write_brick(brick_dir, brick, header, planes):
    """planes: {(product, band_or_None): 2-D array}; writes legacysurvey-* .fits.fz files."""
    brick_dir = Path(brick_dir)
    brick_dir.mkdir(parents=True, exist_ok=True)
    for (product, band), data in planes.items():
        name = f"legacysurvey-{brick}-{product}" + (f"-{band}" if band else "") + ".fits.fz"
        if product == "maskbits":
            kw = dict(compression_type="HCOMPRESS_1", quantize_level=0.0)
        elif product == "psfsize":
            kw = dict(compression_type="GZIP_1", quantize_level=0.0)
        elif product == "invvar":
            kw = dict(compression_type="RICE_1", quantize_method=-1, quantize_level=-1e-3)
        else:
            kw = dict(compression_type="RICE_1", quantize_method=2, quantize_level=-1e-4)
        hdu = fits.CompImageHDU(np.ascontiguousarray(data), header=header.copy(),
                                tile_shape=(100, 100), **kw)
        fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(brick_dir / name, overwrite=True)
    return brick_dir


@pytest.fixture
def small_brick(tmp_path):
    """A 260 x 300 (rows x cols) brick, CRPIX (137.3, 151.8), bands g r z, flat layout."""
    brick = "1500p022"
    shape = (260, 300)
    header = tan_header(shape, crpix=(137.3, 151.8), crval=(150.0, 2.25))
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    planes = {}
    for k, b in enumerate("grz"):
        planes[("image", b)] = rng.normal(0, 0.01, shape).astype(np.float32)
        planes[("invvar", b)] = np.full(shape, 100.0 + k, np.float32)
        planes[("psfsize", b)] = (1.0 + 0.001 * xx + 0.0001 * yy + 0.1 * k).astype(np.float32)
    mask = np.zeros(shape, np.int32)
    mask[10:20, 30:40] = (1 << 16) | (1 << 1)
    mask[200:210, 250:260] = 1 << 12
    planes[("maskbits", None)] = mask
    root = tmp_path / "flat"
    write_brick(root / brick, brick, header, planes)
    return dict(root=root, brick=brick, header=header, planes=planes, shape=shape)


@pytest.fixture(scope="session")
def moto_s3():
    """A real S3 API: moto's server on a free loopback port. Yields the endpoint, fsspec
    storage options and a boto3 client."""
    import socket

    pytest.importorskip("moto.server")
    import boto3
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        yield {
            "endpoint": endpoint,
            "opts": {"key": "testing", "secret": "testing", "endpoint_url": endpoint,
                     "client_kwargs": {"region_name": "us-east-1"}},
            "client": boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                                   aws_secret_access_key="testing", region_name="us-east-1"),
        }
    finally:
        server.stop()


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` need a real CUDA device with Numba CUDA and CuPy: skipped, with
    the reason, everywhere else (CI has none; scripts/gpu_check.sh runs them)."""
    marked = [item for item in items if "gpu" in item.keywords]
    if not marked:
        return
    from gpu_inject.engine import BackendUnavailable, get_backend

    try:
        be = get_backend("gpu")
        reason = "the CUDA simulator is not a GPU" if be.simulator else None
    except BackendUnavailable as exc:
        reason = str(exc)
    if reason:
        for item in marked:
            item.add_marker(pytest.mark.skip(reason=reason))
