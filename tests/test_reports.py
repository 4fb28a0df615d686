"""Run reports: the PNG plots, report.md, and writing both into a run directory."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import pytest
from PIL import Image

from metatl.atomic_io import write_atomic
from metatl.reports import (
    matplotlib_available,
    plot_accuracy_vs_shots,
    plot_bars,
    plot_learning_curves,
    plot_method_bars,
    render_run_report,
    write_run_report,
)
from metatl.reports.extract import metric_series, parse_setting, shots_by_way
from metatl.tracking import JsonlTracker
from metatl.training.evaluation import EvalResult, paired_difference

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

RECORDS = [
    {"kind": "config", "time": 0.0, "config": {}},
    *(
        {
            "kind": "metrics",
            "step": s,
            "time": 0.0,
            "train/loss": 1.6 / s,
            "train/accuracy": 0.5 + s / 100,
        }
        for s in (10, 20, 30, 40)
    ),
    {"kind": "metrics", "step": 20, "time": 0.0, "val/accuracy": 0.6, "val/ci95": 0.05},
    {"kind": "metrics", "step": 40, "time": 0.0, "val/accuracy": 0.7, "val/ci95": 0.04},
    {"kind": "artifact", "time": 0.0, "path": "best.pt", "name": "best.pt"},
]

TEST = {
    "5-way 1-shot": {
        "protonet": {"accuracy": 0.6123, "ci95": 0.0081, "episodes": 600},
        "pixels": {"accuracy": 0.3, "ci95": 0.01, "episodes": 600},
    },
    "5-way 5-shot": {
        "protonet": {"accuracy": 0.8, "ci95": 0.00456, "episodes": 600},
        "pixels": {"accuracy": 0.45, "ci95": 0.012, "episodes": 600},
    },
}

RESULTS = {
    "run_dir": "runs/protonet-conv4-glyphs",
    "best_val": {"accuracy": 0.931, "ci95": 0.0102, "step": 500},
    "test": TEST,
    "config": {
        "model": {"algorithm": "protonet", "backbone": "conv4"},
        "data": {"dataset": "glyphs"},
        "train": {"steps": 2000},
        "test": {"query": 15},
    },
    "train_time_s": 754.4,
}

needs_matplotlib = pytest.mark.skipif(not matplotlib_available(), reason="needs matplotlib")


def png_size(path: Path) -> tuple[int, int]:
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


@pytest.fixture
def no_matplotlib(monkeypatch: pytest.MonkeyPatch) -> None:
    """``import matplotlib`` (and its submodules) fails, as when it is not installed."""
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)


# ---- reading the log and the settings --------------------------------------------------------


def test_metric_series_later_records_win_and_resume_rewinds() -> None:
    records = [
        {"kind": "metrics", "step": 10, "train/loss": 1.0},
        {"kind": "metrics", "step": 20, "train/loss": 0.8},
        {"kind": "metrics", "step": 30, "train/loss": 0.7},
        {"kind": "resume", "step": 20},  # training went back to step 20: step 30 is stale
        {"kind": "metrics", "step": 20, "train/loss": 0.75},  # logged again after resuming
        {"kind": "image", "step": None, "key": "x", "path": "x.png"},
        {"kind": "metrics", "step": 40, "train/loss": "nan", "val/accuracy": 0.5},
        {"kind": "metrics", "step": 50, "train/loss": 0.6, "val/accuracy": 0.6},
        {"kind": "metrics", "step": 40, "resumed_from_step": 40},  # how run_experiment marks it
        {"kind": "summary", "summary": {"train/loss": 0.0}},
    ]
    loss = metric_series(records, "train/loss")
    assert loss[:2] == [(10, 1.0), (20, 0.75)]
    assert loss[2][0] == 40 and loss[2][1] != loss[2][1]  # NaN kept as a float, a gap
    assert len(loss) == 3
    assert metric_series(records, "val/accuracy") == [(40, 0.5)]
    assert metric_series(records, "val/ci95") == []
    # Without a resume record, a repeated step keeps the later value.
    again = [{"kind": "metrics", "step": 5, "a": 1}, {"kind": "metrics", "step": 5, "a": 2}]
    assert metric_series(again, "a") == [(5, 2.0)]


def test_settings_parse_into_way_and_shot() -> None:
    assert parse_setting("5-way 1-shot") == (5, 1)
    assert parse_setting("20-way 10-shot") == (20, 10)
    assert parse_setting("cross-domain") is None
    test = {"5-way 5-shot": {}, "10-way 1-shot": {}, "5-way 1-shot": {}, "odd": {}}
    assert shots_by_way(test) == {5: [1, 5], 10: [1]}


# ---- plots -----------------------------------------------------------------------------------


@needs_matplotlib
def test_each_plot_writes_a_deterministic_png(tmp_path: Path) -> None:
    labels = ["lr=1e-3", "lr=3e-3", "lr=1e-2"]
    plots = {
        "curves": lambda p: plot_learning_curves(RECORDS, p),
        "shots": lambda p: plot_accuracy_vs_shots(TEST, p),
        "methods": lambda p: plot_method_bars(TEST, p),
        "bars": lambda p: plot_bars(labels, [0.9, 0.8, 0.7], [0.01, 0.02, 0.01], p, title="t"),
    }
    sizes = {}
    for name, plot in plots.items():
        first, second = tmp_path / f"{name}.png", tmp_path / f"{name}-again.png"
        assert plot(first) == first and plot(second) == second
        sizes[name] = png_size(first)
        assert first.read_bytes() == second.read_bytes()
        assert b"Software" not in first.read_bytes()  # no version-dependent metadata
    # Figure sizes in inches x 120 dpi: two learning-curve panels of 4.8 x 3.6.
    assert sizes == {
        "curves": (1152, 432),
        "shots": (576, 432),
        "methods": (576, 432),
        "bars": (480, 432),
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{n}{s}.png" for n in plots for s in ("", "-again")
    )  # no temporary files left behind
    # Different data, different picture.
    plot_bars(labels, [0.9, 0.8, 0.6], None, tmp_path / "other.png")
    assert (tmp_path / "other.png").read_bytes() != (tmp_path / "bars.png").read_bytes()


@needs_matplotlib
def test_plots_adapt_to_what_there_is(tmp_path: Path) -> None:
    # Validation only: one accuracy panel. Two ways: one accuracy-vs-shots panel per way.
    val_only = [r for r in RECORDS if "val/accuracy" in r]
    assert png_size(plot_learning_curves(val_only, tmp_path / "val.png")) == (576, 432)
    two_ways = {**TEST, "10-way 1-shot": {"protonet": {"accuracy": 0.4, "ci95": 0.01}}}
    assert png_size(plot_accuracy_vs_shots(two_ways, tmp_path / "ways.png")) == (1008, 432)
    with pytest.raises(ValueError, match="no train/loss"):
        plot_learning_curves(RECORDS[:1], tmp_path / "none.png")
    with pytest.raises(ValueError, match="no '<way>-way <shot>-shot' setting among odd"):
        plot_accuracy_vs_shots({"odd": TEST["5-way 1-shot"]}, tmp_path / "none.png")
    with pytest.raises(ValueError, match="2 labels, 1 values, no errors"):
        plot_bars(["a", "b"], [1.0], None, tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def test_atomic_write_leaves_nothing_when_the_writer_fails(tmp_path: Path) -> None:
    def fail(f) -> None:
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_atomic(tmp_path / "x.png", fail)
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_gives_the_permissions_open_would(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        path = write_atomic(tmp_path / "x.json", lambda f: f.write(b"{}"))
    finally:
        os.umask(previous)
    assert path.read_bytes() == b"{}"
    assert path.stat().st_mode & 0o777 == 0o644  # not mkstemp's private 0600


# ---- report.md -------------------------------------------------------------------------------


def test_report_has_summary_table_and_plot_links(tmp_path: Path) -> None:
    plots = [tmp_path / "learning_curves.png", tmp_path / "methods.png"]
    report = render_run_report(RESULTS, plots, relative_to=tmp_path)
    assert report.startswith("# Run `runs/protonet-conv4-glyphs`\n\n")
    assert (
        "- algorithm: protonet, backbone: conv4, dataset: glyphs\n"
        "- meta-training: 2000 steps in 12 min 34 s\n"
        "- best validation: 93.10 ± 1.02% at step 500\n"
        "- test: 600 episodes per setting, 15 queries per class\n"
    ) in report
    assert (
        "| setting | protonet | pixels |\n"
        "| --- | --- | --- |\n"
        "| 5-way 1-shot | 61.23 ± 0.81 | 30.00 ± 1.00 |\n"
        "| 5-way 5-shot | 80.00 ± 0.46 | 45.00 ± 1.20 |\n"
    ) in report
    # Summaries hold no per-episode accuracies: no paired differences.
    assert "Paired differences" not in report
    assert report.endswith(
        "## Plots\n\n![learning curves](learning_curves.png)\n\n![methods](methods.png)\n"
    )


def test_report_of_an_evaluation_with_paired_differences() -> None:
    table = {
        "5-way 1-shot": {
            "protonet": EvalResult.from_accuracies([1.0, 0.8, 0.6]),
            "pixels": EvalResult.from_accuracies([0.6, 0.4, 0.2]),
        }
    }
    results = {
        "checkpoint": "runs/x/best.pt",
        "checkpoint_step": 40,
        "split": "patterns/test",
        "test": {s: {m: r.summary() for m, r in rows.items()} for s, rows in table.items()},
        "config": {"train": {"steps": 40}, "test": {"query": 3}},
    }
    report = render_run_report(results, [], table=table)
    assert report.startswith("# Evaluation of `runs/x/best.pt`\n\n")
    assert "- checkpoint of step 40\n- test: 3 episodes per setting, 3 queries per class, " in (
        report
    )
    assert "split patterns/test\n" in report
    mean, ci = paired_difference(table["5-way 1-shot"]["protonet"], table["5-way 1-shot"]["pixels"])
    assert f"| protonet − pixels | +{100 * mean:.2f} ± {100 * ci:.2f} |" in report
    assert "| protonet − pixels | +40.00 ± 0.00 |" in report
    assert "## Plots" not in report
    assert "No test results." in render_run_report({"run_dir": "r"}, [])
    steps0 = render_run_report({"config": {"train": {"steps": 0}}}, [])
    assert "\n- no meta-training (train.steps=0)\n" in steps0


# ---- write_run_report ------------------------------------------------------------------------


@needs_matplotlib
def test_write_run_report_reads_the_run_directory(tmp_path: Path) -> None:
    (tmp_path / "results.json").write_text(json.dumps(RESULTS))
    tracker = JsonlTracker(tmp_path / "metrics.jsonl")
    for record in RECORDS:
        if record["kind"] == "metrics":
            tracker.log({k: v for k, v in record.items() if "/" in k}, record["step"])
    tracker.close()

    written = write_run_report(tmp_path)
    names = ["learning_curves.png", "accuracy_vs_shots.png", "methods.png"]
    assert written == [tmp_path / n for n in names]
    assert all(png_size(p)[0] > 0 for p in written)
    report = (tmp_path / "report.md").read_text()
    assert all(f"]({n})" in report for n in names)
    assert "| 5-way 5-shot | 80.00 ± 0.46 | 45.00 ± 1.20 |" in report
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [*names, "report.md", "results.json", "metrics.jsonl"]
    )


@needs_matplotlib
def test_write_run_report_plots_only_what_the_run_has(tmp_path: Path) -> None:
    one_shot = {**RESULTS, "test": {"5-way 1-shot": TEST["5-way 1-shot"]}}
    assert write_run_report(tmp_path, results=one_shot, records=[]) == [tmp_path / "methods.png"]
    assert "![methods](methods.png)" in (tmp_path / "report.md").read_text()
    assert write_run_report(tmp_path, results={"run_dir": "r", "test": {}}, records=[]) == []
    assert "## Plots" not in (tmp_path / "report.md").read_text()


def test_without_matplotlib_only_report_md(
    tmp_path: Path, no_matplotlib: None, caplog: pytest.LogCaptureFixture
) -> None:
    assert not matplotlib_available()
    with caplog.at_level(logging.INFO, logger="metatl.reports"):
        assert write_run_report(tmp_path, results=RESULTS, records=RECORDS) == []
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]
    report = (tmp_path / "report.md").read_text()
    assert "| 5-way 1-shot | 61.23 ± 0.81 | 30.00 ± 1.00 |" in report and "## Plots" not in report
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "pip install 'metatl[plots]'" in messages[0]
    with pytest.raises(ImportError, match=r"pip install 'metatl\[plots\]'"):
        plot_bars(["a"], [1.0], None, tmp_path / "a.png")


def test_an_undefined_interval_is_na_in_the_report_and_the_plots(tmp_path: Path) -> None:
    table = {
        f"5-way {shot}-shot": {
            "protonet": EvalResult.from_accuracies([0.8]),
            "pixels": EvalResult.from_accuracies([0.4]),
        }
        for shot in (1, 5)
    }
    results = {
        "checkpoint": "runs/x/best.pt",
        "best_val": {"accuracy": 0.5, "ci95": None, "step": 3},
        "test": {s: {m: r.summary() for m, r in rows.items()} for s, rows in table.items()},
    }
    (tmp_path / "results.json").write_text(json.dumps(results, allow_nan=False))
    written = write_run_report(tmp_path, records=[])  # from results.json: summaries only
    report = (tmp_path / "report.md").read_text()
    assert "- best validation: 50.00 ± n/a% at step 3\n" in report
    assert "| 5-way 1-shot | 80.00 ± n/a | 40.00 ± n/a |\n" in report
    assert (
        "\n\nNote: 1 episode per setting; below 30 the normal approximation behind the 95% "
        "intervals is doubtful (n/a: one episode gives no interval).\n"
    ) in report
    if matplotlib_available():
        assert [p.name for p in written] == ["accuracy_vs_shots.png", "methods.png"]
        assert all(png_size(p)[0] > 0 for p in written)
        plot_bars(["a", "b"], [1.0, 2.0], [float("nan"), 0.1], tmp_path / "bars.png")
    in_memory = render_run_report(results, [], table=table)
    assert "| protonet − pixels | +40.00 ± n/a | +40.00 ± n/a |" in in_memory
    assert in_memory.count("Note: 1 episode per setting") == 1
