"""The layer-transfer report: summaries over seeds, the findings' verdicts, figures, report.md."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from metatl.functional import t_quantile_975
from metatl.reports import layers
from metatl.reports.layer_findings import Cell, findings, missing_runs, summarise
from metatl.reports.layers import (
    layer_table,
    log_to_tracker,
    plot_figure2,
    plot_figure3,
    write_layer_report,
)
from metatl.tracking import Tracker

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
T975 = {1: 12.706204736, 2: 4.302652730, 4: 2.776445105, 9: 2.262157163, 29: 2.045229642}
TREATMENTS = ("baseA", "baseB", "BnB", "BnB+", "AnB", "AnB+", "random")


def meta(blocks: int = 4, seeds: tuple[int, ...] = (0, 1, 2), splits: tuple[str, ...] = ()) -> dict:
    kinds = {"random": "similar", "stroke": "dissimilar"}
    return {
        "name": "glyph layers",
        "dataset": "glyphs",
        "backbone": "conv4",
        "blocks": blocks,
        "n_values": list(range(1, blocks)),
        "seeds": list(seeds),
        "splits": {
            s: {"reason": f"{s} reason.", "classes_a": 20, "classes_b": 20, "kind": kinds[s]}
            for s in splits or tuple(kinds)
        },
        "treatments": list(TREATMENTS),
        "wall_time_s": 3725.0,
    }


def record(split: str, seed: int, treatment: str, n: int, accuracy: float) -> dict[str, Any]:
    return {
        "split": split,
        "seed": seed,
        "treatment": treatment,
        "n": n,
        "accuracy": accuracy,
        "ci95": 0.01,
        "test_images": 5600,
        "run": f"runs/{split}/seed{seed}/{treatment}{n or ''}",
    }


Shape = Callable[[str, str, int], float]


def study(
    shape: Shape, *, blocks: int = 4, seeds: tuple[int, ...] = (0, 1, 2), spread: float = 0.002
):
    """Every run of a study: accuracy = ``shape(split, treatment, n)`` plus a per-seed offset
    from (-spread, 0, +spread), rotated by treatment and n so paired differences vary by seed
    while their mean over three seeds is exactly the shape's difference."""
    out = []
    for split in ("random", "stroke"):
        for t_index, treatment in enumerate(TREATMENTS):
            for n in (0,) if treatment.startswith("base") else range(1, blocks):
                for seed in seeds:
                    offset = spread * ((seed + t_index + n) % 3 - 1)
                    out.append(
                        record(split, seed, treatment, n, shape(split, treatment, n) + offset)
                    )
    return out


def paper_like(split: str, treatment: str, n: int) -> float:
    values = {
        "baseA": [0.82],
        "baseB": [0.80],
        "BnB": [None, 0.80, 0.76, 0.80],
        "BnB+": [None, 0.80, 0.80, 0.80],
        "AnB": [None, 0.80, 0.78, 0.74 if split == "random" else 0.65],
        "AnB+": [None, 0.82, 0.82, 0.82],
        "random": [None, 0.70, 0.60, 0.50],
    }
    return values[treatment][n]


def reversed_shape(split: str, treatment: str, n: int) -> float:
    values = {
        "baseA": [0.82],
        "baseB": [0.80],
        "BnB": [None, 0.80, 0.84, 0.80],
        "BnB+": [None, 0.75, 0.80, 0.80],
        "AnB": [None, 0.74, 0.78, 0.80 if split == "random" else 0.85],
        "AnB+": [None, 0.80, 0.75, 0.80],
        "random": [None, 0.90, 0.60, 0.50],
    }
    return values[treatment][n]


def verdicts(records: list[dict], m: dict) -> dict[str, str]:
    return {f.key: f.verdict for f in findings(records, m)}


# ------------------------------------------------------------------------------------- summaries


def test_t_quantile_matches_student_t() -> None:
    for df, expected in T975.items():
        assert t_quantile_975(df) == pytest.approx(expected, abs=1e-8)
    stats = pytest.importorskip("scipy.stats")
    for df in range(1, 60):
        assert t_quantile_975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=1e-9)


def test_summarise_means_and_t_intervals_by_hand() -> None:
    accuracies, bases = (0.80, 0.82, 0.87), (0.78, 0.80, 0.81)
    records = [record("random", s, "AnB", 2, a) for s, a in enumerate(accuracies)]
    records += [record("random", s, "baseB", 0, b) for s, b in enumerate(bases)]
    records += [record("random", 0, "baseA", 0, 0.9), record("stroke", 0, "AnB", 1, 0.5)]
    cells = {(c.split, c.treatment, c.n): c for c in summarise(records)}
    assert list(cells) == [
        ("random", "baseA", 0),
        ("random", "baseB", 0),
        ("random", "AnB", 2),
        ("stroke", "AnB", 1),
    ]
    anb = cells["random", "AnB", 2]
    # mean 0.83, sd sqrt(0.0013); deltas (0.02, 0.02, 0.06): mean 1/30, sd sqrt(0.0016/3)
    assert anb.mean == pytest.approx(0.83)
    assert anb.ci95 == pytest.approx(T975[2] * math.sqrt(0.0013) / math.sqrt(3))
    assert anb.seeds == 3 and anb.accuracies == pytest.approx(accuracies)
    assert anb.delta == pytest.approx(1 / 30)
    assert anb.delta_ci95 == pytest.approx(T975[2] * math.sqrt(0.0016 / 3) / math.sqrt(3))
    assert anb.paired_seeds == 3
    assert anb.binomial_ci95 == pytest.approx(math.sqrt(3 * 0.01**2) / 3)
    assert anb.error == anb.ci95 and anb.delta_error == anb.delta_ci95
    assert cells["random", "baseB", 0].delta == 0.0
    assert math.isnan(cells["random", "baseA", 0].delta)  # measured on A, not B
    assert math.isnan(cells["stroke", "AnB", 1].delta)  # no baseB on stroke


def test_summarise_pairs_only_common_seeds() -> None:
    records = [record("random", s, "BnB", 1, a) for s, a in ((0, 0.7), (1, 0.8), (2, 0.9))]
    records += [record("random", s, "baseB", 0, b) for s, b in ((1, 0.75), (2, 0.8))]
    cell = next(c for c in summarise(records) if c.treatment == "BnB")
    assert cell.seeds == 3 and cell.paired_seeds == 2
    assert cell.delta == pytest.approx(0.075)  # (0.05 + 0.10) / 2
    assert cell.delta_ci95 == pytest.approx(T975[1] * 0.025 * math.sqrt(2) / math.sqrt(2))


def test_one_seed_uses_the_runs_binomial_intervals() -> None:
    records = [
        record("random", 0, "baseB", 0, 0.80),
        {**record("random", 0, "AnB+", 1, 0.85), "ci95": None},  # from test_images instead
    ]
    cells = {c.treatment: c for c in summarise(records)}
    binomial = 1.96 * math.sqrt(0.85 * 0.15 / 5600)
    plus = cells["AnB+"]
    assert math.isnan(plus.ci95) and math.isnan(plus.delta_ci95)
    assert plus.error == pytest.approx(binomial)
    assert plus.delta == pytest.approx(0.05)
    assert plus.delta_error == pytest.approx(math.hypot(binomial, 0.01))
    m = meta(blocks=2, seeds=(0,), splits=("random",))
    boost = {f.key: f for f in findings(records, m)}["transfer_boost"]
    assert boost.verdict == "held"
    assert "pooled binomial of the runs; 1 seed)" in boost.evidence and "+5.00" in boost.evidence
    # The same difference inside a wide binomial interval decides nothing.
    wide = [{**r, "ci95": 0.05} for r in records]
    assert verdicts(wide, m)["transfer_boost"] == "inconclusive"


def test_duplicate_run_keeps_the_later_record_and_says_so(caplog) -> None:
    records = [record("random", 0, "baseB", 0, 0.5), record("random", 0, "baseB", 0, 0.7)]
    with caplog.at_level(logging.WARNING, logger="metatl.reports.layers"):
        (cell,) = summarise(records)
    assert "random/seed0/baseB n=0; the later is kept" in caplog.text
    assert cell.mean == 0.7 and cell.seeds == 1


def test_record_without_accuracy_is_an_error_naming_the_key() -> None:
    bad = record("random", 0, "baseB", 0, 0.5)
    del bad["accuracy"]
    with pytest.raises(ValueError, match="accuracy"):
        summarise([bad])


# -------------------------------------------------------------------------------------- findings


def test_paper_like_study_holds_every_finding() -> None:
    found = {f.key: f for f in findings(study(paper_like), meta())}
    assert {k: f.verdict for k, f in found.items()} == dict.fromkeys(found, "held")
    assert list(found) == [
        "generality",
        "co_adaptation",
        "fine_tuning",
        "transfer_boost",
        "dissimilar",
        "random",
    ]
    assert "-6.00" in found["generality"].evidence  # 0.74 - 0.80
    assert "n=2" in found["co_adaptation"].evidence and "-4.00" in found["co_adaptation"].evidence
    assert "difference -9.00" in found["dissimilar"].evidence  # -0.15 - (-0.06)
    assert all(f.claim for f in found.values())


def test_reversed_study_holds_none() -> None:
    assert set(verdicts(study(reversed_shape), meta()).values()) == {"not held"}


def test_flat_noisy_study_is_inconclusive_except_fine_tuning() -> None:
    flat = study(lambda *_: 0.80, spread=0.02)
    assert verdicts(flat, meta()) == {
        "generality": "inconclusive",
        "co_adaptation": "inconclusive",
        "fine_tuning": "held",  # every BnB+ interval includes 0
        "transfer_boost": "inconclusive",
        "dissimilar": "inconclusive",
        "random": "inconclusive",
    }


def test_each_rule_flips_on_its_own_cell() -> None:
    def paper_but(changes: dict[tuple[str, int], float]) -> Shape:
        return lambda s, t, n: changes.get((t, n), paper_like(s, t, n))

    m = meta()
    # BnB at n=2 level with baseB and both ends: no dip, no rise.
    assert verdicts(study(paper_but({("BnB", 2): 0.80})), m)["co_adaptation"] == "inconclusive"
    # BnB at n=2 below baseB and n=1 but above n=3: a rise over one end.
    rise = paper_but({("BnB", 2): 0.76, ("BnB", 3): 0.70})
    assert verdicts(study(rise), m)["co_adaptation"] == "not held"
    # AnB+ above baseB at one n, level elsewhere: still held; below at one n: not held.
    one_up = paper_but({("AnB+", 1): 0.80, ("AnB+", 2): 0.80})
    assert verdicts(study(one_up), m)["transfer_boost"] == "held"
    one_down = paper_but({("AnB+", 3): 0.77})
    assert verdicts(study(one_down), m)["transfer_boost"] == "not held"
    # random above AnB at n=3 only: the paper's ranking fails.
    assert verdicts(study(paper_but({("random", 3): 0.76})), m)["random"] == "not held"
    # random level with AnB at n=3: undecided there.
    assert verdicts(study(paper_but({("random", 3): 0.74})), m)["random"] == "inconclusive"
    # AnB level at n=1 and n=3.
    assert verdicts(study(paper_but({("AnB", 3): 0.80})), m)["generality"] == "inconclusive"
    # BnB+ above baseB at one n is a mismatch too.
    assert verdicts(study(paper_but({("BnB+", 2): 0.84})), m)["fine_tuning"] == "not held"
    # A dip below baseB and BnB at n=3 says nothing when BnB at n=1 was not run.
    no_end = [r for r in study(paper_like) if (r["treatment"], r["n"]) != ("BnB", 1)]
    assert verdicts(no_end, m)["co_adaptation"] == "inconclusive"


def test_dissimilar_rule_combines_both_intervals() -> None:
    def shape(top_dissimilar: float) -> Shape:
        return lambda s, t, n: top_dissimilar if (s, t, n) == ("stroke", "AnB", 3) else 0.80

    m = meta(seeds=(0,))
    # One seed: each drop has a binomial half-width of 1.41 points, the difference 2.00.
    close = study(shape(0.79), seeds=(0,), spread=0.0)
    found = {f.key: f for f in findings(close, m)}["dissimilar"]
    assert found.verdict == "inconclusive"
    assert "difference -1.00 ± 2.00" in found.evidence
    far = study(shape(0.77), seeds=(0,), spread=0.0)
    assert verdicts(far, m)["dissimilar"] == "held"


def test_findings_without_the_cells_they_need_are_inconclusive() -> None:
    only_random = [r for r in study(paper_like, blocks=3) if r["split"] == "random"]
    found = {f.key: f for f in findings(only_random, meta(blocks=3, splits=("random",)))}
    assert found["co_adaptation"].verdict == "inconclusive"
    assert "no middle n" in found["co_adaptation"].evidence
    assert found["dissimilar"].verdict == "inconclusive"
    assert "dissimilar=None" in found["dissimilar"].evidence
    assert found["generality"].verdict == "held"  # n=2 (top) vs n=1 still compares
    no_plus = [r for r in only_random if r["treatment"] not in ("BnB+", "AnB+", "random")]
    got = verdicts(no_plus, meta(blocks=3, splits=("random",)))
    assert got["fine_tuning"] == got["transfer_boost"] == got["random"] == "inconclusive"
    # Without a split of kind "similar", the similar-task findings cannot be judged.
    stroke = [r for r in study(paper_like) if r["split"] == "stroke"]
    got = verdicts(stroke, meta(splits=("stroke",)))
    assert got["generality"] == got["transfer_boost"] == "inconclusive"
    assert got["co_adaptation"] == "held"  # judged on the first split run


# ------------------------------------------------------------------------------ tables and report


def test_layer_table_entries() -> None:
    records = study(paper_like)
    records = [r for r in records if not (r["treatment"] == "AnB" and r["n"] == 3)]
    records.append(record("stroke", 0, "AnB", 3, 0.65))
    table = layer_table(summarise(records), meta())
    lines = table.splitlines()
    assert lines[0] == "**random** (similar)"
    assert lines[2] == "| treatment | n=0 | n=1 | n=2 | n=3 |"
    random_rows = lines[: lines.index("**stroke** (dissimilar)")]
    anb = next(line for line in random_rows if line.startswith("| AnB |"))
    spread = 100 * T975[2] * 0.002 / math.sqrt(3)  # offsets (-s, 0, s): sd = s
    assert anb == f"| AnB | – | 80.0 ± {spread:.1f} | 78.0 ± {spread:.1f} | – |"
    assert "| AnB | – | 80.0 ± 0.5 | 78.0 ± 0.5 | 65.0 ± 1.0† |" in lines
    assert "† one seed" in table
    deltas = layer_table(summarise(study(paper_like)), meta(), delta=True)
    assert "| random | – | -10.0 ± 0.0 | -20.0 ± " in deltas
    assert "| baseA | – |" in deltas


def test_missing_runs_are_named() -> None:
    records = [r for r in study(paper_like) if not (r["seed"] == 1 and r["treatment"] == "AnB")]
    records = [r for r in records if not (r["split"] == "stroke" and r["treatment"] == "baseB")]
    missing = missing_runs(records, meta())
    assert missing[:3] == ["random/seed1/AnB n=1", "random/seed1/AnB n=2", "random/seed1/AnB n=3"]
    assert "stroke/seed0/baseB" in missing and len(missing) == 3 + 3 + 3
    assert missing_runs(study(paper_like), meta()) == []


def test_partial_study_report_names_missing_runs(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(layers, "matplotlib_available", lambda: False)
    records = [r for r in study(paper_like) if r["split"] == "random" and r["seed"] != 2]
    path = write_layer_report(tmp_path, records, meta())
    assert path == tmp_path / "report.md"
    text = path.read_text()
    assert text.startswith("# Layer transfer: glyph layers\n")
    assert "- runs: 34 finished, 68 missing (listed below)" in text
    assert "random/seed2/baseB" in text and "stroke/seed0/AnB+ n=3" in text
    assert "**random** (similar): A has 20 classes, B has 20. random reason." in text
    assert "- wall time: 1 h 2 min" in text
    assert "matplotlib is not installed" in text and not list(tmp_path.glob("*.png"))
    assert "| Features transfer worse between dissimilar tasks" in text
    assert "| **inconclusive** |" in text
    assert "## Missing runs" in text


def test_complete_report_embeds_figures(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path = write_layer_report(tmp_path, study(paper_like), meta())
    text = path.read_text()
    assert "![figure2](figure2.png)" in text and "![figure3](figure3.png)" in text
    assert "none missing" in text and "## Missing runs" not in text
    assert text.count("| **held** |") == 6
    for name in ("figure2.png", "figure3.png"):
        assert (tmp_path / name).read_bytes().startswith(PNG_SIGNATURE)


# ----------------------------------------------------------------------------------------- plots


def test_figures_are_valid_pngs(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from PIL import Image

    cells = summarise(study(paper_like))
    for plot, name in ((plot_figure2, "f2.png"), (plot_figure3, "f3.png")):
        path = plot(cells, meta(), tmp_path / name)
        assert path.read_bytes().startswith(PNG_SIGNATURE)
        with Image.open(path) as image:
            image.verify()
            assert image.size[0] > 300 and image.size[1] > 200


def test_figure2_draws_each_split_with_its_baseline() -> None:
    pytest.importorskip("matplotlib")
    cells = summarise(study(paper_like))
    fig = layers._draw_figure2(cells, meta())
    assert [ax.get_title() for ax in fig.axes] == ["random (similar)", "stroke (dissimilar)"]
    for ax in fig.axes:
        labels = ax.get_legend_handles_labels()[1]
        assert labels == ["baseB", "baseB 95% CI", "BnB", "BnB+", "AnB", "AnB+", "random"]
        baseline = ax.get_lines()[0]
        assert list(baseline.get_ydata()) == pytest.approx([80.0, 80.0])


def test_figure3_plots_the_drops() -> None:
    pytest.importorskip("matplotlib")
    fig = layers._draw_figure3(summarise(study(paper_like)), meta())
    (ax,) = fig.axes
    drops = {bars.get_label(): list(bars.lines[0].get_ydata()) for bars in ax.containers}
    assert drops["AnB, stroke (dissimilar)"] == pytest.approx([0.0, -2.0, -15.0])
    assert drops["AnB+, random (similar)"] == pytest.approx([2.0, 2.0, 2.0])
    with pytest.raises(ValueError, match="AnB"):
        layers._draw_figure3(
            [c for c in summarise(study(paper_like)) if c.treatment == "baseB"], meta()
        )


# --------------------------------------------------------------------------------------- tracker


class RecordingTracker:
    def __init__(self) -> None:
        self.summary: dict[str, Any] = {}
        self.images: list[tuple[str, str | Path]] = []

    def log(self, metrics: Any, step: int) -> None:
        raise AssertionError("n is not a step")

    def log_config(self, config: Any) -> None: ...

    def log_artifact(self, path: Any, name: Any = None) -> None: ...

    def log_image(self, key: str, path: str | Path, step: Any = None, caption: Any = None) -> None:
        self.images.append((key, path))

    def log_summary(self, values: Any) -> None:
        self.summary.update(values)

    def close(self) -> None: ...


def test_log_to_tracker() -> None:
    tracker = RecordingTracker()
    assert isinstance(tracker, Tracker)
    records = [*study(paper_like), record("solo", 0, "AnB", 1, 0.5)]
    cells: list[Cell] = summarise(records)
    log_to_tracker(tracker, cells, findings(records, meta()), ["out/figure2.png"])
    s = tracker.summary
    assert s["layers/random/AnB/n3/accuracy"] == pytest.approx(0.74)
    assert s["layers/random/AnB/n3/delta"] == pytest.approx(-0.06)
    assert s["layers/random/baseB/seeds"] == 3
    assert s["layers/solo/AnB/n1/ci95"] == pytest.approx(0.01)  # one seed: binomial
    assert "layers/solo/AnB/n1/delta" not in s  # no baseB: left out, not NaN
    assert "layers/random/baseA/delta" not in s
    assert s["layers/finding/random"] == "held"
    assert tracker.images == [("layers/figure2", "out/figure2.png")]
