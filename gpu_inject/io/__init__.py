"""I/O: the manifest, brick file resolution (local / S3), stamp cutting, PSF provenance."""
from .coadd import BrickFiles, CoaddError, CoaddSource, brick_file_name
from .cutout import StampSet, choose_strategy, cut_brick, cut_stamps, sky_to_pixel, stamp_origin, wcs_from_header
from .manifest import Manifest, ManifestError, read_manifest
from .psf import PsfResolution, resolve_psf_fwhm

__all__ = [
    "BrickFiles", "CoaddError", "CoaddSource", "brick_file_name",
    "StampSet", "choose_strategy", "cut_brick", "cut_stamps", "sky_to_pixel", "stamp_origin",
    "wcs_from_header", "PsfResolution", "resolve_psf_fwhm", "Manifest", "ManifestError",
    "read_manifest",
]
