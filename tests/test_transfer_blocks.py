"""Block prefixes: a backbone cut after block k, sharing the weights, for probes per block."""

from __future__ import annotations

import pytest
import torch

from episodes import EpisodeSpec
from metatl.algorithms import ProtoNet
from metatl.backbones import create_backbone
from metatl.training.data import ImageTransform
from metatl.training.evaluation import evaluate
from metatl.transfer.blocks import BlockPrefix, block_prefixes
from metatl.transfer.features import block_features
from tests.conftest import make_pattern_images


@pytest.mark.parametrize("name", ["conv4", "resnet12"])
def test_prefix_k_outputs_block_k_and_the_last_is_the_backbone(name: str) -> None:
    torch.manual_seed(0)
    backbone = create_backbone(name, in_channels=1, image_size=28).eval()
    images = make_pattern_images(3, 2).images
    x = ImageTransform(backbone.input_spec)(images)
    prefixes = block_prefixes(backbone)
    expected = block_features(backbone, images)
    assert [p.out_dim for p in prefixes] == [f.shape[1] for f in expected]
    with torch.no_grad():
        for prefix, features in zip(prefixes, expected, strict=True):
            torch.testing.assert_close(prefix.eval()(x), features, rtol=1e-5, atol=1e-5)
        assert torch.equal(prefixes[-1](x), backbone(x))


def test_a_prefix_shares_the_weights_and_leaves_the_modes_alone() -> None:
    backbone = create_backbone("conv4", in_channels=1, image_size=28)
    backbone.train()
    prefix = BlockPrefix(backbone, 2)
    assert all(m.training for m in backbone.modules())  # building it did not flip them
    first = next(backbone.blocks[0].parameters())
    assert next(prefix.parameters()).data_ptr() == first.data_ptr()
    with pytest.raises(ValueError, match="blocks 1..4"):
        BlockPrefix(backbone, 5)


def test_nearest_class_mean_on_every_block_scores_the_same_episodes() -> None:
    torch.manual_seed(0)
    backbone = create_backbone("conv4", in_channels=1, image_size=28)
    data = make_pattern_images(8, 10, seed=3)
    learners = {f"ncm@{p.k}": ProtoNet(p) for p in block_prefixes(backbone)}
    results = evaluate(
        learners, data, EpisodeSpec(5, 1, 5), 20, 0, ImageTransform(backbone.input_spec)
    )
    assert len({r.episode_set for r in results.values()}) == 1
    assert all(r.mean > 0.3 for r in results.values())  # 5-way: chance is 0.2
