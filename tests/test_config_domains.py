"""A property of the whole config schema: every numeric key, given 0, -1, nan, inf or a huge
value, either makes a run that completes with finite numbers, or fails before any run
directory exists with one line that names the key.

The keys come from the schema's dataclasses and their type hints, so a new field is covered
as soon as it is added; a run exercises the key (``model.maml.*`` runs MAML, ``finetune.*``
and ``linear_probe.*`` add that method to the test, ``pretrain.*`` runs the pretraining).
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from metatl import pretrain as pretrain_cli
from metatl import train as train_cli
from metatl.config import ConfigError, RunConfig, config_to_dict, flatten, load_config
from tests.conftest import deadline

NUMERIC = (int, float, list[int], list[float])


def numeric_leaves(cls: type, prefix: str = "") -> dict[str, type]:
    """Dotted key -> type of every int, float and list-of-number field of the schema."""
    hints = typing.get_type_hints(cls)
    leaves: dict[str, type] = {}
    for field in dataclasses.fields(cls):
        hint = hints[field.name]
        if dataclasses.is_dataclass(hint):
            leaves |= numeric_leaves(hint, f"{prefix}{field.name}.")  # type: ignore[arg-type]
        elif hint in NUMERIC:
            leaves[prefix + field.name] = hint
    return leaves


FIELDS = numeric_leaves(RunConfig)
HUGE = {int: "1000000000000", float: "1e30"}
DEADLINE_S = 60  # a tiny run takes about a second; one that does not end has a bad value


def values_for(kind: type) -> list[str]:
    """0, -1, nan, inf and a huge value, spelled as a user would type them."""
    huge = HUGE[float if kind in (float, list[float]) else int]
    values = ["0", "-1", "nan", "inf", huge]
    return [f"[{v}]" for v in values] if kind in (list[int], list[float]) else values


CASES = [(key, value) for key, kind in FIELDS.items() for value in values_for(kind)]

# What makes a run use the key.
EXERCISE = {
    "model.maml.": ["model.algorithm=maml"],
    "finetune.": ["test.methods=[finetune]"],
    "linear_probe.": ["test.methods=[linear]"],
}
CLIS: dict[str, Callable[[Sequence[str]], int]] = {
    "train": train_cli.main,
    "pretrain": pretrain_cli.main,
}


def tiny(folder_dataset: Path, out_dir: Path, cli: str) -> list[str]:
    """A run of a few steps on a few small episodes."""
    common = [
        "data.dataset=image_folder",
        f"data.root={folder_dataset}",
        f"out_dir={out_dir}",
        "name=run",
        "train.val_episodes=2",
        "train.val_query=2",
        "train.log_every=1",
        "test.episodes=2",
        "test.shots=[1]",
        "test.query=2",
    ]
    if cli == "pretrain":
        return [*common, "pretrain.epochs=1", "pretrain.batch_size=64"]
    return [
        *common,
        "train.steps=3",
        "train.val_every=3",
        "episodes.way=5",
        "episodes.shot=1",
        "episodes.query=2",
        "optim.lr_decay_every=1",  # so that optim.lr_decay acts within the run
    ]


def run_of(key: str) -> tuple[str, list[str]]:
    """The CLI and the extra overrides of a run that uses ``key``."""
    if key.startswith("pretrain."):
        return "pretrain", []
    extra = [o for prefix, more in EXERCISE.items() if key.startswith(prefix) for o in more]
    return "train", extra


def test_every_numeric_leaf_has_a_domain() -> None:
    from metatl.config.domains import numeric_fields

    defaults = flatten(config_to_dict(RunConfig()))

    def numeric(v: Any) -> bool:
        items = v if isinstance(v, list) and v else [v]
        return all(isinstance(x, int | float) and not isinstance(x, bool) for x in items)

    # An empty list default says nothing about its items: its type hint does (FIELDS), and
    # its domain must allow the empty list.
    empty = {k for k, v in defaults.items() if v == []}
    assert {k for k, v in defaults.items() if numeric(v) and k not in empty} == set(FIELDS) - empty
    assert all(numeric_fields(RunConfig)[k][1].empty for k in empty & set(FIELDS))
    assert len(FIELDS) > 40
    assert set(numeric_fields(RunConfig)) == set(FIELDS)
    for key, (kind, domain) in numeric_fields(RunConfig).items():
        assert kind == FIELDS[key] and domain is not None, key
        items = defaults[key] if isinstance(defaults[key], list) else [defaults[key]]
        assert all(v in domain for v in items), f"the default of {key} is outside its domain"
        assert not domain.describe(kind).endswith("inf]"), f"{key} has no upper bound"


@pytest.mark.parametrize(("key", "value"), CASES, ids=[f"{k}={v}" for k, v in CASES])
def test_a_number_runs_or_fails_early_naming_its_key(
    key: str, value: str, folder_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    cli, extra = run_of(key)
    out_dir = tmp_path / "runs"
    overrides = [*tiny(folder_dataset, out_dir, cli), *extra, f"{key}={value}"]
    try:
        config = load_config(None, overrides)
    except ConfigError as err:
        assert_one_line_naming(str(err), key)
        config = None
    with deadline(DEADLINE_S, f"{key}={value}"):
        code = CLIS[cli](overrides)
    if config is None or code != 0:
        assert code == 2, f"{key}={value}: exit code {code}"
        lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("error: ")]
        assert len(errors) == 1 and "Traceback" not in "\n".join(lines), lines
        assert_one_line_naming(errors[0], key)
        assert not out_dir.exists() or not any(out_dir.iterdir()), "a run directory was left"
        return
    assert_ran_correctly(out_dir / "run")


def assert_one_line_naming(message: str, key: str) -> None:
    assert "\n" not in message.strip(), message
    assert key in message, f"the message does not name {key}: {message}"


def assert_ran_correctly(run_dir: Path) -> None:
    """The run finished: finite results, finite metrics, positive learning rates."""
    results = json.loads((run_dir / "results.json").read_text())
    assert results["test"], "no test results"
    numbers = _numbers([results["test"], results["best_val"]])
    assert numbers and all(math.isfinite(x) for x in numbers), results["test"]
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        for name, x in flatten(record).items():
            if isinstance(x, float):
                assert math.isfinite(x), f"{name}={x} in metrics.jsonl"
                assert not name.endswith("/lr") or x > 0, f"{name}={x} in metrics.jsonl"


def _numbers(tree: Any) -> list[float]:
    if isinstance(tree, dict):
        return [x for v in tree.values() for x in _numbers(v)]
    if isinstance(tree, list):
        return [x for v in tree for x in _numbers(v)]
    is_number = isinstance(tree, int | float) and not isinstance(tree, bool)
    return [float(tree)] if is_number else []


# ---- what depends on the backbone: checked when it is built, before the run directory ------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["data.image_size=8"],
            "data.image_size=8 is too small for model.backbone=conv4, which takes 16 px and up",
        ),
        (
            ["model.input_size=12"],
            "model.input_size=12 is too small for model.backbone=conv4, which takes 16 px and up",
        ),
        (
            ["model.backbone=resnet12", "data.image_size=10"],
            "data.image_size=10 is too small for model.backbone=resnet12, which takes 16 px",
        ),
        (
            ["model.backbone=pixels"],
            "model.backbone=pixels has no weights, so model.algorithm=protonet has nothing to "
            "meta-train",
        ),
        (
            ["model.backbone=pixels", "model.algorithm=maml"],
            "model.backbone=pixels has no weights, so model.algorithm=maml has nothing",
        ),
    ],
)
def test_what_the_backbone_cannot_do_fails_before_the_run_directory(
    overrides: list[str],
    message: str,
    folder_dataset: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    out_dir = tmp_path / "runs"
    assert train_cli.main([*tiny(folder_dataset, out_dir, "train"), *overrides]) == 2
    errors = [e for e in capsys.readouterr().err.splitlines() if e.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], errors
    assert not out_dir.exists()


def test_pixels_without_meta_training_is_a_baseline(folder_dataset: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "runs"
    args = [*tiny(folder_dataset, out_dir, "train"), "model.backbone=pixels", "train.steps=0"]
    assert train_cli.main(args) == 0
    assert_ran_correctly(out_dir / "run")
