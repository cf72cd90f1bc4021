"""Compile the physics once per target from the same Python source.

Each function of ``gpu_inject.physics`` is rebuilt from its own code object with a namespace
in which its callees are the compiled versions for the target, then compiled with the target's
decorator. The plain functions stay importable as the pure-Python reference.
"""
import hashlib
import math
import os
import types
from pathlib import Path

from ..physics import integrate, layout, lens, metrics, sersic

# In call order: a function's callees come before it.
PHYSICS = (
    lens.atan_over_f_from, lens.atanh_over_f_from,
    lens.sie_rotated, lens.sie_arguments, lens.sie_transcendentals, lens.sie_deflection_from,
    lens.sie_deflection_bf, lens.sie_deflection, lens.shear_deflection, lens.ray_shoot_from,
    lens.ray_shoot_bf, lens.ray_shoot,
    sersic.sersic_bn, sersic.elliptical_radius2, sersic.elliptical_radius,
    sersic.sersic_log_argument, sersic.sersic_power_exponent, sersic.sersic_exponent,
    sersic.sersic_profile_r2, sersic.sersic_profile,
    integrate.source_offset, integrate.lensed_sample, integrate.lanes, integrate.exp_all,
    integrate.log_all, integrate.atan_all, integrate.sample_points, integrate.lens_distance2,
    integrate.region_centre, integrate.region_is_dark_from, integrate.region_is_dark,
    integrate.source_distance2, integrate.must_split, integrate.s5,
    integrate.gate, integrate.level_base_kept, integrate.level_base, integrate.node_mem_size,
    integrate.mem_put, integrate.mem_get,
    integrate.node_points,
    integrate.node_samples_batched, integrate.node_samples, integrate.node,
    integrate.refine_pixel, integrate.cubic_rule, integrate.cubic_row, integrate.half_rule,
    integrate.half_row, integrate.stencil_value, integrate.stencil_gate, integrate.block_gate,
    integrate.block_pixel, integrate.pixel_from_centre, integrate.pixel_value,
)
METRICS = (
    metrics.snr_flux, metrics.snr_var, metrics.snr, metrics.opt_term, metrics.invvar_bad,
    metrics.mask_bad, metrics.mask_wise,
)


def _constants():
    ns = {"math": math}
    for mod in (layout, lens, sersic, integrate, metrics):
        ns.update({k: v for k, v in vars(mod).items()
                   if k.isupper() and isinstance(v, (int, float))})
    return ns


# Compiled to be inlined where the target's calls cost (the CPU): LLVM's inliner leaves these
# calls in (big callees, or many array arguments, each passed as 7 values), and a call per
# pixel, block or node cost about a third of the render (bit for bit the same either way;
# the A/B is in commit cd2646c's message). The price is a longer first compile.
INLINED = ("pixel_from_centre", "pixel_value", "stencil_gate", "block_gate", "block_pixel",
           "node", "node_samples_batched", "sample_points", "must_split", "region_is_dark_from",
           "source_distance2", "gate", "stencil_value", "refine_pixel", "lensed_sample")


def compile_physics(decorate, decorate_inlined=None, replace=None):
    """A namespace name -> compiled function, for ``decorate`` (e.g. numba.njit(...));
    the functions of INLINED with ``decorate_inlined`` when given. ``replace``: name ->
    what stands for that function in this build, a compiled function or the name of an
    earlier one of PHYSICS (the CPU's vector math, node_samples_batched)."""
    return compile_functions(decorate, PHYSICS, {k: decorate_inlined for k in INLINED
                                                 if decorate_inlined is not None}, replace)


def compile_metrics(decorate):
    """The per-pixel metric terms of ``physics.metrics``, compiled with ``decorate``."""
    return compile_functions(decorate, METRICS)


def compile_functions(decorate, functions, decorate_by_name=None, replace=None):
    """Each of ``functions`` (callees first) rebuilt from its code object in a namespace of
    compiled callees and constants, and compiled with ``decorate`` (or the decorator
    ``decorate_by_name`` gives its name); or, when ``replace`` names it, what it gives."""
    ns = _constants()
    for fn in functions:
        other = (replace or {}).get(fn.__name__)
        if other is not None:
            ns[fn.__name__] = ns[other] if isinstance(other, str) else other
            continue
        clone = types.FunctionType(fn.__code__, ns, fn.__name__)
        clone.__qualname__ = fn.__qualname__
        clone.__module__ = fn.__module__
        clone.__doc__ = fn.__doc__
        ns[fn.__name__] = (decorate_by_name or {}).get(fn.__name__, decorate)(clone)
    return types.SimpleNamespace(**{fn.__name__: ns[fn.__name__] for fn in functions})


def source_hash(root=None):
    """Hash of the package's Python sources (or those under ``root``): numba's cache only
    watches the file of the kernel it caches, not the physics it inlines, so the cache
    directory is keyed by this."""
    h = hashlib.sha256()
    root = Path(root) if root else Path(__file__).resolve().parents[1]
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def configure_numba_cache():
    """Point numba's on-disk cache at a directory keyed by the source hash and the vector
    math in use, under NUMBA_CACHE_DIR when the user set it, else XDG_CACHE_HOME (~/.cache),
    else the temporary directory. Numba itself only checks the file of the kernel it caches,
    not the physics inlined into it, and a kernel compiled to call libmvec must not be
    loaded where that is off (vecmath)."""
    import tempfile

    import numba

    from . import vecmath

    name = f"gpu_inject/numba-{source_hash()}-w{vecmath.WIDTH}"
    base = Path(os.environ.get("NUMBA_CACHE_DIR") or os.environ.get("XDG_CACHE_HOME")
                or Path.home() / ".cache")
    for root in (base, Path(tempfile.gettempdir())):  # e.g. a read-only HOME on an executor
        path = root / name
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(path, os.W_OK):
            numba.config.CACHE_DIR = str(path)
            return str(path)
    return numba.config.CACHE_DIR
