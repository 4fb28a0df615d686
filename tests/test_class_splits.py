"""Unihan reader and the A/B class splits of the layer-transfer study, on tiny fixtures."""

from __future__ import annotations

import bz2
import os
import statistics
import zipfile
from pathlib import Path

import pytest

from episodes.class_splits import grouped_split, radical_split, random_split, stroke_split
from episodes.datasets import DatasetFormatError
from episodes.glyphs.charsets import jis_level1_kanji
from episodes.unihan import radical_of, read_unihan, total_strokes

# char -> (kRSUnicode, kTotalStrokes), real values from Unihan 15.0
CHARS = {
    "一": ("1.0", "1"),
    "丁": ("1.1", "2"),
    "七": ("1.1", "2"),
    "三": ("1.2", "3"),
    "人": ("9.0", "2"),
    "仁": ("9.2", "4"),
    "休": ("9.4", "6"),
    "働": ("9.11", "13"),
    "水": ("85.0", "4"),
    "池": ("85.3", "6"),
    "海": ("85.6 85.7", "9 10"),  # two values: the first counts
    "漢": ("85.10", "13"),
    "木": ("75.0", "4"),
    "林": ("75.4", "8"),
    "機": ("75.12", "16"),
    "龍": ("212.0", "16"),
    "䌶": ("120'.3", "6"),  # a simplified radical form
}


def _member(fields: str, lines: list[str]) -> str:
    header = ["#", "# Unihan_X.txt", "#", "# This file contains data on the following fields:"]
    header += [f"#\t{f}" for f in fields.split()] + ["#", ""]
    return "\n".join([*header, *lines, "# EOF", ""])


def _members() -> dict[str, str]:
    irg, other = [], []
    for char, (rs, strokes) in sorted(CHARS.items()):
        code = f"U+{ord(char):04X}"
        irg += [f"{code}\tkIRG_JSource\tJ0-306C", f"{code}\tkRSUnicode\t{rs}"]
        irg += [f"{code}\tkTotalStrokes\t{strokes}"]
        other.append(f"{code}\tkDefinition\tsome; meaning")
    return {
        "Unihan_IRGSources.txt": _member("kIRG_JSource kRSUnicode kTotalStrokes", irg),
        "Unihan_Readings.txt": _member("kDefinition", other),
    }


def _write_zip(path: Path, members: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, text in members.items():
            archive.writestr(name, text)
    return path


@pytest.fixture
def unihan_zip(tmp_path: Path) -> Path:
    return _write_zip(tmp_path / "Unihan.zip", _members())


@pytest.fixture
def unihan(unihan_zip: Path) -> dict[str, dict[str, str]]:
    return read_unihan(unihan_zip)


def test_read_unihan_zip_values(unihan: dict[str, dict[str, str]]) -> None:
    assert set(unihan) == set(CHARS)
    for char, (rs, strokes) in CHARS.items():
        assert unihan[char] == {"kRSUnicode": rs, "kTotalStrokes": strokes}
    assert radical_of("海", unihan) == 85 and total_strokes("海", unihan) == 9
    assert radical_of("䌶", unihan) == 120 and radical_of("龍", unihan) == 212
    assert total_strokes("一", unihan) == 1
    with pytest.raises(LookupError, match=r"'x' \(U\+0078\) has no kRSUnicode"):
        radical_of("x", unihan)


def test_read_unihan_debian_layout_and_other_fields(tmp_path: Path, unihan_zip: Path) -> None:
    for name, text in _members().items():  # Debian: /usr/share/unicode/Unihan_*.txt.bz2
        (tmp_path / f"{name}.bz2").write_bytes(bz2.compress(text.encode()))
    assert read_unihan(tmp_path) == read_unihan(unihan_zip)
    definitions = read_unihan(tmp_path, fields=["kDefinition"])
    assert definitions["水"] == {"kDefinition": "some; meaning"}


def test_read_unihan_older_layout_without_headers(tmp_path: Path) -> None:
    lines = ["# no field list here", "U+4E00\tkRSUnicode\t1.0", "", "U+4E00\tkTotalStrokes\t1"]
    path = _write_zip(tmp_path / "Unihan.zip", {"Unihan_RadicalStrokeCounts.txt": "\n".join(lines)})
    assert read_unihan(path) == {"一": {"kRSUnicode": "1.0", "kTotalStrokes": "1"}}


def test_read_unihan_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="apt-get install unicode-data"):
        read_unihan(tmp_path / "Unihan.zip")
    with pytest.raises(FileNotFoundError, match="unicode-data"):
        read_unihan(tmp_path)  # a directory without Unihan files


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("U+4E00 kRSUnicode 1.0", r"line 9 is not 'U\+XXXX<TAB>kField<TAB>value'"),
        ("U+4E0\tkRSUnicode\t1.0", "line 9 is not"),
        ("U+4E00\tkRSUnicode\tone", "line 9: malformed kRSUnicode value 'one' for U"),
        ("U+4E00\tkTotalStrokes\t1.5", "malformed kTotalStrokes"),
        ("U+4E00\tkTotalStrokes\t", "malformed kTotalStrokes"),
    ],
)
def test_read_unihan_malformed_line(tmp_path: Path, line: str, match: str) -> None:
    text = _member("kRSUnicode kTotalStrokes", [line])
    path = _write_zip(tmp_path / "Unihan.zip", {"Unihan_IRGSources.txt": text})
    with pytest.raises(DatasetFormatError, match=match) as info:
        read_unihan(path)
    assert "\n" not in str(info.value) and "Unihan_IRGSources.txt" in str(info.value)


def test_read_unihan_malformed_files(tmp_path: Path) -> None:
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    with pytest.raises(DatasetFormatError, match="not a readable zip"):
        read_unihan(tmp_path / "bad.zip")
    twice = _member("kTotalStrokes", ["U+4E00\tkTotalStrokes\t1", "U+4E00\tkTotalStrokes\t2"])
    path = _write_zip(tmp_path / "twice.zip", {"Unihan_IRGSources.txt": twice})
    with pytest.raises(DatasetFormatError, match="kTotalStrokes of U\\+4E00 given a second"):
        read_unihan(path)
    path = _write_zip(tmp_path / "latin1.zip", {})
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("Unihan_IRGSources.txt", "# caf\xe9\n".encode("latin-1"))
    with pytest.raises(DatasetFormatError, match="line 1 cannot be read: UnicodeDecodeError"):
        read_unihan(path)
    path = _write_zip(
        tmp_path / "other.zip", {"Unihan_Readings.txt": _members()["Unihan_Readings.txt"]}
    )
    with pytest.raises(DatasetFormatError, match="no file holds the field.s. kRSUnicode"):
        read_unihan(path)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "Unihan_IRGSources.txt.bz2").write_bytes(b"BZh9 truncated")
    with pytest.raises(DatasetFormatError, match="cannot be read"):
        read_unihan(tmp_path / "d")


def _check_partition(names: list[str], a: list[str], b: list[str]) -> None:
    assert a == sorted(a) and b == sorted(b)
    assert not set(a) & set(b) and sorted(a + b) == sorted(names) and a and b


def test_random_split() -> None:
    names = [f"c{i:02d}" for i in range(21)]
    a, b = random_split(names, seed=3)
    _check_partition(names, a, b)
    assert (len(a), len(b)) == (10, 11)
    assert random_split(list(reversed(names)), seed=3) == (a, b)  # order does not matter
    assert random_split(names, seed=4) != (a, b)
    with pytest.raises(ValueError, match="named more than once: 'c01'"):
        random_split([*names, "c01"], seed=0)
    with pytest.raises(ValueError, match="at least two"):
        random_split(["c00"], seed=0)


def test_grouped_split() -> None:
    group = {"car": "made", "cup": "made", "cat": "nature", "oak": "nature", "elk": 7}
    a, b = grouped_split(list(group), group, a_groups={"made", 7})
    assert (a, b) == (["car", "cup", "elk"], ["cat", "oak"])
    with pytest.raises(ValueError, match="2 class.es. without a group: 'bus', 'sky'"):
        grouped_split([*group, "sky", "bus"], group, ["made"])
    with pytest.raises(ValueError, match="no class is in: 'mad'"):
        grouped_split(list(group), group, ["mad"])
    with pytest.raises(ValueError, match="5 classes in A and 0 in B"):
        grouped_split(list(group), group, ["made", "nature", 7])


def test_stroke_split(unihan: dict[str, dict[str, str]]) -> None:
    names = sorted(CHARS)
    a, b = stroke_split(names, unihan)
    _check_partition(names, a, b)
    strokes = {c: total_strokes(c, unihan) for c in names}
    assert statistics.median_low(strokes.values()) == 6
    # 8 below 6 strokes, 3 at 6 ("休", "池", "䌶"), 6 above: 8 vs 9 beats 11 vs 6
    assert max(strokes[c] for c in a) < min(strokes[c] for c in b)
    assert (len(a), len(b)) == (8, 9) and "休" in b
    assert stroke_split(list(reversed(names)), unihan) == (a, b)
    with pytest.raises(ValueError, match="no kTotalStrokes in the Unihan data: 'x' \\(U\\+0078\\)"):
        stroke_split([*names, "x"], unihan)
    with pytest.raises(ValueError, match="all 2 classes have 2 strokes"):
        stroke_split(["丁", "人"], unihan)
    assert stroke_split(["一", "丁", "七"], unihan) == (["一"], ["丁", "七"])  # median in B


def test_radical_split(unihan: dict[str, dict[str, str]]) -> None:
    names = sorted(CHARS)
    sizes = {1: 4, 9: 4, 85: 4, 75: 3, 212: 1, 120: 1}
    for seed in range(8):
        a, b = radical_split(names, unihan, seed)
        _check_partition(names, a, b)
        assert not {radical_of(c, unihan) for c in a} & {radical_of(c, unihan) for c in b}
        assert abs(len(a) - len(b)) == 1  # 17 classes: as balanced as possible here
        assert radical_split(names, unihan, seed) == (a, b)
    splits = {tuple(radical_split(names, unihan, seed)[0]) for seed in range(8)}
    assert len(splits) > 1  # the seed matters
    assert sum(sizes.values()) == len(names)
    with pytest.raises(ValueError, match="1 class.es. have no kRSUnicode"):
        radical_split([*names, "x"], unihan, 0)
    with pytest.raises(ValueError, match="all 3 classes have radical 1"):
        radical_split(["一", "丁", "七"], unihan, 0)


REAL = Path("/usr/share/unicode")


def test_real_unihan_covers_jis_level1_kanji() -> None:
    if not (REAL / "Unihan.zip").is_file() and not (REAL / "Unihan_IRGSources.txt.bz2").is_file():
        if os.environ.get("METATL_REQUIRE_UNIHAN") == "1":
            pytest.fail("Debian's unicode-data is not installed (make test installs it)")
        pytest.skip("Debian's unicode-data is not installed")
    unihan = read_unihan()
    kanji = list(jis_level1_kanji())
    lacking = [c for c in kanji if set(unihan.get(c, {})) != {"kRSUnicode", "kTotalStrokes"}]
    assert not lacking
    assert unihan["亜"] == {"kRSUnicode": "7.5", "kTotalStrokes": "7"}
    strokes = [total_strokes(c, unihan) for c in kanji]
    assert statistics.median_low(strokes) == 11
    a, b = stroke_split(kanji, unihan)
    assert (len(a), len(b)) == (1418, 1547)  # <= 10 strokes vs >= 11
    a, b = radical_split(kanji, unihan, seed=0)
    assert abs(len(a) - len(b)) <= 1
