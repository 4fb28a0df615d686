"""The classic transfer-learning advice, on hand-written rows whose verdicts are known."""

from __future__ import annotations

import math

import pytest

from metatl.training.evaluation import EvalResult
from metatl.transfer.advice import (
    FAMILIES,
    RULES,
    Advice,
    advise,
    advise_all,
    data_size,
    domain_similarity,
    format_advice,
    method_family,
)

pytestmark = pytest.mark.filterwarnings("error")

N = 30
L = 4
# Shared per-entry difficulty: methods move together, so paired intervals are narrow.
BASE = [0.4 + 0.05 * math.sin(i) for i in range(N)]

# (budget, gap) landing in each cell with the defaults similar_below=1.0, large_from=100.
CELLS = {
    ("small", "similar"): (5, 0.2),
    ("small", "different"): (5, 2.0),
    ("large", "similar"): (100, 0.2),
    ("large", "different"): ("all", 2.0),
}


def _result(offset: float, wobble: float = 0.0) -> EvalResult:
    """BASE + offset, with an alternating ±wobble that leaves the mean unchanged (N is even)."""
    values = [b + offset + wobble * (-1) ** i for i, b in enumerate(BASE)]
    return EvalResult.from_accuracies(values, "test set")


def _row(winner: str, winner_offset: float = 0.3) -> dict[str, EvalResult]:
    """Every family present at clearly distinct accuracies below ``winner``'s."""
    others = [
        "pixels/ncm",
        "scratch",
        "src/ncm@4",
        "src/linear@4",
        "src/ncm@1",
        "src/linear@2",
        "src/finetune@1",
        "src/finetune@3",
        "src/finetune@4",
        "src/own",
    ]
    row = {m: _result(0.01 * i) for i, m in enumerate(others) if m != winner}
    row[winner] = _result(winner_offset)
    return row


def _advise(cell: tuple[str, str], row: dict[str, EvalResult]) -> Advice:
    budget, gap = CELLS[cell]
    return advise("src", L, budget, row, gap=gap)


# --- method_family, data_size, domain_similarity -------------------------------------------


@pytest.mark.parametrize(
    ("method", "n_blocks", "family"),
    [
        ("src/linear@4", 4, "probe-top"),
        ("src/ncm@4", 4, "probe-top"),
        ("src/linear@3", 4, "probe-early"),
        ("src/ncm@1", 4, "probe-early"),
        ("src/linear@1", 1, "probe-top"),
        ("src/finetune@3", 4, "finetune-top"),
        ("src/finetune@1", 4, "finetune-top"),
        ("src/finetune@4", 4, "finetune-all"),
        ("scratch", 4, "scratch"),
        ("src/own", 4, "own"),
        ("pixels/ncm", 4, "none"),
        ("zoo/resnet/linear@2", 2, "probe-top"),
    ],
)
def test_method_family(method: str, n_blocks: int, family: str) -> None:
    assert method_family(method, n_blocks) == family
    assert family in FAMILIES


@pytest.mark.parametrize(
    "method",
    ["src/linear", "src/linear@0", "src/linear@5", "src/finetune@5", "src/knn@1", "linear@1"],
)
def test_method_family_rejects_unknown_shapes(method: str) -> None:
    with pytest.raises(ValueError, match=method):
        method_family(method, 4)


@pytest.mark.parametrize(
    ("budget", "size"),
    [(1, "small"), (99, "small"), (100, "large"), (500, "large"), ("all", "large")],
)
def test_data_size(budget: int | str, size: str) -> None:
    assert data_size(budget, 100) == size


def test_data_size_all_is_large_whatever_the_threshold() -> None:
    assert data_size("all", 10**9) == "large"


@pytest.mark.parametrize("budget", [0, -5, "some", True])
def test_data_size_rejects_bad_budgets(budget: object) -> None:
    with pytest.raises(ValueError, match="budget"):
        data_size(budget, 100)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("gap", "similarity"),
    [(0.0, "similar"), (0.999, "similar"), (1.0, "different"), (3.0, "different")],
)
def test_domain_similarity_boundary(gap: float, similarity: str) -> None:
    assert domain_similarity(gap, 1.0) == similarity


@pytest.mark.parametrize("gap", [math.nan, math.inf, -math.inf])
def test_domain_similarity_rejects_non_finite_gaps(gap: float) -> None:
    with pytest.raises(ValueError, match="finite"):
        domain_similarity(gap, 1.0)


def test_rules_cover_the_four_cells_with_known_families() -> None:
    assert set(RULES) == set(CELLS)
    assert all(f in FAMILIES for families in RULES.values() for f in families)


# --- advise: agreement, override, tie --------------------------------------------------------


@pytest.mark.parametrize(
    ("cell", "winner", "rule"),
    [
        (("small", "similar"), "src/linear@4", ("probe-top",)),
        (("small", "different"), "src/linear@2", ("probe-early",)),
        (("large", "similar"), "src/finetune@3", ("finetune-top", "finetune-all")),
        (("large", "different"), "src/finetune@4", ("finetune-all", "scratch")),
    ],
)
def test_rule_family_wins_and_agrees(cell: tuple[str, str], winner: str, rule: tuple) -> None:
    advice = _advise(cell, _row(winner))
    assert (advice.size, advice.similarity) == cell
    assert advice.rule == rule
    assert advice.best == winner
    assert advice.best_accuracy == pytest.approx(sum(BASE) / N + 0.3)
    assert advice.rule_best == winner
    assert advice.agrees
    assert "the measurement agrees" in advice.text
    assert "overrides" not in advice.text
    assert f"{winner} at {100 * advice.best_accuracy:.1f}%" in advice.text


@pytest.mark.parametrize(
    ("cell", "winner", "rule_best"),
    [
        (("small", "similar"), "src/finetune@4", "src/linear@4"),
        (("small", "different"), "src/linear@4", "src/linear@2"),
        (("large", "similar"), "src/ncm@1", "src/finetune@4"),
        (("large", "different"), "src/own", "src/finetune@4"),
    ],
)
def test_other_family_wins_clearly_and_overrides(
    cell: tuple[str, str], winner: str, rule_best: str
) -> None:
    advice = _advise(cell, _row(winner))
    assert advice.best == winner
    assert advice.rule_best == rule_best
    assert not advice.agrees
    assert f"the measurement overrides the rule: use {winner}" in advice.text
    # The runner-up in the rule sits at its _row offset; the difference is exact, interval ~0.
    gap_points = 100 * (0.3 - _row(winner)[rule_best].mean + sum(BASE) / N)
    assert f"{winner} − {rule_best} = +{gap_points:.1f} ± 0.0 points" in advice.text


def test_tie_within_the_paired_interval_agrees() -> None:
    row = _row("src/linear@4", winner_offset=0.30)
    row["src/linear@2"] = _result(0.31, wobble=0.1)  # +1 point, paired interval ±3.6 points
    advice = _advise(("small", "similar"), row)
    assert advice.best == "src/linear@2"
    assert advice.rule_best == "src/linear@4"
    assert advice.agrees
    assert "src/linear@2 − src/linear@4 = +1.0 ± 3.6 points" in advice.text
    assert "the measurement agrees" in advice.text


def test_same_difference_without_noise_is_no_tie() -> None:
    row = _row("src/linear@4", winner_offset=0.30)
    row["src/linear@2"] = _result(0.31)
    advice = _advise(("small", "similar"), row)
    assert not advice.agrees
    assert "overrides the rule: use src/linear@2" in advice.text


# --- advise: no transfer, missing methods, other sources ------------------------------------


def test_scratch_best_in_its_own_rule_agrees_but_transfer_does_not_pay() -> None:
    advice = _advise(("large", "different"), _row("scratch"))
    assert advice.best == "scratch"
    assert advice.rule_best == "scratch"
    assert advice.agrees
    assert "transfer does not pay here" in advice.text


@pytest.mark.parametrize("winner", ["scratch", "pixels/ncm"])
def test_no_transfer_best_overrides_and_does_not_pay(winner: str) -> None:
    advice = _advise(("small", "similar"), _row(winner))
    assert advice.best == winner
    assert not advice.agrees
    assert f"overrides the rule: use {winner}" in advice.text
    assert "transfer does not pay here" in advice.text


def test_transfer_that_pays_says_nothing_about_not_paying() -> None:
    advice = _advise(("small", "similar"), _row("src/linear@4"))
    assert "does not pay" not in advice.text


def test_other_sources_methods_are_not_candidates() -> None:
    row = _row("src/linear@4")
    row["other/linear@4"] = _result(0.5)
    assert _advise(("small", "similar"), row).best == "src/linear@4"


def test_row_without_the_rules_families_has_no_rule_best() -> None:
    row = {"scratch": _result(0.0), "src/linear@4": _result(0.2)}
    advice = _advise(("large", "similar"), row)
    assert advice.rule_best is None
    assert not advice.agrees
    assert "no method of the rule's families was measured" in advice.text


def test_missing_source_raises() -> None:
    row = {"scratch": _result(0.1), "pixels/ncm": _result(0.0), "other/linear@4": _result(0.2)}
    with pytest.raises(ValueError, match="no method of source 'src'.*measure the source"):
        _advise(("small", "similar"), row)


def test_text_explains_the_placement() -> None:
    advice = advise("src", L, 5, _row("src/linear@4"), gap=0.25, similar_below=0.5)
    assert "5 labelled images per class is below the 100 from which data counts as large" in (
        advice.text
    )
    assert "domain gap of 0.25 is below the similarity threshold 0.5" in advice.text
    advice = advise("src", L, "all", _row("src/finetune@4"), gap=0.5, similar_below=0.5)
    assert "the full training set counts as large data" in advice.text
    assert "gap of 0.5 is at or above the similarity threshold 0.5" in advice.text
    assert FAMILIES["finetune-all"] in advice.text


# --- advise_all and format_advice -----------------------------------------------------------


def _two_by_two() -> list[Advice]:
    rows = {
        5: {**_row("src/linear@4"), "b/linear@2": _result(0.2), "b/linear@1": _result(0.4)},
        "all": {**_row("src/finetune@4"), "b/finetune@2": _result(0.3)},
    }
    return advise_all({"src": L, "b": 2}, rows, {"b": 2.0, "src": 0.2})


def test_advise_all_orders_sources_then_budgets() -> None:
    advice = _two_by_two()
    pairs = [("src", 5), ("src", "all"), ("b", 5), ("b", "all")]
    assert [(a.source, a.budget) for a in advice] == pairs
    assert [a.agrees for a in advice] == [True, True, True, True]
    best = ["src/linear@4", "src/finetune@4", "b/linear@1", "b/finetune@2"]
    assert [a.best for a in advice] == best


def test_advise_all_needs_a_gap_per_source() -> None:
    with pytest.raises(ValueError, match="no domain gap for source.*b"):
        advise_all({"src": L, "b": 2}, {5: _row("src/linear@4")}, {"src": 0.2})


def test_format_advice_has_a_header_and_one_row_per_advice() -> None:
    advice = _two_by_two()
    text = format_advice(advice)
    lines = text.splitlines()
    header = "| source | labels/class | size | domain (gap) | rule | measured best | agrees |"
    assert lines[0] == header
    assert lines[1].startswith("| --- |")
    table = [line for line in lines if line.startswith("| ")]
    assert len(table) == 2 + len(advice)
    assert "| src | 5 | small | similar (0.2) | probe-top | src/linear@4 (" in lines[2]
    assert lines[2].endswith("| yes |")
    assert [line[2:] for line in lines if line.startswith("- ")] == [a.text for a in advice]


def test_format_advice_of_nothing_is_empty() -> None:
    assert format_advice([]) == ""
