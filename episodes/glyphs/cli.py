"""The command line ``python -m episodes.glyphs --out DIR [...]``."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from episodes.glyphs.build import BuildExistsError, build_glyph_benchmark
from episodes.glyphs.charsets import read_characters
from episodes.glyphs.fonts import parse_font_arg
from episodes.glyphs.render import DEFAULT_MARGIN

__all__ = ["main"]

DESCRIPTION = (
    "Build an Omniglot-like glyph benchmark offline: one class per character, one image per font."
)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m episodes.glyphs --out DIR [...]``: build the glyph benchmark.

    Returns:
        0 once built; 1 if the build failed (a missing font, bad options); 2 if ``--out``
        was refused (an earlier build without ``--force``, or a file or non-empty directory
        that holds no build, which is never replaced) — nothing is written then.
    """
    parser = argparse.ArgumentParser(prog="python -m episodes.glyphs", description=DESCRIPTION)
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
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace an earlier build (only a directory holding a benchmark manifest)",
    )
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
    except BuildExistsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
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
