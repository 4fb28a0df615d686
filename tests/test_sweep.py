"""Offline W&B sweeps: the shipped specs, macro expansion as W&B's agent does it, the loop
driven by W&B's engine (with fake trials), and a real two-trial sweep end to end."""

from __future__ import annotations

import json
import math
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from metatl import sweep as sweep_cli
from metatl.config import RunConfig, config_to_dict, flatten, load_config, parse_overrides
from metatl.sweeping import (
    SweepController,
    SweepSpecError,
    SweepState,
    TrialLaunch,
    expand_command,
    load_spec,
    macro_args,
    read_run,
    spec_from_dict,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)  # pydantic 2 on sweeps' v1-style Config
    sweeps = pytest.importorskip("sweeps")

REPO = Path(__file__).parents[1]
SPECS = sorted((REPO / "configs" / "sweeps").glob("*.yaml"))
PROTONET = "configs/protonet_conv4_glyphs.yaml"


CONFIG_KEYS = set(flatten(config_to_dict(RunConfig())))


# --- the shipped specs ----------------------------------------------------------------------


def test_the_shipped_specs_cover_the_three_methods() -> None:
    specs = [yaml.safe_load(p.read_text()) for p in SPECS]
    assert sorted(s["method"] for s in specs) == ["bayes", "grid", "random"]
    commands = [" ".join(s["command"]) for s in specs]
    assert any("${args}" in c for c in commands)
    assert any("${args_no_hyphens}" in c for c in commands)
    bayes = next(s for s in specs if s["method"] == "bayes")
    assert bayes["early_terminate"]["type"] == "hyperband"
    assert bayes["parameters"]["model.maml.inner_lr"]["distribution"] == "log_uniform_values"
    grid = next(s for s in specs if s["method"] == "grid")
    sizes = [len(p["values"]) for p in grid["parameters"].values() if "values" in p]
    assert math.prod(sizes) >= 6


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_a_shipped_spec_is_valid_for_wandb_and_for_the_config(path: Path) -> None:
    spec = yaml.safe_load(path.read_text())
    assert sweeps.schema_violations_from_proposed_config(spec) == []
    sweeps.SweepConfig(spec)  # W&B's own validation, raises on a violation
    assert spec["metric"] == {"name": "val/best_accuracy", "goal": "maximize"} | (
        {"impute": spec["metric"]["impute"]} if "impute" in spec["metric"] else {}
    )
    command = spec["command"]
    assert command[:4] == ["${env}", "${interpreter}", "-m", "metatl.train"]
    assert "${args_no_hyphens}" in command or "${args}" in command
    preset = REPO / command[command.index("--config") + 1]
    assert preset.is_file()

    params = spec["parameters"]
    assert set(params) <= CONFIG_KEYS, set(params) - CONFIG_KEYS
    fixed = [f"{k}={p['value']}" for k, p in params.items() if "value" in p]
    for key, param in params.items():
        for value in param.get("values", []):
            load_config(preset, [*fixed, f"{key}={value}"])  # raises ConfigError if invalid
    # Our own check agrees (it also tries percentiles of the distributions).
    checked = load_spec(path, root=REPO)
    assert checked.preset == preset and checked.metric == "val/best_accuracy"


# --- macros -----------------------------------------------------------------------------------

PARAMS: dict[str, Any] = {
    "model.maml.first_order": True,
    "test.pixel_baseline": False,
    "test.shots": [1, 5],
    "optim.lr": 1e-05,
    "model.maml.inner_lr": 0.123456789,
    "model.maml.adapt": "top:1",
    "episodes.way": 10,
}


def test_macros_expand_exactly_as_the_wandb_agent_does() -> None:
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    agent = create_sweep_command_args({"args": {k: {"value": v} for k, v in PARAMS.items()}})
    agent.pop("args_dict")
    assert macro_args(PARAMS) == agent
    assert macro_args(PARAMS)["args_no_hyphens"][:4] == [
        "model.maml.first_order=True",
        "test.pixel_baseline=False",
        "test.shots=[1, 5]",
        "optim.lr=1e-05",
    ]


def test_expand_command_replaces_macros_like_the_agent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METATL_PRESET", "configs/x.yaml")
    command = [
        "${env}",
        "${interpreter}",
        "${program}",
        "--config",
        "${envvar:METATL_PRESET}",
        "${args_no_hyphens}",
        "${args_json_file}",
        "${not_a_macro}",
    ]
    params = {"optim.lr": 0.01, "test.shots": [1]}
    argv = expand_command(
        command,
        params,
        program="train.py",
        interpreter="/venv/bin/python",
        args_json_file=tmp_path / "args.json",
    )
    assert argv == [
        "/usr/bin/env",
        "/venv/bin/python",
        "train.py",
        "--config",
        "configs/x.yaml",
        "optim.lr=0.01",
        "test.shots=[1]",
        str(tmp_path / "args.json"),
    ]
    assert json.loads((tmp_path / "args.json").read_text()) == params
    with pytest.raises(ValueError, match="no program"):
        expand_command(None, params)  # the agent's default command runs ${program}


@pytest.mark.parametrize("macro", ["${args}", "${args_no_hyphens}", "${args_no_equals}"])
def test_every_args_form_gives_the_train_cli_the_same_config(macro: str) -> None:
    argv = expand_command(["${interpreter}", "-m", "metatl.train", macro], PARAMS)
    config = load_config(REPO / PROTONET, parse_overrides(argv[3:]))
    flat = flatten(config_to_dict(config))
    assert {k: flat[k] for k in PARAMS} == PARAMS


# --- spec checks ------------------------------------------------------------------------------


def _spec(parameters: dict[str, Any], **extra: Any) -> dict[str, Any]:
    command = ["${env}", "${interpreter}", "-m", "metatl.train", "--config", PROTONET, "${args}"]
    return {"method": "grid", "parameters": parameters, "command": command} | extra


@pytest.mark.parametrize(
    "spec, message",
    [
        (
            _spec({"model.maml.inner_lrr": {"values": [0.1]}}),
            "parameter 'model.maml.inner_lrr' is not a config key; did you mean "
            "model.maml.inner_lr?",
        ),
        (
            _spec({"model.maml.adapt": {"values": ["all", "sideways"]}}),
            "parameter model.maml.adapt value sideways is not valid: model.maml.adapt='sideways'",
        ),
        (
            _spec({"episodes.way": {"distribution": "uniform", "min": 2, "max": 9.5}}),
            "parameter episodes.way value 2.075 is not valid: .*could not be converted to Integer",
        ),
        (_spec({"optim.lr": {"values": []}}), "does not follow W&B's sweep schema"),
        (_spec({"optim.lr": {"value": 0.1}}, method="bayes"), "bayes search .* need a metric"),
        (_spec({"name": {"values": ["a", "b"]}}), "'name' is set by the sweep"),
        (_spec({"model": {"parameters": {"backbone": {"value": "conv4"}}}}), "nested parameters"),
        (
            _spec({"optim.lr": {"value": 0.1}}) | {"command": ["python", "train.py"]},
            "must pass the parameters as one of",
        ),
        (
            _spec({"optim.lr": {"value": 0.1}})
            | {"command": ["python", "--config", "nope.yaml", "${args}"]},
            "--config nope.yaml does not exist",
        ),
    ],
)
def test_a_bad_spec_is_named(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(SweepSpecError, match=message):
        spec_from_dict(spec, source="s.yaml", root=REPO)


def test_cli_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)  # the specs' commands name presets relative to the repository
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_spec({"optim.lrr": {"values": [0.1, 0.2]}})))
    assert sweep_cli.main([str(path), "--out-dir", str(tmp_path / "sweeps")]) == 2
    err = capsys.readouterr().err
    assert (
        err == f"error: {path}: parameter 'optim.lrr' is not a config key; did you mean optim.lr?\n"
    )
    good = REPO / "configs/sweeps/protonet_glyphs_grid.yaml"
    assert sweep_cli.main([str(good), "train.steps=5", "--out-dir", str(tmp_path / "s")]) == 2
    assert "train.steps is a parameter of" in capsys.readouterr().err
    bayes = REPO / "configs/sweeps/maml_glyphs_bayes.yaml"
    assert sweep_cli.main([str(bayes), "--out-dir", str(tmp_path / "s")]) == 2
    assert "give --count N" in capsys.readouterr().err
    assert not (tmp_path / "sweeps").exists() and not (tmp_path / "s").exists()


def test_without_the_sweeps_package_the_cli_says_how_to_install_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "sweeps", None)  # import sweeps -> ImportError
    spec = REPO / "configs/sweeps/protonet_glyphs_grid.yaml"
    assert sweep_cli.main([str(spec), "--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: offline sweeps need W&B's search engine, the sweeps package: ")
    assert "pip install 'metatl[sweep]'" in err and err.count("\n") == 1


# --- the loop, with fake trials ---------------------------------------------------------------


class FakeTrial:
    """Logs one validation per poll (the metric follows ``curve``), then exits with
    ``exit_code``; after terminate() it exits 75 at the next poll, as a checkpointing run."""

    def __init__(self, launch: TrialLaunch, curve: Sequence[float], exit_code: int = 0) -> None:
        self.launch, self.curve, self.exit_code = launch, list(curve), exit_code
        self.logged, self.terminated, self.code = 0, 0, None
        launch.run_dir.mkdir(parents=True)

    def poll(self) -> int | None:
        if self.code is None:
            if self.terminated:
                self.code = 75
            elif self.logged < len(self.curve):
                best = max(self.curve[: self.logged + 1])
                record = {"kind": "metrics", "step": 10 * (self.logged + 1), "time": 0.0}
                record |= {"val/accuracy": self.curve[self.logged], "val/best_accuracy": best}
                with (self.launch.run_dir / "metrics.jsonl").open("a") as f:
                    f.write(json.dumps(record) + "\n")
                self.logged += 1
            else:
                self.code = self.exit_code
                if self.exit_code:
                    self.launch.log.write_text("Traceback ...\nerror: the fake trial failed\n")
        return self.code

    def terminate(self) -> None:
        self.terminated += 1

    def kill(self) -> None:
        self.code = -9


class FakeLauncher:
    """Starts :class:`FakeTrial` s whose curve is ``curve(params)``."""

    def __init__(self, curve, exit_code=lambda params: 0) -> None:
        self.curve, self.exit_code = curve, exit_code
        self.trials: list[FakeTrial] = []

    def __call__(self, launch: TrialLaunch) -> FakeTrial:
        params = dict(launch.params)
        code = self.exit_code(params)
        trial = FakeTrial(launch, [] if code else self.curve(params), code)
        self.trials.append(trial)
        return trial


def _controller(tmp_path: Path, spec: dict[str, Any], launcher, seed: int = 0, **kw: Any):
    checked = spec_from_dict(spec, source="fake.yaml", root=REPO)
    state = SweepState.create(checked, tmp_path / "sweeps", seed=seed)
    return SweepController(state, checked, launcher=launcher, poll=0, sleep=lambda s: None, **kw)


def _by_lr(params: dict[str, Any]) -> list[float]:
    top = 0.9 - 50 * abs(params["optim.lr"] - 0.002)  # best at lr = 0.002
    return [top * f for f in (0.5, 0.8, 0.9, 1.0)]


GRID = _spec(
    {"optim.lr": {"values": [0.001, 0.002, 0.004]}, "episodes.shot": {"values": [1, 5]}},
    metric={"name": "val/best_accuracy", "goal": "maximize"},
)


def test_a_grid_sweep_runs_every_point_once_and_ranks_them(tmp_path: Path) -> None:
    launcher = FakeLauncher(_by_lr, exit_code=lambda p: 2 if p["episodes.shot"] == 5 else 0)
    controller = _controller(tmp_path, GRID, launcher)
    assert controller.run(count=10) == "the grid is exhausted after 6 trial(s)"
    state = controller.state
    points = {(t.params["optim.lr"], t.params["episodes.shot"]) for t in state.trials}
    assert len(points) == 6 and len(state.trials) == 6

    # Each trial is a normal run in the sweep directory, grouped under the sweep's name.
    trials_dir = Path(state.dir) / "trials"
    for trial, fake in zip(state.trials, launcher.trials, strict=True):
        assert fake.launch.run_dir == trials_dir / trial.name
        assert fake.launch.command[-3:] == [
            f"--out_dir={trials_dir}",
            f"--name={trial.name}",
            f"--tracking.wandb.group={state.name}",
        ]
        assert f"--optim.lr={trial.params['optim.lr']}" in fake.launch.command

    failed = [t for t in state.trials if t.params["episodes.shot"] == 5]
    assert {t.state for t in failed} == {"failed"}
    assert {t.reason for t in failed} == {"error: the fake trial failed"}
    finished = [t for t in state.trials if t.state == "finished"]
    assert {t.params["optim.lr"]: t.metric for t in finished} == pytest.approx(
        {0.001: 0.85, 0.002: 0.9, 0.004: 0.8}
    )

    # sweep.json holds the whole state; results.json ranks by the metric, failures last.
    saved = SweepState.load(state.dir)
    assert [t.state for t in saved.trials] == [t.state for t in state.trials]
    sweep_cli_results = _write_outputs(controller)
    ranking = [(t["params"]["optim.lr"], t["state"]) for t in sweep_cli_results["trials"]]
    assert ranking[:3] == [(0.002, "finished"), (0.001, "finished"), (0.004, "finished")]
    assert [s for _, s in ranking[3:]] == ["failed"] * 3
    assert sweep_cli_results["best"] == next(t.name for t in finished if t.metric == 0.9)
    report = (Path(state.dir) / "report.md").read_text()
    assert "| 1 | " in report and "optim.lr=0.002, episodes.shot=1 | 0.9000 | finished" in report

    # A finished grid has nothing left.
    assert controller.run(count=1) == "the grid is exhausted after 6 trial(s)"


def _write_outputs(controller: SweepController) -> dict[str, Any]:
    from metatl.sweeping import write_report, write_results

    write_report(controller.state, controller.spec)
    return json.loads(write_results(controller.state, controller.spec).read_text())


def test_hyperband_stops_a_clearly_worse_trial(tmp_path: Path) -> None:
    spec = GRID | {
        "parameters": {"optim.lr": {"values": [0.002, 0.02, 0.0025]}},
        "early_terminate": {"type": "hyperband", "min_iter": 2, "eta": 3},
    }
    launcher = FakeLauncher(lambda p: [0.2] * 6 if p["optim.lr"] == 0.02 else [0.5, 0.6] * 3)
    controller = _controller(tmp_path, spec, launcher)
    controller.run(count=3)
    good, bad, good2 = controller.state.trials
    assert (good.state, good2.state) == ("finished", "finished")
    assert [f.terminated for f in launcher.trials] == [0, 1, 0]  # one SIGTERM, to the bad one
    assert bad.state == "killed" and bad.stopped and bad.exit_code == 75
    assert bad.reason == (
        "early-terminated: hyperband band 2: val/best_accuracy 0.2 is worse than the threshold 0.6"
    )
    # Stopped at hyperband's first band (the 2nd validation), not run to the end.
    assert len(read_run(bad.run_dir)[0]) == 2 and bad.metric == 0.2
    assert len(read_run(good2.run_dir)[0]) == 6


def _random_spec(method: str = "random") -> dict[str, Any]:
    return _spec(
        {
            "optim.lr": {"distribution": "log_uniform_values", "min": 0.0001, "max": 0.01},
            "episodes.shot": {"values": [1, 2, 5]},
        },
        method=method,
        metric={"name": "val/best_accuracy", "goal": "maximize"},
    )


def test_random_search_is_seeded_and_resumes_where_it_stopped(tmp_path: Path) -> None:
    def params_of(controller: SweepController) -> list[dict[str, Any]]:
        return [t.params for t in controller.state.trials]

    first = _controller(tmp_path / "a", _random_spec(), FakeLauncher(_by_lr), seed=7)
    first.run(count=4)
    again = _controller(tmp_path / "b", _random_spec(), FakeLauncher(_by_lr), seed=7)
    again.run(count=2)
    other = _controller(tmp_path / "c", _random_spec(), FakeLauncher(_by_lr), seed=8)
    other.run(count=2)
    assert params_of(again) == params_of(first)[:2]
    assert params_of(other) != params_of(first)[:2]
    assert all(0.0001 <= p["optim.lr"] <= 0.01 for p in params_of(first))

    resumed = SweepController(
        SweepState.load(again.state.dir),
        again.spec,
        launcher=FakeLauncher(_by_lr),
        poll=0,
        sleep=lambda s: None,
    )
    resumed.recover()
    resumed.run(count=2)
    assert params_of(resumed) == params_of(first)
    assert [t.name for t in resumed.state.trials] == [f"trial-00{i}" for i in range(1, 5)]


def test_bayes_search_suggests_from_the_trials_so_far(tmp_path: Path) -> None:
    spec = _random_spec("bayes")
    spec["metric"]["impute"] = "latest"  # trials stopped early count with their last value
    spec["early_terminate"] = {"type": "hyperband", "min_iter": 2}
    controller = _controller(tmp_path, spec, FakeLauncher(_by_lr))
    controller.run(count=5)
    trials = controller.state.trials
    assert {t.state for t in trials} <= {"finished", "killed"} and trials[0].state == "finished"
    assert all(t.metric is not None and 0.0001 <= t.params["optim.lr"] <= 0.01 for t in trials)
    assert len({t.params["optim.lr"] for t in trials}) == 5


def test_a_run_cap_ends_the_sweep(tmp_path: Path) -> None:
    controller = _controller(tmp_path, _random_spec() | {"run_cap": 2}, FakeLauncher(_by_lr))
    assert controller.run(count=5) == "run_cap 2 reached"
    assert len(controller.state.trials) == 2


def test_an_interrupted_sweep_stops_its_trial_with_one_sigterm(tmp_path: Path) -> None:
    calls = []

    def sleep(seconds: float) -> None:
        calls.append(seconds)
        if len(calls) == 2:
            raise KeyboardInterrupt

    launcher = FakeLauncher(_by_lr)
    controller = _controller(tmp_path, GRID, launcher)
    controller.sleep = sleep
    with pytest.raises(KeyboardInterrupt):
        controller.run(count=3)
    (trial,) = SweepState.load(controller.state.dir).trials
    assert launcher.trials[0].terminated == 1
    assert (trial.state, trial.exit_code, trial.reason) == (
        "killed",
        75,
        "the sweep was interrupted",
    )


# --- end to end -------------------------------------------------------------------------------


def _tiny_sweep(tmp_path: Path, dataset: Path, steps: int, val_every: int, **spec: Any) -> Path:
    """A grid spec over ``optim.lr`` (0.003, then ``spec`` extras) running the train CLI on the
    tiny pattern dataset."""
    preset = tmp_path / "tiny.yaml"
    preset.write_text(
        yaml.safe_dump(
            {
                "data": {"dataset": "image_folder", "root": str(dataset)},
                "episodes": {"way": 5, "shot": 2, "query": 3},
                "train": {
                    "steps": steps,
                    "val_every": val_every,
                    "val_episodes": 10,
                    "log_every": val_every,
                },
                "test": {"episodes": 10, "shots": [1]},
                "tracking": {"wandb": {"mode": "disabled"}},
                "device": "cpu",
            }
        )
    )
    command = ["${env}", "${interpreter}", "-m", "metatl.train", "--config", str(preset)]
    path = tmp_path / "grid.yaml"
    spec = {
        "method": "grid",
        "metric": {"name": "val/best_accuracy", "goal": "maximize"},
        "command": [*command, "${args_no_hyphens}"],
    } | spec
    path.write_text(yaml.safe_dump(spec))
    return path


def test_a_real_grid_sweep_runs_the_train_cli(
    folder_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = _tiny_sweep(
        tmp_path, folder_dataset, 12, 6, parameters={"optim.lr": {"values": [0.003, 0.0001]}}
    )
    out = tmp_path / "sweeps"
    assert sweep_cli.main([str(spec), "--out-dir", str(out), "--poll", "0.3", "seed=3"]) == 0
    (sweep_dir,) = out.iterdir()
    assert sweep_dir.name.startswith("grid-")
    results = json.loads((sweep_dir / "results.json").read_text())
    trials = results["trials"]
    assert [t["state"] for t in trials] == ["finished", "finished"]
    assert {t["params"]["optim.lr"] for t in trials} == {0.003, 0.0001}
    metrics = [t["metric"] for t in trials]
    assert metrics == sorted(metrics, reverse=True) and results["best"] == trials[0]["name"]
    for trial in trials:
        run_dir = Path(trial["run_dir"])
        assert run_dir.parent == sweep_dir / "trials" and run_dir.name == trial["name"]
        run = json.loads((run_dir / "results.json").read_text())
        assert run["config"]["optim"]["lr"] == trial["params"]["optim.lr"]
        assert run["config"]["seed"] == 3
        assert run["config"]["tracking"]["wandb"]["group"] == sweep_dir.name
        assert run["best_val"]["accuracy"] == pytest.approx(trial["metric"])
    printed = capsys.readouterr().out
    assert "| 1 | " + trials[0]["name"] in printed


@pytest.mark.slow
def test_hyperband_stops_a_real_trial_which_checkpoints_and_exits_75(
    folder_dataset: Path, tmp_path: Path
) -> None:
    spec = _tiny_sweep(
        tmp_path,
        folder_dataset,
        300,
        30,
        parameters={"optim.lr": {"values": [0.003, 1.0e-7]}},
        early_terminate={"type": "hyperband", "min_iter": 2, "eta": 3},
    )
    out = tmp_path / "sweeps"
    assert sweep_cli.main([str(spec), "--out-dir", str(out), "--poll", "0.2"]) == 0
    (sweep_dir,) = out.iterdir()
    good, bad = SweepState.load(sweep_dir).trials
    assert (good.state, good.exit_code) == ("finished", 0)
    assert (bad.state, bad.exit_code, bad.stopped) == ("killed", 75, True)
    assert bad.reason.startswith("early-terminated: hyperband band 2: val/best_accuracy")
    assert (Path(bad.run_dir) / "last.pt").is_file()  # it checkpointed on SIGTERM
    assert len(read_run(bad.run_dir)[0]) < len(read_run(good.run_dir)[0])
