"""The classic transfer-learning advice, checked against what was measured.

The guidance of CS231n and Yosinski et al. 2014 places a target task on two axes, the amount of
labelled data and the similarity of its domain to the source's, and recommends a family of
methods per cell:

=====================  ===========================================  ============================
                       similar domain                               different domain
=====================  ===========================================  ============================
small data             linear classifier on the top block           linear classifier on an
                                                                    earlier block
large data             fine-tune the top blocks or all              fine-tune all, or train from
                                                                    scratch
=====================  ===========================================  ============================

:func:`advise` takes one label budget's row of ``python -m metatl.transfer compare`` (method
name -> :class:`~metatl.training.evaluation.EvalResult`), places it on both axes, finds the
measured best method and the best within the rule's families, and says whether the measurement
agrees with the rule. The measurement wins: when the best method lies outside the rule's families
and beats the rule's best by more than the paired 95% interval, the advice recommends it.

Method names of a row: ``pixels/ncm`` (no transfer), ``scratch``, and per source
``<source>/ncm@k``, ``<source>/linear@k`` (block ``k`` of ``L``), ``<source>/finetune@N`` (top
``N`` blocks) and ``<source>/own`` (the checkpoint's meta-learned adaptation).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from metatl.training.evaluation import EvalResult, paired_difference

__all__ = [
    "FAMILIES",
    "RULES",
    "Advice",
    "Similarity",
    "Size",
    "advise",
    "advise_all",
    "data_size",
    "domain_similarity",
    "format_advice",
    "method_family",
]

Size = Literal["small", "large"]
Similarity = Literal["similar", "different"]

FAMILIES: dict[str, str] = {
    "probe-top": "a linear classifier (or nearest class mean) on the last block's frozen features",
    "probe-early": "a linear classifier (or nearest class mean) on an earlier block's features",
    "finetune-top": "fine-tuning the top blocks with a new head",
    "finetune-all": "fine-tuning the whole network with a new head",
    "scratch": "training a network from scratch on the target labels",
    "own": "the checkpoint's own meta-learned adaptation",
    "none": "no transfer (nearest class mean on raw pixels)",
}
"""Family key -> human description."""

RULES: dict[tuple[str, str], tuple[str, ...]] = {
    ("small", "similar"): ("probe-top",),
    ("small", "different"): ("probe-early",),
    ("large", "similar"): ("finetune-top", "finetune-all"),
    ("large", "different"): ("finetune-all", "scratch"),
}
"""``(size, similarity)`` -> the families the classic rule recommends."""

NO_TRANSFER = ("scratch", "pixels/ncm")
"""Baselines that use nothing of a source; they compete with every source."""

_BLOCK_METHOD = re.compile(r"^(?P<source>.+)/(?P<kind>linear|ncm|finetune)@(?P<k>\d+)$")
_OWN_METHOD = re.compile(r"^.+/own$")


def method_family(method: str, n_blocks: int) -> str:
    """The :data:`FAMILIES` key of a method name.

    Args:
        method: A method name of a comparison row (see the module docstring).
        n_blocks: ``L``, the number of blocks of the method's source.

    Returns:
        ``probe-top`` for a probe on block ``L``, ``probe-early`` on a block ``k < L``,
        ``finetune-top`` for ``finetune@N`` with ``N < L``, ``finetune-all`` for ``N == L``,
        ``scratch``, ``own`` or ``none`` (``pixels/ncm``).

    Raises:
        ValueError: For a name of no known shape, or a block outside ``1..n_blocks``.
    """
    if n_blocks < 1:
        raise ValueError(f"n_blocks must be at least 1, got {n_blocks}")
    if method == "scratch":
        return "scratch"
    if method == "pixels/ncm":
        return "none"
    if _OWN_METHOD.match(method):
        return "own"
    match = _BLOCK_METHOD.match(method)
    if match is None:
        raise ValueError(
            f"unknown method name '{method}': expected 'scratch', 'pixels/ncm', '<source>/own' "
            "or '<source>/{linear,ncm,finetune}@<block>'"
        )
    k = int(match["k"])
    if not 1 <= k <= n_blocks:
        raise ValueError(f"method '{method}' names block {k}, outside 1..{n_blocks} of its source")
    top = k == n_blocks
    if match["kind"] == "finetune":
        return "finetune-all" if top else "finetune-top"
    return "probe-top" if top else "probe-early"


def data_size(budget: int | str, large_from: int) -> Size:
    """``large`` for the full training set (``"all"``) or ``budget >= large_from``, else ``small``.

    Args:
        budget: Labelled images per class, or ``"all"``.
        large_from: The smallest budget that counts as large data.

    Raises:
        ValueError: For a budget that is neither a positive int nor ``"all"``.
    """
    if budget == "all":
        return "large"
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ValueError(f"budget must be a positive int or 'all', got {budget!r}")
    return "large" if budget >= large_from else "small"


def domain_similarity(gap: float, similar_below: float) -> Similarity:
    """``similar`` when ``gap < similar_below``, else ``different``.

    Args:
        gap: The source–target gap of the last block's feature statistics (larger = more
            different); see :mod:`metatl.transfer.statistics_gap`.
        similar_below: The threshold below which domains count as similar.

    Raises:
        ValueError: If ``gap`` is NaN or infinite.
    """
    if not math.isfinite(gap):
        raise ValueError(f"domain gap must be finite, got {gap}; check the features it came from")
    return "similar" if gap < similar_below else "different"


@dataclass(frozen=True)
class Advice:
    """The classic advice for one source at one label budget, and what the measurement says.

    Attributes:
        source: The source model's name.
        budget: Labelled images per class, or ``"all"``.
        size: ``small`` or ``large`` (see :func:`data_size`).
        similarity: ``similar`` or ``different`` (see :func:`domain_similarity`).
        gap: The source–target gap of the last block's feature statistics; see
            :mod:`metatl.transfer.statistics_gap`.
        rule: The families the classic rule recommends (keys of :data:`FAMILIES`).
        best: The measured best method among the source's methods, ``scratch`` and
            ``pixels/ncm``.
        best_accuracy: Its mean accuracy, in ``[0, 1]``.
        rule_best: The best method within the rule's families, or None if none was measured.
        agrees: ``rule_best`` is ``best``, or ties with it (the paired 95% interval of
            ``best − rule_best`` includes 0).
        text: One paragraph explaining the placement, the rule and the verdict.
    """

    source: str
    budget: int | str
    size: Size
    similarity: Similarity
    gap: float
    rule: tuple[str, ...]
    best: str
    best_accuracy: float
    rule_best: str | None
    agrees: bool
    text: str


def advise(
    source: str,
    n_blocks: int,
    budget: int | str,
    row: Mapping[str, EvalResult],
    *,
    gap: float,
    similar_below: float = 0.25,
    large_from: int = 100,
) -> Advice:
    """The classic advice for ``source`` at ``budget``, checked against the measured ``row``.

    Candidates are the row's methods of ``source`` (``<source>/...``) plus ``scratch`` and
    ``pixels/ncm``; the best is the one of highest mean accuracy (the first in row order on
    equal means).

    Args:
        source: The source model's name, the prefix of its methods.
        n_blocks: ``L``, the number of blocks of the source.
        budget: Labelled images per class, or ``"all"``.
        row: Method name -> result at this budget, aligned across methods.
        gap: The source–target gap of the last block's feature statistics (larger = more
            different); see :mod:`metatl.transfer.statistics_gap`.
        similar_below: Gaps below this count as a similar domain.
        large_from: Budgets from this many labels per class on count as large data.

    Raises:
        ValueError: If the row has no method of ``source``, a method name has an unknown
            shape, or the gap is not finite.
    """
    size = data_size(budget, large_from)
    similarity = domain_similarity(gap, similar_below)
    rule = RULES[(size, similarity)]
    candidates = _candidates(source, n_blocks, budget, row)
    best = _best(candidates, row)
    in_rule = {m: r for m, r in candidates.items() if r in rule}
    rule_best = _best(in_rule, row) if in_rule else None
    difference = None if rule_best is None else paired_difference(row[best], row[rule_best])
    agrees = rule_best == best or (difference is not None and _ties(*difference))
    place = _placement(budget, size, similarity, gap, similar_below, large_from)
    measured = _measurement(best, rule_best, row, difference)
    text = f"{source}: {place} {_rule_sentence(size, similarity, rule)} {measured} "
    text += _verdict(source, best, agrees)
    return Advice(
        source, budget, size, similarity, gap, rule, best, row[best].mean, rule_best, agrees, text
    )


def advise_all(
    sources: Mapping[str, int],
    rows: Mapping[int | str, Mapping[str, EvalResult]],
    gaps: Mapping[str, float],
    *,
    similar_below: float = 0.25,
    large_from: int = 100,
) -> list[Advice]:
    """:func:`advise` for every source and budget.

    Args:
        sources: Source name -> its number of blocks ``L``.
        rows: Budget -> method -> result, as measured by ``python -m metatl.transfer compare``.
        gaps: Source name -> its source–target gap (see :func:`advise`).
        similar_below: See :func:`advise`.
        large_from: See :func:`advise`.

    Returns:
        One :class:`Advice` per (source, budget): sources in the order given, budgets in the
        order of ``rows``.

    Raises:
        ValueError: If a source has no gap, or as :func:`advise`.
    """
    missing = [s for s in sources if s not in gaps]
    if missing:
        raise ValueError(
            f"no domain gap for source(s) {', '.join(missing)}; pass one per source in gaps"
        )
    return [
        advise(
            source,
            n_blocks,
            budget,
            row,
            gap=gaps[source],
            similar_below=similar_below,
            large_from=large_from,
        )
        for source, n_blocks in sources.items()
        for budget, row in rows.items()
    ]


def format_advice(advice: Sequence[Advice]) -> str:
    """Markdown: a table with one row per advice, then the paragraphs as a bullet list.

    Columns: source, labels/class, size, domain (gap), rule, measured best (accuracy in %),
    agrees. Empty for no advice.
    """
    if not advice:
        return ""
    lines = [
        "| source | labels/class | size | domain (gap) | rule | measured best | agrees |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for a in advice:
        cells = [
            a.source,
            str(a.budget),
            a.size,
            f"{a.similarity} ({a.gap:.3g})",
            ", ".join(a.rule),
            f"{a.best} ({100 * a.best_accuracy:.1f}%)",
            "yes" if a.agrees else "no",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    bullets = [f"- {a.text}" for a in advice]
    return "\n".join([*lines, "", *bullets])


# ---- helpers -------------------------------------------------------------------------------


def _candidates(
    source: str, n_blocks: int, budget: int | str, row: Mapping[str, EvalResult]
) -> dict[str, str]:
    """Candidate method -> family, in row order; raises when the source has no method."""
    own = [m for m in row if m.startswith(f"{source}/")]
    if not own:
        present = ", ".join(row) or "none"
        raise ValueError(
            f"the row of budget {budget!r} has no method of source '{source}' (methods present: "
            f"{present}); measure the source at this budget or leave it out of the advice"
        )
    names = [m for m in row if m in own or m in NO_TRANSFER]
    return {m: method_family(m, n_blocks) for m in names}


def _best(methods: Mapping[str, str], row: Mapping[str, EvalResult]) -> str:
    """The method of highest mean accuracy; the first in order on equal means."""
    return max(methods, key=lambda m: row[m].mean)


def _ties(mean: float, ci: float) -> bool:
    """Whether the paired interval of ``best − rule_best`` reaches 0.

    An undefined interval (one entry) ties only on equal accuracy.
    """
    return mean - (0.0 if math.isnan(ci) else ci) <= 0.0


def _placement(
    budget: int | str,
    size: Size,
    similarity: Similarity,
    gap: float,
    similar_below: float,
    large_from: int,
) -> str:
    """The sentence placing the data on both axes, with the reason for each."""
    if budget == "all":
        amount = "the full training set counts as large data"
    else:
        relation = "at least" if size == "large" else "below"
        images = "image" if budget == 1 else "images"
        amount = (
            f"{budget} labelled {images} per class is {relation} the {large_from} from which "
            "data counts as large"
        )
    side = "below" if similarity == "similar" else "at or above"
    domain = f"a domain gap of {gap:.3g} is {side} the similarity threshold {similar_below:.3g}"
    return f"{amount}, and {domain}, so the data is {size} and the domain {similarity}."


def _rule_sentence(size: Size, similarity: Similarity, rule: tuple[str, ...]) -> str:
    """What the classic rule recommends for this cell."""
    families = " or ".join(f"{FAMILIES[f]} ({f})" for f in rule)
    return f"For {size} data and a {similarity} domain the classic rule recommends {families}."


def _measurement(
    best: str,
    rule_best: str | None,
    row: Mapping[str, EvalResult],
    difference: tuple[float, float] | None,
) -> str:
    """What was measured: the best method, the rule's best and the paired difference."""
    text = f"Measured best: {best} at {100 * row[best].mean:.1f}%"
    if rule_best is None:
        return text + "; no method of the rule's families was measured."
    if rule_best == best:
        return text + ", itself in the rule's families."
    assert difference is not None
    mean, ci = difference
    half = "n/a" if math.isnan(ci) else f"{100 * ci:.1f}"
    return (
        f"{text}; best within the rule: {rule_best} at {100 * row[rule_best].mean:.1f}%, "
        f"{best} − {rule_best} = {100 * mean:+.1f} ± {half} points (paired 95% interval)."
    )


def _verdict(source: str, best: str, agrees: bool) -> str:
    """The conclusion: agreement or override, and whether transfer from the source pays."""
    if agrees:
        verdict = "Verdict: the measurement agrees with the rule"
    else:
        verdict = f"Verdict: the measurement overrides the rule: use {best}"
    if best in NO_TRANSFER:
        verdict += f"; transfer does not pay here, as {best} uses nothing of {source}"
    return verdict + "."
