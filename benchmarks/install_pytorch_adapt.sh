#!/usr/bin/env bash
# pytorch-adapt (the peer of benchmarks/peer_dann_digits.py) next to the project's environment,
# not in it: its wheel pins torchmetrics==0.9.3, which imports pkg_resources (setuptools < 81).
# They go, without dependencies, into .peers/pytorch-adapt, which the benchmark appends to
# sys.path; torch and numpy stay the project's own.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
"$PYTHON" -m pip install --quiet --no-deps --target .peers/pytorch-adapt \
	pytorch-adapt==0.0.83 torchmetrics==0.9.3 pytorch-metric-learning==2.9.0 "setuptools<81"
"$PYTHON" -c "import sys; sys.path.append('.peers/pytorch-adapt'); import pytorch_adapt; print('pytorch-adapt', pytorch_adapt.__version__)"
