"""Random injection parameters over the manifest ranges of SPEC section 6, for benchmarks,
accuracy sweeps, tests and ``make-manifest``."""
import numpy as np

# SPEC section 6 ranges (the user's grid, ../shared/seed/): (low, high)
SPEC_RANGES = {
    "theta_e_arcsec": (0.3, 1.0),
    "src_reff_arcsec": (0.1, 0.5),
    "src_n": (0.5, 4.0),
    "src_e": (0.0, 0.6),
    "lens_e": (0.0, 0.6),
    "shear": (0.0, 0.1),
    "src_offset_arcsec": (0.0, 1.0),
    "src_dmag": (0.5, 3.0),
}


def draw_params(rng, n, lens_models=("SIS", "SIE")):
    """The lens and source columns of n injections (dict column -> numpy array, in SPEC
    section 4 order) drawn from the numpy Generator ``rng``: uniform over the SPEC ranges,
    angles uniform in [0, 180) deg, the source centre uniform in a disc of radius 1",
    colours typical of background star-forming sources."""

    def u(name):
        lo, hi = SPEC_RANGES[name]
        return rng.uniform(lo, hi, n)

    r = SPEC_RANGES["src_offset_arcsec"][1] * np.sqrt(rng.uniform(0, 1, n))
    a = rng.uniform(0, 2 * np.pi, n)
    return {
        "lens_model": rng.choice(np.array(lens_models, dtype=object), n),
        "theta_e_arcsec": u("theta_e_arcsec"),
        "lens_e": u("lens_e"),
        "lens_phi_deg": rng.uniform(0, 180, n),
        "shear": u("shear"),
        "shear_phi_deg": rng.uniform(0, 180, n),
        "src_dmag": u("src_dmag"),
        "src_reff_arcsec": u("src_reff_arcsec"),
        "src_n": u("src_n"),
        "src_e": u("src_e"),
        "src_phi_deg": rng.uniform(0, 180, n),
        "src_x_arcsec": r * np.cos(a),
        "src_y_arcsec": r * np.sin(a),
        "src_gr": rng.uniform(0.2, 1.0, n),
        "src_rz": rng.uniform(0.0, 0.6, n),
    }


def random_tasks(n, seed=0, lens_models=("SIS", "SIE")):
    """n injection rows (dict column -> numpy array): ``draw_params`` with seed ``seed``, then
    lens_flux_r of a typical DESI LRG (~ r = 19.5) and typical DR10 PSF sizes."""
    rng = np.random.default_rng(seed)
    return {
        "task_id": np.arange(n, dtype=np.int64),
        **draw_params(rng, n, lens_models),
        "lens_flux_r": rng.uniform(10.0, 25.0, n),
        "psfsize_g": rng.uniform(1.1, 2.0, n),
        "psfsize_r": rng.uniform(0.9, 1.7, n),
        "psfsize_z": rng.uniform(0.85, 1.6, n),
    }
