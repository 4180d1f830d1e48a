"""Training and inference transforms (docs/developers/method.md, "Training" and "Inference")."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from model.transforms import (CROP_SIZE, IMAGENET_STD, TRAIN_SIZE, inference_tensor, normalize, pixel_mean,
                              random_crop_flip, to_uint8_tensor)

SAMPLES = 3000
CHUNK = 500
FLIP_RATE_TOLERANCE = 0.05
# chi-square with 32 degrees of freedom: P(X > 62.5) ~ 0.001
CHI2_32_LIMIT = 62.5


def position_image() -> torch.Tensor:
    """256x256 uint8: channel 0 holds the row index, channel 1 the column index."""
    rows = torch.arange(TRAIN_SIZE, dtype=torch.uint8).view(TRAIN_SIZE, 1).expand(TRAIN_SIZE, TRAIN_SIZE)
    cols = torch.arange(TRAIN_SIZE, dtype=torch.uint8).view(1, TRAIN_SIZE).expand(TRAIN_SIZE, TRAIN_SIZE)
    return torch.stack([rows, cols, torch.full_like(rows, 7)])


def test_constants_follow_the_patent():
    assert TRAIN_SIZE == 256 and CROP_SIZE == 224


@pytest.fixture(scope="module")
def crops():
    image = position_image()
    generator = torch.Generator().manual_seed(1234)
    tops, lefts, flips = [], [], []
    for _ in range(SAMPLES // CHUNK):
        batch = image.unsqueeze(0).expand(CHUNK, -1, -1, -1)
        out = random_crop_flip(batch, generator=generator)
        assert out.shape == (CHUNK, 3, CROP_SIZE, CROP_SIZE)
        assert out.dtype == torch.uint8
        top = out[:, 0, 0, 0].long()
        first, last = out[:, 1, 0, 0].long(), out[:, 1, 0, -1].long()
        flipped = first > last
        left = torch.where(flipped, last, first)
        # every crop is exactly the 224x224 window at (top, left), mirrored when flipped
        for i in range(0, CHUNK, 97):
            window = image[:, top[i]:top[i] + CROP_SIZE, left[i]:left[i] + CROP_SIZE]
            expected = window.flip(-1) if flipped[i] else window
            assert torch.equal(out[i], expected)
        # rows run downwards in every crop, columns one way: a real crop, not a resample
        assert torch.equal(out[:, 0, -1, 0].long() - top, torch.full_like(top, CROP_SIZE - 1))
        assert torch.equal((last - first).abs(), torch.full_like(top, CROP_SIZE - 1))
        tops.append(top)
        lefts.append(left)
        flips.append(flipped)
    return torch.cat(tops), torch.cat(lefts), torch.cat(flips)


def _chi2_uniform(values: torch.Tensor, bins: int) -> float:
    counts = torch.bincount(values, minlength=bins).double()
    expected = len(values) / bins
    return float(((counts - expected) ** 2 / expected).sum())


@pytest.mark.parametrize("axis", [0, 1])
def test_crop_offsets_cover_0_to_32_uniformly(crops, axis):
    offsets = crops[axis]
    assert int(offsets.min()) == 0
    assert int(offsets.max()) == TRAIN_SIZE - CROP_SIZE == 32
    counts = torch.bincount(offsets, minlength=33)
    assert len(counts) == 33 and bool((counts > 0).all())
    assert _chi2_uniform(offsets, 33) < CHI2_32_LIMIT
    assert float(offsets.double().mean()) == pytest.approx(16.0, abs=0.6)


def test_top_and_left_are_drawn_independently(crops):
    tops, lefts, _ = crops
    assert not torch.equal(tops, lefts)
    corr = torch.corrcoef(torch.stack([tops.double(), lefts.double()]))[0, 1]
    assert abs(float(corr)) < 0.1


def test_flip_rate_is_one_half(crops):
    rate = float(crops[2].double().mean())
    assert rate == pytest.approx(0.5, abs=FLIP_RATE_TOLERANCE)


def test_crop_is_reproducible_with_a_seeded_generator():
    image = position_image().unsqueeze(0).expand(8, -1, -1, -1)
    a = random_crop_flip(image, generator=torch.Generator().manual_seed(5))
    b = random_crop_flip(image, generator=torch.Generator().manual_seed(5))
    c = random_crop_flip(image, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_custom_crop_size():
    out = random_crop_flip(torch.zeros(4, 3, 40, 40, dtype=torch.uint8), crop=32,
                           generator=torch.Generator().manual_seed(0))
    assert out.shape == (4, 3, 32, 32)


# --- mean pixel and normalisation ----------------------------------------------------------

def test_pixel_mean_on_known_images():
    a = torch.zeros(3, 4, 4, dtype=torch.uint8)
    a[0] = 255                       # red
    b = torch.zeros(3, 4, 4, dtype=torch.uint8)
    b[1] = 51                        # a little green
    b[2, :2] = 255                   # blue on half the pixels
    mean = pixel_mean([a, b])
    assert mean == pytest.approx((0.5, 0.1, 0.25), abs=1e-9)


def test_pixel_mean_weights_images_by_pixel_count():
    small = torch.full((3, 2, 2), 255, dtype=torch.uint8)     # 4 white pixels
    big = torch.zeros(3, 6, 2, dtype=torch.uint8)             # 12 black pixels
    assert pixel_mean([small, big]) == pytest.approx((0.25, 0.25, 0.25), abs=1e-9)


def test_pixel_mean_of_nothing_is_an_error():
    with pytest.raises(ValueError):
        pixel_mean([])


def test_normalize_zero_mean_over_training_set():
    generator = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (6, 3, 32, 32), generator=generator, dtype=torch.uint8)
    images[:, 0] //= 3              # give the channels clearly different means
    images[:, 2] = 255 - images[:, 2] // 4
    mean = pixel_mean(list(images))
    assert mean[0] < 0.2 and mean[2] > 0.8
    out = normalize(images, mean)
    assert out.dtype == torch.float32 and out.shape == images.shape
    assert out.mean(dim=(0, 2, 3)).abs().max() < 1e-5
    # without the mean subtraction the channel means are far from 0
    assert normalize(images, (0.0, 0.0, 0.0)).mean(dim=(0, 2, 3)).abs().min() > 0.5


def test_normalize_known_values():
    batch = torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 1, 2).expand(1, 3, 1, 2)
    mean = (0.5, 0.4, 0.3)
    out = normalize(batch, mean)
    for c in range(3):
        assert float(out[0, c, 0, 0]) == pytest.approx((0 - mean[c]) / IMAGENET_STD[c], abs=1e-6)
        assert float(out[0, c, 0, 1]) == pytest.approx((1 - mean[c]) / IMAGENET_STD[c], abs=1e-6)
    unit = normalize(batch, mean, std=(1.0, 1.0, 1.0))
    assert float(unit[0, 1, 0, 1]) == pytest.approx(0.6, abs=1e-6)


# --- to tensor and inference ---------------------------------------------------------------

def gradient_image(width: int, height: int) -> Image.Image:
    """R = column index, G = row index (both < 256), B = 40."""
    x = np.arange(width).reshape(1, width).repeat(height, 0)
    y = np.arange(height).reshape(height, 1).repeat(width, 1)
    return Image.fromarray(np.stack([x, y, np.full_like(x, 40)], -1).astype(np.uint8), "RGB")


def test_to_uint8_tensor_layout():
    image = gradient_image(256, 256)
    tensor = to_uint8_tensor(image, 256)
    assert tensor.shape == (3, 256, 256) and tensor.dtype == torch.uint8
    assert int(tensor[0, 5, 9]) == 9 and int(tensor[1, 5, 9]) == 5 and int(tensor[2, 5, 9]) == 40


def test_inference_resize_is_the_whole_image_at_224():
    image = gradient_image(256, 200)
    out = inference_tensor(image)
    assert out.shape == (3, 224, 224) and out.dtype == torch.uint8
    # the whole width is squeezed in: column j samples source x = (j + 0.5) * 256/224 - 0.5
    expected_x = (torch.arange(224) + 0.5) * 256 / 224 - 0.5
    assert (out[0, 100].float() - expected_x).abs().max() <= 1.5
    expected_y = (torch.arange(224) + 0.5) * 200 / 224 - 0.5
    assert (out[1, :, 100].float() - expected_y).abs().max() <= 1.5
    assert int(out[0, 0, 0]) <= 1 and int(out[0, 0, -1]) >= 254


def test_inference_center_crop_is_the_middle_of_the_training_size():
    image = gradient_image(256, 256)
    out = inference_tensor(image, center_crop=True)
    assert out.shape == (3, 224, 224)
    # 256 -> 256 is no resize; the crop starts 16 pixels in on each side
    assert torch.equal(out[0, 0], torch.arange(16, 240, dtype=torch.uint8))
    assert torch.equal(out[1, :, 0], torch.arange(16, 240, dtype=torch.uint8))
    assert torch.equal(out, to_uint8_tensor(image, 256)[:, 16:240, 16:240])
    # and it differs from the plain resize, which keeps the borders
    plain = inference_tensor(image)
    assert int(plain[0, 0, 0]) <= 1 and int(out[0, 0, 0]) == 16


def test_inference_center_crop_other_sizes():
    image = gradient_image(200, 120)
    out = inference_tensor(image, size=64, center_crop=True, train_size=80)
    assert out.shape == (3, 64, 64)
    assert torch.equal(out, to_uint8_tensor(image, 80)[:, 8:72, 8:72])
