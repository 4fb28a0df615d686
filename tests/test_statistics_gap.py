"""BatchNorm statistics gap: the closed form, and per-block gaps of calibrated backbones."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from metatl.backbones import Backbone, create_backbone
from metatl.training import ImageTransform
from metatl.transfer.statistics_gap import batchnorm_gaps, statistics_gap
from tests.conftest import make_pattern_images


def _channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 mean and population variance per channel of ``[B, C, *]``, each ``[C]``."""
    flat = x.transpose(0, 1).reshape(x.shape[1], -1).double()
    return flat.mean(dim=1), flat.var(dim=1, unbiased=False)


def _calibrate(backbone: Backbone, images: torch.Tensor) -> None:
    """Set every BatchNorm layer's running statistics to those of its input on ``images``.

    One eval-mode pass over all images; each layer's pre-hook sets its statistics before the
    layer normalises, so later layers see the input the calibrated network gives them.
    """

    def hook(bn: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        mean, var = _channel_stats(args[0])
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)

    bns = [m for m in backbone.modules() if isinstance(m, _BatchNorm)]
    handles = [bn.register_forward_pre_hook(hook) for bn in bns]
    backbone.eval()
    with torch.no_grad():
        backbone(ImageTransform(backbone.input_spec)(images))
    for handle in handles:
        handle.remove()


def _dim_images(size: int = 28) -> torch.Tensor:
    """12 pattern images in 0..63, so that adding up to 192 never saturates."""
    return make_pattern_images(3, 4, size=size).images // 4


def _calibrated(name: str, size: int = 28) -> Backbone:
    torch.manual_seed(0)
    if name == "mobilenet_v2":
        backbone = create_backbone(name, image_size=size)
    else:
        backbone = create_backbone(name, in_channels=1, image_size=size)
    _calibrate(backbone, _dim_images(size))
    return backbone


def _f64(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def _all_pre_hooks(backbone: nn.Module) -> int:
    return sum(len(m._forward_pre_hooks) for m in backbone.modules())


# statistics_gap


def test_identical_statistics_have_no_gap() -> None:
    mean, var = _f64([0.0, -3.0, 7.5]), _f64([1.0, 0.25, 9.0])
    assert statistics_gap(mean, var, mean.clone(), var.clone(), 1e-5) == 0.0


def test_a_shift_of_one_source_std_is_a_gap_of_one_in_every_channel() -> None:
    mean_s, var_s = _f64([0.0, 2.0, -1.0]), _f64([1.0, 4.0, 0.01])
    mean_t = mean_s + _f64([1.0, -2.0, 0.1])  # one std, up or down
    assert statistics_gap(mean_s, var_s, mean_t, var_s, 0.0) == pytest.approx(1.0, rel=1e-12)


def test_gap_of_hand_computed_variance_changes() -> None:
    mean_s, var_s = torch.zeros(3), _f64([1.0, 1.0, 4.0])
    mean_t, var_t = _f64([0.0, 1.0, 0.0]), _f64([2.0, 4.0, 1.0])
    # (sqrt 2 - 1)^2 / 1; (1 + (2 - 1)^2) / 1; (1 - 2)^2 / 4
    expected = ((math.sqrt(2.0) - 1.0) ** 2 + 2.0 + 0.25) / 3
    assert statistics_gap(mean_s, var_s, mean_t, var_t, 0.0) == pytest.approx(expected, rel=1e-12)


def test_gap_divides_by_source_variance_plus_eps_and_is_scale_free() -> None:
    mean_s, var_s = _f64([0.0]), _f64([0.0])
    assert statistics_gap(mean_s, var_s, _f64([0.5]), var_s, 0.25) == pytest.approx(1.0)
    mean_s, var_s = _f64([1.0, -2.0]), _f64([0.5, 3.0])
    mean_t, var_t = _f64([0.0, 1.0]), _f64([2.0, 0.1])
    gap = statistics_gap(mean_s, var_s, mean_t, var_t, 0.0)
    scaled = statistics_gap(10 * mean_s, 100 * var_s, 10 * mean_t, 100 * var_t, 0.0)
    assert gap > 1.0 and scaled == pytest.approx(gap, rel=1e-12)


def test_gap_refuses_mismatched_statistics() -> None:
    with pytest.raises(ValueError, match=r"\[C\] tensors of one shape"):
        statistics_gap(torch.zeros(3), torch.ones(3), torch.zeros(2), torch.ones(2), 1e-5)
    with pytest.raises(ValueError, match=r"\[C\] tensors of one shape"):
        statistics_gap(torch.zeros(0), torch.ones(0), torch.zeros(0), torch.ones(0), 1e-5)


# batchnorm_gaps


@pytest.mark.parametrize(("name", "size"), [("conv4", 28), ("resnet12", 28), ("mobilenet_v2", 32)])
def test_the_source_data_has_no_gap_and_shifted_data_has_one(name: str, size: int) -> None:
    backbone = _calibrated(name, size)
    images = _dim_images(size)
    same = batchnorm_gaps(backbone, images, batch_size=5)  # batches of 5, 5, 2
    assert len(same) == len(backbone.blocks)
    assert same == pytest.approx([0.0] * len(same), abs=1e-6)
    bright = batchnorm_gaps(backbone, torch.full_like(images, 255))
    assert min(bright) > 1.0


def test_block_gaps_grow_with_the_shift_and_the_first_quadratically() -> None:
    """A brightness shift d moves the first conv's output mean by d times its weight sum, so
    the first block's gap grows as d^2 (up to the zero-padded border)."""
    backbone = _calibrated("conv4")
    images = _dim_images()
    gaps = [batchnorm_gaps(backbone, images + d) for d in (16, 32, 64, 128)]
    for smaller, larger in itertools.pairwise(gaps):
        assert all(g < h for g, h in zip(smaller, larger, strict=True))
    first = [g[0] for g in gaps]
    assert gaps[0][0] > 0.1
    assert [b / a for a, b in itertools.pairwise(first)] == pytest.approx([4.0] * 3, rel=0.1)


def test_first_layer_statistics_match_a_direct_float64_computation() -> None:
    """Exact statistics over all images, not averaged over batches, with population variance:
    the source variance is set small so that either mistake would move the gap."""
    torch.manual_seed(0)
    backbone = create_backbone("conv4", in_channels=1, image_size=28).eval()
    images = make_pattern_images(3, 4).images
    conv, bn = backbone.blocks[0][0], backbone.blocks[0][1]
    transform = ImageTransform(backbone.input_spec)
    with torch.no_grad():
        inputs = torch.cat([conv(transform(images[i : i + 5])) for i in range(0, 12, 5)])
    mean_t, var_t = _channel_stats(inputs)
    bn.running_mean.copy_(
        mean_t + 0.1 * var_t.sqrt() * torch.randn(len(mean_t), dtype=torch.float64)
    )
    bn.running_var.copy_(0.05 * var_t)
    mean_s, var_s = bn.running_mean.double(), bn.running_var.double()
    expected = ((mean_t - mean_s) ** 2 + (var_t.sqrt() - var_s.sqrt()) ** 2) / (var_s + bn.eps)
    gap = batchnorm_gaps(backbone, images, batch_size=5)[0]
    assert gap == pytest.approx(float(expected.mean()), rel=1e-9)


def test_mode_is_restored_and_hooks_removed_even_on_error() -> None:
    torch.manual_seed(0)
    backbone = create_backbone("conv4", in_channels=1, image_size=28).train()
    running_mean = backbone.blocks[0][1].running_mean.clone()
    gaps = batchnorm_gaps(backbone, make_pattern_images(2, 3).images, batch_size=4)
    assert backbone.training and all(m.training for m in backbone.modules())
    assert _all_pre_hooks(backbone) == 0
    assert len(gaps) == len(backbone.blocks) == 4 and all(math.isfinite(g) for g in gaps)
    torch.testing.assert_close(backbone.blocks[0][1].running_mean, running_mean)  # eval mode
    with pytest.raises(ValueError, match="3 channels"):  # fails inside the pass
        batchnorm_gaps(backbone, torch.zeros(2, 3, 28, 28, dtype=torch.uint8))
    assert backbone.training and _all_pre_hooks(backbone) == 0


@pytest.mark.parametrize(
    "images",
    [
        torch.zeros(2, 1, 28, 28),
        torch.zeros(1, 28, 28, dtype=torch.uint8),
        torch.zeros(0, 1, 28, 28, dtype=torch.uint8),
    ],
)
def test_batchnorm_gaps_refuses_images_that_are_not_uint8_nchw(images: torch.Tensor) -> None:
    backbone = create_backbone("conv4", in_channels=1, image_size=28)
    with pytest.raises(ValueError, match=r"non-empty uint8 \[N, C, H, W\]"):
        batchnorm_gaps(backbone, images)


@pytest.mark.parametrize("untracked", ["new layer", "flag turned off", "running stats None"])
def test_a_block_without_running_statistics_has_a_nan_gap(untracked: str) -> None:
    backbone = _calibrated("conv4")
    if untracked == "running stats None":
        backbone.blocks[1][1].running_mean = None
        backbone.blocks[1][1].running_var = None
    elif untracked == "flag turned off":  # buffers kept, but no longer maintained
        backbone.blocks[1][1].track_running_stats = False
    else:
        backbone.blocks[1][1] = nn.BatchNorm2d(64, track_running_stats=False)
    gaps = batchnorm_gaps(backbone, _dim_images())
    assert math.isnan(gaps[1])
    assert gaps[0] == pytest.approx(0.0, abs=1e-6)
    assert all(math.isfinite(g) for g in (gaps[0], *gaps[2:]))
