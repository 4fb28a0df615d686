"""Implicit MAML: the meta-gradient of a proximal inner loop by conjugate gradient.

The inner loop minimises the support loss plus a proximal term that keeps the adapted
weights near the meta-parameters; at its minimum the implicit function theorem gives the
meta-gradient as the solution of one linear system, solved by conjugate gradient with
Hessian-vector products at the adapted weights. No inner step's graph is kept, so memory
does not depend on the number of inner steps.

>>> from metatl.backbones import create_backbone
>>> learner = IMAML(create_backbone("conv4", hidden=8), lam=2.0, cg_steps=5)
>>> learner.lam, learner.cg_steps
(2.0, 5)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812

from episodes import Episode
from metatl.algorithms.maml import MAML, BatchNormPolicy, HeadInit, MAMLState
from metatl.backbones import Backbone
from metatl.functional import accuracy

__all__ = ["IMAML", "CGResult", "conjugate_gradient"]

Vector = list[torch.Tensor]
"""A vector of the parameter space: one tensor per adapted parameter."""


@dataclass(frozen=True)
class CGResult:
    """What :func:`conjugate_gradient` found.

    Attributes:
        x: The solution, shaped as the right-hand side.
        residuals: ``||b - A x_i|| / ||b||`` for ``i = 0 .. iterations`` (the recurrence's
            residual; ``residuals[0] == 1``).
        iterations: Matrix-vector products taken.
        curvature_breakdown: True when a search direction had ``p^T A p <= 0`` (``A`` not
            positive definite there); the iteration stopped before that direction.
    """

    x: Vector
    residuals: list[float]
    iterations: int
    curvature_breakdown: bool


def _dot(a: Vector, b: Vector) -> torch.Tensor:
    return torch.stack([(x * y).sum() for x, y in zip(a, b, strict=True)]).sum()


def conjugate_gradient(
    matvec: Callable[[Vector], Vector], b: Vector, steps: int, rtol: float = 1e-12
) -> CGResult:
    """Solve ``A x = b`` for a symmetric positive definite ``A`` given only ``v -> A v``.

    Starts from ``x = 0``; stops after ``steps`` products, when the relative residual falls
    to ``rtol``, or before a direction of non-positive curvature. If that happens on the
    first direction, ``x = b`` (the solution for ``A = I``) is returned instead of zero.

    Args:
        matvec: ``v -> A v`` on lists of tensors shaped as ``b``.
        b: The right-hand side.
        steps: At most this many products (``>= 1``).
        rtol: Stop once ``||r|| <= rtol * ||b||``.

    Returns:
        The solution and the residual history.
    """
    x = [torch.zeros_like(t) for t in b]
    r = [t.clone() for t in b]
    p = [t.clone() for t in b]
    rs = _dot(r, r)
    norm_b = float(rs.sqrt())
    residuals = [1.0]
    if norm_b == 0.0:
        return CGResult(x, residuals, 0, False)
    for i in range(steps):
        ap = matvec(p)
        curvature = _dot(p, ap)
        if float(curvature) <= 0.0:
            return CGResult([t.clone() for t in b] if i == 0 else x, residuals, i + 1, True)
        alpha = rs / curvature
        x = [xi + alpha * pi for xi, pi in zip(x, p, strict=True)]
        r = [ri - alpha * api for ri, api in zip(r, ap, strict=True)]
        rs_new = _dot(r, r)
        residuals.append(float(rs_new.sqrt()) / norm_b)
        if residuals[-1] <= rtol:
            return CGResult(x, residuals, i + 1, False)
        p = [ri + (rs_new / rs) * pi for ri, pi in zip(r, p, strict=True)]
        rs = rs_new
    return CGResult(x, residuals, steps, False)


class IMAML(MAML):
    """Implicit MAML (Rajeswaran, Finn, Kakade & Levine, NeurIPS 2019), on ``torch.func``.

    **Inner loop**: ``inner_steps`` gradient steps (``test_inner_steps`` in eval mode) of
    ``support loss(phi) + lam / 2 * ||phi - theta||^2`` from ``phi = theta``, the
    meta-parameters (the zero head's ``theta`` is zero), with no graph kept.

    **Meta-gradient**: at the adapted ``phi``, with ``H`` the Hessian of the support loss in
    the adapted parameters and ``g`` the query loss's gradient there, the implicit function
    theorem gives ``d query loss / d theta = v`` with ``(I + H / lam + cg_damping I) v = g``
    (``cg_damping = 0`` is the exact system). :func:`conjugate_gradient` solves it with
    ``cg_steps`` Hessian-vector products on one graph of the support loss's gradient at
    ``phi``. Parameters that do not adapt but shape the features (the trunk, run once per
    episode as in :class:`MAML`) get ``d/dpsi query loss - (1/lam) d/dpsi (grad_phi support
    loss . v)``, the same theorem's other term. It is exact when the inner loop has reached
    the minimum; with fewer steps it is the paper's approximation.

    **The contract**: :meth:`loss` (training mode, autograd on) returns a tensor whose value
    is the query cross-entropy and whose ``backward`` puts that meta-gradient on the
    meta-parameters: ``query_loss.detach() + s - s.detach()`` with the surrogate
    ``s = sum(theta * v) + sum(h * dh)`` (``h`` the trunk's support and query outputs, ``dh``
    their terms above; all coefficients detached), so the training loop's
    ``loss.backward()`` needs no change and scaling the loss scales the gradient. Its metrics
    add ``cg_residual`` (final relative residual), ``cg_iterations``, ``cg_breakdown`` (1.0 if
    ``I + H / lam`` was not positive definite along a direction) and ``inner_residual`` (the
    norm of the inner objective's gradient at ``phi``: how far from its minimum).
    ``adapt``, ``predict`` and ``forward`` build no graph to the meta-parameters.

    **Memory**: the support activations of one step and its gradient's graph (for the
    Hessian-vector products) plus the query pass; nothing per inner step.

    The other settings are :class:`MAML`'s (``adapt``, ``head``, ``bn``); the trunk is always
    run once per episode. Meta-SGD and first order do not apply: the implicit gradient does
    not depend on the inner optimiser.

    Args:
        backbone: The feature extractor.
        n_way: Classes per episode; required by ``head="learned"``.
        inner_steps: Inner gradient steps in training mode (more steps: closer to the
            minimum the implicit gradient assumes).
        test_inner_steps: Inner gradient steps in eval mode.
        inner_lr: Inner step size; ``inner_lr * lam < 2`` or the proximal term alone diverges.
        adapt: ``"all"``, ``"head"`` or ``"top:N"``.
        head: ``"zero"`` or ``"learned"``.
        bn: ``"transductive"`` or ``"running"``.
        lam: The proximal strength ``lambda > 0``: larger keeps ``phi`` nearer ``theta``.
        cg_steps: Conjugate-gradient iterations (Hessian-vector products) per episode.
        cg_damping: ``delta >= 0`` added to the system's diagonal (stabilises CG when ``H``
            has negative curvature; biases the gradient).
        first_order: Must be False (accepted so that a config's value is checked).
        meta_sgd: Must be False (likewise).
    """

    def __init__(
        self,
        backbone: Backbone,
        n_way: int | None = None,
        inner_steps: int = 10,
        test_inner_steps: int = 10,
        inner_lr: float = 0.1,
        adapt: str = "all",
        head: HeadInit = "zero",
        bn: BatchNormPolicy = "transductive",
        lam: float = 2.0,
        cg_steps: int = 5,
        cg_damping: float = 0.0,
        first_order: bool = False,
        meta_sgd: bool = False,
    ) -> None:
        if first_order or meta_sgd:
            raise ValueError(
                "iMAML's meta-gradient does not depend on the inner optimiser: first_order and "
                f"meta_sgd (model.maml.*) must be False, got {first_order} and {meta_sgd}"
            )
        if not lam > 0:
            raise ValueError(f"lam (model.imaml.lam) must be > 0, got {lam}")
        if not inner_lr * lam < 2:
            raise ValueError(
                f"inner_lr * lam = {inner_lr} * {lam} >= 2: the proximal term alone makes the "
                "inner loop diverge; lower inner_lr or lam"
            )
        if not isinstance(cg_steps, int) or cg_steps < 1:
            raise ValueError(f"cg_steps must be a positive integer, got {cg_steps!r}")
        if not cg_damping >= 0:
            raise ValueError(f"cg_damping must be >= 0, got {cg_damping}")
        super().__init__(
            backbone,
            n_way=n_way,
            inner_steps=inner_steps,
            test_inner_steps=test_inner_steps,
            inner_lr=inner_lr,
            adapt=adapt,
            head=head,
            bn=bn,
        )
        self.lam = float(lam)
        self.cg_steps = cg_steps
        self.cg_damping = float(cg_damping)

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, n_way: int) -> MAMLState:
        """The proximal inner loop from the meta-parameters; no graph to them.

        Args:
            support_x: ``[n_support, C, H, W]`` float images.
            support_y: int64 ``[n_support]`` in ``0 .. n_way - 1``.
            n_way: Classes in the episode.

        Returns:
            The adapted (detached) weights and the task's statistics.
        """
        self._check_way(n_way)
        stats = self._task_stats()
        with torch.no_grad():
            h = self._run(self._plan.trunk, support_x, {}, stats)
        return self._proximal(h, support_y, self._anchor(n_way, support_x), stats)

    def loss(self, episode: Episode) -> tuple[torch.Tensor, dict[str, Any]]:
        """Query cross-entropy whose ``backward`` gives the implicit meta-gradient.

        Outside training mode or with autograd off, the plain query loss (no meta-gradient).

        Returns:
            The loss tensor (value: the query cross-entropy) and ``{"loss", "accuracy",
            "cg_residual", "cg_iterations", "cg_breakdown", "inner_residual"}`` as floats.
        """
        if not (self.training and torch.is_grad_enabled()):
            return super().loss(episode)
        self._check_way(episode.n_way)
        stats = self._task_stats()
        h_support = self._run(self._plan.trunk, episode.support_x, {}, stats)
        anchor = self._anchor(episode.n_way, episode.support_x)
        state = self._proximal(h_support.detach(), episode.support_y, anchor, stats)
        leaves = {n: w.detach().requires_grad_() for n, w in state.weights.items()}
        h_query = self._run(self._plan.trunk, episode.query_x, {}, None)
        logits = self._top_logits(h_query, leaves, None)
        query_loss = F.cross_entropy(logits, episode.query_y)
        trunk = h_query.requires_grad  # False without a trunk, or with a frozen one
        *g, dh_query = _grad(query_loss, [*leaves.values(), h_query if trunk else None])
        solved, dh_support, stationarity = self._implicit_solve(
            h_support, episode.support_y, leaves, anchor, g, stats
        )
        params = dict(self.named_parameters())
        terms = [
            (params[n] * v).sum() for n, v in zip(leaves, solved.x, strict=True) if n in params
        ]
        if trunk:
            terms += [(h_query * dh_query).sum(), (h_support * dh_support).sum()]
        surrogate = sum(terms, query_loss.new_zeros(()))
        if self.bn == "running":
            self.update_running_stats(state)
        metrics = {
            "loss": float(query_loss.detach()),
            "accuracy": float(accuracy(logits.detach(), episode.query_y)),
            "cg_residual": solved.residuals[-1],
            "cg_iterations": float(solved.iterations),
            "cg_breakdown": float(solved.curvature_breakdown),
            "inner_residual": stationarity,
        }
        return query_loss.detach() + (surrogate - surrogate.detach()), metrics

    def _check_way(self, n_way: int) -> None:
        if self.head is not None and n_way != self.n_way:
            raise ValueError(
                f"head='learned' was built for n_way={self.n_way} but the episode has "
                f"n_way={n_way}; use head='zero' for episodes of varying way"
            )

    def _anchor(self, n_way: int, like: torch.Tensor) -> dict[str, torch.Tensor]:
        """``theta``: the adapted parameters' starting (and proximal) values, detached."""
        weights, _ = self._initial_weights(n_way, like, meta_graph=False)
        return {n: w.detach() for n, w in weights.items()}

    def _proximal(
        self,
        h: torch.Tensor,
        support_y: torch.Tensor,
        anchor: dict[str, torch.Tensor],
        stats: dict[str, torch.Tensor] | None,
    ) -> MAMLState:
        """Gradient descent on ``support loss + lam/2 ||phi - anchor||^2`` from ``anchor``.

        Args:
            h: ``[n_support, ...]`` detached trunk output (the images without a trunk).
            support_y: int64 ``[n_support]``.
            anchor: Name -> ``theta``.
            stats: The task's running statistics (updated by each step) or None.
        """
        steps = self.inner_steps if self.training else self.test_inner_steps
        phi = {n: t.clone() for n, t in anchor.items()}
        with torch.enable_grad():
            for _ in range(steps):
                leaves = {n: p.requires_grad_() for n, p in phi.items()}
                logits = self._top_logits(h, leaves, stats)
                grads = _grad(F.cross_entropy(logits, support_y), list(leaves.values()))
                phi = {
                    n: (p - self.inner_lr * (g + self.lam * (p - anchor[n]))).detach()
                    for (n, p), g in zip(leaves.items(), grads, strict=True)
                }
        return MAMLState(phi, stats or {})

    def _implicit_solve(
        self,
        h_support: torch.Tensor,
        support_y: torch.Tensor,
        leaves: dict[str, torch.Tensor],
        anchor: dict[str, torch.Tensor],
        g: Vector,
        stats: dict[str, torch.Tensor] | None,
    ) -> tuple[CGResult, torch.Tensor | None, float]:
        """Solve ``(I + H/lam + damping I) v = g`` at ``leaves``; the trunk's term.

        Returns:
            The CG result (``x`` is ``v``); ``-(1/lam) d/dh (grad_phi support loss . v)``
            shaped as ``h_support`` (None when the trunk needs no gradient); and the inner
            objective's gradient norm ``||grad support loss + lam (phi - theta)||`` at ``phi``
            (0 at the minimum the implicit gradient assumes).
        """
        scratch = None if stats is None else {n: s.clone() for n, s in stats.items()}
        phi = {n: w.detach().requires_grad_() for n, w in leaves.items()}
        logits = self._top_logits(h_support, phi, scratch)
        loss = F.cross_entropy(logits, support_y)
        grads = torch.autograd.grad(loss, list(phi.values()), create_graph=True)
        with torch.no_grad():
            pulls = [
                gr + self.lam * (p - anchor[n])
                for gr, (n, p) in zip(grads, phi.items(), strict=True)
            ]
            stationarity = float(_dot(pulls, pulls).sqrt())
        pairs = [i for i, gr in enumerate(grads) if gr.requires_grad]  # others: H rows are 0
        scale = 1.0 + self.cg_damping

        def matvec(v: Vector) -> Vector:
            hv = _grad(
                [grads[i] for i in pairs], list(phi.values()), [v[i] for i in pairs], retain=True
            )
            return [scale * vi + hvi / self.lam for vi, hvi in zip(v, hv, strict=True)]

        solved = conjugate_gradient(matvec, [t.detach() for t in g], self.cg_steps)
        if not h_support.requires_grad:
            return solved, None, stationarity
        (mixed,) = _grad([grads[i] for i in pairs], [h_support], [solved.x[i] for i in pairs])
        return solved, -mixed / self.lam, stationarity

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, lam={self.lam}, cg_steps={self.cg_steps}, "
            f"cg_damping={self.cg_damping}"
        )


def _grad(
    outputs: torch.Tensor | Sequence[torch.Tensor],
    inputs: Sequence[torch.Tensor | None],
    grad_outputs: Sequence[torch.Tensor] | None = None,
    retain: bool = False,
) -> list[torch.Tensor | None]:
    """``torch.autograd.grad`` with zeros for unused inputs and None for None inputs."""
    present = [x for x in inputs if x is not None]
    grads = iter(
        torch.autograd.grad(
            outputs,
            present,
            grad_outputs,
            retain_graph=retain,
            allow_unused=True,
            materialize_grads=True,
        )
    )
    return [None if x is None else next(grads) for x in inputs]
