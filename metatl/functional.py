"""Shared few-shot maths as pure functions: prototypes, distances, accuracy, intervals."""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import torch
import torch.nn.functional as F  # noqa: N812

MIN_EPISODES_FOR_CI = 30
"""Below this many episodes the normal approximation behind a 95% interval is doubtful."""

__all__ = [
    "MIN_EPISODES_FOR_CI",
    "accuracy",
    "cosine_similarity_matrix",
    "mean_confidence_interval",
    "prototypes",
    "squared_euclidean_distance",
    "t_confidence_interval",
    "t_quantile_975",
]


def prototypes(features: torch.Tensor, labels: torch.Tensor, n_way: int) -> torch.Tensor:
    """Mean feature of each class (the class prototype of Snell et al., 2017).

    Works for unequal shots per class.

    Args:
        features: ``[n_support, D]``.
        labels: int64 ``[n_support]``, values in ``0 .. n_way - 1``, each class present.
        n_way: Number of classes.

    Returns:
        ``[n_way, D]``.
    """
    sums = features.new_zeros((n_way, features.shape[1])).index_add_(0, labels, features)
    counts = torch.bincount(labels, minlength=n_way).clamp_min_(1).to(features.dtype)
    return sums / counts.unsqueeze(1)


def squared_euclidean_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pairwise squared Euclidean distances ``||x_i - y_j||^2``.

    Computed as ``|x|^2 - 2 x.y + |y|^2`` (one matmul) and clamped at zero against round-off.

    Args:
        x: ``[N, D]``.
        y: ``[M, D]``.

    Returns:
        ``[N, M]``.
    """
    x_sq = x.pow(2).sum(1, keepdim=True)
    y_sq = y.pow(2).sum(1).unsqueeze(0)
    return torch.addmm(x_sq + y_sq, x, y.t(), alpha=-2.0).clamp_min_(0.0)


def cosine_similarity_matrix(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pairwise cosine similarities.

    Args:
        x: ``[N, D]``.
        y: ``[M, D]``.
        eps: Norm floor that keeps zero vectors finite.

    Returns:
        ``[N, M]`` in ``[-1, 1]``.
    """
    return F.normalize(x, dim=1, eps=eps) @ F.normalize(y, dim=1, eps=eps).t()


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Fraction of rows whose arg-max equals the label: a 0-dim float tensor.

    Args:
        logits: ``[N, n_way]``.
        labels: int64 ``[N]``.
    """
    return (logits.argmax(dim=1) == labels).float().mean()


def mean_confidence_interval(values: torch.Tensor | list[float]) -> tuple[float, float]:
    """Mean and 95% confidence half-width ``1.96 * std / sqrt(n)`` over episodes.

    This is the interval few-shot papers report (Meta-Dataset, LibFewShot); ``std`` is the
    sample standard deviation (``n - 1``). It rests on the normal approximation of the mean,
    which is doubtful below about :data:`MIN_EPISODES_FOR_CI` values. A single value has no
    interval: its half-width is NaN (shown as ``n/a``, written as ``null`` in JSON), not 0.

    Args:
        values: Per-episode accuracies ``[n]``.

    Returns:
        ``(mean, half_width)``; ``half_width`` is NaN for one value.

    Raises:
        ValueError: If ``values`` is empty.
    """
    v = torch.as_tensor(values, dtype=torch.float64)
    if v.numel() == 0:
        raise ValueError("mean_confidence_interval needs at least one value")
    if v.numel() == 1:
        return float(v[0]), math.nan
    return float(v.mean()), float(1.96 * v.std(unbiased=True) / math.sqrt(v.numel()))


@lru_cache(maxsize=256)
def t_quantile_975(df: int) -> float:
    """Two-sided 95% quantile of Student's t with ``df`` degrees of freedom (12.706 for 1,
    4.303 for 2, -> 1.960), by bisection on the closed form of ``P(|T| < t)`` for integer
    ``df`` (Abramowitz & Stegun 26.7.3-4)."""
    lo, hi = 0.0, 1e3
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_central(mid, df) < 0.95 else (lo, mid)
    return (lo + hi) / 2


def _t_central(t: float, df: int) -> float:
    theta = math.atan(t / math.sqrt(df))
    c2 = math.cos(theta) ** 2
    if df % 2 == 0:  # sin(θ) · Σ_j Π_{i<=j} (2i-1)/(2i) cos^{2j}θ, j < df/2
        term = total = 1.0
        for i in range(1, df // 2):
            term *= (2 * i - 1) / (2 * i) * c2
            total += term
        return math.sin(theta) * total
    term = total = math.cos(theta)  # 2/π (θ + sinθ Σ_j Π_{i<=j} 2i/(2i+1) cos^{2j+1}θ)
    for i in range(1, (df - 1) // 2):
        term *= 2 * i / (2 * i + 1) * c2
        total += term
    return 2 / math.pi * (theta + (math.sin(theta) * total if df > 1 else 0.0))


def t_confidence_interval(values: Sequence[float]) -> tuple[float, float]:
    """Mean and Student-t 95% half-width of a few values (seeds, not episodes: with 3 seeds
    the normal 1.96 would understate the interval 2.2 times); NaN half-width for one value.

    Raises:
        ValueError: If ``values`` is empty.
    """
    k = len(values)
    if k == 0:
        raise ValueError("t_confidence_interval needs at least one value")
    mean = math.fsum(values) / k
    if k < 2:
        return mean, math.nan
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (k - 1))
    return mean, t_quantile_975(k - 1) * sd / math.sqrt(k)
