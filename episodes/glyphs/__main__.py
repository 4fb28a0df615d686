"""``python -m episodes.glyphs``: see :func:`episodes.glyphs.cli.main`."""

import sys

from episodes.glyphs.cli import main

if __name__ == "__main__":
    sys.exit(main())
