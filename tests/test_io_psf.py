"""SPEC section 3: PSF FWHM per band with provenance, every path, vectorised."""
import numpy as np

from gpu_inject.io import resolve_psf_fwhm
from gpu_inject.io.psf import NO_VALID_R

NAN = np.nan


def test_every_provenance_path_vectorised():
    # rows: 0 all maps valid; 1 g map 0 -> manifest; 2 g map and manifest invalid -> r;
    #       3 r map NaN -> r manifest, z -> r fallback (manifest 0, map negative);
    #       4 r invalid everywhere -> error; 5 map inf, manifest None -> r fallback
    maps = {"g": np.array([1.5, 0.0, 0.0, 1.4, 1.3, np.inf]),
            "r": np.array([1.3, 1.2, 1.1, NAN, 0.0, 1.0]),
            "z": np.array([1.2, 1.25, 1.0, -1.0, 1.2, 0.9])}
    manifest = {"g": [1.6, 1.55, 0.0, 1.45, 1.5, None],
                "r": [1.35, 1.25, 1.15, 1.21, NAN, 1.05],
                "z": [1.3, 1.3, 1.1, 0.0, 1.1, 0.95]}
    res = resolve_psf_fwhm("grz", manifest, maps)
    assert res.fwhm.shape == (6, 3) and res.fwhm.dtype == np.float64
    assert res.source.dtype == np.int8
    assert res.source.tolist() == [[0, 0, 0], [1, 0, 0], [2, 0, 0], [0, 1, 2],
                                   [0, -1, 0], [2, 0, 0]]
    exp = np.array([[1.5, 1.3, 1.2], [1.55, 1.2, 1.25], [1.1, 1.1, 1.0], [1.4, 1.21, 1.21],
                    [1.3, NAN, 1.2], [1.0, 1.0, 0.9]])
    assert np.array_equal(res.fwhm, exp, equal_nan=True)
    assert res.ok.tolist() == [True, True, True, True, False, True]
    assert res.error == [None, None, None, None, NO_VALID_R, None]
    assert NO_VALID_R == "no valid PSF for r"
    fw, src = res.column("z")
    assert fw[3] == 1.21 and src[3] == 2
    # no band is ever 0 on a good row (the user's g-band PSF 0 bug)
    assert np.all(res.fwhm[res.ok] > 0)


def test_maps_disabled_uses_manifest_then_r():
    maps = np.array([[1.5, 1.3, 1.2]])
    manifest = np.array([[0.0, 1.4, 1.25]])
    res = resolve_psf_fwhm("grz", manifest, maps, use_psfsize_maps=False)
    assert res.source.tolist() == [[2, 1, 1]]
    assert res.fwhm.tolist() == [[1.4, 1.4, 1.25]]
    res = resolve_psf_fwhm("grz", manifest, None)
    assert res.source.tolist() == [[2, 1, 1]]


def test_r_not_requested_still_resolves_fallback():
    maps = {"g": [0.0, 0.0], "r": [1.2, 0.0], "z": [1.1, 1.0]}
    manifest = {"g": [0.0, 0.0], "r": [1.3, 0.0], "z": [1.0, 1.0]}
    res = resolve_psf_fwhm("gz", manifest, maps)
    assert res.source.tolist() == [[2, 0], [-1, 0]]
    assert res.fwhm[0].tolist() == [1.2, 1.1]
    assert res.error == [None, NO_VALID_R]


def test_large_vectorised():
    rng = np.random.default_rng(3)
    n = 100_000
    maps = rng.uniform(0.8, 2.0, (n, 3))
    maps[rng.random((n, 3)) < 0.3] = 0.0
    manifest = rng.uniform(0.8, 2.0, (n, 3))
    manifest[rng.random((n, 3)) < 0.3] = np.nan
    res = resolve_psf_fwhm("grz", manifest, maps)
    r_ok = (maps[:, 1] > 0) | np.isfinite(manifest[:, 1])
    assert np.array_equal(res.ok, r_ok)
    good = res.ok
    assert np.all(res.fwhm[good] > 0) and np.all(res.source[good] >= 0)
    m0 = good & (maps[:, 0] > 0)
    assert np.all(res.source[m0, 0] == 0) and np.array_equal(res.fwhm[m0, 0], maps[m0, 0])
    fb = good & (maps[:, 0] == 0) & ~np.isfinite(manifest[:, 0])
    assert np.all(res.source[fb, 0] == 2) and np.array_equal(res.fwhm[fb, 0], res.r_fwhm[fb])
