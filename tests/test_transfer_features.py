"""Per-block features and scores, and the example that uses them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from metatl.backbones import create_backbone
from metatl.training import ImageTransform
from metatl.transfer.features import block_features, block_scores
from tests.conftest import make_pattern_images

REPO = Path(__file__).parents[1]


@pytest.mark.parametrize("name", ["conv4", "resnet12"])
def test_the_last_block_is_the_backbone_and_the_others_are_pooled_maps(name: str) -> None:
    torch.manual_seed(0)
    backbone = create_backbone(name, in_channels=1, image_size=28).train()
    images = make_pattern_images(3, 4).images  # uint8 [12, 1, 28, 28]
    features = block_features(backbone, images, batch_size=5)  # batches of 5, 5, 2
    assert backbone.training  # the mode it was in
    assert len(features) == len(backbone.blocks)
    backbone.eval()
    with torch.no_grad():
        expected = backbone(ImageTransform(backbone.input_spec)(images))
        h = ImageTransform(backbone.input_spec)(images)
        for k, block in enumerate(backbone.blocks[:-1]):
            h = block(h)
            torch.testing.assert_close(features[k], h.mean(dim=(2, 3)))
    torch.testing.assert_close(features[-1], expected)
    assert all(f.shape[0] == 12 and f.dtype == torch.float32 for f in features)


def test_block_features_refuses_float_images() -> None:
    backbone = create_backbone("conv4", in_channels=1, image_size=28)
    with pytest.raises(ValueError, match=r"uint8 \[N, C, H, W\]"):
        block_features(backbone, torch.zeros(2, 1, 28, 28))


def test_block_scores_rank_a_predictive_block_above_noise() -> None:
    """A backbone whose blocks see the class pattern scores higher than a random one's
    deepest block when the data are pure noise."""
    torch.manual_seed(0)
    backbone = create_backbone("conv4", in_channels=1, image_size=28)
    patterns = make_pattern_images(4, 20, noise=10.0)
    noise = make_pattern_images(4, 20, noise=10.0)
    noise = type(noise)(
        images=noise.images[torch.randperm(len(noise))],
        labels=noise.labels,
        class_names=noise.class_names,
        name="shuffled",
    )
    signal_rows, noise_rows = block_scores(backbone, patterns), block_scores(backbone, noise)
    assert [r["block"] for r in signal_rows] == [1, 2, 3, 4]
    assert all(s["logme"] > n["logme"] for s, n in zip(signal_rows, noise_rows, strict=True))


def test_the_example_runs_quickly_and_training_helps_the_top_block() -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "examples/transferability_by_block.py", "--quick"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    rows = re.findall(
        r"^\| (random init|trained) \| (\d) \| 64 \| (-?[\d.]+) \|", result.stdout, re.M
    )
    assert len(rows) == 8, result.stdout
    logme = {(name, int(block)): float(value) for name, block, value in rows}
    assert logme[("trained", 4)] > logme[("random init", 4)]
