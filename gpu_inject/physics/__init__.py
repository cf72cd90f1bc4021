"""Pure scalar physics: lens deflections, Sersic light, adaptive pixel integration.

Plain Python on floats with ``math`` only; ``gpu_inject.kernels._jit`` compiles these same
functions for the CPU and as CUDA device functions.
"""
