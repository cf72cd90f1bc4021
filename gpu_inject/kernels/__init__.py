"""Compiled kernels: CPU (numba njit) loops, PSF convolution, metric reductions."""
