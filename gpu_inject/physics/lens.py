"""Lens deflections: singular isothermal ellipsoid and external shear (SPEC section 2).

Plain functions of floats using only ``math``: no defaults, no keyword calls, no numpy, so
that ``kernels/_jit.py`` can compile the very same code objects for the CPU (``numba.njit``)
and as CUDA device functions. Every length is in one unit (the engine uses pixels); the
formulas are homogeneous, so the unit does not matter.
"""
import math

# Below this |1 - q^2|^(1/2) the closed forms lose digits to cancellation (f in the
# denominator); the series in f is then used instead. With f < 1e-3 the next omitted term is
# f^6 t^6 / 7 < 1e-18 t^6, and |t| <= 1/q stays O(1) in that regime.
SIE_SERIES_F = 1e-3


def atan_over_f_from(t, f, atan_ft):
    """arctan(f t) / f given atan_ft = arctan(f t), continuous through f -> 0 (limit t):
    below SIE_SERIES_F the series, which ignores atan_ft."""
    if f < SIE_SERIES_F:
        ft2 = (f * t) * (f * t)
        return t * (1.0 - ft2 / 3.0 + ft2 * ft2 / 5.0)
    return atan_ft / f


def atanh_over_f_from(t, f, log_ratio):
    """arctanh(f t) / f given log_ratio = log((1 + f t) / (1 - f t)), continuous through
    f -> 0 (limit t): below SIE_SERIES_F the series, which ignores log_ratio. Needs |f t| < 1.
    0.5 log((1 + z) / (1 - z)) is arctanh(z) to an absolute 1e-16 (for f >= SIE_SERIES_F at
    most 1e-13 of t after the division by f) and costs a log instead of libm's atanh, a
    quarter of the time: this is the costliest call of a lensed sample."""
    if f < SIE_SERIES_F:
        ft2 = (f * t) * (f * t)
        return t * (1.0 + ft2 / 3.0 + ft2 * ft2 / 5.0)
    return 0.5 * log_ratio / f


def sie_deflection(x, y, theta_e, q, cos_phi, sin_phi):
    """Deflection of an SIE centred on the origin, major axis at angle phi from +x.

    Kormann, Schneider & Bartelmann (1994, A&A 284, 285), eqs. (26a,b) with core 0, in the
    "product average" normalisation of lenstronomy's SIE: kappa = theta_E / (2 sqrt(q x'^2 +
    y'^2/q)), which is Keeton's (2001, astro-ph/0102341, eq. 35) form with b = theta_E sqrt(q).
    In the frame rotated to the major axis, psi = sqrt(q^2 x'^2 + y'^2), f = sqrt(1 - q^2):
        alpha_x' = theta_E sqrt(q) / f * arctan(f x' / psi)
        alpha_y' = theta_E sqrt(q) / f * arctanh(f y' / psi)
    q = 1 gives the SIS alpha = theta_E (x, y) / r. At the centre itself the deflection is
    undefined (a direction with no limit); 0 is returned there.
    """
    return sie_deflection_bf(x, y, theta_e * math.sqrt(q), math.sqrt(max(1.0 - q * q, 0.0)),
                             cos_phi, sin_phi)


def sie_rotated(x, y, f, cos_phi, sin_phi):
    """(x', y', psi): the point in the frame of the major axis, psi = sqrt(q^2 x'^2 + y'^2)."""
    xp = cos_phi * x + sin_phi * y
    yp = -sin_phi * x + cos_phi * y
    return xp, yp, math.sqrt((1.0 - f * f) * xp * xp + yp * yp)


# The SIE split at its two transcendental calls, so that a CPU loop can make each call on a
# vector of points (kernels/vecmath.py): sie_rotated, then sie_arguments, then arctan of the
# first and log of the second, then sie_deflection_from. A scalar caller computes the
# rotated point once and passes it on (recomputed after an opaque libm call, it costs 10 %).
def sie_arguments(xp, yp, psi, f):
    """The arguments of the two calls: arctan(f x'/psi) and log((1 + z) / (1 - z)) with
    z = f y'/psi give atan_ft and log_ratio; (0, 1) at the centre."""
    if psi == 0.0:
        return 0.0, 1.0
    z = f * (yp / psi)
    return f * (xp / psi), (1.0 + z) / (1.0 - z)


def sie_transcendentals(xp, yp, psi, f):
    """(arctan, log) of sie_arguments; (0, 0), no call, where the series is used."""
    if f < SIE_SERIES_F:
        return 0.0, 0.0
    a, r = sie_arguments(xp, yp, psi, f)
    return math.atan(a), math.log(r)


def sie_deflection_from(xp, yp, psi, b, f, cos_phi, sin_phi, atan_ft, log_ratio):
    """sie_deflection with b = theta_E sqrt(q) and f = sqrt(1 - q^2) precomputed (the
    engine's per-stamp constants), from the rotated point and its transcendentals."""
    if psi == 0.0:
        return 0.0, 0.0
    axp = b * atan_over_f_from(xp / psi, f, atan_ft)
    ayp = b * atanh_over_f_from(yp / psi, f, log_ratio)
    return cos_phi * axp - sin_phi * ayp, sin_phi * axp + cos_phi * ayp


def sie_deflection_bf(x, y, b, f, cos_phi, sin_phi):
    """sie_deflection with b = theta_E sqrt(q) and f = sqrt(1 - q^2) precomputed."""
    xp, yp, psi = sie_rotated(x, y, f, cos_phi, sin_phi)
    atan_ft, log_ratio = sie_transcendentals(xp, yp, psi, f)
    return sie_deflection_from(xp, yp, psi, b, f, cos_phi, sin_phi, atan_ft, log_ratio)


def shear_deflection(x, y, g1, g2):
    """External shear about the lens centre: alpha = (g1 x + g2 y, g2 x - g1 y).

    The deflection of the potential psi = (g1 (x^2 - y^2) + 2 g2 x y) / 2 (e.g. Keeton 2001,
    eq. 15), with g1 = gamma cos(2 phi), g2 = gamma sin(2 phi): lenstronomy's SHEAR.
    """
    return g1 * x + g2 * y, g2 * x - g1 * y


def ray_shoot(x, y, theta_e, q, cos_phi, sin_phi, g1, g2):
    """Source-plane position beta = theta - alpha(theta) of image-plane point (x, y)."""
    return ray_shoot_bf(x, y, theta_e * math.sqrt(q), math.sqrt(max(1.0 - q * q, 0.0)),
                        cos_phi, sin_phi, g1, g2)


def ray_shoot_bf(x, y, b, f, cos_phi, sin_phi, g1, g2):
    """ray_shoot with the SIE's b and f precomputed (see sie_deflection_bf)."""
    xp, yp, psi = sie_rotated(x, y, f, cos_phi, sin_phi)
    atan_ft, log_ratio = sie_transcendentals(xp, yp, psi, f)
    return ray_shoot_from(x, y, xp, yp, psi, b, f, cos_phi, sin_phi, g1, g2, atan_ft,
                          log_ratio)


def ray_shoot_from(x, y, xp, yp, psi, b, f, cos_phi, sin_phi, g1, g2, atan_ft, log_ratio):
    """ray_shoot_bf from the rotated point and the SIE's transcendentals."""
    ax, ay = sie_deflection_from(xp, yp, psi, b, f, cos_phi, sin_phi, atan_ft, log_ratio)
    sx, sy = shear_deflection(x, y, g1, g2)
    return x - ax - sx, y - ay - sy
