"""Build the benchmark: check inputs, render every font (in worker processes), split, write.

The build goes to a temporary directory next to ``out_dir`` that is renamed into place at the end.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import ExitStack
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from episodes._publish import publish_build
from episodes.datasets._decode import DatasetFormatError
from episodes.datasets.glyphs import read_glyph_manifest
from episodes.glyphs.charsets import codepoint_name, jis_level1_kanji
from episodes.glyphs.fonts import FontSpec, check_installed, default_fonts, font_info
from episodes.glyphs.output import make_manifest, write_split
from episodes.glyphs.render import DEFAULT_MARGIN, render_glyphs

__all__ = ["SPLITS", "BuildExistsError", "build_glyph_benchmark", "split_classes"]

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


class BuildExistsError(FileExistsError):
    """The output path holds a build and ``force`` is off, or holds anything else.

    Only a directory holding a glyph benchmark manifest (as
    :func:`~episodes.datasets.read_glyph_manifest` accepts it) is ever replaced, and only with
    ``force``; any other non-empty directory or file is left untouched.
    """


def split_classes(
    characters: Sequence[str], seed: int = 0, n_val: int = 300, n_test: int = 500
) -> dict[str, list[str]]:
    """Seeded class split: a permutation of the sorted characters; val first, test next.

    Each split lists its characters in codepoint order (their label order). Raises
    ``ValueError`` unless ``n_val, n_test >= 0`` leave at least one training class.
    """
    chars = sorted(set(characters))
    if n_val < 0 or n_test < 0 or n_val + n_test >= len(chars):
        raise ValueError(
            f"cannot split {len(chars)} classes into {n_val} val + {n_test} test "
            "and at least one train class"
        )
    order = np.random.default_rng(seed).permutation(len(chars))
    parts = {"val": order[:n_val], "test": order[n_val : n_val + n_test]}
    parts["train"] = order[n_val + n_test :]
    return {name: sorted(chars[i] for i in parts[name]) for name in SPLITS}


def build_glyph_benchmark(
    out_dir: str | os.PathLike[str],
    fonts: Sequence[FontSpec] | None = None,
    characters: str | Iterable[str] | None = None,
    *,
    image_size: int = 84,
    margin: int = DEFAULT_MARGIN,
    seed: int = 0,
    n_val: int = 300,
    n_test: int = 500,
    workers: int = 2,
    force: bool = False,
) -> dict[str, Any]:
    """Render ``characters`` in ``fonts`` and write the benchmark to ``out_dir``.

    Args:
        out_dir: Output directory: created if missing; an empty directory is used; an
            earlier build (a directory with a benchmark manifest) is replaced only with
            ``force``; anything else is refused, whatever ``force`` says.
        fonts: Font designs, one image per character each; default :func:`default_fonts`.
        characters: The candidate classes; default :func:`jis_level1_kanji`.
        image_size: Output side ``S`` in pixels (84 = 3 x 28 area-averages to 28 exactly).
        margin: Blank pixels at each end of the ink's longest side.
        seed: Seed of the class split (:func:`split_classes`).
        n_val: Validation classes.
        n_test: Test classes; the rest are training classes.
        workers: Rendering processes (one font per task); <= 1 renders in this process.
        force: Replace an earlier build. The new build is written next to it and swapped in
            only once complete, so a failed rebuild leaves the earlier build as it was.

    Returns:
        The manifest (also written to ``out_dir/manifest.json``).

    Raises:
        MissingFontError: A font file is missing (names its Debian package).
        BuildExistsError: ``out_dir`` holds a build and ``force`` is off, or it is a file or
            a non-empty directory that holds no build (checked before anything is written).
        ValueError: Bad sizes, duplicate slugs, or too few characters for the split.
    """
    out = Path(out_dir)
    fonts = tuple(default_fonts() if fonts is None else fonts)
    chars = sorted(set(jis_level1_kanji() if characters is None else characters))
    if not chars or any(len(c) != 1 for c in chars):
        raise ValueError(f"characters must be single code points, got {chars[:10]}")
    if not 2 * margin < image_size or margin < 0:
        raise ValueError(f"need 0 <= margin < image_size / 2, got {margin=} {image_size=}")
    slugs = [f.slug for f in fonts]
    if not fonts or len(set(slugs)) != len(slugs):
        raise ValueError(f"need at least one font and unique slugs, got {slugs}")
    _check_output(out, force)
    for spec in fonts:
        check_installed(spec)
    return publish_build(
        out,
        lambda: _check_output(out, force),
        lambda tmp: _build(
            tmp, fonts, "".join(chars), image_size, margin, seed, n_val, n_test, workers
        ),
    )


def _check_output(out: Path, force: bool) -> None:
    """Refuse ``out`` unless it is missing, empty, or (with ``force``) an earlier build."""
    if out.is_symlink():
        raise BuildExistsError(
            f"{out} is a symbolic link; refusing to replace it: pass its target "
            f"{os.path.realpath(out)} as --out"
        )
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    if out.is_dir() and _is_benchmark(out):
        if force:
            return
        raise BuildExistsError(
            f"{out} already holds a complete glyph benchmark; pass --force (force=True) to rebuild"
        )
    what = (
        "a non-empty directory that holds no glyph benchmark (no manifest.json written by "
        "this builder)"
        if out.is_dir()
        else "a file, not a directory"
    )
    raise BuildExistsError(
        f"{out} is {what}; refusing to replace it: choose a new or empty --out directory"
    )


def _is_benchmark(out: Path) -> bool:
    """Whether ``out`` holds a manifest that this builder wrote (parsed and checked)."""
    try:
        read_glyph_manifest(out)
    except (OSError, DatasetFormatError):
        return False
    return True


def _build(
    tmp: Path,
    fonts: tuple[FontSpec, ...],
    chars: str,
    image_size: int,
    margin: int,
    seed: int,
    n_val: int,
    n_test: int,
    workers: int,
) -> dict[str, Any]:
    """Render into ``tmp`` and write caches and manifest there; returns the manifest."""
    start = time.perf_counter()
    dropped: dict[str, dict[str, Any]] = {}  # char -> {"reason", "fonts"}
    with ExitStack() as stack:
        pool = None
        if workers > 1:
            context = get_context("spawn")  # not fork: the parent may run torch's threads
            pool = ProcessPoolExecutor(min(workers, len(fonts)), context)
            stack.callback(pool.shutdown, wait=True, cancel_futures=True)
        infos = _map(pool, font_info, [(f, chars) for f in fonts], "reading fonts")
        for spec, info in zip(fonts, infos, strict=True):
            missing = set(chars) - set(info["covered"])
            info["missing"] = len(missing)
            if missing:
                log.info("font %s lacks %d of the characters", spec.slug, len(missing))
            for c in missing:
                dropped.setdefault(c, {"reason": "missing", "fonts": []})["fonts"].append(spec.slug)
        rendered = "".join(c for c in chars if c not in dropped)
        log.info(
            "%d of %d characters mapped by all %d fonts", len(rendered), len(chars), len(fonts)
        )
        split_classes(rendered, seed, n_val, n_test)  # fail before rendering if it cannot fit
        jobs = [
            (spec, info["face_index"], rendered, image_size, margin, tmp / "staging" / spec.slug)
            for spec, info in zip(fonts, infos, strict=True)
        ]
        results = _map(pool, _render_font_job, jobs, "rendering")
    for spec, info, (_, blank) in zip(fonts, infos, results, strict=True):
        info["blank"] = sum(blank)
        for c in (c for c, is_blank in zip(rendered, blank, strict=True) if is_blank):
            dropped.setdefault(c, {"reason": "blank", "fonts": []})["fonts"].append(spec.slug)
            log.warning("dropping %s (%s): blank in font %s", c, codepoint_name(c), spec.slug)
    kept = [c for c in rendered if c not in dropped]
    splits = split_classes(kept, seed, n_val, n_test)
    font_images = [images for images, _ in results]
    cache_sha256: dict[str, str] = {}
    for split, members in splits.items():
        cache_sha256 |= write_split(tmp, split, members, rendered, fonts, font_images)
    shutil.rmtree(tmp / "staging")
    manifest = make_manifest(fonts, infos, chars, kept, splits, dropped, image_size, margin, seed)
    manifest["cache_sha256"] = cache_sha256
    text = json.dumps(manifest, ensure_ascii=False, indent=1, sort_keys=True) + "\n"
    (tmp / "manifest.json").write_text(text, encoding="utf-8")
    elapsed = time.perf_counter() - start
    log.info("built %d classes x %d fonts in %.1fs", len(kept), len(fonts), elapsed)
    return manifest


def _map(pool: Executor | None, fn: Any, jobs: list[tuple[Any, ...]], desc: str) -> list[Any]:
    """``[fn(*job) for job in jobs]``, in ``pool`` if given, results in job order."""
    from tqdm.auto import tqdm

    with tqdm(total=len(jobs), desc=desc, unit="font", disable=None) as bar:
        if pool is None:
            results = []
            for job in jobs:
                results.append(fn(*job))
                bar.update()
            return results
        futures = [pool.submit(fn, *job) for job in jobs]
        for future in futures:
            future.add_done_callback(lambda _: bar.update())
        return [future.result() for future in futures]


def _render_font_job(
    spec: FontSpec, face_index: int, characters: str, image_size: int, margin: int, staging: Path
) -> tuple[np.ndarray, list[bool]]:
    """Worker: render one font and write its PNGs to ``staging/<U+XXXX>.png``."""
    from PIL import Image

    images, blank = render_glyphs(spec, characters, image_size, margin, face_index)
    staging.mkdir(parents=True)
    for char, image in zip(characters, images, strict=True):
        Image.fromarray(image).save(staging / f"{codepoint_name(char)}.png")
    return images, blank
