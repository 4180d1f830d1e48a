"""Opening images safely and turning every PIL mode we meet into 8-bit RGB, in bounded memory.

Two limits, both checked from the header before any pixel is decoded: the pixel count, and the
memory the decode takes (`decode_bytes`): the pixels as decoded plus the RGB copy made from
them. A small file can hold a large image (a 95 KB 16-bit PNG of 7000x7000), so the file size
bounds nothing. The conversion to RGB works a tile at a time, so the peak of one `open_image`
is `decode_bytes` plus the temporaries of one tile (`TILE_PIXELS` pixels, under 16 MB), never
float copies of the whole image.
"""
from __future__ import annotations

import io
import os
import warnings
from typing import BinaryIO
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError, ImageTooLarge

# Default pixel limit (width * height): generous for photographs, small enough that a
# decompression bomb cannot take the process's memory.
DEFAULT_MAX_PIXELS = 50_000_000
# Default memory for one decode: every image within DEFAULT_MAX_PIXELS fits (at most 4 bytes a
# pixel as decoded, plus 4 for the RGB copy), so by default only the pixel count refuses.
DEFAULT_MAX_DECODE_BYTES = 8 * DEFAULT_MAX_PIXELS
# Pixels converted at a time: a tile's temporaries (a crop, an RGBA or RGB copy, numpy arrays of
# at most 8 bytes a pixel) stay under 16 MB whatever the size of the image.
TILE_PIXELS = 1 << 18

_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa"}
# Bytes a pixel takes in PIL's memory; every other mode takes 4 (RGB is padded to 4 too).
_PIXEL_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}
_RGB_PIXEL_BYTES = 4
_WHITE = (255, 255, 255)

# PIL's own bomb check would refuse images above its fixed limit before ours runs, quoting its
# number instead of the configured one; every image we open goes through open_image's check.
Image.MAX_IMAGE_PIXELS = None


def open_image(source: str | os.PathLike | bytes | BinaryIO, *, max_pixels: int = DEFAULT_MAX_PIXELS,
               max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES, name: str | None = None) -> Image.Image:
    """Decode `source` (a path, bytes or a file object) into an 8-bit RGB image.

    Raises ImageError naming `name` (or the path) when the data is missing, not an image or
    truncated; ImageTooLarge when it has more than `max_pixels` pixels or its decode would take
    more than `max_decode_bytes` bytes (`decode_bytes`).
    """
    label = name or (os.fspath(source) if isinstance(source, (str, os.PathLike)) else "image")
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    try:
        if isinstance(source, (str, os.PathLike)):
            # our own file object, closed here: an RGB image is returned as decoded, and a
            # multi-frame format would otherwise keep its file open as long as the image lives
            with open(source, "rb") as file:
                return _decode(file, label, max_pixels, max_decode_bytes)
        return _decode(source, label, max_pixels, max_decode_bytes)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{label}: file not found") from None
    except IsADirectoryError:
        raise ImageError(f"{label}: is a directory, not an image") from None
    except UnidentifiedImageError:
        raise ImageError(f"{label}: not an image (format not recognised)") from None
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"{label}: rejected as a decompression bomb ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        # Truncated or corrupt data surfaces as OSError ("image file is truncated") or
        # SyntaxError (broken PNG chunks) from inside the decoders.
        raise ImageError(f"{label}: cannot be decoded ({exc})") from None


def _decode(file: BinaryIO, label: str, max_pixels: int, max_decode_bytes: int) -> Image.Image:
    with warnings.catch_warnings():
        # PIL only warns between its own limit and twice it; we enforce ours below.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        image = Image.open(file)
        width, height = image.size
        if width * height > max_pixels:
            raise ImageTooLarge(f"{label}: {width}x{height} = {width * height} pixels is over the limit "
                                f"of {max_pixels} pixels")
        _check_decode_bytes(image, label, max_decode_bytes)
        image.load()
        # the decoder may settle on another mode than the header's
        _check_decode_bytes(image, label, max_decode_bytes)
        return to_rgb(image)


def decode_bytes(mode: str, size: tuple[int, int]) -> int:
    """The most memory `open_image` holds for an image of `mode` and `size` (its header's): the
    pixels as decoded (1 byte a pixel for 1-bit, grey and palette images, 2 for 16-bit grey, 4
    for the rest, RGB included) plus the RGB or rotated copy made from them (4 bytes a pixel;
    an upright RGB image needs none). Tile temporaries (`TILE_PIXELS`) come on top."""
    return size[0] * size[1] * (_PIXEL_BYTES.get(mode, 4) + _RGB_PIXEL_BYTES)


def _check_decode_bytes(image: Image.Image, label: str, limit: int) -> None:
    needed = decode_bytes(image.mode, image.size)
    if needed > limit:
        width, height = image.size
        raise ImageTooLarge(f"{label}: a {width}x{height} {image.mode} image takes {needed} bytes to decode, "
                            f"over the limit of {limit} bytes")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB: EXIF rotation applied (to `image` itself), alpha composited
    onto white, 16-bit and float grey levels rescaled rather than clipped. An upright RGB image
    is returned as it is; any other gets one new RGB image, converted a tile at a time where the
    conversion needs temporaries (so the peak is `decode_bytes`, plus one tile's)."""
    ImageOps.exif_transpose(image, in_place=True)  # no copy of an upright image
    if image.mode in _SIXTEEN_BIT_MODES:
        return _tiled(image, _grey_to_8bit_tile(image))
    if image.mode in _ALPHA_MODES or (image.mode == "P" and "transparency" in image.info):
        return _tiled(image, lambda tile: tile.convert("RGBA"))
    if image.mode == "RGB":
        return image
    return image.convert("RGB")


def _tiled(image: Image.Image, convert: Callable[[Image.Image], Image.Image]) -> Image.Image:
    """A new RGB image (white) with `convert(tile)` pasted in for each tile of `image`: an RGBA
    tile through its own alpha, which composites it onto the white."""
    width, height = image.size
    tile_width = min(width, TILE_PIXELS)
    tile_height = max(1, TILE_PIXELS // tile_width)
    rgb = Image.new("RGB", image.size, _WHITE)
    for top in range(0, height, tile_height):
        for left in range(0, width, tile_width):
            tile = convert(image.crop((left, top, min(left + tile_width, width), min(top + tile_height, height))))
            rgb.paste(tile, (left, top), tile if tile.mode == "RGBA" else None)
    return rgb


def _grey_to_8bit_tile(image: Image.Image) -> Callable[[Image.Image], Image.Image]:
    """The tile conversion of a 16-bit, 32-bit or float grey image to 8-bit grey. The scale is
    the whole image's: 16-bit modes span 0..65535; 32-bit "I" holds 8- or 16-bit data (16-bit
    PNGs may open this way) or larger; "F" spans its own minimum to maximum."""
    if image.mode.startswith("I;16"):
        # round(v * 255 / 65535) is round(v / 257), and v / 257 is never half-way
        return _grey_tile(lambda v: ((v.astype(np.uint32) + 128) // 257).astype(np.uint8))
    low, high = image.getextrema()
    if image.mode == "I":
        top = 255 if high <= 255 else 65535 if high <= 65535 else int(high)
        return _grey_tile(lambda v: ((np.clip(v, 0, top).astype(np.int64) * 255 + top // 2) // top).astype(np.uint8))
    span = max(float(high) - float(low), 1e-12)
    return _grey_tile(lambda v: np.clip((v.astype(np.float64) - low) * (255.0 / span), 0, 255).round().astype(np.uint8))


def _grey_tile(scale: Callable[[np.ndarray], np.ndarray]) -> Callable[[Image.Image], Image.Image]:
    return lambda tile: Image.fromarray(scale(np.asarray(tile)))  # 2-D uint8: mode "L"
