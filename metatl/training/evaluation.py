"""Evaluation on fixed, seeded episode sets: every method scored on the same episodes.

Methods are looked up by name in a small registry, each built on the backbone of the
learner being evaluated (usually a checkpoint's): ``protonet`` (nearest class mean on its
features), ``linear`` (:class:`LinearProbe`), ``finetune`` (:class:`FineTune`) and
``maml`` (test-time MAML adaptation) and ``pixels`` (nearest class mean on raw pixels). A
name equal to the checkpoint's ``model.algorithm`` is the checkpoint learner itself. To add a
method::

    from metatl.training.evaluation import register_method

    @register_method("knn")
    def _knn(learner: Learner, config: RunConfig) -> Learner:
        return MyKNN(learner.backbone)  # builds on the backbone, never modifies it

After that, ``python -m metatl.evaluate --methods protonet knn linear`` scores it on the same
episodes as the rest.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from episodes import Episode, EpisodeDataset, EpisodeSpec, LabelledImages
from metatl.algorithms import MAML, Learner, ProtoNet
from metatl.algorithms.registry import create_learner
from metatl.backbones import InputSpec, create_backbone
from metatl.config import RunConfig
from metatl.functional import MIN_EPISODES_FOR_CI, accuracy, mean_confidence_interval
from metatl.training.data import ImageTransform
from metatl.training.device import autocast, resolve_device
from metatl.training.distributed import any_rank, current_ranks, gather_objects
from metatl.training.feature_cache import FeatureCache
from metatl.training.preemption import Interrupted, StopRequest

__all__ = [
    "EvalResult",
    "MethodBuilder",
    "UnknownMethodError",
    "build_methods",
    "default_methods",
    "episode_logits",
    "evaluate",
    "evaluate_learners",
    "evaluate_methods",
    "few_episodes_note",
    "format_paired_table",
    "format_table",
    "list_methods",
    "paired_difference",
    "register_method",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalResult:
    """Accuracy of one method on one episode set.

    Attributes:
        accuracies: Per-episode query accuracy, in episode order (for paired tests).
        mean: Mean accuracy over episodes.
        ci95: Half-width of the 95% confidence interval of the mean; NaN (undefined)
            for a single episode.
        episode_set: Identifies the episodes (data, shape, seed, count) when :func:`evaluate`
            made the result; :func:`paired_difference` refuses to pair different sets.
    """

    accuracies: tuple[float, ...]
    mean: float
    ci95: float
    episode_set: str = ""

    @classmethod
    def from_accuracies(cls, values: Sequence[float], episode_set: str = "") -> EvalResult:
        mean, ci = mean_confidence_interval(list(values))
        return cls(tuple(values), mean, ci, episode_set)

    def summary(self) -> dict[str, float | int | None]:
        """``{"accuracy", "ci95", "episodes"}`` for ``results.json``; ``ci95`` is ``None`` when
        undefined (one episode), so that the JSON holds ``null``, never a bare ``NaN``."""
        ci = None if math.isnan(self.ci95) else self.ci95
        return {"accuracy": self.mean, "ci95": ci, "episodes": len(self.accuracies)}


def evaluate(
    learners: Mapping[str, Learner],
    data: LabelledImages,
    spec: EpisodeSpec,
    num_episodes: int,
    seed: int,
    transform: Callable[[torch.Tensor], torch.Tensor] | Mapping[str, Callable] | None = None,
    workers: int = 0,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    stop: StopRequest | None = None,
    feature_cache: bool = True,
) -> dict[str, EvalResult]:
    """Score each learner on the same ``num_episodes`` episodes drawn with ``seed``.

    Episodes are drawn once and fed to every learner, so the comparison is paired.

    Learners that depend on the images only through a frozen feature map (ProtoNet in eval
    mode, the linear probe; see :mod:`metatl.training.feature_cache`) are served from one
    :class:`~metatl.training.feature_cache.FeatureCache` for the call: each image's
    features are computed at most once per (backbone, transform) and shared by all such
    learners, instead of once per episode and learner. Their logits are those of the
    uncached path up to the batch composition of the backbone's passes (bit-identical
    where the backbone's kernels do not depend on the batch size, as Conv-4 on the CPU);
    other learners (fine-tuning, MAML) run as before.

    Under torchrun the episodes are split by index across the ranks (contiguous blocks) and
    the per-episode accuracies gathered, so that every rank returns the result over all
    episodes, in episode order, as one process would.

    Args:
        learners: Method name -> learner (set to eval mode here).
        data: The split to draw from.
        spec: Episode shape.
        num_episodes: Episodes in the set.
        seed: Seed of the episode set.
        transform: One transform for all learners, or one per learner name.
        workers: DataLoader workers.
        device: Where the learners run.
        precision: ``fp32``, or ``bf16``/``fp16`` autocast (as in training).
        stop: Polled before every episode; when set, :class:`Interrupted` is raised.
        feature_cache: Serve qualifying learners from cached features (``False``: run the
            backbone on every episode for every learner, as before).

    Returns:
        Method name -> :class:`EvalResult`.

    Raises:
        Interrupted: ``stop`` fired (SIGTERM/SIGINT); nothing is returned.
    """
    ranks = current_ranks()
    dataset = EpisodeDataset.from_spec(data, spec, seed, num_episodes)
    mine = ranks.shard(num_episodes)
    shard = Subset(dataset, mine) if ranks.active else dataset
    loader = DataLoader(shard, batch_size=None, num_workers=workers)
    per_method: dict[str, list[float]] = {name: [] for name in learners}
    transforms = transform if isinstance(transform, Mapping) else dict.fromkeys(learners, transform)
    cache = FeatureCache(data.images, device, precision) if feature_cache else None
    for learner in learners.values():
        learner.eval()
    bar = tqdm(
        loader,
        desc=f"evaluate {spec.n_way}-way {spec.n_shot}-shot",
        unit="ep",
        leave=False,
        disable=None if ranks.is_main else True,
        dynamic_ncols=True,
    )
    # Every rank polls the stop request as often, together, so all raise at the same episode.
    rounds = math.ceil(num_episodes / ranks.world_size)
    episodes = iter(bar)
    for _ in range(rounds):
        if stop is not None and any_rank(bool(stop), ranks):
            stop.check()
            raise Interrupted(stop.signal_name or "a stop request")
        raw = next(episodes, None)
        if raw is None:  # a rank with one episode fewer
            continue
        query_y = raw.query_y.to(device)
        for name, learner in learners.items():
            with torch.set_grad_enabled(learner.needs_grad_to_adapt), autocast(device, precision):
                logits = episode_logits(learner, raw, transforms[name], device, cache)
            per_method[name].append(float(accuracy(logits, query_y)))
    if cache is not None and len(cache):
        logger.debug(
            "feature cache: %d images through %d extractor(s), %.1f MiB",
            cache.computed,
            len(cache),
            cache.nbytes / 2**20,
        )
    bar.close()
    if ranks.active:
        per_method = _in_episode_order(gather_objects((list(mine), per_method), ranks))
    episode_set = (
        f"{data.name} ({data.num_classes} classes), {spec}, seed {seed}, {num_episodes} episodes"
    )
    return {name: EvalResult.from_accuracies(v, episode_set) for name, v in per_method.items()}


def _in_episode_order(
    shards: Sequence[tuple[list[int], dict[str, list[float]]]],
) -> dict[str, list[float]]:
    """Every rank's ``(episode indices, method -> accuracies)`` merged into one list per
    method, in episode order."""
    names = list(shards[0][1])
    merged: dict[str, dict[int, float]] = {name: {} for name in names}
    for indices, per_method in shards:
        for name in names:
            merged[name].update(zip(indices, per_method[name], strict=True))
    return {name: [v for _, v in sorted(merged[name].items())] for name in names}


def episode_logits(
    learner: Learner,
    raw: Episode,
    transform: Callable[[torch.Tensor], torch.Tensor] | None,
    device: torch.device | str,
    cache: FeatureCache | None = None,
) -> torch.Tensor:
    """``[n_query, n_way]`` logits of ``learner`` on one episode, as :func:`evaluate` scores it.

    From ``cache`` when the learner qualifies (:meth:`FeatureCache.extractor_for`) and the
    episode knows its images' dataset indices; otherwise ``learner(episode)`` on the
    transformed episode. Grad mode and autocast are the caller's.

    Args:
        learner: In eval mode.
        raw: The episode as sampled (uint8 images, ``support_idx``/``query_idx`` into the
            split that ``cache`` holds).
        transform: The learner's image transform, or None.
        device: Where the learner runs.
        cache: Features of the split, or None for the uncached path.
    """
    extractor = None
    if cache is not None and raw.support_idx is not None and raw.query_idx is not None:
        extractor = cache.extractor_for(learner, transform)
    if extractor is None:
        episode = (raw.map_images(transform) if transform is not None else raw).to(device)
        return learner(episode)
    assert cache is not None and raw.support_idx is not None and raw.query_idx is not None
    features = cache.features(extractor, transform, torch.cat([raw.support_idx, raw.query_idx]))
    n_support = raw.n_support
    state = learner.adapt_features(features[:n_support], raw.support_y.to(device), raw.n_way)
    return learner.predict_features(features[n_support:], state)


def paired_difference(a: EvalResult, b: EvalResult) -> tuple[float, float]:
    """Mean and 95% half-width of the per-episode accuracy differences ``a - b``.

    The paired interval: ``1.96 * std(d) / sqrt(n)`` over ``d_i = a_i - b_i``, far narrower
    than the two separate intervals when both methods find the same episodes hard. The
    half-width is NaN (undefined) for a single episode.

    Raises:
        ValueError: If the results are not on the same episode set.
    """
    if len(a.accuracies) != len(b.accuracies) or (
        a.episode_set and b.episode_set and a.episode_set != b.episode_set
    ):
        raise ValueError(
            "paired_difference needs results on the same episodes; got "
            f"{len(a.accuracies)} episodes of {a.episode_set or 'an unnamed set'} and "
            f"{len(b.accuracies)} of {b.episode_set or 'an unnamed set'}"
        )
    differences = [x - y for x, y in zip(a.accuracies, b.accuracies, strict=True)]
    return mean_confidence_interval(differences)


def format_table(rows: Mapping[str, Mapping[str, EvalResult]]) -> str:
    """A Markdown table: one row per setting, one column per method, ``mean ± ci`` in %.

    An undefined interval (one episode) shows as ``n/a``. Below ``MIN_EPISODES_FOR_CI``
    episodes, the :func:`few_episodes_note` follows the table after a blank line.
    """
    methods = list(dict.fromkeys(m for r in rows.values() for m in r))
    lines = [
        "| setting | " + " | ".join(methods) + " |",
        "| --- | " + " | ".join("---" for _ in methods) + " |",
    ]
    for setting, results in rows.items():
        cells = [
            _mean_ci(results[m].mean, results[m].ci95) if m in results else "-" for m in methods
        ]
        lines.append(f"| {setting} | " + " | ".join(cells) + " |")
    note = few_episodes_note(len(r.accuracies) for rs in rows.values() for r in rs.values())
    return "\n".join(lines) + (f"\n\n{note}" if note else "")


def few_episodes_note(episode_counts: Iterable[int]) -> str:
    """The footnote for results on fewer than ``MIN_EPISODES_FOR_CI`` episodes, or ``""``.

    Args:
        episode_counts: Episodes behind each result; 0 (unknown) is ignored.

    Returns:
        One line (no trailing newline) naming the counts; it also explains ``n/a`` when a
        result rests on a single episode. :func:`format_table` puts it under the table,
        and ``python -m metatl.evaluate`` logs it once as a warning.
    """
    few = sorted({n for n in episode_counts if 0 < n < MIN_EPISODES_FOR_CI})
    if not few:
        return ""
    counts = "/".join(map(str, few))
    note = (
        f"Note: {counts} episode{'' if few == [1] else 's'} per setting; below "
        f"{MIN_EPISODES_FOR_CI} the normal approximation behind the 95% intervals is doubtful"
    )
    if few[0] == 1:
        note += " (n/a: one episode gives no interval)"
    return note + "."


def _mean_ci(mean: float, ci: float, sign: str = "") -> str:
    """``mean ± ci`` in %, with ``n/a`` for an undefined interval."""
    half = "n/a" if math.isnan(ci) else f"{100 * ci:.2f}"
    return f"{100 * mean:{sign}.2f} ± {half}"


def format_paired_table(
    rows: Mapping[str, Mapping[str, EvalResult]], reference: str | None = None
) -> str:
    """A Markdown table of paired differences in percentage points: one row per pair of
    methods, one column per setting.

    Each cell is ``a − b`` as ``mean ± ci`` over the per-episode differences (see
    :func:`paired_difference`). Pairs are every two methods, in the column order of
    :func:`format_table`, or with ``reference`` each other method against it. Empty when
    there are fewer than two methods.
    """
    methods = list(dict.fromkeys(m for r in rows.values() for m in r))
    if reference is None:
        pairs = list(itertools.combinations(methods, 2))
    elif reference not in methods:
        raise ValueError(f"reference method '{reference}' is not among {', '.join(methods)}")
    else:
        pairs = [(m, reference) for m in methods if m != reference]
    if not pairs:
        return ""
    lines = [
        "| difference | " + " | ".join(rows) + " |",
        "| --- | " + " | ".join("---" for _ in rows) + " |",
    ]
    for a, b in pairs:
        cells = []
        for results in rows.values():
            if a in results and b in results:
                cells.append(_mean_ci(*paired_difference(results[a], results[b]), sign="+"))
            else:
                cells.append("-")
        lines.append(f"| {a} − {b} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---- the method registry -------------------------------------------------------------------

MethodBuilder = Callable[[Learner, RunConfig], Learner]
"""``(checkpoint learner, run config) -> learner``, built on ``learner.backbone``."""

_METHODS: dict[str, MethodBuilder] = {}


class UnknownMethodError(ValueError):
    """A method name is neither registered nor the checkpoint's own algorithm."""


def register_method(name: str) -> Callable[[MethodBuilder], MethodBuilder]:
    """Decorator: register a builder as evaluation method ``name``.

    ``register_method("x")(builder)`` registers without decorating. A builder gets the
    evaluated learner and the run config, and builds on ``learner.backbone`` without
    modifying it. A name registered twice warns and the later builder wins.
    """

    def add(builder: MethodBuilder) -> MethodBuilder:
        if name in _METHODS:
            warnings.warn(f"evaluation method '{name}' registered twice", stacklevel=2)
        _METHODS[name] = builder
        return builder

    return add


def list_methods() -> list[str]:
    """Registered method names, sorted."""
    return sorted(_METHODS)


def build_methods(names: Sequence[str], learner: Learner, config: RunConfig) -> dict[str, Learner]:
    """Method name -> learner, in the order given (duplicates dropped).

    A name equal to ``config.model.algorithm`` is ``learner`` itself; any other is built by
    its registered builder on ``learner``'s backbone.

    Raises:
        UnknownMethodError: For a name that is neither (the message lists the known ones).
    """
    own = config.model.algorithm
    unknown = [n for n in names if n != own and n not in _METHODS]
    if unknown:
        known = ", ".join(dict.fromkeys([own, *list_methods()]))
        raise UnknownMethodError(
            f"unknown evaluation method {', '.join(map(repr, unknown))}; choose from: {known}"
        )
    return {n: learner if n == own else _METHODS[n](learner, config) for n in dict.fromkeys(names)}


def default_methods(config: RunConfig) -> list[str]:
    """What a run is tested with: its own algorithm, ``test.methods``, then ``pixels`` if
    ``test.pixel_baseline``."""
    pixels = ["pixels"] if config.test.pixel_baseline else []
    return list(dict.fromkeys([config.model.algorithm, *config.test.methods, *pixels]))


def evaluate_methods(
    names: Sequence[str],
    learner: Learner,
    data: LabelledImages,
    config: RunConfig,
    shots: Sequence[int] | None = None,
    stop: StopRequest | None = None,
) -> dict[str, dict[str, EvalResult]]:
    """Score the named methods on the fixed test episode sets of ``config.test``.

    One set per shot (seed ``test.seed + shot``), every method on the same episodes, each
    with the transform of its own backbone.

    Returns:
        Setting (e.g. ``"5-way 1-shot"``) -> method -> result.
    """
    return evaluate_learners(build_methods(names, learner, config), data, config, shots, stop)


def evaluate_learners(
    learners: Mapping[str, Learner],
    data: LabelledImages,
    config: RunConfig,
    shots: Sequence[int] | None = None,
    stop: StopRequest | None = None,
) -> dict[str, dict[str, EvalResult]]:
    """As :func:`evaluate_methods`, for learners built already (e.g. from several
    checkpoints, to compare them on the same episodes).

    Raises:
        Interrupted: ``stop`` fired; see :func:`evaluate`.
    """
    tcfg = config.test
    device = resolve_device(config.device)
    learners = {n: m.to(device) for n, m in learners.items()}
    # One transform object per input spec: learners on the same backbone then share its
    # cached features (the cache keys on the transform's identity).
    by_spec: dict[InputSpec, ImageTransform] = {}
    transforms = {
        n: by_spec.setdefault(m.backbone.input_spec, ImageTransform(m.backbone.input_spec))
        for n, m in learners.items()
    }
    table: dict[str, dict[str, EvalResult]] = {}
    for shot in shots or tcfg.shots:
        table[f"{tcfg.way}-way {shot}-shot"] = evaluate(
            learners,
            data,
            EpisodeSpec(tcfg.way, shot, tcfg.query),
            tcfg.episodes,
            tcfg.seed + shot,
            transforms,
            workers=config.data.workers,
            device=device,
            precision=config.precision,
            stop=stop,
        )
    return table


@register_method("protonet")
def _protonet(learner: Learner, config: RunConfig) -> Learner:
    """Nearest class mean (squared Euclidean) on the backbone's features."""
    return ProtoNet(learner.backbone)


@register_method("linear")
def _linear(learner: Learner, config: RunConfig) -> Learner:
    """Logistic regression on frozen features; settings from ``config.linear_probe``."""
    return create_learner("linear", learner.backbone, config)


@register_method("finetune")
def _finetune(learner: Learner, config: RunConfig) -> Learner:
    """Head then top blocks fine-tuned per episode; settings from ``config.finetune``."""
    return create_learner("finetune", learner.backbone, config)


@register_method("maml")
def _maml(learner: Learner, config: RunConfig) -> Learner:
    """MAML test-time adaptation from this backbone (a fresh zero head per episode, with the
    ``model.maml`` step settings); a MAML checkpoint itself is used as it is."""
    return MAML(learner.backbone, **(dataclasses.asdict(config.model.maml) | {"head": "zero"}))


@register_method("pixels")
def _pixels(learner: Learner, config: RunConfig) -> Learner:
    """Nearest class mean on raw pixels, at the data's size and the backbone's channels."""
    channels = learner.backbone.input_spec.channels
    size = config.data.image_size
    return ProtoNet(create_backbone("pixels", in_channels=channels, image_size=size))
