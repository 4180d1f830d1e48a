"""model.images.open_image: bad input is refused with an ImageError naming the file; every PIL
mode we meet becomes 8-bit RGB with the values one would expect."""
from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.core.settings import Settings
from model.errors import ImageError, ImageTooLarge
from model.images import DEFAULT_MAX_DECODE_BYTES, DEFAULT_MAX_PIXELS, TILE_PIXELS, open_image

DECODE_BENCHMARK = Path(__file__).resolve().parent.parent / "benchmarks" / "image_decode.py"

COLOUR_TOL = 6     # JPEG round trips of flat colours


def save(image: Image.Image, path, fmt: str, **kwargs):
    image.save(path, fmt, **kwargs)
    return path


def noisy_rgb(width=64, height=48, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def assert_rgb8(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    assert image.mode == "RGB"
    assert image.size == size
    array = np.asarray(image)
    assert array.dtype == np.uint8 and array.shape == (size[1], size[0], 3)
    return array


def close(pixel, expected, tol=COLOUR_TOL) -> bool:
    return all(abs(int(p) - e) <= tol for p, e in zip(pixel, expected))


def png_header_only(width: int, height: int, bit_depth: int = 8, colour_type: int = 2) -> bytes:
    """A PNG signature and IHDR chunk (valid CRC) claiming width x height (8-bit RGB unless told
    otherwise: colour type 0 is grey), no data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


# --- bad input --------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt,ext", [("JPEG", "jpg"), ("PNG", "png")])
def test_truncated_file(tmp_path, fmt, ext):
    buffer = io.BytesIO()
    noisy_rgb(200, 150).save(buffer, fmt)
    data = buffer.getvalue()
    path = tmp_path / f"cut.{ext}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError) as info:
        open_image(path)
    assert str(path) in str(info.value)


def test_text_file_is_not_an_image(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("hello, this is not a picture\n")
    with pytest.raises(ImageError, match="not an image") as info:
        open_image(path)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path):
    path = tmp_path / "gone.png"
    with pytest.raises(ImageError, match="not found") as info:
        open_image(path)
    assert str(path) in str(info.value)


def test_bytes_use_the_given_name():
    with pytest.raises(ImageError, match="not an image") as info:
        open_image(b"GIF? no", name="task 17 (https://example.org/a.gif)")
    assert "task 17 (https://example.org/a.gif)" in str(info.value)


def test_image_over_max_pixels(tmp_path):
    path = save(Image.new("RGB", (2000, 2000), (10, 20, 30)), tmp_path / "big.png", "PNG")
    with pytest.raises(ImageError, match="limit") as info:
        open_image(path, max_pixels=1_000_000)
    message = str(info.value)
    assert str(path) in message
    assert "1000000" in message and "2000x2000" in message
    # the same file is fine under a limit it fits
    assert open_image(path, max_pixels=4_000_000).size == (2000, 2000)


def test_png_header_claiming_large_dimensions_is_refused_before_decoding(tmp_path):
    # 10000 x 10000 = 1e8 pixels: over our default limit (5e7), under PIL's own bomb limit
    path = tmp_path / "liar.png"
    path.write_bytes(png_header_only(10_000, 10_000))
    with pytest.raises(ImageError, match="limit") as info:
        open_image(path)
    message = str(info.value)
    assert str(path) in message and str(DEFAULT_MAX_PIXELS) in message and "10000x10000" in message


def test_png_header_claiming_huge_dimensions(tmp_path):
    # 100000 x 100000 = 1e10 pixels: PIL refuses it as a decompression bomb in Image.open
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(100_000, 100_000))
    with pytest.raises(ImageError, match="limit") as info:
        open_image(path, max_pixels=1_000_000)
    assert str(path) in str(info.value)


def test_decode_over_the_memory_bound_is_refused_before_decoding(tmp_path):
    # 4000 x 4000 16-bit grey: 2 bytes a pixel as decoded + 4 for the RGB copy = 96,000,000
    # bytes, in a file of a few dozen bytes. Refused from the header: there are no pixels to decode.
    path = tmp_path / "deep.png"
    path.write_bytes(png_header_only(4000, 4000, bit_depth=16, colour_type=0))
    with pytest.raises(ImageTooLarge) as info:
        open_image(path, max_decode_bytes=50_000_000)
    message = str(info.value)
    assert str(path) in message and "4000x4000" in message
    assert "96000000 bytes" in message and "limit of 50000000 bytes" in message


def test_decode_within_the_memory_bound_is_decoded(tmp_path):
    values = np.full((100, 200), 65535, dtype=np.uint16)
    path = save(Image.fromarray(values), tmp_path / "deep.png", "PNG")
    with pytest.raises(ImageTooLarge, match="120000 bytes"):
        open_image(path, max_decode_bytes=119_999)
    assert open_image(path, max_decode_bytes=120_000).getpixel((0, 0)) == (255, 255, 255)


def test_decode_bound_setting_defaults_to_the_model_default():
    assert Settings().max_image_decode_bytes == DEFAULT_MAX_DECODE_BYTES
    # the default refuses nothing the default pixel limit lets through (4 + 4 bytes a pixel at most)
    assert DEFAULT_MAX_DECODE_BYTES >= 8 * DEFAULT_MAX_PIXELS


def test_16_bit_decode_peak_memory_stays_near_its_rgb_size(tmp_path):
    # Measured in a fresh process (PIL's buffers are invisible to tracemalloc): the growth of the
    # resident memory over the decode. Bound: the 16-bit pixels (2 bytes each) and the RGB copy
    # (4, PIL pads RGB) with tile temporaries, within 2.5 times the 3-byte RGB size; float copies
    # of the whole image would take 8 bytes a pixel each.
    rows = np.linspace(0, 65535, 4000).astype(np.uint16)
    path = save(Image.fromarray(np.ascontiguousarray(np.broadcast_to(rows[:, None], (4000, 4000)))),
                tmp_path / "deep.png", "PNG", compress_level=1)
    run = subprocess.run([sys.executable, str(DECODE_BENCHMARK), "--child", str(path)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    figures = json.loads(run.stdout)
    assert figures["mode"] == "I;16" and figures["rgb"] == 4000 * 4000 * 3
    assert figures["rss_growth"] <= 2.5 * figures["rgb"], figures


# --- modes -----------------------------------------------------------------------------------

def test_rgb_passes_through_unchanged(tmp_path):
    source = noisy_rgb()
    path = save(source, tmp_path / "rgb.png", "PNG")
    array = assert_rgb8(open_image(path), (64, 48))
    assert np.array_equal(array, np.asarray(source))


def test_grayscale_l(tmp_path):
    data = np.array([[0, 100, 255]], dtype=np.uint8)
    path = save(Image.fromarray(data, "L"), tmp_path / "grey.png", "PNG")
    array = assert_rgb8(open_image(path), (3, 1))
    assert array[0].tolist() == [[0, 0, 0], [100, 100, 100], [255, 255, 255]]


def test_cmyk_jpeg(tmp_path):
    image = Image.new("CMYK", (32, 16), (0, 0, 0, 0))            # white
    image.paste((0, 255, 255, 0), (0, 0, 16, 16))                # red on the left half
    path = save(image, tmp_path / "cmyk.jpg", "JPEG", quality=95)
    assert Image.open(path).mode == "CMYK"
    array = assert_rgb8(open_image(path), (32, 16))
    assert close(array[8, 4], (255, 0, 0))
    assert close(array[8, 28], (255, 255, 255))


def test_palette_without_transparency(tmp_path):
    image = Image.new("P", (4, 1))
    image.putpalette([255, 0, 0, 0, 128, 0, 10, 20, 30] + [0] * (256 * 3 - 9))
    image.putdata([0, 1, 2, 1])
    path = save(image, tmp_path / "pal.png", "PNG")
    array = assert_rgb8(open_image(path), (4, 1))
    assert array[0].tolist() == [[255, 0, 0], [0, 128, 0], [10, 20, 30], [0, 128, 0]]


@pytest.mark.parametrize("fmt,ext", [("PNG", "png"), ("GIF", "gif")])
def test_palette_with_transparency(tmp_path, fmt, ext):
    image = Image.new("P", (3, 1))
    image.putpalette([0, 0, 0, 200, 30, 40, 0, 0, 255] + [0] * (256 * 3 - 9))
    image.putdata([0, 1, 2])
    path = save(image, tmp_path / f"pal_t.{ext}", fmt, transparency=0)   # index 0 (black) is transparent
    assert Image.open(path).mode == "P" and "transparency" in Image.open(path).info
    array = assert_rgb8(open_image(path), (3, 1))
    assert array[0].tolist() == [[255, 255, 255], [200, 30, 40], [0, 0, 255]]


def test_rgba_composited_on_white(tmp_path):
    data = np.array([[[0, 0, 0, 0], [10, 20, 30, 255], [0, 0, 0, 128], [200, 0, 0, 0]]], dtype=np.uint8)
    path = save(Image.fromarray(data, "RGBA"), tmp_path / "rgba.png", "PNG")
    array = assert_rgb8(open_image(path), (4, 1))
    assert array[0, 0].tolist() == [255, 255, 255]          # fully transparent black -> white
    assert array[0, 1].tolist() == [10, 20, 30]             # opaque unchanged
    assert close(array[0, 2], (127, 127, 127), tol=1)      # half black over white
    assert array[0, 3].tolist() == [255, 255, 255]          # transparent red -> white, not red


def test_la_composited_on_white(tmp_path):
    data = np.array([[[50, 255], [50, 0], [0, 64]]], dtype=np.uint8)
    path = save(Image.fromarray(data, "LA"), tmp_path / "la.png", "PNG")
    assert Image.open(path).mode == "LA"
    array = assert_rgb8(open_image(path), (3, 1))
    assert array[0, 0].tolist() == [50, 50, 50]
    assert array[0, 1].tolist() == [255, 255, 255]
    assert close(array[0, 2], (191, 191, 191), tol=1)      # 255 * (1 - 64/255)


def test_16_bit_grayscale_png_is_rescaled_not_clipped(tmp_path):
    values = np.array([[0, 256, 32768, 65535, 1000]], dtype=np.uint16)
    path = save(Image.fromarray(values), tmp_path / "deep.png", "PNG")
    assert Image.open(path).mode.startswith("I")
    array = assert_rgb8(open_image(path), (5, 1))
    grey = array[0, :, 0].tolist()
    assert array[0, :, 0].tolist() == array[0, :, 1].tolist() == array[0, :, 2].tolist()
    assert grey[0] == 0
    assert grey[1] == 1
    assert grey[2] in (127, 128)
    assert grey[3] == 255
    assert grey[4] == 4                       # 1000 / 257 = 3.9, not 255


@pytest.mark.parametrize("height,width", [(300, 1024), (2, 300_000)])  # tiles of rows; of columns too
def test_conversions_are_the_same_across_tiles(tmp_path, height, width):
    assert height * width > TILE_PIXELS
    rng = np.random.default_rng(3)
    deep = rng.integers(0, 65536, (height, width), dtype=np.uint16)
    grey = assert_rgb8(open_image(save(Image.fromarray(deep), tmp_path / "deep.png", "PNG")), (width, height))
    assert np.array_equal(grey[..., 0], np.round(deep / 257).astype(np.uint8))
    assert np.array_equal(grey[..., 0], grey[..., 2])
    rgba = rng.integers(0, 256, (height, width, 4), dtype=np.uint8)
    composited = assert_rgb8(open_image(save(Image.fromarray(rgba, "RGBA"), tmp_path / "rgba.png", "PNG")),
                             (width, height))
    alpha = rgba[..., 3:] / 255
    on_white = np.round(rgba[..., :3] * alpha + 255 * (1 - alpha))
    assert np.abs(composited - on_white).max() <= 1


def test_exif_rotated_jpeg(tmp_path):
    image = Image.new("RGB", (40, 20), (0, 0, 255))               # stored: red left half, blue right
    image.paste((255, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6                                              # orientation: rotate 90 CW to display
    path = save(image, tmp_path / "rotated.jpg", "JPEG", quality=95, exif=exif.tobytes())
    assert Image.open(path).size == (40, 20)
    array = assert_rgb8(open_image(path), (20, 40))               # displayed upright: portrait
    assert close(array[5, 10], (255, 0, 0), tol=10)              # the left half is now on top
    assert close(array[35, 10], (0, 0, 255), tol=10)


def test_source_may_be_bytes_or_file_object(tmp_path):
    buffer = io.BytesIO()
    Image.new("RGB", (5, 4), (1, 2, 3)).save(buffer, "PNG")
    from_bytes = open_image(buffer.getvalue())
    buffer.seek(0)
    from_file = open_image(buffer)
    assert np.array_equal(np.asarray(from_bytes), np.asarray(from_file))
    assert from_bytes.getpixel((0, 0)) == (1, 2, 3)
