"""Evaluation on fixed, seeded episode sets: every method scored on the same episodes."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from episodes import EpisodeDataset, EpisodeSpec, LabelledImages
from metatl.algorithms import Learner
from metatl.functional import accuracy, mean_confidence_interval

__all__ = ["EvalResult", "evaluate", "format_table"]


@dataclass(frozen=True)
class EvalResult:
    """Accuracy of one method on one episode set.

    Attributes:
        accuracies: Per-episode query accuracy, in episode order (for paired tests).
        mean: Mean accuracy over episodes.
        ci95: Half-width of the 95% confidence interval of the mean.
    """

    accuracies: tuple[float, ...]
    mean: float
    ci95: float

    @classmethod
    def from_accuracies(cls, values: list[float]) -> EvalResult:
        mean, ci = mean_confidence_interval(values)
        return cls(tuple(values), mean, ci)

    def summary(self) -> dict[str, float]:
        return {"accuracy": self.mean, "ci95": self.ci95, "episodes": len(self.accuracies)}


def evaluate(
    learners: Mapping[str, Learner],
    data: LabelledImages,
    spec: EpisodeSpec,
    num_episodes: int,
    seed: int,
    transform: Callable[[torch.Tensor], torch.Tensor] | Mapping[str, Callable] | None = None,
    workers: int = 0,
    device: torch.device | str = "cpu",
) -> dict[str, EvalResult]:
    """Score each learner on the same ``num_episodes`` episodes drawn with ``seed``.

    Episodes are drawn once and fed to every learner, so the comparison is paired.

    Args:
        learners: Method name -> learner (set to eval mode here).
        data: The split to draw from.
        spec: Episode shape.
        num_episodes: Episodes in the set.
        seed: Seed of the episode set.
        transform: One transform for all learners, or one per learner name.
        workers: DataLoader workers.
        device: Where the learners run.

    Returns:
        Method name -> :class:`EvalResult`.
    """
    dataset = EpisodeDataset.from_spec(data, spec, seed, num_episodes)
    loader = DataLoader(dataset, batch_size=None, num_workers=workers)
    per_method: dict[str, list[float]] = {name: [] for name in learners}
    transforms = transform if isinstance(transform, Mapping) else dict.fromkeys(learners, transform)
    for learner in learners.values():
        learner.eval()
    for raw in loader:
        for name, learner in learners.items():
            fn = transforms[name]
            episode = (raw.map_images(fn) if fn is not None else raw).to(device)
            with torch.set_grad_enabled(learner.needs_grad_to_adapt):
                logits = learner(episode)
            per_method[name].append(float(accuracy(logits, episode.query_y)))
    return {name: EvalResult.from_accuracies(v) for name, v in per_method.items()}


def format_table(rows: Mapping[str, Mapping[str, EvalResult]]) -> str:
    """A Markdown table: one row per setting, one column per method, ``mean ± ci`` in %."""
    methods = list(dict.fromkeys(m for r in rows.values() for m in r))
    lines = [
        "| setting | " + " | ".join(methods) + " |",
        "| --- | " + " | ".join("---" for _ in methods) + " |",
    ]
    for setting, results in rows.items():
        cells = [
            f"{100 * results[m].mean:.2f} ± {100 * results[m].ci95:.2f}" if m in results else "-"
            for m in methods
        ]
        lines.append(f"| {setting} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
