"""Unsupervised domain adaptation: metatl.adaptation and python -m metatl.adapt.

Checked: the losses against hand computations and loops over their formulas, AdaBN's
statistics against the statistics of the target's activations, what TENT changes and what it
leaves alone, the label-free validators and checkpoint selection on hand-written values, every
adapt.method end to end on the fake glyph benchmark of tests/test_domain_splits.py, and, the
point of the whole package, that no adaptation method reads a target label: the same run on
target splits whose labels are garbled gives bit-identical weights for every method and
variant (only the scores differ), with the target labels trapped so that a read outside the
scoring raises; a cheating MCC is shown to fail both. Then the CLI: its tables, its errors,
and an interrupted run resumed to the weights of an uninterrupted one.
"""

from __future__ import annotations

import copy
import inspect
import itertools
import json
import math
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from episodes import DomainShift, LabelledImages, UnlabelledImages
from episodes.datasets import registry
from metatl import adapt as adapt_cli
from metatl.adaptation import run as adapt_run
from metatl.adaptation.losses import (
    DomainClassifier,
    dann_coefficient,
    domain_loss,
    entropy,
    gradient_reversal,
    minimum_class_confusion,
)
from metatl.adaptation.methods import MCC, METHODS, AdaptationMethod
from metatl.adaptation.run import TARGET_SETTING, AdaptResult, run_adaptation
from metatl.adaptation.selection import CRITERIA, select_checkpoints
from metatl.adaptation.test_time import adabn, tent
from metatl.adaptation.trainer import Adapter, AdaptModel
from metatl.adaptation.validators import prediction_entropy, soft_neighbourhood_density
from metatl.config import ConfigError, load_config
from metatl.config.load import CHOICES
from metatl.tracking import JsonlTracker
from metatl.training.builders import build_backbone
from metatl.training.checkpoint import load_checkpoint
from metatl.training.preemption import EXIT_PREEMPTED
from tests.test_domain_splits import write_fake_glyphs

PRESET = Path(__file__).parents[1] / "configs" / "adapt_conv4_kanji.yaml"
N_CLASSES = 100  # the fake benchmark's kanji_domains classes
TARGET_SPLITS = ("target_train", "target_test")  # the target's labels: never to be read


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def scaled(x: torch.Tensor) -> torch.Tensor:
    """The transform of the toy models: uint8 -> [0, 1], float64."""
    return x.double() / 255


# ---- losses --------------------------------------------------------------------------------


@pytest.mark.parametrize("coefficient", [1.0, 0.3, 0.0, 2.5])
def test_gradient_reversal_is_identity_forward_and_reverses_the_gradient(
    coefficient: float,
) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    y = gradient_reversal(x, coefficient)
    assert torch.equal(y, x)
    (y * w).sum().backward()
    reversed_grad = x.grad.clone()
    x.grad = None
    (x * 1 * w).sum().backward()  # the plain gradient
    assert torch.equal(x.grad, w)
    assert torch.equal(reversed_grad, -coefficient * x.grad)


def test_dann_coefficient_schedule() -> None:
    assert dann_coefficient(0.0) == 0.0
    assert dann_coefficient(1.0) == pytest.approx(2 / (1 + math.exp(-10)) - 1)
    assert dann_coefficient(1.0) == pytest.approx(0.9999092, abs=1e-7)
    assert dann_coefficient(0.5, gamma=2.0) == pytest.approx(2 / (1 + math.exp(-1)) - 1)
    grid = [dann_coefficient(i / 100) for i in range(101)]
    assert all(a < b for a, b in itertools.pairwise(grid))  # strictly increasing
    assert dann_coefficient(0.3) > 0.9  # near 1 from p ~ 0.3 on (the paper's remark)
    # progress is clamped to [0, 1]
    assert dann_coefficient(-1.0) == 0.0 and dann_coefficient(7.0) == dann_coefficient(1.0)


def test_entropy_is_the_mean_shannon_entropy() -> None:
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0], [5.0, 5.0]])
    h_half = math.log(2)
    h_quarter = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert float(entropy(logits)) == pytest.approx((2 * h_half + h_quarter) / 3, rel=1e-6)
    assert float(entropy(torch.zeros(3, 7))) == pytest.approx(math.log(7), rel=1e-6)
    confident = torch.tensor([[60.0, 0.0, 0.0]])
    assert float(entropy(confident)) == pytest.approx(0.0, abs=1e-6)


def reference_mcc(logits: torch.Tensor, temperature: float) -> float:
    """Minimum class confusion written out from the docstring, one sum at a time (the
    entropy with the 1e-5 inside the log of Jin et al.'s code)."""
    b, k = logits.shape
    rows = [[math.exp(float(z) / temperature) for z in row] for row in logits.double()]
    p = [[e / sum(row) for e in row] for row in rows]
    h = [-sum(q * math.log(q + 1e-5) for q in row) for row in p]
    raw = [1 + math.exp(-hi) for hi in h]
    w = [b * r / sum(raw) for r in raw]
    c = [[sum(w[i] * p[i][j] * p[i][m] for i in range(b)) for m in range(k)] for j in range(k)]
    c = [[v / sum(row) for v in row] for row in c]
    return sum(c[j][m] for j in range(k) for m in range(k) if m != j) / k


@pytest.mark.parametrize(("b", "k", "temperature", "scale"), [(6, 3, 2.5, 1.0), (9, 5, 1.0, 3.0)])
def test_minimum_class_confusion_equals_the_loop(
    b: int, k: int, temperature: float, scale: float
) -> None:
    logits = scale * torch.randn(b, k, generator=torch.Generator().manual_seed(b * k))
    loss = minimum_class_confusion(logits.double(), temperature)
    assert loss.dtype == torch.float32  # computed in float32 whatever the input
    assert float(loss) == pytest.approx(reference_mcc(logits, temperature), rel=1e-5)
    assert 0 <= float(loss) <= 1


def test_minimum_class_confusion_at_the_extremes() -> None:
    """Confident predictions spread over every class: no confusion. Confident predictions all
    of one class: not 0 but (K - 1) / K, the maximum, because each class nobody is predicted
    as has its row of the correlation matrix normalised onto the one class predicted."""
    k = 4
    spread = 30 * F.one_hot(torch.arange(8) % k, k).float()
    assert float(minimum_class_confusion(spread)) == pytest.approx(0.0, abs=1e-4)
    one_class = 30 * F.one_hot(torch.zeros(8, dtype=torch.long), k).float()
    assert float(minimum_class_confusion(one_class)) == pytest.approx((k - 1) / k, abs=1e-4)
    assert float(minimum_class_confusion(one_class)) == pytest.approx(
        reference_mcc(one_class, 2.5), abs=1e-6
    )
    # uniform predictions: every row of the normalised matrix is 1/K everywhere
    assert float(minimum_class_confusion(torch.zeros(5, k))) == pytest.approx((k - 1) / k)


def test_minimum_class_confusion_gradient_treats_the_weights_as_constants() -> None:
    logits = torch.randn(6, 3, generator=torch.Generator().manual_seed(1), requires_grad=True)
    minimum_class_confusion(logits, 2.5).backward()
    got = logits.grad.clone()

    x = logits.detach().clone().requires_grad_(True)
    p = F.softmax(x / 2.5, dim=1)
    weight = 1 + torch.exp((p * torch.log(p + 1e-5)).sum(1)).detach()
    weight = (len(x) * weight / weight.sum()).unsqueeze(1)
    confusion = (p * weight).T @ p
    confusion = confusion / confusion.sum(1, keepdim=True)
    ((confusion.sum() - confusion.trace()) / 3).backward()
    torch.testing.assert_close(got, x.grad, rtol=1e-5, atol=1e-7)


def test_domain_loss_and_accuracy() -> None:
    source = torch.tensor([-1.0, 2.0, -3.0])  # 0 = source: two right
    target = torch.tensor([1.0, -1.0])  # 1 = target: one right
    loss, accuracy = domain_loss(source, target)
    assert accuracy == pytest.approx(3 / 5)
    expected = 0.5 * (
        sum(math.log1p(math.exp(s)) for s in source.tolist()) / 3
        + sum(math.log1p(math.exp(-t)) for t in target.tolist()) / 2
    )
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    # each domain weighs half whatever the batch sizes: repeating one batch changes nothing
    assert float(domain_loss(source.repeat(5), target)[0]) == pytest.approx(float(loss))
    assert domain_loss(torch.tensor([-9.0]), torch.tensor([9.0]))[1] == 1.0
    assert domain_loss(torch.tensor([0.0]), torch.tensor([0.0]))[1] == 0.0  # undecided: wrong
    classifier = DomainClassifier(5, hidden=7)
    assert classifier(torch.randn(4, 5)).shape == (4,)


# ---- test-time adaptation ------------------------------------------------------------------


def toy_model(norm: str = "batch", seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    layer = nn.BatchNorm2d(4) if norm == "batch" else nn.GroupNorm(2, 4)
    return nn.Sequential(
        nn.Dropout(0.5),  # must be off while AdaBN measures the statistics
        nn.Conv2d(1, 4, 3, padding=1),
        layer,
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).double()


def toy_images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 1, 6, 6), generator=torch.Generator().manual_seed(seed)).to(
        torch.uint8
    )


def conv_outputs(conv: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """What the BatchNorm layer after ``conv`` gets for ``images``, ``[N, C, H, W]``."""
    with torch.no_grad():
        return conv(scaled(images))


def channel_stats(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and unbiased variance over images and positions."""
    flat = a.transpose(0, 1).reshape(a.shape[1], -1)
    return flat.mean(1), flat.var(1, unbiased=True)


def test_adabn_sets_the_statistics_of_the_target() -> None:
    model = toy_model()
    before = copy.deepcopy(model.state_dict())
    images = toy_images(12)
    adapted = adabn(model, images, scaled, batch_size=64)
    bn = adapted[2]
    mean, var = channel_stats(conv_outputs(model[1], images))
    torch.testing.assert_close(bn.running_mean, mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(bn.running_var, var, rtol=1e-12, atol=1e-12)
    assert bn.momentum == 0.1 and not adapted.training
    # only the statistics changed; the model given is untouched
    for key, value in adapted.state_dict().items():
        if "running" not in key and "num_batches" not in key:
            assert torch.equal(value, before[key]), key
    assert_same_tensors(model.state_dict(), before)
    assert float((model[2].running_mean - mean).abs().max()) > 0.01  # it did change something
    # UnlabelledImages and a tensor are the same to it
    same = adabn(model, UnlabelledImages(images, "t"), scaled, batch_size=64)
    assert_same_tensors(same.state_dict(), adapted.state_dict())


def test_adabn_averages_the_batch_statistics_and_skips_a_last_single_image() -> None:
    model, images = toy_model(), toy_images(9, seed=1)
    adapted = adabn(model, images, scaled, batch_size=4)  # batches of 4, 4 and 1 (skipped)
    stats = [channel_stats(conv_outputs(model[1], images[s : s + 4])) for s in (0, 4)]
    torch.testing.assert_close(adapted[2].running_mean, (stats[0][0] + stats[1][0]) / 2)
    torch.testing.assert_close(adapted[2].running_var, (stats[0][1] + stats[1][1]) / 2)
    assert int(adapted[2].num_batches_tracked) == 2


def test_adabn_and_tent_refuse_what_they_cannot_adapt() -> None:
    with pytest.raises(ValueError, match="no BatchNorm layer"):
        adabn(toy_model("group"), toy_images(4), scaled)
    plain = nn.Sequential(nn.Flatten(), nn.Linear(36, 3)).double()
    with pytest.raises(ValueError, match="has none"):
        tent(plain, toy_images(4), scaled)
    with pytest.raises(ValueError, match="2\\+ target images"):
        adabn(toy_model(), toy_images(1), scaled)


def tent_setup() -> tuple[nn.Sequential, torch.Tensor]:
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    ).double()
    torch.manual_seed(3)
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(module.weight, std=0.5)
    model[0].weight.requires_grad_(False)  # a frozen parameter stays frozen
    return model, toy_images(64, seed=2)


def test_tent_trains_the_normalisation_affine_parameters_only() -> None:
    model, images = tent_setup()
    before = copy.deepcopy(model.state_dict())
    flags = [p.requires_grad for p in model.parameters()]
    adapted = tent(model, images, scaled, lr=0.05, batch_size=16, epochs=3, seed=0)
    assert not adapted.training
    assert flags == [False, True, True, True, True, True]  # conv weight frozen
    assert [p.requires_grad for p in adapted.parameters()] == flags
    assert_same_tensors(model.state_dict(), before)  # the model given is untouched
    after = adapted.state_dict()
    for key in ("0.weight", "0.bias", "5.weight", "5.bias"):
        assert torch.equal(after[key], before[key]), key  # conv, linear: identical
    for key in ("1.weight", "1.bias"):
        assert float((after[key] - before[key]).abs().max()) > 1e-3, key
    # then AdaBN on the target: its running statistics are those of the target images
    mean, var = channel_stats(conv_outputs(model[0], images))
    torch.testing.assert_close(after["1.running_mean"], mean, atol=1e-12, rtol=0)
    torch.testing.assert_close(after["1.running_var"], var, atol=1e-12, rtol=1e-12)

    def target_entropy(m: nn.Module) -> float:
        m.eval()
        with torch.no_grad():
            return float(entropy(m(scaled(images))))

    original, statistics_only = target_entropy(model), target_entropy(adabn(model, images, scaled))
    adapted_entropy = target_entropy(adapted)
    assert adapted_entropy < statistics_only - 0.05 and adapted_entropy < original - 0.05
    # seeded: the same seed gives the same copy, another seed another batch order
    again = tent(model, images, scaled, lr=0.05, batch_size=16, epochs=3, seed=0)
    assert_same_tensors(again.state_dict(), after)
    other = tent(model, images, scaled, lr=0.05, batch_size=16, epochs=3, seed=1)
    assert not torch.equal(other.state_dict()["1.weight"], after["1.weight"])


def test_tent_without_batch_norm_keeps_no_statistics() -> None:
    model = toy_model("group")
    before = copy.deepcopy(model.state_dict())
    adapted = tent(model, toy_images(8), scaled, lr=0.1, batch_size=4)
    after = adapted.state_dict()
    assert not adapted.training and after.keys() == before.keys()
    assert [k for k in after if not torch.equal(after[k], before[k])] == ["2.weight", "2.bias"]


# ---- validators and selection --------------------------------------------------------------


def test_prediction_entropy_of_uniform_logits_is_log_k() -> None:
    assert prediction_entropy(torch.zeros(10, 7)) == pytest.approx(math.log(7), rel=1e-6)
    assert prediction_entropy(torch.full((3, 4), 2.0)) == pytest.approx(math.log(4), rel=1e-6)
    assert prediction_entropy(50 * torch.eye(4)) == pytest.approx(0.0, abs=1e-6)


def test_soft_neighbourhood_density() -> None:
    """Higher for predictions in tight clusters than for confident random ones; but, as SND
    measures density, highest of all for near-uniform predictions (its known weakness)."""
    n, k, temperature = 100, 10, 0.05
    labels = torch.arange(n) % k
    for seed in range(3):
        gen = torch.Generator().manual_seed(seed)
        clustered = 8 * F.one_hot(labels, k).float() + 0.3 * torch.randn(n, k, generator=gen)
        scattered = 3 * torch.randn(n, k, generator=gen)  # confident, random, no clusters
        hesitant = 0.3 * torch.randn(n, k, generator=gen)  # near-uniform, random
        snd_clustered = soft_neighbourhood_density(clustered, temperature)
        assert snd_clustered == pytest.approx(math.log(n // k - 1), abs=1e-3)
        assert soft_neighbourhood_density(scattered, temperature) < snd_clustered - 0.2
        assert soft_neighbourhood_density(hesitant, temperature) > snd_clustered + 2
    # Exactly one-hot clusters of m: each image's neighbourhood is its m - 1 twins at
    # similarity 1/T and the others at 0.
    m = n // k
    onehot = 1e4 * F.one_hot(labels, k).float()
    twin, other = math.exp(1 / temperature), 1.0
    z = (m - 1) * twin + (n - m) * other
    expected = -((m - 1) * twin / z * math.log(twin / z) + (n - m) / z * math.log(other / z))
    assert soft_neighbourhood_density(onehot, temperature) == pytest.approx(expected, rel=1e-5)
    # Identical predictions (e.g. uniform): the neighbourhood is uniform over the N - 1
    # others, the largest SND there is, above well-clustered predictions (SND's known
    # weakness to collapsed predictions).
    assert soft_neighbourhood_density(torch.zeros(n, k)) == pytest.approx(math.log(n - 1))
    assert soft_neighbourhood_density(torch.zeros(n, k)) > snd_clustered
    with pytest.raises(ValueError, match="2\\+ images"):
        soft_neighbourhood_density(torch.zeros(1, k))


def history_row(step: int, val: float, ent: float, snd: float, oracle: float) -> dict:
    return {
        "step": float(step),
        "source_val_accuracy": val,
        "target_entropy": ent,
        "target_snd": snd,
        "oracle_target_accuracy": oracle,
    }


def test_select_checkpoints_on_a_written_history() -> None:
    history = [
        history_row(10, 0.50, 2.0, 3.0, 0.40),
        history_row(20, 0.70, 1.5, 3.5, 0.55),
        history_row(30, 0.70, 1.1, 3.5, 0.60),  # ties with 20 on val and SND: 20 is earlier
        history_row(40, 0.65, 1.1, 3.2, 0.52),  # ties with 30 on entropy: 30 is earlier
        history_row(50, 0.60, 1.3, 2.0, 0.60),  # ties with 30 as the oracle's best
    ]
    selections = {s.criterion: s for s in select_checkpoints(history)}
    assert list(selections) == [*CRITERIA, "oracle"]
    assert list(CRITERIA) == ["source_val_accuracy", "target_entropy", "target_snd"]
    expected = {  # criterion: (step, its value, target accuracy, gap)
        "source_val_accuracy": (20, 0.70, 0.55, 0.05),
        "target_entropy": (30, 1.1, 0.60, 0.0),
        "target_snd": (20, 3.5, 0.55, 0.05),
        "oracle": (30, 0.60, 0.60, 0.0),
    }
    for criterion, (step, value, accuracy, gap) in expected.items():
        s = selections[criterion]
        assert (s.step, s.value, s.target_accuracy) == (step, value, accuracy), criterion
        assert s.gap == pytest.approx(gap) and isinstance(s.step, int)
    one = select_checkpoints([history_row(5, 0.1, 0.2, 0.3, 0.4)])
    assert [(s.step, s.gap) for s in one] == [(5, 0.0)] * 4


def test_select_checkpoints_needs_a_history_with_the_oracle() -> None:
    with pytest.raises(ValueError, match="no validation was recorded"):
        select_checkpoints([])
    rows = [history_row(1, 0.1, 0.2, 0.3, 0.4), history_row(2, 0.1, 0.2, 0.3, 0.4)]
    del rows[1]["oracle_target_accuracy"]
    with pytest.raises(ValueError, match="no oracle target accuracy"):
        select_checkpoints(rows)


# ---- end to end on the fake kanji domains --------------------------------------------------


@pytest.fixture(scope="module")
def glyph_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_glyphs(tmp_path_factory.mktemp("adapt-data") / "glyphs")


def overrides(root: Path, out_dir: Path, name: str, method: str, *extra: str) -> list[str]:
    """The kanji preset, small: 16x16 images (conv4's four poolings need 16; the fake glyphs
    are 8x8), 800 source images in batches of 200 (4 steps an epoch, 8 in all, validated
    after each epoch), 2 few-shot episodes of the new written characters."""
    return [
        f"data.root={root}",
        "data.image_size=16",
        "device=cpu",
        f"out_dir={out_dir}",
        f"name={name}",
        "pretrain.epochs=2",
        "pretrain.batch_size=200",
        "pretrain.val_every=1",
        "train.log_every=4",
        f"adapt.method={method}",
        "adapt.target_batch_size=100",
        "adapt.dann_hidden=32",
        "adapt.tent_batch_size=50",
        "adapt.score_images=100",
        "test.shots=[1]",
        "test.episodes=2",
        "tracking.wandb.mode=disabled",
        *extra,
    ]


class LabelRead(BaseException):
    """A target label was read outside the scoring (a BaseException: nothing eats it)."""


class GuardedLabels(LabelledImages):
    """A split whose ``labels`` raise :class:`LabelRead` unless its ``allowed()`` says so
    (once armed, after construction, whose checks read them); allowed reads are counted."""

    def __getattribute__(self, name: str) -> Any:
        if name == "labels":
            state = object.__getattribute__(self, "__dict__").get("guard")
            if state is not None:
                allowed, reads = state
                if not allowed():
                    raise LabelRead(f"the labels of {object.__getattribute__(self, 'name')}")
                reads[object.__getattribute__(self, "name")] += 1
        return object.__getattribute__(self, name)


def garbled(data: LabelledImages, seed: int) -> LabelledImages:
    """``data`` with random labels: other labels, another grouping, other class counts."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, data.num_classes, (len(data),), generator=gen)
    return LabelledImages(data.images, labels, data.class_names, data.name)


@dataclass
class Run:
    result: AdaptResult
    variants: dict[str, dict[str, torch.Tensor]]
    true_labels: dict[str, torch.Tensor] = field(default_factory=dict)
    served_labels: dict[str, torch.Tensor] = field(default_factory=dict)
    label_reads: dict[str, int] = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        return self.result.run_dir

    def checkpoint(self, name: str) -> dict[str, Any]:
        return load_checkpoint(self.run_dir / name)

    def history(self) -> list[dict[str, float]]:
        return json.loads((self.run_dir / "history.json").read_text())


def adaptation(
    root: Path,
    out_dir: Path,
    name: str,
    method: str,
    *extra: str,
    garble: bool = False,
    trap: bool = False,
    patch: Callable[[pytest.MonkeyPatch], None] | None = None,
) -> Run:
    """``run_adaptation`` on the fake kanji domains; the adapted variants are kept.

    ``garble``: the target splits (target_train, target_test) come with random labels.
    ``trap``: their labels raise :class:`LabelRead` when read, except target_test's inside
    ``_target_accuracy`` (the oracle and the final scoring, the only readers allowed).
    """
    variants: dict[str, dict[str, torch.Tensor]] = {}
    true_labels: dict[str, torch.Tensor] = {}
    served: dict[str, torch.Tensor] = {}
    reads = {f"kanji_domains/{s}": 0 for s in TARGET_SPLITS}
    scoring = {"depth": 0}
    load, make_variants, score = (
        registry._DATASETS["kanji_domains"],
        adapt_run.adapted_variants,
        adapt_run._target_accuracy,
    )

    def loader(root_: Path, split: str, image_size: int | None) -> LabelledImages:
        data = load(root_, split, image_size)
        if split not in TARGET_SPLITS:
            return data
        true_labels[split] = data.labels.clone()
        if garble:
            data = garbled(data, seed=TARGET_SPLITS.index(split) + 1)
        served[split] = data.labels.clone()
        if trap:
            data = GuardedLabels(data.images, data.labels, data.class_names, data.name)
            allowed = (lambda: False) if split == "target_train" else (lambda: scoring["depth"])
            object.__setattr__(data, "guard", (allowed, reads))
        return data

    def keep_variants(*args: Any, **kwargs: Any) -> dict[str, nn.Module]:
        made = make_variants(*args, **kwargs)
        variants.update({k: copy.deepcopy(v.state_dict()) for k, v in made.items()})
        return made

    def scored(*args: Any, **kwargs: Any) -> Any:
        scoring["depth"] += 1
        try:
            return score(*args, **kwargs)
        finally:
            scoring["depth"] -= 1

    config = load_config(PRESET, overrides(root, out_dir, name, method, *extra))
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(registry._DATASETS, "kanji_domains", loader)
        mp.setattr(adapt_run, "adapted_variants", keep_variants)
        mp.setattr(adapt_run, "_target_accuracy", scored)
        if patch is not None:
            patch(mp)
        result = run_adaptation(config)
    return Run(result, variants, true_labels, served, reads)


class Runs:
    """Each (method, garbled) run once for the module: the clean runs are what the end to end
    and CLI tests check, the garbled (and trapped) ones what the label tests compare them to."""

    def __init__(self, root: Path, out_dir: Path) -> None:
        self.root, self.out_dir = root, out_dir
        self.cache: dict[tuple[str, bool], Run] = {}

    def get(self, method: str, garble: bool = False) -> Run:
        key = (method, garble)
        if key not in self.cache:
            name = f"{method}-{'garbled' if garble else 'clean'}"
            self.cache[key] = adaptation(
                self.root, self.out_dir, name, method, garble=garble, trap=garble
            )
        return self.cache[key]


@pytest.fixture(scope="module")
def runs(glyph_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Runs:
    return Runs(glyph_root, tmp_path_factory.mktemp("adapt-runs"))


FEWSHOT_SETTING = "5-way 1-shot kanji_domains/target_fewshot"
SMALL = ("pretrain.epochs=1", "adapt.test_time=[]", "adapt.fewshot_split=''")  # 4 steps


@pytest.mark.parametrize("method", METHODS)
def test_every_method_end_to_end(method: str, runs: Runs) -> None:
    run = runs.get(method)
    result = run.result
    names = (
        ["source_only", "adabn", "tent"]
        if method == "source_only"
        else [method, f"{method}+adabn", f"{method}+tent"]
    )
    assert list(result.test) == [TARGET_SETTING, FEWSHOT_SETTING]
    assert list(result.test[TARGET_SETTING]) == names == list(run.variants)
    for r in result.test[TARGET_SETTING].values():
        assert len(r.accuracies) == 500 and set(r.accuracies) <= {0.0, 1.0}
        assert 0 <= r.mean <= 1 and r.episode_set == "kanji_domains/target_test images"
    for r in result.test[FEWSHOT_SETTING].values():
        assert len(r.accuracies) == 2 and all(0 <= a <= 1 for a in r.accuracies)
    for file in ("results.json", "selection.md", "history.json", "best.pt", "last.pt"):
        assert (run.run_dir / file).is_file(), file
    assert [s["criterion"] for s in result.selection] == [*CRITERIA, "oracle"]
    history = run.history()
    assert [row["step"] for row in history] == [4.0, 8.0]  # after each epoch
    for row in history:
        assert set(row) == {
            "step",
            "source_val_accuracy",
            "target_entropy",
            "target_snd",
            "oracle_target_accuracy",
        }
        assert 0 <= row["target_entropy"] <= math.log(N_CLASSES) + 1e-5
        assert 0 <= row["target_snd"] <= math.log(100 - 1) + 1e-5  # 100 scored images
    oracle = max(row["oracle_target_accuracy"] for row in history)
    for s in result.selection:
        assert 0 <= s["gap"] == pytest.approx(oracle - s["target_accuracy"])
    # the final accuracy of the model as trained is the oracle's at the best.pt step
    best = run.checkpoint("best.pt")
    row = next(r for r in history if r["step"] == best["step"])
    assert result.test[TARGET_SETTING][names[0]].mean == row["oracle_target_accuracy"]
    # best.pt is the source-validation criterion's choice (ties: the earliest)
    assert best["step"] == result.selection[0]["step"] == result.best_val["step"]
    assert {k.split(".")[0] for k in best["model"]} == (
        {"backbone", "classifier", "domain_classifier"}
        if method == "dann"
        else {"backbone", "classifier"}
    )
    saved = json.loads((run.run_dir / "results.json").read_text())
    assert saved["kind"] == "adapt" and saved["steps"] == 8
    assert saved["selection"] == result.selection
    text = (run.run_dir / "selection.md").read_text()
    assert all(f"| {c} |" in text for c in [*CRITERIA, "oracle"])


def test_the_variants_differ_where_they_should(runs: Runs) -> None:
    run = runs.get("source_only")
    trained, statistics, entropy_min = (run.variants[n] for n in ("source_only", "adabn", "tent"))
    best = {k.removeprefix("backbone."): v for k, v in run.checkpoint("best.pt")["model"].items()}
    # the model as trained is best.pt ("0." the backbone, "1." the classifier)
    assert torch.equal(trained["0.features.0.0.weight"], best["features.0.0.weight"])
    for key in trained:
        if ".running_" in key:
            assert not torch.equal(statistics[key], trained[key]), key
            assert not torch.equal(entropy_min[key], trained[key]), key
        elif key.endswith(("1.weight", "1.bias")) and key.startswith("0.features"):
            assert torch.equal(statistics[key], trained[key]), key  # AdaBN: weights as trained
            assert not torch.equal(entropy_min[key], trained[key]), key  # TENT trains them
        elif "num_batches" not in key:
            assert torch.equal(statistics[key], trained[key]), key
            assert torch.equal(entropy_min[key], trained[key]), key


# ---- no target label is read ---------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_no_method_reads_a_target_label(method: str, runs: Runs) -> None:
    """The same run twice, the second on target splits whose labels are random and trapped:
    every weight of training (best.pt, last.pt, the optimiser) and of every test-time variant
    (AdaBN, TENT) is bit-identical, and so is every label-free number; only what the labels
    score differs. A method using target labels in any way (a loss on them, their grouping,
    their counts) would train other weights on the random ones; reading them at all outside
    the scoring raises in the second run."""
    clean, other = runs.get(method), runs.get(method, garble=True)
    # the second run was really served other labels, and its trap was live
    for split in TARGET_SPLITS:
        assert torch.equal(clean.served_labels[split], clean.true_labels[split])
        assert torch.equal(other.true_labels[split], clean.true_labels[split])
        changed = other.served_labels[split] != other.true_labels[split]
        assert float(changed.float().mean()) > 0.95, split
        counts = torch.bincount(other.served_labels[split], minlength=N_CLASSES)
        assert counts.tolist() != [5] * N_CLASSES  # the true counts: 5 a class
    # target_test's labels: read once per oracle call (a validation) and per variant scored
    scored = len(other.history()) + len(other.variants)
    assert other.label_reads == {
        "kanji_domains/target_train": 0,
        "kanji_domains/target_test": scored,
    }
    # training: identical
    for name in ("best.pt", "last.pt"):
        a, b = clean.checkpoint(name), other.checkpoint(name)
        assert a["step"] == b["step"]
        assert_same_tensors(a["model"], b["model"])
    a, b = clean.checkpoint("last.pt")["optimizer"], other.checkpoint("last.pt")["optimizer"]
    for sa, sb in zip(a["state"].values(), b["state"].values(), strict=True):
        assert_same_tensors(sa, sb)
    assert clean.result.best_val == other.result.best_val
    # the test-time variants: identical
    assert list(clean.variants) == list(other.variants)
    for name in clean.variants:
        assert_same_tensors(clean.variants[name], other.variants[name])

    # the label-free validators and the checkpoints they choose: identical
    def label_free(run: Run) -> list[dict[str, float]]:
        oracle = "oracle_target_accuracy"
        return [{k: v for k, v in r.items() if k != oracle} for r in run.history()]

    assert label_free(clean) == label_free(other)
    steps = [(s["criterion"], s["step"], s["value"]) for s in clean.result.selection[:3]]
    assert steps == [(s["criterion"], s["step"], s["value"]) for s in other.result.selection[:3]]
    # few-shot on the (labelled, unchanged) new classes: identical, the models being so
    assert clean.result.test[FEWSHOT_SETTING] == other.result.test[FEWSHOT_SETTING]
    # what the target labels score does differ: they did reach the scoring
    assert any(
        clean.result.test[TARGET_SETTING][n].accuracies
        != other.result.test[TARGET_SETTING][n].accuracies
        for n in clean.variants
    )
    assert [r["oracle_target_accuracy"] for r in clean.history()] != [
        r["oracle_target_accuracy"] for r in other.history()
    ]


def cheating_mcc(mp: pytest.MonkeyPatch) -> None:
    """MCC plus a cross-entropy on target labels it fetched itself, as a leak would."""
    from metatl.training.data import load_split

    honest, build, seen = MCC.target_loss, adapt_run._build, {}

    def remember_config(start, fewshot):
        seen["data"] = start.config.data
        return build(start, fewshot)

    def target_loss(self, model, source_features, target_features, target_logits, progress):
        loss, metrics = honest(
            self, model, source_features, target_features, target_logits, progress
        )
        labels = load_split(seen["data"], "target_train").labels[: len(target_logits)]
        return loss + F.cross_entropy(target_logits, labels), metrics

    mp.setattr(adapt_run, "_build", remember_config)
    mp.setattr(MCC, "target_loss", target_loss)


def test_the_label_tests_catch_a_method_that_reads_target_labels(
    glyph_root: Path, tmp_path: Path
) -> None:
    """The mutation the tests above are for: MCC with a loss on the target labels. Garbled
    labels change its weights; trapped labels stop it at the first read."""

    def cheat(name: str, garble: bool, trap: bool = False) -> Run:
        return adaptation(
            glyph_root, tmp_path, name, "mcc", *SMALL, garble=garble, trap=trap, patch=cheating_mcc
        )

    a, b = (cheat(f"cheat-{g}", g).checkpoint("last.pt")["model"] for g in (False, True))
    assert any(not torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(LabelRead, match="kanji_domains/target_train"):
        cheat("cheat-trapped", garble=True, trap=True)


def test_the_target_reaches_training_without_labels(tmp_path: Path) -> None:
    data = LabelledImages(
        torch.zeros(6, 1, 16, 16, dtype=torch.uint8), torch.arange(6) % 3, ("a", "b", "c"), "x"
    )
    config = load_config(None, ["device=cpu", "pretrain.batch_size=2"])
    backbone = build_backbone(config, 1, 16)
    tracker = JsonlTracker(tmp_path / "metrics.jsonl")
    with pytest.raises(TypeError, match="must come as UnlabelledImages, not LabelledImages"):
        Adapter(AdaptModel(backbone, 3), config, data, data, data, tmp_path, tracker)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="target_train must be UnlabelledImages"):
        DomainShift(data, data, data, data)  # type: ignore[arg-type]
    target = UnlabelledImages.from_labelled(data)
    assert not hasattr(target, "labels") and not hasattr(target, "class_names")
    shift = DomainShift(data, data, target, data)
    assert not hasattr(shift.target_train, "labels")
    # what a method is handed: features and logits of the target batch, nothing with labels
    parameters = list(inspect.signature(AdaptationMethod.target_loss).parameters)
    assert parameters == [
        "self",
        "model",
        "source_features",
        "target_features",
        "target_logits",
        "progress",
    ]
    adapter = Adapter(AdaptModel(backbone, 3), config, data, data, target, tmp_path, tracker)
    assert isinstance(adapter.target, UnlabelledImages)
    assert adapter.target_batch(1).shape == (2, 1, 16, 16)


# ---- the command ---------------------------------------------------------------------------


def cli_args(root: Path, out_dir: Path, name: str, method: str, *extra: str) -> list[str]:
    return ["--config", str(PRESET), *overrides(root, out_dir, name, method, *extra)]


def test_cli_prints_the_target_table_and_the_selection(
    glyph_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = cli_args(glyph_root, tmp_path, "cli", "mcc", "adapt.test_time=[adabn]")
    assert adapt_cli.main(args) == 0
    out = capsys.readouterr().out
    assert f"Target accuracy (mean ± 95% CI), run {tmp_path / 'cli'}" in out
    assert "| setting | mcc | mcc+adabn |" in out
    assert "| target test images |" in out and f"| {FEWSHOT_SETTING} |" in out
    assert "Model selection without target labels" in out
    for criterion in [*CRITERIA, "oracle"]:
        assert f"| {criterion} | " in out
    assert (tmp_path / "cli" / "report.md").is_file()


def test_cli_refuses_a_method_it_does_not_know(
    glyph_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert CHOICES["adapt.method"] == METHODS == ("source_only", "dann", "mcc")
    code = adapt_cli.main(cli_args(glyph_root, tmp_path, "bad", "coral"))
    err = capsys.readouterr().err
    assert code == 2
    assert "adapt.method='coral' is not allowed" in err
    assert all(m in err for m in METHODS)
    assert "Traceback" not in err and not (tmp_path / "bad").exists()


@pytest.mark.parametrize("split", ["source_train", "source_val", "target_test"])
def test_cli_refuses_a_target_split_that_is_a_labelled_split(
    split: str, glyph_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "runs"
    args = cli_args(glyph_root, out_dir, "same", "dann", f"adapt.target_split={split}")
    assert adapt_cli.main(args) == 2
    err = capsys.readouterr().err
    assert f"error: adapt.target_split={split!r} is also a data.*_split" in err
    assert "Traceback" not in err
    assert not out_dir.exists() or not any(out_dir.iterdir())


def test_too_few_scored_target_images_are_refused_before_the_run(
    glyph_root: Path, tmp_path: Path
) -> None:
    extra = (*SMALL, "adapt.score_images=1")
    config = load_config(PRESET, overrides(glyph_root, tmp_path, "one", "source_only", *extra))
    with pytest.raises(ConfigError, match="score_images"):
        run_adaptation(config)
    assert not (tmp_path / "one").exists()


def test_cli_resumes_an_interrupted_run_exactly(
    glyph_root: Path,
    tmp_path: Path,
    runs: Runs,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Stopped by SIGTERM mid-epoch (step 2) and at an epoch's end (step 4, its validation
    interrupted and redone), then resumed: the run never interrupted, bit for bit."""
    whole = runs.get("dann")
    step, calls = Adapter.train_step, {"n": 0}

    def interrupted(self, n: int) -> dict[str, float]:
        calls["n"] += 1
        if calls["n"] in (2, 4):
            os.kill(os.getpid(), signal.SIGTERM)
        return step(self, n)

    cut = tmp_path / "cut"
    with monkeypatch.context() as mp:
        mp.setattr(Adapter, "train_step", interrupted)
        assert adapt_cli.main(cli_args(glyph_root, tmp_path, "cut", "dann")) == EXIT_PREEMPTED
        assert "SIGTERM after step 2" in capsys.readouterr().err
        assert adapt_cli.main(["--resume", str(cut)]) == EXIT_PREEMPTED
        assert "SIGTERM after step 4" in capsys.readouterr().err
        assert load_checkpoint(cut / "last.pt")["history"] == []  # the validation is redone
    assert adapt_cli.main(["--resume", str(cut)]) == 0
    assert "Model selection without target labels" in capsys.readouterr().out
    for name in ("best.pt", "last.pt"):
        final, reference = load_checkpoint(cut / name), whole.checkpoint(name)
        assert final["step"] == reference["step"]
        assert_same_tensors(final["model"], reference["model"])
    assert json.loads((cut / "history.json").read_text()) == whole.history()
    saved = json.loads((cut / "results.json").read_text())
    assert saved["selection"] == whole.result.selection
    reference = json.loads((whole.run_dir / "results.json").read_text())
    assert saved["test"] == reference["test"]


@pytest.mark.parametrize(("mode", "batches"), [("joint", {300}), ("per_domain", {200, 100})])
def test_domain_batches_decide_which_images_batchnorm_normalises_together(
    glyph_root: Path, tmp_path: Path, mode: str, batches: set[int]
) -> None:
    """joint: one backbone pass over the 200 source and 100 target images of a step;
    per_domain: one pass each, so each domain is normalised by its own batch statistics."""
    seen: set[int] = set()
    step = Adapter.train_step

    def recorded(self: Adapter, n: int) -> dict[str, float]:
        hook = self.model.backbone.register_forward_pre_hook(
            lambda module, args: seen.add(len(args[0])) if module.training else None
        )
        try:
            return step(self, n)
        finally:
            hook.remove()

    def patch(mp: pytest.MonkeyPatch) -> None:
        mp.setattr(Adapter, "train_step", recorded)

    extra = (*SMALL, f"adapt.domain_batches={mode}")
    run = adaptation(glyph_root, tmp_path, mode, "dann", *extra, patch=patch)
    assert seen == batches
    assert run.result.test[TARGET_SETTING]["dann"].mean >= 0
