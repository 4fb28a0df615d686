"""The one learner contract every algorithm follows: adapt -> state, predict, loss."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Generic, TypeVar

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from episodes import Episode
from metatl.backbones import Backbone
from metatl.functional import accuracy

__all__ = ["Learner"]

State = TypeVar("State")


class Learner(nn.Module, ABC, Generic[State]):
    """A few-shot learner: adapts to a support set, then classifies queries.

    Learners are stateless across episodes: :meth:`adapt` returns everything the adapted
    model needs as a state object and never stores it on ``self``, so one learner can
    serve many episodes (and threads) at once.

    Args:
        backbone: The feature extractor; its ``input_spec`` decides the data transform.
    """

    needs_grad_to_adapt: bool = False
    """True for learners whose ``adapt`` takes gradient steps (evaluation keeps autograd on)."""

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.backbone = backbone

    @abstractmethod
    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, n_way: int) -> State:
        """Adapt to a labelled support set.

        Args:
            support_x: ``[n_support, C, H, W]`` float images.
            support_y: int64 ``[n_support]`` in ``0 .. n_way - 1``.
            n_way: Number of classes in the episode.

        Returns:
            The adapted state, consumed by :meth:`predict`.
        """

    @abstractmethod
    def predict(self, query_x: torch.Tensor, state: State) -> torch.Tensor:
        """Class logits of the queries under an adapted state.

        Args:
            query_x: ``[n_query, C, H, W]`` float images.
            state: From :meth:`adapt`.

        Returns:
            ``[n_query, n_way]`` logits.
        """

    def forward(self, episode: Episode) -> torch.Tensor:
        """Adapt on the support set, then return ``[n_query, n_way]`` query logits."""
        state = self.adapt(episode.support_x, episode.support_y, episode.n_way)
        return self.predict(episode.query_x, state)

    def loss(self, episode: Episode) -> tuple[torch.Tensor, dict[str, Any]]:
        """Cross-entropy of the query predictions, and ``{"loss", "accuracy"}`` as floats."""
        logits = self(episode)
        loss = F.cross_entropy(logits, episode.query_y)
        return loss, {
            "loss": float(loss.detach()),
            "accuracy": float(accuracy(logits, episode.query_y)),
        }
