"""Source specs, checkpoints loaded back, and what each kind of source brings along."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from metatl.algorithms import ProtoNet
from metatl.backbones.torchvision_models import torchvision_state_dict
from metatl.config import load_config
from metatl.training import run_experiment
from metatl.training.checkpoint import CheckpointError
from metatl.training.pretrain import run_pretraining
from metatl.training.restore import load_learner
from metatl.transfer.features import source_scores
from metatl.transfer.scores import leep
from metatl.transfer.sources import SourceSpecError, load_source, parse_source_spec
from tests.conftest import make_pattern_images
from tests.test_pretrained import real_weights_or_skip


def _base(folder_dataset: Path, out_dir: Path, name: str) -> list[str]:
    return [
        "data.dataset=image_folder",
        f"data.root={folder_dataset}",
        f"out_dir={out_dir}",
        f"name={name}",
        "tracking.wandb.mode=disabled",
        "test.episodes=5",
        "test.shots=[1]",
        "train.val_episodes=5",
    ]


@pytest.fixture(scope="module")
def checkpoints(folder_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A ProtoNet meta-trained for 6 steps and a Conv-4 pretrained for one epoch."""
    out = tmp_path_factory.mktemp("sources")
    torch.manual_seed(0)
    meta_options = ["train.steps=6", "train.val_every=3", "episodes.way=5", "episodes.shot=2"]
    meta = run_experiment(load_config(None, [*_base(folder_dataset, out, "meta"), *meta_options]))
    pre = run_pretraining(
        load_config(
            None,
            [*_base(folder_dataset, out, "pre"), "pretrain.epochs=1", "pretrain.batch_size=32"],
        )
    )
    return {"meta": meta.run_dir, "pre": pre.run_dir}


def test_specs_name_their_sources() -> None:
    assert parse_source_spec("net=conv4@random") == ("net", "conv4@random")
    assert parse_source_spec("mobilenet_v2@IMAGENET1K_V1") == (
        "mobilenet_v2-IMAGENET1K_V1",
        "mobilenet_v2@IMAGENET1K_V1",
    )
    assert parse_source_spec("runs/my-run") == ("my-run", "runs/my-run")
    assert parse_source_spec("runs/my-run/best.pt") == ("my-run", "runs/my-run/best.pt")
    for bad, message in (
        ("x=", "has no spec"),
        ("a/b=conv4@random", "must be letters"),
        ("pixels=conv4@random", "not 'pixels'"),
    ):
        with pytest.raises(SourceSpecError, match=message):
            parse_source_spec(bad)


def test_a_random_source_is_seeded_and_knows_no_source() -> None:
    a = load_source("conv4@random", in_channels=1, image_size=28, seed=3)
    b = load_source("conv4@random", in_channels=1, image_size=28, seed=3)
    c = load_source("conv4@random", in_channels=1, image_size=28, seed=4)
    first = next(a.backbone.parameters())
    assert torch.equal(first, next(b.backbone.parameters()))
    assert not torch.equal(first, next(c.backbone.parameters()))
    assert a.random_init and a.classifier is None and a.learner is None and a.n_blocks == 4
    rows, overall = source_scores(a, make_pattern_images(6, 10), 60)
    assert all(math.isnan(r["gap"]) and math.isnan(r["mmd"]) for r in rows)
    assert math.isnan(overall["leep"]) and math.isnan(overall["nce"])


def test_bad_specs_say_what_a_spec_can_be() -> None:
    with pytest.raises(SourceSpecError, match="unknown backbone 'nonet'"):
        load_source("nonet@random", in_channels=1, image_size=28)
    with pytest.raises(SourceSpecError, match="neither <backbone>@random"):
        load_source("runs/missing-run", in_channels=1, image_size=28)
    with pytest.raises(SourceSpecError, match="valid weight names"):
        load_source("mobilenet_v2@NOPE", in_channels=1, image_size=28)


def test_imagenet_weights_bring_their_classifier() -> None:
    """The classifier of mobilenet_v2@IMAGENET1K_V1 on the backbone's features gives
    torchvision's own logits (weights installed by `make weights`)."""
    from torchvision import models

    real_weights_or_skip()
    source = load_source("mobilenet_v2@IMAGENET1K_V1", in_channels=3, image_size=64)
    assert source.classifier is not None and source.classifier.out_features == 1000
    reference = models.mobilenet_v2()
    reference.load_state_dict(torchvision_state_dict("mobilenet_v2", "IMAGENET1K_V1"))
    reference.eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = source.classifier(source.backbone(x))
        torchvision_logits = reference(x)
    torch.testing.assert_close(ours, torchvision_logits, rtol=1e-4, atol=1e-4)
    assert not source.random_init and source.data is None


def test_checkpoints_bring_their_adaptation_classifier_and_data(
    checkpoints: dict[str, Path], folder_dataset: Path
) -> None:
    meta = load_source(f"m={checkpoints['meta']}", in_channels=1, image_size=28)
    assert isinstance(meta.learner, ProtoNet) and meta.classifier is None
    assert meta.data is not None and meta.data.root == str(folder_dataset)
    loaded = load_learner(checkpoints["meta"] / "best.pt")
    assert loaded.kind == "meta"
    for a, b in zip(
        meta.backbone.state_dict().values(),
        loaded.learner.backbone.state_dict().values(),
        strict=True,
    ):
        assert torch.equal(a, b)

    pre = load_source(str(checkpoints["pre"]), in_channels=1, image_size=28)
    assert pre.name == "pre" and pre.learner is None and pre.classifier is not None
    assert pre.classifier.out_features == 24  # the folder dataset's training classes
    target = make_pattern_images(6, 10, seed=9)
    rows, overall = source_scores(pre, target, 60)
    assert all(math.isfinite(r["gap"]) and math.isfinite(r["mmd"]) for r in rows)
    with torch.no_grad():
        probs = torch.softmax(pre.classifier(pre.backbone.eval()(pre_input(pre, target))), 1)
    assert overall["leep"] == pytest.approx(leep(probs.double(), target.labels), rel=1e-5)


def pre_input(source, data):
    from metatl.training.data import ImageTransform

    return ImageTransform(source.backbone.input_spec)(data.images)


def test_a_damaged_checkpoint_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "best.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="best.pt"):
        load_source(str(tmp_path), in_channels=1, image_size=28)
