"""Seeded ImageNet-C-style corruptions (episodes.corruptions)."""

from __future__ import annotations

import itertools

import pytest
import torch

from episodes import LabelledImages
from episodes.corruptions import (
    CORRUPTIONS,
    SEVERITIES,
    corrupt,
    corrupted,
    corruption_split,
    parse_corruption_split,
)


@pytest.fixture(scope="module")
def strokes() -> torch.Tensor:
    """Glyph-like images: dark bars of random place and width on white, uint8 [12, 1, 28, 28]."""
    gen = torch.Generator().manual_seed(0)
    images = torch.full((12, 1, 28, 28), 255, dtype=torch.uint8)
    for image in images:
        for _ in range(3):
            x0, y0 = torch.randint(3, 18, (2,), generator=gen).tolist()
            w, h = torch.randint(2, 8, (2,), generator=gen).tolist()
            image[0, y0 : y0 + 2 * h, x0 : x0 + w] = torch.randint(0, 60, (), generator=gen)
    return images


def mean_abs_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().mean().item()


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_severity_zero_is_the_identity_and_the_output_is_new(
    kind: str, strokes: torch.Tensor
) -> None:
    out = corrupt(strokes, kind, 0, seed=3)
    assert torch.equal(out, strokes) and out.data_ptr() != strokes.data_ptr()
    out = corrupt(strokes, kind, 3, seed=3)
    assert out.dtype == torch.uint8 and out.shape == strokes.shape


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_damage_grows_with_severity(kind: str, strokes: torch.Tensor) -> None:
    damage = [mean_abs_difference(corrupt(strokes, kind, s, seed=0), strokes) for s in range(6)]
    assert damage[0] == 0
    assert all(a < b for a, b in itertools.pairwise(damage)), damage
    assert damage[5] > 15  # severity 5 is far from the clean images (0-255 scale)


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_same_seed_same_output(kind: str, strokes: torch.Tensor) -> None:
    first = corrupt(strokes, kind, 4, seed=7)
    assert torch.equal(corrupt(strokes.clone(), kind, 4, seed=7), first)
    other = corrupt(strokes, kind, 4, seed=8)
    random = kind in ("gaussian_noise", "elastic")
    assert torch.equal(other, first) is not random


@pytest.mark.parametrize("kind", ["gaussian_noise", "elastic"])
def test_an_image_draws_the_same_whatever_batch_it_is_in(kind: str, strokes: torch.Tensor) -> None:
    whole = corrupt(strokes, kind, 2, seed=1)
    part = corrupt(strokes[5:9], kind, 2, seed=1, first_index=5)
    assert torch.equal(part, whole[5:9])
    assert not torch.equal(corrupt(strokes[5:9], kind, 2, seed=1), whole[5:9])


def test_noise_has_the_imagenet_c_standard_deviations() -> None:
    grey = torch.full((4, 1, 64, 64), 128, dtype=torch.uint8)
    for severity, std in zip(SEVERITIES, (0.08, 0.12, 0.18, 0.26, 0.38), strict=True):
        noise = corrupt(grey, "gaussian_noise", severity).double() - 128
        if severity <= 3:  # little clipping yet
            assert noise.std().item() == pytest.approx(std * 255, rel=0.05)
        assert noise.mean().abs().item() < 2.0


def test_contrast_pulls_each_image_to_its_mean() -> None:
    image = torch.tensor([[[[0, 100], [200, 100]]]], dtype=torch.uint8)  # mean 100
    assert corrupt(image, "contrast", 1)[0, 0].tolist() == [[60, 100], [140, 100]]  # c = 0.4
    assert corrupt(image, "contrast", 5)[0, 0].tolist() == [[95, 100], [105, 100]]  # c = 0.05


def test_blur_and_elastic_keep_a_flat_image_flat() -> None:
    flat = torch.full((2, 3, 20, 20), 77, dtype=torch.uint8)
    for kind in ("gaussian_blur", "elastic"):
        assert torch.equal(corrupt(flat, kind, 5), flat)


def test_blur_spreads_a_point_like_a_gaussian() -> None:
    dot = torch.zeros((1, 1, 28, 28), dtype=torch.uint8)
    dot[0, 0, 14, 14] = 255
    blurred = corrupt(dot, "gaussian_blur", 3)[0, 0].double()  # sigma 1 pixel
    assert blurred.sum().item() == pytest.approx(255, abs=6)
    row = blurred[14, 14:18] / blurred[14, 14]
    expected = torch.exp(-0.5 * torch.arange(4.0) ** 2).double()
    assert torch.allclose(row, expected, atol=0.05)


def test_sizes_scale_with_the_image_side(strokes: torch.Tensor) -> None:
    big = torch.nn.functional.interpolate(strokes.double(), scale_factor=3, mode="nearest")
    big = big.to(torch.uint8)
    small_blur = corrupt(strokes, "gaussian_blur", 4).double()
    big_blur = torch.nn.functional.avg_pool2d(corrupt(big, "gaussian_blur", 4).double(), 3)
    assert mean_abs_difference(small_blur, big_blur) < 4.0


def test_bad_arguments(strokes: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="unknown corruption 'fog'"):
        corrupt(strokes, "fog", 1)
    with pytest.raises(ValueError, match="severity must be an int in 0..5"):
        corrupt(strokes, "contrast", 6)
    with pytest.raises(ValueError, match="uint8 tensor"):
        corrupt(strokes.float(), "contrast", 1)


def test_corrupted_labelled_images(strokes: torch.Tensor) -> None:
    data = LabelledImages(strokes, torch.arange(12) % 3, ("a", "b", "c"), "bars")
    out = corrupted(data, "elastic", 2, seed=4)
    assert out.name == "bars-elastic-2" and out.class_names == data.class_names
    assert torch.equal(out.labels, data.labels)
    assert torch.equal(out.images, corrupt(strokes, "elastic", 2, seed=4))


def test_split_names() -> None:
    assert parse_corruption_split("test-gaussian_noise-3") == ("test", "gaussian_noise", 3)
    assert parse_corruption_split("my-split-contrast-0") == ("my-split", "contrast", 0)
    assert parse_corruption_split("test") == ("test", None, 0)
    assert parse_corruption_split("test-fog-9") == ("test-fog-9", None, 0)
    assert corruption_split("val", "elastic", 5) == "val-elastic-5"
    with pytest.raises(ValueError, match="unknown corruption 'fog'"):
        parse_corruption_split("test-fog-3")
