"""Build an Omniglot-like glyph benchmark offline: one class per character, one image per font.

The default build renders the 2,965 JIS X 0208 level-1 kanji in 20 font designs shipped by
18 Debian packages (sans, serif/mincho, brush kaisho, gyōsho and sōsho, handwriting, rounded,
pixel). A character is kept only if every font maps it (fontTools ``getBestCmap``) and none
renders it blank; each glyph is centred on its ink bounding box, scaled (aspect ratio kept) so
its longest ink side spans ``image_size - 2 * margin`` pixels, rendered at >= 4x the output
resolution and area-averaged down. Images are 8-bit grey, dark ink on white.

Output (``out_dir``)::

    images/<split>/U+XXXX/<font-slug>.png     the image-folder layout
    cache/<split>-images.npy                  uint8 [N, 1, S, S], class-major, fonts in order
    cache/<split>-labels.npy                  int64 [N]
    manifest.json                             fonts, characters, splits, drops, hashes

The build goes to a temporary directory next to ``out_dir`` that is renamed into place at the
end, so an interrupted build never looks complete. Builds are byte-identical for the same
inputs, whatever the number of workers. CLI: ``python -m episodes.glyphs --out data/glyphs``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import re
import secrets
import shutil
import sys
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_MARGIN",
    "FONT_ROOT",
    "RENDERER_VERSION",
    "SPLITS",
    "BuildExistsError",
    "FontSpec",
    "MissingFontError",
    "build_glyph_benchmark",
    "codepoint_name",
    "default_fonts",
    "jis_level1_kanji",
    "main",
    "parse_font_arg",
    "read_characters",
    "render_glyphs",
    "split_classes",
]

log = logging.getLogger(__name__)

RENDERER_VERSION = 1
FONT_ROOT = Path("/usr/share/fonts")
DEFAULT_MARGIN = 6
RENDER_SCALE = 4  # the ink box is rendered at >= this many times the output resolution
SPLITS = ("train", "val", "test")
_SLUG = re.compile(r"^[a-z0-9][a-z0-9._-]*$")

# The 20 default designs, Regular weights: slug, Debian package (minus "fonts-"), file under
# FONT_ROOT[:face of a .ttc collection, by name]. fonts-kouzan-mouhitsu ships three files but two
# designs: kouzan-mouhitsu.ttf (v1.1) is an older cut of the gyōsho brush face
# kouzan-mouhitsu-gyosho.ttf (v2.1). The TW face of ukai.ttc maps the Japanese forms (e.g. of 骨);
# its faces agree on the other level-1 kanji it has.
_DEFAULT_FONTS = """
noto-sans       noto-cjk              opentype/noto/NotoSansCJK-Regular.ttc:Noto Sans CJK JP
noto-serif      noto-cjk              opentype/noto/NotoSerifCJK-Regular.ttc:Noto Serif CJK JP
ipaex-mincho    ipaexfont-mincho      opentype/ipaexfont-mincho/ipaexm.ttf
bizud-gothic    morisawa-bizud-gothic truetype/bizud-gothic/BIZUDGothic-Regular.ttf
arphic-ukai     arphic-ukai           truetype/arphic/ukai.ttc:AR PL UKai TW
cns-kai         cns11643-kai          truetype/cns11643/TW-Kai-98_1.ttf
lxgw-wenkai     lxgw-wenkai           truetype/lxgw-wenkai/LXGWWenKai-Regular.ttf
kouzan-sosho    kouzan-mouhitsu       truetype/kouzan-mouhitsu/KouzanBrushFontSousyo.ttf
kouzan-gyosho   kouzan-mouhitsu       truetype/kouzan-mouhitsu/kouzan-mouhitsu-gyosho.ttf
aoyagi-soseki   aoyagi-soseki         truetype/aoyagi-soseki/aoyagi-soseki.ttf
seto            seto                  truetype/seto/setofont.ttf
kiloji          kiloji                truetype/kiloji/kiloji.ttf
klee            klee                  truetype/klee/KleeOne-Regular.ttf
yusei-magic     yusei-magic           truetype/yusei-magic/YuseiMagic-Regular.ttf
maruberi        motoya-l-maruberi     truetype/motoya-l-maruberi/MTLmr3m.ttf
hanazono-mincho hanazono              truetype/hanazono/HanaMinA.ttf
dejima-mincho   dejima-mincho         truetype/dejima-mincho/dejima-mincho-r227.ttf
oradano-mincho  oradano-mincho-gsrr   truetype/oradano-mincho/OradanoGSRR.ttf
train-one       train                 truetype/train/TrainOne-Regular.ttf
misaki-gothic   misaki                truetype/misaki/misaki_gothic.ttf
"""


class MissingFontError(FileNotFoundError):
    """A font file is not installed; the message names the Debian package that provides it."""


class BuildExistsError(FileExistsError):
    """The output directory already holds a build (or other files) and ``force`` is off."""


@dataclass(frozen=True)
class FontSpec:
    """One font design to render with.

    Attributes:
        slug: Short file-name-safe name of the design (``[a-z0-9._-]``), used for the PNG names.
        path: The font file (``.ttf``, ``.otf`` or a ``.ttc`` collection).
        face: Face of a collection: its index, or a name matched exactly against the face's
            family, full or PostScript name. ``None`` for single-face files.
        package: The Debian package that installs ``path`` (named when it is missing).
    """

    slug: str
    path: Path
    face: int | str | None = None
    package: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        if not _SLUG.match(self.slug):
            raise ValueError(f"font slug must match {_SLUG.pattern}, got {self.slug!r}")


def default_fonts(font_root: str | os.PathLike[str] = FONT_ROOT) -> tuple[FontSpec, ...]:
    """The 20 default designs, with paths under ``font_root`` (``/usr/share/fonts``)."""
    fonts = []
    for line in _DEFAULT_FONTS.strip().splitlines():
        slug, package, file = line.split(maxsplit=2)
        file, _, face = file.partition(":")
        fonts.append(FontSpec(slug, Path(font_root) / file, face or None, f"fonts-{package}"))
    return tuple(fonts)


def jis_level1_kanji() -> str:
    """The 2,965 JIS X 0208 level-1 kanji (rows 16-47), in JIS order: ``"亜"`` ... ``"腕"``."""
    chars = []
    for lead in range(0xB0, 0xD0):
        for trail in range(0xA1, 0xFF):
            try:
                chars.append(bytes((lead, trail)).decode("euc_jp"))
            except UnicodeDecodeError:
                continue  # the unassigned tail of row 47
    text = "".join(chars)
    if len(text) != 2965:
        raise RuntimeError(f"expected 2965 level-1 kanji, the euc_jp codec gave {len(text)}")
    return text


def read_characters(path: str | os.PathLike[str]) -> str:
    """Every non-whitespace character of a UTF-8 text file, duplicates removed, in file order."""
    text = Path(path).read_text(encoding="utf-8")
    return "".join(dict.fromkeys(c for c in text if not c.isspace()))


def codepoint_name(char: str) -> str:
    """The class directory name of a character: ``"亜"`` -> ``"U+4E9C"``."""
    return f"U+{ord(char):04X}"


def parse_font_arg(arg: str) -> FontSpec:
    """A ``FontSpec`` from the CLI form ``[SLUG=]PATH[:FACE]`` (FACE: .ttc face index or name).

    Without ``SLUG=`` the slug is derived from the font's family name.
    """
    slug, sep, rest = arg.partition("=")
    if not sep or not _SLUG.match(slug):
        slug, rest = "", arg
    path, face = rest, None
    if not Path(rest).exists() and ":" in rest:
        path, face_text = rest.rsplit(":", 1)
        face = int(face_text) if face_text.isdigit() else face_text
    if not slug:
        spec = FontSpec("font", Path(path), face)
        _check_installed(spec)
        family = _resolve_face(spec)[1]
        slug = re.sub(r"[^a-z0-9]+", "-", family.lower()).strip("-") or Path(path).stem.lower()
    return FontSpec(slug, Path(path), face)


def _check_installed(spec: FontSpec) -> None:
    if spec.path.is_file():
        return
    hint = f"; install it with `apt-get install {spec.package}`" if spec.package else ""
    raise MissingFontError(f"font {spec.slug!r}: {spec.path} not found{hint}")


def _face_names(font: Any) -> set[str]:
    """The family, full, PostScript and typographic family names of a face."""
    return {r.toUnicode() for r in font["name"].names if r.nameID in (1, 4, 6, 16)}


def _resolve_face(spec: FontSpec) -> tuple[int, str]:
    """``(face index, family name)``; the index is 0 for single-face files."""
    from fontTools.ttLib import TTLibError

    try:
        return _resolve_face_unchecked(spec)
    except TTLibError as error:
        raise ValueError(f"font {spec.slug!r}: cannot read {spec.path}: {error}") from error


def _resolve_face_unchecked(spec: FontSpec) -> tuple[int, str]:
    from fontTools.ttLib import TTCollection, TTFont

    with open(spec.path, "rb") as f:
        is_collection = f.read(4) == b"ttcf"
    if not is_collection:
        if spec.face not in (None, 0):
            font = TTFont(spec.path, lazy=True)
            if spec.face not in _face_names(font):
                raise ValueError(f"font {spec.slug!r}: {spec.path} has one face, not {spec.face!r}")
        return 0, TTFont(spec.path, lazy=True)["name"].getBestFamilyName()
    faces = TTCollection(spec.path, lazy=True).fonts
    listing = "; ".join(f"{i}: {f['name'].getBestFullName()}" for i, f in enumerate(faces))
    if isinstance(spec.face, int):
        if not 0 <= spec.face < len(faces):
            raise ValueError(f"font {spec.slug!r}: {spec.path} has faces {listing}")
        return spec.face, faces[spec.face]["name"].getBestFamilyName()
    matches = [i for i, f in enumerate(faces) if spec.face in _face_names(f)]
    if len(matches) != 1:
        raise ValueError(
            f"font {spec.slug!r}: {spec.path} is a collection; choose exactly one face "
            f"(got {spec.face!r}) by index or name: {listing}"
        )
    return matches[0], faces[matches[0]]["name"].getBestFamilyName()


def _font_info(spec: FontSpec, characters: str) -> dict[str, Any]:
    """Face, family, file hash and the characters of ``characters`` the font maps."""
    from fontTools.ttLib import TTFont

    index, family = _resolve_face(spec)
    cmap = TTFont(spec.path, fontNumber=index, lazy=True).getBestCmap() or {}
    digest = hashlib.sha256(spec.path.read_bytes()).hexdigest()
    covered = "".join(c for c in characters if ord(c) in cmap)
    return {"face_index": index, "family": family, "sha256": digest, "covered": covered}


def render_glyphs(
    spec: FontSpec,
    characters: str,
    image_size: int = 84,
    margin: int = DEFAULT_MARGIN,
    face_index: int | None = None,
) -> tuple[np.ndarray, list[bool]]:
    """Render ``characters`` in one font: centred on the ink box, longest side fixed.

    Args:
        spec: The font.
        characters: The characters (the font should map them all; see the module docstring).
        image_size: Output height and width ``S``.
        margin: Pixels left blank on the ink's longest side, on each end.
        face_index: Collection face index, if already resolved.

    Returns:
        uint8 ``[len(characters), S, S]`` (ink dark on 255 white) and, per character, whether
        it rendered blank (its image is then all white).
    """
    from PIL import Image, ImageDraw, ImageFont

    if face_index is None:
        face_index = _resolve_face(spec)[0]
    ink = image_size - 2 * margin
    target = ink * RENDER_SCALE
    fonts: dict[int, Any] = {}

    def font(px: int) -> Any:
        if px not in fonts:
            fonts[px] = ImageFont.truetype(
                str(spec.path), px, index=face_index, layout_engine=ImageFont.Layout.BASIC
            )
        return fonts[px]

    def draw(char: str, px: int) -> tuple[Any, tuple[int, int, int, int] | None]:
        left, top, right, bottom = font(px).getbbox(char)
        canvas = Image.new("L", (right - left + 8, bottom - top + 8))
        ImageDraw.Draw(canvas).text((4 - left, 4 - top), char, font=font(px), fill=255)
        return canvas, canvas.getbbox()

    out = np.full((len(characters), image_size, image_size), 255, dtype=np.uint8)
    blank = []
    for i, char in enumerate(characters):
        px = math.ceil(target * 1.25)  # most ink boxes are 0.8-1.0 em: no upsampling needed
        canvas, box = draw(char, px)
        for _ in range(3):  # grow the font until the ink is at least `target` pixels long
            if box is None or max(box[2] - box[0], box[3] - box[1]) >= target:
                break
            px = math.ceil(px * target / max(box[2] - box[0], box[3] - box[1]) * 1.02)
            canvas, box = draw(char, px)
        blank.append(box is None)
        if box is None:
            continue
        scale = max(box[2] - box[0], box[3] - box[1]) / ink  # canvas pixels per output pixel
        half = scale * image_size / 2
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        x0, y0 = math.floor(cx - half), math.floor(cy - half)
        region = canvas.crop((x0, y0, math.ceil(cx + half), math.ceil(cy + half)))
        src = (cx - half - x0, cy - half - y0, cx + half - x0, cy + half - y0)
        small = region.resize((image_size, image_size), Image.Resampling.BOX, box=src)
        out[i] = 255 - np.asarray(small)
    return out, blank


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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_output(out: Path, force: bool) -> None:
    if force or not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    if (out / "manifest.json").is_file():
        raise BuildExistsError(
            f"{out} already holds a complete glyph benchmark; pass --force (force=True) to rebuild"
        )
    raise BuildExistsError(f"{out} exists and is not empty; pass --force (force=True) to replace")


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
        out_dir: Output directory (created; replaced only with ``force``).
        fonts: Font designs, one image per character each; default :func:`default_fonts`.
        characters: The candidate classes; default :func:`jis_level1_kanji`.
        image_size: Output side ``S`` in pixels (84 = 3 x 28 area-averages to 28 exactly).
        margin: Blank pixels at each end of the ink's longest side.
        seed: Seed of the class split (:func:`split_classes`).
        n_val: Validation classes.
        n_test: Test classes; the rest are training classes.
        workers: Rendering processes (one font per task); <= 1 renders in this process.
        force: Replace an existing build.

    Returns:
        The manifest (also written to ``out_dir/manifest.json``).

    Raises:
        MissingFontError: A font file is missing (names its Debian package).
        BuildExistsError: ``out_dir`` holds a build or other files and ``force`` is off.
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
    for spec in fonts:
        _check_installed(spec)
    _check_output(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}-{secrets.token_hex(4)}")
    tmp.mkdir()  # not tempfile.mkdtemp: its 0700 mode would stick to the output
    try:
        manifest = _build(
            tmp, fonts, "".join(chars), image_size, margin, seed, n_val, n_test, workers
        )
        _check_output(out, force)
        old = out.with_name(f"{tmp.name}-old")
        if out.exists():
            out.rename(old)
        try:
            tmp.rename(out)
        except OSError:
            if old.exists():
                old.rename(out)
            raise
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


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
        infos = _map(pool, _font_info, [(f, chars) for f in fonts], "reading fonts")
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
        cache_sha256 |= _write_split(tmp, split, members, rendered, fonts, font_images)
    shutil.rmtree(tmp / "staging")
    manifest = _manifest(fonts, infos, chars, kept, splits, dropped, image_size, margin, seed)
    manifest["cache_sha256"] = cache_sha256
    text = json.dumps(manifest, ensure_ascii=False, indent=1, sort_keys=True) + "\n"
    (tmp / "manifest.json").write_text(text, encoding="utf-8")
    elapsed = time.perf_counter() - start
    log.info("built %d classes x %d fonts in %.1fs", len(kept), len(fonts), elapsed)
    return manifest


def _write_split(
    tmp: Path,
    split: str,
    members: list[str],
    rendered: str,
    fonts: tuple[FontSpec, ...],
    font_images: list[np.ndarray],
) -> dict[str, str]:
    """Move one split's PNGs into place and save its cache; returns the cache files' hashes."""
    row = {c: i for i, c in enumerate(rendered)}
    rows = [row[c] for c in members]
    size = font_images[0].shape[-1]
    images = np.empty((len(members), len(fonts), 1, size, size), np.uint8)
    for f, array in enumerate(font_images):
        images[:, f, 0] = array[rows]
    for c in members:
        class_dir = tmp / "images" / split / codepoint_name(c)
        class_dir.mkdir(parents=True)
        for spec in fonts:
            png = tmp / "staging" / spec.slug / f"{codepoint_name(c)}.png"
            png.rename(class_dir / f"{spec.slug}.png")
    labels = np.repeat(np.arange(len(members), dtype=np.int64), len(fonts))
    (tmp / "cache").mkdir(exist_ok=True)
    hashes = {}
    for kind, array in (("images", images.reshape(-1, 1, size, size)), ("labels", labels)):
        name = f"cache/{split}-{kind}.npy"
        np.save(tmp / name, array)
        hashes[name] = _sha256(tmp / name)
    return hashes


def _manifest(
    fonts: tuple[FontSpec, ...],
    infos: list[dict[str, Any]],
    chars: str,
    kept: list[str],
    splits: dict[str, list[str]],
    dropped: dict[str, dict[str, Any]],
    image_size: int,
    margin: int,
    seed: int,
) -> dict[str, Any]:
    import PIL
    from PIL import features

    font_entries = [
        {
            "slug": spec.slug,
            "package": spec.package,
            "file": str(spec.path),
            "face_index": info["face_index"],
            "family": info["family"],
            "sha256": info["sha256"],
        }
        for spec, info in zip(fonts, infos, strict=True)
    ]
    return {
        "format": "metatl-glyphs",
        "renderer_version": RENDERER_VERSION,
        "renderer": {
            "pillow": PIL.__version__,
            "freetype": features.version("freetype2"),
            "render_scale": RENDER_SCALE,
            "resample": "box",
        },
        "image_size": image_size,
        "margin": margin,
        "seed": seed,
        "image_order": "class-major (label order); within a class, one image per font in order",
        "fonts": font_entries,
        "characters": kept,
        "splits": splits,
        "dropped": [
            {"char": c, "codepoint": codepoint_name(c), **dropped[c]} for c in sorted(dropped)
        ],
        "counts": {
            "requested": len(chars),
            "kept": len(kept),
            "dropped": len(dropped),
            "fonts": len(fonts),
            "images": len(kept) * len(fonts),
            "splits": {
                s: {"classes": len(m), "images": len(m) * len(fonts)} for s, m in splits.items()
            },
            "per_font": {
                spec.slug: {"missing": info["missing"], "blank": info["blank"]}
                for spec, info in zip(fonts, infos, strict=True)
            },
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m episodes.glyphs --out DIR [...]``: build the glyph benchmark."""
    parser = argparse.ArgumentParser(
        prog="python -m episodes.glyphs", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument(
        "--font",
        action="append",
        metavar="[SLUG=]PATH[:FACE]",
        help="a font file (repeat; replaces the 20 defaults); FACE: .ttc face index or name",
    )
    parser.add_argument(
        "--chars-file", type=Path, help="UTF-8 file of characters (default: JIS level-1 kanji)"
    )
    parser.add_argument("--size", type=int, default=84, help="image side in pixels (default 84)")
    parser.add_argument("--margin", type=int, default=DEFAULT_MARGIN, help="margin in pixels")
    parser.add_argument("--seed", type=int, default=0, help="class split seed")
    parser.add_argument("--val", type=int, default=300, help="validation classes")
    parser.add_argument("--test", type=int, default=500, help="test classes")
    parser.add_argument("--workers", type=int, default=2, help="rendering processes")
    parser.add_argument("--force", action="store_true", help="replace an existing build")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        fonts = [parse_font_arg(a) for a in args.font] if args.font else None
        chars = read_characters(args.chars_file) if args.chars_file else None
        start = time.perf_counter()
        manifest = build_glyph_benchmark(
            args.out,
            fonts,
            chars,
            image_size=args.size,
            margin=args.margin,
            seed=args.seed,
            n_val=args.val,
            n_test=args.test,
            workers=args.workers,
            force=args.force,
        )
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    counts = manifest["counts"]
    per_split = ", ".join(f"{s} {c['classes']}" for s, c in counts["splits"].items())
    print(
        f"{args.out}: {counts['kept']} classes x {counts['fonts']} fonts = {counts['images']} "
        f"images ({per_split}); {counts['dropped']} of {counts['requested']} characters "
        f"dropped; {time.perf_counter() - start:.1f}s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
