"""The fonts of the digits benchmark: the font files that Debian packages install, face by face.

A font design here is one face of one ``.ttf``/``.otf`` file (or of a ``.ttc`` collection) that a
Debian package installs under ``/usr/share/fonts``. :func:`package_fonts` lists the faces of the
given packages (``dpkg-query -L``), :func:`installed_fonts` every face under a folder. Whether a
face really draws ten distinct digits is decided later, on its rendered images (see
:func:`episodes.digits.build.build_digits_benchmark`).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

from episodes.glyphs.fonts import FONT_ROOT, FontSpec, MissingFontError

__all__ = [
    "DIGITS",
    "DIGIT_FONT_PACKAGES",
    "font_family",
    "installed_fonts",
    "owning_packages",
    "package_fonts",
    "small_digit_fonts",
]

DIGITS = "0123456789"

FONT_SUFFIXES = (".ttf", ".otf", ".ttc")

# The default source designs: Debian packages of Latin fonts (text faces in many weights and
# slants, monospaced, OCR, handwriting and script faces, Brian Kent's 465 display faces), and
# the CJK packages of the glyph benchmark, whose Latin digits are designs of their own (brush,
# pen, marker, pixel, outline). Every face of every package that draws ten distinct digits is
# used; identical designs (the same outlines under two names) are kept once.
DIGIT_FONT_PACKAGES = (
    # text faces: sans, serif, mono, in several weights and slants
    "fonts-dejavu-core",
    "fonts-dejavu-extra",
    "fonts-liberation2",
    "fonts-croscore",
    "fonts-freefont-ttf",
    "fonts-urw-base35",
    "fonts-linuxlibertine",
    "fonts-ebgaramond",
    "fonts-open-sans",
    "fonts-cantarell",
    "fonts-cabin",
    "fonts-go",
    "fonts-b612",
    "fonts-jura",
    "fonts-league-spartan",
    "fonts-quicksand",
    "fonts-comfortaa",
    "fonts-inconsolata",
    "fonts-gnutypewriter",
    "fonts-ocr-a",
    "fonts-ocr-b",
    "fonts-osifont",
    # handwriting and script
    "fonts-comic-neue",
    "fonts-humor-sans",
    "fonts-dkg-handwriting",
    "fonts-bwht",
    "fonts-breip",
    "fonts-sjfonts",
    "fonts-femkeklaver",
    "fonts-kristi",
    "fonts-dancingscript",
    "fonts-kaushanscript",
    "fonts-rufscript",
    "fonts-tomsontalks",
    "fonts-isabella",
    "fonts-ecolier-court",
    "fonts-lobster",
    # display
    "fonts-dustin",
    "fonts-aenigma",
    # the glyph benchmark's CJK packages: their own Latin digits
    "fonts-noto-cjk",
    "fonts-ipaexfont-mincho",
    "fonts-morisawa-bizud-gothic",
    "fonts-lxgw-wenkai",
    "fonts-kiloji",
    "fonts-klee",
    "fonts-seto",
    "fonts-yusei-magic",
    "fonts-motoya-l-maruberi",
    "fonts-train",
    "fonts-misaki",
)

_SMALL_FONTS = (
    ("misaki-gothic", "fonts-misaki", "truetype/misaki/misaki_gothic.ttf"),
    ("maruberi", "fonts-motoya-l-maruberi", "truetype/motoya-l-maruberi/MTLmr3m.ttf"),
    ("dejavu-sans", "fonts-dejavu-core", "truetype/dejavu/DejaVuSans.ttf"),
)

_NOT_SLUG = re.compile(r"[^a-z0-9]+")


def package_fonts(
    packages: Sequence[str] = DIGIT_FONT_PACKAGES,
    font_root: str | os.PathLike[str] = FONT_ROOT,
) -> tuple[FontSpec, ...]:
    """Every face of the font files that ``packages`` install under ``font_root``.

    Files are listed with ``dpkg-query -L``; symbolic links and second copies of a file
    (the same real path) count once. Faces are ordered by package (in the order given), then
    by file path, then by face index.

    Args:
        packages: Debian package names.
        font_root: Only files under this folder are taken (``/usr/share/fonts``).

    Returns:
        One :class:`~episodes.glyphs.FontSpec` per face, ``package`` set, slugs unique.

    Raises:
        MissingFontError: A package is not installed (the message names every missing one
            and the ``apt-get install`` line), or ``dpkg-query`` is not available.
    """
    dpkg = shutil.which("dpkg-query")
    if dpkg is None:
        raise MissingFontError(
            "dpkg-query not found: the digits benchmark lists its fonts by Debian package; "
            "on another system pass the font files explicitly (--font)"
        )
    root = Path(font_root).resolve()
    files: list[tuple[str, Path]] = []
    missing = []
    for package in packages:
        listing = subprocess.run([dpkg, "-L", package], capture_output=True, text=True, check=False)
        if listing.returncode != 0 or not _is_installed(dpkg, package):
            missing.append(package)
            continue
        paths = sorted(
            {
                Path(line).resolve()
                for line in listing.stdout.splitlines()
                if line.lower().endswith(FONT_SUFFIXES)
            }
        )
        files += [(package, p) for p in paths if p.is_file() and p.is_relative_to(root)]
    if missing:
        raise MissingFontError(
            f"{len(missing)} font package(s) of the digits benchmark are not installed: "
            f"install them with `apt-get install {' '.join(missing)}`"
        )
    return _faces(files)


def small_digit_fonts(font_root: str | os.PathLike[str] = FONT_ROOT) -> tuple[FontSpec, ...]:
    """Three faces of three families for tests and quick builds: a pixel font, a rounded
    gothic and a sans (``fonts-misaki`` and ``fonts-motoya-l-maruberi``, which ``make test``
    installs, and ``fonts-dejavu-core``). The files need not exist (check before use)."""
    return tuple(
        FontSpec(slug, Path(font_root) / file, None, package)
        for slug, package, file in _SMALL_FONTS
    )


def installed_fonts(font_root: str | os.PathLike[str] = FONT_ROOT) -> tuple[FontSpec, ...]:
    """Every face of every ``.ttf``/``.otf``/``.ttc`` file under ``font_root``, by path.

    ``package`` is the file's Debian package where ``dpkg-query -S`` knows one, else ``None``.
    """
    root = Path(font_root)
    paths = sorted({p.resolve() for p in root.rglob("*") if p.suffix.lower() in FONT_SUFFIXES})
    owners = owning_packages(paths)
    return _faces((owners.get(p), p) for p in paths if p.is_file())


def font_family(spec: FontSpec) -> str:
    """The family name of a face (typographic family if it has one): the unit of the
    train/validation split of fonts, so that the weights of one family stay together."""
    from fontTools.ttLib import TTFont

    index = spec.face if isinstance(spec.face, int) else 0
    names = TTFont(spec.path, fontNumber=index, lazy=True)["name"]
    for name_id in (16, 1):
        record = names.getName(name_id, 3, 1) or names.getName(name_id, 1, 0)
        if record is not None and record.toUnicode().strip():
            return record.toUnicode().strip()
    return spec.path.stem


def owning_packages(paths: Iterable[Path]) -> dict[Path, str]:
    """The Debian package that installed each of ``paths``, where ``dpkg-query -S`` knows one
    (best effort: files no package owns, or a system without dpkg, are left out)."""
    dpkg = shutil.which("dpkg-query")
    paths = sorted({Path(p) for p in paths})
    if dpkg is None or not paths:
        return {}
    found = subprocess.run(
        [dpkg, "-S", *map(str, paths)], capture_output=True, text=True, check=False
    )
    owners: dict[Path, str] = {}
    for line in found.stdout.splitlines():
        package, sep, path = line.partition(": ")
        if sep and "," not in package and not package.startswith("diversion"):
            owners[Path(path)] = package.split(":")[0]  # drop an architecture qualifier
    return {p: owners[p] for p in paths if p in owners}


def _is_installed(dpkg: str, package: str) -> bool:
    status = subprocess.run(
        [dpkg, "-W", "-f=${Status}", package], capture_output=True, text=True, check=False
    )
    return status.stdout.strip().endswith("ok installed")


def _faces(files: Iterable[tuple[str | None, Path]]) -> tuple[FontSpec, ...]:
    """One spec per face of each file; slugs from the file name (and face index), unique."""
    from fontTools.ttLib import TTCollection

    specs: list[FontSpec] = []
    seen: set[Path] = set()
    slugs: set[str] = set()
    for package, path in files:
        if path in seen:
            continue
        seen.add(path)
        with open(path, "rb") as handle:
            n_faces = len(TTCollection(path, lazy=True).fonts) if handle.read(4) == b"ttcf" else 0
        for face in range(n_faces) if n_faces else [None]:
            stem = _NOT_SLUG.sub("-", path.stem.lower()).strip("-") or "font"
            slug = stem if face is None else f"{stem}-{face}"
            while slug in slugs:
                slug += "_"
            slugs.add(slug)
            specs.append(FontSpec(slug, path, face, package))
    return tuple(specs)
