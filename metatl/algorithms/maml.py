"""The MAML family on ``torch.func``: MAML, first-order MAML, ANIL and Meta-SGD.

One learner, :class:`MAML`, with settings for which parameters adapt, the inner loop's order,
steps and learning rates, the classifier head, BatchNorm and what the inner loop keeps for the
backward (``inner_memory``); ``FOMAML``, ``ANIL`` and ``MetaSGD`` are the same learner with
other defaults.

>>> from metatl.backbones import create_backbone
>>> learner = MAML(create_backbone("conv4", hidden=8), adapt="top:1", inner_steps=1)
>>> learner.adapted_parameter_names()[-2:]
['head.weight', 'head.bias']
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from episodes import Episode
from metatl.algorithms._recompute import RecomputedStep
from metatl.algorithms._stages import Stage, Tail, identity, make_stage, run_stage, split_backbone
from metatl.algorithms.base import Learner
from metatl.backbones import Backbone

__all__ = [
    "ANIL",
    "FOMAML",
    "INNER_MEMORY",
    "MAML",
    "MAML_VARIANTS",
    "MAMLState",
    "MetaSGD",
    "parse_adapt",
]

HeadInit = Literal["zero", "learned"]
BatchNormPolicy = Literal["transductive", "running"]
InnerMemory = Literal["store", "checkpoint"]
INNER_MEMORY: tuple[str, ...] = ("store", "checkpoint")
"""The values of ``MAML(inner_memory=...)`` (``model.maml.inner_memory``)."""

_HEAD = ("head.weight", "head.bias")

MAML_VARIANTS: dict[str, dict[str, Any]] = {
    "maml": {},
    "fomaml": {"first_order": True},
    "anil": {"adapt": "head"},
    "metasgd": {"meta_sgd": True},
}
"""Algorithm name -> the :class:`MAML` settings that name forces (for config builders)."""


@dataclass(frozen=True)
class MAMLState:
    """One episode's adapted model.

    Attributes:
        weights: Learner-level name -> adapted tensor for every parameter that adapts; always
            holds the head, ``"head.weight"`` ``[n_way, D]`` and ``"head.bias"`` ``[n_way]``.
        stats: Learner-level name -> this task's BatchNorm running statistics
            (``bn="running"``); empty for ``bn="transductive"``.
    """

    weights: dict[str, torch.Tensor]
    stats: dict[str, torch.Tensor]

    @property
    def n_way(self) -> int:
        return int(self.weights["head.weight"].shape[0])


@dataclass(frozen=True)
class _Plan:
    """How the network runs: ``trunk`` once per episode, ``top`` each inner step, then ``tail``."""

    trunk: tuple[Stage, ...]
    top: tuple[Stage, ...]
    tail: Tail
    adapted: tuple[str, ...]  # backbone parameters that adapt (the head always does)


def parse_adapt(adapt: str, n_blocks: int) -> int:
    """Number of top backbone blocks that adapt: ``"all"`` -> ``n_blocks``, ``"head"`` -> 0,
    ``"top:N"`` -> N (``0 <= N <= n_blocks``)."""
    if adapt == "all":
        return n_blocks
    if adapt == "head":
        return 0
    prefix, _, count = adapt.partition(":")
    if prefix != "top" or not count.isdigit():
        raise ValueError(f"adapt must be 'all', 'head' or 'top:N' (N an integer), got {adapt!r}")
    if int(count) > n_blocks:
        raise ValueError(f"adapt={adapt!r} asks for {count} blocks but the backbone has {n_blocks}")
    return int(count)


class MAML(Learner[MAMLState]):
    """Model-Agnostic Meta-Learning (Finn, Abbeel & Levine, ICML 2017), on ``torch.func``.

    ``adapt`` takes ``inner_steps`` SGD steps on the support cross-entropy from the
    meta-parameters (``test_inner_steps`` in eval mode), with ``torch.func.functional_call`` and
    ``torch.autograd.grad(create_graph=not first_order)``; ``predict`` runs the queries through
    the adapted weights. The meta-gradient reaches the meta-parameters by ``backward`` on the
    query loss.

    **Which parameters adapt** (``adapt``): ``"all"``; ``"top:N"``, the top ``N`` of
    ``backbone.blocks`` and the head; or ``"head"`` (ANIL). Backbone parameters frozen with
    ``requires_grad=False`` never adapt. The blocks below the adapted ones, the trunk, run once
    per episode on the support set, outside the inner loop; their output is reused by every
    inner step and still carries the outer graph, so the trunk is meta-learned.

    **The head** (``head``): ``"zero"``, a zero ``[n_way, D]`` linear head created per episode,
    so the way may vary from episode to episode (with it, the first inner step moves only the
    head: gradients into the backbone pass through zero weights); ``"learned"``, a meta-learned
    ``nn.Linear(D, n_way)`` for a fixed ``n_way``.

    **BatchNorm** (``bn``; see Antoniou, Edwards & Storkey, "How to train your MAML", ICLR
    2019) never mutates this module's buffers inside ``adapt``/``predict``:

    - ``"transductive"`` (default, the MAML paper's choice): every forward pass, in training
      and eval mode, normalises with its own batch statistics (support and query sets
      separately); running statistics are neither read nor written.
    - ``"running"``: each task gets copies of this module's running statistics, passed
      functionally and returned in :class:`MAMLState`. In training mode BatchNorm uses batch
      statistics and the support passes update the task's copies (the frozen trunk's once per
      episode); ``forward`` (hence ``loss``) then commits them to this module, as a
      BatchNorm forward would (:meth:`update_running_stats`). In eval mode the copies are
      read, not updated, and each query is normalised independently of the others.

    (Peers differ: learn2learn's ``clone`` shares the buffers, so its inner loops update the
    meta-model's statistics; higher's patched module updates clones of them, then drops them.)

    **Memory** (``inner_memory``): ``"store"`` keeps every inner step's graph (its support
    activations and, second order, the graph of its gradient) until the backward, so memory
    grows linearly with ``inner_steps``. ``"checkpoint"`` keeps only each step's input weights
    and recomputes the step's graph in the backward, one step at a time: the same
    meta-gradient to round-off, memory flat in the number of steps, for about one more
    support forward and backward per step. The recomputation replays the RNG state (dropout)
    and autocast state of the forward and updates no BatchNorm statistics (the forward did).
    Only second-order training uses it: first order and evaluation keep no per-step graph.

    **Evaluation**: ``adapt`` enables autograd itself, so it works under ``torch.no_grad``. In
    eval mode, or with autograd disabled by the caller, it builds no graph to the
    meta-parameters: the trunk runs without autograd and every inner step starts from detached
    weights, so ``test_inner_steps`` costs first-order memory.

    Args:
        backbone: The feature extractor (``out_dim`` features).
        n_way: Classes per episode; required by ``head="learned"``, ignored by ``"zero"``.
        inner_steps: Inner SGD steps in training mode.
        test_inner_steps: Inner SGD steps in eval mode.
        inner_lr: Inner learning rate (Meta-SGD's initial per-parameter rates).
        first_order: Drop second-order terms (FOMAML): inner gradients are constants.
        adapt: ``"all"``, ``"head"`` or ``"top:N"``.
        head: ``"zero"`` or ``"learned"``.
        bn: ``"transductive"`` or ``"running"``.
        meta_sgd: Learn a per-parameter inner learning rate (Li et al., 2017); the zero
            head's rates are shared by its rows (``[1, D]`` and ``[1]``) so the way may vary.
        cache_frozen_trunk: Run the trunk once per episode (as above). ``False`` runs the
            whole backbone in every inner step with the trunk simply not adapting: the same
            numbers, slower; for checks and benchmarks.
        inner_memory: ``"store"`` or ``"checkpoint"`` (see **Memory**).
    """

    needs_grad_to_adapt = True

    def __init__(
        self,
        backbone: Backbone,
        n_way: int | None = None,
        inner_steps: int = 1,
        test_inner_steps: int = 10,
        inner_lr: float = 0.4,
        first_order: bool = False,
        adapt: str = "all",
        head: HeadInit = "zero",
        bn: BatchNormPolicy = "transductive",
        meta_sgd: bool = False,
        cache_frozen_trunk: bool = True,
        inner_memory: InnerMemory = "store",
    ) -> None:
        super().__init__(backbone)
        if inner_memory not in INNER_MEMORY:
            raise ValueError(f"inner_memory must be 'store' or 'checkpoint', got {inner_memory!r}")
        if head not in ("zero", "learned"):
            raise ValueError(f"head must be 'zero' or 'learned', got {head!r}")
        if bn not in ("transductive", "running"):
            raise ValueError(f"bn must be 'transductive' or 'running', got {bn!r}")
        if head == "learned" and not (isinstance(n_way, int) and n_way >= 2):
            raise ValueError(f"head='learned' needs n_way >= 2 (the head's size), got {n_way}")
        for name, value in (("inner_steps", inner_steps), ("test_inner_steps", test_inner_steps)):
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        self.n_way = n_way
        self.inner_steps = inner_steps
        self.test_inner_steps = test_inner_steps
        self.inner_lr = float(inner_lr)
        self.first_order = first_order
        self.adapt_scope = adapt
        self.head_init = head
        self.bn = bn
        self.meta_sgd = meta_sgd
        self.inner_memory = inner_memory
        self.head = nn.Linear(backbone.out_dim, n_way) if head == "learned" else None
        self._plan = self._make_plan(parse_adapt(adapt, len(backbone.blocks)), cache_frozen_trunk)
        self.inner_lrs = nn.ParameterDict(self._initial_lrs()) if meta_sgd else None

    def _make_plan(self, n_top: int, cache: bool) -> _Plan:
        whole = make_stage(self.backbone, "backbone.")
        n_blocks = len(self.backbone.blocks)
        if n_top == n_blocks:
            return _Plan((), (whole,), identity, tuple(whole.full(p) for p in whole.params))
        if n_top == 0:
            return _Plan((whole,), (), identity, ()) if cache else _Plan((), (whole,), identity, ())
        stages, tail = split_backbone(self.backbone, "backbone.")
        adapted = tuple(s.full(p) for s in stages[-n_top:] for p in s.params)
        if not cache:
            return _Plan((), (whole,), identity, adapted)
        return _Plan(tuple(stages[:-n_top]), tuple(stages[-n_top:]), tail, adapted)

    def _initial_lrs(self) -> dict[str, nn.Parameter]:
        params = dict(self.named_parameters())
        lrs = {name: torch.full_like(params[name], self.inner_lr) for name in self._plan.adapted}
        if self.head is not None:
            lrs |= {name: torch.full_like(params[name], self.inner_lr) for name in _HEAD}
        else:
            weight = next(self.backbone.parameters(), torch.empty(0))
            kw = {"dtype": weight.dtype, "device": weight.device}
            lrs["head.weight"] = torch.full((1, self.backbone.out_dim), self.inner_lr, **kw)
            lrs["head.bias"] = torch.full((1,), self.inner_lr, **kw)
        return {_lr_key(name): nn.Parameter(value) for name, value in lrs.items()}

    def adapted_parameter_names(self) -> list[str]:
        """Learner-level names of the parameters that adapt in the inner loop (head last)."""
        return [*self._adapted_backbone_names(), *_HEAD]

    def _adapted_backbone_names(self) -> list[str]:
        """The scope's backbone parameters, less those frozen with ``requires_grad=False``."""
        params = dict(self.named_parameters())
        return [name for name in self._plan.adapted if params[name].requires_grad]

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, n_way: int) -> MAMLState:
        """Inner-loop SGD on the support cross-entropy.

        Args:
            support_x: ``[n_support, C, H, W]`` float images.
            support_y: int64 ``[n_support]`` in ``0 .. n_way - 1``.
            n_way: Classes in the episode.

        Returns:
            The adapted weights; differentiable w.r.t. the meta-parameters only in training
            mode with autograd enabled.
        """
        if self.head is not None and n_way != self.n_way:
            raise ValueError(
                f"head='learned' was built for n_way={self.n_way} but the episode has "
                f"n_way={n_way}; use head='zero' for episodes of varying way"
            )
        meta_graph = self.training and torch.is_grad_enabled()
        steps = self.inner_steps if self.training else self.test_inner_steps
        stats = self._task_stats()
        with torch.enable_grad():
            with torch.set_grad_enabled(meta_graph):
                h = self._run(self._plan.trunk, support_x, {}, stats)
            weights, lrs = self._initial_weights(n_way, support_x, meta_graph)
            create_graph = meta_graph and not self.first_order
            recompute = create_graph and self.inner_memory == "checkpoint"
            for _ in range(steps):
                if recompute:
                    weights = self._recomputed_step(h, support_y, weights, lrs, stats)
                    continue
                weights = self._sgd_step(h, support_y, weights, lrs, stats, create_graph)
                if not meta_graph:
                    weights = {n: w.detach().requires_grad_() for n, w in weights.items()}
        if not meta_graph:
            weights = {n: w.detach() for n, w in weights.items()}
        return MAMLState(weights, stats or {})

    def _sgd_step(
        self,
        h: torch.Tensor,
        support_y: torch.Tensor,
        weights: dict[str, torch.Tensor],
        lrs: dict[str, Any],
        stats: dict[str, torch.Tensor] | None,
        create_graph: bool,
        fixed: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """One inner SGD step on the support cross-entropy.

        Args:
            h: ``[n_support, ...]`` the trunk's output (the input images without a trunk).
            support_y: int64 ``[n_support]``.
            weights: Name -> adapted tensor before the step.
            lrs: Name -> inner learning rate (float or a tensor shaped like the weight).
            stats: The task's running statistics (updated in place in training mode) or None.
            create_graph: Keep the graph of the gradient (second order).
            fixed: Name -> tensor used for top-stage parameters that do not adapt (default: the
                module's own).

        Returns:
            Name -> weight after the step.
        """
        logits = self._top_logits(h, {**(fixed or {}), **weights}, stats)
        grads = torch.autograd.grad(
            F.cross_entropy(logits, support_y),
            list(weights.values()),
            create_graph=create_graph,
            allow_unused=True,
            materialize_grads=True,
        )
        return {n: w - lrs[n] * g for (n, w), g in zip(weights.items(), grads, strict=True)}

    def _recomputed_step(
        self,
        h: torch.Tensor,
        support_y: torch.Tensor,
        weights: dict[str, torch.Tensor],
        lrs: dict[str, Any],
        stats: dict[str, torch.Tensor] | None,
    ) -> dict[str, torch.Tensor]:
        """:meth:`_sgd_step` (second order) that keeps only its inputs for the backward.

        Every tensor the step reads and that may need a gradient is an explicit input of the
        ``RecomputedStep`` node: the weights, Meta-SGD's rates, ``h`` (the trunk's output, on
        the outer graph) and the top stages' meta-parameters that do not adapt.
        """
        names = list(weights)
        lr_names = [n for n in names if isinstance(lrs[n], torch.Tensor)]
        params = dict(self.named_parameters())
        fixed = [
            s.full(p)
            for s in self._plan.top
            for p in s.params
            if s.full(p) not in weights and params[s.full(p)].requires_grad
        ]
        k, m = len(names), len(lr_names)

        def run(
            flat: Sequence[torch.Tensor],
            create_graph: bool,
            step_stats: dict[str, torch.Tensor] | None,
        ) -> tuple[torch.Tensor, ...]:
            step_lrs = lrs | dict(zip(lr_names, flat[k : k + m], strict=True))
            new = self._sgd_step(
                flat[k + m],
                support_y,
                dict(zip(names, flat[:k], strict=True)),
                step_lrs,
                step_stats,
                create_graph,
                dict(zip(fixed, flat[k + m + 1 :], strict=True)),
            )
            return tuple(new.values())

        inputs = (*weights.values(), *(lrs[n] for n in lr_names), h, *(params[n] for n in fixed))
        return dict(zip(names, RecomputedStep.apply(run, k, stats, *inputs), strict=True))

    def predict(self, query_x: torch.Tensor, state: MAMLState) -> torch.Tensor:
        """``[n_query, C, H, W]`` queries -> ``[n_query, n_way]`` logits under ``state``."""
        stats = state.stats if self.bn == "running" and not self.training else None
        h = self._run(self._plan.trunk, query_x, {}, stats)
        return self._top_logits(h, state.weights, stats)

    def forward(self, episode: Episode) -> torch.Tensor:
        """Adapt, predict ``[n_query, n_way]`` logits; in training mode with ``bn="running"``
        also commit the episode's statistics (:meth:`update_running_stats`)."""
        state = self.adapt(episode.support_x, episode.support_y, episode.n_way)
        logits = self.predict(episode.query_x, state)
        if self.training and self.bn == "running":
            self.update_running_stats(state)
        return logits

    @torch.no_grad()
    def update_running_stats(self, state: MAMLState) -> None:
        """Copy an episode's BatchNorm running statistics into this module's buffers."""
        buffers = dict(self.named_buffers())
        for name, value in state.stats.items():
            buffers[name].copy_(value)

    def _task_stats(self) -> dict[str, torch.Tensor] | None:
        """Fresh copies of the running statistics for one task, or None (batch statistics)."""
        if self.bn != "running":
            return None
        buffers = dict(self.named_buffers())
        stages = (*self._plan.trunk, *self._plan.top)
        return {s.full(b): buffers[s.full(b)].clone() for s in stages for b in s.stats}

    def _initial_weights(
        self, n_way: int, like: torch.Tensor, meta_graph: bool
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Adapted parameters at inner step 0 and their inner learning rates."""
        params = dict(self.named_parameters())
        weights = {name: params[name] for name in self._adapted_backbone_names()}
        if self.head is not None:
            weights |= {name: params[name] for name in _HEAD}
        else:
            kw = {"dtype": like.dtype, "device": like.device, "requires_grad": True}
            weights["head.weight"] = torch.zeros(n_way, self.backbone.out_dim, **kw)
            weights["head.bias"] = torch.zeros(n_way, **kw)
        if self.inner_lrs is not None:
            lrs: dict[str, Any] = {n: self.inner_lrs[_lr_key(n)] for n in weights}
        else:
            lrs = dict.fromkeys(weights, self.inner_lr)
        if not meta_graph:
            weights = {n: w.detach().requires_grad_() for n, w in weights.items()}
            lrs = {n: lr.detach() if isinstance(lr, torch.Tensor) else lr for n, lr in lrs.items()}
        return weights, lrs

    def _run(
        self,
        stages: tuple[Stage, ...],
        x: torch.Tensor,
        weights: dict[str, torch.Tensor],
        stats: dict[str, torch.Tensor] | None,
    ) -> torch.Tensor:
        for stage in stages:
            x = run_stage(stage, x, weights, stats)
        return x

    def _top_logits(
        self,
        h: torch.Tensor,
        weights: dict[str, torch.Tensor],
        stats: dict[str, torch.Tensor] | None,
    ) -> torch.Tensor:
        features = self._plan.tail(self._run(self._plan.top, h, weights, stats))
        return F.linear(features, weights["head.weight"], weights["head.bias"])

    def extra_repr(self) -> str:
        return (
            f"adapt={self.adapt_scope!r}, inner_steps={self.inner_steps}, "
            f"test_inner_steps={self.test_inner_steps}, inner_lr={self.inner_lr}, "
            f"first_order={self.first_order}, head={self.head_init!r}, bn={self.bn!r}, "
            f"meta_sgd={self.meta_sgd}, inner_memory={self.inner_memory!r}"
        )


def _lr_key(name: str) -> str:
    """ParameterDict keys may not contain dots."""
    return name.replace(".", "-")


class FOMAML(MAML):
    """First-order MAML (Finn, Abbeel & Levine, ICML 2017): MAML with ``first_order=True``."""

    def __init__(self, backbone: Backbone, *, first_order: bool = True, **kwargs: Any) -> None:
        super().__init__(backbone, first_order=first_order, **kwargs)


class ANIL(MAML):
    """Almost No Inner Loop (Raghu, Raghu, Bengio & Vinyals, ICLR 2020): only the head adapts."""

    def __init__(self, backbone: Backbone, *, adapt: str = "head", **kwargs: Any) -> None:
        super().__init__(backbone, adapt=adapt, **kwargs)


class MetaSGD(MAML):
    """Meta-SGD (Li, Zhou, Chen & Li, 2017): MAML with learned per-parameter inner rates."""

    def __init__(self, backbone: Backbone, *, meta_sgd: bool = True, **kwargs: Any) -> None:
        super().__init__(backbone, meta_sgd=meta_sgd, **kwargs)
