"""Typed configs: shipped YAML files load; bad keys, types and values are named."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from metatl.config import ConfigError, RunConfig, load_config, parse_overrides

CONFIGS = sorted((Path(__file__).parents[1] / "configs").rglob("*.yaml"))
RUN_CONFIGS = [p for p in CONFIGS if "sweeps" not in p.parts]


def test_configs_exist() -> None:
    assert len(RUN_CONFIGS) >= 3


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path: Path) -> None:
    required = ["model.pretrained=runs/x/best.pt"] if "(required" in path.read_text() else []
    config = load_config(path, required)
    assert isinstance(config, RunConfig)
    prefix = path.name.split("_")[0]
    # compare_<dataset>: a target dataset of its own choice, its sources in compare.sources;
    # adapt_*: a domain-shift benchmark, source splits to train on, the target's to test on
    assert config.data.dataset == "glyphs" or prefix in ("compare", "adapt")
    assert prefix != "compare" or len(config.compare.sources) >= 4
    if prefix == "adapt":
        assert config.data.dataset in ("digits", "kanji_domains")
        d = config.data
        assert (d.train_split, d.val_split, d.test_split) == (
            "source_train",
            "source_val",
            "target_test",
        )
        assert config.adapt.target_split == "target_train"
    # pretrain_*, layers_*, compare_* and adapt_* (python -m metatl.pretrain, metatl.transfer,
    # metatl.adapt) train supervised networks or compare sources: model.algorithm plays no
    # part there
    assert prefix in ("pretrain", "layers", "compare", "adapt") or config.model.algorithm in prefix
    if config.model.algorithm in ("linear", "finetune"):
        assert config.train.steps == 0


def test_a_missing_backbone_is_named() -> None:
    with pytest.raises(
        ConfigError, match="model.algorithm=linear needs a trained backbone: set model.pretrained"
    ):
        load_config(Path(__file__).parents[1] / "configs/linear_conv4_glyphs.yaml")


def test_learners_that_are_not_meta_trained_refuse_steps() -> None:
    with pytest.raises(
        ConfigError, match="model.algorithm=linear adapts per episode .* set train.steps=0"
    ):
        load_config(None, ["model.algorithm=linear", "model.pretrained=IMAGENET1K_V1"])


def test_defaults_are_the_main_job() -> None:
    """Except precision: the default (fp32) gives the same numbers on every machine, while
    the main job opts in to precision=auto, which depends on the hardware."""
    main_job = load_config(Path(__file__).parents[1] / "configs/protonet_conv4_glyphs.yaml")
    assert main_job.precision == "auto" and load_config().precision == "fp32"
    assert load_config(None, ["precision=auto"]) == main_job


def test_override_forms_agree() -> None:
    a = load_config(None, ["optim.lr=0.0003", "test.shots=[1,5,10]"])
    b = load_config(None, ["--optim.lr=0.0003", "--test.shots=[1,5,10]"])
    c = load_config(None, ["--optim.lr", "0.0003", "--test.shots", "[1,5,10]"])
    assert a == b == c
    assert a.optim.lr == pytest.approx(3e-4) and a.test.shots == [1, 5, 10]
    assert parse_overrides(["a=1", "--b=2", "--c", "3"]) == ["a=1", "b=2", "c=3"]


@pytest.mark.parametrize(
    "override, message",
    [
        (
            ["optim.learning_rate=1"],
            "unknown config key 'optim.learning_rate'; keys here: optim.lr",
        ),
        (["bogus=1"], "unknown config key 'bogus'"),
        (["train.steps=many"], "config key 'train.steps': Value 'many'"),
        (["model.distance=manhattan"], "model.distance='manhattan' is not allowed; choose one of"),
        (["episodes.way=1"], "episodes.way must be an integer in [2, 10000], got 1"),
        (
            ["test.shots=[]"],
            "test.shots must be a non-empty list of integers in [1, 10000], got []",
        ),
        (["test.shots=[1,0]"], "test.shots must be a non-empty list of integers"),
        (["optim.lr_decay=-1"], "optim.lr_decay must be a finite number in (0, 1]"),
        (["optim.lr_decay_every=0"], "optim.lr_decay_every must be an integer in [1, "),
        (["optim.lr=nan"], "optim.lr must be a finite number in (0, 10], got nan"),
        (["optim.lr=-inf"], "optim.lr must be a finite number in (0, 10], got -inf"),
        (["model.cosine_scale=0"], "model.cosine_scale must be a finite number in (0, "),
        (["model.input_size=-1"], "model.input_size must be an integer in [0, 2048]"),
        (["train.steps=20000000"], "train.steps must be an integer in [0, 10000000]"),
        (["seed=4294967296"], "seed must be an integer in [0, 4294967295], got 4294967296"),
        (["pretrain.momentum=1"], "pretrain.momentum must be a finite number in [0, 1)"),
        (["--train.steps"], "has no value"),
        (["model.maml.adapt=top:0"], "model.maml.adapt='top:0' is not allowed"),
        (["model.maml.bn=batch"], "model.maml.bn='batch' is not allowed"),
        (
            ["model.algorithm=maml", "model.maml.head=learned", "episodes.way=20"],
            "model.maml.head=learned fixes the way",
        ),
        (["steps"], "not of the form key=value"),
    ],
)
def test_bad_overrides_name_the_key(override: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, override)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: {lr: 0.1, betas: [0.9]}\n")
    with pytest.raises(ConfigError, match="unknown config key 'optim.betas'"):
        load_config(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(bad)


def test_a_number_at_the_edge_of_its_domain_is_allowed() -> None:
    config = load_config(
        None,
        [
            "seed=4294967295",
            "optim.lr_decay=1",
            "train.steps=0",
            "finetune.n_blocks=-1",
            "pretrain.momentum=0",
        ],
    )
    assert config.seed == 2**32 - 1 and config.optim.lr_decay == 1.0


@pytest.mark.parametrize(
    "name, problem",
    [
        ("/tmp/x", "has a path separator"),
        ("../x", "has a path separator"),
        ("a\\b", "has a path separator"),
        (".", "starts with '.'"),
        ("..", "starts with '.'"),
        (".hidden", "starts with '.'"),
        ("-rf", "starts with '-'"),
        ('"x\\ty"', "has a control character"),  # YAML turns \t into a tab
        ("x" * 201, "is longer than 200 bytes"),
    ],
)
def test_a_run_name_is_one_folder_inside_out_dir(name: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=f"^name=.* {problem}; a run name is one folder") as err:
        load_config(None, [f"name={name}"])
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["", "trial-001", "my_run.v2", "run 3", "Ω-1", "a:b", "x" * 200])
def test_ordinary_run_names_are_kept(name: str) -> None:
    assert load_config(None, [f"name='{name}'"]).name == name


def test_a_list_domain_may_allow_the_empty_list() -> None:
    assert load_config(None, []).compare.finetune_blocks == []
    assert load_config(None, ["compare.finetune_blocks=[1,3]"]).compare.finetune_blocks == [1, 3]
    with pytest.raises(ConfigError, match=r"compare.finetune_blocks must be a list of integers"):
        load_config(None, ["compare.finetune_blocks=[0]"])
    with pytest.raises(ConfigError, match="compare.shots must be a non-empty list"):
        load_config(None, ["compare.shots=[]"])
