"""``python -m episodes.digits``: see :func:`episodes.digits.cli.main`."""

import sys

from episodes.digits.cli import main

if __name__ == "__main__":
    sys.exit(main())
