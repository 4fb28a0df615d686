"""`make docs` fails on any warning pdoc emits: checked on scratch modules, with the Makefile's
own pdoc command, so a pdoc release that stopped raising under ``-W error`` would show here."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pdoc")

MAKEFILE = Path(__file__).resolve().parents[1] / "Makefile"


def docs_command() -> list[str]:
    """The docs target's pdoc call: the arguments after ``$(BIN)/python``, up to ``-o``."""
    recipe = re.search(r"^docs:.*?\n((?:\t.*\n)+)", MAKEFILE.read_text(), re.M)
    assert recipe, "the Makefile has no docs target"
    line = next(ln for ln in recipe.group(1).splitlines() if "-m pdoc" in ln)
    args = shlex.split(line.strip())
    assert args[0] == "$(BIN)/python"
    return args[1 : args.index("-o")]


def build(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "scratch_docs_mod.py").write_text(source)
    return subprocess.run(
        [sys.executable, *docs_command(), "-o", str(tmp_path / "out"), "scratch_docs_mod"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_docs_command_turns_warnings_into_errors() -> None:
    assert docs_command()[:2] == ["-W", "error"]


def test_clean_module_builds(tmp_path: Path) -> None:
    result = build(
        tmp_path,
        '"""Scratch."""\n\n\ndef f(x: int) -> int:\n'
        '    """Doubles.\n\n    Args:\n        x: A number.\n\n    Returns:\n        2x.\n    """\n'
        "    return 2 * x\n",
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "scratch_docs_mod.html").is_file()


def test_unresolvable_annotation_fails_the_build(tmp_path: Path) -> None:
    result = build(
        tmp_path, '"""Scratch."""\n\n\ndef f(x: "NoSuchType") -> None:\n    """Broken."""\n'
    )
    assert result.returncode != 0
    assert "NoSuchType" in result.stderr
