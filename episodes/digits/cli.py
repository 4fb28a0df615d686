"""The command line ``python -m episodes.digits --out DIR [...]``."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from episodes.digits.build import build_digits_benchmark
from episodes.digits.fonts import DIGIT_FONT_PACKAGES, installed_fonts, package_fonts
from episodes.digits.render import DEFAULT_MARGIN
from episodes.glyphs.build import BuildExistsError
from episodes.glyphs.fonts import parse_font_arg

__all__ = ["main"]

DESCRIPTION = (
    "Build the digits domain-shift benchmark offline: source = digits rendered from Debian "
    "font packages with light augmentation, target = scikit-learn's handwritten digits."
)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m episodes.digits --out DIR [...]``: build the digits benchmark.

    Returns:
        0 once built; 1 if the build failed (a missing font package, bad options, no
        scikit-learn); 2 if ``--out`` was refused (an earlier build without ``--force``, or
        anything else that is not a build) — nothing is written then.
    """
    parser = argparse.ArgumentParser(prog="python -m episodes.digits", description=DESCRIPTION)
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    fonts = parser.add_mutually_exclusive_group()
    fonts.add_argument(
        "--font",
        action="append",
        metavar="[SLUG=]PATH[:FACE]",
        help="a font file (repeat; replaces the default packages)",
    )
    fonts.add_argument(
        "--package",
        action="append",
        metavar="NAME",
        help=f"a Debian font package (repeat; default: the {len(DIGIT_FONT_PACKAGES)} packages "
        "of episodes.digits.DIGIT_FONT_PACKAGES)",
    )
    fonts.add_argument(
        "--all-installed",
        action="store_true",
        help="every font file under /usr/share/fonts instead (the build then depends on what "
        "this machine has installed)",
    )
    parser.add_argument("--copies", type=int, default=8, help="augmented images per font and digit")
    parser.add_argument("--margin", type=int, default=DEFAULT_MARGIN, help="margin in pixels")
    parser.add_argument("--seed", type=int, default=0, help="augmentation and split seed")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="font families held out")
    parser.add_argument(
        "--target-test-fraction", type=float, default=0.5, help="target images held out for test"
    )
    parser.add_argument(
        "--min-recognised",
        type=int,
        default=3,
        help="drop fonts whose clean digits the other fonts recognise fewer times (0: off)",
    )
    parser.add_argument("--workers", type=int, default=2, help="rendering processes")
    parser.add_argument("--force", action="store_true", help="replace an earlier build")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("fontTools").setLevel(logging.ERROR)  # notes on harmless font quirks
    try:
        if args.font:
            specs = tuple(parse_font_arg(a) for a in args.font)
        elif args.all_installed:
            specs = installed_fonts()
        else:
            specs = package_fonts(tuple(args.package or DIGIT_FONT_PACKAGES))
        start = time.perf_counter()
        manifest = build_digits_benchmark(
            args.out,
            specs,
            copies=args.copies,
            margin=args.margin,
            seed=args.seed,
            val_fraction=args.val_fraction,
            target_test_fraction=args.target_test_fraction,
            min_recognised=args.min_recognised,
            workers=args.workers,
            force=args.force,
        )
    except BuildExistsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (OSError, ValueError, ModuleNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    counts = manifest["counts"]
    splits = ", ".join(f"{s} {n}" for s, n in manifest["splits"].items())
    dropped = ", ".join(f"{n} {r}" for r, n in counts["dropped"].items()) or "none"
    print(
        f"{args.out}: {counts['fonts']} fonts of {counts['families']} families (of "
        f"{counts['candidate_fonts']} faces; dropped {dropped}); images: {splits}; "
        f"{time.perf_counter() - start:.1f}s"
    )
    return 0
