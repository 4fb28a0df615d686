"""Tracking: the JSONL log, fan-out, and W&B (offline only, files under tmp_path)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from PIL import Image

from metatl.config import WandbConfig, config_to_dict, load_config
from metatl.tracking import (
    JsonlTracker,
    MultiTracker,
    Tracker,
    WandbTracker,
    config_keys,
    create_tracker,
    read_jsonl,
    resolve_mode,
    sweep_overrides,
)
from metatl.tracking.factory import format_override_value
from metatl.tracking.wandb_tracker import RUN_ID_FILE, STEP_METRIC, artifact_name

OFFLINE = WandbConfig(mode="offline", project="metatl-tests", tags=["unit"])


@pytest.fixture(autouse=True)
def wandb_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No credentials, no network, every W&B file under tmp_path."""
    for name in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_MODE", "RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    for name in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home"))


def tiny_png(path: Path) -> Path:
    Image.new("RGB", (4, 3), (255, 0, 0)).save(path)
    return path


class Recorder:
    """A tracker that remembers its calls; ``fail_close`` makes close() raise."""

    def __init__(self, fail_close: bool = False) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.closed = False
        self.fail_close = fail_close

    def log(self, metrics, step):
        self.calls.append(("log", (dict(metrics), step)))

    def log_config(self, config):
        self.calls.append(("log_config", (dict(config),)))

    def log_artifact(self, path, name=None):
        self.calls.append(("log_artifact", (path, name)))

    def log_image(self, key, path, step=None, caption=None):
        self.calls.append(("log_image", (key, path, step, caption)))

    def log_summary(self, values):
        self.calls.append(("log_summary", (dict(values),)))

    def close(self):
        self.closed = True
        if self.fail_close:
            raise RuntimeError("close failed")


class FakeConfig(dict):
    def update(self, values, allow_val_change=False):  # wandb's signature
        super().update(values)


class FakeRun:
    """Stands in for an active ``wandb.run`` (a sweep agent's) without starting W&B."""

    def __init__(self, config: dict[str, Any] | None = None, offline: bool = False) -> None:
        self.id = "fake123"
        self.config = FakeConfig(config or {})
        self.offline = offline
        self.disabled = False
        self.logged: list[dict[str, Any]] = []
        self.metrics: list[tuple[str, str | None]] = []
        self.artifacts: list[Any] = []
        self.finished = False

    def define_metric(self, name, step_metric=None):
        self.metrics.append((name, step_metric))

    def log(self, record):
        self.logged.append(record)

    def log_artifact(self, artifact):
        self.artifacts.append(artifact)

    def finish(self):
        self.finished = True


def test_jsonl_writes_image_and_summary_records(tmp_path: Path) -> None:
    tracker = JsonlTracker(tmp_path / "metrics.jsonl")
    tracker.log({"train/loss": 0.5, "bad": float("nan")}, step=10)
    tracker.log_image("val/episodes", tmp_path / "grid.png", step=10, caption="5-way")
    tracker.log_image("curves", tmp_path / "curves.png")
    tracker.log_summary({"test": {"1shot": {"acc": 0.75, "ci": float("inf")}}, "steps": 10})
    tracker.close()
    tracker.close()

    metrics, image, curves, summary = read_jsonl(tmp_path / "metrics.jsonl")
    assert isinstance(tracker, Tracker)
    assert (metrics["kind"], metrics["step"], metrics["train/loss"], metrics["bad"]) == (
        "metrics",
        10,
        0.5,
        "nan",
    )
    assert {k: image[k] for k in ("kind", "key", "path", "step", "caption")} == {
        "kind": "image",
        "key": "val/episodes",
        "path": str(tmp_path / "grid.png"),
        "step": 10,
        "caption": "5-way",
    }
    assert (curves["step"], curves["caption"]) == (None, None)
    assert summary["kind"] == "summary"
    assert summary["summary"] == {"test": {"1shot": {"acc": 0.75, "ci": "inf"}}, "steps": 10}


def test_multi_tracker_fans_out_and_closes_all_when_one_fails(tmp_path: Path) -> None:
    first, failing, last = Recorder(), Recorder(fail_close=True), Recorder()
    multi = MultiTracker([first, failing, last])
    multi.log({"a": 1.0}, 3)
    multi.log_config({"seed": 0})
    multi.log_artifact(tmp_path / "best.pt", "best")
    multi.log_image("k", tmp_path / "x.png", 3, "c")
    multi.log_summary({"acc": 0.5})
    with pytest.raises(RuntimeError, match="close failed"):
        multi.close()

    expected = [
        ("log", ({"a": 1.0}, 3)),
        ("log_config", ({"seed": 0},)),
        ("log_artifact", (tmp_path / "best.pt", "best")),
        ("log_image", ("k", tmp_path / "x.png", 3, "c")),
        ("log_summary", ({"acc": 0.5},)),
    ]
    assert first.calls == failing.calls == last.calls == expected
    assert first.closed and failing.closed and last.closed


def test_resolve_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert [resolve_mode(m) for m in ("online", "offline", "disabled")] == [
        "online",
        "offline",
        "disabled",
    ]
    assert resolve_mode("auto") == "offline"  # no key anywhere (fixture)

    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert resolve_mode("auto") == "online"
    assert resolve_mode("offline") == "offline"  # an explicit mode wins over the key
    for env_mode, mode in (("dryrun", "offline"), ("disabled", "disabled"), ("online", "online")):
        monkeypatch.setenv("WANDB_MODE", env_mode)
        assert resolve_mode("auto") == mode
    monkeypatch.setenv("WANDB_MODE", "sometimes")
    with pytest.raises(ValueError, match="WANDB_MODE"):
        resolve_mode("auto")
    with pytest.raises(ValueError, match="tracking.wandb.mode"):
        resolve_mode("cloud")


def test_auto_mode_finds_a_key_in_netrc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from wandb.sdk import wandb_setup

    host = urlsplit(wandb_setup.singleton().settings.base_url).netloc
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine {host}\n  login user\n  password {'n' * 40}\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    assert resolve_mode("auto") == "online"


def test_offline_run_logs_under_the_run_dir_and_resumes(tmp_path: Path) -> None:
    import wandb

    run_dir = tmp_path / "run1"
    run_dir.mkdir()
    config = config_to_dict(load_config(None, ["model.maml.inner_lr=0.25"]))
    tracker = WandbTracker(OFFLINE, run_dir, config)
    run = tracker.run
    for step in (0, 50, 100):
        tracker.log({"train/loss": 1.0 / (step + 1)}, step)
    tracker.log_image("val/episodes", tiny_png(tmp_path / "grid.png"), step=100, caption="c")
    tracker.log_summary({"test/5way1shot/accuracy": 0.8})
    (tmp_path / "best.pt").write_bytes(b"weights")
    tracker.log_artifact(tmp_path / "best.pt")  # offline: no artifact, no error
    assert (run.name, run.project, list(run.tags)) == ("run1", "metatl-tests", ["unit"])
    assert run.config["model"]["maml"]["inner_lr"] == 0.25
    assert run.summary["test/5way1shot/accuracy"] == 0.8
    tracker.close()
    tracker.close()

    run_id = (run_dir / RUN_ID_FILE).read_text().strip()
    assert run_id == run.id
    assert wandb.run is None
    (offline_dir,) = (run_dir / "wandb").glob("offline-run-*")
    assert offline_dir.name.endswith(f"-{run_id}")
    assert (offline_dir / f"run-{run_id}.wandb").stat().st_size > 0
    assert len(list((offline_dir / "files" / "media" / "images").glob("val/episodes*.png"))) == 1

    resumed = WandbTracker(OFFLINE, run_dir, resume=True)
    assert resumed.run.id == run_id
    resumed.log({"train/loss": 0.001}, 150)
    resumed.close()
    dirs = sorted(p.name for p in (run_dir / "wandb").glob("offline-run-*"))
    assert len(dirs) == 2 and all(run_id in name for name in dirs)


def test_an_active_run_is_reused_and_left_running(tmp_path: Path) -> None:
    import wandb

    theirs = wandb.init(mode="offline", dir=tmp_path, project="metatl-tests")
    try:
        tracker = WandbTracker(WandbConfig(mode="auto"), tmp_path / "run")
        assert tracker.run is theirs and tracker.mode == "offline"
        tracker.log({"val/accuracy": 0.5}, 7)
        tracker.close()
        assert wandb.run is theirs
        assert (tmp_path / "run" / RUN_ID_FILE).read_text().strip() == theirs.id
    finally:
        theirs.finish()
    assert wandb.run is None


def test_tracker_logs_against_the_step_metric(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import wandb

    fake = FakeRun(offline=False)
    monkeypatch.setattr(wandb, "run", fake)
    tracker = WandbTracker(WandbConfig(), tmp_path, {"seed": 1})
    tracker.log({"loss": 2.0}, 12)
    tracker.log_image("grid", tiny_png(tmp_path / "grid.png"))
    (tmp_path / "best.pt").write_bytes(b"weights")
    tracker.log_artifact(tmp_path / "best.pt")
    (tmp_path / "results.json").write_text("{}")
    tracker.log_artifact(tmp_path / "results.json", "results.json")
    tracker.close()

    assert fake.metrics == [(STEP_METRIC, None), ("*", STEP_METRIC)]
    assert fake.config == {"seed": 1}
    assert fake.logged[0] == {"loss": 2.0, STEP_METRIC: 12}
    assert STEP_METRIC not in fake.logged[1]
    assert isinstance(fake.logged[1]["grid"], wandb.Image)
    assert [(a.name, a.type) for a in fake.artifacts] == [
        ("best-fake123", "model"),
        ("results-fake123", "report"),
    ]
    assert not fake.finished


def test_wandb_init_failure_names_the_config_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import wandb

    def refuse(**kwargs: Any) -> None:
        raise wandb.errors.CommError("entity nobody not found\nmore detail")

    monkeypatch.setattr(wandb, "init", refuse)
    with pytest.raises(ValueError, match="entity nobody not found") as err:
        create_tracker(load_config(None, ["tracking.wandb.entity=nobody"]), tmp_path)
    assert "tracking.wandb.entity='nobody'" in str(err.value)
    assert "tracking.wandb.mode=offline" in str(err.value)
    assert "more detail" not in str(err.value)


@pytest.mark.parametrize("rank_env", [{"RANK": "1"}, {"LOCAL_RANK": "2"}])
def test_other_ranks_do_not_touch_wandb(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rank_env: dict[str, str]
) -> None:
    import wandb

    for name, value in rank_env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(wandb, "init", lambda **kwargs: pytest.fail("wandb.init called"))
    tracker = WandbTracker(OFFLINE, tmp_path)
    tracker.log({"a": 1.0}, 1)
    tracker.close()
    assert tracker.run is None
    assert not (tmp_path / "wandb").exists() and not (tmp_path / RUN_ID_FILE).exists()

    multi = create_tracker(load_config(None, ["tracking.wandb.mode=offline"]), tmp_path)
    assert [type(t) for t in multi.trackers] == [JsonlTracker]
    multi.close()


def test_disabled_mode_keeps_only_the_jsonl_log(tmp_path: Path) -> None:
    tracker = create_tracker(load_config(None, ["tracking.wandb.mode=disabled"]), tmp_path)
    tracker.log({"loss": 1.5}, 4)
    tracker.log_summary({"acc": 0.5})
    tracker.close()
    assert [type(t) for t in tracker.trackers] == [JsonlTracker]
    records = read_jsonl(tmp_path / "metrics.jsonl")
    assert [(r["kind"], r.get("loss"), r.get("summary")) for r in records] == [
        ("metrics", 1.5, None),
        ("summary", None, {"acc": 0.5}),
    ]
    assert not (tmp_path / "wandb").exists()


def test_sweep_overrides_from_the_active_run(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import wandb

    sweep_config = {
        "model.maml.inner_lr": 0.1,
        "model.maml.adapt": "top:2",
        "test": {"shots": [1, 5]},
        "tracking.wandb.tags": ["a b", "c,d"],
        "optim.lr": 3e-05,
        "finetune.n_blocks": -1,
        "model.maml.first_order": True,
        "batch": 7,
        "model.maml.innr_lr": 2.0,
    }
    monkeypatch.setattr(wandb, "run", FakeRun(config=sweep_config))
    overrides = sweep_overrides()
    assert overrides == [
        "finetune.n_blocks=-1",
        "model.maml.adapt=top:2",
        "model.maml.first_order=true",
        "model.maml.inner_lr=0.1",
        "optim.lr=3e-05",
        "test.shots=[1,5]",
        'tracking.wandb.tags=[a b,"c,d"]',
    ]
    assert "model.maml.innr_lr" in caplog.text
    config = load_config(None, overrides)
    assert config.model.maml.inner_lr == 0.1 and config.optim.lr == 3e-05
    assert config.model.maml.adapt == "top:2" and config.model.maml.first_order is True
    assert config.tracking.wandb.tags == ["a b", "c,d"] and config.test.shots == [1, 5]
    assert config.finetune.n_blocks == -1
    assert sweep_overrides(["optim.lr"]) == ["optim.lr=3e-05"]

    monkeypatch.setattr(wandb, "run", None)
    assert sweep_overrides() == []


def test_sweep_overrides_does_not_import_wandb(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "wandb", raising=False)
    assert sweep_overrides() == []
    assert "wandb" not in sys.modules


def test_override_values_parse_back() -> None:
    values = [3, -0.5, 1e-05, True, None, "top:2", "1e-3", "true", "", [1, 5], ["x", "y,z"]]
    assert [format_override_value(v) for v in values] == [
        "3",
        "-0.5",
        "1e-05",
        "true",
        "null",
        "top:2",
        '"1e-3"',
        '"true"',
        '""',
        "[1,5]",
        '[x,"y,z"]',
    ]
    assert format_override_value(float("inf")) == ".inf"
    assert format_override_value(float("nan")) == ".nan"
    with pytest.raises(ValueError, match="optim.lr_decay must be a finite number"):
        load_config(None, ["optim.lr_decay=.nan"])  # parsed as nan, then refused
    with pytest.raises(ValueError, match="cannot write"):
        format_override_value({"a": 1})


def test_config_keys_are_the_dotted_leaves() -> None:
    keys = config_keys()
    assert keys == sorted(keys) and len(keys) == len(set(keys))
    assert {"model.maml.inner_lr", "tracking.wandb.mode", "test.shots", "seed"} <= set(keys)
    assert "model.maml" not in keys and "tracking.wandb" not in keys


def test_artifact_names_are_per_run() -> None:
    assert artifact_name("best.pt", "ab12") == "best-ab12"
    assert artifact_name("my run/last", "ab12") == "my-run-last-ab12"


def test_importing_metatl_does_not_import_wandb() -> None:
    code = "import sys, metatl, metatl.tracking, metatl.training; sys.exit('wandb' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
