"""Training and scoring from Python in one call each: :func:`fit`, :func:`adapt_domain` and
:func:`score`.

They are the command-line runs without the command line (``fit`` is ``python -m
metatl.train``: a run directory, checkpoints, the test; ``adapt_domain`` is ``python -m
metatl.adapt``), and the evaluation of one learner on fixed episodes. Named so because
``metatl.train``, ``metatl.adapt`` and ``metatl.evaluate`` are the command-line modules.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from episodes import EpisodeSpec, LabelledImages
from metatl.adaptation.run import AdaptResult, run_adaptation
from metatl.algorithms import Learner
from metatl.config import RunConfig, load_config
from metatl.training.data import ImageTransform
from metatl.training.evaluation import EvalResult, evaluate
from metatl.training.meta_train import RunResult, run_experiment

__all__ = ["adapt_domain", "fit", "score"]


def fit(
    config: RunConfig | str | Path | Sequence[str] | None = None,
    overrides: Sequence[str] = (),
) -> RunResult:
    """Meta-train a learner as ``python -m metatl.train`` does, and test it.

    Args:
        config: A :class:`RunConfig`, a YAML file, a list of ``key=value`` overrides, or
            None for the defaults.
        overrides: ``key=value`` overrides on top (with a YAML file or the defaults).

    Returns:
        The run: its directory (``best.pt``, ``results.json``, ``report.md``), best
        validation and test results per setting and method.

    Raises:
        ConfigError: A bad setting, before anything is written.
    """
    return run_experiment(_as_config(config, overrides))


def adapt_domain(
    config: RunConfig | str | Path | Sequence[str] | None = None,
    overrides: Sequence[str] = (),
) -> AdaptResult:
    """Unsupervised domain adaptation as ``python -m metatl.adapt`` does, and its test.

    Args:
        config: A :class:`RunConfig`, a YAML file (e.g. ``configs/adapt_conv4_digits.yaml``),
            a list of ``key=value`` overrides, or None for the defaults.
        overrides: ``key=value`` overrides on top (with a YAML file or the defaults).

    Returns:
        The run: its directory, best source validation, the target test accuracy of every
        variant (``result.test["target test images"]``: the trained model, ``adabn``,
        ``tent``, ...; few-shot settings with ``adapt.fewshot_split``) and the label-free
        model selection next to the oracle (``result.selection``).

    Raises:
        ConfigError: A bad setting, before anything is written.
    """
    return run_adaptation(_as_config(config, overrides))


def _as_config(
    config: RunConfig | str | Path | Sequence[str] | None, overrides: Sequence[str]
) -> RunConfig:
    if not isinstance(config, RunConfig):
        if isinstance(config, str | Path):
            return load_config(config, overrides)
        return load_config(None, [*(config or ()), *overrides])
    if overrides:
        raise ValueError("give overrides with a YAML file or a list, not with a RunConfig")
    return config


def score(
    learner: Learner,
    data: LabelledImages,
    *,
    way: int = 5,
    shot: int = 1,
    query: int = 15,
    episodes: int = 600,
    seed: int = 0,
    precision: str = "fp32",
) -> EvalResult:
    """Accuracy of ``learner`` on ``episodes`` fixed ``way``-way ``shot``-shot episodes of
    ``data`` (seeded: the same episodes for every learner scored with the same seed).

    Returns:
        Mean accuracy, its 95% interval (``ci95``) and the per-episode accuracies (for
        :func:`~metatl.training.evaluation.paired_difference`).

    Raises:
        InfeasibleEpisodeError: ``data`` cannot give such episodes.
    """
    transform = ImageTransform(learner.backbone.input_spec)
    spec = EpisodeSpec(way, shot, query)
    device = next(learner.parameters(), None)
    where = device.device if device is not None else "cpu"
    results = evaluate(
        {"learner": learner},
        data,
        spec,
        episodes,
        seed,
        transform,
        device=where,
        precision=precision,
    )
    return results["learner"]
