"""A backbone as a chain of stages that run functionally: the MAML family's view of a network.

A :class:`Stage` is one sub-module (a backbone block, or the whole backbone) with the
learner-level names of its parameters and normalisation statistics. :func:`run_stage` runs it
with :func:`torch.func.functional_call`, so fast weights and per-task statistics are passed in
rather than written into the module.

Splitting a backbone into "trunk" and "top" uses ``Backbone.blocks`` (top-level stages in
input-to-output order) and the **feature-tail hook**: what ``forward`` does after the last
block, ``Backbone.forward_tail(h) -> features`` (parameter-free: ``flatten(1)`` by default,
average pooling then flatten for ResNets). :func:`split_backbone` checks
the split against ``backbone.forward`` once, numerically, and says how to fix a mismatch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from metatl.backbones import Backbone

__all__ = ["Stage", "feature_tail", "identity", "make_stage", "run_stage", "split_backbone"]

Tail = Callable[[torch.Tensor], torch.Tensor]

_STAT_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


@dataclass(frozen=True)
class Stage:
    """One functionally-run piece of the network.

    Attributes:
        module: The sub-module.
        prefix: Learner-level prefix of its names, e.g. ``"backbone.features.0."``.
        params: Its parameter names, local to ``module``.
        stats: Its normalisation running-statistics buffer names, local to ``module``.
    """

    module: nn.Module
    prefix: str
    params: tuple[str, ...]
    stats: tuple[str, ...]

    def full(self, local: str) -> str:
        return self.prefix + local


def make_stage(module: nn.Module, prefix: str) -> Stage:
    """Describe ``module`` (named ``prefix`` inside the learner) as a :class:`Stage`."""
    stats = tuple(
        f"{name}.{buf}" if name else buf
        for name, sub in module.named_modules()
        if hasattr(sub, "track_running_stats")  # BatchNorm, InstanceNorm, SyncBatchNorm ...
        for buf in _STAT_BUFFERS
        if getattr(sub, buf, None) is not None
    )
    return Stage(module, prefix, tuple(n for n, _ in module.named_parameters()), stats)


def run_stage(
    stage: Stage,
    x: torch.Tensor,
    weights: Mapping[str, torch.Tensor],
    stats: Mapping[str, torch.Tensor] | None,
) -> torch.Tensor:
    """Run ``stage`` on ``x`` with some parameters and all statistics passed functionally.

    Args:
        stage: The stage.
        x: Its input.
        weights: Learner-level name -> tensor; the stage's parameters found here replace the
            module's own, the others are the module's own (meta-)parameters.
        stats: Learner-level name -> running-statistics tensor used (and, in training mode,
            updated in place) instead of the module's buffers; ``None`` passes ``None`` for
            every statistic, so normalisation layers use batch statistics and update nothing.

    Returns:
        The stage's output.
    """
    tensors: dict[str, torch.Tensor | None] = {
        local: weights[stage.full(local)] for local in stage.params if stage.full(local) in weights
    }
    for local in stage.stats:
        tensors[local] = None if stats is None else stats[stage.full(local)]
    return functional_call(stage.module, tensors, (x,))


def identity(h: torch.Tensor) -> torch.Tensor:
    return h


def feature_tail(backbone: Backbone) -> Tail:
    """What ``backbone.forward`` does after its last block: ``backbone.forward_tail``."""
    return backbone.forward_tail


def split_backbone(backbone: Backbone, prefix: str = "backbone.") -> tuple[list[Stage], Tail]:
    """The backbone's ``blocks`` as stages, and the tail that turns the last output into features.

    Raises:
        ValueError: If a block is not a sub-module of the backbone, if a parameter lies outside
            every block, or if blocks-then-tail does not reproduce ``backbone.forward``.
    """
    blocks = backbone.blocks
    if len(blocks) == 1 and blocks[0] is backbone:
        return [make_stage(backbone, prefix)], identity
    names = {id(m): n for n, m in backbone.named_modules()}
    missing = [i for i, b in enumerate(blocks) if id(b) not in names]
    if missing:
        raise ValueError(
            f"{type(backbone).__name__}.blocks[{missing[0]}] is not a sub-module of the backbone"
        )
    stages = [make_stage(b, f"{prefix}{names[id(b)]}.") for b in blocks]
    in_blocks = {s.full(p) for s in stages for p in s.params}
    outside = [prefix + n for n, _ in backbone.named_parameters() if prefix + n not in in_blocks]
    if outside:
        raise ValueError(
            f"{type(backbone).__name__} has parameters outside its blocks ({', '.join(outside[:3])}"
            f"{', ...' if len(outside) > 3 else ''}), so it cannot be split into trunk and top; "
            "use adapt='all' or adapt='head'"
        )
    tail = feature_tail(backbone)
    _check_split(backbone, stages, tail)
    return stages, tail


def _check_split(backbone: Backbone, stages: Sequence[Stage], tail: Tail) -> None:
    """Blocks then tail must equal ``backbone.forward`` (batch statistics, nothing updated)."""
    spec = backbone.input_spec
    first = next(iter(backbone.parameters()), None)
    x = torch.randn(
        2,
        spec.channels,
        spec.size,
        spec.size,
        generator=torch.Generator().manual_seed(0),
        dtype=first.dtype if first is not None else torch.float32,
    ).to(first.device if first is not None else "cpu")
    whole = make_stage(backbone, "")
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        expected = run_stage(whole, x, {}, None)
        torch.manual_seed(0)
        h = x
        for stage in stages:
            h = run_stage(stage, h, {}, None)
        got = tail(h)
    if got.shape != expected.shape or not torch.allclose(got, expected, rtol=1e-4, atol=1e-5):
        raise ValueError(
            f"{type(backbone).__name__}: running its blocks then the feature tail does not "
            f"reproduce its forward (shapes {tuple(got.shape)} vs {tuple(expected.shape)}); "
            "define `forward_tail(h)` on the backbone (what forward does after the last block)"
        )
