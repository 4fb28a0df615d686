"""Peak memory and time of a MAML meta-step against the number of inner steps: plain, checkpointed
and implicit (iMAML).

    python benchmarks/maml_memory.py --out maml_memory.json --plot docs/figures/maml_memory.png
    python benchmarks/maml_memory.py --quick --out /tmp/m.json   # a tiny smoke run, ~20 s

One meta-step is what ``metatl.train`` does: a meta-batch of episodes (default 4 x 5-way
1-shot 15 queries, 28x28x1, Conv-4 with 64 filters and BatchNorm, a learned 5-way head),
``learner.loss(episode)`` then ``backward`` one episode at a time, then an Adam step. Three
learners, for 1, 2, 5, 10 and 20 inner steps:

- ``plain``: second-order :class:`~metatl.algorithms.MAML`, ``inner_memory="store"``;
- ``checkpoint``: the same with ``inner_memory="checkpoint"`` (each step recomputed in the
  backward);
- ``implicit``: :class:`~metatl.algorithms.IMAML` with ``lam=0.5`` and 5 conjugate-gradient
  steps (the inner steps are its proximal gradient steps).

**Peak memory** on the CPU is measured by the operating system, each configuration in a fresh
child process started with ``MALLOC_MMAP_THRESHOLD_=65536`` and ``MALLOC_TRIM_THRESHOLD_=0`` so
that glibc hands every freed block of 64 KiB or more back at once (the resident set then
follows the live tensors instead of keeping freed pages in the heap; a fresh process so that
no other configuration's heap is reused). One warm-up meta-step, then the kernel's peak-RSS
mark is reset (``/proc/self/clear_refs`` with ``5``) and one measured meta-step runs; the
figure is that step's ``VmHWM`` minus the ``VmRSS`` just before it: every byte the step needed
above what was already resident (graphs, gradients, the allocator's overhead; Adam's state
already exists). On CUDA (``--device cuda``) it is
``torch.cuda.max_memory_allocated`` over the step minus the allocation before it. Page
granularity and small heap blocks make the CPU figure good to about a megabyte.

**Time**: in this process, each round runs every configuration once in a shuffled order; the
median and minimum over rounds, and the ratio to ``plain`` at the same inner steps taken
within each round (then the median), so that load on a shared machine hits all alike.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks import measure
from episodes import Episode
from metatl.algorithms import IMAML, MAML, Learner
from metatl.backbones import create_backbone

METHODS = ("plain", "checkpoint", "implicit")
LAMBDA, CG_STEPS = 0.5, 5


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inner-steps", type=int, nargs="+", default=[1, 2, 5, 10, 20])
    parser.add_argument("--hidden", type=int, default=64, help="Conv-4 filters")
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--way", type=int, default=5)
    parser.add_argument("--shot", type=int, default=1)
    parser.add_argument("--query", type=int, default=15)
    parser.add_argument("--meta-batch", type=int, default=4)
    parser.add_argument("--inner-lr", type=float, default=0.4)
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--quick", action="store_true", help="tiny: 16 filters, 1 and 8 steps")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--plot", type=Path, help="write a PNG of both curves here")
    parser.add_argument("--memory-child", metavar="METHOD/STEPS", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.inner_steps, args.hidden, args.query, args.meta_batch = [1, 8], 16, 5, 2
        args.repeats, args.warmup = 1, 0
    return args


def make_episodes(args: argparse.Namespace) -> list[Episode]:
    """The meta-batch of random 1-channel episodes (:func:`measure.random_episodes`, seed 0)."""
    return measure.random_episodes(
        args.way,
        args.shot,
        args.query,
        channels=1,
        size=args.size,
        count=args.meta_batch,
        device=args.device,
    )


def make_learner(args: argparse.Namespace, method: str, steps: int) -> Learner:
    torch.manual_seed(0)
    backbone = create_backbone("conv4", in_channels=1, image_size=args.size, hidden=args.hidden)
    common = {"n_way": args.way, "head": "learned", "inner_steps": steps}
    if method == "implicit":
        learner: Learner = IMAML(
            backbone, inner_lr=args.inner_lr, lam=LAMBDA, cg_steps=CG_STEPS, **common
        )
    else:
        memory = "store" if method == "plain" else "checkpoint"
        learner = MAML(backbone, inner_lr=args.inner_lr, inner_memory=memory, **common)  # type: ignore[arg-type]
    return learner.to(args.device).train()


def make_step(learner: Learner, episodes: list[Episode]) -> Callable[[], None]:
    """One meta-step as the training loop takes it: per-episode backward, then Adam."""
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        for episode in episodes:
            loss, _ = learner.loss(episode)
            (loss / len(episodes)).backward()
        optimizer.step()

    return step


def configurations(args: argparse.Namespace) -> list[tuple[str, int]]:
    return [(m, s) for s in args.inner_steps for m in METHODS]


def _proc_kib(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    found = re.search(rf"^{field}:\s+(\d+) kB", text, re.M)
    if found is None:
        raise RuntimeError(f"/proc/self/status has no {field}")
    return int(found.group(1))


def peak_mib(step: Callable[[], None], device: str) -> float:
    """MiB the step needs above what is resident (allocated, on CUDA) just before it."""
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current VmRSS
    before = _proc_kib("VmRSS")
    step()
    return (_proc_kib("VmHWM") - before) / 1024


def measure_memory(args: argparse.Namespace, name: str) -> float:
    """Peak MiB of one meta-step of configuration ``"method/steps"`` after a warm-up one."""
    method, steps = name.split("/")
    step = make_step(make_learner(args, method, int(steps)), make_episodes(args))
    step()
    return peak_mib(step, args.device)


def memory_in_children(args: argparse.Namespace, argv: list[str]) -> dict[str, float]:
    """``"method/steps"`` -> :func:`measure_memory`, each in a fresh process (nothing left in
    the heap by another configuration) whose allocator returns freed blocks at once."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    peaks = {}
    for method, steps in configurations(args):
        name = f"{method}/{steps}"
        done = subprocess.run(
            [sys.executable, __file__, *argv, "--memory-child", name],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"the memory child for {name} failed:\n{done.stderr[-3000:]}")
        peaks[name] = float(done.stdout.strip().splitlines()[-1])
        print(f"{name}: {peaks[name]:.1f} MiB", file=sys.stderr, flush=True)
    return peaks


def measure_time(args: argparse.Namespace) -> dict[str, list[float]]:
    """``"method/steps"`` -> seconds per meta-step, one per timed round."""
    episodes = make_episodes(args)
    steps = {
        f"{m}/{s}": make_step(make_learner(args, m, s), episodes) for m, s in configurations(args)
    }
    times: dict[str, list[float]] = {name: [] for name in steps}
    names, shuffle = list(steps), random.Random(0)
    for round_ in range(args.warmup + args.repeats):
        shuffle.shuffle(names)
        for name in names:
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            steps[name]()
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            if round_ >= args.warmup:
                times[name].append(time.perf_counter() - start)
    return times


def summarise(
    args: argparse.Namespace, peaks: dict[str, float], times: dict[str, list[float]]
) -> list[dict[str, Any]]:
    rows = []
    for method, steps in configurations(args):
        name, base = f"{method}/{steps}", times[f"plain/{steps}"]
        rows.append(
            {
                "method": method,
                "inner_steps": steps,
                "peak_mib": peaks[name],
                "median_ms": 1000 * statistics.median(times[name]),
                "min_ms": 1000 * min(times[name]),
                "time_ratio_to_plain": statistics.median(
                    t / b for t, b in zip(times[name], base, strict=True)
                ),
                "memory_ratio_to_plain": peaks[name] / max(peaks[f"plain/{steps}"], 1e-9),
            }
        )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    at = {(r["method"], r["inner_steps"]): r for r in rows}
    lines = [
        "| inner steps | peak MiB plain | checkpoint | implicit | ms / step plain | checkpoint "
        "| implicit | time vs plain: checkpoint | implicit |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for steps in sorted({r["inner_steps"] for r in rows}):
        p, c, i = (at[(m, steps)] for m in METHODS)
        lines.append(
            f"| {steps} | {p['peak_mib']:.1f} | {c['peak_mib']:.1f} | {i['peak_mib']:.1f} "
            f"| {p['median_ms']:.0f} | {c['median_ms']:.0f} | {i['median_ms']:.0f} "
            f"| {c['time_ratio_to_plain']:.2f} | {i['time_ratio_to_plain']:.2f} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for method, marker in zip(METHODS, "osd", strict=True):
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["inner_steps"])
        steps = [r["inner_steps"] for r in mine]
        left.plot(steps, [r["peak_mib"] for r in mine], marker=marker, label=method)
        right.plot(steps, [r["median_ms"] for r in mine], marker=marker, label=method)
    left.set(xlabel="inner steps", ylabel="peak memory of a meta-step (MiB)")
    right.set(xlabel="inner steps", ylabel="median time of a meta-step (ms)")
    for ax in (left, right):
        ax.set_xticks(sorted({r["inner_steps"] for r in rows}))
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        print(measure_memory(args, args.memory_child))
        return 0
    peaks = memory_in_children(args, argv)
    times = measure_time(args)
    rows = summarise(args, peaks, times)
    settings = {
        "backbone": f"conv4 ({args.hidden} filters, BatchNorm), learned head",
        "image": [1, args.size, args.size],
        "way": args.way,
        "shot": args.shot,
        "query": args.query,
        "meta_batch": args.meta_batch,
        "inner_steps": args.inner_steps,
        "inner_lr": args.inner_lr,
        "imaml": {"lam": LAMBDA, "cg_steps": CG_STEPS},
        "repeats": args.repeats,
        "warmup": args.warmup,
        "device": args.device,
        "quick": args.quick,
        "memory": "peak RSS above the step's start (CPU, fresh child, glibc returning freed "
        "blocks >= 64 KiB) or torch.cuda.max_memory_allocated above the start (CUDA)",
    }
    machine = {
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "load_average": list(os.getloadavg()),
    }
    title = (
        f"Conv-4 ({args.hidden}), {args.way}-way {args.shot}-shot {args.query} queries, "
        f"{args.size}x{args.size}, meta-batch {args.meta_batch}, {args.device}, "
        f"{torch.get_num_threads()} thread(s); {args.repeats} rounds; torch {torch.__version__}"
    )
    print(title)
    print(table(rows))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        result = {"settings": settings, "machine": machine, "rows": rows, "times_s": times}
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    if args.plot is not None:
        plot(rows, args.plot, title)
    return 0


if __name__ == "__main__":
    sys.exit(main())
