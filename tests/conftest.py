"""Shared fixtures: small synthetic image collections that a learner can actually learn."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image

from episodes import LabelledImages


def make_pattern_images(
    n_classes: int, per_class: int, size: int = 28, seed: int = 0, noise: float = 40.0
) -> LabelledImages:
    """Each class is a random blob pattern; its images are noisy, shifted copies of it."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n_classes, 1, 7, 7, generator=gen)
    patterns = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear") * 255
    images = patterns.repeat_interleave(per_class, 0)
    shifts = torch.randint(-2, 3, (images.shape[0], 2), generator=gen)
    images = torch.stack(
        [
            torch.roll(im, tuple(s.tolist()), dims=(1, 2))
            for im, s in zip(images, shifts, strict=True)
        ]
    )
    images = images + noise * torch.randn(images.shape, generator=gen)
    return LabelledImages(
        images=images.round().clamp(0, 255).to(torch.uint8),
        labels=torch.arange(n_classes).repeat_interleave(per_class),
        class_names=tuple(f"class{c:03d}" for c in range(n_classes)),
        name="patterns",
    )


@pytest.fixture
def patterns() -> LabelledImages:
    return make_pattern_images(n_classes=30, per_class=20)


def train_briefly(learner, data: LabelledImages, spec, num_episodes: int, lr: float = 3e-3):
    """Adam on ``num_episodes`` seeded episodes of ``spec``; the per-episode losses."""
    from episodes import EpisodeDataset
    from metatl.training import ImageTransform

    episodes = EpisodeDataset.from_spec(
        data,
        spec,
        seed=0,
        num_episodes=num_episodes,
        transform=ImageTransform(learner.backbone.input_spec),
    )
    optimizer = torch.optim.Adam(learner.parameters(), lr=lr)
    losses = []
    for episode in episodes:
        loss, metrics = learner.loss(episode)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(metrics["loss"])
    return losses


def write_image_folder(root: Path, data: LabelledImages, split: str) -> None:
    """``data`` as ``root/<split>/<class>/NNNN.png`` (the ``image_folder`` layout)."""
    for i, (image, label) in enumerate(zip(data.images, data.labels, strict=True)):
        folder = root / split / data.class_names[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0].numpy(), mode="L").save(folder / f"{i:04d}.png")


@pytest.fixture(scope="session")
def folder_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ``image_folder`` dataset: 24 train, 8 val, 8 test classes of 20 patterns."""
    root = tmp_path_factory.mktemp("patterns")
    everything = make_pattern_images(n_classes=40, per_class=20, seed=1)
    for split, classes in (("train", range(24)), ("val", range(24, 32)), ("test", range(32, 40))):
        write_image_folder(root, everything.select_classes(list(classes)), split)
    return root


class TookTooLong(BaseException):
    """Raised by :func:`deadline`; a BaseException, so that no ``except Exception`` eats it."""


@contextlib.contextmanager
def deadline(seconds: float, what: str = "the block") -> Iterator[None]:
    """Interrupt the block (SIGALRM) if it runs longer than ``seconds``: a hang fails."""

    def expire(_signum: int, _frame: object) -> None:
        raise TookTooLong(f"{what}: no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def stoppable(run, *args, **kwargs):
    """Call ``run`` (run_experiment, run_pretraining) as the entrypoints do: with SIGTERM and
    SIGINT setting its stop request for the duration of the call."""
    from metatl.training.preemption import stop_on_signals

    with stop_on_signals() as stop:
        return run(*args, stop=stop, **kwargs)


@pytest.fixture(autouse=True)
def _no_wandb_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs in tests track to JSONL only (also in subprocesses); W&B tests opt back in."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def run_example(script: str, *args: str) -> str:
    """Run ``examples/<script>`` with ``args`` on one thread; its standard output."""
    result = subprocess.run(
        [sys.executable, f"examples/{script}", *args],
        cwd=Path(__file__).parents[1],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return result.stdout
