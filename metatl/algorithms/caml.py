"""A model-based learner: a transformer reads the episode and labels the queries in one pass.

After CAML (Fifty et al., ICLR 2024, "Context-Aware Meta-Learning"): every support image
becomes a token ``[W f(x) ; e_y]``, its projected backbone feature next to a fixed label
vector ``e_y`` from an ELMES (equal-length, maximally equiangular set: the ``max_way``
vertices of a regular simplex, so no label is closer to another); every query becomes
``[W f(x) ; u]`` with a learned "unknown label" vector ``u``. A transformer encoder mixes
the tokens and a linear head reads the query tokens into ``max_way`` label slots, of which
the episode's ``n_way`` are kept. No gradient step and no fixed distance: the support set
conditions the network through attention only (the third family, next to the metric-based
ProtoNet and the optimisation-based MAML).

Where this differs from the paper, and why:

- **Queries do not see each other**: an attention mask lets the support tokens attend to the
  support set and each query to the support set and itself, so a query's logits do not
  depend on which other queries share its episode (the other learners here are inductive
  too) while the whole episode still runs in one forward pass. CAML runs one sequence per
  query, which is the same computation at ``n_query`` times the cost.
- **Random label slots in training**: each training episode maps its classes to a random
  ``n_way`` of the ``max_way`` slots (CAML uses slots ``0 .. n_way - 1``), so every slot is
  trained and a way other than the training way (up to ``max_way``) uses slots the network
  has learned. Evaluation uses slots ``0 .. n_way - 1``.
- **The backbone may train**: CAML freezes a large pretrained image encoder; on a small
  backbone trained from scratch (Conv-4 on glyphs) the backbone is trained end to end with
  the transformer unless ``freeze_backbone`` is set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from episodes import Episode
from metatl.algorithms.base import Learner
from metatl.algorithms.linear_probe import frozen_view
from metatl.backbones import Backbone

__all__ = ["CAML", "CAMLState", "elmes"]


def elmes(n: int) -> torch.Tensor:
    """``[n, n]`` unit vectors with pairwise inner product ``-1 / (n - 1)``: the vertices of
    a regular simplex centred at the origin (an equal-length, maximally equiangular set).

    Args:
        n: Number of vectors, at least 2.
    """
    if n < 2:
        raise ValueError(f"an ELMES needs at least 2 vectors, got {n}")
    centred = torch.eye(n) - torch.full((n, n), 1.0 / n)
    return centred * math.sqrt(n / (n - 1))


@dataclass(frozen=True)
class CAMLState:
    """An episode's support set as tokens.

    Attributes:
        support_tokens: ``[n_support, dim]`` projected features with their label vectors.
        slots: int64 ``[n_way]``: the head output each class of the episode reads.
    """

    support_tokens: torch.Tensor
    slots: torch.Tensor


class CAML(Learner[CAMLState]):
    """A transformer over the episode's (feature, label) tokens; see the module docstring.

    Args:
        backbone: Image feature extractor ``f`` (``out_dim`` features).
        dim: Token width: ``dim - max_way`` feature dimensions plus ``max_way`` for the label.
        layers: Transformer encoder layers (pre-norm, GELU).
        heads: Attention heads; must divide ``dim``.
        ffn_mult: Feed-forward width as a multiple of ``dim``.
        max_way: Label slots: the largest way the learner can classify.
        dropout: Dropout inside the transformer (training only).
        freeze_backbone: Use the backbone in eval mode without gradients (CAML's setting for
            a large pretrained encoder); otherwise it trains with the transformer.
    """

    def __init__(
        self,
        backbone: Backbone,
        dim: int = 128,
        layers: int = 2,
        heads: int = 4,
        ffn_mult: int = 2,
        max_way: int = 32,
        dropout: float = 0.0,
        freeze_backbone: bool = False,
    ) -> None:
        super().__init__(backbone)
        if max_way < 2:
            raise ValueError(f"max_way must be at least 2, got {max_way}")
        if dim <= max_way:
            raise ValueError(
                f"dim={dim} leaves no room for features next to the {max_way} label dimensions: "
                f"make dim larger than max_way"
            )
        if dim % heads:
            raise ValueError(f"heads={heads} must divide dim={dim}")
        self.max_way = max_way
        self.freeze_backbone = freeze_backbone
        # Projected features are layer-normalised and the unit label vectors scaled by
        # sqrt(max_way), so both halves of a token have entries of size ~1 and the label is
        # not drowned by the feature in the first attention layer's normalisation.
        self.project = nn.Sequential(
            nn.Linear(backbone.out_dim, dim - max_way), nn.LayerNorm(dim - max_way)
        )
        self.register_buffer("labels", elmes(max_way) * math.sqrt(max_way), persistent=False)
        self.unknown = nn.Parameter(torch.zeros(max_way))  # the query's "label"
        layer = nn.TransformerEncoderLayer(
            dim,
            heads,
            dim_feedforward=ffn_mult * dim,
            dropout=dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(
            layer, layers, norm=nn.LayerNorm(dim), enable_nested_tensor=False
        )
        self.head = nn.Linear(dim, max_way)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``[n, C, H, W]`` images -> ``[n, out_dim]`` backbone features."""
        if self.freeze_backbone:
            with torch.no_grad():
                return frozen_view(self.backbone)(x)
        return self.backbone(x)

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, n_way: int) -> CAMLState:
        return self.adapt_features(self.features(support_x), support_y, n_way)

    def predict(self, query_x: torch.Tensor, state: CAMLState) -> torch.Tensor:
        return self.predict_features(self.features(query_x), state)

    def forward(self, episode: Episode) -> torch.Tensor:
        # One backbone pass over support and query, as ProtoNet: BatchNorm in training mode
        # sees the episode as one batch.
        n_support = episode.n_support
        features = self.features(torch.cat([episode.support_x, episode.query_x]))
        state = self.adapt_features(features[:n_support], episode.support_y, episode.n_way)
        return self.predict_features(features[n_support:], state)

    def frozen_feature_extractor(self) -> nn.Module | None:
        """The backbone, when its output on an image is a fixed function of that image (frozen,
        or the whole learner in eval mode): evaluation may then reuse cached features."""
        if self.freeze_backbone:
            return self.backbone
        if self.training or any(m.training for m in self.backbone.modules()):
            return None
        return self.backbone

    def adapt_features(
        self, support_f: torch.Tensor, support_y: torch.Tensor, n_way: int
    ) -> CAMLState:
        """:meth:`adapt` on ``[n_support, out_dim]`` features already computed."""
        if not 2 <= n_way <= self.max_way:
            raise ValueError(
                f"this CAML has {self.max_way} label slots and cannot classify {n_way}-way "
                f"episodes: train one with model.caml.max_way >= {n_way}"
            )
        if self.training:
            slots = torch.randperm(self.max_way, device=support_f.device)[:n_way]
        else:
            slots = torch.arange(n_way, device=support_f.device)
        label_vectors = self.labels[slots[support_y]]
        return CAMLState(self._tokens(support_f, label_vectors), slots)

    def predict_features(self, query_f: torch.Tensor, state: CAMLState) -> torch.Tensor:
        """:meth:`predict` on ``[n_query, out_dim]`` features: ``[n_query, n_way]`` logits."""
        n_support, n_query = state.support_tokens.shape[0], query_f.shape[0]
        queries = self._tokens(query_f, self.unknown.expand(n_query, -1))
        tokens = torch.cat([state.support_tokens, queries]).unsqueeze(0)
        mixed = self.encoder(tokens, mask=_episode_mask(n_support, n_query, query_f.device))
        logits = self.head(mixed[0, n_support:])
        return logits[:, state.slots].float()

    def _tokens(self, features: torch.Tensor, label_vectors: torch.Tensor) -> torch.Tensor:
        projected = self.project(features)
        return torch.cat([projected, label_vectors.to(projected.dtype)], dim=1)


def _episode_mask(n_support: int, n_query: int, device: torch.device) -> torch.Tensor:
    """``[L, L]`` boolean attention mask, True where attention is blocked: support tokens see
    the support set; each query sees the support set and itself."""
    length = n_support + n_query
    blocked = torch.zeros(length, length, dtype=torch.bool, device=device)
    blocked[:, n_support:] = True
    diagonal = torch.arange(n_support, length, device=device)
    blocked[diagonal, diagonal] = False
    return blocked
