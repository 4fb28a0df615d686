"""Transferability scores and representation similarity, checked against closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from metatl.transfer import h_score, kendall_tau, leep, linear_cka, logme, mmd, nce
from metatl.transfer.scores import _logme_fit

pytestmark = pytest.mark.filterwarnings("error")


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _predictive_features(labels: torch.Tensor, dim: int, noise: float, seed: int) -> torch.Tensor:
    """Class centroids plus Gaussian noise: features that linearly predict the labels."""
    gen = _gen(seed)
    n_classes = int(labels.max()) + 1
    centroids = torch.randn(n_classes, dim, generator=gen, dtype=torch.float64)
    return centroids[labels] + noise * torch.randn(len(labels), dim, generator=gen).double()


def _direct_log_evidence(f: torch.Tensor, y: torch.Tensor, log_alpha, log_beta) -> torch.Tensor:
    """``log N(y | 0, F F^T / alpha + I / beta)`` straight from the Gaussian density."""
    n = f.shape[0]
    cov = f @ f.t() / log_alpha.exp() + torch.eye(n, dtype=f.dtype) / log_beta.exp()
    chol = torch.linalg.cholesky(cov)
    solved = torch.cholesky_solve(y.unsqueeze(1), chol).squeeze(1)
    logdet = 2.0 * chol.diagonal().log().sum()
    return -0.5 * (y @ solved) - 0.5 * logdet - 0.5 * n * math.log(2 * math.pi)


# --- NCE and LEEP ---------------------------------------------------------------------------


def test_nce_of_a_one_to_one_mapping_is_zero():
    source = torch.tensor([2, 0, 1, 2, 0, 1])
    target = torch.tensor([0, 1, 2, 0, 1, 2])
    assert nce(source, target) == pytest.approx(0.0, abs=1e-12)


def test_nce_of_independent_labels_is_minus_the_label_entropy():
    # P(y=1 | z) = 2/3 for both z: -H(Y) = 1/3 ln 1/3 + 2/3 ln 2/3 = -0.636514168...
    source = torch.tensor([0, 0, 0, 1, 1, 1])
    target = torch.tensor([0, 1, 1, 0, 1, 1])
    expected = math.log(1 / 3) / 3 + 2 * math.log(2 / 3) / 3
    assert expected == pytest.approx(-0.6365141682948129, abs=1e-15)
    assert nce(source, target) == pytest.approx(expected, abs=1e-12)


def test_leep_of_one_hot_source_probs_is_the_log_conditional():
    # z -> y: P(0|0)=2/3, P(1|0)=1/3, P(1|1)=1; score = (2 ln 2/3 + ln 1/3) / 6 = -0.318257...
    source = torch.tensor([0, 0, 0, 1, 1, 1])
    target = torch.tensor([0, 0, 1, 1, 1, 1])
    probs = torch.nn.functional.one_hot(source, 3).float()  # a third, never-predicted class
    expected = (2 * math.log(2 / 3) + math.log(1 / 3)) / 6
    assert expected == pytest.approx(-0.31825708414740644, abs=1e-15)
    assert leep(probs, target) == pytest.approx(expected, abs=1e-9)
    assert nce(source, target) == pytest.approx(expected, abs=1e-12)  # hard = soft here


def test_leep_of_an_uninformative_source_is_log_one_half():
    probs = torch.full((4, 2), 0.5)
    target = torch.tensor([0, 1, 0, 1])
    assert leep(probs, target) == pytest.approx(math.log(0.5), abs=1e-12)


def test_leep_prefers_an_informative_source():
    gen = _gen(1)
    target = torch.randint(0, 4, (200,), generator=gen)
    informative = torch.softmax(3.0 * torch.nn.functional.one_hot(target, 6).float(), dim=1)
    random = torch.softmax(torch.randn(200, 6, generator=gen), dim=1)
    assert leep(informative, target) > leep(random, target) + 0.5


# --- H-score --------------------------------------------------------------------------------


def test_h_score_of_one_dimensional_features_is_the_between_class_variance_share():
    # class means 1 and 5, overall 3: between-class variance 4, total variance 5 -> 0.8
    features = torch.tensor([[0.0], [2.0], [4.0], [6.0]])
    assert h_score(features, torch.tensor([0, 0, 1, 1])) == pytest.approx(0.8, abs=1e-12)


def test_h_score_of_one_hot_label_features_is_classes_minus_one():
    # E[f|y] = f, so the score is rank cov(f) = C - 1 = 2; shrinkage 1 makes cov(f) isotropic -> D
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2])
    features = torch.nn.functional.one_hot(labels).float()
    assert h_score(features, labels) == pytest.approx(2.0, abs=1e-9)
    assert h_score(features, labels, shrinkage=1.0) == pytest.approx(3.0, abs=1e-9)


def test_h_score_prefers_predictive_features():
    labels = torch.randint(0, 3, (120,), generator=_gen(2))
    good = _predictive_features(labels, 6, noise=0.3, seed=3)
    bad = torch.randn(120, 6, generator=_gen(4))
    assert h_score(good, labels) > 1.5 > 0.3 > h_score(bad, labels)


# --- LogME ----------------------------------------------------------------------------------


def test_logme_is_higher_for_linearly_predictive_features():
    labels = torch.randint(0, 4, (150,), generator=_gen(5))
    good = _predictive_features(labels, 10, noise=0.5, seed=6)
    random = torch.randn(150, 10, generator=_gen(7), dtype=torch.float64)
    assert logme(good, labels) > logme(random, labels) + 0.5


def test_logme_is_invariant_to_permuting_samples():
    labels = torch.randint(0, 3, (60,), generator=_gen(8))
    features = _predictive_features(labels, 7, noise=1.0, seed=9)
    perm = torch.randperm(60, generator=_gen(10))
    assert logme(features[perm], labels[perm]) == pytest.approx(logme(features, labels), abs=1e-9)


def test_logme_matches_the_gaussian_marginal_likelihood_at_its_optimum():
    labels = torch.tensor([0, 1, 0, 1, 0, 1, 0, 0])
    features = _predictive_features(labels, 3, noise=0.5, seed=11)
    evidence, alpha, beta = _logme_fit(features, labels)
    direct = []
    for c in range(2):
        y = (labels == c).double()
        log_a = alpha[c].log().clone().requires_grad_(True)
        log_b = beta[c].log().clone().requires_grad_(True)
        value = _direct_log_evidence(features, y, log_a, log_b)
        grad_a, grad_b = torch.autograd.grad(value, (log_a, log_b))
        assert abs(float(grad_a)) < 1e-7 and abs(float(grad_b)) < 1e-7  # a stationary point
        for da, db in [(0.1, 0), (-0.1, 0), (0, 0.1), (0, -0.1)]:  # ... and a maximum
            nearby = _direct_log_evidence(features, y, log_a.detach() + da, log_b.detach() + db)
            assert float(nearby) < float(value.detach())
        direct.append(float(value.detach()))
    assert evidence.tolist() == pytest.approx(direct, abs=1e-9)
    assert logme(features, labels) == pytest.approx(sum(direct) / 2 / 8, abs=1e-10)


def test_logme_with_fewer_samples_than_dimensions_reaches_the_noise_free_limit():
    # N <= D: every target lies in the span of F, so the evidence rises towards its beta -> inf
    # limit log N(y | 0, F F^T / alpha) and has no finite maximiser in beta.
    labels = torch.tensor([0, 1, 0, 1, 0])
    features = _predictive_features(labels, 12, noise=0.5, seed=11)
    evidence, alpha, beta = _logme_fit(features, labels)
    for c in range(2):
        y = (labels == c).double()
        log_a = alpha[c].log().clone().requires_grad_(True)
        value = _direct_log_evidence(features, y, log_a, beta[c].log())
        (grad_a,) = torch.autograd.grad(value, (log_a,))
        assert abs(float(grad_a)) < 1e-5  # alpha is still at its optimum, to the last step
        assert float(evidence[c]) == pytest.approx(float(value.detach()), abs=1e-8)
        limit = _direct_log_evidence(features, y, log_a.detach(), torch.tensor(40.0).double())
        assert float(evidence[c]) == pytest.approx(float(limit), abs=1e-4)
        assert float(evidence[c]) <= float(limit) + 1e-9


@pytest.mark.parametrize(
    "features",
    [
        torch.zeros(20, 5),
        torch.ones(20, 5),
        torch.nn.functional.one_hot(torch.arange(20) % 3).float(),  # fits the targets exactly
        torch.randn(20, 2, generator=_gen(12)).repeat(1, 3),  # rank-deficient
        torch.randn(4, 30, generator=_gen(13))[torch.arange(20) % 4],  # N < D, repeated rows
    ],
)
def test_logme_stays_finite_on_degenerate_features(features):
    assert math.isfinite(logme(features, torch.arange(20) % 3))


def test_logme_handles_fewer_samples_than_dimensions():
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    features = torch.randn(6, 50, generator=_gen(14))
    assert math.isfinite(logme(features, labels))


# --- input validation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: logme(torch.randn(5), torch.zeros(5, dtype=torch.long)), "features"),
        (lambda: logme(torch.randn(1, 3), torch.zeros(1, dtype=torch.long)), "features"),
        (lambda: logme(torch.full((3, 2), math.nan), torch.zeros(3, dtype=torch.long)), "features"),
        (lambda: logme(torch.randn(3, 2), torch.zeros(4, dtype=torch.long)), "labels"),
        (lambda: logme(torch.randn(3, 2), torch.tensor([0, -1, 1])), "labels"),
        (lambda: h_score(torch.randn(3, 2), torch.tensor([0.0, 1.0, 1.0])), "labels"),
        (lambda: h_score(torch.randn(3, 2), torch.tensor([0, 1, 1]), shrinkage=2.0), "shrinkage"),
        (lambda: leep(torch.rand(3, 2), torch.tensor([0, 1, 1])), "source_probs"),
        (lambda: leep(-torch.eye(3), torch.tensor([0, 1, 1])), "source_probs"),
        (lambda: nce(torch.tensor([0]), torch.tensor([0])), "source_labels"),
        (lambda: nce(torch.tensor([0, 1]), torch.tensor([0, 1, 1])), "labels"),
        (lambda: kendall_tau([1, 2], [1, 2, 3]), "a and b"),
        (lambda: kendall_tau([1, 1, 1], [1, 2, 3]), "a has all values tied"),
        (lambda: kendall_tau([1, math.inf], [1, 2]), "a contains"),
        (lambda: linear_cka(torch.randn(4, 2), torch.randn(5, 2)), "x and y"),
        (lambda: linear_cka(torch.ones(4, 2), torch.randn(4, 2)), "x is constant"),
        (lambda: mmd(torch.randn(4, 2), torch.randn(5, 3)), "x and y"),
        (lambda: mmd(torch.randn(4, 2), torch.randn(5, 2), kernel="poly"), "kernel"),
        (lambda: mmd(torch.randn(4, 2), torch.randn(5, 2), bandwidth=0.0), "bandwidth"),
    ],
)
def test_invalid_inputs_raise_value_errors_naming_the_argument(call, name):
    with pytest.raises(ValueError, match=name):
        call()


# --- Kendall's tau --------------------------------------------------------------------------


def test_kendall_tau_hand_examples():
    # one discordant pair in six: (5 - 1) / 6
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(2 / 3, abs=1e-12)
    # ties: 4 concordant, 0 discordant, one tie in each -> 4 / sqrt(5 * 5)
    assert kendall_tau([1, 2, 2, 3], [1, 2, 3, 3]) == pytest.approx(0.8, abs=1e-12)
    assert kendall_tau([3, 2, 1], [1, 2, 3]) == pytest.approx(-1.0, abs=1e-12)


def test_kendall_tau_matches_scipy_with_ties():
    stats = pytest.importorskip("scipy.stats")
    gen = _gen(15)
    for _ in range(5):
        a = torch.randint(0, 5, (12,), generator=gen).tolist()
        b = torch.randint(0, 4, (12,), generator=gen).tolist()
        expected = stats.kendalltau(a, b, variant="b").statistic
        assert kendall_tau(a, b) == pytest.approx(expected, abs=1e-12)


# --- linear CKA -----------------------------------------------------------------------------


def _orthogonal(dim: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=_gen(seed), dtype=torch.float64))
    return q


def _cka_by_centring_matrix(x: torch.Tensor, y: torch.Tensor) -> float:
    """``tr(K H L H) / sqrt(tr(K H K H) tr(L H L H))`` with linear kernels, as in the paper."""
    n = x.shape[0]
    h = torch.eye(n, dtype=torch.float64) - 1.0 / n
    k, ell = x.double() @ x.double().t(), y.double() @ y.double().t()
    hsic = lambda a, b: (a @ h @ b @ h).trace()  # noqa: E731
    return float(hsic(k, ell) / (hsic(k, k) * hsic(ell, ell)).sqrt())


def test_linear_cka_is_one_for_a_scaled_rotation():
    x = torch.randn(30, 6, generator=_gen(16))
    assert linear_cka(x, x.double() @ _orthogonal(6, 17) * 3.5) == pytest.approx(1.0, abs=1e-12)


def test_linear_cka_is_invariant_to_scaling_and_orthogonal_maps():
    x = torch.randn(40, 5, generator=_gen(18), dtype=torch.float64)
    y = x[:, :3] @ torch.randn(3, 4, generator=_gen(19), dtype=torch.float64)
    y = y + torch.randn(40, 4, generator=_gen(20), dtype=torch.float64)
    base = linear_cka(x, y)
    moved = linear_cka(0.01 * x @ _orthogonal(5, 21), 7.0 * y @ _orthogonal(4, 22))
    assert 0.2 < base < 0.99
    assert moved == pytest.approx(base, abs=1e-12)
    assert linear_cka(y, x) == pytest.approx(base, abs=1e-12)


@pytest.mark.parametrize(("n", "d1", "d2"), [(25, 4, 7), (6, 20, 30)])  # feature and Gram paths
def test_linear_cka_matches_the_hsic_definition_and_lies_in_the_unit_interval(n, d1, d2):
    gen = _gen(23)
    for _ in range(3):
        x, y = torch.randn(n, d1, generator=gen), torch.randn(n, d2, generator=gen)
        value = linear_cka(x, y)
        assert 0.0 <= value <= 1.0
        assert value == pytest.approx(_cka_by_centring_matrix(x, y), abs=1e-10)


# --- MMD ------------------------------------------------------------------------------------


def _mmd_by_loops(x: torch.Tensor, y: torch.Tensor, kernel) -> float:
    n, m = len(x), len(y)
    xx = sum(kernel(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(kernel(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(kernel(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return float(xx + yy - 2 * xy)


def test_mmd_matches_the_unbiased_estimator_written_out():
    x = torch.randn(5, 3, generator=_gen(24), dtype=torch.float64)
    y = torch.randn(4, 3, generator=_gen(25), dtype=torch.float64) + 0.5
    rbf = lambda a, b: torch.exp(-((a - b) ** 2).sum() / (2 * 1.3**2))  # noqa: E731
    assert mmd(x, y, bandwidth=1.3) == pytest.approx(_mmd_by_loops(x, y, rbf), abs=1e-12)
    dot = lambda a, b: (a * b).sum()  # noqa: E731
    assert mmd(x, y, kernel="linear") == pytest.approx(_mmd_by_loops(x, y, dot), abs=1e-12)


@pytest.mark.parametrize("kernel", ["rbf", "linear"])
def test_mmd_is_near_zero_for_one_distribution_and_large_for_a_shift(kernel):
    gen = _gen(26)
    x, y = torch.randn(200, 4, generator=gen), torch.randn(150, 4, generator=gen)
    shifted = torch.randn(150, 4, generator=gen) + 1.5
    assert abs(mmd(x, y, kernel=kernel)) < 0.03
    assert mmd(x, shifted, kernel=kernel) > 0.3


def test_mmd_is_symmetric():
    x = torch.randn(30, 3, generator=_gen(27))
    y = torch.randn(20, 3, generator=_gen(28)) * 2 + 1
    for kernel in ("rbf", "linear"):
        assert mmd(x, y, kernel=kernel) == pytest.approx(mmd(y, x, kernel=kernel), abs=1e-12)
