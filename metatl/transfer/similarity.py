"""Similarity of two representations: how alike source and target features are, block by block.

:func:`linear_cka` compares two representations of the *same* N inputs (say a block of the source
network and the same block after fine-tuning); :func:`mmd` compares the *distributions* of one
representation on two input sets (source images vs target images). All maths runs in float64.
"""

from __future__ import annotations

from typing import Literal

import torch

from metatl.functional import squared_euclidean_distance
from metatl.transfer.scores import _check_matrix

__all__ = ["linear_cka", "mmd"]


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear centred kernel alignment between two representations of the same inputs.

    Kornblith et al. 2019, "Similarity of Neural Network Representations Revisited".

    ``CKA = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)`` on column-centred ``X, Y``. Invariant to
    orthogonal transforms and isotropic scaling of either side (not to arbitrary invertible maps);
    1 when ``y = x @ Q * s`` with ``Q`` orthogonal.

    Args:
        x: ``[N, D1]``, ``N >= 2``.
        y: ``[N, D2]``, the same N inputs in the same order.

    Returns:
        CKA in ``[0, 1]``.

    Raises:
        ValueError: On mismatched N, non-finite values, or a representation that is constant
            across the inputs (CKA is then undefined).
    """
    a = _check_matrix("x", x)
    b = _check_matrix("y", y)
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"x and y must have the same N, got {a.shape[0]} and {b.shape[0]}")
    a = a - a.mean(0)
    b = b - b.mean(0)
    if a.shape[0] < min(a.shape[1], b.shape[1]):  # cheaper through the N x N Gram matrices
        gram_a, gram_b = a @ a.t(), b @ b.t()
        cross, norm_a, norm_b = (gram_a * gram_b).sum(), gram_a.norm(), gram_b.norm()
    else:
        cross = (b.t() @ a).square().sum()
        norm_a, norm_b = (a.t() @ a).norm(), (b.t() @ b).norm()
    for name, norm in (("x", norm_a), ("y", norm_b)):
        if float(norm) == 0.0:
            raise ValueError(f"{name} is constant across the inputs; CKA is undefined")
    return float((cross / (norm_a * norm_b)).clamp(0.0, 1.0))


def _median_bandwidth(pooled: torch.Tensor, sq_dist: torch.Tensor) -> float:
    """Median Euclidean distance between distinct points of the pooled sample (1 if all equal)."""
    i, j = torch.triu_indices(pooled.shape[0], pooled.shape[0], offset=1)
    dist = sq_dist[i, j].sqrt()
    median = float(dist.median())
    if median > 0:
        return median
    positive = dist[dist > 0]  # more than half the pairs coincide: fall back to the others
    return float(positive.median()) if positive.numel() else 1.0


def mmd(
    x: torch.Tensor,
    y: torch.Tensor,
    kernel: Literal["rbf", "linear"] = "rbf",
    bandwidth: float | None = None,
) -> float:
    """Unbiased squared maximum mean discrepancy between two samples.

    Gretton et al. 2012, "A Kernel Two-Sample Test" (the unbiased estimator of their Lemma 6).

    ``MMD^2_u = mean_{i!=j} k(x_i, x_j) + mean_{i!=j} k(y_i, y_j) - 2 mean_{i,j} k(x_i, y_j)``.
    The RBF kernel is ``k(a, b) = exp(-||a - b||^2 / (2 sigma^2))``; with ``bandwidth=None``
    ``sigma`` is the median pairwise distance in the pooled sample (the median heuristic), which
    keeps the result symmetric in ``x, y``. The linear kernel is ``k(a, b) = a . b``. Being
    unbiased, the estimate can be slightly negative when the two distributions are equal.

    Args:
        x: ``[N, D]``, ``N >= 2``.
        y: ``[M, D]``, ``M >= 2``.
        kernel: ``"rbf"`` or ``"linear"``.
        bandwidth: RBF ``sigma > 0``; None for the median heuristic. Ignored by ``"linear"``.

    Returns:
        The unbiased MMD^2 estimate.
    """
    a = _check_matrix("x", x)
    b = _check_matrix("y", y)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"x and y must have the same D, got {a.shape[1]} and {b.shape[1]}")
    if kernel not in ("rbf", "linear"):
        raise ValueError(f"kernel must be 'rbf' or 'linear', got {kernel!r}")
    if bandwidth is not None and not (0.0 < bandwidth < float("inf")):
        raise ValueError(f"bandwidth must be a positive finite number or None, got {bandwidth}")
    pooled = torch.cat([a, b])
    if kernel == "linear":
        gram = pooled @ pooled.t()
    else:
        sq_dist = squared_euclidean_distance(pooled, pooled)
        sigma = bandwidth if bandwidth is not None else _median_bandwidth(pooled, sq_dist)
        gram = torch.exp(-sq_dist / (2.0 * sigma**2))
    n, m = a.shape[0], b.shape[0]
    k_xx, k_yy, k_xy = gram[:n, :n], gram[n:, n:], gram[:n, n:]
    within_x = (k_xx.sum() - k_xx.diagonal().sum()) / (n * (n - 1))
    within_y = (k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
    return float(within_x + within_y - 2.0 * k_xy.mean())
