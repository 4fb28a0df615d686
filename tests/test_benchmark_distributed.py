"""``benchmarks/distributed_step.py --quick``: real 1- and 2-process runs of metatl.train, a
markdown table and a JSON file of positive step times (ProtoNet only, to stay short)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).parents[1]
SCRIPT = REPO / "benchmarks" / "distributed_step.py"


def _benchmark_module():
    spec = importlib.util.spec_from_file_location("distributed_step", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_benchmark_writes_positive_step_times(tmp_path: Path) -> None:
    out = tmp_path / "distributed.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--algorithms", "protonet", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "| protonet | 2 processes x 1 thread |" in done.stdout

    setups = _benchmark_module().SETUPS
    result = json.loads(out.read_text())
    assert set(result) == {"settings", "machine", "summary", "runs", "failures"}
    assert isinstance(result["failures"], list)
    assert result["settings"]["quick"] is True and result["settings"]["repeats"] == 1
    assert result["settings"]["meta_batch"] == 4
    assert result["machine"]["cpus"] >= 1

    assert list(result["summary"]) == ["protonet"]
    rows = result["summary"]["protonet"]
    assert list(rows) == list(setups)
    for setup, row in rows.items():
        assert row["median_ms"] > 0 and row["min_ms"] > 0 and row["episodes_per_s"] > 0
        for key in ("speedup_vs_1 process x 1 thread", "speedup_vs_1 process x 2 threads"):
            assert row[key] > 0, (setup, key)
    assert rows["1 process x 1 thread"]["speedup_vs_1 process x 1 thread"] == 1.0

    runs = result["runs"]
    assert sorted(r["setup"] for r in runs) == sorted(setups)
    for run in runs:
        assert (run["processes"], run["threads_per_process"]) == setups[run["setup"]]
        assert len(run["window_step_times_s"]) >= 2  # the first window is skipped
        assert all(t > 0 for t in run["window_step_times_s"])
        assert run["step_time_s"] > 0 and run["process_wall_s"] > run["step_time_s"]
