"""The layer-transfer study: its plan, its tasks, its networks, and a whole small study that
stops and resumes to the same numbers."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
from pathlib import Path

import pytest
import torch

from episodes import merge_by_class
from metatl.config import ConfigError, load_config
from metatl.tracking import create_tracker
from metatl.training.checkpoint import CheckpointError, load_checkpoint
from metatl.training.preemption import Preempted
from metatl.training.pretrain import SupervisedModel
from metatl.transfer.layers import (
    StudyRun,
    Task,
    TaskTrainer,
    build_run_model,
    make_tasks,
    n_values,
    study_plan,
)
from metatl.transfer.study import read_results, run_layer_study
from tests.conftest import make_pattern_images, run_example, stoppable


def small(folder_dataset: Path, out_dir: Path, name: str, *extra: str) -> list[str]:
    """40 classes of 20 images (the three splits pooled): 20 per task, 4 held out each."""
    return [
        "data.dataset=image_folder",
        f"data.root={folder_dataset}",
        f"out_dir={out_dir}",
        f"name={name}",
        "layers.splits=[random]",
        "layers.seeds=[0]",
        "layers.treatments=[AnB,BnB+,random]",
        "pretrain.epochs=2",
        "pretrain.batch_size=32",
        "pretrain.lr=0.05",
        "train.log_every=5",
        "tracking.wandb.mode=disabled",
        *extra,
    ]


# ---- the plan ------------------------------------------------------------------------------


def test_the_plan_puts_the_bases_first_and_covers_every_treatment_and_n() -> None:
    layers = load_config(None, ["layers.splits=[random,stroke]", "layers.seeds=[0,1]"]).layers
    plan = study_plan(layers, blocks=4)
    assert len(plan) == 2 * 2 * (2 + 3 * 5)
    assert [r.key for r in plan[:3]] == [
        "random/seed0/baseA",
        "random/seed0/baseB",
        "random/seed0/BnB-n1",
    ]
    keys = [r.key for r in plan]
    assert len(set(keys)) == len(keys)
    for position, run in enumerate(plan):  # every source is trained before its users
        source = run.source()
        if source is not None:
            assert keys.index(source.key) < position
    anb = StudyRun("stroke", 1, "AnB+", 2)
    assert (anb.task, anb.frozen_blocks, anb.source().key) == ("B", 0, "stroke/seed1/baseA")
    assert StudyRun("random", 0, "random", 3).frozen_blocks == 3
    assert StudyRun("random", 0, "random", 3).source() is None


def test_n_runs_over_the_blocks_below_the_top_and_bad_ranges_are_refused() -> None:
    layers = load_config().layers
    assert n_values(layers, 4) == [1, 2, 3]
    assert n_values(load_config(None, ["layers.first_n=2"]).layers, 5) == [2, 3, 4]
    with pytest.raises(ConfigError, match=r"first_n <= last_n <= 3 \(the backbone has 4"):
        n_values(load_config(None, ["layers.last_n=4"]).layers, 4)
    with pytest.raises(ConfigError, match="2 or more blocks"):
        n_values(layers, 1)


# ---- tasks ---------------------------------------------------------------------------------


def test_held_out_images_are_a_seeded_share_of_every_class() -> None:
    data = make_pattern_images(6, 10, seed=3)
    train, held = data.hold_out(0.2, seed=5)
    assert torch.equal(train.class_counts(), torch.full((6,), 8))
    assert torch.equal(held.class_counts(), torch.full((6,), 2))
    _, again_held = data.hold_out(0.2, seed=5)
    assert torch.equal(held.images, again_held.images)
    assert not torch.equal(held.images, data.hold_out(0.2, seed=6)[1].images)
    # a class's held-out images do not depend on the other classes present
    alone = data.select_classes([4]).hold_out(0.2, seed=5)[1]
    assert torch.equal(alone.images, held.images[held.labels == 4])
    pooled = torch.cat([train.images, held.images]).flatten(1)
    assert len(torch.unique(pooled, dim=0)) == 60  # every image in exactly one part
    with pytest.raises(ValueError, match="fewer than 2 images"):
        make_pattern_images(2, 1).hold_out(0.5, 0)


def test_merging_splits_joins_classes_of_the_same_name() -> None:
    a = make_pattern_images(3, 2, seed=1)  # class000..class002
    b = make_pattern_images(4, 2, seed=2).select_classes([3, 1])  # class003, class001
    merged = merge_by_class([a, b], "both")
    assert merged.class_names == ("class000", "class001", "class002", "class003")
    assert merged.labels.tolist() == [0, 0, 1, 1, 2, 2, 1, 1, 3, 3]  # b keeps its image order
    assert torch.equal(merged.images[6:8], b.images[:2])


def test_tasks_split_the_classes_and_keep_their_held_out_images_apart() -> None:
    pool = make_pattern_images(12, 10, seed=4)
    layers = load_config(None, ["layers.held_out=0.3"]).layers
    tasks = make_tasks(pool, "random", 7, layers)
    a, b = tasks.a, tasks.b
    assert set(a.train.class_names).isdisjoint(b.train.class_names)
    assert len(a.train.class_names) + len(b.train.class_names) == 12
    assert a.train.class_names == a.test.class_names
    assert (len(b.train), len(b.test)) == (6 * 7, 6 * 3)
    assert tasks.kind == "similar" and "random half" in tasks.reason
    capped = make_tasks(pool, "random", 7, load_config(None, ["layers.max_classes=4"]).layers)
    assert capped.b.train.num_classes == 4
    assert set(capped.b.train.class_names) <= set(b.train.class_names)


def test_a_split_that_needs_unihan_names_the_classes_it_cannot_place() -> None:
    layers = load_config(None, ["layers.splits=[stroke]"]).layers
    try:
        make_tasks(make_pattern_images(4, 4), "stroke", 0, layers)
    except FileNotFoundError:
        pytest.skip("no Unihan data here (Debian package unicode-data)")
    except ConfigError as err:
        assert "layers.splits=stroke" in str(err) and "class000" in str(err)
    else:
        raise AssertionError("a stroke split of non-characters was accepted")


def test_groups_come_from_a_csv_file(tmp_path: Path) -> None:
    pool = make_pattern_images(6, 4)
    groups = tmp_path / "groups.csv"
    groups.write_text("class,group\n" + "".join(f"class{c:03d},{'ab'[c % 2]}\n" for c in range(6)))
    layers = load_config(
        None, ["layers.splits=[groups]", f"layers.groups_file={groups}", "layers.a_groups=[a]"]
    ).layers
    tasks = make_tasks(pool, "groups", 0, layers)
    assert tasks.a.train.class_names == ("class000", "class002", "class004")
    missing = load_config(None, ["layers.splits=[groups]", "layers.a_groups=[a]"]).layers
    with pytest.raises(ConfigError, match="needs layers.groups_file"):
        make_tasks(pool, "groups", 0, missing)


# ---- the networks --------------------------------------------------------------------------


def _task(classes: int = 4) -> Task:
    data = make_pattern_images(classes, 12, seed=2)
    return Task(*data.hold_out(0.25, 0))


@pytest.mark.parametrize("backbone", ["conv4", "resnet12"])
def test_a_transferred_network_copies_exactly_the_first_n_blocks(backbone: str) -> None:
    config = load_config(None, [f"model.backbone={backbone}"])
    task = _task()
    base_b = build_run_model(config, StudyRun("random", 0, "baseB"), task, None)
    source = build_run_model(config, StudyRun("random", 0, "baseA"), _task(6), None)
    anb = build_run_model(config, StudyRun("random", 0, "AnB", 2), task, source.state_dict())
    for k, (block, copied, fresh) in enumerate(
        zip(anb.backbone.blocks, source.backbone.blocks, base_b.backbone.blocks, strict=True)
    ):
        expected = copied if k < 2 else fresh  # above n: baseB's own initial draw
        for (name, a), b in zip(
            block.state_dict().items(), expected.state_dict().values(), strict=True
        ):
            assert torch.equal(a, b), (k, name)
    first_a, first_b = (next(m.backbone.blocks[0].parameters()) for m in (source, base_b))
    assert not torch.equal(first_a, first_b)  # baseA and baseB start from different draws


def test_frozen_blocks_do_not_change_while_the_rest_trains(tmp_path: Path) -> None:
    config = load_config(
        None, ["pretrain.epochs=2", "pretrain.batch_size=16", "tracking.wandb.mode=disabled"]
    )
    task = _task()
    model = build_run_model(config, StudyRun("random", 0, "random", 2), task, None)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with contextlib.closing(create_tracker(config, tmp_path)) as tracker:
        trainer = TaskTrainer(model, config, task.train, task.test, tmp_path, tracker)
        best = trainer.fit()
    after = model.state_dict()
    frozen = [k for k in after if k.startswith(("backbone.features.0.", "backbone.features.1."))]
    assert frozen and any("running_mean" in k for k in frozen)
    for key in after:
        assert torch.equal(before[key], after[key]) == (key in frozen), key
    assert 0.0 <= best["accuracy"] <= 1.0 and best["step"] == trainer.total_steps


# ---- a whole study -------------------------------------------------------------------------


def test_a_study_trains_every_run_and_transfer_beats_chance(
    folder_dataset: Path, tmp_path: Path
) -> None:
    result = run_layer_study(load_config(None, small(folder_dataset, tmp_path, "study")))
    study = tmp_path / "study"
    keys = [r["run"] for r in result.records]
    assert keys == [
        r.key for r in study_plan(load_config(None, small(folder_dataset, tmp_path, "x")).layers, 4)
    ]
    assert read_results(study) == result.records
    meta = json.loads((study / "study.json").read_text())
    assert meta["blocks"] == 4 and meta["n_values"] == [1, 2, 3]
    assert meta["splits"]["random"]["classes_b"] == 20 and meta["wall_time_s"] > 0
    split = json.loads((study / "splits" / "random-seed0.json").read_text())
    assert len(split["A"]) == len(split["B"]) == 20
    by_key = {r["run"]: r for r in result.records}
    assert by_key["random/seed0/baseB"]["test_images"] == 20 * 4
    assert by_key["random/seed0/baseB"]["accuracy"] > 0.5  # 20 classes: chance is 0.05
    assert by_key["random/seed0/AnB-n1"]["accuracy"] > 0.5
    assert (study / "runs" / "random" / "seed0" / "AnB-n3" / "best.pt").is_file()


def test_a_stopped_study_resumes_to_the_same_numbers(
    folder_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    extra = ("layers.treatments=[AnB+]", "layers.first_n=2", "layers.last_n=2")
    whole = run_layer_study(load_config(None, small(folder_dataset, tmp_path, "whole", *extra)))

    calls = {"n": 0}
    forward = SupervisedModel.forward

    def interrupted(self: SupervisedModel, x: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] in (25, 45):  # baseB step 4, then AnB+-n2 step 3 (21 forwards a run)
            os.kill(os.getpid(), signal.SIGTERM)
        return forward(self, x)

    monkeypatch.setattr(SupervisedModel, "forward", interrupted)
    cut = tmp_path / "cut"
    hint = rf"transfer layers --resume {cut}"
    with pytest.raises(Preempted, match=hint):
        stoppable(
            run_layer_study, load_config(None, small(folder_dataset, tmp_path, "cut", *extra))
        )
    assert [r["run"] for r in read_results(cut)] == ["random/seed0/baseA"]
    with pytest.raises(Preempted, match=hint):
        stoppable(run_layer_study, load_config(), resume_dir=cut)
    assert len(read_results(cut)) == 2
    monkeypatch.undo()
    resumed = run_layer_study(load_config(), resume_dir=cut)

    strip = lambda r: {k: v for k, v in r.items() if k != "train_time_s"}  # noqa: E731
    assert [strip(r) for r in resumed.records] == [strip(r) for r in whole.records]
    final = load_checkpoint(cut / "runs" / "random" / "seed0" / "AnB+-n2" / "last.pt")
    reference = load_checkpoint(
        tmp_path / "whole" / "runs" / "random" / "seed0" / "AnB+-n2" / "last.pt"
    )
    for key, value in reference["model"].items():
        assert torch.equal(final["model"][key], value), key


def test_bad_studies_are_refused_before_anything_is_written(
    folder_dataset: Path, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="drop model.pretrained"):
        run_layer_study(
            load_config(None, small(folder_dataset, tmp_path, "p", "model.pretrained=x.pt"))
        )
    with pytest.raises(ConfigError, match="last_n"):
        run_layer_study(load_config(None, small(folder_dataset, tmp_path, "n", "layers.last_n=7")))
    assert not any(tmp_path.iterdir())
    with pytest.raises(CheckpointError, match="not a layer study"):
        run_layer_study(load_config(), resume_dir=tmp_path)


# ---- the command ---------------------------------------------------------------------------


def test_the_command_runs_a_quick_study_and_writes_its_report(
    folder_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from metatl.transfer.__main__ import main

    args = small(folder_dataset, tmp_path, "cli", "layers.last_n=1")
    assert main(["layers", "--quick", *args]) == 0
    study = tmp_path / "cli"
    assert f"layer study {study}: 5 runs" in capsys.readouterr().out
    report = (study / "report.md").read_text()
    assert "## Findings" in report and "| baseB |" in report
    config = (study / "config.yaml").read_text()
    assert "max_classes: 40" in config  # --quick's, and the overrides after it win:
    assert "epochs: 2" in config
    tracked = (study / "metrics.jsonl").read_text()  # the study's own tracker (and W&B)
    assert '"layers/finding/generality"' in tracked and '"key": "layers/figure2"' in tracked

    assert main(["layers", "--resume", str(study), "--quick"]) == 2
    assert "--resume continues a run with the config" in capsys.readouterr().err
    assert main(["layers", *small(folder_dataset, tmp_path, "bad", "layers.splits=[colour]")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: layers.splits=['colour'] has 'colour', not allowed")
    assert not (tmp_path / "bad").exists()


def test_the_example_runs_a_quick_study_on_blobs_and_stripes(tmp_path: Path) -> None:
    stdout = run_example("layer_transfer_study.py", "--quick", "--out-dir", str(tmp_path))
    accuracy = dict(re.findall(r"^  (\S+)\s+([\d.]+)%$", stdout, re.M))
    assert len(accuracy) == 2 * (2 + 5), stdout  # bases and every treatment at n=3
    assert float(accuracy["random/seed0/baseB"]) > 50  # 20 classes: chance is 5%
    assert float(accuracy["groups/seed0/baseA"]) > 50
    verdicts = re.findall(r"^  (held|not held|inconclusive) ", stdout, re.M)
    assert len(verdicts) == 6
    (study,) = tmp_path.iterdir()
    assert (study / "report.md").is_file() and (study / "figure3.png").is_file()


def test_every_network_is_a_wandb_run_of_its_own_in_the_study_group(
    folder_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    for name in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home"))
    extra = ("layers.treatments=[AnB]", "layers.last_n=1", "tracking.wandb.mode=offline")
    run_layer_study(load_config(None, small(folder_dataset, tmp_path, "wb", *extra)))
    study = tmp_path / "wb"
    ids = {
        path.parent.name: path.read_text().strip()
        for path in [study / "wandb_run_id", *study.glob("runs/*/*/*/wandb_run_id")]
    }
    assert set(ids) == {"wb", "baseA", "baseB", "AnB-n1"}
    assert len(set(ids.values())) == 4  # the summary and each network: a W&B run each
    config = json.loads(
        (study / "runs/random/seed0/AnB-n1/metrics.jsonl").read_text().split("\n")[0]
    )
    assert config["config"]["tracking"]["wandb"]["group"] == "wb"
