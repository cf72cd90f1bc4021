"""gpu_inject: simulated strongly-lensed galaxies injected into DESI Legacy Surveys DR10 stamps."""
__version__ = "0.1.0"

from .engine import ArcBatch, render_arcs  # noqa: E402

__all__ = ["ArcBatch", "render_arcs", "__version__"]
