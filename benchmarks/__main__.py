"""``python -m benchmarks``: the side-by-side harness, :func:`benchmarks.run.main`."""

from benchmarks.run import main

raise SystemExit(main())
