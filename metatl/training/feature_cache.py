"""Frozen features computed once per image and shared by learners during evaluation.

Some learners depend on the images only through a *frozen* feature map ``f``: ProtoNet in
eval mode (nearest class mean of ``f(x)``) and :class:`~metatl.algorithms.LinearProbe` (a head
fitted on ``f(x)``). Evaluated on a fixed episode set, such a learner would run ``f`` on every
image of every episode, although a test split of ``N`` images holds only ``N`` distinct
inputs, and every such learner on the same backbone runs the same ``f``. A
:class:`FeatureCache` runs ``f`` at most once per image of the split and serves the rows to
every learner that declares the same ``f``.

**Opting in** (:class:`FrozenFeatureLearner`): a learner defines

- ``frozen_feature_extractor() -> nn.Module | None``: the module ``f`` whose eval-mode,
  no-grad output on one image depends on that image alone, or ``None`` when its prediction
  cannot be served from cached features right now (e.g. ProtoNet in training mode, whose
  BatchNorm uses the episode's statistics);
- ``adapt_features(support_f, support_y, n_way) -> state`` and
  ``predict_features(query_f, state) -> logits``: its ``adapt`` and ``predict`` with the
  backbone pass already done, so that ``learner(episode)`` equals
  ``predict_features(f(query_x), adapt_features(f(support_x), support_y, n_way))``.

Learners that adapt the backbone (fine-tuning, MAML) do not define them and are never served
from a cache. Nor is a learner whose ``forward``, ``adapt``, ``predict`` or ``features`` is
not the one written in the class that declared ``frozen_feature_extractor`` (or a base): a
subclass override (unless the subclass declares ``frozen_feature_extractor`` again), or a
function patched onto the class or the instance (a test's spy): the cached path would
bypass it.

**Keys**: ``(extractor, transform)`` by identity, so two backbones (or one backbone under two
transforms) never share rows, and each entry holds a strong reference to both objects, so
that neither id can be reused while the cache lives. Each entry also records the storage and
version counter of every parameter and buffer of its extractor: any in-place change (an
optimiser step, ``load_state_dict``, a ``.to()``) drops its rows, which are then recomputed.

**Memory**: one ``[N, D]`` tensor per extractor on the evaluation device, ``N`` the number of
images in the split and ``D`` the extractor's ``out_dim``, in the dtype the extractor
returns (float32, or 16-bit under bf16/fp16 autocast): at most ``N * D * 4`` bytes, e.g.
12,000 miniImageNet test images x 1,280 MobileNetV2 features = 61 MB, 600 images x 64 Conv-4
features = 150 kB. Extractors are admitted first come, first served while the sum of these
bounds stays within ``max_bytes`` (default 1 GiB); a learner whose extractor does not fit,
or states no ``out_dim``, is evaluated uncached. Rows are allocated when first needed and
filled lazily, a batch of the episode's not-yet-seen images at a time, so the computation
never holds more activations than one uncached episode.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from metatl.algorithms.linear_probe import frozen_view
from metatl.training.device import autocast

__all__ = [
    "DEFAULT_MAX_BYTES",
    "FeatureCache",
    "FrozenFeatureLearner",
    "frozen_extractor",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 1 << 30
"""Default budget of a :class:`FeatureCache`: 1 GiB of features across extractors."""

Transform = Callable[[torch.Tensor], torch.Tensor]
_PREDICTION_METHODS = ("forward", "adapt", "predict", "features")


@runtime_checkable
class FrozenFeatureLearner(Protocol):
    """A learner whose prediction depends on the images only through a frozen feature map.

    See the module docstring for the contract; :class:`~metatl.algorithms.ProtoNet` and
    :class:`~metatl.algorithms.LinearProbe` implement it.
    """

    def frozen_feature_extractor(self) -> nn.Module | None:
        """The frozen feature map ``f``, or None when the learner cannot use cached features."""
        ...

    def adapt_features(self, support_f: torch.Tensor, support_y: torch.Tensor, n_way: int) -> Any:
        """``adapt`` on ``[n_support, D]`` support features; the state for ``predict_features``."""
        ...

    def predict_features(self, query_f: torch.Tensor, state: Any) -> torch.Tensor:
        """``predict`` on ``[n_query, D]`` query features: ``[n_query, n_way]`` logits."""
        ...


def frozen_extractor(learner: nn.Module) -> nn.Module | None:
    """The frozen feature map a learner may be served through, or None.

    None unless ``learner`` is a :class:`FrozenFeatureLearner` whose prediction path is the
    one its declaring class vouches for (:func:`_prediction_path_unchanged`) and whose
    ``frozen_feature_extractor()`` returns a module now.
    """
    if not isinstance(learner, FrozenFeatureLearner) or not _prediction_path_unchanged(learner):
        return None
    return learner.frozen_feature_extractor()


def _prediction_path_unchanged(learner: nn.Module) -> bool:
    """Whether ``forward``, ``adapt``, ``predict`` and ``features`` (where present) are the
    functions written in the body of the class that declared ``frozen_feature_extractor``,
    or of one of its bases.

    False for a subclass that overrides one of them without declaring again, and for one
    patched onto a class or the instance (a spy, a wrapper): the cached path would bypass it.
    """
    mro = type(learner).__mro__
    declared = next(i for i, cls in enumerate(mro) if "frozen_feature_extractor" in vars(cls))
    for name in _PREDICTION_METHODS:
        if name in vars(learner):
            return False
        owner = next((i for i, cls in enumerate(mro) if name in vars(cls)), None)
        if owner is None:
            continue
        function = vars(mro[owner])[name]
        written_there = (
            getattr(function, "__qualname__", None) == f"{mro[owner].__qualname__}.{name}"
        )
        if owner < declared or not written_there:
            return False
    return True


def _fingerprint(module: nn.Module) -> tuple[tuple[int, int], ...]:
    """Storage address and in-place version of every parameter and buffer of ``module``."""
    tensors = itertools.chain(module.parameters(), module.buffers())
    return tuple((t.data_ptr(), t._version) for t in tensors)


@dataclass
class _Entry:
    """The features of one (extractor, transform) pair; ``rows[i]`` is valid where ``have[i]``."""

    extractor: nn.Module
    transform: Transform | None
    view: nn.Module
    fingerprint: tuple[tuple[int, int], ...]
    have: torch.Tensor
    rows: torch.Tensor | None = None
    computed: int = field(default=0)


class FeatureCache:
    """Features of one split's images under frozen extractors, each computed at most once.

    Args:
        images: uint8 ``[N, C, H, W]``, the split the episodes index (``LabelledImages.images``).
        device: Where extractors run and features are kept.
        precision: ``fp32``, or ``bf16``/``fp16`` autocast around the extractor, as the
            uncached evaluation runs it.
        batch_size: Most images per extractor call.
        max_bytes: Budget for the features of all admitted extractors (module docstring).
    """

    def __init__(
        self,
        images: torch.Tensor,
        device: torch.device | str = "cpu",
        precision: str = "fp32",
        batch_size: int = 256,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        if images.dim() != 4:
            raise ValueError(f"images must be [N, C, H, W], got {tuple(images.shape)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.images = images
        self.device = torch.device(device)
        self.precision = precision
        self.batch_size = batch_size
        self.max_bytes = max_bytes
        self._entries: dict[tuple[int, int], _Entry] = {}
        self._budget: dict[tuple[int, int], tuple[nn.Module, Transform | None, bool]] = {}
        self._reserved = 0

    def __len__(self) -> int:
        """Number of (extractor, transform) entries."""
        return len(self._entries)

    @property
    def num_images(self) -> int:
        return int(self.images.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes of feature rows allocated now."""
        return sum(e.rows.nbytes for e in self._entries.values() if e.rows is not None)

    @property
    def computed(self) -> int:
        """Images run through an extractor so far, over all entries."""
        return sum(e.computed for e in self._entries.values())

    def extractor_for(self, learner: nn.Module, transform: Transform | None) -> nn.Module | None:
        """The extractor to serve ``learner`` through (:func:`frozen_extractor`), or None when
        it does not qualify, or its features under ``transform`` do not fit in the budget."""
        extractor = frozen_extractor(learner)
        if extractor is None or not self._admits(extractor, transform):
            return None
        return extractor

    def _admits(self, extractor: nn.Module, transform: Transform | None) -> bool:
        """Whether ``(extractor, transform)`` has, or now gets, a share of the budget."""
        key = (id(extractor), id(transform))
        if key in self._budget:
            return self._budget[key][2]
        out_dim = getattr(extractor, "out_dim", None)
        itemsize = max(4, next((p.element_size() for p in extractor.parameters()), 4))
        need = self.num_images * int(out_dim) * itemsize if out_dim else None
        admitted = need is not None and self._reserved + need <= self.max_bytes
        self._budget[key] = (extractor, transform, admitted)  # holds the objects: ids stay theirs
        if admitted:
            self._reserved += need
        else:
            reason = "no out_dim" if need is None else f"{need / 2**20:.0f} MiB of features"
            logger.info(
                "feature cache: %s evaluated uncached (%s; budget %.0f MiB, %.0f MiB reserved)",
                type(extractor).__name__,
                reason,
                self.max_bytes / 2**20,
                self._reserved / 2**20,
            )
        return admitted

    def features(
        self, extractor: nn.Module, transform: Transform | None, indices: torch.Tensor
    ) -> torch.Tensor:
        """Features of images ``indices`` of the split, computing only those not seen yet.

        Args:
            extractor: The frozen feature map (as :meth:`extractor_for` returned it); run in
                eval mode without autograd, under the cache's precision.
            transform: Applied to the uint8 images before ``extractor`` (None: none).
            indices: int64 ``[K]`` image indices into the split (repeats allowed), ``K >= 1``.

        Returns:
            ``[K, D]`` features on the cache's device; a new tensor, not a view of the cache.
        """
        if indices.dim() != 1 or indices.numel() == 0:
            raise ValueError(f"indices must be a non-empty [K] tensor, got {tuple(indices.shape)}")
        entry = self._entry(extractor, transform)
        indices = indices.to("cpu", torch.long)
        missing = torch.unique(indices[~entry.have[indices]])
        if missing.numel():  # split() of an empty tensor yields one empty chunk
            for chunk in missing.split(self.batch_size):
                self._compute(entry, chunk)
        assert entry.rows is not None
        return entry.rows[indices.to(entry.rows.device)]

    def _entry(self, extractor: nn.Module, transform: Transform | None) -> _Entry:
        """The entry of ``(extractor, transform)``, created or reset if the weights changed."""
        key = (id(extractor), id(transform))
        entry = self._entries.get(key)
        fingerprint = _fingerprint(extractor)
        if entry is not None and entry.fingerprint != fingerprint:
            logger.info(
                "feature cache: %s changed during evaluation; its features are recomputed",
                type(extractor).__name__,
            )
            entry = None
        if entry is None:
            entry = _Entry(
                extractor=extractor,
                transform=transform,
                view=frozen_view(extractor),
                fingerprint=fingerprint,
                have=torch.zeros(self.num_images, dtype=torch.bool),
            )
            self._entries[key] = entry
        return entry

    def _compute(self, entry: _Entry, indices: torch.Tensor) -> None:
        """Run the extractor on images ``indices`` (not cached yet) and store the rows."""
        x = self.images[indices]
        if entry.transform is not None:
            x = entry.transform(x)
        with torch.no_grad(), autocast(self.device, self.precision):
            out = entry.view(x.to(self.device))
        if out.dim() != 2 or out.shape[0] != indices.numel():
            raise ValueError(
                f"a frozen feature extractor must return [B, D] features; "
                f"{type(entry.extractor).__name__} returned {tuple(out.shape)} for B={len(indices)}"
            )
        if entry.rows is None:
            entry.rows = torch.empty(
                self.num_images, out.shape[1], dtype=out.dtype, device=out.device
            )
        entry.rows[indices.to(out.device)] = out.to(entry.rows.dtype)
        entry.have[indices] = True
        entry.computed += int(indices.numel())
