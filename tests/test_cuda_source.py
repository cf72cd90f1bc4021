"""The physics is one source for the CPU and the GPU: the same functions that the CPU kernels
run must also compile as CUDA device functions (to PTX, no GPU needed: NVVM from the
nvidia-nvvm wheel). This guards the rules of physics/ (plain math, no numpy, no defaults)."""
import pytest

cuda = pytest.importorskip("numba.cuda")


def test_physics_compiles_as_cuda_device_functions():
    from numba import float64, int64

    from gpu_inject.kernels._jit import compile_physics
    from gpu_inject.physics.integrate import NODE_MEM

    dev = compile_physics(cuda.jit(device=True, inline=True))
    refine_pixel = dev.refine_pixel
    lensed_sample = dev.lensed_sample

    def kernel(params, out, eps_abs, eps_rel, eps_cusp, max_level):
        i = cuda.grid(1)
        mem = cuda.local.array(NODE_MEM, float64)
        if i < out.shape[0]:
            f, u, v = lensed_sample(0.25 * i, -0.5, params[i])
            out[i] = f + refine_pixel(-0.5 + i, -0.5, params[i], eps_abs, eps_rel, eps_cusp,
                                      max_level, mem, False)

    try:
        ptx, _ = cuda.compile_ptx(kernel, (float64[:, :], float64[:], float64, float64,
                                           float64, int64), cc=(9, 0))
    except Exception as exc:  # no NVVM / NVRTC library on this machine
        if "libnvvm" in str(exc) or "libnvrtc" in str(exc) or "NVVM" in type(exc).__name__:
            pytest.skip(f"CUDA compiler libraries not installed: {exc}")
        raise
    assert ".entry" in ptx and "fma.rn.f64" in ptx  # a kernel doing float64 arithmetic


def test_render_and_reduction_kernels_compile_for_sm90():
    """The kernels the GPU backend launches, compiled for real (the simulator runs them as
    Python and checks no types): render loops and the device reductions."""
    from numba import float32, float64, int32, int64

    from gpu_inject.kernels import cuda as K
    from gpu_inject.kernels import reduce_cuda as R

    f64_2, f64_3 = float64[:, :], float64[:, :, :]
    f32_2, f32_3 = float32[:, :], float32[:, :, :]
    kernels = [
        (K.corner_grid, (f64_2, f64_2, int64, f64_3, f64_3, f64_3)),
        (K.render_pixels, (f64_2, f64_2, int64, f64_3, f64_3, f64_3, float64, float64,
                           float64, float64, int64, f64_3)),
        (R._arc_snr, (f32_2, f32_2, float64[:])),
        (R._arc_snr_opt, (f32_2, f32_2, float64[:])),
        (R._mask_fractions, (int32[:, :], f32_3, float64[:], float64[:])),
    ]
    for kernel, sig in kernels:
        try:
            ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=(9, 0))
        except Exception as exc:  # no NVVM / NVRTC library on this machine
            if "libnvvm" in str(exc) or "libnvrtc" in str(exc):
                pytest.skip(f"CUDA compiler libraries not installed: {exc}")
            raise
        assert ".entry" in ptx, kernel
    assert "bar.sync" in ptx   # the block reductions synchronise their threads
