"""engine.inject_batches: batches in, each batch's results out, in order, the same arrays as
inject_batch per batch; an exception comes out with the batch it belongs to, after the results
of the batches before it. On the CPU backend here, on the GPU backend under Numba's CUDA
simulator in a subprocess (the simulator must be on before Numba is imported), where the
queueing of batches in flight runs as on a GPU. Tiny stamps: the simulator runs Python per
CUDA thread."""
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from gpu_inject.bench import synthetic_inputs
from gpu_inject.draws import random_tasks
from gpu_inject.engine import IN_FLIGHT, get_backend, inject_batch, inject_batches
from gpu_inject.tasks import read_columns

S = 16


def _batch(n, seed, control_only=False):
    t = random_tasks(n, seed=seed)
    if control_only:
        t["lens_model"][:] = "CONTROL"
    elif n > 1:
        t["lens_model"][1] = "CONTROL"
    rng = np.random.default_rng(seed)
    cutout, invvar, maskbits = synthetic_inputs(n, S, seed)
    maskbits[:, :2] = 1 << 1
    psf = np.full((n, 3), 0.35)                 # small PSF: a small render grid
    kw = dict(pixscale=0.262, bands="grz", lens_offset=rng.uniform(-0.5, 0.5, (n, 2)))
    return (read_columns(t), psf, cutout, invvar, maskbits), kw


def _batches():
    """Batches of different sizes, two of them CONTROLs only (nothing rendered)."""
    return [_batch(3, 1), _batch(2, 2, control_only=True), _batch(1, 3), _batch(2, 4),
            _batch(1, 5, control_only=True)]


def _broken(batches, k):
    """``batches`` with batch k's maskbits of the wrong shape (inject_batch raises)."""
    out = list(batches)
    args, kw = out[k]
    out[k] = (args[:4] + (args[4][:, :-1],), kw)
    return out


def _run(backend, batches, log):
    """inject_batches over ``batches``; ``log`` gets ("in", k) as batch k is taken,
    ("queued", k) as it is queued on the device (GPU backend) and ("out", k) as its results
    come back. Returns the results, and the exception if any."""
    def feed():
        for k, b in enumerate(batches):
            log.append(("in", k))
            yield b

    if hasattr(backend, "submit"):
        submit = backend.submit

        def logged(stream, enqueue):
            flight = submit(stream, enqueue)
            log.append(("queued", sum(e[0] == "queued" for e in log)))
            return flight

        backend.submit = logged

    results = []
    try:
        for k, res in enumerate(inject_batches(backend, feed())):
            log.append(("out", k))
            results.append(res)
    except ValueError as exc:
        return results, exc
    finally:
        if hasattr(backend, "submit"):
            del backend.submit      # the class's again, for the next run on this backend
    return results, None


def _same(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].shape == b[name].shape, name
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_cpu_batches_in_order_equal_one_by_one():
    be = get_backend("cpu")
    batches = _batches()
    log = []
    results, exc = _run(be, batches, log)
    assert exc is None and len(results) == len(batches)
    for (args, kw), res in zip(batches, results):
        assert res["image"].shape[0] == args[2].shape[0]   # rows in = rows out
        _same(res, inject_batch(be, *args, **kw))
    # on the CPU each batch is computed in its turn: nothing is taken ahead
    assert log == [(d, k) for k in range(len(batches)) for d in ("in", "out")]


def test_cpu_error_comes_with_its_batch_after_the_earlier_results():
    be = get_backend("cpu")
    results, exc = _run(be, _broken(_batches(), 2), [])
    assert len(results) == 2
    assert exc is not None and "shapes differ" in str(exc)
    assert any("batch 2 " in note for note in exc.__notes__), exc.__notes__


def test_an_error_of_the_input_iterator_comes_after_the_results_before_it():
    be = get_backend("cpu")
    batches = _batches()[:2]

    def feed():
        yield from batches
        raise ValueError("the reader failed")

    got = []
    with pytest.raises(ValueError, match="the reader failed"):
        for res in inject_batches(be, feed()):
            got.append(res)
    assert len(got) == 2


CHILD = """
import pickle, sys
from gpu_inject.engine import get_backend, inject_batch
sys.path.insert(0, sys.argv[1])
from test_inject_batches import _batches, _broken, _run
be = get_backend("gpu")
batches = _batches()
one_by_one = [inject_batch(be, *args, **kw) for args, kw in batches]
log = []
results, exc = _run(be, batches, log)
assert exc is None, exc
blog = []
bresults, bexc = _run(be, _broken(batches, 2), blog)
sys.stdout.buffer.write(pickle.dumps({
    "device": be.device, "why": be.why, "one_by_one": one_by_one, "results": results, "log": log,
    "broken": bresults, "broken_log": blog, "error": str(bexc),
    "notes": getattr(bexc, "__notes__", None)}))
"""


@pytest.fixture(scope="module")
def simulated():
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    done = subprocess.run([sys.executable, "-c", CHILD, os.path.dirname(__file__)], env=env,
                          capture_output=True, timeout=900)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    return pickle.loads(done.stdout)


def test_gpu_batches_under_the_simulator_equal_one_by_one(simulated):
    out = simulated
    assert "simulator" in out["device"] and "batches queued" in out["why"]
    assert len(out["results"]) == len(out["one_by_one"]) == 5
    for res, ref in zip(out["results"], out["one_by_one"]):
        _same(res, ref)
    # and they agree with the CPU backend (to 1e-5, as the rest of the GPU backend does)
    cpu = get_backend("cpu")
    for (args, kw), res in zip(_batches(), out["results"]):
        ref = inject_batch(cpu, *args, **kw)
        for name in ref:
            np.testing.assert_allclose(res[name], ref[name], rtol=1e-5, atol=1e-7,
                                       equal_nan=True, err_msg=name)


def test_gpu_batches_are_queued_ahead_of_their_results(simulated):
    """Batch k + 1 is queued on the device before batch k's results are waited for (the
    overlap), never more than IN_FLIGHT batches are queued and not yet handed back, and
    batches are taken from the input at most IN_FLIGHT ahead of the results."""
    log = simulated["log"]
    n = len(simulated["results"])
    at = {e: i for i, e in enumerate(log)}
    for k in range(n):
        if k + 1 < n:
            assert at[("queued", k + 1)] < at[("out", k)], log
        if k + IN_FLIGHT < n:
            assert at[("queued", k + IN_FLIGHT)] > at[("out", k)], log
        if k + IN_FLIGHT + 1 < n:
            assert at[("in", k + IN_FLIGHT + 1)] > at[("out", k)], log
    assert [e for e in log if e[0] == "out"] == [("out", k) for k in range(n)]


def test_gpu_error_under_the_simulator_comes_with_its_batch(simulated):
    out = simulated
    assert len(out["broken"]) == 2      # batches 0 and 1, queued before it, came back
    for res, ref in zip(out["broken"], out["one_by_one"]):
        _same(res, ref)
    assert "shapes differ" in out["error"]
    assert any("batch 2 " in note for note in out["notes"]), out["notes"]
    assert ("in", 3) not in out["broken_log"]   # no batch after it was started


def test_bench_times_the_batches_overlapped():
    """`gpu-inject bench` also times the batches host to host through inject_batches."""
    from gpu_inject.bench import run_bench

    res = run_bench("cpu", stamps=5, stamp_size=16, repeats=1, batch_size=2)
    assert res["overlapped_seconds"] > 0
