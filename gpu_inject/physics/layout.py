"""Columns of the packed per-stamp parameter row ``p`` (float64) that the kernels read.

Lengths are in pixels, positions relative to the lens centre, angles as cos/sin pairs;
``tasks.pack_params`` fills it from manifest columns (arcsec, degrees, e).
"""
P_LENS_B = 0       # theta_E sqrt(q): the SIE's b (0 for no lens)
P_LENS_F = 1       # sqrt(1 - q^2) (0 for an SIS)
P_LENS_COS = 2     # cos, sin of the SIE major-axis angle
P_LENS_SIN = 3
P_G1 = 4           # external shear components
P_G2 = 5
P_SRC_X = 6        # source centre in the source plane
P_SRC_Y = 7
P_SRC_Q = 8        # source axis ratio
P_SRC_COS = 9      # cos, sin of the source angle
P_SRC_SIN = 10
P_SRC_REFF = 11    # circularised half-light radius
P_SRC_INV_N = 12   # 1 / Sersic n
P_SRC_BN = 13      # b_n
P_SRC_IE = 14      # I_e for unit total flux
P_SRC_I0 = 15      # I(0) = I_e exp(b_n), the profile's maximum
P_SRC_R2CUT = 16   # R^2 beyond which the profile is below FAINT and taken as 0
NPARAM = 17

# Surface brightness (unit source flux per pixel^2) below which the profile is taken as 0:
# over a 200 x 200 render grid that drops at most 4e-6 of the source flux.
FAINT = 1e-10
