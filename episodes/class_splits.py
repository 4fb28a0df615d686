"""Class splits into two tasks A and B for the layer-transfer study (Yosinski et al. 2014).

The study trains one network on task A and one on task B, then transfers the first n layers
of one to the other. Whether features transfer depends on how similar A and B are, so each
split here states why its two halves are similar or dissimilar. Every function is pure over
class names: it returns ``(a, b)``, two sorted (codepoint order), disjoint lists that together
hold every class.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Callable, Collection, Hashable, Mapping, Sequence

import numpy as np

from episodes.unihan import radical_of, total_strokes

__all__ = ["grouped_split", "radical_split", "random_split", "stroke_split"]

Unihan = Mapping[str, Mapping[str, str]]


def random_split(class_names: Sequence[str], seed: int) -> tuple[list[str], list[str]]:
    """A random half/half split: the study's *similar* tasks.

    Each class lands in A or B by a seeded permutation, so both halves are samples of the
    same population of classes and should need the same low- and mid-level features.

    Args:
        class_names: Distinct class names, at least two.
        seed: Seed of the permutation; the same seed and classes give the same split,
            whatever the order of ``class_names``.

    Returns:
        ``(a, b)``, sorted; ``a`` has ``len // 2`` classes, ``b`` the rest.

    Raises:
        ValueError: Fewer than two classes, or a class named twice.
    """
    names = _checked(class_names)
    order = np.random.default_rng(seed).permutation(len(names))
    half = len(names) // 2
    return sorted(names[i] for i in order[:half]), sorted(names[i] for i in order[half:])


def grouped_split(
    class_names: Sequence[str],
    group_of: Mapping[str, Hashable],
    a_groups: Collection[Hashable],
) -> tuple[list[str], list[str]]:
    """A split by a grouping of the classes: whole groups go to A, the rest to B.

    With groups that differ in what they look like (the study's man-made vs natural ImageNet
    classes) this gives *dissimilar* tasks; how dissimilar depends on the grouping.

    Args:
        class_names: Distinct class names, at least two.
        group_of: Class name -> its group (a string or an int), for every class.
        a_groups: The groups whose classes form A.

    Returns:
        ``(a, b)``, sorted.

    Raises:
        ValueError: A class has no group (the message names them), ``a_groups`` names a group
            that no class is in, either half would be empty, fewer than two classes, or a
            class named twice.
    """
    names = _checked(class_names)
    missing = [c for c in names if c not in group_of]
    if missing:
        raise ValueError(f"{len(missing)} class(es) without a group: {_listing(missing)}")
    present = {group_of[c] for c in names}
    unknown = [g for g in a_groups if g not in present]
    if unknown:
        raise ValueError(f"a_groups names group(s) no class is in: {_listing(unknown)}")
    chosen = set(a_groups)
    a = [c for c in names if group_of[c] in chosen]
    b = [c for c in names if group_of[c] not in chosen]
    if not a or not b:
        raise ValueError(
            f"a_groups {_listing(sorted(chosen, key=str))} put {len(a)} classes in A and "
            f"{len(b)} in B; both need at least one"
        )
    return a, b


def stroke_split(class_names: Sequence[str], unihan: Unihan) -> tuple[list[str], list[str]]:
    """Few-stroke characters (A) vs many-stroke characters (B): the glyph benchmark's
    *dissimilar* split.

    The threshold is the median of ``kTotalStrokes`` over the classes. Stroke count changes
    the low-level statistics that the early layers see: ink density, how many and how
    closely packed the strokes are, how much of the glyph box is empty. A network trained on
    A has seldom seen dense, many-stroke glyphs, so its features are expected to transfer
    worse to B than those of a random half (:func:`random_split`).

    No stroke count is on both sides: all classes with the median count go to the side that
    leaves the halves closer in size (to A on a tie), so the halves are only about equal.

    Args:
        class_names: Distinct characters, at least two, with at least two stroke counts
            among them.
        unihan: The Unihan data of :func:`episodes.unihan.read_unihan`.

    Returns:
        ``(a, b)``, sorted: ``a`` the characters of at most the threshold's strokes.

    Raises:
        ValueError: A class has no ``kTotalStrokes`` (the message names them), all classes
            have the same stroke count, fewer than two classes, or a class named twice.
    """
    names = _checked(class_names)
    strokes = _lookup(names, unihan, "kTotalStrokes", total_strokes)
    median = statistics.median_low(strokes.values())
    below = sum(s < median for s in strokes.values())
    above = sum(s > median for s in strokes.values())
    if below == 0 and above == 0:
        raise ValueError(f"all {len(names)} classes have {median} strokes; nothing to split")
    at = len(names) - below - above
    # the median's classes go to A (threshold = median) or to B (threshold = median - 1),
    # whichever is possible and more balanced; A on a tie
    median_in_a = above > 0 and (below == 0 or abs(below + at - above) <= abs(below - at - above))
    threshold = median if median_in_a else median - 1
    a = [c for c in names if strokes[c] <= threshold]
    b = [c for c in names if strokes[c] > threshold]
    return a, b


def radical_split(
    class_names: Sequence[str], unihan: Unihan, seed: int
) -> tuple[list[str], list[str]]:
    """Characters grouped by radical, whole radicals to A or B: a *dissimilar* split.

    The radical (``kRSUnicode``) is a recurring component (水 in 海 and 池, 木 in 林 and 松):
    with no radical shared between A and B, components that a network learns as parts on
    A never occur as that radical in B, so mid-level part detectors are less useful there
    than with :func:`random_split` (the strokes themselves are still shared: early layers
    should transfer). Which radicals go where is random (seeded); sizes are balanced to
    about half the classes by construction.

    Args:
        class_names: Distinct characters, at least two, of at least two radicals.
        unihan: The Unihan data of :func:`episodes.unihan.read_unihan`.
        seed: Seed of the radical assignment; the same seed and classes give the same split.

    Returns:
        ``(a, b)``, sorted. The sizes differ by at most the largest radical's class count.

    Raises:
        ValueError: A class has no ``kRSUnicode`` (the message names them), all classes share
            one radical, fewer than two classes, or a class named twice.
    """
    names = _checked(class_names)
    radical = _lookup(names, unihan, "kRSUnicode", radical_of)
    groups: dict[int, list[str]] = {}
    for c in names:
        groups.setdefault(radical[c], []).append(c)
    if len(groups) < 2:
        raise ValueError(f"all {len(names)} classes have radical {radical[names[0]]}")
    keys = sorted(groups)
    order = np.random.default_rng(seed).permutation(len(keys))
    sides: dict[int, int] = {}  # radical -> 0 (A) or 1 (B)
    size = [0, 0]
    for i in order:  # seeded order, each radical to the smaller side
        side = 0 if size[0] <= size[1] else 1
        sides[keys[i]] = side
        size[side] += len(groups[keys[i]])
    while True:  # move one radical from the larger side while that improves the balance
        big = 0 if size[0] > size[1] else 1
        gap = size[big] - size[1 - big]
        best = min(
            (k for k in keys if sides[k] == big and 0 < len(groups[k]) < gap),
            key=lambda k: (abs(gap - 2 * len(groups[k])), k),
            default=None,
        )
        if best is None:  # moving g classes leaves a gap |gap - 2g|: better iff 0 < g < gap
            break
        sides[best] = 1 - big
        size[big] -= len(groups[best])
        size[1 - big] += len(groups[best])
    a = [c for c in names if sides[radical[c]] == 0]
    b = [c for c in names if sides[radical[c]] == 1]
    return a, b


def _checked(class_names: Sequence[str]) -> list[str]:
    """The class names sorted, after checking there are two or more, each named once."""
    if isinstance(class_names, str):
        raise TypeError("class_names must be a sequence of names, not one string")
    names = sorted(class_names)
    repeated = sorted({c for c, d in itertools.pairwise(names) if c == d})
    if repeated:
        raise ValueError(f"class(es) named more than once: {_listing(repeated)}")
    if len(names) < 2:
        raise ValueError(f"need at least two classes to split, got {len(names)}")
    return names


def _lookup(
    names: list[str], unihan: Unihan, field: str, get: Callable[[str, Unihan], int]
) -> dict[str, int]:
    """``get(char, unihan)`` for every name; ValueError naming those without ``field``."""
    missing = [c for c in names if field not in unihan.get(c, {})]
    if missing:
        raise ValueError(
            f"{len(missing)} class(es) have no {field} in the Unihan data: {_listing(missing)}"
        )
    return {c: get(c, unihan) for c in names}


def _listing(items: Sequence[object], limit: int = 10) -> str:
    """``items`` for a message: the first ``limit`` reprs (with codepoints), then a count."""
    shown = []
    for item in items[:limit]:
        if isinstance(item, str) and len(item) == 1:
            shown.append(f"{item!r} (U+{ord(item):04X})")
        else:
            shown.append(repr(item))
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(shown) + more
