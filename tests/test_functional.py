"""Shared maths against closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from metatl.functional import (
    accuracy,
    cosine_similarity_matrix,
    mean_confidence_interval,
    prototypes,
    squared_euclidean_distance,
)


def test_prototypes_are_class_means_even_with_unequal_shots() -> None:
    feats = torch.tensor([[1.0, 0.0], [3.0, 2.0], [10.0, 10.0], [0.0, 4.0], [2.0, 2.0]])
    labels = torch.tensor([0, 0, 1, 0, 2])
    protos = prototypes(feats, labels, 3)
    assert torch.allclose(protos, torch.tensor([[4 / 3, 2.0], [10.0, 10.0], [2.0, 2.0]]))


def test_squared_euclidean_matches_cdist() -> None:
    gen = torch.Generator().manual_seed(0)
    x, y = (
        torch.randn(7, 5, generator=gen, dtype=torch.float64),
        torch.randn(3, 5, generator=gen, dtype=torch.float64),
    )
    assert torch.allclose(squared_euclidean_distance(x, y), torch.cdist(x, y).pow(2), atol=1e-12)
    assert squared_euclidean_distance(x, x).diagonal().abs().max() < 1e-12


def test_cosine_matrix() -> None:
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    y = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    expected = torch.tensor([[1.0, 1 / math.sqrt(2)], [0.0, 1 / math.sqrt(2)], [0.0, 0.0]])
    assert torch.allclose(cosine_similarity_matrix(x, y), expected, atol=1e-6)


def test_accuracy() -> None:
    logits = torch.tensor([[2.0, 1.0], [0.0, 1.0], [5.0, -1.0], [0.0, 3.0]])
    assert accuracy(logits, torch.tensor([0, 1, 1, 0])).item() == pytest.approx(0.5)


def test_confidence_interval_is_1_96_sample_std_over_sqrt_n() -> None:
    values = [0.5, 0.7, 0.9, 1.0]
    mean, ci = mean_confidence_interval(values)
    std = math.sqrt(sum((v - 0.775) ** 2 for v in values) / 3)
    assert mean == pytest.approx(0.775) and ci == pytest.approx(1.96 * std / 2)
    with pytest.raises(ValueError):
        mean_confidence_interval([])


def test_one_value_has_an_undefined_interval_not_zero() -> None:
    mean, ci = mean_confidence_interval([0.3])
    assert mean == pytest.approx(0.3) and math.isnan(ci)
    assert mean_confidence_interval([0.3, 0.3]) == (pytest.approx(0.3), 0.0)  # defined: no spread
