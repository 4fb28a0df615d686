"""Comparing source models block by block on one episode set, against no transfer."""

from __future__ import annotations

import pytest
import torch

from metatl.backbones import create_backbone
from metatl.training.evaluation import paired_difference
from metatl.transfer.compare import BASELINE, compare_sources
from metatl.transfer.scores import kendall_tau
from tests.conftest import make_pattern_images


def test_every_block_of_every_source_is_paired_with_no_transfer_and_harm_is_flagged() -> None:
    torch.manual_seed(0)
    data = make_pattern_images(10, 12, seed=5)
    random_init = create_backbone("conv4", in_channels=1, image_size=28)
    blind = create_backbone("conv4", in_channels=1, image_size=28)
    with torch.no_grad():  # every feature 0: ties everywhere, accuracy exactly 1/way
        for parameter in blind.parameters():
            parameter.zero_()
    comparison = compare_sources(
        {"random": random_init, "blind": blind}, data, shots=(1, 5), episodes=20, query=4
    )
    for shot in (1, 5):
        row = comparison.results[shot]
        assert len(row) == 1 + 2 * 4 * 2  # baseline, 2 sources x 4 blocks x ncm/linear
        assert len({r.episode_set for r in row.values()}) == 1  # one episode set: paired
        assert row[BASELINE].mean > 0.9  # raw pixels separate these patterns
        assert row["blind/ncm@4"].mean == pytest.approx(0.2)
        assert comparison.paired(shot)["random/ncm@2"] == paired_difference(
            row["random/ncm@2"], row[BASELINE]
        )
    harmed = {(n.method, n.shot) for n in comparison.negative_transfer()}
    assert {(f"blind/ncm@{k}", s) for k in range(1, 5) for s in (1, 5)} <= harmed
    assert all(n.difference + n.ci95 < 0 for n in comparison.negative_transfer())
    assert not any(m.startswith(BASELINE) for m, _ in harmed)

    assert [s["block"] for s in comparison.scores["random"]] == [1, 2, 3, 4]
    best = {s: comparison.best(s, 5)[1].mean for s in ("random", "blind")}
    assert best["random"] > best["blind"]
    logme = [comparison.scores[s][-1]["logme"] for s in ("random", "blind")]
    assert comparison.rank_correlation("logme", 5) == kendall_tau(
        logme, [best["random"], best["blind"]]
    )
