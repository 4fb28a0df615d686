"""Reader of the Unicode Han Database (Unihan): per-character fields such as radical and strokes.

Unihan ships as ``Unihan.zip`` (members ``Unihan_*.txt``) from unicode.org. Debian's
``unicode-data`` package (15.0.0) installs the same members one by one, compressed, as
``/usr/share/unicode/Unihan_*.txt.bz2``; :func:`read_unihan` reads either layout. Each member
is UTF-8 text of comment lines (``#``), blank lines and data lines of three tab-separated
fields::

    U+4E00	kRSUnicode	1.0
    U+4E00	kTotalStrokes	1

Since Unicode 13, ``kRSUnicode`` and ``kTotalStrokes`` are in ``Unihan_IRGSources.txt``
(before: ``Unihan_RadicalStrokeCounts.txt`` and ``Unihan_DictionaryLikeData.txt``). Each
member's header lists the fields it holds, so only the members holding a wanted field are
parsed.
"""

from __future__ import annotations

import bz2
import io
import os
import re
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import IO

from episodes.datasets import DatasetFormatError

__all__ = ["DEFAULT_UNIHAN_PATHS", "radical_of", "read_unihan", "total_strokes"]

_OpenFn = Callable[[], IO[str]]

#: Where :func:`read_unihan` looks when no path is given, in order.
DEFAULT_UNIHAN_PATHS = (Path("/usr/share/unicode/Unihan.zip"), Path("/usr/share/unicode"))

_MEMBER = re.compile(r"^Unihan[A-Za-z0-9_]*\.txt(\.bz2)?$")
_CODEPOINT = re.compile(r"^U\+(?:[0-9A-F]{4,5}|10[0-9A-F]{4})$")
_FIELD_NAME = re.compile(r"^k[A-Za-z0-9_]+$")
_HEADER_FIELD = re.compile(r"^#\s+(k[A-Za-z0-9_]+)\s*$")
# Space-separated values; a radical may carry apostrophes (a simplified form, e.g. 120'.3).
_VALUE_FORMATS = {
    "kRSUnicode": re.compile(
        r"^[1-9][0-9]{0,2}'{0,3}\.-?[0-9]{1,2}(?: [1-9][0-9]{0,2}'{0,3}\.-?[0-9]{1,2})*$"
    ),
    "kTotalStrokes": re.compile(r"^[1-9][0-9]?(?: [1-9][0-9]?)*$"),
}


def read_unihan(
    path: str | os.PathLike[str] | None = None,
    fields: Iterable[str] = ("kRSUnicode", "kTotalStrokes"),
) -> dict[str, dict[str, str]]:
    """The ``fields`` of every character in the Unihan database, as raw strings.

    Args:
        path: ``Unihan.zip``, or a directory of ``Unihan_*.txt`` / ``Unihan_*.txt.bz2`` files
            (Debian's layout). ``None`` tries :data:`DEFAULT_UNIHAN_PATHS` in order.
        fields: The field names to keep (e.g. ``"kRSUnicode"``); others are skipped.

    Returns:
        Character -> {field -> value} for every character with at least one of ``fields``,
        e.g. ``{"一": {"kRSUnicode": "1.0", "kTotalStrokes": "1"}, ...}``. Values are kept as
        written (several space-separated values are possible); use :func:`radical_of` and
        :func:`total_strokes` for numbers.

    Raises:
        FileNotFoundError: No Unihan data at ``path`` (or at the default places); the message
            names the Debian package ``unicode-data`` that installs it.
        DatasetFormatError: A file is not Unihan data: not a zip or bzip2 file, not UTF-8, a
            line not of the form ``U+XXXX<TAB>kField<TAB>value``, a malformed ``kRSUnicode``
            or ``kTotalStrokes`` value, a field given twice for one character, or a wanted
            field in no file. The one-line message names the file and line.
    """
    wanted = frozenset(fields)
    if not wanted or not all(isinstance(f, str) and _FIELD_NAME.match(f) for f in wanted):
        raise ValueError(f"fields must be Unihan field names such as 'kRSUnicode', got {fields!r}")
    source = _resolve(path)
    result: dict[str, dict[str, str]] = {}
    seen: set[str] = set()
    with ExitStack() as stack:
        members = _members(source, stack)
        chosen = [m for m in members if _header_fields(source, m) & wanted]
        for name, opener in chosen or members:  # no header lists them: scan everything
            with opener() as handle:
                seen |= _parse(source, name, handle, wanted, result)
    if missing := sorted(wanted - seen):
        raise DatasetFormatError(
            f"{source}: no file holds the field(s) {', '.join(missing)} "
            f"(read {', '.join(name for name, _ in members) or 'no Unihan_*.txt file'})"
        )
    return result


def radical_of(char: str, unihan: Mapping[str, Mapping[str, str]]) -> int:
    """The Kangxi radical number (1-214) of ``char``: the first ``kRSUnicode`` value's radical.

    A simplified radical form (``120'``) counts as its radical (120).

    Raises:
        LookupError: ``char`` has no ``kRSUnicode`` in ``unihan``.
    """
    value = _value(char, unihan, "kRSUnicode")
    return int(value.split(" ", 1)[0].split(".", 1)[0].rstrip("'"))


def total_strokes(char: str, unihan: Mapping[str, Mapping[str, str]]) -> int:
    """The total stroke count of ``char``: the first ``kTotalStrokes`` value.

    Where Unihan gives two counts, the first is the one preferred for mainland China and the
    second for Taiwan (UAX #38); the first is used.

    Raises:
        LookupError: ``char`` has no ``kTotalStrokes`` in ``unihan``.
    """
    return int(_value(char, unihan, "kTotalStrokes").split(" ", 1)[0])


def _value(char: str, unihan: Mapping[str, Mapping[str, str]], field: str) -> str:
    value = unihan.get(char, {}).get(field)
    if value is None:
        where = f" (U+{ord(char):04X})" if len(char) == 1 else ""
        raise LookupError(f"{char!r}{where} has no {field} in the Unihan data")
    return value


def _resolve(path: str | os.PathLike[str] | None) -> Path:
    candidates = DEFAULT_UNIHAN_PATHS if path is None else (Path(path),)
    for candidate in candidates:
        if candidate.is_file() or (
            candidate.is_dir() and any(_MEMBER.match(p.name) for p in candidate.iterdir())
        ):
            return candidate
    looked = " or ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"no Unihan data at {looked}: expected Unihan.zip or a directory of "
        "Unihan_*.txt(.bz2) files; on Debian/Ubuntu `apt-get install unicode-data` installs them"
    )


def _members(source: Path, stack: ExitStack) -> list[tuple[str, _OpenFn]]:
    """``(name, open as text)`` of each ``Unihan*.txt`` in ``source``, sorted by name."""
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if _MEMBER.match(p.name) and p.is_file())
        return [(p.name, _file_opener(p)) for p in files]
    try:
        archive = stack.enter_context(zipfile.ZipFile(source))
    except (zipfile.BadZipFile, OSError) as error:
        raise DatasetFormatError(f"{source} is not a readable zip file: {error}") from error
    names = sorted(
        n for n in archive.namelist() if _MEMBER.match(n.rsplit("/", 1)[-1]) and n[-1] != "/"
    )
    return [(n, _zip_opener(archive, n)) for n in names]


def _file_opener(path: Path) -> _OpenFn:
    if path.name.endswith(".bz2"):
        return lambda: io.TextIOWrapper(bz2.open(path, "rb"), encoding="utf-8")
    return lambda: path.open(encoding="utf-8")


def _zip_opener(archive: zipfile.ZipFile, name: str) -> _OpenFn:
    if name.endswith(".bz2"):
        return lambda: io.TextIOWrapper(bz2.open(archive.open(name), "rb"), encoding="utf-8")
    return lambda: io.TextIOWrapper(archive.open(name), encoding="utf-8")


def _header_fields(source: Path, member: tuple[str, _OpenFn]) -> frozenset[str]:
    """The field names listed in the member's leading comment block."""
    name, opener = member
    found = set()
    with opener() as handle:
        for line in _lines(source, name, handle):
            if not line.startswith("#"):
                break
            if match := _HEADER_FIELD.match(line):
                found.add(match.group(1))
    return frozenset(found)


def _lines(source: Path, name: str, handle: IO[str]) -> Iterator[str]:
    """The lines of one member, errors of decoding turned into DatasetFormatError."""
    number = 0
    try:
        for line in handle:
            number += 1
            yield line.rstrip("\n")
    except (UnicodeDecodeError, OSError, EOFError, zipfile.BadZipFile) as error:
        reason = " ".join(str(error).split())
        raise DatasetFormatError(
            f"{source}: {name} line {number + 1} cannot be read: {type(error).__name__}: {reason}"
        ) from error


def _parse(
    source: Path,
    name: str,
    handle: IO[str],
    wanted: frozenset[str],
    result: dict[str, dict[str, str]],
) -> set[str]:
    """Add the ``wanted`` fields of one member to ``result``; returns the fields seen."""
    seen: set[str] = set()
    for number, line in enumerate(_lines(source, name, handle), 1):
        if not line or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) != 3 or not _CODEPOINT.match(parts[0]) or not _FIELD_NAME.match(parts[1]):
            raise DatasetFormatError(
                f"{source}: {name} line {number} is not 'U+XXXX<TAB>kField<TAB>value': "
                f"{line[:80]!r}"
            )
        code, field, value = parts
        if field not in wanted:
            continue
        check = _VALUE_FORMATS.get(field)
        if not value or (check is not None and not check.match(value)):
            raise DatasetFormatError(
                f"{source}: {name} line {number}: malformed {field} value {value[:40]!r} for {code}"
            )
        entry = result.setdefault(chr(int(code[2:], 16)), {})
        if field in entry:
            raise DatasetFormatError(
                f"{source}: {name} line {number}: {field} of {code} given a second time"
            )
        entry[field] = value
        seen.add(field)
    return seen
