"""metatl.fit and metatl.score: the command-line run and evaluation, from Python."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import metatl
from episodes import EpisodeSpec
from metatl.config import RunConfig
from metatl.training import ImageTransform, evaluate
from tests.conftest import make_pattern_images


def test_score_is_the_evaluation_on_fixed_episodes() -> None:
    torch.manual_seed(0)
    data = make_pattern_images(8, 10, seed=1)
    learner = metatl.create_learner("protonet", metatl.create_backbone("conv4", in_channels=1))
    result = metatl.score(learner, data, way=4, shot=2, query=3, episodes=12, seed=5)
    transform = ImageTransform(learner.backbone.input_spec)
    reference = evaluate({"x": learner}, data, EpisodeSpec(4, 2, 3), 12, 5, transform)["x"]
    assert result.accuracies == reference.accuracies and len(result.accuracies) == 12
    assert metatl.score(learner, data, way=4, shot=2, query=3, episodes=12, seed=6) != result


def test_fit_takes_a_config_a_file_or_overrides(folder_dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not with a RunConfig"):
        metatl.fit(RunConfig(), ["train.steps=1"])
    run = metatl.fit(
        [
            "data.dataset=image_folder",
            f"data.root={folder_dataset}",
            f"out_dir={tmp_path}",
            "name=fit",
            "train.steps=2",
            "train.val_every=2",
            "train.val_episodes=2",
            "test.episodes=2",
            "test.shots=[1]",
            "episodes.way=5",
            "tracking.wandb.mode=disabled",
        ]
    )
    assert run.run_dir == tmp_path / "fit" and (run.run_dir / "best.pt").is_file()
    assert set(run.test["5-way 1-shot"]) == {"protonet", "pixels"}
