"""Transferability scores: how well a source model should transfer to a labelled target set.

Each score reads the source model's outputs on the target inputs (features, softmax outputs or hard
predictions) and the target labels; higher means better transfer is expected. They are meant to
*rank* source models before any fine-tuning, which :func:`kendall_tau` measures against the
accuracies actually reached. All maths runs in float64; inputs are never modified.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["h_score", "kendall_tau", "leep", "logme", "nce"]

LOGME_MAX_ITER = 1000
"""Cap on LogME's fixed-point iterations.

An interior optimum is reached in fewer than ten. Optima on the boundary (``alpha -> inf`` when a
class has no linear signal in the features, ``beta -> inf`` when ``N <= D``) are approached
slowly and may use the whole cap (about 0.1 s); the evidence is then within ~1e-7 of its limit.
"""

_LOGME_TOL = 1e-10
"""Convergence: change of ``log alpha`` and ``log beta`` between two iterations.

The evidence criterion below matters when ``N <= D``: the targets then lie in the span of the
features, and the evidence rises towards a finite limit as ``beta -> inf`` without a maximiser.
"""

_LOGME_EVIDENCE_TOL = 1e-12
"""Convergence: change of the log evidence per sample between two iterations."""

_LOGME_FLOOR = 1e-12
"""Relative floor on ``||w||^2`` and the residual, and range of alpha around its natural scale.

Keeps the evidence finite when it is unbounded: targets exactly in the span of the features make
``beta -> inf``, targets orthogonal to it make ``alpha -> inf``.
"""


def _check_matrix(name: str, x: torch.Tensor, min_rows: int = 2) -> torch.Tensor:
    """Validate a finite real ``[N, D]`` tensor and return it detached, in float64."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D [N, D], got shape {tuple(x.shape)}")
    if x.is_complex() or x.dtype == torch.bool or not x.is_floating_point():
        raise ValueError(f"{name} must be a real floating tensor, got dtype {x.dtype}")
    if x.shape[0] < min_rows or x.shape[1] < 1:
        raise ValueError(f"{name} needs N >= {min_rows} rows and D >= 1, got {tuple(x.shape)}")
    x = x.detach().to(torch.float64)
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def _check_labels(name: str, labels: torch.Tensor, n: int | None = None) -> torch.Tensor:
    """Validate non-negative integer labels ``[n]`` (any ``n >= 2`` if None), return int64."""
    if not isinstance(labels, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"{name} must be an integer tensor, got dtype {labels.dtype}")
    if n is None and (labels.dim() != 1 or labels.shape[0] < 2):
        raise ValueError(f"{name} must have shape [N] with N >= 2, got {tuple(labels.shape)}")
    if n is not None and (labels.dim() != 1 or labels.shape[0] != n):
        raise ValueError(f"{name} must have shape [{n}], got {tuple(labels.shape)}")
    labels = labels.detach().to(torch.int64)
    if bool((labels < 0).any()):
        raise ValueError(f"{name} must be >= 0, got minimum {int(labels.min())}")
    return labels


def _one_hot_present(labels: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """One-hot ``[N, C]`` over the C classes present in ``labels`` (absent ids are dropped)."""
    _, inverse = torch.unique(labels, return_inverse=True)
    return torch.nn.functional.one_hot(inverse).to(dtype)


def _logme_terms(
    alpha: torch.Tensor, beta: torch.Tensor, s2: torch.Tensor, z: torch.Tensor, y2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``gamma``, ``||m||^2`` and ``||F m - y||^2`` per class, all ``[C]``, from the SVD."""
    denom = alpha + beta * s2.unsqueeze(1)  # [k, C]
    gamma = (beta * s2.unsqueeze(1) / denom).sum(0)
    m2 = (beta.square() * s2.unsqueeze(1) * z.square() / denom.square()).sum(0)
    outside = (y2 - z.square().sum(0)).clamp_min(0.0)  # part of y outside the span of F
    res2 = ((alpha / denom).square() * z.square()).sum(0) + outside
    return gamma, m2, res2


def _logme_evidence(
    alpha: torch.Tensor,
    beta: torch.Tensor,
    s2: torch.Tensor,
    z: torch.Tensor,
    y2: torch.Tensor,
    n: int,
) -> torch.Tensor:
    """Log evidence ``log p(y_c | F, alpha_c, beta_c)`` per class, ``[C]``, at the posterior mean.

    ``D/2 log alpha - 1/2 log|alpha I + beta F^T F|`` is folded into ``-1/2 sum log(1 + beta s^2 /
    alpha)`` over the nonzero singular values, so null directions of ``F`` cost nothing.
    """
    _, m2, res2 = _logme_terms(alpha, beta, s2, z, y2)
    return (
        0.5 * n * (beta.log() - math.log(2 * math.pi))
        - 0.5 * beta * res2
        - 0.5 * alpha * m2
        - 0.5 * torch.log1p(beta * s2.unsqueeze(1) / alpha).sum(0)
    )


def _logme_fit(
    features: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Maximise LogME's evidence per class by the fixed point of You et al. 2021, Algorithm 1.

    Args:
        features: float64 ``[N, D]``, validated.
        labels: int64 ``[N]``, validated.

    Returns:
        ``(evidence, alpha, beta)``, each ``[C]`` over the classes present: the maximised log
        evidence ``log p(y_c | F)`` (not divided by N) and the optimal prior and noise precisions.
    """
    n = features.shape[0]
    targets = _one_hot_present(labels, torch.float64)  # [N, C]
    u, s, _ = torch.linalg.svd(features, full_matrices=False)  # thin: k = min(N, D)
    keep = s > max(features.shape) * torch.finfo(torch.float64).eps * s.max()
    s2 = s[keep].square()  # [k] nonzero eigenvalues of F^T F (equal to those of F F^T)
    z = u[:, keep].t() @ targets  # [k, C] targets in the left singular basis
    y2 = targets.square().sum(0)  # [C]
    s2_ref = float(s2.max()) if s2.numel() else 1.0  # natural scale of alpha
    alpha = torch.ones_like(y2)
    beta = torch.ones_like(y2)
    evidence = _logme_evidence(alpha, beta, s2, z, y2, n)
    for _ in range(LOGME_MAX_ITER):
        gamma, m2, res2 = _logme_terms(alpha, beta, s2, z, y2)
        new_alpha = gamma / m2.clamp_min(_LOGME_FLOOR * y2 / s2_ref)
        new_alpha = new_alpha.clamp(_LOGME_FLOOR * s2_ref, s2_ref / _LOGME_FLOOR)
        new_beta = (n - gamma) / res2.clamp_min(_LOGME_FLOOR * y2)
        step = torch.maximum((new_alpha / alpha).log().abs(), (new_beta / beta).log().abs())
        new_evidence = _logme_evidence(new_alpha, new_beta, s2, z, y2, n)
        gain = float((new_evidence - evidence).abs().max())
        alpha, beta, evidence = new_alpha, new_beta, new_evidence
        if float(step.max()) < _LOGME_TOL or gain < _LOGME_EVIDENCE_TOL * n:
            break
    return evidence, alpha, beta


def logme(features: torch.Tensor, labels: torch.Tensor) -> float:
    """LogME: the maximised log evidence of a Bayesian linear model on the features.

    You et al. 2021, "LogME: Practical Assessment of Pre-trained Models for Transfer Learning".

    Each class ``c`` gives a one-hot target ``y_c = [labels == c]``, modelled as
    ``y = F w + noise`` with ``w ~ N(0, I / alpha)`` and ``noise ~ N(0, 1 / beta)``. The evidence
    ``log N(y | 0, F F^T / alpha + I / beta)`` is maximised over ``alpha, beta`` by the paper's
    fixed-point iteration, computed from the thin SVD of ``F`` (so ``N < D`` costs ``O(N^2 D)``).
    Features are used as given (no centring, no intercept), as in the paper. Degenerate features
    (constant, zero, rank-deficient, or fitting a target exactly) give a finite value: the
    unbounded precisions are capped, see ``_LOGME_FLOOR``.

    Args:
        features: ``[N, D]`` target-set features from the source model, ``N >= 2``.
        labels: int64 ``[N]`` target labels ``>= 0``; only the classes present are scored.

    Returns:
        The log evidence per sample, averaged over the classes present.
    """
    f = _check_matrix("features", features)
    y = _check_labels("labels", labels, f.shape[0])
    evidence, _, _ = _logme_fit(f, y)
    return float(evidence.mean()) / f.shape[0]


def leep(source_probs: torch.Tensor, labels: torch.Tensor) -> float:
    """LEEP: log expected empirical prediction of the source classifier re-labelled to the target.

    Nguyen et al. 2020, "LEEP: A New Measure to Evaluate Transferability of Learned
    Representations".

    With ``theta`` the source softmax outputs, the empirical joint is
    ``P(y, z) = 1/N sum_{i: y_i = y} theta_z(x_i)``, the conditional ``P(y | z) = P(y, z) / P(z)``,
    and the score ``1/N sum_i log sum_z P(y_i | z) theta_z(x_i)``. A source class that receives no
    probability mass contributes nothing.

    Args:
        source_probs: ``[N, Z]`` softmax outputs over the Z source classes (non-negative rows
            summing to 1 within ``1e-3``).
        labels: int64 ``[N]`` target labels ``>= 0``.

    Returns:
        The LEEP score, ``<= 0``.
    """
    theta = _check_matrix("source_probs", source_probs)
    y = _check_labels("labels", labels, theta.shape[0])
    if bool((theta < 0).any()):
        raise ValueError("source_probs must be non-negative (softmax outputs)")
    row_sums = theta.sum(1)
    if bool(((row_sums - 1.0).abs() > 1e-3).any()):
        worst = float((row_sums - 1.0).abs().max())
        raise ValueError(f"source_probs rows must sum to 1, off by up to {worst:.3g}")
    joint = _one_hot_present(y, torch.float64).t() @ theta / theta.shape[0]  # [C, Z]
    p_z = joint.sum(0, keepdim=True)
    conditional = torch.where(p_z > 0, joint / p_z.clamp_min(torch.finfo(torch.float64).tiny), 0.0)
    _, inverse = torch.unique(y, return_inverse=True)
    expected = (conditional[inverse] * theta).sum(1)  # [N]
    return float(expected.clamp_min(torch.finfo(torch.float64).tiny).log().mean())


def nce(source_labels: torch.Tensor, labels: torch.Tensor) -> float:
    """NCE: the negative conditional entropy ``-H(Y | Z)`` of target labels given source labels.

    Tran et al. 2019, "Transferability and Hardness of Supervised Classification Tasks".

    ``Z`` are the source model's hard predictions on the target inputs; the joint ``P(y, z)`` is
    the empirical one, and ``-H(Y | Z) = sum_{y,z} P(y, z) log P(y | z)`` (natural log, nats).

    Args:
        source_labels: int64 ``[N]`` source-class predictions ``>= 0``, ``N >= 2``.
        labels: int64 ``[N]`` target labels ``>= 0``.

    Returns:
        The NCE score in ``[-log C, 0]``; 0 when the target label is a function of the source one.
    """
    z = _check_labels("source_labels", source_labels)
    y = _check_labels("labels", labels, z.shape[0])
    z_onehot = _one_hot_present(z, torch.float64)
    joint = _one_hot_present(y, torch.float64).t() @ z_onehot / z.shape[0]  # [C, Z], all P(z)>0
    conditional = joint / joint.sum(0, keepdim=True)
    terms = torch.where(joint > 0, joint * conditional.clamp_min(1e-300).log(), 0.0)
    return float(terms.sum())


def h_score(features: torch.Tensor, labels: torch.Tensor, shrinkage: float = 0.0) -> float:
    """H-score: ``tr(cov(f)^+ cov(E[f | y]))``, the between-class share of the feature covariance.

    Bao et al. 2019, "An Information-theoretic Approach to Transferability in Task Transfer
    Learning".

    Both covariances are centred and use the same ``1/N`` normaliser (it cancels in the trace).
    ``E[f | y]`` replaces each sample by its class mean, so classes weigh by their frequency.
    ``cov(f)^+`` is the Moore-Penrose pseudo-inverse (eigenvalues below ``D * eps`` times the
    largest are dropped). With ``shrinkage = lam > 0`` the feature covariance is first replaced
    by ``(1 - lam) cov(f) + lam * tr(cov(f)) / D * I``, which tames the near-singular covariances
    of high-dimensional features (the shrunk variant of Ibrahim et al. 2022); by default no
    shrinkage, as in the paper.

    Args:
        features: ``[N, D]`` target-set features from the source model, ``N >= 2``.
        labels: int64 ``[N]`` target labels ``>= 0``.
        shrinkage: ``lam`` in ``[0, 1]``.

    Returns:
        The H-score, in ``[0, rank cov(f)]``; at most ``C - 1`` for C classes when unshrunk.
    """
    f = _check_matrix("features", features)
    y = _check_labels("labels", labels, f.shape[0])
    if not 0.0 <= shrinkage <= 1.0:
        raise ValueError(f"shrinkage must be in [0, 1], got {shrinkage}")
    f = f - f.mean(0)
    onehot = _one_hot_present(y, torch.float64)  # [N, C]
    class_means = (onehot.t() @ f) / onehot.sum(0).unsqueeze(1)  # [C, D]
    g = onehot @ class_means  # [N, D]: E[f | y_i], already centred
    cov_f = f.t() @ f / f.shape[0]
    cov_g = g.t() @ g / f.shape[0]
    if shrinkage > 0:
        target = torch.eye(f.shape[1], dtype=f.dtype, device=f.device) * cov_f.trace() / f.shape[1]
        cov_f = (1.0 - shrinkage) * cov_f + shrinkage * target
    return float((torch.linalg.pinv(cov_f, hermitian=True) @ cov_g).trace())


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-b rank correlation, with ties handled.

    Kendall 1945, "The treatment of ties in ranking problems".

    ``tau_b = (n_c - n_d) / sqrt((n_0 - n_1)(n_0 - n_2))`` over all pairs, where ``n_1`` and
    ``n_2`` count the pairs tied in ``a`` and in ``b``. Used to ask how well a transferability
    score ranks source models against the accuracy they reach after transfer.

    Args:
        a: ``n >= 2`` finite values.
        b: ``n`` finite values, paired with ``a``.

    Returns:
        ``tau_b`` in ``[-1, 1]``.

    Raises:
        ValueError: On unequal lengths, ``n < 2``, non-finite values, or a sequence whose values
            are all tied (tau is then undefined).
    """
    x = torch.as_tensor(list(a), dtype=torch.float64)
    y = torch.as_tensor(list(b), dtype=torch.float64)
    for name, v in (("a", x), ("b", y)):
        if v.dim() != 1 or v.numel() < 2:
            raise ValueError(f"{name} must be a flat sequence of at least 2 values")
        if not bool(torch.isfinite(v).all()):
            raise ValueError(f"{name} contains NaN or infinite values")
    if x.numel() != y.numel():
        raise ValueError(f"a and b must have equal lengths, got {x.numel()} and {y.numel()}")
    i, j = torch.triu_indices(x.numel(), x.numel(), offset=1)
    sign_a = torch.sign(x[i] - x[j])
    sign_b = torch.sign(y[i] - y[j])
    untied_a = float(sign_a.abs().sum())
    untied_b = float(sign_b.abs().sum())
    if untied_a == 0 or untied_b == 0:
        raise ValueError(f"{'a' if untied_a == 0 else 'b'} has all values tied; tau is undefined")
    return float((sign_a * sign_b).sum()) / math.sqrt(untied_a * untied_b)
