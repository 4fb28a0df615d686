"""Fine-tuning the top blocks after a linear probe (LP-FT, Kumar et al., ICLR 2022)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from metatl.algorithms.base import Learner
from metatl.algorithms.linear_probe import (
    NORMALIZATIONS,
    LinearHead,
    Normalization,
    fit_linear_head,
    frozen_view,
)
from metatl.backbones import Backbone

__all__ = ["BATCH_NORM_MODES", "OPTIMIZERS", "FineTune", "FineTuneState"]

BatchNormMode = Literal["frozen", "adapt"]
BATCH_NORM_MODES: tuple[str, ...] = ("frozen", "adapt")
OptimizerName = Literal["sgd", "adam"]
OPTIMIZERS: tuple[str, ...] = ("sgd", "adam")


@dataclass(frozen=True)
class FineTuneState:
    """An adapted fine-tuning learner: frozen lower blocks, tuned top blocks, a head.

    Attributes:
        frozen: Eval-mode view of the learner's backbone sharing its tensors; its first
            ``n_frozen`` blocks (or, when ``tuned`` is None, all of it) make the frozen part.
        tuned: The fine-tuned copy of the backbone whose ``n_frozen`` lower blocks are
            :class:`torch.nn.Identity`: it maps the frozen part's output to features. None
            when no block is tuned.
        n_frozen: Blocks below the tuned ones.
        head: The classifier on the tuned features.
    """

    frozen: nn.Module
    tuned: nn.Module | None
    n_frozen: int
    head: LinearHead

    def lower(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen part's output (no autograd)."""
        with torch.no_grad():
            if self.tuned is None:
                return self.frozen(x)
            for block in self.frozen.blocks[: self.n_frozen]:
                x = block(x)
            return x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` images -> ``[B, out_dim]`` features of the adapted backbone."""
        lower = self.lower(x)
        return lower if self.tuned is None else self.tuned(lower)


class FineTune(Learner[FineTuneState]):
    """Fit a new linear head on frozen features, then fine-tune it with the top N blocks.

    The fine-tuning baseline of Chen et al. (ICLR 2019) in its linear-probe-then-fine-tune
    form (Kumar et al. 2022). Per episode:

    1. The backbone runs once on the support set in eval mode; the output of the frozen
       lower blocks is cached, and a head is fitted on the full features exactly as by
       :class:`~metatl.algorithms.LinearProbe` (same ``normalize``, ``weight_decay``,
       ``head_iters``). With ``n_blocks=0`` that is the whole adaptation.
    2. A copy of the top ``n_blocks`` blocks is trained together with the head for ``steps``
       full-batch steps on the cached lower output, by SGD with momentum 0.9 (default, as
       Chen et al.) or Adam, learning rate ``backbone_lr`` for the blocks and ``head_lr`` for
       the head; loss: mean cross-entropy + ``weight_decay / 2 * ||W||^2`` on the head
       weights. Frozen blocks never run again for the support set.

    The learner is never modified: the tuned blocks are a ``copy.deepcopy`` of the backbone
    in which the frozen blocks are replaced by ``nn.Identity`` (they are not copied), kept in
    the returned state. A copy rather than ``torch.func.functional_call`` over cloned
    parameters because the backbone contract has no "forward from block k": a copy whose
    lower blocks are identities is that forward, for any backbone that runs its ``blocks``
    in sequence (checked on every episode), and an ordinary module trains with a stock
    optimiser and carries its own BatchNorm modes and running statistics.

    BatchNorm: frozen blocks always use the learner's running statistics (eval mode). With
    ``batch_norm="frozen"`` (default) the tuned blocks do too, during fine-tuning and
    prediction, so each query is classified on its own; their affine parameters are trained.
    With ``"adapt"`` the tuned blocks' BatchNorm layers normalise with support-batch
    statistics while fine-tuning (updating the copy's running statistics, momentum as set
    on the layer) and predict with those updated running statistics. Dropout is off.

    ``adapt`` enables autograd for its own steps, so it works under ``torch.no_grad``
    (``needs_grad_to_adapt`` is False and evaluation runs everything else without graphs).

    Args:
        backbone: The (pretrained or meta-trained) feature extractor; never modified.
        n_blocks: Top blocks of ``backbone.blocks`` to fine-tune, 0 .. all; -1 means all.
            Parameters outside the blocks stay frozen.
        steps: Optimiser steps of stage 2 (0 leaves the blocks as they are).
        head_lr: Learning rate of the head in stage 2.
        backbone_lr: Learning rate of the tuned blocks.
        weight_decay: L2 penalty on the head weights, in both stages.
        normalize: Feature normalisation before the head (see
            :func:`~metatl.algorithms.linear_probe.normalize_features`); the support mean of
            the ``center*`` modes is recomputed at every step and after fine-tuning.
        head_iters: L-BFGS iterations of the stage-1 head fit.
        batch_norm: ``"frozen"`` or ``"adapt"`` (above).
        optimizer: ``"sgd"`` (momentum 0.9) or ``"adam"``, for stage 2. Adam's first steps
            move every weight by about the learning rate whatever its gradient, which can
            undo the fitted head (-3 points at 5-way 1-shot on the glyphs with lr 1e-3); SGD
            steps scale with the gradient.
    """

    needs_grad_to_adapt = False

    def __init__(
        self,
        backbone: Backbone,
        n_blocks: int = 1,
        steps: int = 50,
        head_lr: float = 1e-2,
        backbone_lr: float = 1e-3,
        weight_decay: float = 1e-3,
        normalize: Normalization = "l2",
        head_iters: int = 100,
        batch_norm: BatchNormMode = "frozen",
        optimizer: OptimizerName = "sgd",
    ) -> None:
        super().__init__(backbone)
        n_total = len(backbone.blocks)
        if not -1 <= n_blocks <= n_total:
            raise ValueError(
                f"n_blocks must be in 0 .. {n_total} (the blocks of "
                f"{type(backbone).__name__}) or -1 for all; got {n_blocks}"
            )
        if normalize not in NORMALIZATIONS:
            raise ValueError(
                f"normalize must be one of {', '.join(NORMALIZATIONS)}; got '{normalize}'"
            )
        if batch_norm not in BATCH_NORM_MODES:
            raise ValueError(
                f"batch_norm must be one of {', '.join(BATCH_NORM_MODES)}; got '{batch_norm}'"
            )
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got '{optimizer}'")
        if steps < 0 or head_iters < 1:
            raise ValueError(f"need steps >= 0 and head_iters >= 1; got {steps}, {head_iters}")
        if min(head_lr, backbone_lr, weight_decay) < 0:
            raise ValueError(
                "head_lr, backbone_lr and weight_decay must be >= 0; got "
                f"{head_lr}, {backbone_lr}, {weight_decay}"
            )
        self.n_blocks = n_total if n_blocks == -1 else n_blocks
        self.steps = steps
        self.head_lr = head_lr
        self.backbone_lr = backbone_lr
        self.weight_decay = weight_decay
        self.normalize = normalize
        self.head_iters = head_iters
        self.batch_norm = batch_norm
        self.optimizer = optimizer

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, n_way: int) -> FineTuneState:
        frozen = frozen_view(self.backbone)
        n_frozen = len(frozen.blocks) - self.n_blocks
        with torch.no_grad():
            features = frozen(support_x)
        head = fit_linear_head(
            features, support_y, n_way, self.normalize, self.weight_decay, self.head_iters
        )
        if self.n_blocks == 0:
            return FineTuneState(frozen, None, n_frozen, head)
        # Everything from here builds its own graph, whatever the caller's grad mode.
        with torch.inference_mode(False), torch.enable_grad():
            state = FineTuneState(frozen, self._tuned_copy(frozen, n_frozen), n_frozen, head)
            lower = self._check_blocks_in_sequence(state, support_x, features)
            return self._fine_tune(state, lower, support_y)

    def predict(self, query_x: torch.Tensor, state: FineTuneState) -> torch.Tensor:
        return state.head.logits(state.features(query_x))

    def _tuned_copy(self, frozen: nn.Module, n_frozen: int) -> nn.Module:
        """A trainable copy of ``frozen`` with its lower blocks replaced by identities."""
        skip = {id(block): nn.Identity() for block in frozen.blocks[:n_frozen]}
        tuned = copy.deepcopy(frozen, skip).eval().requires_grad_(False)
        for block in tuned.blocks[n_frozen:]:
            block.requires_grad_(True)
        return tuned

    def _check_blocks_in_sequence(
        self, state: FineTuneState, support_x: torch.Tensor, features: torch.Tensor
    ) -> torch.Tensor:
        """The frozen part's output on the support set, once the split has proved right:
        frozen blocks then the tuned copy must reproduce the backbone's own features."""
        assert state.tuned is not None
        problem = None
        try:
            lower = state.lower(support_x).clone()
            with torch.no_grad():
                tuned = state.tuned(lower)
        except RuntimeError as err:
            problem = f"running its blocks one after another fails ({err})"
        else:
            if tuned.shape != features.shape or not torch.allclose(
                tuned, features, rtol=1e-4, atol=1e-5
            ):
                problem = "its forward is not its blocks run in sequence"
        if problem is not None:
            raise ValueError(
                f"cannot fine-tune the top {self.n_blocks} blocks of "
                f"{type(self.backbone).__name__}: {problem}; use n_blocks=0 or all blocks"
            )
        return lower

    def _fine_tune(
        self, state: FineTuneState, lower: torch.Tensor, labels: torch.Tensor
    ) -> FineTuneState:
        tuned = state.tuned
        assert tuned is not None
        weight = state.head.weight.clone().requires_grad_(True)
        bias = state.head.bias.clone().requires_grad_(True)
        blocks = list(tuned.blocks[state.n_frozen :])
        if self.batch_norm == "adapt":
            for block in blocks:
                for module in block.modules():
                    if isinstance(module, nn.modules.batchnorm._BatchNorm):
                        module.train()
        groups = [
            {"params": [p for b in blocks for p in b.parameters()], "lr": self.backbone_lr},
            {"params": [weight, bias], "lr": self.head_lr},
        ]
        optimizer = (
            torch.optim.SGD(groups, lr=self.head_lr, momentum=0.9)
            if self.optimizer == "sgd"
            else torch.optim.Adam(groups)
        )
        for _ in range(self.steps):
            features = tuned(lower)
            head = LinearHead(weight, bias, self.normalize, self._center(features))
            loss = F.cross_entropy(head.logits(features), labels)
            loss = loss + 0.5 * self.weight_decay * weight.pow(2).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        tuned.eval().requires_grad_(False)
        with torch.no_grad():
            center = self._center(tuned(lower))
        head = LinearHead(weight.detach(), bias.detach(), self.normalize, center)
        return FineTuneState(state.frozen, tuned, state.n_frozen, head)

    def _center(self, features: torch.Tensor) -> torch.Tensor | None:
        return features.mean(0) if self.normalize.startswith("center") else None

    def extra_repr(self) -> str:
        return (
            f"n_blocks={self.n_blocks}, steps={self.steps}, head_lr={self.head_lr}, "
            f"backbone_lr={self.backbone_lr}, weight_decay={self.weight_decay}, "
            f"normalize={self.normalize!r}, batch_norm={self.batch_norm!r}, "
            f"optimizer={self.optimizer!r}"
        )
