"""Comparing source models on one episode set per budget, against not transferring."""

from __future__ import annotations

import math

import pytest
import torch

from metatl.algorithms import FineTune, LinearProbe, ProtoNet
from metatl.backbones import create_backbone
from metatl.config import CompareConfig, FineTuneConfig, LinearProbeConfig
from metatl.training.evaluation import EvalResult, paired_difference
from metatl.transfer.compare import (
    PIXELS,
    SCRATCH,
    Comparison,
    compare_sources,
    finetune_depths,
    source_learners,
)
from metatl.transfer.features import sample_images
from metatl.transfer.scores import kendall_tau
from metatl.transfer.sources import Source, load_source
from tests.conftest import make_pattern_images

FAST_FINETUNE = FineTuneConfig(steps=3, head_iters=10)


def _blind_conv4() -> torch.nn.Module:
    blind = create_backbone("conv4", in_channels=1, image_size=28)
    with torch.no_grad():  # every feature 0: ties everywhere, accuracy exactly 1/way
        for parameter in blind.parameters():
            parameter.zero_()
    return blind


def test_every_block_of_every_source_is_paired_with_no_transfer_and_harm_is_flagged() -> None:
    torch.manual_seed(0)
    data = make_pattern_images(10, 12, seed=5)
    random_init = create_backbone("conv4", in_channels=1, image_size=28)
    settings = CompareConfig(shots=[1, 5], episodes=20, query=4, finetune=False, scratch="")
    comparison = compare_sources({"random": random_init, "blind": _blind_conv4()}, data, settings)
    for shot in (1, 5):
        row = comparison.results[shot]
        assert len(row) == 1 + 2 * 4 * 2  # pixels, 2 sources x 4 blocks x ncm/linear
        assert len({r.episode_set for r in row.values()}) == 1  # one episode set: paired
        assert row[PIXELS].mean > 0.9  # raw pixels separate these patterns
        assert row["blind/ncm@4"].mean == pytest.approx(0.2)
        assert comparison.paired(shot)["random/ncm@2"] == paired_difference(
            row["random/ncm@2"], row[PIXELS]
        )
    harmed = {(n.method, n.budget) for n in comparison.negative_transfer()}
    assert {(f"blind/ncm@{k}", s) for k in range(1, 5) for s in (1, 5)} <= harmed
    assert all(n.difference + n.ci95 < 0 for n in comparison.negative_transfer())
    assert {n.reference for n in comparison.negative_transfer()} == {PIXELS}  # no scratch here
    assert not any(m == PIXELS for m, _ in harmed)

    assert [s["block"] for s in comparison.scores["random"]] == [1, 2, 3, 4]
    best = {s: comparison.best(s, 5)[1].mean for s in ("random", "blind")}
    assert best["random"] > best["blind"]
    logme = [comparison.scores[s][-1]["logme"] for s in ("random", "blind")]
    assert comparison.rank_correlation("logme", 5, kind="") == kendall_tau(
        logme, [best["random"], best["blind"]]
    )


def test_finetuning_scratch_and_the_checkpoints_own_adaptation_share_the_episodes() -> None:
    torch.manual_seed(1)
    data = make_pattern_images(8, 10, seed=2)
    backbone = create_backbone("conv4", in_channels=1, image_size=28)
    source = Source("meta", "meta", backbone, learner=ProtoNet(backbone))
    settings = CompareConfig(shots=[2], episodes=6, query=3, finetune_blocks=[1, 9])
    comparison = compare_sources([source], data, settings, finetune=FAST_FINETUNE)
    row = comparison.results[2]
    expected = {PIXELS, SCRATCH, "meta/own", "meta/finetune@1", "meta/finetune@4"}
    expected |= {f"meta/{p}@{k}" for p in ("ncm", "linear") for k in range(1, 5)}
    assert set(row) == expected  # N=9 of a 4-block backbone is full fine-tuning, N=4
    assert len({r.episode_set for r in row.values()}) == 1
    # The own adaptation of a ProtoNet is nearest class mean on its last block.
    assert row["meta/own"].accuracies == row["meta/ncm@4"].accuracies
    paired = comparison.paired(2, SCRATCH)
    assert SCRATCH not in paired and set(paired) == expected - {SCRATCH}


def test_source_learners_build_what_the_settings_ask_for() -> None:
    backbone = create_backbone("conv4", in_channels=1, image_size=28)
    source = Source("s", "s", backbone)
    settings = CompareConfig(probes=["linear"], finetune_blocks=[2])
    learners = source_learners(source, settings, FAST_FINETUNE, LinearProbeConfig())
    assert sorted(learners) == ["s/finetune@2", *(f"s/linear@{k}" for k in range(1, 5))]
    assert isinstance(learners["s/linear@3"], LinearProbe)
    tuned = learners["s/finetune@2"]
    assert isinstance(tuned, FineTune) and tuned.n_blocks == 2 and tuned.steps == 3
    assert finetune_depths(4) == [1, 2, 3, 4]
    assert finetune_depths(9, [1, 2, 1000]) == [1, 2, 9]
    assert finetune_depths(4, [4, 5]) == [4]


def _result(values: list[float]) -> EvalResult:
    return EvalResult.from_accuracies(values, "set")


def test_rank_correlation_orients_each_score_and_skips_sources_without_it() -> None:
    rows = [
        {"block": 1, "dim": 2, "logme": 0.0, "h_score": 0.0, "gap": g, "mmd": math.nan}
        for g in (0.1, 0.5, 2.0)
    ]
    results = {
        5: {
            "a/finetune@1": _result([0.9, 0.9]),
            "b/finetune@1": _result([0.7, 0.7]),
            "c/finetune@1": _result([0.5, 0.5]),
        }
    }
    scores = {"a": [rows[0]], "b": [rows[1]], "c": [rows[2]]}
    overall = {
        "a": {"leep": -1.0, "nce": math.nan},
        "b": {"leep": -2.0, "nce": math.nan},
        "c": {"leep": math.nan, "nce": math.nan},
    }
    comparison = Comparison(results, scores, overall, {"a": 1, "b": 1, "c": 1})
    assert comparison.rank_correlation("gap", 5) == pytest.approx(1.0)  # small gap: best
    assert comparison.rank_correlation("leep", 5) == pytest.approx(1.0)  # c left out
    assert math.isnan(comparison.rank_correlation("nce", 5))  # nobody has it
    assert math.isnan(comparison.rank_correlation("mmd", 5))
    assert math.isnan(comparison.rank_correlation("logme", 5))  # every source scores 0
    with pytest.raises(KeyError, match="no own of a"):
        comparison.best("a", 5, "own")


def test_score_samples_are_class_balanced_and_seeded() -> None:
    data = make_pattern_images(50, 20, seed=0)
    sample = sample_images(data, 300, seed=3)
    counts = torch.bincount(sample.labels, minlength=50)
    assert len(sample) == 300 and set(counts[counts > 0].tolist()) == {10}
    assert torch.equal(sample.images, sample_images(data, 300, seed=3).images)
    assert not torch.equal(sample.labels, sample_images(data, 300, seed=4).labels)
    assert sample_images(data, 5000, seed=0) is data


def test_clashing_source_names_are_refused() -> None:
    backbone = create_backbone("conv4", in_channels=1, image_size=28)
    data = make_pattern_images(6, 6)
    with pytest.raises(ValueError, match="two sources are named 'x'"):
        compare_sources([Source("x", "x", backbone), Source("x", "y", backbone)], data)
    with pytest.raises(ValueError, match="must not contain"):
        compare_sources({"scratch": backbone}, data)


def test_a_random_source_fine_tuned_whole_is_the_scratch_reference() -> None:
    """Same architecture, seed and recipe: conv4@random's full fine-tuning is scratch, even
    when compare.input_size enlarges the pretrained sources."""
    data = make_pattern_images(6, 8, seed=3)
    source = load_source("rnd=conv4@random", in_channels=1, image_size=28, input_size=56)
    assert source.backbone.input_spec.size == 28
    settings = CompareConfig(shots=[2], episodes=4, query=3, probes=["ncm"], finetune_blocks=[4])
    row = compare_sources([source], data, settings, finetune=FAST_FINETUNE).results[2]
    assert row["rnd/finetune@4"].accuracies == row[SCRATCH].accuracies


def test_the_report_names_the_blocks_that_fall_short() -> None:
    from metatl.reports.compare import negative_transfer_lines

    good, bad = _result([0.9] * 4 + [0.8] * 4), _result([0.3] * 4 + [0.2] * 4)
    row = {
        SCRATCH: good,
        PIXELS: _result([0.5] * 4 + [0.4] * 4),
        "s/linear@1": bad,
        "s/linear@2": good,
        "s/own": bad,
    }
    comparison = Comparison({5: row}, {"s": []}, {}, {"s": 2})
    lines = negative_transfer_lines(comparison).splitlines()
    assert "| s | linear | 5 | 1 | 1 |" in lines
    assert "| s | own | 5 | yes | yes |" in lines
    assert len(lines) == 4  # header, rule, two rows: linear@2 beats both references
