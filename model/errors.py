"""Errors the model package raises for bad input; each message names the file or row at fault."""


class AesemoError(Exception):
    """Base class: the command line prints these as one line, without a traceback."""


class ImageError(AesemoError):
    """An image that cannot be used: missing, truncated, not an image, or too large."""


class ImageTooLarge(ImageError):
    """An image over the pixel limit or the decode memory limit (model/images.py)."""


class ManifestError(AesemoError):
    """A training manifest that cannot be used as a whole (empty, bad JSON, unknown class)."""


class VersionError(AesemoError):
    """A model version folder that is incomplete, inconsistent, or whose weights fail the hash check."""


class TrainingDiverged(AesemoError):
    """Training whose loss, held-out loss or weights stopped being finite numbers (NaN or infinity)."""


class DatasetError(AesemoError):
    """A public dataset whose files do not follow its published layout; names the file and line."""
