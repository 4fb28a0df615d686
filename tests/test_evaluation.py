"""Paired comparisons, the method registry and ``python -m metatl.evaluate --methods``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from metatl import evaluate as evaluate_cli
from metatl.algorithms import MAML, ProtoNet
from metatl.algorithms.finetune import FineTune
from metatl.algorithms.linear_probe import LinearProbe
from metatl.backbones import Pixels
from metatl.config import RunConfig, config_to_dict, load_config
from metatl.training import build_learner, save_checkpoint
from metatl.training.evaluation import (
    EvalResult,
    UnknownMethodError,
    build_methods,
    few_episodes_note,
    format_paired_table,
    format_table,
    list_methods,
    paired_difference,
    register_method,
)
from tests.conftest import make_pattern_images


def test_paired_difference_matches_the_closed_form() -> None:
    a = EvalResult.from_accuracies([1.0, 0.8, 0.6, 1.0, 0.4])
    b = EvalResult.from_accuracies([0.8, 0.8, 0.2, 0.6, 0.4])
    d = [0.2, 0.0, 0.4, 0.4, 0.0]  # a - b per episode
    mean = sum(d) / 5
    std = math.sqrt(sum((x - mean) ** 2 for x in d) / 4)
    got_mean, got_ci = paired_difference(a, b)
    assert got_mean == pytest.approx(0.2) and got_ci == pytest.approx(1.96 * std / math.sqrt(5))
    assert paired_difference(b, a) == pytest.approx((-got_mean, got_ci))
    # Correlated methods: the paired interval is far narrower than either method's own.
    shifted = EvalResult.from_accuracies([x - 0.1 for x in a.accuracies])
    assert paired_difference(a, shifted) == pytest.approx((0.1, 0.0), abs=1e-12)
    assert a.ci95 > 0.2


def test_paired_difference_refuses_different_episodes() -> None:
    a = EvalResult.from_accuracies([1.0, 0.5], episode_set="test, seed 4")
    with pytest.raises(ValueError, match="same episodes"):
        paired_difference(a, EvalResult.from_accuracies([1.0, 0.5], episode_set="test, seed 5"))
    with pytest.raises(ValueError, match="2 episodes .* 3 of"):
        paired_difference(a, EvalResult.from_accuracies([1.0, 0.5, 0.0]))


def test_paired_table() -> None:
    rows = {
        "5-way 1-shot": {
            "protonet": EvalResult.from_accuracies([1.0, 0.8, 0.6]),
            "linear": EvalResult.from_accuracies([0.8, 0.8, 0.4]),
            "pixels": EvalResult.from_accuracies([0.4, 0.4, 0.4]),
        },
        "5-way 5-shot": {"protonet": EvalResult.from_accuracies([1.0, 1.0, 1.0])},
    }
    lines = format_paired_table(rows).splitlines()
    assert lines[:2] == ["| difference | 5-way 1-shot | 5-way 5-shot |", "| --- | --- | --- |"]
    mean, ci = paired_difference(rows["5-way 1-shot"]["protonet"], rows["5-way 1-shot"]["linear"])
    assert lines[2] == f"| protonet − linear | +{100 * mean:.2f} ± {100 * ci:.2f} | - |"
    assert lines[3].startswith("| protonet − pixels | +40.00 ± ")
    assert lines[4].startswith("| linear − pixels | +26.67 ± ") and len(lines) == 5
    against = format_paired_table(rows, reference="pixels").splitlines()
    assert [line.split(" | ")[0] for line in against[2:]] == [
        "| protonet − pixels",
        "| linear − pixels",
    ]
    assert format_paired_table({"s": {"protonet": rows["5-way 5-shot"]["protonet"]}}) == ""
    with pytest.raises(ValueError, match="reference method 'maml'"):
        format_paired_table(rows, reference="maml")


def test_registry_builds_methods_on_the_checkpoint_backbone() -> None:
    config = RunConfig()
    learner = build_learner(config, 1, 28)
    assert {"protonet", "linear", "finetune", "pixels"} <= set(list_methods())
    methods = build_methods(["protonet", "linear", "finetune", "pixels", "linear"], learner, config)
    assert list(methods) == ["protonet", "linear", "finetune", "pixels"]
    assert methods["protonet"] is learner  # the checkpoint's own algorithm is itself
    assert isinstance(methods["linear"], LinearProbe) and isinstance(methods["finetune"], FineTune)
    assert methods["linear"].backbone is learner.backbone is methods["finetune"].backbone
    assert isinstance(methods["pixels"], ProtoNet) and isinstance(
        methods["pixels"].backbone, Pixels
    )
    with pytest.raises(UnknownMethodError, match="'knn'; choose from: protonet, finetune"):
        build_methods(["knn"], learner, config)


def test_registered_methods_and_config_sections() -> None:
    config = load_config(
        None,
        [
            "finetune.n_blocks=2",
            "finetune.steps=7",
            "linear_probe.normalize=center_l2",
            "model.maml.test_inner_steps=4",
        ],
    )
    learner = build_learner(config, 1, 28)
    built = build_methods(["finetune", "linear", "maml"], learner, config)
    assert isinstance(built["finetune"], FineTune)
    assert (built["finetune"].n_blocks, built["finetune"].steps) == (2, 7)
    assert built["linear"].normalize == "center_l2"
    assert isinstance(built["maml"], MAML) and built["maml"].test_inner_steps == 4
    assert built["maml"].backbone is learner.backbone

    register_method("nearest-mean-copy")(lambda learner, config: ProtoNet(learner.backbone))
    try:
        assert "nearest-mean-copy" in list_methods()
        with pytest.warns(UserWarning, match="registered twice"):
            register_method("nearest-mean-copy")(lambda learner, config: learner)
        assert build_methods(["nearest-mean-copy"], learner, RunConfig())["nearest-mean-copy"] is (
            learner
        )
    finally:
        from metatl.training import evaluation

        del evaluation._METHODS["nearest-mean-copy"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained Conv-4 ProtoNet checkpoint over a 6-class image-folder test split."""
    root = tmp_path_factory.mktemp("folder")
    data = make_pattern_images(n_classes=6, per_class=8, seed=2)
    for i, (image, label) in enumerate(zip(data.images, data.labels, strict=True)):
        folder = root / "test" / data.class_names[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0].numpy(), mode="L").save(folder / f"{i:03d}.png")
    config = load_config(
        None, ["data.dataset=image_folder", f"data.root={root}", "test.query=3", "test.shots=[1]"]
    )
    torch.manual_seed(0)
    learner = build_learner(config, 1, 28)
    path = root / "run" / "best.pt"
    path.parent.mkdir()
    save_checkpoint(path, {"model": learner.state_dict(), "config": config_to_dict(config)})
    return path


def test_evaluate_cli_with_methods(checkpoint: Path, tmp_path: Path, capsys) -> None:
    out_json = tmp_path / "results.json"
    args = ["--checkpoint", str(checkpoint.parent), "--episodes", "4", "--json", str(out_json)]
    methods = ["--methods", "protonet", "linear", "finetune", "pixels", "test.way=3"]
    assert evaluate_cli.main([*args, *methods]) == 0
    out = capsys.readouterr().out
    assert "| setting | protonet | linear | finetune | pixels |" in out
    assert "| 3-way 1-shot | " in out  # the override after the method names applied
    assert "| difference | 3-way 1-shot |" in out
    assert "| protonet − linear | " in out and "| finetune − pixels | " in out
    results = json.loads(out_json.read_text())
    assert set(results["3-way 1-shot"]) == {"protonet", "linear", "finetune", "pixels"}
    assert all(r["episodes"] == 4 for r in results["3-way 1-shot"].values())

    # Same episodes whatever else is evaluated: linear alone scores exactly the same.
    assert evaluate_cli.main([*args, "--methods", "linear", "--way", "3"]) == 0
    alone = json.loads(out_json.read_text())["3-way 1-shot"]["linear"]
    assert alone == results["3-way 1-shot"]["linear"]
    assert "Paired differences" not in capsys.readouterr().out  # one method, no pairs

    assert evaluate_cli.main([*args, "--methods", "protonet", "mamll"]) == 2
    assert "unknown evaluation method 'mamll'" in capsys.readouterr().err
    assert evaluate_cli.main([*args, "finetune.stepz=3"]) == 2
    assert "finetune" in capsys.readouterr().err


def test_one_episode_has_no_interval_and_few_episodes_get_a_footnote() -> None:
    one = EvalResult.from_accuracies([0.6])
    assert math.isnan(one.ci95)
    assert one.summary() == {"accuracy": 0.6, "ci95": None, "episodes": 1}
    json.dumps(one.summary(), allow_nan=False)  # strict JSON: null, never a bare NaN
    rows = {"5-way 1-shot": {"protonet": one, "pixels": EvalResult.from_accuracies([0.2])}}
    assert format_table(rows).splitlines()[2:] == [
        "| 5-way 1-shot | 60.00 ± n/a | 20.00 ± n/a |",
        "",
        "Note: 1 episode per setting; below 30 the normal approximation behind the 95% "
        "intervals is doubtful (n/a: one episode gives no interval).",
    ]
    assert format_paired_table(rows).splitlines()[2] == "| protonet − pixels | +40.00 ± n/a |"

    ten = EvalResult.from_accuracies([0.5] * 5 + [1.0] * 5)
    assert format_table({"s": {"m": ten}}).endswith(
        f"| s | 75.00 ± {100 * ten.ci95:.2f} |\n\nNote: 10 episodes per setting; below 30 the "
        "normal approximation behind the 95% intervals is doubtful."
    )
    thirty = EvalResult.from_accuracies([0.5, 1.0] * 15)
    assert "Note" not in format_table({"s": {"m": thirty, "n": thirty}})
    assert few_episodes_note([]) == few_episodes_note([0, 600]) == ""
    assert few_episodes_note([600, 10, 4, 10]).startswith("Note: 4/10 episodes per setting;")
