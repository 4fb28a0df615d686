"""What the adaptation methods minimise on unlabelled target data: pure functions and the
domain classifier.

- :func:`gradient_reversal`: identity forward, gradient times ``-coefficient`` backward
  (Ganin & Lempitsky 2015), so one backward pass trains the domain classifier to tell the
  domains apart and the backbone to make them indistinguishable.
- :func:`dann_coefficient`: DANN's schedule of that coefficient, 0 at the start rising to 1.
- :func:`entropy`: mean Shannon entropy of softmax predictions (TENT's loss, and the
  entropy validator).
- :func:`minimum_class_confusion`: MCC's loss (Jin et al. 2020, "Minimum Class Confusion for
  Versatile Domain Adaptation").

None of them takes a target label: there is none to give.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

__all__ = [
    "DomainClassifier",
    "dann_coefficient",
    "domain_loss",
    "entropy",
    "gradient_reversal",
    "minimum_class_confusion",
]


class _GradientReversal(torch.autograd.Function):
    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, coefficient: float):  # type: ignore[override]
        ctx.coefficient = coefficient  # type: ignore[attr-defined]
        return x.view_as(x)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor):  # type: ignore[override]
        return -ctx.coefficient * grad, None  # type: ignore[attr-defined]


def gradient_reversal(x: torch.Tensor, coefficient: float = 1.0) -> torch.Tensor:
    """``x`` unchanged; in the backward pass its gradient is multiplied by ``-coefficient``.

    Args:
        x: Any tensor, e.g. features ``[B, D]``.
        coefficient: The reversal's scale (DANN's lambda).
    """
    return _GradientReversal.apply(x, coefficient)


def dann_coefficient(progress: float, gamma: float = 10.0) -> float:
    """DANN's gradient-reversal schedule ``2 / (1 + exp(-gamma p)) - 1`` at training progress
    ``p`` in [0, 1]: 0 at the start (the domain classifier is still noise), near 1 from
    ``p`` about 0.3 on (Ganin et al. 2016, section 5.2.2)."""
    p = min(max(progress, 0.0), 1.0)
    return 2.0 / (1.0 + math.exp(-gamma * p)) - 1.0


class DomainClassifier(nn.Module):
    """DANN's domain classifier: ``[B, D]`` features -> ``[B]`` logits of "from the target".

    Two hidden layers of ``hidden`` units with BatchNorm and ReLU, as in the paper's
    1024-1024 discriminator.

    Args:
        dim: Feature width.
        hidden: Units per hidden layer.
    """

    def __init__(self, dim: int, hidden: int = 1024) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, 1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``[B, D]`` -> ``[B]`` logits."""
        return self.net(features).squeeze(1)


def domain_loss(
    source_logits: torch.Tensor, target_logits: torch.Tensor
) -> tuple[torch.Tensor, float]:
    """Binary cross-entropy of the domain classifier (source 0, target 1), each domain
    weighted equally whatever the batch sizes.

    Args:
        source_logits: ``[B_s]`` domain logits of source features.
        target_logits: ``[B_t]`` domain logits of target features.

    Returns:
        The loss (float32 scalar) and the classifier's accuracy over both batches.
    """
    s, t = source_logits.float(), target_logits.float()
    loss = 0.5 * (
        F.binary_cross_entropy_with_logits(s, torch.zeros_like(s))
        + F.binary_cross_entropy_with_logits(t, torch.ones_like(t))
    )
    correct = (s.detach() < 0).sum() + (t.detach() > 0).sum()
    return loss, float(correct) / (len(s) + len(t))


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean Shannon entropy (nats) of the softmax of ``[B, K]`` logits; a scalar."""
    log_p = F.log_softmax(logits.float(), dim=1)
    return -(log_p.exp() * log_p).sum(1).mean()


def minimum_class_confusion(logits: torch.Tensor, temperature: float = 2.5) -> torch.Tensor:
    """MCC's loss on a batch of unlabelled target logits ``[B, K]``; a scalar in [0, 1].

    Predictions ``p = softmax(logits / T)`` ``[B, K]``; each sample is weighted by
    ``1 + exp(-H(p_i))`` (confident samples count more; a constant for the gradient, as in
    the paper's code), normalised to sum to ``B``; the
    class correlation ``C = p^T W p`` ``[K, K]`` has each row normalised to sum to 1; the loss
    is the confusion between different classes, ``(sum(C) - trace(C)) / K``.
    """
    b, k = logits.shape
    p = F.softmax(logits.float() / temperature, dim=1)
    h = -(p * torch.log(p + 1e-5)).sum(1).detach()
    weight = 1.0 + torch.exp(-h)
    weight = (b * weight / weight.sum()).unsqueeze(1)  # [B, 1]
    confusion = (p * weight).T @ p  # [K, K]
    confusion = confusion / confusion.sum(1, keepdim=True)
    return (confusion.sum() - confusion.trace()) / k
