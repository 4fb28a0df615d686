"""examples/distributed_training.py in its quick mode, on one process and under torchrun."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).parents[1]


def _run(*launcher: str) -> str:
    result = subprocess.run(
        [*launcher, "examples/distributed_training.py", "--quick"],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1", "METATL_DIST_TIMEOUT_S": "120"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_two_processes_train_the_one_process_weights_bit_for_bit() -> None:
    one = _run(sys.executable)
    two = _run(
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"
    )
    assert "processes: 1" in one and "processes: 2" in two
    assert two.count("weights: ") == 1  # rank 0 alone prints
    report = [re.findall(r"^(test .*|weights: \w+)$", out, re.M) for out in (one, two)]
    assert len(report[0]) == 3, one  # MAML, the pixel baseline, the digest
    assert report[0] == report[1], (one, two)  # same test numbers, same weights to the bit
    maml = float(re.search(r"maml: ([\d.]+)", one).group(1))  # type: ignore[union-attr]
    assert maml > 40  # 5-way: chance is 20%
