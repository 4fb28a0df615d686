"""Build the digits benchmark: render every font, keep the real digit designs, split, write.

Which fonts are kept, in order (each dropped font is listed in the manifest with its reason):

1. ``unreadable``: fontTools or FreeType cannot read the face; ``missing``: it does not map
   all of ``0123456789``;
2. ``blank``: a digit draws no ink;
3. ``indistinct``: two of its digits look the same (mean absolute difference of the clean
   images below :data:`SAME_DESIGN` grey levels), as in fonts that draw a box for each digit;
4. ``duplicate``: its ten clean digits are those of a font kept earlier (the same outlines
   under another name: Liberation and Arimo, the faces of one CJK collection);
5. ``unrecognised`` (only with ``min_recognised > 0``): fewer than ``min_recognised`` of its
   clean digits get their own label from a 5-nearest-neighbour vote of the other kept fonts'
   clean digits (cosine similarity of 14x14 images). This drops dingbat faces that map the
   digit keys to stars, cubes or frames; the vote is taken once, among the fonts that passed
   1-4, so it depends on the set of fonts built.

The kept fonts' families (typographic family names, so the weights of a family stay together)
are shuffled with ``seed``; the first ``round(val_fraction * families)`` make ``source_val``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch

from episodes._publish import publish_build
from episodes.datasets._decode import DatasetFormatError
from episodes.datasets.digits import DIGITS_FORMAT, DIGITS_SPLITS, read_digits_manifest
from episodes.digits.fonts import DIGITS, font_family, owning_packages, package_fonts
from episodes.digits.render import (
    DEFAULT_AUGMENTATION,
    DEFAULT_MARGIN,
    RENDER_SCALE,
    RENDERER_VERSION,
    Augmentation,
    render_digits,
)
from episodes.digits.target import TARGET_SIZE, load_sklearn_digits, sklearn_digits_source
from episodes.glyphs.build import BuildExistsError
from episodes.glyphs.fonts import FontSpec, check_installed, resolve_face

__all__ = ["BUILDER_VERSION", "SAME_DESIGN", "build_digits_benchmark", "split_families"]

log = logging.getLogger(__name__)

BUILDER_VERSION = 1
SAME_DESIGN = 1.0  # mean absolute grey-level difference under which two renderings are one
_NEIGHBOURS = 5


def build_digits_benchmark(
    out_dir: str | os.PathLike[str],
    fonts: Sequence[FontSpec] | None = None,
    *,
    copies: int = 8,
    margin: int = DEFAULT_MARGIN,
    seed: int = 0,
    val_fraction: float = 0.2,
    target_test_fraction: float = 0.5,
    min_recognised: int = 3,
    augmentation: Augmentation = DEFAULT_AUGMENTATION,
    workers: int = 2,
    force: bool = False,
) -> dict[str, Any]:
    """Render the source digits, convert the target digits, write the benchmark to ``out_dir``.

    Args:
        out_dir: Output directory: created if missing; an empty directory is used; an
            earlier digits build is replaced only with ``force``; anything else is refused.
        fonts: Candidate faces; default every face of :data:`DIGIT_FONT_PACKAGES`
            (:func:`~episodes.digits.package_fonts`). A face without ``package`` gets the
            Debian package that owns its file, where ``dpkg-query -S`` knows one.
        copies: Augmented images per (font, digit).
        margin: Blank pixels at each end of a clean digit's longest ink side (28x28 images).
        seed: Seed of the augmentation, the font split and the target split.
        val_fraction: Share of the font families held out as ``source_val``.
        target_test_fraction: Share of each digit's target images held out as
            ``target_test``; the rest are ``target_train``.
        min_recognised: See step 5 of the module docstring; 0 keeps every font that passes
            steps 1-4 (for builds from a handful of fonts).
        augmentation: Ranges of the random transforms.
        workers: Rendering processes (one font per task); <= 1 renders in this process.
        force: Replace an earlier build (swapped in only once the new one is complete).

    Returns:
        The manifest (also written to ``out_dir/manifest.json``).

    Raises:
        MissingFontError: A font file or package is missing (names the packages).
        BuildExistsError: ``out_dir`` holds a build and ``force`` is off, or anything else.
        ValueError: Bad options, or fewer than two font families kept.
    """
    out = Path(out_dir)
    fonts = tuple(package_fonts() if fonts is None else fonts)
    owners = owning_packages(f.path for f in fonts if f.package is None and f.path.is_file())
    fonts = tuple(f if f.package else replace(f, package=owners.get(f.path)) for f in fonts)
    slugs = [f.slug for f in fonts]
    if not fonts or len(set(slugs)) != len(slugs):
        raise ValueError(f"need at least one font and unique slugs, got {slugs[:20]}")
    if copies < 1 or not 0 <= 2 * margin < TARGET_SIZE:
        raise ValueError(f"need copies >= 1 and 0 <= margin < 14, got {copies=} {margin=}")
    if not 0 < val_fraction < 1 or not 0 < target_test_fraction < 1:
        raise ValueError(f"fractions must lie in (0, 1): {val_fraction=} {target_test_fraction=}")
    if not 0 <= min_recognised <= len(DIGITS):
        raise ValueError(f"min_recognised must lie in 0..10, got {min_recognised}")
    _check_output(out, force)
    for spec in fonts:
        check_installed(spec)
    options = {
        "copies": copies,
        "margin": margin,
        "seed": seed,
        "val_fraction": val_fraction,
        "target_test_fraction": target_test_fraction,
        "min_recognised": min_recognised,
    }
    return publish_build(
        out,
        lambda: _check_output(out, force),
        lambda tmp: _build(tmp, fonts, options, augmentation, workers),
    )


def split_families(families: Sequence[str], val_fraction: float, seed: int) -> set[str]:
    """The families held out for validation: ``round(val_fraction * n)`` of the sorted
    distinct ``families`` (at least one, at most ``n - 1``) by a permutation seeded with
    ``seed``.

    Raises:
        ValueError: Fewer than two distinct families.
    """
    names = sorted(set(families))
    if len(names) < 2:
        raise ValueError(f"need at least two font families to split, got {names}")
    take = min(max(round(val_fraction * len(names)), 1), len(names) - 1)
    order = np.random.default_rng(seed).permutation(len(names))
    return {names[i] for i in order[:take]}


def _check_output(out: Path, force: bool) -> None:
    """Refuse ``out`` unless it is missing, empty, or (with ``force``) an earlier build."""
    if out.is_symlink():
        raise BuildExistsError(f"{out} is a symbolic link; refusing to replace it")
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    try:
        read_digits_manifest(out)
        is_build = True
    except (OSError, DatasetFormatError):
        is_build = False
    if is_build and force:
        return
    if is_build:
        raise BuildExistsError(f"{out} already holds a digits benchmark; pass --force to rebuild")
    raise BuildExistsError(
        f"{out} is a file or a non-empty directory that holds no digits benchmark; refusing "
        "to replace it: choose a new or empty --out directory"
    )


def _render_job(
    spec: FontSpec, copies: int, margin: int, seed: int, augmentation: Augmentation
) -> dict[str, Any]:
    """Worker: read one face (family, hash, digit coverage) and render its digits."""
    from fontTools.ttLib import TTFont, TTLibError

    info: dict[str, Any] = {"sha256": hashlib.sha256(spec.path.read_bytes()).hexdigest()}
    try:
        index = resolve_face(spec)[0]
        info["face_index"] = index
        info["family"] = font_family(FontSpec(spec.slug, spec.path, index))
        cmap = TTFont(spec.path, fontNumber=index, lazy=True).getBestCmap() or {}
        unmapped = [d for d in DIGITS if ord(d) not in cmap]
        if unmapped:
            return info | {"drop": ("missing", f"does not map {''.join(unmapped)}")}
        clean, augmented = render_digits(
            spec, copies, TARGET_SIZE, margin, seed, augmentation, face_index=index
        )
    except (TTLibError, ValueError, OSError, KeyError, AssertionError) as error:
        return info | {"drop": ("unreadable", f"{type(error).__name__}: {error}")}
    return info | {"clean": clean, "augmented": augmented}


def _render_all(
    fonts: tuple[FontSpec, ...], options: dict[str, Any], augmentation: Augmentation, workers: int
) -> list[dict[str, Any]]:
    args = [(f, options["copies"], options["margin"], options["seed"], augmentation) for f in fonts]
    if workers <= 1:
        return [_render_job(*a) for a in args]
    context = get_context("spawn")  # not fork: the parent may run torch's threads
    with ProcessPoolExecutor(min(workers, len(fonts)), context) as pool:
        return list(pool.map(_render_job, *zip(*args, strict=True), chunksize=4))


def _mean_abs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(np.int16) - b.astype(np.int16)).mean(axis=(-2, -1))


def _filter(
    fonts: tuple[FontSpec, ...], results: list[dict[str, Any]], min_recognised: int
) -> tuple[list[int], dict[int, tuple[str, str]]]:
    """Steps 1-5 of the module docstring: indices of the kept fonts, reasons for the rest."""
    dropped: dict[int, tuple[str, str]] = {}
    kept: list[int] = []
    for i, result in enumerate(results):
        if "drop" in result:
            dropped[i] = result["drop"]
            continue
        clean = result["clean"]
        if (clean == 255).all(axis=(1, 2)).any():
            blank = [d for d in range(10) if (clean[d] == 255).all()]
            dropped[i] = ("blank", f"digits {blank} draw no ink")
            continue
        pairs = _mean_abs(clean[:, None], clean[None, :]) + np.eye(10) * 1e9
        if pairs.min() < SAME_DESIGN:
            a, b = np.unravel_index(pairs.argmin(), pairs.shape)
            dropped[i] = ("indistinct", f"digits {a} and {b} look the same")
            continue
        same = [j for j in kept if _mean_abs(results[j]["clean"], clean).mean() < SAME_DESIGN]
        if same:
            dropped[i] = ("duplicate", f"draws the digits of {fonts[same[0]].slug}")
            continue
        kept.append(i)
    if min_recognised and len(kept) > _NEIGHBOURS:
        recognised = _recognised(np.stack([results[i]["clean"] for i in kept]))
        for i, count in zip(list(kept), recognised.tolist(), strict=True):
            if count < min_recognised:
                dropped[i] = ("unrecognised", f"{count} of 10 digits recognised by the others")
                kept.remove(i)
    for i in sorted(dropped):
        log.info("dropping font %s: %s (%s)", fonts[i].slug, *dropped[i])
    return kept, dropped


def _recognised(clean: np.ndarray) -> np.ndarray:
    """Per font, how many of its clean digits ``[F, 10, S, S]`` the other fonts' clean digits
    label right by a 5-nearest-neighbour vote (cosine similarity of 2x2-pooled ink)."""
    n_fonts = clean.shape[0]
    ink = torch.from_numpy(255 - clean.reshape(n_fonts * 10, 1, *clean.shape[2:])).double()
    x = torch.nn.functional.avg_pool2d(ink, 2).flatten(1)
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-9)
    font = torch.arange(n_fonts).repeat_interleave(10)
    label = torch.arange(10).repeat(n_fonts)
    similarity = (x @ x.T).masked_fill(font[:, None] == font[None, :], -2.0)
    neighbours = similarity.topk(_NEIGHBOURS, dim=1).indices
    votes = torch.nn.functional.one_hot(label[neighbours], 10).sum(1)
    right = votes.argmax(1) == label
    return right.reshape(n_fonts, 10).sum(1).numpy()


def _build(
    tmp: Path,
    fonts: tuple[FontSpec, ...],
    options: dict[str, Any],
    augmentation: Augmentation,
    workers: int,
) -> dict[str, Any]:
    start = time.perf_counter()
    results = _render_all(fonts, options, augmentation, workers)
    kept, dropped = _filter(fonts, results, options["min_recognised"])
    families = [results[i]["family"] for i in kept]
    val_families = split_families(families, options["val_fraction"], options["seed"])
    arrays: dict[str, dict[str, np.ndarray]] = {}
    entries = []
    for part in ("source_train", "source_val"):
        members = [
            (n, i)
            for n, i in enumerate(kept)
            if (results[i]["family"] in val_families) == (part == "source_val")
        ]
        stack = np.stack([results[i]["augmented"] for _, i in members])  # [F, 10, K, S, S]
        n_fonts, _, k, size, _ = stack.shape
        arrays[part] = {
            "images": stack.reshape(-1, 1, size, size),
            "labels": np.tile(np.repeat(np.arange(10, dtype=np.int64), k), n_fonts),
            "fonts": np.repeat(np.array([n for n, _ in members], dtype=np.int64), 10 * k),
        }
    for i in kept:
        split = "source_val" if results[i]["family"] in val_families else "source_train"
        entries.append(_font_entry(fonts[i], results[i]) | {"split": split})
    target = load_sklearn_digits()
    target_train, target_test = target.hold_out(options["target_test_fraction"], options["seed"])
    for part, data in (("target_train", target_train), ("target_test", target_test)):
        arrays[part] = {"images": data.images.numpy(), "labels": data.labels.numpy()}
    (tmp / "cache").mkdir()
    cache_sha256 = {}
    for part in DIGITS_SPLITS:
        for kind, array in arrays[part].items():
            name = f"cache/{part}-{kind}.npy"
            np.save(tmp / name, np.ascontiguousarray(array))
            cache_sha256[name] = hashlib.sha256((tmp / name).read_bytes()).hexdigest()
    manifest = _manifest(fonts, results, entries, dropped, arrays, options, augmentation)
    manifest["cache_sha256"] = cache_sha256
    text = json.dumps(manifest, ensure_ascii=False, indent=1, sort_keys=True) + "\n"
    (tmp / "manifest.json").write_text(text, encoding="utf-8")
    log.info(
        "built %d fonts (%d families, %d dropped) in %.1fs",
        len(kept),
        len(set(families)),
        len(dropped),
        time.perf_counter() - start,
    )
    return manifest


def _font_entry(spec: FontSpec, result: dict[str, Any]) -> dict[str, Any]:
    return {
        "slug": spec.slug,
        "package": spec.package,
        "file": str(spec.path),
        "face_index": result.get("face_index"),
        "family": result.get("family"),
        "sha256": result["sha256"],
    }


def _manifest(
    fonts: tuple[FontSpec, ...],
    results: list[dict[str, Any]],
    entries: list[dict[str, Any]],
    dropped: dict[int, tuple[str, str]],
    arrays: dict[str, dict[str, np.ndarray]],
    options: dict[str, Any],
    augmentation: Augmentation,
) -> dict[str, Any]:
    """The manifest, without ``cache_sha256`` (added by the caller)."""
    import PIL
    from PIL import features

    reasons = sorted({reason for reason, _ in dropped.values()})
    return {
        "format": DIGITS_FORMAT,
        "builder_version": BUILDER_VERSION,
        "renderer_version": RENDERER_VERSION,
        "renderer": {
            "pillow": PIL.__version__,
            "freetype": features.version("freetype2"),
            "render_scale": RENDER_SCALE,
            "resample": "bilinear affine, then box",
        },
        "image_size": TARGET_SIZE,
        "classes": list(DIGITS),
        "polarity": "dark ink on white (255), as the glyph benchmark",
        "image_order": (
            "source: font-major (fonts in manifest order), then digit, then copy; "
            "target: scikit-learn's order"
        ),
        "options": options,
        "augmentation": augmentation.to_dict(),
        "fonts": entries,
        "dropped_fonts": [
            _font_entry(fonts[i], results[i]) | {"reason": r, "detail": d}
            for i, (r, d) in sorted(dropped.items())
        ],
        "target": sklearn_digits_source(),
        "splits": {part: len(arrays[part]["labels"]) for part in DIGITS_SPLITS},
        "counts": {
            "candidate_fonts": len(fonts),
            "fonts": len(entries),
            "families": len({e["family"] for e in entries}),
            "dropped": {r: sum(v[0] == r for v in dropped.values()) for r in reasons},
            "fonts_per_split": {
                part: sum(e["split"] == part for e in entries)
                for part in ("source_train", "source_val")
            },
        },
    }
