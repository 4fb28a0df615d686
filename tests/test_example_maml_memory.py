"""examples/maml_memory.py in its quick mode: the checkpointed loop keeps a fraction of the stored
loop's graph for the same meta-gradient, and MAML and iMAML both learn the blob tasks."""

from __future__ import annotations

import re

from tests.conftest import run_example


def test_checkpoint_keeps_less_for_the_same_gradient_and_both_learners_learn() -> None:
    stdout = run_example("maml_memory.py", "--quick")
    kept = re.search(
        r"^10 inner steps: graph kept for the backward ([\d.]+) MiB \(store\), ([\d.]+) MiB "
        r"\(checkpoint\); meta-gradients differ by ([\d.e+-]+)$",
        stdout,
        re.M,
    )
    assert kept, stdout
    store, checkpoint, diff = (float(x) for x in kept.groups())
    assert checkpoint < store / 3  # the query pass and one step remain
    assert diff < 1e-4  # float32 round-off
    found = re.findall(r"^(\S+): 5-way 1-shot test accuracy ([\d.]+) ± ([\d.]+) %", stdout, re.M)
    accuracy = {name: float(mean) for name, mean, _ in found}
    assert sorted(accuracy) == ["imaml", "maml"], stdout
    assert accuracy["maml"] > 40 and accuracy["imaml"] > 40  # chance is 20%
