"""Prototypical Networks (Snell, Swersky & Zemel, NeurIPS 2017)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from metatl.algorithms.base import Learner
from metatl.backbones import Backbone
from metatl.functional import cosine_similarity_matrix, prototypes, squared_euclidean_distance

__all__ = ["ProtoNet", "PrototypeState"]

Distance = Literal["sqeuclidean", "cosine"]


@dataclass(frozen=True)
class PrototypeState:
    """Adapted ProtoNet: one prototype per class, ``[n_way, D]``."""

    prototypes: torch.Tensor


class ProtoNet(Learner[PrototypeState]):
    """Classify queries by distance to class-mean embeddings (prototypes).

    Logits are ``-||f(x) - c_k||^2`` (squared Euclidean, the paper's choice) or
    ``scale * cos(f(x), c_k)`` with a learnable ``scale`` (as in Chen et al. 2019 / TADAM).

    Args:
        backbone: Embedding network ``f``.
        distance: ``"sqeuclidean"`` or ``"cosine"``.
        cosine_scale: Initial value of the learnable cosine temperature.
    """

    def __init__(
        self, backbone: Backbone, distance: Distance = "sqeuclidean", cosine_scale: float = 10.0
    ) -> None:
        super().__init__(backbone)
        if distance not in ("sqeuclidean", "cosine"):
            raise ValueError(f"distance must be 'sqeuclidean' or 'cosine', got '{distance}'")
        self.distance = distance
        self.scale = (
            nn.Parameter(torch.tensor(float(cosine_scale))) if distance == "cosine" else None
        )

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, n_way: int) -> PrototypeState:
        return self.adapt_features(self.backbone(support_x), support_y, n_way)

    def predict(self, query_x: torch.Tensor, state: PrototypeState) -> torch.Tensor:
        return self.predict_features(self.backbone(query_x), state)

    def frozen_feature_extractor(self) -> nn.Module | None:
        """The backbone while in eval mode: then every image's embedding is a fixed function
        of that image alone (BatchNorm running statistics, no dropout), and the logits depend
        on the images only through it, so they may be computed from cached features with
        :meth:`adapt_features` and :meth:`predict_features`. None in training mode, where
        BatchNorm normalises with the statistics of the whole episode."""
        if self.training or any(m.training for m in self.backbone.modules()):
            return None
        return self.backbone

    def adapt_features(
        self, support_f: torch.Tensor, support_y: torch.Tensor, n_way: int
    ) -> PrototypeState:
        """:meth:`adapt` on embeddings already computed.

        Args:
            support_f: ``[n_support, D]`` backbone features of the support images.
            support_y: int64 ``[n_support]`` in ``0 .. n_way - 1``.
            n_way: Number of classes in the episode.
        """
        return PrototypeState(prototypes(_full_precision(support_f), support_y, n_way))

    def predict_features(self, query_f: torch.Tensor, state: PrototypeState) -> torch.Tensor:
        """:meth:`predict` on ``[n_query, D]`` query features: ``[n_query, n_way]`` logits."""
        return self.logits(query_f, state.prototypes)

    def logits(self, features: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
        """``[n_query, D]`` features and ``[n_way, D]`` prototypes -> ``[n_query, n_way]``.

        Always computed in float32, also under autocast: squared distances between close
        points cancel catastrophically in 16-bit floats.
        """
        with torch.autocast(features.device.type, enabled=False):
            features, protos = _full_precision(features), _full_precision(protos)
            if self.scale is not None:
                return self.scale * cosine_similarity_matrix(features, protos)
            return -squared_euclidean_distance(features, protos)

    def forward(self, episode) -> torch.Tensor:
        # One backbone pass over support and query together: BatchNorm in training mode
        # then sees a single batch, as in the reference implementation.
        n_support = episode.n_support
        features = self.backbone(torch.cat([episode.support_x, episode.query_x]))
        state = self.adapt_features(features[:n_support], episode.support_y, episode.n_way)
        return self.predict_features(features[n_support:], state)


def _full_precision(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 if autocast made it 16-bit; float32/float64 pass unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
