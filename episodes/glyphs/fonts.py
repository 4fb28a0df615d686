"""Font designs of the glyph benchmark: the default table, faces of collections, coverage."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "FONT_ROOT",
    "FontSpec",
    "MissingFontError",
    "check_installed",
    "default_fonts",
    "font_info",
    "parse_font_arg",
    "resolve_face",
]

FONT_ROOT = Path("/usr/share/fonts")
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
        check_installed(spec)
        family = resolve_face(spec)[1]
        slug = re.sub(r"[^a-z0-9]+", "-", family.lower()).strip("-") or Path(path).stem.lower()
    return FontSpec(slug, Path(path), face)


def check_installed(spec: FontSpec) -> None:
    """Raise :class:`MissingFontError` (naming the package) unless the font file exists."""
    if spec.path.is_file():
        return
    hint = f"; install it with `apt-get install {spec.package}`" if spec.package else ""
    raise MissingFontError(f"font {spec.slug!r}: {spec.path} not found{hint}")


def _face_names(font: Any) -> set[str]:
    """The family, full, PostScript and typographic family names of a face."""
    return {r.toUnicode() for r in font["name"].names if r.nameID in (1, 4, 6, 16)}


def resolve_face(spec: FontSpec) -> tuple[int, str]:
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


def font_info(spec: FontSpec, characters: str) -> dict[str, Any]:
    """Face, family, file hash and the characters of ``characters`` the font maps."""
    from fontTools.ttLib import TTFont

    index, family = resolve_face(spec)
    cmap = TTFont(spec.path, fontNumber=index, lazy=True).getBestCmap() or {}
    digest = hashlib.sha256(spec.path.read_bytes()).hexdigest()
    covered = "".join(c for c in characters if ord(c) in cmap)
    return {"face_index": index, "family": family, "sha256": digest, "covered": covered}
