"""Meta-training, evaluation and the train/evaluate entrypoints, end to end on tiny data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from episodes import EpisodeSpec, LabelledImages
from metatl import evaluate as evaluate_cli
from metatl import train as train_cli
from metatl.algorithms import ProtoNet
from metatl.backbones import create_backbone
from metatl.config import load_config
from metatl.tracking import read_jsonl
from metatl.training import (
    CheckpointError,
    ImageTransform,
    evaluate,
    load_checkpoint,
    save_checkpoint,
)

TINY = [
    "train.steps=40",
    "train.val_every=20",
    "train.val_episodes=20",
    "train.log_every=10",
    "episodes.way=5",
    "episodes.shot=2",
    "episodes.query=3",
    "test.episodes=30",
    "optim.lr=0.003",
]


def test_evaluate_is_paired_and_seeded(patterns: LabelledImages) -> None:
    torch.manual_seed(0)
    net = ProtoNet(create_backbone("conv4", hidden=8))
    pixels = ProtoNet(create_backbone("pixels"))
    transform = ImageTransform(net.backbone.input_spec)
    a = evaluate({"net": net, "pixels": pixels}, patterns, EpisodeSpec(5, 1, 5), 25, 11, transform)
    b = evaluate({"pixels": pixels}, patterns, EpisodeSpec(5, 1, 5), 25, 11, transform)
    assert a["pixels"].accuracies == b["pixels"].accuracies  # same episodes for every method
    assert len(a["net"].accuracies) == 25 and 0.0 <= a["net"].mean <= 1.0
    # Noisy shifted patterns: nearest class mean on pixels is well above chance (20%).
    assert a["pixels"].mean > 0.6


def test_train_cli_end_to_end(folder_dataset: Path, tmp_path: Path, capsys) -> None:
    args = [
        "data.dataset=image_folder",
        f"data.root={folder_dataset}",
        f"out_dir={tmp_path}",
        "name=tiny",
        *TINY,
    ]
    assert train_cli.main(args) == 0
    run = tmp_path / "tiny"
    out = capsys.readouterr().out
    assert "| 5-way 1-shot |" in out and "| 5-way 5-shot |" in out and "pixels" in out
    results = json.loads((run / "results.json").read_text())
    assert set(results["test"]) == {"5-way 1-shot", "5-way 5-shot"}
    learned = results["test"]["5-way 5-shot"]["protonet"]
    assert learned["episodes"] == 30 and learned["accuracy"] > 0.6
    assert results["best_val"]["step"] in (20, 40)
    records = read_jsonl(run / "metrics.jsonl")
    train_losses = [r["train/loss"] for r in records if "train/loss" in r]
    assert len(train_losses) == 4 and all(0 <= loss < 2 for loss in train_losses)
    assert [r["train/lr"] for r in records if "train/lr" in r] == [0.003] * 4
    assert sum("val/accuracy" in r for r in records) == 2
    assert (run / "best.pt").is_file() and (run / "last.pt").is_file()
    assert load_config(run / "config.yaml").train.steps == 40

    # The evaluate entrypoint reproduces the run's own test numbers on the same episodes.
    assert evaluate_cli.main(["--checkpoint", str(run), "--shot", "5", "--episodes", "30"]) == 0
    table = capsys.readouterr().out
    assert f"{100 * learned['accuracy']:.2f} ± {100 * learned['ci95']:.2f}" in table

    # A second run with the same name gets its own directory; nothing is overwritten.
    assert (
        train_cli.main(
            [*args, "train.steps=2", "train.val_every=1", "train.meta_batch=2", "test.shots=[1]"]
        )
        == 0
    )
    assert (tmp_path / "tiny-2" / "results.json").is_file()
    assert json.loads((run / "results.json").read_text()) == results


@pytest.mark.parametrize(
    "algorithm, extra",
    [("anil", ["model.maml.head=learned"]), ("fomaml", ["model.maml.inner_steps=2"])],
)
def test_maml_family_trains_from_the_cli(
    folder_dataset: Path, tmp_path: Path, algorithm: str, extra: list[str]
) -> None:
    args = [
        "data.dataset=image_folder",
        f"data.root={folder_dataset}",
        f"out_dir={tmp_path}",
        "name=maml",
        f"model.algorithm={algorithm}",
        "train.steps=20",
        "train.val_every=10",
        "train.val_episodes=10",
        "train.meta_batch=2",
        "episodes.way=5",
        "episodes.shot=1",
        "episodes.query=3",
        "test.episodes=10",
        "test.shots=[1]",
        "model.maml.test_inner_steps=2",
        "test.pixel_baseline=false",
        *extra,
    ]
    assert train_cli.main(args) == 0
    results = json.loads((tmp_path / "maml" / "results.json").read_text())
    assert results["test"]["5-way 1-shot"][algorithm]["accuracy"] > 0.3  # chance is 0.2
    state = load_checkpoint(tmp_path / "maml")["model"]
    assert ("head.weight" in state) == ("model.maml.head=learned" in extra)


def test_per_episode_learners_test_a_trained_backbone(folder_dataset: Path, tmp_path: Path) -> None:
    common = [
        "data.dataset=image_folder",
        f"data.root={folder_dataset}",
        f"out_dir={tmp_path}",
        "test.episodes=20",
        "test.shots=[5]",
    ]
    assert train_cli.main([*common, "name=proto", *TINY[:-2]]) == 0
    backbone = tmp_path / "proto" / "best.pt"
    assert (
        train_cli.main(
            [
                *common,
                "name=linear",
                "model.algorithm=linear",
                "train.steps=0",
                f"model.pretrained={backbone}",
                "test.methods=[protonet]",
            ]
        )
        == 0
    )
    results = json.loads((tmp_path / "linear" / "results.json").read_text())["test"]
    proto = json.loads((tmp_path / "proto" / "results.json").read_text())["test"]
    assert set(results["5-way 5-shot"]) == {"linear", "protonet", "pixels"}
    # Same backbone, same episodes: nearest class mean scores exactly as in the training run.
    assert results["5-way 5-shot"]["protonet"] == proto["5-way 5-shot"]["protonet"]
    assert results["5-way 5-shot"]["linear"]["accuracy"] > 0.6


def test_cli_errors_are_one_line(folder_dataset: Path, tmp_path: Path, capsys) -> None:
    assert train_cli.main(["optim.lrr=1"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: unknown config key 'optim.lrr'; keys here: optim.lr, optim.weight_decay, "
        "optim.lr_decay_every, optim.lr_decay"
    )
    assert (
        train_cli.main(
            [
                "data.dataset=image_folder",
                f"data.root={folder_dataset}",
                f"out_dir={tmp_path}",
                "episodes.way=30",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has 24 classes" in err and "n_way=30" in err
    # Test episodes too large for the test split fail before any training.
    folder = ["data.dataset=image_folder", f"data.root={folder_dataset}", f"out_dir={tmp_path}"]
    assert train_cli.main([*folder, "test.shots=[1,10]"]) == 2
    err = capsys.readouterr().err
    assert "/test': class 'class032' has 20 images" in err and "10 + 15 = 25" in err
    assert train_cli.main([*folder, "model.backbone=conv5"]) == 2
    assert "unknown backbone 'conv5'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir()), "a failed start must not leave a run directory"
    assert evaluate_cli.main(["--checkpoint", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_checkpoints_are_atomic_and_corruption_is_named(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "best.pt", {"model": {"w": torch.ones(3)}, "step": 5})
    assert load_checkpoint(tmp_path)["step"] == 5
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]  # no temporary left behind
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path)
    torch.save({"foo": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a metatl checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_image_transform_normalises_replicates_and_resizes() -> None:
    from metatl.backbones import InputSpec

    grey = torch.tensor([[0, 255], [255, 0]], dtype=torch.uint8).view(1, 1, 2, 2)
    same = ImageTransform(InputSpec(1, 2, (0.5,), (0.25,)))(grey)
    assert same.tolist() == [[[[-2.0, 2.0], [2.0, -2.0]]]]
    rgb = ImageTransform(InputSpec(3, 4, (0.0, 0.5, 1.0), (1.0, 1.0, 1.0)))(grey.expand(2, 1, 2, 2))
    assert rgb.shape == (2, 3, 4, 4)
    assert torch.allclose(rgb[:, 1], rgb[:, 0] - 0.5) and torch.allclose(rgb[:, 2], rgb[:, 0] - 1)
    with pytest.raises(ValueError, match="images have 3 channels but the backbone expects 1"):
        ImageTransform(InputSpec(1, 2, (0.5,), (0.5,)))(torch.zeros(1, 3, 2, 2, dtype=torch.uint8))


def test_a_run_tracks_to_an_offline_wandb_run_in_its_directory(
    folder_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WANDB_MODE")
    args = [
        "data.dataset=image_folder",
        f"data.root={folder_dataset}",
        f"out_dir={tmp_path}",
        "name=tracked",
        *TINY,
        "train.steps=4",
        "train.val_every=2",
        "test.shots=[1]",
        "tracking.wandb.mode=offline",
        "tracking.wandb.tags=[unit,offline]",
    ]
    assert train_cli.main(args) == 0
    run = tmp_path / "tracked"
    (offline,) = (run / "wandb").glob("offline-run-*")
    assert offline.name.endswith((run / "wandb_run_id").read_text().strip())
    (log,) = offline.glob("*.wandb")
    assert log.stat().st_size > 0
    summary = [r for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "summary"]
    assert summary[0]["summary"]["val/best_step"] in (2, 4)
    assert not Path("wandb").exists()  # nothing in the working directory
