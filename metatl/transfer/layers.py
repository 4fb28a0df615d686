"""The runs of the layer-transfer study (Yosinski et al. 2014, "How transferable are features
in deep neural networks?"): which tasks, which networks, and how each is trained.

The classes of a dataset are split into two tasks A and B. baseA and baseB are trained from
scratch on them; then, for each n, a network for B starts from the first n blocks of baseB
(*selffer*, BnB) or of baseA (*transfer*, AnB), frozen or fine-tuned (``+``), or from random
frozen blocks (the control), and its other blocks are re-initialised and trained on B. How
much of baseB's accuracy each keeps says how general the first n blocks are (AnB) and how
much they were co-adapted with the blocks above them (BnB).

Every network is a :class:`~metatl.training.pretrain.SupervisedModel` trained by the one
training loop (:class:`TaskTrainer` is :class:`~metatl.training.pretrain.Pretrainer` scored on
the task's held-out images), with the ``pretrain`` settings of the config.
"""

from __future__ import annotations

import csv
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from episodes import LabelledImages, merge_by_class
from episodes.class_splits import grouped_split, radical_split, random_split, stroke_split
from episodes.unihan import read_unihan
from metatl.config import ConfigError, LayersConfig, RunConfig
from metatl.training.builders import build_backbone
from metatl.training.data import load_split
from metatl.training.device import autocast
from metatl.training.evaluation import EvalResult
from metatl.training.preemption import StopRequest
from metatl.training.pretrain import Pretrainer, SupervisedModel

__all__ = [
    "SPLIT_KINDS",
    "TREATMENTS",
    "StudyRun",
    "Task",
    "TaskSplit",
    "TaskTrainer",
    "build_run_model",
    "class_pool",
    "held_out_accuracy",
    "make_tasks",
    "n_values",
    "study_plan",
]

TREATMENTS = ("BnB", "BnB+", "AnB", "AnB+", "random")
_SOURCE = {"BnB": "baseB", "BnB+": "baseB", "AnB": "baseA", "AnB+": "baseA"}
_FROZEN = ("BnB", "AnB", "random")

SPLIT_KINDS = {"random": "similar", "stroke": "dissimilar", "radical": "dissimilar"}
_REASONS = {
    "random": "a random half of the classes each: both tasks sample the same population of "
    "classes, so they need the same features (the paper's similar split)",
    "stroke": "characters with fewer strokes than the median vs the rest (Unihan "
    "kTotalStrokes): ink density, stroke count and spacing differ, so the low- and mid-level "
    "statistics the early blocks learn differ between A and B",
    "radical": "whole radicals to A or B (Unihan kRSUnicode): no component recurs as a "
    "radical across tasks, so part detectors learned on A are less useful on B",
    "groups": "whole groups of {groups_file} to A ({a_groups}) or B: as dissimilar as the "
    "groups look",
}


@dataclass(frozen=True)
class StudyRun:
    """One network of the study.

    Attributes:
        split: The class split (``random``, ``stroke``, ``radical`` or ``groups``).
        seed: The study seed: class split (when random), held-out images, initialisation and
            batch order.
        treatment: ``baseA``, ``baseB`` or one of :data:`TREATMENTS`.
        n: Blocks taken from the source (0 for the bases).
    """

    split: str
    seed: int
    treatment: str
    n: int = 0

    @property
    def key(self) -> str:
        """Its path in the study, e.g. ``random/seed0/AnB+-n2``."""
        suffix = f"-n{self.n}" if self.n else ""
        return f"{self.split}/seed{self.seed}/{self.treatment}{suffix}"

    @property
    def task(self) -> str:
        """``A`` or ``B``: what it is trained and tested on."""
        return "A" if self.treatment == "baseA" else "B"

    @property
    def frozen_blocks(self) -> int:
        return self.n if self.treatment in _FROZEN else 0

    def source(self) -> StudyRun | None:
        """The base run whose first ``n`` blocks it starts from, if any."""
        base = _SOURCE.get(self.treatment)
        return None if base is None else StudyRun(self.split, self.seed, base)


def n_values(layers: LayersConfig, blocks: int) -> list[int]:
    """The n of the study: ``first_n .. last_n`` (``last_n`` 0: ``blocks - 1``).

    Raises:
        ConfigError: The backbone has fewer than two blocks, or the range is outside
            ``1 .. blocks - 1``.
    """
    if blocks < 2:
        raise ConfigError(
            f"model.backbone has {blocks} block(s); the layer study needs a backbone of 2 or "
            "more blocks (conv4, resnet12, ...)"
        )
    last = layers.last_n or blocks - 1
    if not 1 <= layers.first_n <= last <= blocks - 1:
        raise ConfigError(
            f"layers.first_n={layers.first_n} and layers.last_n={layers.last_n} must give "
            f"1 <= first_n <= last_n <= {blocks - 1} (the backbone has {blocks} blocks)"
        )
    return list(range(layers.first_n, last + 1))


def study_plan(layers: LayersConfig, blocks: int) -> list[StudyRun]:
    """Every run of the study, each after the runs it starts from: per split and seed, the
    bases first, then the treatments by n."""
    plan = []
    for split in layers.splits:
        for seed in layers.seeds:
            plan += [StudyRun(split, seed, "baseA"), StudyRun(split, seed, "baseB")]
            for n in n_values(layers, blocks):
                plan += [StudyRun(split, seed, t, n) for t in TREATMENTS if t in layers.treatments]
    return plan


@dataclass(frozen=True)
class Task:
    """One task of a split: training images, and held-out images of the same classes."""

    train: LabelledImages
    test: LabelledImages


@dataclass(frozen=True)
class TaskSplit:
    """Tasks A and B of one split and seed, and why they are similar or dissimilar."""

    split: str
    kind: str
    reason: str
    a: Task
    b: Task


def class_pool(config: RunConfig) -> LabelledImages:
    """The images of every split named in ``layers.pool``, as one set of classes.

    Raises:
        FileNotFoundError: The data is not there.
        ValueError: The splits' images differ in shape.
    """
    parts = [load_split(config.data, name) for name in config.layers.pool]
    return merge_by_class(parts, f"{config.data.dataset}/{'+'.join(config.layers.pool)}")


def make_tasks(pool: LabelledImages, split: str, seed: int, layers: LayersConfig) -> TaskSplit:
    """Tasks A and B of ``split`` for study seed ``seed``.

    Raises:
        ConfigError: The split cannot be made from these classes (no Unihan entry, no
            group, a half with fewer than two classes); the message names the fix.
        FileNotFoundError: No Unihan data or no groups file.
    """
    a_names, b_names = _split_names(list(pool.class_names), split, seed, layers)
    rng = np.random.default_rng(seed)
    if layers.max_classes:
        a_names, b_names = (
            sorted(rng.choice(names, min(layers.max_classes, len(names)), replace=False))
            for names in (a_names, b_names)
        )
    for task, names in (("A", a_names), ("B", b_names)):
        if len(names) < 2:
            raise ConfigError(f"layers.splits={split}: task {task} has {len(names)} class(es)")
    train, test = pool.hold_out(layers.held_out, seed)
    index = {name: i for i, name in enumerate(pool.class_names)}

    def task(names: list[str], label: str) -> Task:
        classes = [index[n] for n in names]
        return Task(
            train.select_classes(classes, f"{pool.name}/{split}-{label}/train"),
            test.select_classes(classes, f"{pool.name}/{split}-{label}/held-out"),
        )

    reason = _REASONS[split].format(groups_file=layers.groups_file, a_groups=layers.a_groups)
    kind = SPLIT_KINDS.get(split, "dissimilar")
    return TaskSplit(split, kind, reason, task(a_names, "A"), task(b_names, "B"))


def _split_names(
    names: list[str], split: str, seed: int, layers: LayersConfig
) -> tuple[list[str], list[str]]:
    try:
        if split == "random":
            return random_split(names, seed)
        if split == "groups":
            return grouped_split(names, _read_groups(layers.groups_file), layers.a_groups)
        unihan = read_unihan(layers.unihan or None)
        if split == "stroke":
            return stroke_split(names, unihan)
        return radical_split(names, unihan, seed)
    except ValueError as err:
        raise ConfigError(f"layers.splits={split}: {err}") from None


def _read_groups(path: str) -> dict[str, str]:
    """``class,group`` lines of a CSV file (a header line ``class,group`` is allowed)."""
    if not path:
        raise ConfigError(
            "layers.splits=groups needs layers.groups_file (a CSV of class,group lines) and "
            "layers.a_groups (the groups that form task A)"
        )
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"layers.groups_file={path!r}: no such file")
    with file.open(newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.reader(handle) if row and not row[0].startswith("#")]
    if rows and [c.strip() for c in rows[0]] == ["class", "group"]:
        rows = rows[1:]
    bad = [i + 1 for i, row in enumerate(rows) if len(row) != 2]
    if bad:
        raise ConfigError(f"{path}: line(s) {bad[:5]} are not 'class,group'")
    return {name.strip(): group.strip() for name, group in rows}


def build_run_model(
    config: RunConfig,
    run: StudyRun,
    task: Task,
    source_state: dict[str, torch.Tensor] | None,
) -> SupervisedModel:
    """The network of ``run`` before training, seeded by the study seed.

    Every run on B of a seed starts from the same random draw (baseA from another one), so
    a treatment differs from baseB only in the blocks it takes from its source.

    Args:
        config: The study config (``model.backbone``, ``model.input_size``).
        run: Which network.
        task: Its task (channels, image size and classes).
        source_state: The source base's state dict when ``run`` copies blocks, else None.
    """
    torch.manual_seed(2 * run.seed + (run.task == "A"))
    channels, size, _ = task.train.image_shape
    backbone = build_backbone(config, channels, size, load_weights=False)
    model = SupervisedModel(backbone, task.train.num_classes)
    if source_state is not None:
        source = SupervisedModel(
            build_backbone(config, channels, size, load_weights=False),
            int(source_state["classifier.weight"].shape[0]),
        )
        source.load_state_dict(source_state)
        for block, copied in zip(backbone.blocks[: run.n], source.backbone.blocks, strict=False):
            block.load_state_dict(copied.state_dict())
    model.freeze_blocks(run.frozen_blocks)
    return model


@torch.no_grad()
def held_out_accuracy(
    model: SupervisedModel,
    data: LabelledImages,
    transform: torch.nn.Module,
    device: torch.device,
    precision: str,
    stop: StopRequest | None = None,
    batch_size: int = 512,
) -> EvalResult:
    """Classification accuracy of ``model`` on ``data`` (labels as the model's classes).

    Returns:
        An :class:`EvalResult` over images (its ``accuracies`` are 0/1 per image, so its
        ``ci95`` is the normal-approximation binomial interval).
    """
    was_training = model.training
    model.eval()
    correct = []
    for start in range(0, len(data), batch_size):
        if stop is not None:
            stop.check()
        images = transform(data.images[start : start + batch_size]).to(device)
        with autocast(device, precision):
            logits = model(images)
        labels = data.labels[start : start + batch_size].to(device)
        correct += (logits.argmax(1) == labels).float().tolist()
    model.train(was_training)
    return EvalResult.from_accuracies(correct, f"{data.name} ({len(data)} images)")


class TaskTrainer(Pretrainer):
    """Supervised training on one task of the study, scored once, at the end, by accuracy
    on the task's held-out images (no model selection: the paper reports the trained
    network)."""

    label = "layers"
    resume_command = "python -m metatl.transfer layers"

    def validation_due(self, step: int) -> bool:
        return step == self.total_steps

    def validate(self, stop: StopRequest | None = None) -> EvalResult:
        return held_out_accuracy(
            self.model, self.val_data, self.transform, self.device, self.config.precision, stop
        )


def run_config(config: RunConfig, run: StudyRun, group: str) -> RunConfig:
    """The config one run of the study is trained with: the study's, with the study seed,
    and tracked in W&B as ``<group>/<key>`` in the study's group."""
    tracked = in_study_group(config, group, f"{group}/{run.key}")
    return dataclasses.replace(tracked, seed=run.seed, name="")


def in_study_group(config: RunConfig, group: str, name: str, tag: str = "layers") -> RunConfig:
    """``config`` tracked in W&B as run ``name`` of the study's group (``group`` unless
    ``tracking.wandb.group`` names one), tagged ``tag``."""
    wandb = config.tracking.wandb
    wandb = dataclasses.replace(
        wandb, group=wandb.group or group, name=name, tags=[*wandb.tags, tag]
    )
    return dataclasses.replace(config, tracking=dataclasses.replace(config.tracking, wandb=wandb))
