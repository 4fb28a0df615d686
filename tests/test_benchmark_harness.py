"""``python -m benchmarks --quick``: the side-by-side harness writes a table and a JSON file with
positive times and FLOP counts, and every peer's meta-gradient agrees with metatl's in fp32.

Runs metatl and the hand-written references always; learn2learn, higher and easyfsl only if
``bash benchmarks/install_peers.sh`` put them in ``.peers/meta`` (or they are installed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parents[1]
ROW_METHODS = {  # the methods that run without any peer installed
    "maml": {"metatl", "metatl, channels_last", "hand-written autograd"},
    "anil": {"metatl", "metatl, trunk not cached", "metatl full MAML (all)"},
    "protonet": {"metatl", "metatl, channels_last", "hand-written autograd"},
    "sampling": {"metatl"},
    "feature_cache": {"metatl", "metatl, uncached"},
}
PEER_METHODS = {"learn2learn", "higher", "easyfsl"}


def test_quick_harness_table_json_and_gradient_agreement(tmp_path: Path) -> None:
    out = tmp_path / "harness.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--threads", "1", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "| row | setting | method | median ms | ratio to metatl |" in done.stdout
    assert "GEMM peak on cpu" in done.stdout

    result = json.loads(out.read_text())
    assert set(result) == {"settings", "machine", "missing_peers", "results"}
    assert result["settings"]["quick"] is True and result["settings"]["repeats"] == 2
    peaks = result["machine"]["gemm_peak_gflops"]
    assert peaks["fp32"] > 0 and peaks["bf16"] > 0
    missing = result["missing_peers"]
    for name, why in missing.items():
        assert "install_peers.sh" in why or why == "--no-peers", (name, why)
        assert f"peer {name} left out" in done.stdout

    rows = result["results"]
    by_row: dict[str, set[str]] = {}
    for r in rows:
        by_row.setdefault(r["row"], set()).add(r["method"])
        assert r["median_ms"] > 0 and r["min_ms"] > 0 and len(r["times_ms"]) == 2, r
        assert r["ratio_to_metatl"] > 0
        if r["method"] == "metatl":
            assert r["ratio_to_metatl"] == 1.0
        assert r["method"] not in missing, r  # a missing peer has no rows
        if r["row"] == "sampling":
            assert r["unit"] == "ms per episode"
            continue
        if r["row"] == "feature_cache":  # every round checked the accuracies equal
            assert r["unit"] == "ms per episode" and r["note"] == "accuracies identical"
            continue
        assert r["flops"] > 0, r
        assert r["gflops_per_s"] > 0 and r["percent_of_peak"] > 0
        assert r["peak_memory_bytes"] > 0
        if r["method"] == "metatl" or r["grad_max_rel_diff"] is None:
            assert r["method"] in {"metatl", "metatl full MAML (all)", "easyfsl"}, r
        else:  # same weights, same episodes: the same meta-gradient up to fp32 round-off
            assert r["grad_max_rel_diff"] < 1e-4, (r["setting"], r["method"])
    for row, methods in ROW_METHODS.items():
        assert methods <= by_row[row], (row, by_row[row])
    for row, methods in by_row.items():  # beyond the always-there methods, only peers
        assert methods - ROW_METHODS[row] - {"hand-written autograd"} <= PEER_METHODS, row

    settings = {r["setting"] for r in rows if r["row"] == "maml"}
    assert any("2nd" in s for s in settings) and any("1st" in s for s in settings)
    cache = {r["method"]: r for r in rows if r["row"] == "feature_cache"}
    # 4 episodes of 80 images against the whole split of 96 once: the cache is not faster
    # at this size, but the row's two paths are timed and set against each other
    assert cache["metatl, uncached"]["ratio_to_metatl"] > 0
    assert "time_to_accuracy" not in by_row  # an hour: only when asked for


def test_gpu_estimate_counts_the_protonet_step_flops_by_hand(tmp_path: Path) -> None:
    """A ProtoNet step's FLOPs on paper: Conv-4 (64 filters) at 28x28x1 runs 2 * 9 * Cin * 64
    multiply-adds per output pixel, at 28, 14, 7 and 3 pixels a side; the backward costs twice
    the forward but for the first layer's input gradient, which nothing needs; the query to
    prototype distances are one matmul, whose backward costs two."""
    out = tmp_path / "gpu.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "benchmarks/gpu_estimate.py", "--grid", "quick"]
    command += ["--rows", "protonet", "--out", str(out)]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (row,) = json.loads(out.read_text())["rows"]
    first = 2 * 9 * 1 * 64 * 28 * 28
    forward = first + sum(2 * 9 * 64 * 64 * n * n for n in (14, 7, 3))
    images = 5 * 1 + 5 * 3  # 5-way 1-shot 3 queries
    distances = 2 * 15 * 5 * 64  # queries x prototypes x features, one matmul
    expected = images * (3 * forward - first) + 3 * distances
    assert row["gflop"] * 1e9 == pytest.approx(expected, rel=1e-12)
    assert row["ops"] > 20 and row["mbytes"] > 0
    assert row["bound"] == "launches"  # 1 GFLOP is about a microsecond of an H100
    assert row["gpu_ms"] == pytest.approx(row["ops"] * 8e-3)  # the default 8 us per op
