"""Opening images safely and turning every PIL mode we meet into 8-bit RGB."""
from __future__ import annotations

import io
import os
import warnings
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError

# Default pixel limit (width * height): generous for photographs, small enough that a
# decompression bomb cannot take the process's memory.
DEFAULT_MAX_PIXELS = 50_000_000

_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}

# PIL's own bomb check would refuse images above its fixed limit before ours runs, quoting its
# number instead of the configured one; every image we open goes through open_image's check.
Image.MAX_IMAGE_PIXELS = None


def open_image(source: str | os.PathLike | bytes | BinaryIO, *, max_pixels: int = DEFAULT_MAX_PIXELS,
               name: str | None = None) -> Image.Image:
    """Decode `source` (a path, bytes or a file object) into an 8-bit RGB image.

    Raises ImageError naming `name` (or the path) when the data is missing, not an image,
    truncated, or larger than `max_pixels`.
    """
    label = name or (os.fspath(source) if isinstance(source, (str, os.PathLike)) else "image")
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    try:
        with warnings.catch_warnings():
            # PIL only warns between its own limit and twice it; we enforce ours below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(source)
            width, height = image.size
            if width * height > max_pixels:
                raise ImageError(f"{label}: {width}x{height} = {width * height} pixels is over the limit "
                                 f"of {max_pixels} pixels")
            image.load()
            return to_rgb(image)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{label}: file not found") from None
    except IsADirectoryError:
        raise ImageError(f"{label}: is a directory, not an image") from None
    except UnidentifiedImageError:
        raise ImageError(f"{label}: not an image (format not recognised)") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{label}: rejected as a decompression bomb ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        # Truncated or corrupt data surfaces as OSError ("image file is truncated") or
        # SyntaxError (broken PNG chunks) from inside the decoders.
        raise ImageError(f"{label}: cannot be decoded ({exc})") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB: EXIF rotation applied, alpha composited onto white,
    16-bit and float grey levels rescaled rather than clipped."""
    image = ImageOps.exif_transpose(image)
    if image.mode in _SIXTEEN_BIT_MODES:
        image = _grey_to_8bit(image)
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def _grey_to_8bit(image: Image.Image) -> Image.Image:
    values = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16"):
        top = 65535.0
    else:  # 32-bit "I" holds 8- or 16-bit data (16-bit PNGs often open this way)
        top = 255.0 if values.max() <= 255 else 65535.0 if values.max() <= 65535 else float(values.max())
    if image.mode == "F":
        low = float(values.min())
        values, top = values - low, max(float(values.max()) - low, 1e-12)
    scaled = np.clip(values * (255.0 / top), 0, 255).round().astype(np.uint8)
    return Image.fromarray(scaled, mode="L")
