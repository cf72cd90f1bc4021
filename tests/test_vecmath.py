"""The vector math of the CPU loops (kernels/vecmath.py) and the batched lensed samples built
on it (physics.integrate.sample_points in the CPU build), against numpy's libm and the
scalar physics.

Whichever path this machine takes (libmvec on x86_64 glibc with AVX2/AVX-512, else the
scalar loops), the tests hold; the subprocess test runs the other one (GPU_INJECT_VECMATH=0)
so that both are checked on a machine that has libmvec."""
import os
import subprocess
import sys

import numba
import numpy as np
import pytest

from gpu_inject import tasks as T
from gpu_inject.draws import random_tasks
from gpu_inject.kernels import cpu, vecmath
from gpu_inject.physics import integrate

# glibc's manual gives libmvec's exp, log and atan as within 4 ulp of exact on x86_64
# ("Known Maximum Errors in Math Functions"); numpy's reference is within 1: 8 ulp in all.
ULP = 8 * np.finfo(np.float64).eps


@numba.njit
def _apply(which, a, n):
    if which == 0:
        vecmath.vexp(a, n)
    elif which == 1:
        vecmath.vlog(a, n)
    else:
        vecmath.vatan(a, n)


@pytest.mark.parametrize("which,ref,lo,hi", [(0, np.exp, -700.0, 700.0),
                                             (1, np.log, 1e-300, 1e300),
                                             (2, np.arctan, -1e3, 1e3)])
def test_vector_functions_match_libm(which, ref, lo, hi):
    """Within 8 ulp of numpy on values spread over the range the physics uses (log-uniform
    for log), for a count that is not a multiple of the width: the padded tail is computed
    too, and nothing past vecmath.padded(n) is touched."""
    rng = np.random.default_rng(which)
    n = 1003
    x = np.exp(rng.uniform(np.log(lo), np.log(hi), n)) if which == 1 else rng.uniform(lo, hi, n)
    m = vecmath.padded(n)
    assert m % vecmath.WIDTH == 0 and n <= m < n + vecmath.WIDTH
    a = np.full(m + 5, 0.5)
    a[:n] = x
    _apply(which, a, m)
    want = ref(x)
    np.testing.assert_allclose(a[:n], want, rtol=ULP, atol=0)
    assert np.all(a[m:] == 0.5)


def test_special_values_the_sersic_relies_on():
    """At R = 0 the batched Sersic takes log(0) = -inf and exp(-inf) = 0 (no special case)."""
    a = np.zeros(vecmath.padded(1))
    _apply(1, a, a.size)
    assert np.all(a == -np.inf)
    _apply(0, a, a.size)
    assert np.all(a == 0.0)


@numba.njit
def _batched(xs, ys, p):
    n = xs.size
    m = vecmath.padded(n)
    out = np.empty((5, m))
    f = np.empty(m)
    u = np.empty(m)
    v = np.empty(m)
    xp = np.zeros(m)
    yp = np.zeros(m)
    xp[:n] = xs
    yp[:n] = ys
    cpu.sample_points(xp, yp, n, p, f, u, v, out[0], out[1])
    return f[:n], u[:n], v[:n]


def _points(p, rng, n):
    """Random points over a 96 x 96 grid, plus the lens centre and the images of the
    source centre's neighbourhood (where R^2 is 0 or tiny)."""
    xs = list(rng.uniform(-48, 48, n))
    ys = list(rng.uniform(-48, 48, n))
    xs += [0.0, 1e-9]
    ys += [0.0, 0.0]
    return np.array(xs), np.array(ys)


def test_batched_samples_equal_the_scalar_physics():
    """cpu.sample_points against the plain-Python integrate.lensed_sample on random draws
    (SIE and SIS, i.e. the closed form and the series, shear, the R2CUT cut, the lens centre
    where the deflection is 0): relative 1e-12 on f (libmvec's few ulp through a chain of
    exp(b_n w) with b_n w up to ~20) and absolute 1e-12 px on u, v."""
    draws = random_tasks(64, seed=5)
    params, _ = T.pack_params(T.read_columns(draws), 0.262)
    rng = np.random.default_rng(1)
    models = set()
    for k, p in enumerate(params):
        xs, ys = _points(p, rng, 37)
        f, u, v = _batched(xs, ys, p)
        ref = np.array([integrate.lensed_sample(x, y, p) for x, y in zip(xs, ys)])
        np.testing.assert_allclose(f, ref[:, 0], rtol=1e-12, atol=1e-300, err_msg=f"draw {k}")
        np.testing.assert_allclose(u, ref[:, 1], rtol=0, atol=1e-12, err_msg=f"draw {k}")
        np.testing.assert_allclose(v, ref[:, 2], rtol=0, atol=1e-12, err_msg=f"draw {k}")
        models.add(draws["lens_model"][k])
    assert models == {"SIS", "SIE"}


def test_batched_sample_at_the_source_centre():
    """A sample whose image is the source centre exactly (R = 0): I(0) = I_e exp(b_n)."""
    p = T.pack_params(T.read_columns(random_tasks(1, seed=2)), 0.262)[0][0].copy()
    x, y = 3.0, -2.0
    _, u, v = integrate.lensed_sample(x, y, p)
    p[6] += u   # P_SRC_X, P_SRC_Y: move the source onto this sample's image
    p[7] += v
    f, _, _ = _batched(np.array([x]), np.array([y]), p)
    assert f[0] == pytest.approx(p[15], rel=1e-13)   # P_SRC_I0


CHILD = """
import numpy as np, sys
from gpu_inject.kernels import vecmath
from gpu_inject import render_arcs
from gpu_inject.draws import random_tasks
print(vecmath.WIDTH, vecmath.MODE, file=sys.stderr)
assert vecmath.WIDTH == 1 and "GPU_INJECT_VECMATH=0" in vecmath.MODE
r = render_arcs(random_tasks(6, seed=9), stamp_size=64, psf_fwhm=np.full((6, 3), 1.2),
                backend="cpu")
np.save(sys.argv[1], r.images)
"""


def test_scalar_fallback_renders_the_same_images(tmp_path):
    """GPU_INJECT_VECMATH=0 takes the scalar loops (and its own Numba cache) and renders
    what this process renders to 1e-9 of the peak: the paths differ by a few ulp per sample,
    which can at most flip a gate between two rules that both meet the tolerances."""
    import gpu_inject

    env = {**os.environ, "GPU_INJECT_VECMATH": "0"}
    out = tmp_path / "scalar.npy"
    done = subprocess.run([sys.executable, "-c", CHILD, str(out)], env=env,
                          capture_output=True, timeout=900)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    here = gpu_inject.render_arcs(random_tasks(6, seed=9), stamp_size=64,
                                  psf_fwhm=np.full((6, 3), 1.2), backend="cpu").images
    other = np.load(out)
    np.testing.assert_allclose(other, here, rtol=0, atol=1e-9 * np.abs(here).max())
