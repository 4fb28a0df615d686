"""An inner-loop step that keeps only its inputs and recomputes its graph in the backward.

MAML's ``inner_memory="checkpoint"``: :class:`RecomputedStep` is gradient checkpointing for
one inner step that itself calls ``torch.autograd.grad``. ``torch.utils.checkpoint`` (non-
reentrant) would run such a region once more during the forward, when the inner
``autograd.grad`` unpacks the tensors it did not keep (three passes per step instead of two,
and BatchNorm statistics updated twice); this node runs the step once without a graph in the
forward and once with ``create_graph=True`` in the backward.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch.autograd.function import FunctionCtx, once_differentiable

__all__ = ["RecomputedStep", "Step"]

Step = Callable[
    [Sequence[torch.Tensor], bool, "dict[str, torch.Tensor] | None"], tuple[torch.Tensor, ...]
]
"""``(inputs, create_graph, stats) -> new weights``: one inner step on flat inputs."""


class RecomputedStep(torch.autograd.Function):
    """One inner step that saves its inputs only and recomputes its graph in the backward.

    ``apply(run, n_weights, stats, *inputs)``: the first ``n_weights`` inputs are the weights
    the step differentiates the support loss by. The forward runs ``run`` without keeping a
    graph (updating ``stats`` once, as the plain step would); the backward restores the
    forward's RNG and autocast states, reruns ``run`` with ``create_graph=True`` on a copy of
    the statistics as they were before the step, and returns the vector-Jacobian product.
    The backward itself is not differentiable (``once_differentiable``): a meta-gradient, not
    a meta-Hessian.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx,
        run: Step,
        n_weights: int,
        stats: dict[str, torch.Tensor] | None,
        *inputs: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        device = inputs[0].device
        ctx.run, ctx.n_weights = run, n_weights  # type: ignore[attr-defined]
        ctx.stats = None if stats is None else {n: s.clone() for n, s in stats.items()}  # type: ignore[attr-defined]
        ctx.rng = _rng_state(device)  # type: ignore[attr-defined]
        ctx.autocast = (  # type: ignore[attr-defined]
            device.type,
            torch.is_autocast_enabled(device.type),
            torch.get_autocast_dtype(device.type),
        )
        ctx.save_for_backward(*inputs)
        with torch.enable_grad():
            leaves = [x.detach().requires_grad_(i < n_weights) for i, x in enumerate(inputs)]
            return tuple(w.detach() for w in run(leaves, False, stats))

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, *grad_weights: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        inputs = ctx.saved_tensors
        wanted = [i for i in range(len(inputs)) if ctx.needs_input_grad[3 + i]]
        device_type, enabled, dtype = ctx.autocast
        with (
            torch.enable_grad(),
            _replayed_rng(inputs[0].device, ctx.rng),
            torch.autocast(device_type, dtype=dtype, enabled=enabled),
        ):
            leaves = [
                x.detach().requires_grad_(i < ctx.n_weights or i in wanted)
                for i, x in enumerate(inputs)
            ]
            stats = None if ctx.stats is None else {n: s.clone() for n, s in ctx.stats.items()}
            new = ctx.run(leaves, True, stats)
            grads = torch.autograd.grad(
                new,
                [leaves[i] for i in wanted],
                grad_weights,
                allow_unused=True,
                materialize_grads=True,
            )
        out: list[torch.Tensor | None] = [None] * len(inputs)
        for i, g in zip(wanted, grads, strict=True):
            out[i] = g
        return (None, None, None, *out)


def _rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The CPU generator's state and, on CUDA, the device's."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


@contextmanager
def _replayed_rng(
    device: torch.device, state: tuple[torch.Tensor, torch.Tensor | None]
) -> Iterator[None]:
    """Run with the generators set to ``state``; restore them afterwards."""
    cpu, cuda = state
    with torch.random.fork_rng(devices=[device] if cuda is not None else []):
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, device)
        yield
