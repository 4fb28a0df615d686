"""``benchmarks/maml_memory.py --quick``: the table, the JSON and the plot of a tiny run, and
memory that stops growing with inner steps for the checkpointed and implicit learners."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).parents[1]
SCRIPT = REPO / "benchmarks" / "maml_memory.py"


def test_quick_benchmark_measures_every_method_and_memory_stays_flat(tmp_path: Path) -> None:
    out, figure = tmp_path / "memory.json", tmp_path / "memory.png"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(out), "--plot", str(figure)],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "| 8 |" in done.stdout and "| inner steps | peak MiB plain |" in done.stdout
    assert figure.read_bytes().startswith(b"\x89PNG")

    result = json.loads(out.read_text())
    assert set(result) == {"settings", "machine", "rows", "times_s"}
    assert result["settings"]["quick"] is True and result["settings"]["inner_steps"] == [1, 8]
    rows = {(r["method"], r["inner_steps"]): r for r in result["rows"]}
    assert set(rows) == {(m, s) for m in ("plain", "checkpoint", "implicit") for s in (1, 8)}
    for row in rows.values():
        assert row["peak_mib"] > 0 and row["median_ms"] > 0 and row["min_ms"] > 0
        assert row["time_ratio_to_plain"] > 0
    assert rows[("plain", 1)]["time_ratio_to_plain"] == 1.0
    # plain keeps every step's graph: 8 steps need clearly more than 1; the others do not grow
    plain_growth = rows[("plain", 8)]["peak_mib"] - rows[("plain", 1)]["peak_mib"]
    assert plain_growth > 3.0
    for method in ("checkpoint", "implicit"):
        assert rows[(method, 8)]["peak_mib"] < rows[("plain", 8)]["peak_mib"] - 0.5 * plain_growth
        assert rows[(method, 8)]["peak_mib"] < rows[(method, 1)]["peak_mib"] + 1.0
