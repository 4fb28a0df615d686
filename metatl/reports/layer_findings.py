"""The numbers of a layer-transfer study: Yosinski et al. (2014), "How transferable are
features in deep neural networks?".

A study trains, for each class split and seed, networks of ``L`` transferable blocks on two
class subsets A and B and records one JSON object per finished run::

    {"split": "random", "seed": 0, "treatment": "AnB", "n": 2, "accuracy": 0.78,
     "ci95": 0.011, "test_images": 5600, ...}

``treatment`` is ``baseA`` or ``baseB`` (``n = 0``, trained from scratch on A or B) or, for
``n = 1 .. L-1``, ``BnB`` / ``AnB`` (the first ``n`` blocks copied from baseB / baseA and
frozen, the rest re-initialised and trained on B), ``BnB+`` / ``AnB+`` (the same, everything
fine-tuned) or ``random`` (the first ``n`` blocks random and frozen). Accuracy is on held-out
images of B (of A for baseA); ``ci95`` is the run's binomial 95% half-width.

This module summarises the runs over seeds (:func:`summarise`) and judges the paper's
findings by explicit rules (:func:`findings`); :mod:`metatl.reports.layers` draws and writes
them. A partial study is summarised from what is there.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from metatl.functional import t_confidence_interval

if TYPE_CHECKING:
    pass

__all__ = [
    "BASES",
    "TRANSFERRED",
    "TREATMENTS",
    "Cell",
    "Finding",
    "findings",
    "missing_runs",
    "split_kind",
    "split_order",
    "study_blocks",
    "summarise",
]

TREATMENTS = ("baseA", "baseB", "BnB", "BnB+", "AnB", "AnB+", "random")
"""Every treatment, in the order of the tables."""
TRANSFERRED = ("BnB", "BnB+", "AnB", "AnB+", "random")
"""The treatments with ``n >= 1`` blocks transferred (or random)."""
BASES = ("baseA", "baseB")

Verdict = Literal["held", "not held", "inconclusive"]

_KINDS = ("similar", "dissimilar")
_log = logging.getLogger(__name__)
_REQUIRED = ("split", "seed", "treatment", "n", "accuracy")


@dataclass(frozen=True)
class _Run:
    accuracy: float
    ci95: float  # the run's binomial 95% half-width; NaN if unknown


_Key = tuple[str, str, int]  # split, treatment, n
_Runs = dict[_Key, dict[int, _Run]]  # ... -> seed -> run


@dataclass(frozen=True)
class _Contrast:
    """Mean of ``x - y`` over paired seeds, its t-interval and the pooled binomial one."""

    mean: float
    ci95: float
    binomial_ci95: float
    seeds: int

    @property
    def error(self) -> float:
        return self.ci95 if math.isfinite(self.ci95) else self.binomial_ci95


_NO_CONTRAST = _Contrast(math.nan, math.nan, math.nan, 0)


@dataclass(frozen=True)
class Cell:
    """One (split, treatment, n) of a study, summarised over its seeds.

    Attributes:
        split: Class split (e.g. ``"random"``).
        treatment: One of :data:`TREATMENTS`.
        n: Blocks transferred (0 for the bases).
        mean: Mean accuracy over seeds.
        ci95: Half-width of the 95% Student-t interval of ``mean`` over seeds; NaN for
            one seed.
        seeds: Number of seeds.
        binomial_ci95: The runs' binomial half-widths pooled for the mean,
            ``sqrt(sum c_i^2) / k`` (NaN if a run has none).
        delta: Mean over seeds of (accuracy - baseB accuracy of the same split and seed);
            NaN without baseB, and for baseA (measured on another task).
        delta_ci95: Student-t half-width of ``delta`` over the paired seeds (NaN for one).
        delta_binomial_ci95: ``sqrt(sum (c_i^2 + c_baseB,i^2)) / k`` over the paired seeds.
        paired_seeds: Seeds with both this treatment and baseB.
        accuracies: The per-seed accuracies, by seed.
    """

    split: str
    treatment: str
    n: int
    mean: float
    ci95: float
    seeds: int
    binomial_ci95: float
    delta: float
    delta_ci95: float
    delta_binomial_ci95: float
    paired_seeds: int
    accuracies: tuple[float, ...]

    @property
    def error(self) -> float:
        """The interval the report uses: ``ci95``, or ``binomial_ci95`` when it is NaN."""
        return self.ci95 if math.isfinite(self.ci95) else self.binomial_ci95

    @property
    def delta_error(self) -> float:
        """``delta_ci95``, or ``delta_binomial_ci95`` when it is NaN."""
        return self.delta_ci95 if math.isfinite(self.delta_ci95) else self.delta_binomial_ci95


@dataclass(frozen=True)
class Finding:
    """One of the paper's findings, judged on a study.

    Attributes:
        key: Short identifier (``"generality"``, ``"co_adaptation"``, ...).
        claim: The paper's claim in words.
        verdict: ``"held"``, ``"not held"`` or ``"inconclusive"``.
        evidence: The numbers behind the verdict, in a sentence.
    """

    key: str
    claim: str
    verdict: Verdict
    evidence: str


# ---------------------------------------------------------------------------------- statistics


def _paired(x: Mapping[int, _Run], y: Mapping[int, _Run]) -> _Contrast | None:
    """``x - y`` over the seeds both have; ``None`` if they share none."""
    seeds = sorted(x.keys() & y.keys())
    if not seeds:
        return None
    mean, ci = t_confidence_interval([x[s].accuracy - y[s].accuracy for s in seeds])
    pooled = math.sqrt(math.fsum(x[s].ci95 ** 2 + y[s].ci95 ** 2 for s in seeds)) / len(seeds)
    return _Contrast(mean, ci, pooled, len(seeds))


def _sign(c: _Contrast) -> int:
    """-1 (+1) if the 95% CI of ``c`` lies wholly below (above) 0, else 0 (also without CI)."""
    if not math.isfinite(c.error) or not math.isfinite(c.mean):
        return 0
    return -1 if c.mean + c.error < 0 else 1 if c.mean - c.error > 0 else 0


# ------------------------------------------------------------------------------------- records


def _run_ci(record: Mapping[str, Any]) -> float:
    ci = record.get("ci95")
    if isinstance(ci, int | float) and not isinstance(ci, bool) and math.isfinite(ci):
        return float(ci)
    images = record.get("test_images")
    if isinstance(images, int) and not isinstance(images, bool) and images > 0:
        p = float(record["accuracy"])
        return 1.96 * math.sqrt(max(p * (1 - p), 0.0) / images)
    return math.nan


def _index(records: Iterable[Mapping[str, Any]]) -> _Runs:
    runs: _Runs = {}
    for record in records:
        lacking = [k for k in _REQUIRED if k not in record]
        if lacking:
            raise ValueError(f"layer-transfer record lacks {', '.join(lacking)}: {dict(record)}")
        key = (str(record["split"]), str(record["treatment"]), int(record["n"]))
        seed, by_seed = int(record["seed"]), runs.setdefault(key, {})
        if seed in by_seed:
            split, treatment, n = key
            _log.warning(
                "two records of %s/seed%d/%s n=%d; the later is kept", split, seed, treatment, n
            )
        by_seed[seed] = _Run(float(record["accuracy"]), _run_ci(record))
    return runs


def _treatment_rank(treatment: str) -> int:
    return TREATMENTS.index(treatment) if treatment in TREATMENTS else len(TREATMENTS)


def summarise(records: Iterable[Mapping[str, Any]]) -> list[Cell]:
    """One :class:`Cell` per (split, treatment, n), over the seeds recorded.

    Args:
        records: The study's run records (see the module docstring). A run recorded twice
            keeps its later record (a warning is logged).

    Returns:
        The cells, by split (first seen first), treatment (as :data:`TREATMENTS`) and n.

    Raises:
        ValueError: If a record lacks ``split``, ``seed``, ``treatment``, ``n`` or
            ``accuracy``.
    """
    runs = _index(records)
    splits = list(dict.fromkeys(split for split, _, _ in runs))
    keys = sorted(runs, key=lambda k: (splits.index(k[0]), _treatment_rank(k[1]), k[1], k[2]))
    return [_cell(key, runs[key], runs.get((key[0], "baseB", 0))) for key in keys]


def _cell(key: _Key, runs: Mapping[int, _Run], base: Mapping[int, _Run] | None) -> Cell:
    split, treatment, n = key
    seeds = sorted(runs)
    accuracies = tuple(runs[s].accuracy for s in seeds)
    mean, ci = t_confidence_interval(accuracies)
    pooled = math.sqrt(math.fsum(runs[s].ci95 ** 2 for s in seeds)) / len(seeds)
    if treatment == "baseB":
        delta = _Contrast(0.0, 0.0, 0.0, len(seeds))
    elif treatment == "baseA" or base is None:
        delta = _NO_CONTRAST
    else:
        delta = _paired(runs, base) or _NO_CONTRAST
    return Cell(
        split=split,
        treatment=treatment,
        n=n,
        mean=mean,
        ci95=ci,
        seeds=len(seeds),
        binomial_ci95=pooled,
        delta=delta.mean,
        delta_ci95=delta.ci95,
        delta_binomial_ci95=delta.binomial_ci95,
        paired_seeds=delta.seeds,
        accuracies=accuracies,
    )


def study_blocks(meta: Mapping[str, Any], ns: Iterable[int]) -> int:
    """L: ``meta["blocks"]``, else one more than the largest n run."""
    blocks = meta.get("blocks")
    return int(blocks) if isinstance(blocks, int) else max([0, *ns]) + 1


def split_kind(meta: Mapping[str, Any], split: str) -> str:
    """``similar``, ``dissimilar`` or ``""`` (not stated in ``meta``)."""
    info = (meta.get("splits") or {}).get(split) or {}
    return str(info.get("kind", "")) if isinstance(info, Mapping) else ""


def split_order(meta: Mapping[str, Any], present: Iterable[str]) -> list[str]:
    """The splits run, in the order ``meta`` lists them, unknown ones last."""
    present = list(dict.fromkeys(present))
    return [s for s in (meta.get("splits") or {}) if s in present] + [
        s for s in present if s not in (meta.get("splits") or {})
    ]


def missing_runs(records: Iterable[Mapping[str, Any]], meta: Mapping[str, Any]) -> list[str]:
    """The runs the study meant to make (``meta`` splits x seeds x treatments x n_values)
    that have no record, as ``"random/seed1/AnB n=3"`` (``"random/seed1/baseB"``).

    Args:
        records: The study's run records.
        meta: The study's ``meta``; without ``splits`` or ``seeds`` nothing is expected.

    Returns:
        The missing runs, in the order of ``meta``.
    """
    have = {(str(r["split"]), int(r["seed"]), str(r["treatment"]), int(r["n"])) for r in records}
    n_values = meta.get("n_values") or range(1, study_blocks(meta, (n for *_, n in have)))
    expected = [
        (split, int(seed), treatment, n)
        for split in meta.get("splits") or {}
        for seed in meta.get("seeds") or ()
        for treatment in meta.get("treatments") or TREATMENTS
        for n in ((0,) if treatment in BASES else n_values)
    ]
    return [
        f"{s}/seed{k}/{t}" + ("" if t in BASES else f" n={n}")
        for s, k, t, n in expected
        if (s, k, t, n) not in have
    ]


# ------------------------------------------------------------------------------------ findings


@dataclass(frozen=True)
class _Study:
    runs: _Runs
    top: int  # L - 1, the largest n
    similar: str | None
    dissimilar: str | None
    reference: str | None  # the split findings b, c and f are judged on

    def get(self, split: str, treatment: str, n: int) -> dict[int, _Run]:
        return self.runs.get((split, treatment, n), {})

    def between(self, split: str, x: tuple[str, int], y: tuple[str, int]) -> _Contrast | None:
        return _paired(self.get(split, *x), self.get(split, *y))

    def ns(self, split: str, treatment: str) -> list[int]:
        return sorted(n for s, t, n in self.runs if s == split and t == treatment)


def _study(records: Iterable[Mapping[str, Any]], meta: Mapping[str, Any]) -> _Study:
    runs = _index(records)
    splits = split_order(meta, (s for s, _, _ in runs))
    of_kind = {k: next((s for s in splits if split_kind(meta, s) == k), None) for k in _KINDS}
    reference = of_kind["similar"] or (splits[0] if splits else None)
    top = study_blocks(meta, (n for _, _, n in runs)) - 1
    return _Study(runs, top, of_kind["similar"], of_kind["dissimilar"], reference)


def _pm(c: _Contrast) -> str:
    error = f"{100 * c.error:.2f}" if math.isfinite(c.error) else "n/a"
    return f"{100 * c.mean:+.2f} ± {error}"


def _how(contrasts: Iterable[_Contrast]) -> str:
    """How the intervals of ``contrasts`` were made, e.g. ``(points; 95% CI: Student t over
    seeds; 3 seeds)``."""
    cs = list(contrasts)
    seeds = sorted({c.seeds for c in cs})
    count = f"{seeds[0]}-{seeds[-1]}" if len(seeds) > 1 else str(seeds[0])
    t, binomial = (any(math.isfinite(c.ci95) == f for c in cs) for f in (True, False))
    kind = (
        "Student t over seeds, pooled binomial where one seed"
        if t and binomial
        else "Student t over seeds"
        if t
        else "pooled binomial of the runs"
    )
    return f"(points; 95% CI: {kind}; {count} seed{'s' * (seeds[-1] != 1)})"


def _by_sign(sign: int, below: Verdict, above: Verdict) -> Verdict:
    return below if sign < 0 else above if sign > 0 else "inconclusive"


_CLAIMS = {
    "generality": "Features become less general with depth: on similar tasks, AnB with the "
    "top n = L-1 blocks transferred is worse than AnB with only the first block.",
    "co_adaptation": "Fragile co-adaptation: BnB with the middle blocks frozen is worse than "
    "baseB and than BnB at both ends (n = 1 and n = L-1).",
    "fine_tuning": "Fine-tuning recovers self-transfer: BnB+ matches baseB at every n.",
    "transfer_boost": "Transfer then fine-tuning generalises at least as well as training "
    "from scratch: AnB+ is never below baseB and above it at some n.",
    "dissimilar": "Features transfer worse between dissimilar tasks: the AnB drop at the "
    "top n is larger on the dissimilar split than on the similar one.",
    "random": "Random frozen blocks are worst: at every n, random is below every "
    "transferred treatment (BnB, BnB+, AnB, AnB+).",
}


def _finding(key: str, verdict: Verdict, evidence: str) -> Finding:
    return Finding(key, _CLAIMS[key], verdict, evidence)


def findings(records: Iterable[Mapping[str, Any]], meta: Mapping[str, Any]) -> list[Finding]:
    """The paper's findings, each judged on the study by a fixed rule.

    Every comparison is a difference ``x - y`` of mean accuracies over the seeds both
    treatments have (paired by seed), with a 95% Student-t interval over those seeds; with
    one seed (t-interval NaN) the runs' binomial half-widths are pooled instead,
    ``sqrt(sum(c_x^2 + c_y^2)) / k``. ``x`` is *below* ``y`` beyond CIs when the whole
    interval is below 0 (``mean + ci < 0``), *above* when it is wholly above 0; otherwise
    (or with no interval at all) the comparison is undecided. Differences to baseB are the
    cells' ``delta``. "The similar split" is the first split of ``meta["splits"]`` of kind
    ``"similar"`` with runs; b, c and f are judged on it, or on the first split with runs
    if none is similar.

    a. generality: AnB(n=L-1) - AnB(n=1) on the similar split: below -> held, above -> not
       held, else inconclusive (also without a similar split or with L < 3).
    b. co_adaptation: for each middle n (1 < n < L-1; none when L-1 < 3 -> inconclusive),
       BnB(n) against baseB, BnB(1) and BnB(L-1). Held if at some middle n it is below all
       three; not held if every middle n was run and at each one it is above at least one
       of them; else inconclusive.
    c. fine_tuning: the BnB+ deltas. Not held if any is decided (either way), held if every
       interval includes 0, inconclusive without BnB+ or when an interval is missing.
    d. transfer_boost: the AnB+ deltas on the similar split. Not held if any is below 0;
       else held if any is above 0; else inconclusive.
    e. dissimilar: at the largest n with AnB on both the similar and the dissimilar split,
       delta(dissimilar) - delta(similar), whose half-width is the two deltas' combined in
       quadrature: below -> held, above -> not held, else (or without both kinds)
       inconclusive.
    f. random: at each n where random was run, random - T for every other transferred
       treatment T run there. Not held if any is above 0; held if all are below 0 (at
       every such n, each with at least one T); else inconclusive.

    Args:
        records: The study's run records.
        meta: The study's ``meta`` (``blocks``, ``splits`` with their ``kind``).

    Returns:
        The six findings, in the order above.
    """
    study = _study(records, meta)
    rules = (_generality, _co_adaptation, _fine_tuning, _transfer_boost, _dissimilar, _random)
    return [rule(study) for rule in rules]


def _generality(study: _Study) -> Finding:
    split, top = study.similar, study.top
    if split is None:
        return _finding("generality", "inconclusive", "No split of kind 'similar' was run.")
    if top < 2:
        return _finding("generality", "inconclusive", f"L = {top + 1} blocks: n=1 is the top.")
    c = study.between(split, ("AnB", top), ("AnB", 1))
    if c is None:
        evidence = f"AnB at n=1 and n={top} were not both run (on a common seed) on '{split}'."
        return _finding("generality", "inconclusive", evidence)
    evidence = f"On '{split}', AnB at n={top} minus AnB at n=1: {_pm(c)} {_how([c])}."
    return _finding("generality", _by_sign(_sign(c), "held", "not held"), evidence)


def _co_adaptation(study: _Study) -> Finding:
    split, top = study.reference, study.top
    middle = list(range(2, top))
    if split is None or not middle:
        reason = (
            "No split was run."
            if split is None
            else (f"L-1 = {top} < 3: there is no middle n (1 < n < L-1) where a dip could show.")
        )
        return _finding("co_adaptation", "inconclusive", reason)
    judged: dict[int, tuple[list[_Contrast], list[str], list[int]]] = {}
    for n in middle:
        refs = (("baseB", ("baseB", 0)), ("BnB n=1", ("BnB", 1)), (f"BnB n={top}", ("BnB", top)))
        pairs = [(name, study.between(split, ("BnB", n), ref)) for name, ref in refs]
        present = [(name, c) for name, c in pairs if c is not None]
        if present:
            judged[n] = (
                [c for _, c in present],
                [name for name, _ in present],
                [_sign(c) for _, c in present] + [0] * (3 - len(present)),
            )
    dips = [n for n, (*_, signs) in judged.items() if all(s < 0 for s in signs)]
    rises = [n for n, (*_, signs) in judged.items() if any(s > 0 for s in signs)]
    if not judged:
        return _finding("co_adaptation", "inconclusive", f"No BnB at a middle n on '{split}'.")
    shown = dips[:1] or list(judged)
    evidence = f"On '{split}', " + "; ".join(
        f"BnB at n={n} minus "
        + ", ".join(f"{name} {_pm(c)}" for c, name in zip(*judged[n][:2], strict=True))
        for n in shown
    )
    evidence += " " + _how(c for n in shown for c in judged[n][0])
    if dips:
        return _finding("co_adaptation", "held", evidence + ".")
    verdict: Verdict = "not held" if len(rises) == len(middle) else "inconclusive"
    return _finding("co_adaptation", verdict, evidence + ".")


def _deltas(study: _Study, split: str, treatment: str) -> list[tuple[int, _Contrast]]:
    pairs = [
        (n, study.between(split, (treatment, n), ("baseB", 0))) for n in study.ns(split, treatment)
    ]
    return [(n, c) for n, c in pairs if c is not None]


def _list_deltas(split: str, treatment: str, deltas: list[tuple[int, _Contrast]]) -> str:
    parts = [f"n={n}: {_pm(c)}" for n, c in deltas]
    how = _how(c for _, c in deltas)
    return f"On '{split}', {treatment} minus baseB at " + "; ".join(parts) + f" {how}."


def _fine_tuning(study: _Study) -> Finding:
    split = study.reference
    deltas = _deltas(study, split, "BnB+") if split else []
    if not deltas:
        return _finding("fine_tuning", "inconclusive", "BnB+ and baseB were not both run.")
    evidence = _list_deltas(split or "", "BnB+", deltas)
    if any(_sign(c) != 0 for _, c in deltas):
        return _finding("fine_tuning", "not held", evidence)
    undecidable = any(not math.isfinite(c.error) for _, c in deltas)
    return _finding("fine_tuning", "inconclusive" if undecidable else "held", evidence)


def _transfer_boost(study: _Study) -> Finding:
    split = study.similar
    deltas = _deltas(study, split, "AnB+") if split else []
    if not deltas:
        evidence = "No split of kind 'similar' has both AnB+ and baseB runs."
        return _finding("transfer_boost", "inconclusive", evidence)
    signs = [_sign(c) for _, c in deltas]
    verdict: Verdict = "not held" if -1 in signs else "held" if 1 in signs else "inconclusive"
    return _finding("transfer_boost", verdict, _list_deltas(split or "", "AnB+", deltas))


def _dissimilar(study: _Study) -> Finding:
    similar, dissimilar = study.similar, study.dissimilar
    if similar is None or dissimilar is None:
        evidence = f"Needs a similar and a dissimilar split; ran similar={similar}, " + (
            f"dissimilar={dissimilar}."
        )
        return _finding("dissimilar", "inconclusive", evidence)
    common = set(study.ns(similar, "AnB")) & set(study.ns(dissimilar, "AnB"))
    drops = {
        split: study.between(split, ("AnB", max(common)), ("baseB", 0)) if common else None
        for split in (similar, dissimilar)
    }
    if drops[similar] is None or drops[dissimilar] is None:
        evidence = "AnB at a common n and baseB were not run on both splits."
        return _finding("dissimilar", "inconclusive", evidence)
    ds, ss, n = drops[dissimilar], drops[similar], max(common)
    diff = _Contrast(
        ds.mean - ss.mean, math.hypot(ds.error, ss.error), math.nan, min(ds.seeds, ss.seeds)
    )
    evidence = (
        f"AnB minus baseB at n={n}: {_pm(ds)} on '{dissimilar}', {_pm(ss)} on '{similar}'; "
        f"difference {_pm(diff)} {_how([ds, ss])[:-1]}; "
        "the difference's half-width: both combined in quadrature)."
    )
    return _finding("dissimilar", _by_sign(_sign(diff), "held", "not held"), evidence)


def _random(study: _Study) -> Finding:
    split = study.reference or ""
    ns = study.ns(split, "random")
    if not ns:
        return _finding("random", "inconclusive", "No run with random frozen blocks.")
    signs, closest = [], []
    for n in ns:
        pairs = [(t, study.between(split, ("random", n), (t, n))) for t in TRANSFERRED[:-1]]
        present = [(t, c) for t, c in pairs if c is not None]
        signs.append([_sign(c) for _, c in present] or [0])
        if present:  # the comparison nearest to undoing the claim: the highest upper bound
            closest.append((n, *max(present, key=lambda tc: _upper(tc[1]))))
    if any(1 in s for s in signs):
        verdict: Verdict = "not held"
    else:
        verdict = "held" if all(x < 0 for s in signs for x in s) else "inconclusive"
    if not closest:
        return _finding("random", verdict, f"On '{split}', no other treatment shares n and seed.")
    parts = [f"n={n}: {_pm(c)} (vs {t})" for n, t, c in closest]
    evidence = f"On '{split}', random minus its closest rival at " + "; ".join(parts)
    return _finding("random", verdict, f"{evidence} {_how(c for *_, c in closest)}.")


def _upper(c: _Contrast) -> float:
    return c.mean + c.error if math.isfinite(c.error) else math.inf
