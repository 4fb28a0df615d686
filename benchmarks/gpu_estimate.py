"""Step times on one GPU, on paper: from each harness step's FLOPs, bytes and kernel count.

    python benchmarks/gpu_estimate.py                              # the harness's default grid
    python benchmarks/gpu_estimate.py --harness results.json       # next to measured CPU times
    python benchmarks/gpu_estimate.py --gpu a100 --out gpu.json

No GPU here, so the estimate is a roofline with a launch floor, per metatl step (the
``metatl`` method of each setting of ``python -m benchmarks``):

- **FLOPs** of matrix multiplies and convolutions (``FlopCounterMode``), at the GPU's dense
  bf16 tensor-core peak times ``--efficiency`` (small convolutions do not fill the GPU);
- **bytes** every aten op reads and writes (the sizes of its tensor inputs and outputs, each
  op separately: no fusion, no cache), at the GPU's memory bandwidth;
- **kernels**: every aten op dispatched in the step but views (a ``TorchDispatchMode``),
  each costing ``--launch-us`` microseconds of host-side dispatch and launch, the floor of
  eager PyTorch whatever the GPU (about 5-10 us per op).

``estimate = max(FLOP time, byte time, launch time)``; the largest of the three names what
bounds the step. The harness runs unchanged on CUDA (``python -m benchmarks --device cuda``),
so the day a GPU is there, this estimate can be checked against the measured time.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.run import Setting, build, grid

GPUS = {
    # name: (dense bf16 tensor-core TFLOP/s, memory bandwidth TB/s), from the vendors' sheets
    "h100": (989.0, 3.35),
    "a100": (312.0, 2.04),
    "l4": (121.0, 0.30),
}


class _OpCounter(TorchDispatchMode):
    """Counts the aten ops that run under it (views aside) and the bytes of their tensor
    inputs and outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.is_view:  # metadata only: no kernel, no bytes
            return out
        self.ops += 1
        for t in tree_leaves((args, kwargs, out)):
            if isinstance(t, torch.Tensor):
                self.bytes += t.numel() * t.element_size()
        return out


@dataclass(frozen=True)
class StepCost:
    setting: str
    gflop: float
    ops: int
    mbytes: float

    def estimate_ms(self, tflops: float, tbps: float, efficiency: float, launch_us: float):
        """(milliseconds, what bounds the step)."""
        parts = {
            "FLOPs": self.gflop * 1e9 / (tflops * 1e12 * efficiency),
            "memory": self.mbytes * 1e6 / (tbps * 1e12),
            "launches": self.ops * launch_us * 1e-6,
        }
        bound = max(parts, key=parts.__getitem__)
        return 1e3 * parts[bound], bound


def step_cost(s: Setting) -> StepCost:
    """One metatl step of ``s`` on the CPU (fp32), counted."""
    method = next(m for m in build(s, {}, torch.device("cpu"), None) if m.name == "metatl")
    for p in method.params:
        p.grad = None
    flops, ops = FlopCounterMode(display=False), _OpCounter()
    with flops, ops:
        method.backward()
    return StepCost(s.label(), flops.get_total_flops() / 1e9, ops.ops, ops.bytes / 1e6)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--grid", default="default", choices=["quick", "default", "full"])
    parser.add_argument("--rows", nargs="+", default=["maml", "anil", "protonet"])
    parser.add_argument("--gpu", default="h100", choices=sorted(GPUS))
    parser.add_argument("--efficiency", type=float, default=0.5, help="of the FLOP peak")
    parser.add_argument("--launch-us", type=float, default=8.0, help="per op, eager PyTorch")
    parser.add_argument("--harness", type=Path, help="a python -m benchmarks JSON (CPU ms)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cpu_ms = {}
    if args.harness:
        for r in json.loads(args.harness.read_text())["results"]:
            if r["method"] == "metatl":
                cpu_ms[(r["row"], r["setting"])] = r["median_ms"]
    tflops, tbps = GPUS[args.gpu]
    print(
        f"{args.gpu}: {tflops:g} TFLOP/s bf16 dense x {args.efficiency:g}, {tbps:g} TB/s, "
        f"{args.launch_us:g} us per launched op\n"
    )
    print("| row | setting | GFLOP | ops | MB moved | CPU ms | GPU ms (est.) | bound by |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |")
    rows = []
    for s in grid(args.grid, args.rows):
        cost = step_cost(s)
        ms, bound = cost.estimate_ms(tflops, tbps, args.efficiency, args.launch_us)
        measured = cpu_ms.get((s.row, cost.setting))
        shown = f"{measured:.0f}" if measured is not None else "-"
        print(
            f"| {s.row} | {cost.setting} | {cost.gflop:.2f} | {cost.ops} | {cost.mbytes:.0f} "
            f"| {shown} | {ms:.2f} | {bound} |",
            flush=True,
        )
        rows.append(asdict(cost) | {"row": s.row, "cpu_ms": measured, "gpu_ms": ms, "bound": bound})
    if args.out:
        settings = {"gpu": args.gpu, "tflops": tflops, "tbps": tbps}
        settings |= {"efficiency": args.efficiency, "launch_us": args.launch_us}
        args.out.write_text(json.dumps({"settings": settings, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
