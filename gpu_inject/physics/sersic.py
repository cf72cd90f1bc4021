"""Elliptical Sersic surface brightness (SPEC section 2). Plain ``math`` functions, as lens.py."""
import math


def sersic_bn(n):
    """b_n with P(2n, b_n) = 1/2: the asymptotic series of Ciotti & Bertin (1999, A&A 352,
    447), eq. (18). Better than 1e-6 relative for n >= 0.36."""
    return (2.0 * n - 1.0 / 3.0 + 4.0 / (405.0 * n) + 46.0 / (25515.0 * n * n)
            + 131.0 / (1148175.0 * n ** 3) - 2194697.0 / (30690717750.0 * n ** 4))


def sersic_ie_for_unit_flux(n, reff, bn):
    """I_e such that the profile integrates to 1: F = 2 pi n R_e^2 I_e e^(b_n) b_n^(-2n)
    Gamma(2n) (Graham & Driver 2005, PASA 22, 118, eq. 4, with R the circularised radius)."""
    log_f = (math.log(2.0 * math.pi * n * reff * reff) + bn - 2.0 * n * math.log(bn)
             + math.lgamma(2.0 * n))
    return math.exp(-log_f)


def elliptical_radius2(u, v, q, cos_phi, sin_phi):
    """R^2 = q u'^2 + v'^2 / q of offset (u, v) rotated by phi: the circularised radius,
    squared. The major axis lies along phi."""
    up = cos_phi * u + sin_phi * v
    vp = -sin_phi * u + cos_phi * v
    return q * up * up + vp * vp / q


def elliptical_radius(u, v, q, cos_phi, sin_phi):
    """R = sqrt(q u'^2 + v'^2 / q), the circularised radius (a norm on the plane)."""
    return math.sqrt(elliptical_radius2(u, v, q, cos_phi, sin_phi))


def sersic_profile_r2(r2, reff, inv_n, bn, ie):
    """I(R) = I_e exp(-b_n [(R / R_e)^(1/n) - 1]) (Sersic 1968) from R^2 (saves a sqrt)."""
    if r2 == 0.0:
        return ie * math.exp(bn)
    w = math.exp(sersic_power_exponent(math.log(sersic_log_argument(r2, reff)), inv_n))
    return ie * math.exp(sersic_exponent(w, bn))


# sersic_profile_r2 between its three transcendental calls (log, exp, exp), so that a CPU
# loop can make each call on a vector of points (kernels/vecmath.py); at R = 0 the log is
# -inf and the two exps give I_e exp(b_n) without the special case.
def sersic_log_argument(r2, reff):
    """(R / R_e)^2."""
    return r2 / (reff * reff)


def sersic_power_exponent(log_x, inv_n):
    """log (R / R_e)^(1/n) from log_x = log (R / R_e)^2."""
    return 0.5 * inv_n * log_x


def sersic_exponent(w, bn):
    """log(I / I_e) = b_n (1 - w), w = (R / R_e)^(1/n)."""
    return bn - bn * w


def sersic_profile(r, reff, inv_n, bn, ie):
    """I(R) = I_e exp(-b_n [(R / R_e)^(1/n) - 1]) (Sersic 1968)."""
    return sersic_profile_r2(r * r, reff, inv_n, bn, ie)


def sersic_radius_below(level, reff, n, bn, ie):
    """The radius beyond which I(R) < level (0 when even I(0) < level)."""
    if ie * math.exp(bn) <= level:
        return 0.0
    return reff * (1.0 + math.log(ie / level) / bn) ** n
