#!/usr/bin/env bash
# The meta-learning peers of benchmarks/run.py, next to the project's environment, not in it:
# learn2learn 0.2.0 (built from its sdist), higher 0.2.1 and easyfsl 1.5.0 go, without their
# declared dependencies (learn2learn's pin numpy<2 and pull in gsutil, qpth, ...), into
# .peers/meta, which the harness appends to sys.path; torch, numpy and friends stay the
# project's own. Only the pure-Python modules they import at import time are added there.
#
# learn2learn 0.2.0's sdist ships Cython output too old for Python 3.11+, so its three .pyx
# files are re-translated with `cython -3` first. Cython, setuptools and wheel live in a
# throw-away virtual environment that is deleted at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
TARGET=${TARGET:-.peers/meta}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

"$PYTHON" -m venv "$WORK/build"
"$WORK/build/bin/python" -m pip install --quiet cython "setuptools<81" wheel
"$WORK/build/bin/python" -m pip download --quiet --no-deps --no-binary :all: \
	-d "$WORK" learn2learn==0.2.0
tar -xzf "$WORK"/learn2learn-0.2.0.tar.gz -C "$WORK"
(
	cd "$WORK/learn2learn-0.2.0"
	for name in meta_dataset task_dataset transforms; do
		"$WORK/build/bin/cython" -3 "learn2learn/data/$name.pyx"
	done
	"$WORK/build/bin/python" -m pip wheel --quiet --no-deps --no-build-isolation -w "$WORK/wheels" .
)

mkdir -p "$TARGET"
"$PYTHON" -m pip install --quiet --no-deps --upgrade --target "$TARGET" \
	"$WORK"/wheels/learn2learn-0.2.0-*.whl higher==0.2.1 easyfsl==1.5.0 \
	gym==0.26.2 gym-notices==0.0.8 cloudpickle==3.1.1
# easyfsl's and learn2learn's wheels also ship top-level `tests` and `scripts` packages.
rm -rf "$TARGET/tests" "$TARGET/scripts"

"$PYTHON" - "$TARGET" <<'EOF'
import sys

sys.path.append(sys.argv[1])
import easyfsl.methods
import higher
import learn2learn

print(f"{sys.argv[1]}: learn2learn {learn2learn.__version__}, higher and easyfsl import")
EOF
