"""Character sets of the glyph benchmark: JIS level-1 kanji, a text file's characters."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["codepoint_name", "jis_level1_kanji", "read_characters"]


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
