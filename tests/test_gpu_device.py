"""On a real GPU (marked ``gpu``: skipped elsewhere, run by scripts/gpu_check.sh): the GPU
backend agrees with the CPU backend to 1e-5 relative on every stamp and output (SPEC 6),
repeated GPU runs are identical, and batches overlapping on streams (engine.inject_batches)
give the same bits as one batch at a time."""
import numpy as np
import pytest

import gpu_inject
from gpu_inject.bench import synthetic_inputs
from gpu_inject.draws import random_tasks
from gpu_inject.engine import IN_FLIGHT, get_backend, inject_batch, inject_batches
from gpu_inject.tasks import read_columns

pytestmark = pytest.mark.gpu
N, S = 256, 64


def _batch(seed=5):
    t = random_tasks(N, seed=seed)
    t["lens_model"][::7] = "CONTROL"
    cols = read_columns(t)
    psf = np.stack([t[f"psfsize_{b}"] for b in "grz"], axis=1)
    cutout, invvar, maskbits = synthetic_inputs(N, S, seed)
    maskbits[::5, 10:20, 10:20] = 1 << 1
    offset = np.random.default_rng(seed).uniform(-0.5, 0.5, (N, 2))
    return (cols, psf, cutout, invvar, maskbits), dict(pixscale=0.262, bands="grz",
                                                      lens_offset=offset)


def test_gpu_agrees_with_cpu_on_every_stamp_and_output():
    args, kw = _batch()
    cpu = inject_batch(get_backend("cpu"), *args, **kw)
    gpu = inject_batch(get_backend("gpu"), *args, **kw)
    cutout = args[2].astype(np.float64)
    arc_cpu, arc_gpu = cpu["image"] - cutout, gpu["image"] - cutout
    for k in range(N):
        scale = max(np.abs(arc_cpu[k]).max(), np.abs(cutout[k]).max() * 1e-2)
        assert np.abs(arc_gpu[k] - arc_cpu[k]).max() <= 1e-5 * scale + 2e-7 * np.abs(
            cutout[k]).max(), k   # plus one float32 rounding of cutout + arc
    for name in ("magnification", "total_injected_flux", "arc_snr", "arc_snr_opt",
                 "bad_pixel_frac", "wise_brightmask_frac"):
        np.testing.assert_allclose(gpu[name], cpu[name], rtol=1e-5, atol=1e-12,
                                   equal_nan=True, err_msg=name)


def test_repeated_gpu_runs_are_identical():
    args, kw = _batch(seed=9)
    be = get_backend("gpu")
    a = inject_batch(be, *args, **kw)
    b = inject_batch(be, *args, **kw)
    for name in a:
        assert np.array_equal(a[name], b[name], equal_nan=True), name


def test_render_arcs_on_the_gpu():
    t = random_tasks(32, seed=2)
    psf = np.stack([t[f"psfsize_{b}"] for b in "grz"], axis=1)
    g = gpu_inject.render_arcs(t, stamp_size=S, psf_fwhm=psf, backend="gpu")
    c = gpu_inject.render_arcs(t, stamp_size=S, psf_fwhm=psf, backend="cpu")
    assert isinstance(g.images, np.ndarray) and g.images.dtype == np.float32
    np.testing.assert_allclose(g.total_flux, c.total_flux, rtol=1e-5)
    np.testing.assert_allclose(g.magnification, c.magnification, rtol=1e-5)


def test_batches_in_flight_give_the_bits_of_one_batch_at_a_time():
    """Several batches of different sizes (one of CONTROLs only) through inject_batches,
    queued IN_FLIGHT at a time on their own streams, equal inject_batch on each in turn."""
    be = get_backend("gpu")
    assert f"up to {IN_FLIGHT} batches in flight" in be.why
    args, kw = _batch(seed=13)
    cols, psf, cutout, invvar, maskbits = args
    cols = dict(cols)
    cols["lens_model"] = cols["lens_model"].copy()
    cols["lens_model"][200:232] = "CONTROL"
    edges = [0, 100, 101, 200, 232, N]
    batches = []
    for a, b in zip(edges[:-1], edges[1:]):
        sub = {k: v[a:b] for k, v in cols.items()}
        batches.append(((sub, psf[a:b], cutout[a:b], invvar[a:b], maskbits[a:b]),
                        dict(kw, lens_offset=kw["lens_offset"][a:b])))
    one_by_one = [inject_batch(be, *a, **k) for a, k in batches]
    for _ in range(2):   # the second time with the memory pools warm
        got = list(inject_batches(be, iter(batches)))
        assert len(got) == len(batches)
        for res, ref in zip(got, one_by_one):
            assert res.keys() == ref.keys()
            for name in ref:
                assert isinstance(res[name], np.ndarray), name
                assert np.array_equal(res[name], ref[name], equal_nan=True), name


def test_an_error_in_a_batch_on_the_gpu_comes_after_the_earlier_results():
    be = get_backend("gpu")
    args, kw = _batch(seed=17)
    good = (args, kw)
    bad = (args[:4] + (args[4][:, :-1],), kw)      # maskbits of the wrong shape
    got = []
    with pytest.raises(ValueError, match="shapes differ") as info:
        for res in inject_batches(be, [good, good, bad, good]):
            got.append(res)
    assert len(got) == 2
    assert any("batch 2 " in note for note in info.value.__notes__)
    # the backend is usable afterwards, and gives the same bits
    ref = inject_batch(be, *args, **kw)
    for name in ref:
        assert np.array_equal(got[0][name], ref[name], equal_nan=True), name
