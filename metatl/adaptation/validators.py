"""Scoring a classifier on images: accuracy where there are labels, and the label-free
validators of domain adaptation where there are none.

Choosing a checkpoint or a hyper-parameter by target accuracy needs the target labels that
unsupervised domain adaptation does not have. The label-free criteria here are computed from
the model's predictions on unlabelled target images:

- :func:`prediction_entropy`: mean entropy of the predictions (lower: more confident; Morerio
  et al. 2018 use it for model selection);
- :func:`soft_neighbourhood_density` (SND, Saito et al. 2021, "Tune it the Right Way"):
  the entropy of each image's soft neighbourhood among the others' predictions (higher: the
  predictions form dense clusters).

Next to the source validation accuracy they are what :mod:`metatl.adaptation.selection`
chooses checkpoints by.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from metatl.adaptation.losses import entropy
from metatl.training.device import autocast

__all__ = [
    "correct_predictions",
    "predict_logits",
    "prediction_entropy",
    "soft_neighbourhood_density",
]

Transform = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    images: torch.Tensor,
    transform: Transform,
    *,
    batch_size: int = 512,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
) -> torch.Tensor:
    """The model's logits on every image, in eval mode, batch by batch.

    Args:
        model: ``[B, C, H, W]`` -> ``[B, K]``; put in eval mode and left so.
        images: uint8 ``[N, C, H, W]``.
        transform: uint8 images -> normalised model input.
        batch_size: Images per forward pass.
        device: Where to run.
        precision: Autocast precision.

    Returns:
        float32 ``[N, K]`` on the CPU.
    """
    device = torch.device(device)
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = transform(images[start : start + batch_size]).to(device)
        with autocast(device, precision):
            out.append(model(x).float().cpu())
    return torch.cat(out)


def correct_predictions(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """1.0 where ``argmax(logits)`` ``[N, K]`` equals ``labels`` ``[N]``, else 0.0: ``[N]``."""
    return (logits.argmax(1) == labels.to(logits.device)).float()


def prediction_entropy(logits: torch.Tensor) -> float:
    """Mean entropy (nats) of the softmax predictions of ``[N, K]`` logits; lower is better."""
    return float(entropy(logits))


def soft_neighbourhood_density(logits: torch.Tensor, temperature: float = 0.05) -> float:
    """SND of ``[N, K]`` target logits (N >= 2); higher is better.

    The softmax predictions are L2-normalised; each image's similarities to the other
    ``N - 1`` (cosine, divided by ``temperature``) go through a softmax, and SND is the mean
    entropy of those neighbourhood distributions.
    """
    if len(logits) < 2:
        raise ValueError("SND needs 2+ images")
    p = F.normalize(F.softmax(logits.float(), dim=1), dim=1)
    similarity = p @ p.T / temperature
    similarity.fill_diagonal_(float("-inf"))
    log_q = F.log_softmax(similarity, dim=1)
    q = log_q.exp()
    return float(-(q * log_q.nan_to_num(0.0, neginf=0.0)).sum(1).mean())
