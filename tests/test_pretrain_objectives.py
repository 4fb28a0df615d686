"""Pretraining objectives: rotation, SimCLR, supervised+rotation next to the supervised one.

Checked: NT-Xent against a loop over the pairs, the four turns against rot90, the supervised
objective against the plain supervised step it replaced, the self-supervised objectives on a
training split whose labels cannot be read, few-shot gains over a random backbone, exact
resume, and the CLI end to end.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import os
import re
import signal
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from episodes import LabelledImages
from metatl import pretrain as pretrain_cli
from metatl.config import ConfigError, load_config
from metatl.config.load import CHOICES
from metatl.tracking import JsonlTracker, read_jsonl
from metatl.training import build_learner, load_checkpoint
from metatl.training.augment import BatchAugment, derived_generator
from metatl.training.data import ImageTransform
from metatl.training.objectives import (
    OBJECTIVES,
    LabelFreeObjective,
    LabelledObjective,
    SimCLR,
    build_objective,
    contrastive_view,
    nt_xent,
    rotate4,
    rotation_targets,
)
from metatl.training.preemption import Preempted
from metatl.training.pretrain import (
    Pretrainer,
    PretrainModel,
    SupervisedModel,
    build_model,
    cosine_lr,
    run_pretraining,
)
from tests.conftest import make_pattern_images, stoppable


class LabelRead(BaseException):
    """A training label was read (a BaseException: no `except Exception` eats it)."""


class LabelsTrapped(LabelledImages):
    """A split whose ``labels`` raise :class:`LabelRead` once armed (after construction,
    whose checks read them)."""

    def __getattribute__(self, name: str):
        if name == "labels" and object.__getattribute__(self, "__dict__").get("armed"):
            raise LabelRead(f"the labels of {object.__getattribute__(self, 'name')} were read")
        return object.__getattribute__(self, name)


def trap_labels(data: LabelledImages) -> LabelledImages:
    trapped = LabelsTrapped(data.images, data.labels, data.class_names, data.name)
    object.__setattr__(trapped, "armed", True)
    return trapped


def trainer(
    tmp_path: Path, train: LabelledImages, val: LabelledImages, *overrides: str
) -> Pretrainer:
    config = load_config(None, ["device=cpu", "train.val_episodes=40", *overrides])
    torch.manual_seed(0)
    tracker = JsonlTracker(tmp_path / "metrics.jsonl")
    return Pretrainer(build_model(config, train), config, train, val, tmp_path, tracker)


def tiny(folder_dataset: Path, out_dir: Path, name: str, *extra: str) -> list[str]:
    """24 classes x 20 images in batches of 48: 10 steps per epoch, 20 in all."""
    return [
        "data.dataset=image_folder",
        f"data.root={folder_dataset}",
        f"out_dir={out_dir}",
        f"name={name}",
        "pretrain.epochs=2",
        "pretrain.batch_size=48",
        "train.val_episodes=10",
        "train.log_every=5",
        "test.episodes=10",
        "test.shots=[1]",
        *extra,
    ]


def assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ---- the pure functions --------------------------------------------------------------------


def reference_nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> float:
    """NT-Xent as Chen et al. 2020 write it (Algorithm 1), one pair at a time."""
    n = len(z1)
    z = [v / v.norm() for v in [*z1, *z2]]
    total = 0.0
    for i in range(2 * n):
        twin = (i + n) % (2 * n)
        sims = {k: float(z[i] @ z[k]) / temperature for k in range(2 * n) if k != i}
        denominator = sum(math.exp(s) for s in sims.values())
        total += -math.log(math.exp(sims[twin]) / denominator)
    return total / (2 * n)


@pytest.mark.parametrize(("n", "dim", "temperature"), [(2, 3, 0.5), (5, 8, 0.1), (7, 4, 2.0)])
def test_nt_xent_equals_the_loop_over_pairs(n: int, dim: int, temperature: float) -> None:
    gen = torch.Generator().manual_seed(n * dim)
    z1, z2 = torch.randn(n, dim, generator=gen), torch.randn(n, dim, generator=gen)
    loss, _ = nt_xent(z1.double(), z2.double(), temperature)
    assert float(loss) == pytest.approx(reference_nt_xent(z1.double(), z2.double(), temperature))
    # The scale of a projection does not matter (cosine similarity), the pairing does.
    assert float(nt_xent(3 * z1, z2, temperature)[0]) == pytest.approx(float(loss), rel=1e-5)
    shuffled = z2[torch.arange(n).roll(1)]
    assert float(nt_xent(z1, shuffled, temperature)[0]) != pytest.approx(float(loss))
    # Twins that are near copies: the loss is at its floor for well-separated vectors and
    # every view finds its twin.
    loss, accuracy = nt_xent(z1, z1 + 1e-4 * z2, temperature)
    assert float(accuracy) == 1.0 and float(loss) < float(nt_xent(z1, z2, temperature)[0])


def test_rotations_are_exact_quarter_turns() -> None:
    images = make_pattern_images(3, 2, size=6, seed=1).images.float()  # [6, 1, 6, 6]
    turned = rotate4(images)
    assert turned.shape == (24, 1, 6, 6)
    assert rotation_targets(24).tolist() == [k for k in range(4) for _ in range(6)]
    s = 6
    for k in range(4):
        for i in range(len(images)):
            out, im = turned[k * len(images) + i, 0], images[i, 0]
            assert torch.equal(out, torch.rot90(im, k))
            # Counter-clockwise, pixel by pixel: a quarter turn maps (y, x) to (s-1-x, y).
            expected = im
            for _ in range(k):
                expected = torch.stack([expected[:, s - 1 - y] for y in range(s)])
            assert torch.equal(out, expected)
    with pytest.raises(ValueError, match="square"):
        rotate4(torch.zeros(1, 1, 4, 5))
    with pytest.raises(ValueError, match="four turns"):
        rotation_targets(6)


def test_the_rotation_objective_turns_the_augmented_batch() -> None:
    config = load_config(None, ["pretrain.objective=rotation", "pretrain.crop_padding=2"])
    data = make_pattern_images(4, 5, seed=2)
    transform = ImageTransform(build_model(config, data).backbone.input_spec)
    augment = BatchAugment("crop", 2)
    objective = build_objective(config.pretrain, transform, augment)
    inputs = objective.inputs(data.images, derived_generator(0, 1, 2))
    assert torch.equal(inputs, rotate4(augment(transform(data.images), derived_generator(0, 1, 2))))
    perfect = 50 * F.one_hot(rotation_targets(len(inputs)), 4).float()
    loss, accuracy = objective.criterion((perfect,))
    assert accuracy == 1.0 and float(loss) < 1e-6


def test_simclr_views_are_seeded_crops_with_jitter() -> None:
    images = make_pattern_images(4, 4, seed=3).images
    a = contrastive_view(images, derived_generator(1), 0.3, 0.4)
    assert a.shape == images.shape and a.dtype == torch.float32
    assert float(a.min()) >= 0 and float(a.max()) <= 255
    assert torch.equal(a, contrastive_view(images, derived_generator(1), 0.3, 0.4))
    gen = derived_generator(2)
    first, second = contrastive_view(images, gen, 0.3, 0.4), contrastive_view(images, gen, 0.3, 0.4)
    assert (first - second).abs().mean() > 5  # two views of an image differ
    # Crops only (no jitter): every view keeps the image's range of grey levels roughly.
    plain = contrastive_view(images, derived_generator(3), 1.0, 0.0)
    assert (plain - images.float()).abs().mean() < (first - images.float()).abs().mean()


def test_the_presets_are_the_supervised_one_with_another_objective() -> None:
    """Same data, backbone, validation and test episodes: their results pair up."""
    configs = Path(__file__).parents[1] / "configs"
    supervised = configs / "pretrain_conv4_glyphs.yaml"
    for name, objective in [
        ("rotation", "rotation"),
        ("supervised_rotation", "supervised+rotation"),
    ]:
        preset = load_config(configs / f"pretrain_conv4_glyphs_{name}.yaml")
        assert preset == load_config(supervised, [f"pretrain.objective={objective}"])
    simclr, base = (
        load_config(configs / "pretrain_conv4_glyphs_simclr.yaml"),
        load_config(supervised),
    )
    assert simclr.pretrain.objective == "simclr"
    assert (simclr.data, simclr.model, simclr.test) == (base.data, base.model, base.test)
    assert simclr.train == dataclasses.replace(base.train, log_every=simclr.train.log_every)


def test_the_objectives_are_the_configs_choices() -> None:
    assert CHOICES["pretrain.objective"] == OBJECTIVES
    assert load_config().pretrain.objective == "supervised"
    with pytest.raises(ConfigError, match=r"pretrain.objective='jigsaw' is not allowed"):
        load_config(None, ["pretrain.objective=jigsaw"])
    for override, message in [
        ("pretrain.simclr_temperature=0", "pretrain.simclr_temperature must be a finite number"),
        ("pretrain.simclr_crop_scale=0", "pretrain.simclr_crop_scale must be a finite number"),
        ("pretrain.simclr_jitter=1", "pretrain.simclr_jitter must be a finite number in [0, 1)"),
        ("pretrain.rotation_weight=-1", "pretrain.rotation_weight must be a finite number"),
        ("pretrain.simclr_dim=0", "pretrain.simclr_dim must be an integer in [1, "),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_config(None, [override])


# ---- supervised: unchanged -----------------------------------------------------------------


def plain_supervised_steps(
    config, data: LabelledImages, steps: int
) -> tuple[list[float], dict[str, torch.Tensor]]:
    """The supervised step as it was written before objectives existed, step by step."""
    p = config.pretrain
    torch.manual_seed(0)
    model = build_model(config, data).to(memory_format=torch.channels_last)
    transform = ImageTransform(model.backbone.input_spec)
    augment = BatchAugment(p.augment, p.crop_padding)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay
    )
    batch = min(p.batch_size, len(data))
    per_epoch = len(data) // batch
    losses = []
    for step in range(1, steps + 1):
        epoch, index = divmod(step - 1, per_epoch)
        order = torch.randperm(len(data), generator=derived_generator(config.seed, 0, epoch))
        items = order[index * batch : (index + 1) * batch]
        images = augment(
            transform(data.images[items]), derived_generator(config.seed, 1, epoch, index)
        )
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step - 1, p.epochs * per_epoch, p.lr)
        model.train()
        logits = model(images.contiguous(memory_format=torch.channels_last))
        loss = F.cross_entropy(logits, data.labels[items], label_smoothing=p.label_smoothing)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses, model.state_dict()


@pytest.mark.parametrize(
    "extra", [[], ["pretrain.augment=crop_flip", "pretrain.label_smoothing=0.1"]]
)
def test_supervised_is_the_plain_supervised_step_bit_for_bit(
    tmp_path: Path, extra: list[str]
) -> None:
    data, val = make_pattern_images(12, 10, seed=3), make_pattern_images(6, 10, seed=4)
    overrides = ["pretrain.epochs=2", "pretrain.batch_size=32", "device=cpu", *extra]
    config = load_config(None, overrides)
    losses, weights = plain_supervised_steps(config, data, 5)
    steps = trainer(tmp_path, data, val, *overrides)
    assert type(steps.model) is SupervisedModel  # forward = the class logits, as before
    assert [steps.train_step(s)["loss"] for s in range(1, 6)] == losses
    assert_same_tensors(steps.model.state_dict(), weights)


# ---- images only ---------------------------------------------------------------------------


@pytest.mark.parametrize("objective", ["rotation", "simclr"])
def test_self_supervised_objectives_never_read_a_training_label(
    objective: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, val = make_pattern_images(8, 8, seed=5), make_pattern_images(5, 8, seed=6)
    steps = trainer(
        tmp_path,
        trap_labels(data),
        val,
        f"pretrain.objective={objective}",
        "pretrain.epochs=1",
        "pretrain.batch_size=16",
        "train.val_episodes=4",
        "train.val_query=5",
    )
    assert isinstance(steps.objective, LabelFreeObjective)
    # What the objective's step is handed: the batch's images, a generator, nothing else.
    seen = []
    inputs = type(steps.objective).inputs

    def spy(self, *args: object) -> torch.Tensor:
        seen.append(args)
        return inputs(self, *args)

    monkeypatch.setattr(type(steps.objective), "inputs", spy)
    best = steps.fit()
    assert steps.progress.step == 4 and 0 <= best["accuracy"] <= 1
    assert len(seen) == 4
    for images, generator in seen:
        assert images.dtype == torch.uint8 and images.shape == (16, 1, 28, 28)
        assert isinstance(generator, torch.Generator)
    # The criterion has no labels to take; the supervised ones do, and do read them.
    assert list(inspect.signature(steps.objective.criterion).parameters) == ["outputs"]
    for labelled in ("supervised", "supervised+rotation"):
        steps = trainer(tmp_path, trap_labels(data), val, f"pretrain.objective={labelled}")
        assert isinstance(steps.objective, LabelledObjective)
        with pytest.raises(LabelRead):
            steps.train_step(1)


# ---- learning ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("objective", "floor"), [("rotation", 0.88), ("simclr", 0.86), ("supervised+rotation", 0.88)]
)
def test_a_short_pretraining_beats_the_random_backbone(
    objective: str, floor: float, tmp_path: Path
) -> None:
    """15 steps of 40 images: nearest class mean, 5-way 1-shot on 10 unseen classes."""
    train, val = make_pattern_images(30, 20), make_pattern_images(10, 20, seed=7)
    steps = trainer(
        tmp_path,
        train,
        val,
        f"pretrain.objective={objective}",
        "pretrain.epochs=1",
        "pretrain.batch_size=40",
        "train.log_every=5",
    )
    random_backbone = steps.validate().mean
    best = steps.fit()
    records = read_jsonl(tmp_path / "metrics.jsonl")
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    assert random_backbone == pytest.approx(0.747, abs=0.02)
    assert best["accuracy"] > floor > random_backbone + 0.1
    assert losses[-1] < losses[0]
    kept = load_checkpoint(tmp_path / "best.pt")["model"]
    heads = {"rotation": {"rotation_head"}, "simclr": {"projection_head"}}.get(
        objective, {"classifier", "rotation_head"}
    )
    assert {k.split(".")[0] for k in kept} == {"backbone", *heads}


def test_a_model_without_the_objectives_head_is_refused(tmp_path: Path) -> None:
    data = make_pattern_images(4, 4)
    config = load_config(None, ["pretrain.objective=rotation", "device=cpu"])
    model = SupervisedModel(build_model(config, data).backbone, data.num_classes)
    with pytest.raises(ConfigError, match="trains the model's rotation_head, which this model"):
        Pretrainer(model, config, data, data, tmp_path, JsonlTracker(tmp_path / "m.jsonl"))
    assert isinstance(build_model(config, data), PretrainModel)


# ---- resume and the CLI --------------------------------------------------------------------


def test_an_interrupted_simclr_run_resumes_exactly(
    folder_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Resume is the loop's, whatever the objective: SimCLR's two views per image and its
    projection head come back exactly (the supervised run: tests/test_pretrain.py)."""
    extra = ("pretrain.objective=simclr",)
    whole = run_pretraining(load_config(None, tiny(folder_dataset, tmp_path, "whole", *extra)))

    forward, calls = SimCLR.forward, {"n": 0}

    def interrupted(self, model: torch.nn.Module, inputs: torch.Tensor):
        calls["n"] += 1
        if calls["n"] in (4, 10):  # mid-epoch; the end of epoch 1 (after its validation)
            os.kill(os.getpid(), signal.SIGTERM)
        return forward(self, model, inputs)

    monkeypatch.setattr(SimCLR, "forward", interrupted)
    cut = tmp_path / "cut"
    with pytest.raises(Preempted, match=r"SIGTERM after step 4"):
        stoppable(run_pretraining, load_config(None, tiny(folder_dataset, tmp_path, "cut", *extra)))
    with pytest.raises(Preempted, match=r"SIGTERM after step 10"):
        stoppable(run_pretraining, load_config(), resume_dir=cut)
    monkeypatch.undo()
    resumed = run_pretraining(load_config(), resume_dir=cut)

    final, reference = load_checkpoint(cut / "last.pt"), load_checkpoint(whole.run_dir / "last.pt")
    assert final["step"] == reference["step"] == 20
    assert {k.split(".")[0] for k in final["model"]} == {"backbone", "projection_head"}
    assert_same_tensors(final["model"], reference["model"])
    for a, b in zip(
        final["optimizer"]["state"].values(), reference["optimizer"]["state"].values(), strict=True
    ):
        assert_same_tensors(a, b)
    assert resumed.best_val == whole.best_val
    assert resumed.test["5-way 1-shot"]["protonet"].accuracies == (
        whole.test["5-way 1-shot"]["protonet"].accuracies
    )


def test_cli_rotation_without_labels_feeds_model_pretrained(
    folder_dataset: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The whole run (data, training, validation, test) with the train split's labels
    unreadable; its best.pt holds the rotation head, model.pretrained reads the backbone."""
    from metatl.training import lifecycle

    load_splits = lifecycle.load_splits

    def train_without_labels(config):
        splits = load_splits(config)
        return splits | {"train": trap_labels(splits["train"])}

    monkeypatch.setattr(lifecycle, "load_splits", train_without_labels)
    args = tiny(folder_dataset, tmp_path, "rot", "pretrain.objective=rotation")
    assert pretrain_cli.main(args) == 0
    run = tmp_path / "rot"
    assert f"model.pretrained={run / 'best.pt'}" in capsys.readouterr().out
    results = json.loads((run / "results.json").read_text())
    assert results["kind"] == "pretrain" and results["steps"] == 20
    assert load_config(run / "config.yaml").pretrain.objective == "rotation"
    best = load_checkpoint(run)["model"]
    assert {k.split(".")[0] for k in best} == {"backbone", "rotation_head"}
    learner = build_learner(
        load_config(None, [f"model.pretrained={run / 'best.pt'}"]), in_channels=1, image_size=28
    )
    backbone = {f"backbone.{k}": v for k, v in learner.backbone.state_dict().items()}
    assert_same_tensors(backbone, {k: v for k, v in best.items() if k.startswith("backbone.")})
    assert results["test"]["5-way 1-shot"]["protonet"]["accuracy"] > 0.6
