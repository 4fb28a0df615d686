"""The kanji domain-shift benchmark, printed -> brush and handwritten, from a built glyph benchmark.

The glyph benchmark (:mod:`episodes.glyphs`) draws every character in 20 font designs; each
design is printed type or writing (:data:`GLYPH_DESIGNS`). The domain split keeps the classes
and splits the designs:

- source = the 10 printed designs: mincho (noto-serif, ipaex, hanazono, dejima, oradano),
  gothic (noto-sans, bizud), rounded (maruberi), pixel (misaki) and one outlined display
  gothic (train-one);
- target = the 10 written designs: brush kaisho (arphic-ukai, cns-kai, lxgw-wenkai), brush
  gyōsho (kouzan-gyosho, aoyagi-soseki), brush sōsho (kouzan-sosho) and pen, pencil and marker
  handwriting (seto, kiloji, klee, yusei-magic).

Classes: ``n_classes`` (default 100: a many-class problem that still trains in minutes on a
CPU) characters of the glyph benchmark's ``train`` split, drawn with ``seed`` and kept in
codepoint order. Each class has one image per design, so 10 printed and 10 written images.

Splits (:data:`KANJI_DOMAIN_SPLITS`):

- ``source_train`` / ``source_val``: the printed images, each class's split 8 / 2 (seeded,
  :meth:`~episodes.LabelledImages.hold_out`), so validation is on the source distribution;
- ``target_train`` / ``target_test``: the written images, each class's split 5 / 5 (seeded):
  the adaptation images (take them through :func:`episodes.load_domain_shift`, which withholds
  their labels) and the scoring images;
- ``target_fewshot``: the written images of the glyph benchmark's ``test`` split (new classes,
  disjoint from the ones above), for few-shot episodes in the target domain after adaptation.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from episodes.data import LabelledImages
from episodes.datasets.glyphs import load_glyphs, read_glyph_manifest

__all__ = [
    "GLYPH_DESIGNS",
    "KANJI_DOMAIN_SPLITS",
    "Domain",
    "UnknownDesignError",
    "design_domains",
    "kanji_domain_classes",
    "load_kanji_domains",
    "select_designs",
]

Domain = Literal["printed", "written"]

# slug -> (style, domain), for the 20 default designs of episodes.glyphs.
GLYPH_DESIGNS: dict[str, tuple[str, Domain]] = {
    "noto-sans": ("gothic", "printed"),
    "noto-serif": ("mincho", "printed"),
    "ipaex-mincho": ("mincho", "printed"),
    "bizud-gothic": ("gothic", "printed"),
    "maruberi": ("rounded", "printed"),
    "hanazono-mincho": ("mincho", "printed"),
    "dejima-mincho": ("mincho", "printed"),
    "oradano-mincho": ("mincho", "printed"),
    "train-one": ("display", "printed"),
    "misaki-gothic": ("pixel", "printed"),
    "arphic-ukai": ("kaisho", "written"),
    "cns-kai": ("kaisho", "written"),
    "lxgw-wenkai": ("kaisho", "written"),
    "kouzan-gyosho": ("gyosho", "written"),
    "aoyagi-soseki": ("gyosho", "written"),
    "kouzan-sosho": ("sosho", "written"),
    "seto": ("handwriting", "written"),
    "kiloji": ("handwriting", "written"),
    "klee": ("handwriting", "written"),
    "yusei-magic": ("handwriting", "written"),
}

KANJI_DOMAIN_SPLITS = (
    "source_train",
    "source_val",
    "target_train",
    "target_test",
    "target_fewshot",
)


class UnknownDesignError(ValueError):
    """A font of the glyph benchmark has no domain (not in :data:`GLYPH_DESIGNS`)."""


def design_domains(
    manifest: dict[str, Any], designs: dict[str, tuple[str, Domain]] | None = None
) -> dict[str, Domain]:
    """The domain of each font of a glyph benchmark, by slug, in manifest order.

    Args:
        manifest: The glyph benchmark's manifest (:func:`read_glyph_manifest`).
        designs: slug -> ``(style, domain)``; default :data:`GLYPH_DESIGNS`.

    Raises:
        UnknownDesignError: A font is not in ``designs`` (the message names it).
    """
    designs = GLYPH_DESIGNS if designs is None else designs
    slugs = [f.get("slug") for f in manifest["fonts"]]
    unknown = [s for s in slugs if s not in designs]
    if unknown:
        raise UnknownDesignError(
            f"the glyph benchmark's fonts {unknown} have no domain; pass designs= mapping each "
            "slug to (style, 'printed' | 'written')"
        )
    return {s: designs[s][1] for s in slugs}


def select_designs(data: LabelledImages, n_fonts: int, fonts: Sequence[int]) -> LabelledImages:
    """The images of some fonts of a glyph split (image ``i`` is class ``i // n_fonts``, font
    ``i % n_fonts``), class by class, fonts in the order given.

    Args:
        data: A split as :func:`~episodes.datasets.load_glyphs` returns it.
        n_fonts: Fonts of the benchmark.
        fonts: Indices of the fonts to keep.

    Returns:
        ``LabelledImages`` with ``len(fonts)`` images per class, same classes and labels.
    """
    if len(data) % n_fonts:
        raise ValueError(f"{data.name}: {len(data)} images is not a multiple of {n_fonts} fonts")
    rows = torch.arange(len(data) // n_fonts).repeat_interleave(len(fonts)) * n_fonts
    index = rows + torch.tensor(list(fonts), dtype=torch.long).repeat(len(data) // n_fonts)
    return LabelledImages(data.images[index], data.labels[index], data.class_names, data.name)


def kanji_domain_classes(
    manifest: dict[str, Any], n_classes: int = 100, seed: int = 0
) -> list[str]:
    """``n_classes`` characters of the glyph benchmark's ``train`` split (a permutation
    seeded with ``seed``), in codepoint order.

    Raises:
        ValueError: ``n_classes`` is not in ``1 .. len(train split)``.
    """
    train = sorted(manifest["splits"]["train"])
    if not 1 <= n_classes <= len(train):
        raise ValueError(f"n_classes must lie in 1..{len(train)}, got {n_classes}")
    order = np.random.default_rng(seed).permutation(len(train))[:n_classes]
    return sorted(train[i] for i in order)


def load_kanji_domains(
    root: str | os.PathLike[str],
    split: str,
    image_size: int | None = None,
    *,
    n_classes: int = 100,
    seed: int = 0,
    designs: dict[str, tuple[str, Domain]] | None = None,
) -> LabelledImages:
    """One split of the kanji domain-shift benchmark (see the module docstring).

    Args:
        root: A glyph benchmark (``python -m episodes.glyphs --out ROOT``).
        split: One of :data:`KANJI_DOMAIN_SPLITS`.
        image_size: Resize to ``image_size x image_size``; ``None`` keeps the built size.
        n_classes: Classes drawn from the glyph ``train`` split.
        seed: Seed of the classes and of the per-class image splits.
        designs: slug -> ``(style, domain)``; default :data:`GLYPH_DESIGNS`.

    Returns:
        ``LabelledImages``, uint8 ``[N, 1, S, S]`` (dark ink on white), classes the
        characters in codepoint order, named ``"kanji_domains/<split>"``. ``source_*`` and
        ``target_train`` / ``target_test`` share their ``n_classes`` classes.

    Raises:
        ValueError: Unknown ``split``, bad ``n_classes``.
        UnknownDesignError: A font of the benchmark has no domain.
        FileNotFoundError, DatasetFormatError: From :func:`~episodes.datasets.load_glyphs`.
    """
    if split not in KANJI_DOMAIN_SPLITS:
        raise ValueError(f"unknown split {split!r}; splits: {', '.join(KANJI_DOMAIN_SPLITS)}")
    manifest = read_glyph_manifest(Path(root))
    domains = list(design_domains(manifest, designs).values())
    domain: Domain = "printed" if split.startswith("source") else "written"
    fonts = [i for i, d in enumerate(domains) if d == domain]
    name = f"kanji_domains/{split}"
    if split == "target_fewshot":
        test = load_glyphs(root, "test", image_size=image_size)
        data = select_designs(test, len(domains), fonts)
        return LabelledImages(data.images, data.labels, data.class_names, name)
    train = load_glyphs(root, "train")
    index = {c: i for i, c in enumerate(train.class_names)}
    classes = [index[c] for c in kanji_domain_classes(manifest, n_classes, seed)]
    chosen = _classes_of(train, classes, len(domains))
    data = select_designs(chosen, len(domains), fonts)
    if image_size is not None:
        data = data.resized(image_size)
    fraction = 0.2 if domain == "printed" else 0.5
    kept, held = data.hold_out(fraction, seed)
    part = held if split in ("source_val", "target_test") else kept
    return LabelledImages(part.images, part.labels, part.class_names, name)


def _classes_of(data: LabelledImages, classes: list[int], n_fonts: int) -> LabelledImages:
    """``select_classes`` for a class-major glyph split, reading only the chosen rows."""
    rows = torch.tensor(classes, dtype=torch.long).repeat_interleave(n_fonts) * n_fonts
    index = rows + torch.arange(n_fonts).repeat(len(classes))
    return LabelledImages(
        data.images[index],
        torch.arange(len(classes)).repeat_interleave(n_fonts),
        tuple(data.class_names[c] for c in classes),
        data.name,
    )
