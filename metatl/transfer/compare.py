"""Which source model and which of its blocks to transfer, and whether to transfer at all.

:func:`compare_sources` scores nearest class mean and a linear probe on the features of
*every* block of each source backbone (:class:`~metatl.transfer.blocks.BlockPrefix`), all on
one fixed episode set per shot count, next to a no-transfer baseline (nearest class mean on
raw pixels: with 1–20 labelled images per class, what a network trained from scratch on
them reaches is close to it), so every difference is paired. The evaluation's feature cache
runs each image through each block once. It flags *negative transfer* — a transferred
method worse than the baseline with a paired 95% interval that excludes 0 — and scores each
block of each source with LogME and H-score on the target images, so that the ranking of the
sources by a score can be checked against the accuracy they reach (Kendall tau).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from episodes import EpisodeSpec, LabelledImages
from metatl.algorithms import Learner, LinearProbe, ProtoNet
from metatl.backbones import Backbone, create_backbone
from metatl.training.data import ImageTransform
from metatl.training.evaluation import EvalResult, evaluate, paired_difference
from metatl.transfer.blocks import block_prefixes
from metatl.transfer.features import block_scores
from metatl.transfer.scores import kendall_tau

__all__ = ["BASELINE", "Comparison", "NegativeTransfer", "compare_sources", "probe_learners"]

BASELINE = "pixels/ncm"
"""The no-transfer baseline: nearest class mean on raw pixels."""


@dataclass(frozen=True)
class NegativeTransfer:
    """A transferred method that does worse than the baseline, beyond its interval.

    Attributes:
        method: ``<source>/<ncm|linear>@<block>``.
        shot: Labelled images per class.
        difference: Mean paired accuracy difference to the baseline (negative).
        ci95: Its 95% half-width.
    """

    method: str
    shot: int
    difference: float
    ci95: float


@dataclass(frozen=True)
class Comparison:
    """Every method on every shot count, on one episode set per shot.

    Attributes:
        results: ``shot -> method -> EvalResult``; methods are ``<source>/<ncm|linear>@<k>``
            and :data:`BASELINE`.
        scores: ``source -> one {"block", "dim", "logme", "h_score"} per block``.
    """

    results: dict[int, dict[str, EvalResult]]
    scores: dict[str, list[dict[str, float]]]

    def paired(self, shot: int) -> dict[str, tuple[float, float]]:
        """``method -> (mean, 95% half-width)`` of its accuracy minus the baseline's."""
        row = self.results[shot]
        return {m: paired_difference(r, row[BASELINE]) for m, r in row.items() if m != BASELINE}

    def negative_transfer(self) -> list[NegativeTransfer]:
        """Every (method, shot) worse than the baseline with an interval excluding 0."""
        found = []
        for shot in self.results:
            for method, (mean, ci) in self.paired(shot).items():
                if mean + ci < 0:
                    found.append(NegativeTransfer(method, shot, mean, ci))
        return found

    def best(self, source: str, shot: int) -> tuple[str, EvalResult]:
        """The method of ``source`` with the highest mean accuracy at ``shot``."""
        row = {m: r for m, r in self.results[shot].items() if m.startswith(f"{source}/")}
        method = max(row, key=lambda m: row[m].mean)
        return method, row[method]

    def rank_correlation(self, score: str, shot: int, block: int = -1) -> float:
        """Kendall tau between a score of one block (default: the last) of each source and
        the best accuracy each source reaches at ``shot``: how well the score picks the
        source. Needs two or more sources."""
        sources = list(self.scores)
        values = [self.scores[s][block][score] for s in sources]
        accuracy = [self.best(s, shot)[1].mean for s in sources]
        return kendall_tau(values, accuracy)


def probe_learners(
    name: str, backbone: Backbone, *, linear: bool = True, weight_decay: float = 1e-3
) -> dict[str, Learner]:
    """Nearest class mean (``<name>/ncm@k``) and, if ``linear``, a linear probe
    (``<name>/linear@k``) on the features of every block ``k`` of ``backbone``."""
    learners: dict[str, Learner] = {}
    for prefix in block_prefixes(backbone):
        learners[f"{name}/ncm@{prefix.k}"] = ProtoNet(prefix)
        if linear:
            learners[f"{name}/linear@{prefix.k}"] = LinearProbe(prefix, weight_decay=weight_decay)
    return learners


def compare_sources(
    sources: Mapping[str, Backbone],
    data: LabelledImages,
    *,
    shots: Sequence[int] = (1, 5, 20),
    way: int = 5,
    query: int = 15,
    episodes: int = 200,
    seed: int = 0,
    linear: bool = True,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    feature_cache: bool = True,
) -> Comparison:
    """Probe every block of every source on the same episodes of ``data``, per shot count.

    Args:
        sources: Name (no ``/``) -> backbone; each keeps its own input transform.
        data: The target images (e.g. a test split of classes none of the sources saw).
        shots: Labelled images per class in the support sets.
        way: Classes per episode.
        query: Query images per class.
        episodes: Episodes per shot count.
        seed: Seed of the episode sets.
        linear: Also fit a linear probe per block (slower than nearest class mean).
        device: Where the backbones run.
        precision: ``fp32``, ``bf16`` or ``fp16`` autocast.
        feature_cache: Compute each image's features once per block (off: once per
            episode and method, as a plain loop over methods would).

    Raises:
        ValueError: A source name with ``/``, or a name of the baseline.
        InfeasibleEpisodeError: ``data`` cannot give such episodes.
    """
    bad = [n for n in sources if "/" in n or n == BASELINE.split("/")[0]]
    if bad:
        raise ValueError(f"source names must not contain '/' nor be 'pixels': {bad}")
    channels, size, _ = data.image_shape
    pixels = create_backbone("pixels", in_channels=channels, image_size=size)
    learners: dict[str, Learner] = {BASELINE: ProtoNet(pixels)}
    transforms: dict[str, ImageTransform] = {BASELINE: ImageTransform(pixels.input_spec)}
    for name, backbone in sources.items():
        transform = ImageTransform(backbone.input_spec)
        for method, learner in probe_learners(name, backbone, linear=linear).items():
            learners[method], transforms[method] = learner.to(device), transform
    results = {
        shot: evaluate(
            learners,
            data,
            EpisodeSpec(way, shot, query),
            episodes,
            seed,
            transforms,
            device=device,
            precision=precision,
            feature_cache=feature_cache,
        )
        for shot in shots
    }
    scores = {name: block_scores(b, data, device=device) for name, b in sources.items()}
    return Comparison(results, scores)
