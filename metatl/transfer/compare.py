"""Which source model and which of its blocks to transfer, and whether to transfer at all.

:func:`compare_sources` scores, for each source model, on one fixed episode set per shot
count (so every difference is paired):

- nearest class mean and a linear probe on the frozen features of *every* block
  (:class:`~metatl.transfer.blocks.BlockPrefix`; "small and different data: use earlier
  layers"), served by the evaluation's feature cache (each image through each block once);
- fine-tuning the top N blocks with a new head, for every N (N = all is full fine-tuning);
- a meta-training checkpoint's own adaptation (ProtoNet, MAML, ...);

next to two ways of not transferring: training ``scratch`` from a random initialisation with
the full fine-tuning recipe, and nearest class mean on raw pixels. Transferred methods worse
than either with a paired 95% interval below 0 are *negative transfer*. Each source is also
scored on the target images without any episode: LogME and H-score per block, the gap
between the target's feature statistics and those its BatchNorm layers learned on the
source (:mod:`~metatl.transfer.statistics_gap`), MMD to the source's own images where the
source says where they are, and LEEP and NCE where the source has a classifier; Kendall tau
says how well each score ranks the sources by the accuracy they reach.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from episodes import EpisodeSpec, LabelledImages
from metatl.algorithms import FineTune, Learner, LinearProbe, ProtoNet
from metatl.backbones import Backbone, create_backbone
from metatl.config import CompareConfig, FineTuneConfig, LinearProbeConfig
from metatl.training.data import ImageTransform
from metatl.training.evaluation import EvalResult, evaluate, paired_difference
from metatl.training.preemption import StopRequest
from metatl.transfer.blocks import block_prefixes
from metatl.transfer.features import source_scores
from metatl.transfer.scores import kendall_tau
from metatl.transfer.sources import Source

__all__ = [
    "ALL_LABELS",
    "PIXELS",
    "REFERENCES",
    "SCRATCH",
    "Budget",
    "Comparison",
    "NegativeTransfer",
    "compare_sources",
    "finetune_depths",
    "source_learners",
]

PIXELS = "pixels/ncm"
"""No transfer: nearest class mean on raw pixels."""
SCRATCH = "scratch"
"""No transfer: a randomly initialised network trained on the labelled target images."""
REFERENCES = (SCRATCH, PIXELS)
ALL_LABELS = "all"
"""The budget of every labelled image of the target's training split."""

Budget = int | str
"""Labelled images per class (an episode's shot), or :data:`ALL_LABELS`."""


@dataclass(frozen=True)
class NegativeTransfer:
    """A transferred method that does worse than not transferring, beyond its interval.

    Attributes:
        method: ``<source>/<method>@<block>`` or ``<source>/own``.
        budget: Labelled images per class, or ``"all"``.
        reference: :data:`SCRATCH` or :data:`PIXELS`.
        difference: Mean paired accuracy difference to the reference (negative).
        ci95: Its 95% half-width.
    """

    method: str
    budget: Budget
    reference: str
    difference: float
    ci95: float


@dataclass(frozen=True)
class Comparison:
    """Every method at every label budget, paired within a budget.

    Attributes:
        results: ``budget -> method -> EvalResult``; methods are :data:`REFERENCES` and
            ``<source>/ncm@k``, ``<source>/linear@k``, ``<source>/finetune@N``,
            ``<source>/own``.
        scores: ``source -> one {"block", "dim", "logme", "h_score", "gap", "mmd"} per
            block`` (``mmd`` NaN without source images).
        source_scores: ``source -> {"leep", "nce"}`` (NaN without a source classifier).
        blocks: ``source -> number of blocks``.
    """

    results: dict[Budget, dict[str, EvalResult]]
    scores: dict[str, list[dict[str, float]]]
    source_scores: dict[str, dict[str, float]] = field(default_factory=dict)
    blocks: dict[str, int] = field(default_factory=dict)

    @property
    def sources(self) -> list[str]:
        return list(self.scores)

    def paired(self, budget: Budget, reference: str = PIXELS) -> dict[str, tuple[float, float]]:
        """``method -> (mean, 95% half-width)`` of its accuracy minus ``reference``'s."""
        row = self.results[budget]
        if reference not in row:
            return {}
        return {m: paired_difference(r, row[reference]) for m, r in row.items() if m != reference}

    def negative_transfer(self) -> list[NegativeTransfer]:
        """Every transferred (method, budget) worse than a reference, interval excluding 0."""
        found = []
        for budget in self.results:
            for reference in REFERENCES:
                for method, (mean, ci) in self.paired(budget, reference).items():
                    if method not in REFERENCES and mean + ci < 0:
                        found.append(NegativeTransfer(method, budget, reference, mean, ci))
        return found

    def best(self, source: str, budget: Budget, kind: str = "") -> tuple[str, EvalResult]:
        """The method of ``source`` (of one ``kind``: ``ncm``, ``linear``, ``finetune``,
        ``own``; default any) with the highest mean accuracy at ``budget``.

        Raises:
            KeyError: ``source`` has no such method at ``budget``.
        """
        prefix = f"{source}/{kind}"
        row = {m: r for m, r in self.results[budget].items() if m.startswith(prefix)}
        if not row:
            raise KeyError(f"no {kind or 'method'} of {source} at budget {budget}")
        method = max(row, key=lambda m: row[m].mean)
        return method, row[method]

    def score(self, source: str, name: str, block: int = -1) -> float:
        """A score of ``source``, oriented so that higher predicts better transfer: LogME,
        H-score (of ``block``, default the last), LEEP, NCE, and minus the statistics gap
        and MMD."""
        if name in ("leep", "nce"):
            return self.source_scores.get(source, {}).get(name, math.nan)
        value = self.scores[source][block][name]
        return -value if name in ("gap", "mmd") else value

    def rank_correlation(
        self, score: str, budget: Budget, kind: str = "finetune", block: int = -1
    ) -> float:
        """Kendall tau between ``score`` of each source and the best accuracy of its
        ``kind`` of method at ``budget``: how well the score picks the source. Sources
        without the score (NaN) are left out; NaN with fewer than two left or when all
        scores or all accuracies tie."""
        pairs = []
        for source in self.sources:
            value = self.score(source, score, block)
            try:
                accuracy = self.best(source, budget, kind)[1].mean
            except KeyError:
                continue
            if math.isfinite(value):
                pairs.append((value, accuracy))
        scores, accuracies = [p[0] for p in pairs], [p[1] for p in pairs]
        if len(set(scores)) < 2 or len(set(accuracies)) < 2:  # no ranking to compare
            return math.nan
        return kendall_tau(scores, accuracies)


def finetune_depths(n_blocks: int, chosen: Sequence[int] = ()) -> list[int]:
    """The N of ``finetune@N`` for a source of ``n_blocks`` blocks: every N when ``chosen``
    is empty, else each chosen N (one at or above ``n_blocks`` meaning all blocks)."""
    if not chosen:
        return list(range(1, n_blocks + 1))
    return sorted({min(n, n_blocks) for n in chosen})


def source_learners(
    source: Source,
    settings: CompareConfig,
    finetune: FineTuneConfig,
    linear_probe: LinearProbeConfig,
) -> dict[str, Learner]:
    """Every method ``compare`` scores on one source, by name (see :class:`Comparison`)."""
    learners: dict[str, Learner] = {}
    for prefix in block_prefixes(source.backbone):
        if "ncm" in settings.probes:
            learners[f"{source.name}/ncm@{prefix.k}"] = ProtoNet(prefix)
        if "linear" in settings.probes:
            learners[f"{source.name}/linear@{prefix.k}"] = LinearProbe(
                prefix, **dataclasses.asdict(linear_probe)
            )
    if settings.finetune:
        options = dataclasses.asdict(finetune) | {"n_blocks": 0}
        for n in finetune_depths(source.n_blocks, settings.finetune_blocks):
            options["n_blocks"] = n
            learners[f"{source.name}/finetune@{n}"] = FineTune(source.backbone, **options)
    if settings.own and source.learner is not None:
        learners[f"{source.name}/own"] = source.learner
    return learners


def _references(
    data: LabelledImages, settings: CompareConfig, finetune: FineTuneConfig
) -> dict[str, Learner]:
    channels, size, _ = data.image_shape
    references: dict[str, Learner] = {
        PIXELS: ProtoNet(create_backbone("pixels", in_channels=channels, image_size=size))
    }
    if settings.scratch:
        torch.manual_seed(settings.seed)
        fresh = create_backbone(settings.scratch, in_channels=channels, image_size=size)
        options = dataclasses.asdict(finetune) | {"n_blocks": -1}
        references[SCRATCH] = FineTune(fresh, **options)
    return references


def compare_sources(
    sources: Sequence[Source] | Mapping[str, Backbone],
    data: LabelledImages,
    settings: CompareConfig | None = None,
    *,
    finetune: FineTuneConfig | None = None,
    linear_probe: LinearProbeConfig | None = None,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    stop: StopRequest | None = None,
) -> Comparison:
    """Score every method on every source on the same episodes of ``data``, per shot count,
    and score each source's transferability on ``data``'s images.

    Args:
        sources: Loaded :class:`~metatl.transfer.sources.Source` objects, or plain
            ``name -> backbone`` (no classifier, no own learner, no source images).
        data: The target images (e.g. a test split of classes none of the sources saw).
        settings: The ``compare`` config section (shots, way, probes, scratch, ...).
        finetune: Settings of the fine-tuning methods (their ``n_blocks`` is set per method).
        linear_probe: Settings of the linear probes.
        device: Where the models run.
        precision: ``fp32``, ``bf16`` or ``fp16`` autocast.
        stop: Polled before every episode (SIGTERM/SIGINT).

    Raises:
        ValueError: Two sources of one name.
        InfeasibleEpisodeError: ``data`` cannot give such episodes.
    """
    settings = settings or CompareConfig()
    finetune, linear_probe = finetune or FineTuneConfig(), linear_probe or LinearProbeConfig()
    loaded = _as_sources(sources)
    learners = _references(data, settings, finetune)
    transforms = {name: ImageTransform(m.backbone.input_spec) for name, m in learners.items()}
    for source in loaded:
        transform = ImageTransform(source.backbone.input_spec)
        for method, learner in source_learners(source, settings, finetune, linear_probe).items():
            learners[method], transforms[method] = learner.to(device), transform
    results: dict[Budget, dict[str, EvalResult]] = {}
    for shot in settings.shots:
        spec = EpisodeSpec(settings.way, shot, settings.query)
        results[shot] = evaluate(
            learners,
            data,
            spec,
            settings.episodes,
            settings.seed + shot,
            transforms,
            device=device,
            precision=precision,
            stop=stop,
            feature_cache=settings.feature_cache,
        )
    scores, overall = {}, {}
    for source in loaded:
        scores[source.name], overall[source.name] = source_scores(
            source, data, settings.score_images, seed=settings.seed, device=device
        )
    blocks = {s.name: s.n_blocks for s in loaded}
    return Comparison(results, scores, overall, blocks)


def _as_sources(sources: Sequence[Source] | Mapping[str, Backbone]) -> list[Source]:
    if isinstance(sources, Mapping):
        loaded = [Source(name, name, backbone) for name, backbone in sources.items()]
    else:
        loaded = list(sources)
    names = [s.name for s in loaded]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"two sources are named {repeated[0]!r}: name them NAME=SPEC")
    bad = [n for n in names if "/" in n or n in ("pixels", SCRATCH)]
    if bad:
        raise ValueError(f"source names must not contain '/' nor be 'pixels' or 'scratch': {bad}")
    return loaded
