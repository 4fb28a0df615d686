"""iMAML against the exact implicit gradient (a dense Hessian solve) and against differentiating
the converged proximal inner loop by hand; conjugate gradient itself; the loss contract."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from episodes import Episode, EpisodeSpec, LabelledImages
from metatl.algorithms import IMAML
from metatl.algorithms.imaml import conjugate_gradient
from metatl.algorithms.registry import create_learner
from metatl.backbones import create_backbone
from metatl.config import ConfigError, load_config
from tests.conftest import train_briefly
from tests.test_maml import make_episode, max_abs, max_abs_diff, reference_forward

LAM, LR = 5.0, 0.1


def make_imaml(seed: int = 0, **kwargs) -> IMAML:
    torch.manual_seed(seed)
    kwargs = {"lam": LAM, "inner_lr": LR, "inner_steps": 150, "cg_steps": 60} | kwargs
    return IMAML(create_backbone("conv4", hidden=4), **kwargs).double().train()


def learner_gradient(learner: IMAML, episode: Episode) -> tuple[dict[str, torch.Tensor], dict]:
    learner.zero_grad(set_to_none=True)
    loss, metrics = learner.loss(episode)
    loss.backward()
    return {n: p.grad for n, p in learner.named_parameters() if p.grad is not None}, metrics


def unrolled_gradient(learner: IMAML, episode: Episode, adapted: list[int]) -> dict:
    """Differentiate ``inner_steps`` proximal steps by hand (explicit tensors, hand-written
    Conv-4, zero head): at convergence, the implicit gradient."""
    meta = [p.detach().clone().requires_grad_() for p in learner.backbone.parameters()]
    kw = {"dtype": torch.float64, "requires_grad": True}
    head = [torch.zeros(episode.n_way, 4, **kw), torch.zeros(episode.n_way, **kw)]
    theta = meta + head
    fast = list(theta)
    for _ in range(learner.inner_steps):
        loss = F.cross_entropy(reference_forward(fast, episode.support_x), episode.support_y)
        grads = torch.autograd.grad(loss, [fast[i] for i in adapted], create_graph=True)
        for i, g in zip(adapted, grads, strict=True):
            fast[i] = fast[i] - LR * (g + LAM * (fast[i] - theta[i]))
    query = F.cross_entropy(reference_forward(fast, episode.query_x), episode.query_y)
    names = [f"backbone.{n}" for n, _ in learner.backbone.named_parameters()]
    return dict(zip(names, torch.autograd.grad(query, meta), strict=True))


def dense_implicit_gradient(
    learner: IMAML, episode: Episode, damping: float = 0.0
) -> dict[str, torch.Tensor]:
    """``v = ((1 + damping) I + H / lam)^-1 g`` with the full Hessian ``H`` of the support loss
    at the learner's adapted weights, for the adapted parameters."""
    state = learner.adapt(episode.support_x, episode.support_y, episode.n_way)
    names = list(state.weights)
    shapes = [state.weights[n].shape for n in names]
    flat = torch.cat([state.weights[n].flatten() for n in names])

    def unflatten(x: torch.Tensor) -> dict[str, torch.Tensor]:
        parts = torch.split(x, [s.numel() for s in shapes])
        return {n: p.view(s) for n, p, s in zip(names, parts, shapes, strict=True)}

    def loss_on(x_images: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        h = learner._run(learner._plan.trunk, x_images, {}, None)
        return F.cross_entropy(learner._top_logits(h, unflatten(x), None), y)

    with torch.no_grad():
        support = (episode.support_x, episode.support_y)
        hessian = torch.autograd.functional.hessian(lambda x: loss_on(*support, x), flat)
        query = (episode.query_x, episode.query_y)
        g = torch.autograd.functional.jacobian(lambda x: loss_on(*query, x), flat)
    system = (1 + damping) * torch.eye(len(flat), dtype=flat.dtype) + hessian / learner.lam
    assert torch.linalg.eigvalsh(system).min() > 0.05  # CG's assumption holds here
    return unflatten(torch.linalg.solve(system, g))


@pytest.mark.parametrize(
    ("adapt", "adapted"), [("head", [16, 17]), ("top:1", list(range(12, 18)))], ids=str
)
def test_meta_gradient_matches_the_exact_implicit_gradient(adapt: str, adapted: list) -> None:
    learner = make_imaml(adapt=adapt)
    episode = make_episode(dtype=torch.float64)
    ours, metrics = learner_gradient(learner, episode)
    assert metrics["inner_residual"] < 1e-10  # the inner loop reached its minimum
    assert metrics["cg_residual"] < 1e-10 and metrics["cg_breakdown"] == 0.0
    by_hand = unrolled_gradient(learner, episode, adapted)  # includes the trunk's term
    assert max_abs_diff(ours, by_hand) < 1e-9
    assert max_abs(by_hand) > 1e-3
    dense = dense_implicit_gradient(learner, episode)
    for name, v in dense.items():  # the adapted meta-parameters' gradient is v itself
        if name in ours:
            torch.testing.assert_close(ours[name], v, rtol=0, atol=1e-10)
    trunk = "backbone.features.0.0.weight"
    assert float(ours[trunk].abs().max()) > 1e-4  # the trunk is meta-learned too


@pytest.mark.parametrize("damping", [0.0, 0.5])
def test_cg_solves_the_implicit_system_for_every_parameter(damping: float) -> None:
    # adapt="all", learned head: no trunk, every meta-parameter's gradient is v; the inner
    # loop need not converge for CG to solve the system at the weights it reached.
    learner = make_imaml(
        adapt="all", head="learned", n_way=5, lam=50.0, inner_lr=0.01, inner_steps=5
    )
    learner.cg_steps, learner.cg_damping = 300, damping
    episode = make_episode(dtype=torch.float64)
    ours, metrics = learner_gradient(learner, episode)
    assert metrics["cg_residual"] < 1e-10 and metrics["cg_iterations"] < 300
    dense = dense_implicit_gradient(learner, episode, damping)
    assert ours.keys() == dense.keys()
    assert max_abs_diff(ours, dense) < 1e-9
    assert max_abs(dense) > 1e-3


def test_conjugate_gradient_converges_on_spd_and_stops_on_negative_curvature() -> None:
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(30, 30, generator=gen, dtype=torch.float64))
    a = q @ torch.diag(torch.logspace(0, 2, 30, dtype=torch.float64)) @ q.T  # condition 100
    b = torch.randn(30, generator=gen, dtype=torch.float64)

    def matvec(v: list[torch.Tensor]) -> list[torch.Tensor]:
        return [a @ v[0]]

    three = conjugate_gradient(matvec, [b], steps=3)
    assert three.iterations == 3 and len(three.residuals) == 4 and three.residuals[0] == 1.0
    assert three.residuals[-1] > 1e-3  # not converged in 3 of 30 dimensions
    exact = torch.linalg.solve(a, b)
    true_residual = float((b - a @ three.x[0]).norm() / b.norm())
    assert abs(three.residuals[-1] - true_residual) < 1e-10  # the recurrence is honest
    solved = conjugate_gradient(matvec, [b], steps=100, rtol=1e-12)
    assert solved.iterations <= 60 and solved.residuals[-1] <= 1e-12  # 30 in exact arithmetic
    torch.testing.assert_close(solved.x[0], exact, rtol=0, atol=1e-10)
    # A-norm of the error never grows along the iterations
    errors = [conjugate_gradient(matvec, [b], steps=k).x[0] - exact for k in range(1, 15)]
    a_norms = [float(e @ a @ e) for e in errors]
    assert all(x >= y - 1e-12 for x, y in itertools.pairwise(a_norms))

    indefinite = torch.diag(torch.tensor([1.0, -2.0], dtype=torch.float64))
    broken = conjugate_gradient(lambda v: [indefinite @ v[0]], [torch.ones(2).double()], 5)
    assert broken.curvature_breakdown and broken.iterations == 1
    torch.testing.assert_close(broken.x[0], torch.ones(2).double())  # falls back to b


def test_loss_value_is_the_query_loss_and_scales_the_gradient() -> None:
    episode = make_episode(dtype=torch.float64)
    learner = make_imaml(adapt="top:2", inner_steps=5, cg_steps=3)
    loss, metrics = learner.loss(episode)
    state = learner.adapt(episode.support_x, episode.support_y, episode.n_way)
    plain = F.cross_entropy(learner.predict(episode.query_x, state), episode.query_y)
    assert abs(float(loss.detach()) - float(plain.detach())) < 1e-12
    assert metrics["loss"] == float(loss.detach())
    loss.backward()
    full = {n: p.grad.clone() for n, p in learner.named_parameters() if p.grad is not None}
    learner.zero_grad(set_to_none=True)
    (learner.loss(episode)[0] / 4).backward()
    quarter = {n: p.grad for n, p in learner.named_parameters() if p.grad is not None}
    assert max_abs_diff({n: 4 * g for n, g in quarter.items()}, full) < 1e-12
    learner.eval()
    with torch.no_grad():
        evaluated, _ = learner.loss(episode)
    assert not evaluated.requires_grad


def test_running_statistics_are_committed_once_per_episode() -> None:
    learner = make_imaml(adapt="top:1", bn="running", inner_steps=4, cg_steps=2)
    learner.loss(make_episode(dtype=torch.float64))[0].backward()
    count = {n: int(b) for n, b in learner.named_buffers() if n.endswith("num_batches_tracked")}
    # the trunk's support pass once, the top block's once per inner step, CG's passes never
    assert count == {
        "backbone.features.0.1.num_batches_tracked": 1,
        "backbone.features.1.1.num_batches_tracked": 1,
        "backbone.features.2.1.num_batches_tracked": 1,
        "backbone.features.3.1.num_batches_tracked": 4,
    }


def test_imaml_is_built_from_config_and_its_settings_are_checked() -> None:
    config = load_config(
        None,
        [
            "model.algorithm=imaml",
            "model.maml.inner_steps=7",
            "model.maml.inner_lr=0.1",
            "model.imaml.lam=4",
            "model.imaml.cg_steps=3",
            "model.imaml.cg_damping=0.25",
        ],
    )
    learner = create_learner("imaml", create_backbone("conv4", hidden=4), config)
    assert isinstance(learner, IMAML)
    assert (learner.inner_steps, learner.inner_lr, learner.lam) == (7, 0.1, 4.0)
    assert (learner.cg_steps, learner.cg_damping) == (3, 0.25)
    for override, message in (
        ("model.imaml.lam=0", r"model.imaml.lam must be a finite number in \(0, "),
        ("model.imaml.cg_steps=0", r"model.imaml.cg_steps must be an integer in \[1, "),
        ("model.imaml.cg_damping=-1", r"model.imaml.cg_damping must be a finite number in \[0"),
        ("model.imaml.lam=5", r"model.maml.inner_lr \* model.imaml.lam = 0.4 \* 5.0 >= 2"),
        ("model.maml.meta_sgd=true", r"model.maml.first_order and model.maml.meta_sgd must be"),
        ("model.maml.first_order=true", r"model.maml.first_order and model.maml.meta_sgd must"),
    ):
        with pytest.raises(ConfigError, match=message):
            load_config(None, ["model.algorithm=imaml", override])
    net = create_backbone("conv4", hidden=4)
    with pytest.raises(ValueError, match=r"first_order and meta_sgd \(model.maml.\*\) must be"):
        create_learner("imaml", net, load_config(None, ["model.maml.meta_sgd=true"]))
    with pytest.raises(ValueError, match=r"inner_lr \* lam = 0.4 \* 5.0 >= 2"):
        IMAML(net, inner_lr=0.4, lam=5.0)


def test_loss_falls_on_a_tiny_training_run(patterns: LabelledImages) -> None:
    torch.manual_seed(0)
    learner = IMAML(create_backbone("conv4", hidden=16), inner_steps=10, inner_lr=0.2, lam=0.5)
    losses = train_briefly(learner, patterns, EpisodeSpec(5, 1, 3), num_episodes=40)
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.75 * first, (first, last)
