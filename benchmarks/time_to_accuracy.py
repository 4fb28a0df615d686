"""Harness row 6: the MAML preset trained with learn2learn and with metatl, to an accuracy.

    bash benchmarks/install_peers.sh                              # once: learn2learn
    python benchmarks/time_to_accuracy.py --out runs/tta          # glyphs, 2,000 steps each
    python benchmarks/time_to_accuracy.py --quick --out /tmp/tta  # synthetic blobs, 30 steps

The recipe is ``configs/maml_conv4_glyphs_5w1s.yaml`` (Conv-4, 5-way 1-shot, 15 queries,
second order, 1 inner step at lr 0.4, meta-batch 4, Adam 1e-3, 3 inner steps at test, batch
statistics in BatchNorm). metatl trains it with :func:`metatl.fit`; learn2learn with its own
``MAML.clone()`` / ``adapt()`` loop, from the same initial weights, on the same episode stream,
in channels-last as ``metatl.train`` runs. Both validate every ``--val-every`` steps on the
same validation episodes, keep the best validated weights and test them on the same test
episodes (one set per shot, seed ``test.seed + shot``), so the test difference is paired.

The two trainings run at the same time, one thread each, in two processes: whatever else the
machine does slows both alike. "Training time" is the sum of the steps' wall times (episode
sampling included, validation excluded); the time to an accuracy is the training time at the
first validation that reaches it. Each process writes ``<out>/<library>.json``; this script
then prints one table and writes ``<out>/time_to_accuracy.json``. The metatl run directory
(``<out>/metatl/...``, with ``best.pt``) stays for ``python -m metatl.evaluate``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import metatl
from benchmarks.methods import load_peers
from episodes import EpisodeDataset, EpisodeSpec
from metatl.algorithms import Learner
from metatl.tracking import read_jsonl
from metatl.training import EvalResult, ImageTransform, paired_difference

REPO = Path(__file__).resolve().parents[1]
PRESET = REPO / "configs" / "maml_conv4_glyphs_5w1s.yaml"
LIBRARIES = ("metatl", "learn2learn")
# The preset's numbers, which the learn2learn half has to restate in its own terms.
WAY, SHOT, QUERY, META_BATCH, INNER_LR, TEST_STEPS, META_LR = 5, 1, 15, 4, 0.4, 3, 1e-3
SEED, VAL_SEED, TEST_SEED, TEST_SHOTS = 0, 2, 3, (1, 5)


class L2LLearner(Learner):
    """A learn2learn MAML behind metatl's learner contract, so that metatl scores it."""

    needs_grad_to_adapt = True

    def __init__(self, maml: nn.Module, backbone: nn.Module) -> None:
        super().__init__(backbone)
        self.maml = maml

    def adapt(self, support_x, support_y, n_way):
        learner = self.maml.clone()
        for _ in range(TEST_STEPS):
            learner.adapt(F.cross_entropy(learner(support_x), support_y), first_order=True)
        return learner

    def predict(self, query_x, learner):
        return learner(query_x)


def data_of(root: Path) -> str:
    return "glyphs" if (root / "manifest.json").is_file() else "image_folder"


def train_metatl(args: argparse.Namespace) -> dict:
    run = metatl.fit(
        PRESET,
        [
            f"data.dataset={data_of(args.data)}",
            f"data.root={args.data}",
            f"train.steps={args.steps}",
            "train.log_every=1",  # every step's time in metrics.jsonl
            f"train.val_every={args.val_every}",
            f"train.val_episodes={args.val_episodes}",
            f"test.episodes={args.test_episodes}",
            "test.pixel_baseline=false",
            "device=cpu",
            f"out_dir={args.out / 'metatl'}",
            "tracking.wandb.mode=disabled",
        ],
    )
    records = read_jsonl(run.run_dir / "metrics.jsonl")
    step_times, curve, elapsed = [], [], 0.0
    for record in records:
        if "train/step_time_s" in record:
            step_times.append(record["train/step_time_s"])
            elapsed += record["train/step_time_s"]
        if "val/accuracy" in record:
            curve.append(
                {
                    "step": record["step"],
                    "train_s": elapsed,
                    "accuracy": record["val/accuracy"],
                    "ci95": record["val/ci95"],
                }
            )
    test = {str(s): run.test[f"{WAY}-way {s}-shot"]["maml"] for s in TEST_SHOTS}
    return {"step_times": step_times, "curve": curve, "test": test, "run_dir": str(run.run_dir)}


def train_learn2learn(args: argparse.Namespace) -> dict:
    peers, missing = load_peers(("learn2learn",))
    if missing:
        raise SystemExit(f"learn2learn: {missing['learn2learn']}")
    l2l = peers["learn2learn"]
    kind = data_of(args.data)
    train, val, test = (
        metatl.load_dataset(kind, args.data, split, image_size=28)
        for split in ("train", "val", "test")
    )
    torch.manual_seed(SEED)  # as metatl.fit seeds before it builds: the same initial weights
    backbone = metatl.create_backbone("conv4", in_channels=1, image_size=28)
    model = nn.Sequential(backbone, nn.Linear(backbone.out_dim, WAY))
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.track_running_stats = False  # batch statistics always, as the preset's bn
        bn.running_mean = bn.running_var = bn.num_batches_tracked = None
    maml = l2l.algorithms.MAML(model.to(memory_format=torch.channels_last), lr=INNER_LR)
    optimizer = torch.optim.Adam(maml.parameters(), lr=META_LR)
    learner = L2LLearner(maml, backbone)
    transform = ImageTransform(backbone.input_spec)
    spec = EpisodeSpec(WAY, SHOT, QUERY)
    stream = iter(EpisodeDataset.from_spec(train, spec, SEED, args.steps * META_BATCH, transform))
    step_times, curve, best, best_state = [], [], -1.0, None
    for step in range(1, args.steps + 1):
        start = time.perf_counter()
        optimizer.zero_grad()
        for _ in range(META_BATCH):
            episode = next(stream)
            task = maml.clone()  # second order: adapt() keeps the graph
            task.adapt(F.cross_entropy(task(episode.support_x), episode.support_y))
            loss = F.cross_entropy(task(episode.query_x), episode.query_y)
            (loss / META_BATCH).backward()
        optimizer.step()
        step_times.append(time.perf_counter() - start)
        if step % args.val_every == 0 or step == args.steps:
            result = metatl.score(
                learner, val, shot=SHOT, query=QUERY, episodes=args.val_episodes, seed=VAL_SEED
            )
            curve.append(
                {
                    "step": step,
                    "train_s": sum(step_times),
                    "accuracy": result.mean,
                    "ci95": result.ci95,
                }
            )
            if result.mean > best:  # as metatl: the first of equal bests is kept
                best, best_state = result.mean, copy.deepcopy(maml.state_dict())
    maml.load_state_dict(best_state)
    test_results = {
        str(s): metatl.score(
            learner, test, shot=s, query=QUERY, episodes=args.test_episodes, seed=TEST_SEED + s
        )
        for s in TEST_SHOTS
    }
    return {"step_times": step_times, "curve": curve, "test": test_results}


def child(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    start = time.perf_counter()
    train = train_metatl if args.library == "metatl" else train_learn2learn
    result = train(args)
    result["wall_s"] = time.perf_counter() - start
    result["test"] = {
        shot: {"accuracies": list(r.accuracies), "episode_set": r.episode_set}
        for shot, r in result["test"].items()
    }
    (args.out / f"{args.library}.json").write_text(json.dumps(result))


def time_to(curve: list[dict], target: float) -> float | None:
    """Training seconds at the first validation reaching ``target``; None if none did."""
    return next((c["train_s"] for c in curve if c["accuracy"] >= target), None)


def summarise(results: dict[str, dict], target: float) -> list[dict]:
    """One row per library, with the test differences paired against metatl's episodes."""
    tests = {
        lib: {
            shot: EvalResult.from_accuracies(t["accuracies"], t["episode_set"])
            for shot, t in r["test"].items()
        }
        for lib, r in results.items()
    }
    rows = []
    for lib, r in results.items():
        best = max(r["curve"], key=lambda c: c["accuracy"])
        row = {
            "library": lib,
            "steps": len(r["step_times"]),
            "median_step_ms": 1000 * statistics.median(r["step_times"]),
            "train_min": sum(r["step_times"]) / 60,
            "target": target,
            "min_to_target": None if (s := time_to(r["curve"], target)) is None else s / 60,
            "best_val": best["accuracy"],
            "best_val_step": best["step"],
        }
        for shot, result in tests[lib].items():
            row[f"test_{shot}shot"] = result.mean
            row[f"test_{shot}shot_ci95"] = result.ci95
            if lib != "metatl" and "metatl" in tests:
                diff, ci = paired_difference(result, tests["metatl"][shot])
                row[f"test_{shot}shot_minus_metatl"], row[f"test_{shot}shot_paired_ci95"] = diff, ci
        rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    target = f"{100 * rows[0]['target']:.0f}%"
    shots = [k.removeprefix("test_").removesuffix("shot") for k in rows[0] if k.endswith("shot")]
    lines = [
        f"| library | median step | training | to {target} val | best val (step) | "
        + " | ".join(f"test {s}-shot" for s in shots)
        + " |",
        "| --- " * (5 + len(shots)) + "|",
    ]
    for r in rows:
        reach = "not reached" if r["min_to_target"] is None else f"{r['min_to_target']:.1f} min"
        tests = []
        for s in shots:
            cell = f"{100 * r[f'test_{s}shot']:.2f} ± {100 * r[f'test_{s}shot_ci95']:.2f}"
            if f"test_{s}shot_minus_metatl" in r:
                diff, ci = r[f"test_{s}shot_minus_metatl"], r[f"test_{s}shot_paired_ci95"]
                cell += f" ({100 * diff:+.2f} ± {100 * ci:.2f} paired)"
            tests.append(cell)
        lines.append(
            f"| {r['library']} | {r['median_step_ms']:.0f} ms | {r['train_min']:.1f} min "
            f"| {reach} | {100 * r['best_val']:.2f} ({r['best_val_step']}) | "
            + " | ".join(tests)
            + " |"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict | None:
    """Both trainings at once, one thread each; ``{"rows", "curves"}`` (also written to
    ``<out>/time_to_accuracy.json``), or None if one failed (its output says why)."""
    args.out.mkdir(parents=True, exist_ok=True)
    libraries = list(args.libraries)
    if "learn2learn" in libraries and (missing := load_peers(("learn2learn",))[1]):
        print(f"learn2learn left out: {missing['learn2learn']}")
        libraries.remove("learn2learn")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    flags = [
        *("--data", str(args.data), "--steps", str(args.steps), "--out", str(args.out)),
        *("--val-every", str(args.val_every), "--val-episodes", str(args.val_episodes)),
        *("--test-episodes", str(args.test_episodes)),
    ]
    processes = {
        lib: subprocess.Popen([sys.executable, __file__, "--library", lib, *flags], env=env)
        for lib in libraries
    }
    failed = [lib for lib, p in processes.items() if p.wait() != 0]
    if failed:
        print(f"failed: {', '.join(failed)} (see the output above)", file=sys.stderr)
        return None
    results = {lib: json.loads((args.out / f"{lib}.json").read_text()) for lib in libraries}
    summary = {
        "rows": summarise(results, args.target),
        "curves": {lib: r["curve"] for lib, r in results.items()},
    }
    (args.out / "time_to_accuracy.json").write_text(json.dumps(summary, indent=1))
    return summary


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The options; ``--quick`` writes a synthetic blob folder under ``--out`` and takes a
    few steps and episodes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO / "data" / "glyphs")
    parser.add_argument("--out", type=Path, required=True, help="results and metatl's run")
    parser.add_argument("--steps", type=int, default=2000, help="meta-training steps")
    parser.add_argument("--val-every", type=int, default=50)
    parser.add_argument("--val-episodes", type=int, default=200)
    parser.add_argument("--test-episodes", type=int, default=600)
    parser.add_argument("--target", type=float, default=0.9, help="validation accuracy")
    parser.add_argument("--libraries", nargs="+", choices=LIBRARIES, default=list(LIBRARIES))
    parser.add_argument("--quick", action="store_true", help="synthetic blobs, 30 steps")
    parser.add_argument("--library", choices=LIBRARIES, help=argparse.SUPPRESS)  # a child
    args = parser.parse_args(argv)
    if args.quick and args.library is None:
        from episodes.synthetic import write_blob_folder

        splits = {"train": 20, "val": 5, "test": 10}
        args.data = write_blob_folder(args.out / "data", splits, 20)
        args.steps, args.val_every, args.val_episodes, args.test_episodes = 30, 10, 40, 40
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.library:
        child(args)
        return 0
    summary = run(args)
    if summary is None:
        return 1
    print(f"\n{markdown(summary['rows'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
