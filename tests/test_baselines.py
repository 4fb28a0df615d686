"""Transfer baselines: the linear probe against scikit-learn, fine-tuning against a naive
reference, and neither ever touching the learner."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from sklearn.linear_model import LogisticRegression
from torch import nn

from metatl.algorithms.finetune import FineTune
from metatl.algorithms.linear_probe import (
    LinearHead,
    LinearProbe,
    fit_linear_head,
    normalize_features,
)
from metatl.backbones import Backbone, InputSpec, create_backbone


def clusters(
    n_way: int, per_class: int, dim: int, spread: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian blobs around random class centres, float64 ``[n_way * per_class, dim]``."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n_way).repeat_interleave(per_class)
    centres = 3.0 * torch.randn(n_way, dim, generator=gen, dtype=torch.float64)
    noise = spread * torch.randn(len(labels), dim, generator=gen, dtype=torch.float64)
    return centres[labels] + noise + 5.0, labels  # offset: centering must matter


def images(n_way: int, per_class: int, seed: int, size: int = 28) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n_way).repeat(per_class)
    protos = torch.rand(n_way, 1, size, size, generator=gen)
    x = protos[labels] + 0.3 * torch.randn(len(labels), 1, size, size, generator=gen)
    return x, labels


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_untouched(module: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "the learner was modified"
    assert all(p.grad is None for p in module.parameters()), "gradients leaked into the learner"


@pytest.fixture
def conv4() -> Backbone:
    torch.manual_seed(0)
    return create_backbone("conv4", hidden=8)


# ---- linear probe --------------------------------------------------------------------------


def test_probe_is_perfect_on_separable_features() -> None:
    x, y = clusters(5, 8, dim=16, spread=0.3, seed=0)
    pixels = create_backbone("pixels", in_channels=1, image_size=4).double()
    probe = LinearProbe(pixels)
    images_ = x.view(-1, 1, 4, 4)
    state = probe.adapt(images_[::2], y[::2], 5)  # 4 shots per class
    assert (probe.predict(images_[1::2], state).argmax(1) == y[1::2]).all()


@pytest.mark.parametrize("normalize", ["none", "l2", "center", "center_l2"])
@pytest.mark.parametrize("weight_decay", [1e-1, 1e-2])
def test_probe_matches_sklearn_logistic_regression(normalize: str, weight_decay: float) -> None:
    x, y = clusters(4, 5, dim=12, spread=2.0, seed=1)
    queries, _ = clusters(4, 3, dim=12, spread=2.0, seed=2)
    head = fit_linear_head(x, y, 4, normalize, weight_decay, max_iter=500)

    # The same problem by hand for scikit-learn: its penalty is 1/2 ||W||^2 + C * sum of losses.
    xs, xq = x.numpy(), queries.numpy()
    if normalize.startswith("center"):
        xs, xq = xs - x.numpy().mean(0), xq - x.numpy().mean(0)
    if normalize.endswith("l2"):
        xs = xs / np.linalg.norm(xs, axis=1, keepdims=True)
        xq = xq / np.linalg.norm(xq, axis=1, keepdims=True)
    shift = xs.mean(0)  # absorbed by the unpenalised intercept; lets lbfgs converge fully
    reference = LogisticRegression(C=1 / (weight_decay * len(y)), tol=1e-12, max_iter=10_000)
    reference.fit(xs - shift, y.numpy())

    np.testing.assert_allclose(head.weight.numpy(), reference.coef_, atol=1e-5)
    probs = torch.softmax(head.logits(queries), dim=1).numpy()
    np.testing.assert_allclose(probs, reference.predict_proba(xq - shift), atol=1e-5)
    assert (head.logits(queries).argmax(1).numpy() == reference.predict(xq - shift)).all()


def test_normalizations() -> None:
    x, _ = clusters(3, 4, dim=6, spread=1.0, seed=3)
    centre = x.mean(0)
    assert torch.equal(normalize_features(x, "none"), x)
    assert torch.allclose(normalize_features(x, "l2").norm(dim=1), torch.ones(12, dtype=x.dtype))
    assert torch.allclose(normalize_features(x, "center", centre).mean(0), torch.zeros(6).double())
    cl2 = normalize_features(x, "center_l2", centre)
    assert torch.allclose(cl2, F.normalize(x - centre, dim=1))
    with pytest.raises(ValueError, match="needs the support mean"):
        normalize_features(x, "center")
    with pytest.raises(ValueError, match="none, l2, center, center_l2"):
        normalize_features(x, "l1")
    with pytest.raises(ValueError, match="normalize must be one of"):
        LinearProbe(create_backbone("pixels"), normalize="zscore")  # type: ignore[arg-type]


def test_probe_normalizations_give_their_invariances() -> None:
    x, y = clusters(3, 4, dim=6, spread=1.0, seed=4)
    q, _ = clusters(3, 2, dim=6, spread=1.0, seed=5)
    shift = torch.randn(6, generator=torch.Generator().manual_seed(6), dtype=x.dtype)

    def logits(mode: str, support: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        return fit_linear_head(support, y, 3, mode, 1e-2, 300).logits(query)

    # l2: scale-invariant per example; center: the support mean is stored and reused on queries.
    assert torch.allclose(logits("l2", x, q), logits("l2", 7 * x, 7 * q), atol=1e-5)
    assert torch.allclose(logits("center", x, q), logits("center", x + shift, q + shift), atol=1e-5)
    head = fit_linear_head(x, y, 3, "center_l2", 1e-2, 300)
    assert head.center is not None and torch.allclose(head.center, x.mean(0))
    # The bias is not penalised, so it absorbs a shift: centring alone changes nothing ...
    assert torch.allclose(logits("none", x, q), logits("center", x, q), atol=1e-5)
    # ... but centring before the unit-norm projection does.
    assert not torch.allclose(logits("l2", x, q), logits("center_l2", x, q), atol=1e-2)


# ---- fine-tuning ---------------------------------------------------------------------------


def test_finetune_without_blocks_is_the_linear_probe(conv4: Backbone) -> None:
    sx, sy = images(5, 2, seed=0)
    qx, _ = images(5, 3, seed=1)
    probe = LinearProbe(conv4, normalize="center_l2", weight_decay=1e-2)
    tune = FineTune(conv4, n_blocks=0, steps=10, normalize="center_l2", weight_decay=1e-2)
    expected = probe.predict(qx, probe.adapt(sx, sy, 5))
    state = tune.adapt(sx, sy, 5)
    assert state.tuned is None
    assert torch.equal(tune.predict(qx, state), expected)


@pytest.mark.parametrize("batch_norm", ["frozen", "adapt"])
def test_finetune_changes_only_the_top_blocks(conv4: Backbone, batch_norm: str) -> None:
    sx, sy = images(5, 2, seed=0)
    before = snapshot(conv4)
    conv4.train()  # the learner's own mode must not matter, nor change
    tune = FineTune(conv4, n_blocks=2, steps=5, backbone_lr=1e-2, batch_norm=batch_norm)
    state = tune.adapt(sx, sy, 5)
    assert_untouched(conv4, before)
    assert conv4.training

    assert state.tuned is not None and state.n_frozen == 2
    tuned = state.tuned.state_dict()
    assert not any(k.startswith(("features.0.", "features.1.")) for k in tuned)  # not copied
    assert {k for k in before if k.startswith(("features.2.", "features.3."))} == set(tuned)
    for key, value in tuned.items():
        if key.endswith(("conv.weight", ".0.weight", ".1.weight", ".1.bias")):
            assert not torch.equal(value, before[key]), f"{key} was not fine-tuned"
        if key.endswith(("running_mean", "running_var")):
            assert torch.equal(value, before[key]) == (batch_norm == "frozen"), key

    # The frozen part is the learner's own eval-mode computation, tensors shared.
    conv4.eval()
    with torch.no_grad():
        expected = conv4.features[1](conv4.features[0](sx))
    assert torch.equal(state.lower(sx), expected)
    assert state.frozen.features[0][0].weight is conv4.features[0][0].weight


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_finetune_matches_a_naive_full_forward_reference(conv4: Backbone, optimizer: str) -> None:
    """Same numbers as fine-tuning a deep copy that runs the whole backbone at every step."""
    sx, sy = images(5, 3, seed=2)
    qx, _ = images(5, 2, seed=3)
    kw = {"steps": 4, "head_lr": 0.05, "backbone_lr": 0.01, "weight_decay": 1e-2}
    tune = FineTune(conv4, n_blocks=1, normalize="center_l2", optimizer=optimizer, **kw)
    got = tune.predict(qx, tune.adapt(sx, sy, 5))

    reference = copy.deepcopy(conv4).eval().requires_grad_(False)
    top = list(reference.features[3].parameters())
    for p in top:
        p.requires_grad_(True)
    head = fit_linear_head(reference(sx), sy, 5, "center_l2", 1e-2, 100)
    weight = head.weight.clone().requires_grad_(True)
    bias = head.bias.clone().requires_grad_(True)
    groups = [{"params": top, "lr": 0.01}, {"params": [weight, bias], "lr": 0.05}]
    if optimizer == "sgd":
        reference_optimizer = torch.optim.SGD(groups, lr=0.05, momentum=0.9)
    else:
        reference_optimizer = torch.optim.Adam(groups)
    for _ in range(4):
        features = reference(sx)
        logits = LinearHead(weight, bias, "center_l2", features.mean(0)).logits(features)
        loss = F.cross_entropy(logits, sy) + 0.5e-2 * weight.pow(2).sum()
        reference_optimizer.zero_grad()
        loss.backward()
        reference_optimizer.step()
    with torch.no_grad():
        centre = reference(sx).mean(0)
        expected = LinearHead(weight, bias, "center_l2", centre).logits(reference(qx))
    assert torch.allclose(got, expected, atol=1e-5)
    probe = LinearProbe(conv4, "center_l2", 1e-2)
    assert not torch.allclose(got, probe.predict(qx, probe.adapt(sx, sy, 5)))  # it did fine-tune


def test_finetune_of_all_blocks_fits_the_support_set(conv4: Backbone) -> None:
    sx, sy = images(5, 2, seed=4)
    tune = FineTune(conv4, n_blocks=-1, steps=30, normalize="none", weight_decay=0.0)
    assert tune.n_blocks == 4
    state = tune.adapt(sx, sy, 5)
    assert (tune.predict(sx, state).argmax(1) == sy).all()


@pytest.mark.parametrize("context", ["no_grad", "inference_mode"])
def test_baselines_adapt_under_no_grad_and_leave_the_learner_alone(
    conv4: Backbone, context: str
) -> None:
    sx, sy = images(5, 1, seed=5)
    qx, _ = images(5, 2, seed=6)
    before = snapshot(conv4)
    for learner in (LinearProbe(conv4), FineTune(conv4, n_blocks=1, steps=3)):
        expected = learner.predict(qx, learner.adapt(sx, sy, 5))  # grad mode on
        with torch.no_grad() if context == "no_grad" else torch.inference_mode():
            logits = learner.predict(qx, learner.adapt(sx, sy, 5))
        assert torch.equal(logits, expected)  # and deterministic
        assert not vars(learner).get("state"), "no per-episode state on the learner"
    assert_untouched(conv4, before)


class Doubled(Backbone):
    """Two blocks, but forward does something before the first one."""

    def __init__(self) -> None:
        super().__init__()
        self.input_spec = InputSpec(1, 4, (0.0,), (1.0,))
        self.a, self.b = nn.Sequential(nn.Flatten(), nn.Linear(16, 8)), nn.Linear(8, 4)
        self.out_dim = 4

    @property
    def blocks(self) -> list[nn.Module]:
        return [self.a, self.b]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(2 * x))


def test_finetune_refuses_a_backbone_it_cannot_split() -> None:
    x = torch.randn(4, 1, 4, 4)
    with pytest.raises(ValueError, match="not its blocks run in sequence"):
        FineTune(Doubled(), n_blocks=1).adapt(x, torch.tensor([0, 1, 0, 1]), 2)
    with pytest.raises(ValueError, match=r"n_blocks must be in 0 .. 2 \(the blocks of Doubled\)"):
        FineTune(Doubled(), n_blocks=3)
    with pytest.raises(ValueError, match="batch_norm must be one of frozen, adapt"):
        FineTune(Doubled(), batch_norm="train")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="optimizer must be one of sgd, adam"):
        FineTune(Doubled(), optimizer="lbfgs")  # type: ignore[arg-type]
