"""What the harness measures about one step: time, FLOPs, peak memory, meta-gradient, GEMM peak.

- **Time**: interleaved rounds (:func:`interleaved_rounds`): each round runs every method once
  in a fresh shuffled order; the ratio to the reference is taken within the round, then the
  median over rounds, so that a noisy shared machine slows all methods alike.
- **FLOPs**: ``torch.utils.flop_counter.FlopCounterMode`` around one step (forward, inner
  ``autograd.grad`` with or without ``create_graph``, backward). It counts matmuls and
  convolutions (and their backward and double-backward), not element-wise work.
- **Peak memory**: on CUDA, ``torch.cuda.max_memory_allocated`` over one step minus what was
  allocated before it. On CPU there is no allocator counter, and the process's maximum RSS
  only ever grows, so the harness reports the peak bytes of the distinct storages held by the
  autograd graph (saved for backward), counted with ``torch.autograd.graph.saved_tensors_hooks``:
  what grows with the meta-batch and the inner steps. It leaves out transient buffers,
  gradients, optimizer state and the inputs, and counts a parameter once if the graph saves it.
- **GEMM peak**: the best of a few large square matmuls at the precision (:func:`gemm_peak`).

The inputs, :func:`random_episodes`, are shared with the scripts that time one kind of step
(``maml_step_time.py``, ``maml_memory.py``, ``precision_step_time.py``).
"""

from __future__ import annotations

import random
import statistics
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from episodes import Episode

__all__ = [
    "Probe",
    "RoundTimes",
    "gemm_peak",
    "interleaved_rounds",
    "max_relative_difference",
    "precision_context",
    "probe",
    "random_episodes",
    "synchronize",
]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_episodes(
    way: int,
    shot: int,
    query: int,
    *,
    channels: int = 1,
    size: int = 28,
    count: int = 1,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> list[Episode]:
    """``count`` episodes of standard-normal images, drawn on the CPU from one generator seeded
    with ``seed`` (episode 0's support, its queries, episode 1's support, ...), then moved to
    ``device``: the same numbers on every device.

    Args:
        way: Classes per episode.
        shot: Support images per class.
        query: Query images per class.
        channels: Image channels.
        size: Image height and width.
        count: Episodes.
        device: Where the episodes' tensors go.
        seed: The generator's seed.

    Returns:
        ``count`` episodes: ``support_x`` float32 ``[way * shot, channels, size, size]`` and
        ``support_y`` int64 ``[way * shot]`` grouped by class (``0, 0, ..., 1, 1, ...``), the
        same for ``query_x`` and ``query_y`` with ``query``, and ``classes`` ``arange(way)``.
    """
    gen = torch.Generator().manual_seed(seed)
    shape = (channels, size, size)
    return [
        Episode(
            torch.randn(way * shot, *shape, generator=gen),
            torch.arange(way).repeat_interleave(shot),
            torch.randn(way * query, *shape, generator=gen),
            torch.arange(way).repeat_interleave(query),
            torch.arange(way),
        ).to(device)
        for _ in range(count)
    ]


def precision_context(device: torch.device, precision: str):
    """Autocast at ``precision`` (nothing at all for ``fp32``)."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


def gemm_peak(
    device: torch.device, precision: str, max_n: int = 4096, budget_s: float = 0.25
) -> float:
    """Best achieved GFLOP/s of a square GEMM at ``precision`` (2 n^3 FLOPs), over
    ``a @ b`` and ``a @ b.T`` (``torch.mm`` and ``F.linear``: on some CPUs only one of them
    reaches the fast kernel). ``n`` doubles from 256 until one product takes ``budget_s`` or
    ``n`` reaches ``max_n``, so a precision this device emulates slowly costs seconds, not
    minutes; then the best of three."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    best, n = 0.0, 256
    while True:
        a = torch.randn(n, n, generator=gen).to(device, DTYPES[precision])
        b = torch.randn(n, n, generator=gen).to(device, DTYPES[precision])
        slowest = 0.0
        for product in (torch.mm, torch.nn.functional.linear):
            product(a, b)  # warm-up
            for _ in range(3):
                synchronize(device)
                start = time.perf_counter()
                product(a, b)
                synchronize(device)
                seconds = time.perf_counter() - start
                best = max(best, 2 * n**3 / seconds / 1e9)
                slowest = max(slowest, seconds)
                if seconds > 4 * budget_s:
                    break
        if n >= max_n or slowest > budget_s:
            return best
        n *= 2


class _SavedBytes:
    """Live and peak bytes of the distinct storages that autograd saves for backward."""

    def __init__(self) -> None:
        self.refs: dict[int, int] = {}
        self.live = 0
        self.peak = 0

    def pack(self, tensor: torch.Tensor) -> object:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key not in self.refs:
            self.live += storage.nbytes()
            self.peak = max(self.peak, self.live)
        self.refs[key] = self.refs.get(key, 0) + 1
        holder = _Held(tensor)
        weakref.finalize(holder, self._release, key, storage.nbytes())
        return holder

    def _release(self, key: int, nbytes: int) -> None:
        self.refs[key] -= 1
        if not self.refs[key]:
            del self.refs[key]
            self.live -= nbytes

    @staticmethod
    def unpack(holder: object) -> torch.Tensor:
        return holder.tensor  # type: ignore[attr-defined]


class _Held:
    __slots__ = ("__weakref__", "tensor")

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor


@contextmanager
def _peak_memory(device: torch.device) -> Iterator[dict[str, int]]:
    out: dict[str, int] = {}
    if device.type == "cuda":
        synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield out
        synchronize(device)
        out["bytes"] = torch.cuda.max_memory_allocated(device) - before
        return
    meter = _SavedBytes()
    with torch.autograd.graph.saved_tensors_hooks(meter.pack, meter.unpack):
        yield out
    out["bytes"] = meter.peak


MEMORY_MEASURE = {
    "cuda": "torch.cuda.max_memory_allocated during one step, less what was allocated before",
    "cpu": "peak bytes of distinct storages saved for backward (saved_tensors_hooks)",
}


@dataclass(frozen=True)
class Probe:
    """One instrumented step: its meta-gradient, FLOPs, peak memory and wall time."""

    grads: list[torch.Tensor]
    flops: int
    peak_bytes: int
    seconds: float


def probe(
    backward: Callable[[], None],
    params: Sequence[torch.Tensor],
    device: torch.device,
    precision: str,
) -> Probe:
    """Run ``backward`` once (no optimizer step) from zeroed gradients, counting FLOPs and
    peak memory; return the gradients of ``params`` (zeros where none reached)."""
    for p in params:
        p.grad = None
    counter = FlopCounterMode(display=False)
    start = time.perf_counter()
    with _peak_memory(device) as memory, counter, precision_context(device, precision):
        backward()
    synchronize(device)
    seconds = time.perf_counter() - start
    grads = [
        (p.grad if p.grad is not None else torch.zeros_like(p)).detach().float().cpu().clone()
        for p in params
    ]
    for p in params:
        p.grad = None
    return Probe(grads, counter.get_total_flops(), memory["bytes"], seconds)


def max_relative_difference(ours: Sequence[torch.Tensor], theirs: Sequence[torch.Tensor]) -> float:
    """``max |theirs - ours| / max |ours|`` over the whole meta-gradient (all parameters).

    Normalised by the largest entry of the whole gradient rather than tensor by tensor: a conv
    bias followed by train-mode BatchNorm has a true gradient of zero, so its own scale is
    round-off.
    """
    if len(ours) != len(theirs):
        raise ValueError(f"{len(ours)} gradient tensors vs {len(theirs)}")
    scale = max(float(g.abs().max()) for g in ours)
    diff = max(float((a - b).abs().max()) for a, b in zip(ours, theirs, strict=True))
    return diff / max(scale, 1e-30)


@dataclass(frozen=True)
class RoundTimes:
    """Seconds per step of each method in each round, and ratios to the reference."""

    seconds: dict[str, list[float]]
    ratios: dict[str, list[float]]


def interleaved_rounds(
    steps: dict[str, Callable[[], None]],
    reference: str,
    rounds: int,
    warmup: int,
    device: torch.device,
    seed: int = 0,
) -> RoundTimes:
    """Time every step once per round, in a shuffled order; ``warmup`` untimed rounds first."""
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    ratios: dict[str, list[float]] = {name: [] for name in steps}
    order, rng = list(steps), random.Random(seed)
    for round_index in range(warmup + rounds):
        rng.shuffle(order)
        this_round = {}
        for name in order:
            synchronize(device)
            start = time.perf_counter()
            steps[name]()
            synchronize(device)
            this_round[name] = time.perf_counter() - start
        if round_index < warmup:
            continue
        for name, value in this_round.items():
            seconds[name].append(value)
            ratios[name].append(value / this_round[reference])
    return RoundTimes(seconds, ratios)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")
