"""Per-pixel terms of the metrics of SPEC section 5, as plain ``math`` functions: the CPU
reductions (``kernels/reduce.py``) and the CUDA ones (``kernels/reduce_cuda.py``) compile
these same functions (``kernels/_jit.compile_functions``); only the loops and the order of
the sums differ.
"""
import math

# DR10 maskbits (../shared/DATA_MODEL.md, "Maskbits"): 1 BRIGHT, 2-4 SATUR_{G,R,Z},
# 5-7 ALLMASK_{G,R,Z}, 10 BAILOUT, 11 MEDIUM make a pixel bad; 8 WISEM1, 9 WISEM2 are the
# WISE bright-star masks. Not bad: 0 NPRIMARY, 12 GALAXY, 13 CLUSTER, 14+ (DR10 i band,
# SUB_BLOB).
BAD_BITS = 0xCFE    # bits 1-7, 10, 11
WISE_BITS = 0x300   # bits 8, 9


def snr_flux(a, w):
    """arc_snr numerator term of a pixel (arc a, invvar w): a when the pixel is in A
    (invvar > 0 and a sqrt(w) > 1), else 0."""
    if w > 0.0 and a * math.sqrt(w) > 1.0:
        return a
    return 0.0


def snr_var(a, w):
    """arc_snr variance term: 1/w for a pixel in A, else 0."""
    if w > 0.0 and a * math.sqrt(w) > 1.0:
        return 1.0 / w
    return 0.0


def snr(flux, var):
    """arc_snr from its two sums: sum_A arc / sqrt(sum_A 1/invvar), 0 when A is empty."""
    if var > 0.0:
        return flux / math.sqrt(var)
    return 0.0


def opt_term(a, w):
    """arc_snr_opt term: arc^2 invvar over pixels with invvar > 0."""
    if w > 0.0:
        return a * a * w
    return 0.0


def invvar_bad(w):
    """invvar 0 (or negative or NaN: never valid data) makes a pixel bad."""
    return not w > 0.0


def mask_bad(m):
    return (m & BAD_BITS) != 0


def mask_wise(m):
    return (m & WISE_BITS) != 0
