"""Model selection without target labels, next to the oracle that has them.

At every validation an adaptation run records the source validation accuracy, the label-free
validators of its target predictions and the oracle's target accuracy (see
:class:`~metatl.adaptation.trainer.Adapter`). :func:`select_checkpoints` says which validation
each criterion would have chosen and what target accuracy that choice has, against the best
target accuracy any validation reached (the oracle's choice, which needs the labels a real
adaptation does not have).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["CRITERIA", "Selection", "format_selection", "select_checkpoints"]

#: criterion -> (history key, +1 if higher is better else -1)
CRITERIA: dict[str, tuple[str, int]] = {
    "source_val_accuracy": ("source_val_accuracy", +1),
    "target_entropy": ("target_entropy", -1),
    "target_snd": ("target_snd", +1),
}


@dataclass(frozen=True)
class Selection:
    """What one criterion chose.

    Attributes:
        criterion: The criterion (``oracle`` for the target-accuracy choice).
        step: The training step of the chosen validation.
        value: The criterion's value there.
        target_accuracy: The oracle's target accuracy of that checkpoint.
        gap: Oracle's best target accuracy minus ``target_accuracy`` (>= 0).
    """

    criterion: str
    step: int
    value: float
    target_accuracy: float
    gap: float


def select_checkpoints(history: Sequence[dict[str, float]]) -> list[Selection]:
    """Each criterion's choice among the validations of ``history``, then the oracle's.

    Ties go to the earliest validation. Every row needs ``oracle_target_accuracy``.

    Args:
        history: The rows :class:`~metatl.adaptation.trainer.Adapter` recorded.

    Returns:
        One :class:`Selection` per criterion of :data:`CRITERIA`, then ``oracle``.

    Raises:
        ValueError: Empty history, or rows without the oracle.
    """
    if not history:
        raise ValueError("no validation was recorded")
    if any("oracle_target_accuracy" not in row for row in history):
        raise ValueError("the history has no oracle target accuracy to compare with")
    best = max(row["oracle_target_accuracy"] for row in history)
    choices = [*CRITERIA.items(), ("oracle", ("oracle_target_accuracy", +1))]
    out = []
    for criterion, (key, sign) in choices:
        row = max(history, key=lambda r, k=key, s=sign: (s * r[k], -r["step"]))
        accuracy = row["oracle_target_accuracy"]
        out.append(Selection(criterion, int(row["step"]), row[key], accuracy, best - accuracy))
    return out


def format_selection(selections: Sequence[Selection]) -> str:
    """A Markdown table of :func:`select_checkpoints`' result (accuracies in %)."""
    lines = [
        "| chosen by | step | its value | target accuracy | below the oracle |",
        "| --- | --- | --- | --- | --- |",
    ]
    for s in selections:
        lines.append(
            f"| {s.criterion} | {s.step} | {s.value:.4f} | {100 * s.target_accuracy:.2f} | "
            f"{100 * s.gap:.2f} |"
        )
    return "\n".join(lines)
