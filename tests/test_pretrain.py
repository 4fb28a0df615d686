"""Supervised whole-class pretraining: augmentation, the loop, exact resume, the CLI."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from episodes import LabelledImages
from metatl import evaluate as evaluate_cli
from metatl import pretrain as pretrain_cli
from metatl import train as train_cli
from metatl.config import load_config
from metatl.tracking import JsonlTracker, read_jsonl
from metatl.training import CheckpointError, NonFiniteLossError, build_learner, load_checkpoint
from metatl.training.augment import BatchAugment, derived_generator, random_crop
from metatl.training.preemption import Preempted
from metatl.training.pretrain import (
    Pretrainer,
    SupervisedModel,
    build_model,
    cosine_lr,
    run_pretraining,
)
from tests.conftest import make_pattern_images, stoppable


def tiny(folder_dataset: Path, out_dir: Path, name: str, *extra: str) -> list[str]:
    """24 classes x 20 images in batches of 64: 7 steps per epoch, 21 in all."""
    return [
        "data.dataset=image_folder",
        f"data.root={folder_dataset}",
        f"out_dir={out_dir}",
        f"name={name}",
        "pretrain.epochs=3",
        "pretrain.batch_size=64",
        "train.val_episodes=10",
        "train.log_every=2",
        "test.episodes=10",
        "test.shots=[1]",
        *extra,
    ]


def assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def signal_at_step(monkeypatch: pytest.MonkeyPatch, steps: set[int]) -> None:
    """SIGTERM this process during each of the given (1-based) optimiser steps."""
    calls = {"n": 0}
    forward = SupervisedModel.forward

    def interrupted(self: SupervisedModel, x: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] in steps:
            os.kill(os.getpid(), signal.SIGTERM)
        return forward(self, x)

    monkeypatch.setattr(SupervisedModel, "forward", interrupted)


# ---- augmentation --------------------------------------------------------------------------


def test_augmentation_is_a_function_of_the_seed() -> None:
    images = make_pattern_images(4, 8, seed=2).images  # uint8 [32, 1, 28, 28]
    augment = BatchAugment("crop_flip", 3)
    a = augment(images, derived_generator(0, 1, 2))
    assert a.shape == images.shape and a.dtype == torch.uint8
    assert torch.equal(a, augment(images, derived_generator(0, 1, 2)))
    assert not torch.equal(a, augment(images, derived_generator(0, 1, 3)))
    floats = images.float() / 255
    assert torch.equal(augment(floats, derived_generator(0, 1, 2)), a.float() / 255)
    assert torch.equal(BatchAugment("none", 3)(images, derived_generator(0)), images)


def test_a_crop_is_a_window_of_the_edge_padded_image() -> None:
    images = make_pattern_images(2, 16, seed=3).images.float()
    padding = 2
    cropped = random_crop(images, padding, derived_generator(5))
    padded = F.pad(images, (padding,) * 4, mode="replicate")
    offsets = set()
    for i in range(len(images)):
        matches = [
            (dy, dx)
            for dy in range(2 * padding + 1)
            for dx in range(2 * padding + 1)
            if torch.equal(cropped[i], padded[i, :, dy : dy + 28, dx : dx + 28])
        ]
        assert matches, f"image {i} is not a window of its padded copy"
        offsets.update(matches)
    assert len(offsets) > 5  # the offsets do vary


def test_glyphs_are_flipped_only_with_crop_flip() -> None:
    images = make_pattern_images(4, 8, seed=4).images
    assert torch.equal(BatchAugment("crop", 0)(images, derived_generator(1)), images)
    flipped = BatchAugment("crop_flip", 0)(images, derived_generator(1))
    mirrored = [torch.equal(f, im.flip(-1)) for f, im in zip(flipped, images, strict=True)]
    kept = [torch.equal(f, im) for f, im in zip(flipped, images, strict=True)]
    assert all(m or k for m, k in zip(mirrored, kept, strict=True))
    assert 0 < sum(mirrored) < len(images)
    with pytest.raises(ValueError, match="augment='rotate'"):
        BatchAugment("rotate", 2)


def test_cosine_lr_decays_from_base_to_zero() -> None:
    assert cosine_lr(0, 100, 0.1) == 0.1
    assert cosine_lr(50, 100, 0.1) == pytest.approx(0.05)
    assert cosine_lr(100, 100, 0.1) == 0.0


# ---- the loop ------------------------------------------------------------------------------


def test_loss_falls_and_the_best_is_kept(patterns: LabelledImages, tmp_path: Path) -> None:
    config = load_config(
        None,
        [
            "pretrain.epochs=4",
            "pretrain.batch_size=60",
            "train.val_episodes=20",
            "train.log_every=1",
            "device=cpu",
        ],
    )
    torch.manual_seed(0)
    val = make_pattern_images(10, 20, seed=7)
    tracker = JsonlTracker(tmp_path / "metrics.jsonl")
    trainer = Pretrainer(build_model(config, patterns), config, patterns, val, tmp_path, tracker)
    best = trainer.fit()
    tracker.close()
    records = read_jsonl(tmp_path / "metrics.jsonl")
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    assert trainer.batches_per_epoch == 10 and trainer.progress.step == 40
    assert losses[0] > 3.0 and sum(losses[-10:]) / 10 < 0.5 * losses[0]  # chance: ln 30 = 3.4
    assert [r["step"] for r in records if "val/accuracy" in r] == [10, 20, 30, 40]
    assert best["accuracy"] > 0.8  # 5-way 1-shot on unseen pattern classes
    saved = load_checkpoint(tmp_path / "best.pt")
    assert saved["val"] == best and saved["epoch"] == best["epoch"]
    assert {k.split(".")[0] for k in saved["model"]} == {"backbone", "classifier"}
    assert saved["model"]["classifier.weight"].shape == (30, 64)
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 4


def test_a_non_finite_loss_names_the_step_and_keeps_the_last_checkpoint(
    folder_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    forward, calls = SupervisedModel.forward, {"n": 0}

    def poisoned(self: SupervisedModel, x: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        logits = forward(self, x)
        return logits * float("nan") if calls["n"] == 10 else logits

    monkeypatch.setattr(SupervisedModel, "forward", poisoned)
    with pytest.raises(
        NonFiniteLossError,
        match=r"loss is nan at step 10 \(epoch 2, batch 3 of 7\); the last good checkpoint "
        r"is .*last.pt \(step 8\)",
    ):
        run_pretraining(
            load_config(None, tiny(folder_dataset, tmp_path, "nan", "train.checkpoint_every=4"))
        )
    last = load_checkpoint(tmp_path / "nan" / "last.pt")  # epoch 1 ended at step 7, then 8
    assert (last["epoch"], last["batch"], last["step"]) == (1, 1, 8)
    assert all(torch.isfinite(t).all() for t in last["model"].values() if t.is_floating_point())


# ---- exact resume --------------------------------------------------------------------------


def test_interrupted_and_resumed_equals_uninterrupted(
    folder_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Flips and label smoothing too: every random draw and setting must survive the resume.
    extra = ("pretrain.augment=crop_flip", "pretrain.label_smoothing=0.1")
    whole = run_pretraining(load_config(None, tiny(folder_dataset, tmp_path, "whole", *extra)))

    cut = tmp_path / "cut"
    # Step 3 is mid-epoch; step 7 is the last of epoch 1, so the stop follows its validation.
    signal_at_step(monkeypatch, {3, 7})
    with pytest.raises(Preempted, match=r"SIGTERM after step 3.*pretrain --resume"):
        stoppable(run_pretraining, load_config(None, tiny(folder_dataset, tmp_path, "cut", *extra)))
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers are put back
    assert (
        load_checkpoint(cut / "last.pt")["epoch"],
        load_checkpoint(cut / "last.pt")["batch"],
    ) == (0, 3)
    with pytest.raises(Preempted, match=r"SIGTERM after step 7"):
        stoppable(run_pretraining, load_config(), resume_dir=cut)
    assert load_checkpoint(cut / "last.pt")["epoch"] == 1
    monkeypatch.undo()
    resumed = run_pretraining(load_config(), resume_dir=cut)

    final, reference = load_checkpoint(cut / "last.pt"), load_checkpoint(whole.run_dir / "last.pt")
    assert final["step"] == reference["step"] == 21
    assert_same_tensors(final["model"], reference["model"])
    assert_same_tensors(load_checkpoint(cut)["model"], load_checkpoint(whole.run_dir)["model"])
    for a, b in zip(
        final["optimizer"]["state"].values(), reference["optimizer"]["state"].values(), strict=True
    ):
        assert_same_tensors(a, b)
    assert resumed.best_val == whole.best_val
    assert resumed.test["5-way 1-shot"]["protonet"].accuracies == (
        whole.test["5-way 1-shot"]["protonet"].accuracies
    )
    records = read_jsonl(cut / "metrics.jsonl")
    assert [r["step"] for r in records if "resumed_from_step" in r] == [3, 7]
    assert [r["step"] for r in records if "val/accuracy" in r] == [7, 14, 21]


def test_resume_refuses_corrupt_missing_and_finished(
    folder_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert pretrain_cli.main(tiny(folder_dataset, tmp_path, "run", "pretrain.epochs=1")) == 0
    capsys.readouterr()
    assert pretrain_cli.main(["--resume", str(run)]) == 2
    assert "has finished (results.json exists)" in capsys.readouterr().err

    (run / "results.json").unlink()
    intact = (run / "last.pt").read_bytes()
    (run / "last.pt").write_bytes(intact[: len(intact) // 2])  # a truncated copy
    assert pretrain_cli.main(["--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: checkpoint") and "is truncated or corrupt" in err
    assert len(err.strip().splitlines()) == 1
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        run_pretraining(load_config(), resume_dir=run)
    assert not (run / "results.json").exists()  # never a silent restart

    (run / "last.pt").unlink()
    assert pretrain_cli.main(["--resume", str(run)]) == 2
    assert "last.pt does not exist" in capsys.readouterr().err
    assert pretrain_cli.main(["--resume", str(run), "pretrain.lr=0.1"]) == 2
    assert "drop --config and the overrides" in capsys.readouterr().err


# ---- the CLI and the pipeline --------------------------------------------------------------


def test_cli_end_to_end_and_the_backbone_feeds_meta_training(
    folder_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert pretrain_cli.main(tiny(folder_dataset, tmp_path, "pre")) == 0
    run = tmp_path / "pre"
    out = capsys.readouterr().out
    assert "| 5-way 1-shot |" in out and "protonet" in out and "pixels" in out
    assert f"model.pretrained={run / 'best.pt'}" in out
    results = json.loads((run / "results.json").read_text())
    assert results["kind"] == "pretrain" and results["steps"] == 21
    assert results["best_val"]["epoch"] in (1, 2, 3)
    protonet = results["test"]["5-way 1-shot"]["protonet"]
    assert protonet["episodes"] == 10 and protonet["accuracy"] > 0.6
    records = read_jsonl(run / "metrics.jsonl")
    assert all(r["train/images_per_s"] > 0 for r in records if "train/loss" in r)
    assert [r["train/lr"] for r in records if "train/lr" in r][-1] < 0.01  # cosine to ~0
    assert load_config(run / "config.yaml").pretrain.epochs == 3
    assert (run / "report.md").is_file()
    summary = next(r["summary"] for r in records if r["kind"] == "summary")
    assert summary["test/5-way 1-shot/protonet/accuracy"] == protonet["accuracy"]

    # build_learner reads the backbone out of the checkpoint, weight for weight.
    best = load_checkpoint(run)["model"]
    config = load_config(None, [f"model.pretrained={run / 'best.pt'}"])
    learner = build_learner(config, in_channels=1, image_size=28)
    backbone = {f"backbone.{k}": v for k, v in learner.backbone.state_dict().items()}
    assert_same_tensors(backbone, {k: v for k, v in best.items() if k.startswith("backbone.")})

    # Meta-training with 0 steps tests that backbone as is: the very same numbers.
    pretrained = f"model.pretrained={run / 'best.pt'}"
    assert train_cli.main(tiny(folder_dataset, tmp_path, "meta", pretrained, "train.steps=0")) == 0
    meta = json.loads((tmp_path / "meta" / "results.json").read_text())
    assert meta["test"]["5-way 1-shot"]["protonet"] == protonet

    # So does evaluate on the pretraining checkpoint itself (its classifier is left out).
    out_dir = tmp_path / "eval"
    assert evaluate_cli.main(["--checkpoint", str(run), "--out-dir", str(out_dir)]) == 0
    evaluated = json.loads((out_dir / "results.json").read_text())
    assert evaluated["test"]["5-way 1-shot"]["protonet"] == protonet


def test_bad_settings_fail_before_the_run_directory(
    folder_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for override, message in [
        ("pretrain.lr=0", "error: pretrain.lr must be a finite number in (0, 10], got 0.0"),
        ("pretrain.augment=rotate", "error: pretrain.augment='rotate' is not allowed"),
        ("test.methods=[knn]", "error: unknown evaluation method 'knn'"),
    ]:
        assert pretrain_cli.main(tiny(folder_dataset, tmp_path, "bad", override)) == 2
        err = capsys.readouterr().err
        assert err.startswith(message) and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()
