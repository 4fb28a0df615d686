"""Configs are data: no interpolation unless asked for, run names stay inside out_dir, and
YAML bombs fail fast in one line (config files, sweep specs, checkpoint configs)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import torch

from metatl import evaluate as evaluate_cli
from metatl import train as train_cli
from metatl.config import ConfigError, config_from_dict, config_to_dict, load_config
from metatl.sweeping import SweepSpecError, load_spec
from metatl.training import save_checkpoint

SECRET = "wandb-secret-0123456789abcdef"
ENV = "${oc.env:WANDB_API_KEY}"


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_API_KEY", SECRET)


def assert_one_line(err: BaseException | str, *needles: str) -> None:
    message = str(err)
    assert "\n" not in message.strip(), message
    assert SECRET not in message
    for needle in needles:
        assert needle in message, message


def nothing_holds_the_secret(root: Path) -> None:
    for file in root.rglob("*"):
        assert not file.is_file() or SECRET.encode() not in file.read_bytes(), file


# ---- 1. interpolation ----------------------------------------------------------------------

FILES = [
    (f"name: {ENV}\n", "name"),
    (f"data:\n  root: /data/{ENV}\n", "data.root"),
    (f"tracking:\n  wandb:\n    tags: [a, '{ENV}']\n", "tracking.wandb.tags[1]"),
    ('tracking: {wandb: {group: "\\x24{oc.env:WANDB_API_KEY}"}}\n', "tracking.wandb.group"),
    ("name: run-${train.steps}\n", "name"),
]


@pytest.mark.parametrize("text, key", FILES, ids=[k for _, k in FILES])
def test_a_config_file_is_not_interpolated(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "shared.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert_one_line(err.value, f"config key '{key}' of config file {path} holds an interpolation")
    assert "interpolation is off because configs are data" in str(err.value)
    assert "--interpolate" in str(err.value)


OVERRIDES = [
    ([f"name={ENV}"], "name"),
    ([f"--data.root=/x/{ENV}"], "data.root"),
    (["--tracking.wandb.group", ENV], "tracking.wandb.group"),
    ([f"test.methods=[linear,'{ENV}']"], "test.methods[1]"),
    (["train.steps=${oc.env:WANDB_API_KEY}"], "train.steps"),
]


@pytest.mark.parametrize("overrides, key", OVERRIDES, ids=[k for _, k in OVERRIDES])
def test_an_override_is_not_interpolated(overrides: list[str], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert_one_line(err.value, f"config key '{key}' holds an interpolation", "--interpolate")


@pytest.mark.parametrize("key", ["name", "data.root", "tracking.wandb.entity", "device"])
def test_a_config_from_a_checkpoint_is_never_interpolated(key: str) -> None:
    values = config_to_dict(load_config())
    section, _, leaf = key.rpartition(".")
    node: Any = values
    for part in filter(None, section.split(".")):
        node = node[part]
    node[leaf] = ENV
    with pytest.raises(ConfigError) as err:
        config_from_dict(values)
    assert_one_line(err.value, f"config key '{key}' holds an interpolation", "never interpolated")
    with pytest.raises(ConfigError, match="never interpolated"):  # nor the overrides on top
        config_from_dict(config_to_dict(load_config()), [f"name={ENV}"])


def test_interpolation_asked_for_stores_the_resolved_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METATL_TEST_GROUP", "ablation-7")
    path = tmp_path / "mine.yaml"
    path.write_text(
        "name: protonet-${train.steps}\n"
        "tracking:\n  wandb:\n    group: ${oc.env:METATL_TEST_GROUP}\n"
    )
    config = load_config(path, ["train.steps=1234", "data.root=/data/${name}"], interpolate=True)
    assert (config.name, config.data.root) == ("protonet-1234", "/data/protonet-1234")
    assert config.tracking.wandb.group == "ablation-7"
    stored = config_to_dict(config)
    assert "${" not in repr(stored)
    assert config_from_dict(stored) == config  # what a checkpoint reads back


def test_interpolation_asked_for_still_checks_the_result(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"^name='/.*' has a path separator"):
        load_config(None, ["name=${oc.env:HOME}"], interpolate=True)
    monkeypatch.setenv("METATL_TEST_INNER", ENV)  # a value that would interpolate on reading
    with pytest.raises(ConfigError) as err:
        load_config(None, ["name=${oc.env:METATL_TEST_INNER}"], interpolate=True)
    assert_one_line(err.value, "config key 'name' (resolved) holds an interpolation")


def test_the_train_cli_refuses_a_shared_config_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "shared.yaml"
    path.write_text(f"tracking:\n  wandb:\n    tags: ['{ENV}']\n")
    out_dir = tmp_path / "runs"
    assert train_cli.main(["--config", str(path), f"out_dir={out_dir}"]) == 2
    err = capsys.readouterr().err
    assert_one_line(err, "error: config key 'tracking.wandb.tags[0]' of config file")
    assert not out_dir.exists()


def test_evaluate_refuses_a_downloaded_checkpoint_that_interpolates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    values = config_to_dict(load_config())
    values["tracking"]["wandb"]["tags"] = [ENV]
    checkpoint = tmp_path / "downloaded" / "best.pt"
    checkpoint.parent.mkdir()
    save_checkpoint(checkpoint, {"model": {"x": torch.zeros(1)}, "config": values, "step": 0})
    out_dir = tmp_path / "eval"
    assert evaluate_cli.main(["--checkpoint", str(checkpoint), "--out-dir", str(out_dir)]) == 2
    captured = capsys.readouterr()
    assert_one_line(captured.err, "error: ", "config key 'tracking.wandb.tags[0]' holds an")
    assert SECRET not in captured.out
    assert not out_dir.exists()
    nothing_holds_the_secret(tmp_path)


# ---- 2. the run name ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["<tmp>/absolute", "../escaped", "a/../../b", "..", "-rf"])
def test_a_run_name_cannot_leave_out_dir(
    folder_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    name = name.replace("<tmp>", str(tmp_path))  # were it accepted, it stays in tmp_path
    out_dir = tmp_path / "deep" / "runs"
    tiny = [
        "data.dataset=image_folder",
        f"data.root={folder_dataset}",
        "train.steps=2",
        "train.val_episodes=2",
        "test.episodes=2",
        "test.shots=[1]",
    ]
    assert train_cli.main([*tiny, f"out_dir={out_dir}", f"name={name}"]) == 2
    assert_one_line(capsys.readouterr().err, f"error: name={name!r} ")
    assert list(tmp_path.iterdir()) == []


def test_a_name_made_by_interpolation_is_refused_too(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config key 'name' holds an interpolation"):
        load_config(None, [f"out_dir={tmp_path}", "name=${oc.env:HOME}"])


# ---- 3. YAML bombs -----------------------------------------------------------------------

LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi", strict=True)
)
BOMBS = {
    "billion laughs": (LAUGHS, "expands to more than 100,000 values"),
    "recursive list": ("a: &a [*a]\n", "refers to itself at 'a.0'"),
    "recursive mapping": ("model: &m {maml: *m}\n", "refers to itself at 'model.maml'"),
    "deep": ("a: " + "[" * 40 + "]" * 40 + "\n", "nests deeper than 32 levels"),
    "very deep": ("a: " + "[" * 20_000 + "]" * 20_000 + "\n", "nests deeper"),
    "oversized": ("# padding\n" * 30_000, "larger than 256 KiB"),
}


def fails_fast(call: Any, error: type[Exception]) -> str:
    started = time.perf_counter()
    with pytest.raises(error) as err:
        call()
    assert time.perf_counter() - started < 1.0
    return str(err.value)


@pytest.mark.parametrize("doc, message", BOMBS.values(), ids=BOMBS.keys())
def test_a_yaml_bomb_fails_fast_in_one_line(tmp_path: Path, doc: str, message: str) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(doc)
    assert_one_line(fails_fast(lambda: load_config(path), ConfigError), "config file", message)
    assert_one_line(fails_fast(lambda: load_spec(path), SweepSpecError), "sweep spec", message)


def test_the_train_cli_reports_a_bomb_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text("a: &a [*a]\n")
    assert train_cli.main(["--config", str(path), f"out_dir={tmp_path / 'runs'}"]) == 2
    assert_one_line(capsys.readouterr().err, "error: config file", "refers to itself")
    assert not (tmp_path / "runs").exists()


def test_a_checkpoint_config_that_refers_to_itself_or_explodes_fails_fast() -> None:
    recursive = config_to_dict(load_config())
    recursive["model"]["maml"] = recursive["model"]
    message = fails_fast(lambda: config_from_dict(recursive), ConfigError)
    assert_one_line(message, "config refers to itself at 'model.maml'")

    laughs: Any = ["lol"] * 9
    for _ in range(8):
        laughs = [laughs] * 9
    exploding = config_to_dict(load_config()) | {"test": {"methods": laughs}}
    message = fails_fast(lambda: config_from_dict(exploding), ConfigError)
    assert_one_line(message, "config expands to more than 100,000 values")


@pytest.mark.parametrize("override", ["test.shots=[&a 1, *a]", "test.methods=[&x [a, b], *x]"])
def test_an_override_cannot_use_anchors(override: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert_one_line(err.value, f"override {override!r} uses a YAML anchor or alias")


def test_invalid_yaml_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  lr: [1\n  weight_decay: 2\n")
    assert_one_line(fails_fast(lambda: load_config(path), ConfigError), "is not valid YAML")
    path.write_bytes(b"name: \xff\xfe\n")
    assert_one_line(fails_fast(lambda: load_config(path), ConfigError), "is not UTF-8 text")
