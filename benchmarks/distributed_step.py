"""Wall time per meta-step of ``python -m metatl.train`` on 1 process vs torchrun on 2.

    python benchmarks/distributed_step.py --out distributed_step.json   # ~20 min on 2 cores
    python benchmarks/distributed_step.py --quick --out /tmp/d.json     # ~5-15 s per run
    python benchmarks/distributed_step.py --algorithms maml --repeats 5 --steps 120

Each run is the real entrypoint on a tiny synthetic ``image_folder`` set written to a temporary
directory (28x28x1 pattern images): Conv-4, 5-way 1-shot 15 queries, meta-batch 4, fp32 on the
CPU; ProtoNet from ``configs/protonet_conv4_glyphs_5w1s.yaml`` (train way set to 5) and
second-order MAML with 1 inner step from ``configs/maml_conv4_glyphs_5w1s.yaml``. The step
time is the run's own ``train/step_time_s`` from ``metrics.jsonl`` (the mean over a log
window, as rank 0 measures it: the slowest rank's step plus the all-reduce); the first window
(process start-up, first batches) is skipped and the median of the others is the run's figure.

Three set-ups, each with ``OMP_NUM_THREADS`` set for every process:

- ``1 process x 1 thread``: ``python -m metatl.train``;
- ``1 process x 2 threads``: the same on both cores, the fair single-process baseline;
- ``2 processes x 1 thread``: ``torchrun --standalone --nproc-per-node 2 -m metatl.train``
  (gloo), each rank running 2 of the 4 episodes of a step.

Every repeat runs the three set-ups of an algorithm back to back (in an order rotated from
repeat to repeat), and the speed-ups are taken within a repeat (then the median over
repeats), so that a machine whose load changes affects all alike. Prints a markdown table;
``--out`` writes everything (every window of every run) as JSON. A run that fails is run
again once, and the failure is kept in the JSON (``failures``) and reported.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]

# name -> (processes, OMP threads per process)
SETUPS: dict[str, tuple[int, int]] = {
    "1 process x 1 thread": (1, 1),
    "1 process x 2 threads": (1, 2),
    "2 processes x 1 thread": (2, 1),
}
BASELINES = ("1 process x 1 thread", "1 process x 2 threads")

ALGORITHMS: dict[str, tuple[str, list[str]]] = {
    "protonet": ("configs/protonet_conv4_glyphs_5w1s.yaml", []),
    "maml": (
        "configs/maml_conv4_glyphs_5w1s.yaml",
        ["model.maml.inner_steps=1", "model.maml.test_inner_steps=1"],
    ),
}
WAY, SHOT, QUERY, META_BATCH, SIZE = 5, 1, 15, 4, 28


def write_dataset(root: Path, per_class: int = 20) -> None:
    """A tiny ``image_folder`` set: 20 train, 5 val and 5 test classes of 28x28 grey blob
    patterns, each image a noisy shifted copy of its class's pattern (as tests/conftest.py)."""
    gen = torch.Generator().manual_seed(0)
    coarse = torch.rand(30, 1, 7, 7, generator=gen)
    patterns = torch.nn.functional.interpolate(coarse, size=(SIZE, SIZE), mode="bilinear") * 255
    for c in range(30):
        split = "train" if c < 20 else "val" if c < 25 else "test"
        folder = root / split / f"class{c:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            shift = tuple(torch.randint(-2, 3, (2,), generator=gen).tolist())
            image = torch.roll(patterns[c], shift, dims=(1, 2))
            image = image + 40.0 * torch.randn(image.shape, generator=gen)
            pixels = image.round().clamp(0, 255).to(torch.uint8)[0].numpy()
            Image.fromarray(pixels, mode="L").save(folder / f"{i:04d}.png")


def overrides(
    args: argparse.Namespace, algorithm: str, data: Path, out: Path, name: str
) -> list[str]:
    """The run's command line after ``-m metatl.train``."""
    config, extra = ALGORITHMS[algorithm]
    return [
        "--config",
        str(REPO / config),
        "data.dataset=image_folder",
        f"data.root={data}",
        f"data.image_size={SIZE}",
        "data.workers=0",
        f"out_dir={out}",
        f"name={name}",
        "device=cpu",
        "precision=fp32",
        "model.backbone=conv4",
        f"episodes.way={WAY}",
        f"episodes.shot={SHOT}",
        f"episodes.query={QUERY}",
        f"train.meta_batch={META_BATCH}",
        f"train.steps={args.steps}",
        f"train.log_every={args.log_every}",
        f"train.val_every={args.steps}",  # one validation, after the last timed window
        f"train.val_episodes={args.eval_episodes}",
        f"test.episodes={args.eval_episodes}",
        "test.shots=[1]",
        "test.pixel_baseline=false",
        "tracking.wandb.mode=disabled",
        *extra,
    ]


class RunFailedError(RuntimeError):
    """A training run exited non-zero; ``stderr`` is its standard error."""

    def __init__(self, message: str, stderr: str) -> None:
        super().__init__(f"{message}:\n{stderr[-3000:]}")
        self.stderr = stderr


def run_once(
    args: argparse.Namespace, algorithm: str, setup: str, data: Path, out: Path, name: str
) -> dict[str, Any]:
    """One training run; its step times from metrics.jsonl."""
    processes, threads = SETUPS[setup]
    if processes == 1:
        launcher = [sys.executable, "-m", "metatl.train"]
    else:
        launcher = [
            *(sys.executable, "-m", "torch.distributed.run", "--standalone"),
            *("--nproc-per-node", str(processes), "-m", "metatl.train"),
        ]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "WANDB_MODE": "disabled",
        "WANDB_SILENT": "true",
        "METATL_DIST_TIMEOUT_S": "300",
    }
    started = time.perf_counter()
    done = subprocess.run(
        [*launcher, *overrides(args, algorithm, data, out, name)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=args.timeout,
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RunFailedError(f"{algorithm} / {setup} exited {done.returncode}", done.stderr)
    windows = []
    for line in (out / name / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("kind") == "metrics" and "train/step_time_s" in record:
            windows.append((record["step"], record["train/step_time_s"]))
    times = [t for _, t in sorted(windows)]
    if len(times) < 2:
        raise RuntimeError(f"{algorithm} / {setup}: {len(times)} log window(s), need 2")
    return {
        "algorithm": algorithm,
        "setup": setup,
        "processes": processes,
        "threads_per_process": threads,
        "window_step_times_s": times,
        "step_time_s": statistics.median(times[1:]),  # the first window is start-up
        "process_wall_s": wall,
    }


def run_with_retry(
    args: argparse.Namespace,
    algorithm: str,
    setup: str,
    data: Path,
    out: Path,
    name: str,
    failures: list[dict[str, Any]],
) -> dict[str, Any]:
    """:func:`run_once`, run again (once) if it fails; each failure is appended to
    ``failures`` and reported, so that a rare crash is seen, not hidden."""
    for attempt in (1, 2):
        try:
            return run_once(args, algorithm, setup, data, out, f"{name}-try{attempt}")
        except RunFailedError as err:
            tail = err.stderr.strip().splitlines()[-40:]
            failures.append({"algorithm": algorithm, "setup": setup, "stderr_tail": tail})
            print(f"{err.args[0].splitlines()[0]} (attempt {attempt})", file=sys.stderr)
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def summarise(runs: list[dict[str, Any]], algorithms: list[str]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for algorithm in algorithms:
        mine = [r for r in runs if r["algorithm"] == algorithm]
        repeats = sorted({r["repeat"] for r in mine})
        at = {(r["repeat"], r["setup"]): r["step_time_s"] for r in mine}
        rows: dict[str, Any] = {}
        for setup in SETUPS:
            values = [at[(k, setup)] for k in repeats]
            row = {
                "median_ms": 1000 * statistics.median(values),
                "min_ms": 1000 * min(values),
                "episodes_per_s": META_BATCH / statistics.median(values),
            }
            for base in BASELINES:  # > 1: faster than the baseline
                row[f"speedup_vs_{base}"] = statistics.median(
                    at[(k, base)] / at[(k, setup)] for k in repeats
                )
            rows[setup] = row
        summary[algorithm] = rows
    return summary


def table(summary: dict[str, Any]) -> str:
    lines = [
        "| algorithm | set-up | median ms / step | min ms | episodes/s "
        "| speed-up vs 1x1 | speed-up vs 1x2 |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for algorithm, rows in summary.items():
        for setup, row in rows.items():
            lines.append(
                f"| {algorithm} | {setup} | {row['median_ms']:.0f} | {row['min_ms']:.0f} "
                f"| {row['episodes_per_s']:.1f} "
                f"| {row[f'speedup_vs_{BASELINES[0]}']:.2f} "
                f"| {row[f'speedup_vs_{BASELINES[1]}']:.2f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--algorithms", nargs="+", choices=list(ALGORITHMS), default=["protonet", "maml"]
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=100, help="training steps per run")
    parser.add_argument("--log-every", type=int, default=10, help="steps per timed window")
    parser.add_argument("--eval-episodes", type=int, default=10, help="validation and test")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    parser.add_argument("--quick", action="store_true", help="4 steps, 1 repeat: a smoke run")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.steps, args.log_every, args.eval_episodes = 1, 4, 2, 2
    if args.steps < 2 * args.log_every:
        parser.error("--steps must be at least 2 x --log-every (the first window is skipped)")

    load_before = os.getloadavg()
    runs: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    names = list(SETUPS)
    with tempfile.TemporaryDirectory(prefix="metatl-dist-bench-") as tmp:
        data, out = Path(tmp) / "data", Path(tmp) / "runs"
        write_dataset(data)
        for repeat in range(args.repeats):
            order = names[repeat % len(names) :] + names[: repeat % len(names)]
            for algorithm in args.algorithms:
                for setup in order:
                    name = f"{algorithm}-{SETUPS[setup][0]}p{SETUPS[setup][1]}t-{repeat}"
                    run = run_with_retry(args, algorithm, setup, data, out, name, failures)
                    run["repeat"] = repeat
                    run["load_average_after"] = list(os.getloadavg())
                    runs.append(run)
                    print(
                        f"repeat {repeat} {algorithm:8s} {setup:24s} "
                        f"{1000 * run['step_time_s']:7.1f} ms/step "
                        f"(process {run['process_wall_s']:.1f} s)",
                        file=sys.stderr,
                        flush=True,
                    )
    summary = summarise(runs, args.algorithms)
    settings = {
        "backbone": "conv4",
        "image": [1, SIZE, SIZE],
        "way": WAY,
        "shot": SHOT,
        "query": QUERY,
        "meta_batch": META_BATCH,
        "maml": "second order, 1 inner step",
        "precision": "fp32",
        "steps": args.steps,
        "log_every": args.log_every,
        "repeats": args.repeats,
        "quick": args.quick,
    }
    machine = {
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "load_average_before": list(load_before),
        "load_average_after": list(os.getloadavg()),
    }
    print(
        f"Conv-4, {WAY}-way {SHOT}-shot {QUERY} queries, {SIZE}x{SIZE}x1, meta-batch "
        f"{META_BATCH}, fp32; {args.steps} steps per run, windows of {args.log_every} (first "
        f"skipped), {args.repeats} repeat(s); {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"load average {load_before[0]:.2f} before, {machine['load_average_after'][0]:.2f} after"
    )
    print(table(summary))
    for failure in failures:
        print(f"\nA run failed and was run again: {failure['algorithm']}, {failure['setup']}")
    if args.out is not None:
        result = {
            "settings": settings,
            "machine": machine,
            "summary": summary,
            "runs": runs,
            "failures": failures,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
