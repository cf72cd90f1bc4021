"""exp, log and atan over short float64 arrays, in place, on SIMD lanes where glibc can.

Numba compiles ``math.exp`` and friends to one libm call per value, and its LLVM cannot
map them to a vector library (``-vector-library`` has no effect in llvmlite 0.50: checked,
the loop vectoriser still emits llvm.exp.v8f64, scalarised again). glibc's libmvec has
the vector versions (x86_64 vector function ABI: ``_ZGVeN8v_exp`` takes and returns 8
doubles in a zmm register, ``_ZGVdN4v_exp`` 4 in a ymm). ``vexp(a, n)`` etc. call them on
a[0:n] in groups of WIDTH, from LLVM IR (a Numba intrinsic). libmvec's results are within
4 ulp of the exact values (glibc's manual, "Errors in Math Functions"), where libm's
scalar exp/log/atan are within 1.

Where there is no libmvec (not glibc, not x86_64, glibc < 2.35 has no vector atan, a CPU
without AVX2) or ``GPU_INJECT_VECMATH=0`` is set, the same names are plain loops of
``math`` calls and WIDTH is 1. ``MODE`` says which, for ``gpu-inject info`` and the cache
key (a kernel compiled with one is not reused with the other).

Callers pass arrays whose length is a multiple of WIDTH and n rounded up to it (``padded``):
the lanes past their values compute on whatever is there, which is harmless (no traps)."""
import ctypes.util
import math
import os
import platform

import numba
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

FUNCTIONS = ("exp", "log", "atan")


def _libmvec():
    """(width, isa letter) of the usable libmvec variant, or None, and why."""
    if os.environ.get("GPU_INJECT_VECMATH", "1") == "0":
        return None, "scalar libm (GPU_INJECT_VECMATH=0)"
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return None, f"scalar libm (no libmvec on {platform.system()} {platform.machine()})"
    import llvmlite.binding as llvm

    name = ctypes.util.find_library("mvec")
    if not name:
        return None, "scalar libm (glibc's libmvec not found)"
    try:
        llvm.load_library_permanently(name)
    except RuntimeError as exc:
        return None, f"scalar libm (cannot load {name}: {exc})"
    features = llvm.get_host_cpu_features()
    for width, isa, need in ((8, "e", "avx512f"), (4, "d", "avx2")):
        if features.get(need) and all(llvm.address_of_symbol(f"_ZGV{isa}N{width}v_{f}")
                                      for f in FUNCTIONS):
            return (width, isa), f"libmvec, {width} doubles per call ({need})"
    return None, "scalar libm (libmvec lacks exp/log/atan for this CPU's vector width)"


_VARIANT, MODE = _libmvec()
WIDTH = _VARIANT[0] if _VARIANT else 1


@numba.njit(inline="always")
def padded(n):
    """n rounded up to a multiple of WIDTH."""
    return (n + WIDTH - 1) // WIDTH * WIDTH


def _vector_call(fname):
    width, isa = _VARIANT
    symbol = f"_ZGV{isa}N{width}v_{fname}"

    @intrinsic
    def apply(typingctx, arr, n):
        def codegen(context, builder, sig, args):
            data = context.make_array(sig.args[0])(context, builder, args[0]).data
            vty = ir.VectorType(ir.DoubleType(), width)
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty]),
                                                symbol)
            zero = context.get_constant(types.intp, 0)
            step = context.get_constant(types.intp, width)
            with cgutils.for_range_slice(builder, zero, args[1], step) as (i, _):
                ptr = builder.bitcast(builder.gep(data, [i]), vty.as_pointer())
                builder.store(builder.call(fn, [builder.load(ptr, align=8)]), ptr, align=8)
            return context.get_dummy_value()

        return types.void(arr, n), codegen

    @numba.njit(inline="always")
    def vfun(a, n):
        apply(a, n)

    return vfun


def _scalar_loop(fn):
    @numba.njit(inline="always")
    def vfun(a, n):
        for k in range(n):
            a[k] = fn(a[k])

    return vfun


if _VARIANT:
    vexp, vlog, vatan = (_vector_call(f) for f in FUNCTIONS)
else:
    vexp, vlog, vatan = (_scalar_loop(getattr(math, f)) for f in FUNCTIONS)
