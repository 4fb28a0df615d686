"""Linear probe on frozen features ("CNN codes", Razavian et al., CVPR-W 2014)."""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from metatl.algorithms.base import Learner
from metatl.backbones import Backbone

__all__ = [
    "NORMALIZATIONS",
    "LinearHead",
    "LinearProbe",
    "fit_linear_head",
    "frozen_view",
    "normalize_features",
]

Normalization = Literal["none", "l2", "center", "center_l2"]
NORMALIZATIONS: tuple[str, ...] = ("none", "l2", "center", "center_l2")


@dataclass(frozen=True)
class LinearHead:
    """A softmax classifier on (normalised) features: the adapted state of a linear probe.

    Attributes:
        weight: ``[n_way, D]``.
        bias: ``[n_way]``.
        normalize: Feature normalisation applied before the classifier (see
            :func:`normalize_features`).
        center: ``[D]`` support-set mean subtracted by the ``center*`` normalisations, else None.
    """

    weight: torch.Tensor
    bias: torch.Tensor
    normalize: str = "none"
    center: torch.Tensor | None = None

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """``[N, D]`` features -> ``[N, n_way]`` logits."""
        x = normalize_features(features, self.normalize, self.center)
        return F.linear(x, self.weight, self.bias)


def normalize_features(
    features: torch.Tensor, mode: str, center: torch.Tensor | None = None
) -> torch.Tensor:
    """Normalise features before a linear classifier.

    ``"none"``; ``"l2"`` (unit norm, as Tian et al. 2020); ``"center"`` (subtract
    ``center``, the support-set mean); ``"center_l2"`` (subtract, then unit norm: SimpleShot's
    CL2N with the support mean in place of the base-class mean).

    Args:
        features: ``[N, D]``.
        mode: One of :data:`NORMALIZATIONS`.
        center: ``[D]``, needed by the ``center*`` modes.
    """
    if mode not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {', '.join(NORMALIZATIONS)}; got '{mode}'")
    if mode.startswith("center"):
        if center is None:
            raise ValueError(f"normalize='{mode}' needs the support mean as center")
        features = features - center
    if mode.endswith("l2"):
        features = F.normalize(features, dim=1)
    return features


def fit_linear_head(
    features: torch.Tensor,
    labels: torch.Tensor,
    n_way: int,
    normalize: str = "l2",
    weight_decay: float = 1e-3,
    max_iter: int = 100,
) -> LinearHead:
    """Multinomial logistic regression on fixed features, fitted full-batch.

    Minimises ``mean cross-entropy + weight_decay / 2 * ||W||^2`` (the bias is not penalised)
    from zero with L-BFGS (strong-Wolfe line search) in float64 on the CPU, so the fit is
    deterministic and the same on every device. The solver sees the (normalised) features
    centred on their support mean and the shift is folded back into the bias: the same
    optimum, since the bias is not penalised, but far better conditioned. For the same reason
    ``"center"`` alone gives the same classifier as ``"none"``; centring changes the result
    together with ``l2`` (``"center_l2"``). For ``weight_decay > 0`` the problem is
    strictly convex in ``W`` and this is scikit-learn's ``LogisticRegression(C=1 / (weight_decay
    * n))``; with 0 and separable features the weights grow until ``max_iter`` stops them.

    Works under ``torch.no_grad`` and ``torch.inference_mode``: autograd is switched on
    locally, on detached copies of the features.

    Args:
        features: ``[n_support, D]`` (detached here).
        labels: int64 ``[n_support]`` in ``0 .. n_way - 1``.
        n_way: Number of classes.
        normalize: Feature normalisation, one of :data:`NORMALIZATIONS`.
        weight_decay: L2 penalty on the weights, >= 0.
        max_iter: L-BFGS iterations.

    Returns:
        The fitted head, on the device and dtype of ``features``.
    """
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    with torch.inference_mode(False), torch.enable_grad():
        x = features.detach().to("cpu", torch.float64).clone()
        y = labels.detach().to("cpu").clone()
        center = x.mean(0) if normalize.startswith("center") else None
        x = normalize_features(x, normalize, center)
        shift = x.mean(0)
        x = x - shift
        weight = torch.zeros(n_way, x.shape[1], dtype=torch.float64, requires_grad=True)
        bias = torch.zeros(n_way, dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS(
            [weight, bias],
            lr=1.0,
            max_iter=max_iter,
            tolerance_grad=1e-10,
            tolerance_change=1e-14,
            history_size=20,
            line_search_fn="strong_wolfe",
        )

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = F.cross_entropy(F.linear(x, weight, bias), y)
            loss = loss + 0.5 * weight_decay * weight.pow(2).sum()
            loss.backward()
            return loss

        optimizer.step(closure)
    like = {"device": features.device, "dtype": features.dtype}
    with torch.no_grad():
        bias = bias - weight @ shift
    return LinearHead(
        weight.detach().to(**like),
        bias.to(**like),
        normalize,
        None if center is None else center.to(**like),
    )


def frozen_view(module: nn.Module) -> nn.Module:
    """An eval-mode copy of ``module`` that shares its parameters and buffers.

    Copies only the module objects (a millisecond for a ResNet-12), so BatchNorm uses its
    running statistics and dropout is off whatever mode ``module`` is in, without switching
    ``module`` itself (learners stay stateless and thread-safe). Run it under ``no_grad``:
    its tensors are the original's.
    """
    shared = {id(t): t for t in itertools.chain(module.parameters(), module.buffers())}
    return copy.deepcopy(module, shared).eval()


class LinearProbe(Learner[LinearHead]):
    """Frozen backbone features + a logistic-regression head fitted on each support set.

    The classic transfer baseline ("CNN codes", Razavian et al. 2014; with L2-normalised
    features, Tian et al. 2020). Features come from the backbone in eval mode (BatchNorm
    running statistics), computed once per episode without autograd; only the head is fitted,
    by :func:`fit_linear_head`. ``adapt`` enables autograd for the fit itself, so it works
    under ``torch.no_grad`` (``needs_grad_to_adapt`` is False). An evaluation baseline: the
    backbone is never trained through it.

    Args:
        backbone: The (pretrained or meta-trained) feature extractor; never modified.
        normalize: ``"none"``, ``"l2"``, ``"center"`` (subtract the support mean) or
            ``"center_l2"``.
        weight_decay: L2 penalty on the head weights (``weight_decay / 2 * ||W||^2`` added to
            the mean cross-entropy).
        max_iter: L-BFGS iterations of the fit.
    """

    needs_grad_to_adapt = False

    def __init__(
        self,
        backbone: Backbone,
        normalize: Normalization = "l2",
        weight_decay: float = 1e-3,
        max_iter: int = 100,
    ) -> None:
        super().__init__(backbone)
        if normalize not in NORMALIZATIONS:
            raise ValueError(
                f"normalize must be one of {', '.join(NORMALIZATIONS)}; got '{normalize}'"
            )
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {max_iter}")
        self.normalize = normalize
        self.weight_decay = weight_decay
        self.max_iter = max_iter

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Frozen features ``[B, out_dim]``: eval mode, no autograd."""
        with torch.no_grad():
            return frozen_view(self.backbone)(x)

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, n_way: int) -> LinearHead:
        return self.adapt_features(self.features(support_x), support_y, n_way)

    def predict(self, query_x: torch.Tensor, state: LinearHead) -> torch.Tensor:
        return self.predict_features(self.features(query_x), state)

    def frozen_feature_extractor(self) -> nn.Module:
        """The backbone, always: :meth:`features` is its eval-mode output, a fixed function of
        each image alone, so the head may be fitted on cached features with
        :meth:`adapt_features` and applied with :meth:`predict_features`."""
        return self.backbone

    def adapt_features(
        self, support_f: torch.Tensor, support_y: torch.Tensor, n_way: int
    ) -> LinearHead:
        """:meth:`adapt` on features already computed: fit the head.

        Args:
            support_f: ``[n_support, D]`` frozen features (:meth:`features`) of the support.
            support_y: int64 ``[n_support]`` in ``0 .. n_way - 1``.
            n_way: Number of classes in the episode.
        """
        return fit_linear_head(
            support_f, support_y, n_way, self.normalize, self.weight_decay, self.max_iter
        )

    def predict_features(self, query_f: torch.Tensor, state: LinearHead) -> torch.Tensor:
        """:meth:`predict` on ``[n_query, D]`` query features: ``[n_query, n_way]`` logits."""
        return state.logits(query_f)

    def extra_repr(self) -> str:
        return (
            f"normalize={self.normalize!r}, weight_decay={self.weight_decay}, "
            f"max_iter={self.max_iter}"
        )
