"""Data-parallel runs over several processes with ``torch.distributed`` (launched by torchrun).

``torchrun --nproc-per-node N -m metatl.train --config ...`` starts N processes (ranks) of
the same command; torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous
address, and :func:`process_group` joins them (``nccl`` on CUDA, ``gloo`` on the CPU). A run
started without torchrun has one rank and none of this does anything.

What is split and what is shared (see ``docs/distributed.md`` for the why):

- **A meta-batch's tasks** are sharded: rank ``r`` of ``W`` runs a contiguous block of each
  step's meta-batch, rank 0 the first (:meth:`Ranks.shard`). Episode ``i`` is
  a function of ``(seed, i)`` alone, so the union over ranks is the one-process meta-batch.
- **Gradients** are summed by one all-reduce per step (:func:`sum_gradients`), after every
  episode's inner loop and outer backward, so each rank holds the one-process meta-gradient
  and takes the same optimiser step.
- **BatchNorm running statistics** of a step are composed exactly as one process would have
  updated them, episode after episode (:class:`RunningStats`).
- **Evaluation episodes** are split by index and the per-episode accuracies gathered, so the
  mean and the confidence interval are over all episodes, as in one process.
- **Files and logs** are rank 0's: the run directory, checkpoints, metrics, W&B, reports.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from metatl.config import ConfigError

__all__ = [
    "TIMEOUT_ENV",
    "EpisodeOrderedGradients",
    "Ranks",
    "RunningStats",
    "any_rank",
    "average_buffers",
    "barrier",
    "broadcast_module",
    "broadcast_object",
    "current_ranks",
    "gather_objects",
    "launched_ranks",
    "process_group",
    "rank_device",
    "seed_ranks",
    "single_process",
    "sum_gradients",
]

logger = logging.getLogger(__name__)

TIMEOUT_ENV = "METATL_DIST_TIMEOUT_S"
"""Seconds a collective may wait for the other ranks before the job fails (default 600): a
rank that died makes the others fail after this long instead of hanging."""

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    """Where this process stands among the processes of a run.

    Attributes:
        rank: This process, ``0 .. world_size - 1``; rank 0 writes files and logs.
        world_size: Processes in the run (1 without torchrun).
        local_rank: This process among those on its machine (its GPU index).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        """More than one process: the collectives below do something."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, n: int, offset: int = 0) -> range:
        """This rank's share of the items ``offset .. offset + n - 1``: a contiguous block,
        rank 0's first. The blocks of all ranks partition the items, whatever ``n`` (they
        differ in size by one at most).

        Contiguous, not strided: each rank adds its episodes' gradients in their
        one-process order, so the all-reduced sum differs from the one-process sum only in
        where the partial sums meet (round-off).
        """
        start = offset + self.rank * n // self.world_size
        return range(start, offset + (self.rank + 1) * n // self.world_size)


def launched_ranks() -> Ranks:
    """The ranks torchrun announced in the environment (one rank if it did not launch us).

    Raises:
        ConfigError: The variables are there but not integers, or inconsistent.
    """
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
    values = {n: os.environ.get(n, "").strip() for n in names}
    if not values["WORLD_SIZE"]:
        return Ranks()
    try:
        rank, world, local = (int(values[n] or 0) for n in names)
    except ValueError:
        raise ConfigError(
            f"RANK, WORLD_SIZE and LOCAL_RANK must be integers (got {values}); start the "
            "processes with torchrun, which sets them"
        ) from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ConfigError(f"inconsistent RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local}")
    return Ranks(rank, world, local)


def single_process(command: str) -> None:
    """Refuse to run ``command`` under torchrun, before it reads or writes anything.

    Raises:
        ConfigError: Several processes were launched.
    """
    if launched_ranks().active:
        raise ConfigError(
            f"{command} runs on one process: start it with python, not torchrun "
            "(metatl.train, metatl.pretrain, metatl.evaluate and metatl.transfer compare run "
            "under torchrun)"
        )


def seed_ranks(seed: int, ranks: Ranks) -> None:
    """Give each rank its own stream of the global torch generator, from ``(seed, rank)``.

    Episodes and augmentations never draw from it, but dropout, drop-path or CAML's label
    slots do: with one seed every rank would draw what rank 0 draws. Called once the model is
    built (its initial weights come from ``seed`` and rank 0's are broadcast anyway); a no-op
    on one process, whose stream stays what it always was.
    """
    if ranks.active:
        mixed = np.random.SeedSequence([seed, ranks.rank]).generate_state(1, np.uint64)[0]
        torch.manual_seed(int(mixed >> np.uint64(1)))


def rank_device(device: torch.device, ranks: Ranks) -> torch.device:
    """The device of this rank: ``cuda`` means ``cuda:LOCAL_RANK`` under torchrun (one GPU per
    process), made the current CUDA device; other devices are as given."""
    if device.type != "cuda" or not ranks.active:
        return device
    if device.index is None:
        device = torch.device("cuda", ranks.local_rank)
    torch.cuda.set_device(device)
    return device


def current_ranks() -> Ranks:
    """The ranks of the process group this process has joined, or one rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return Ranks()
    local = int(os.environ.get("LOCAL_RANK", "0") or 0)
    return Ranks(dist.get_rank(), dist.get_world_size(), local)


def timeout() -> datetime.timedelta:
    """How long a collective waits: :data:`TIMEOUT_ENV` seconds, default 600."""
    text = os.environ.get(TIMEOUT_ENV, "600")
    try:
        seconds = float(text)
    except ValueError:
        raise ConfigError(f"{TIMEOUT_ENV}={text!r} is not a number of seconds") from None
    if seconds <= 0:
        raise ConfigError(f"{TIMEOUT_ENV} must be positive, not {text}")
    return datetime.timedelta(seconds=seconds)


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[Ranks]:
    """Join the run's process group for the block when torchrun started several processes.

    ``nccl`` when the run is on CUDA, ``gloo`` otherwise. A group that is already there (a
    caller made it) is used and left alone; one made here is destroyed at the end.

    Args:
        device: The device this rank runs on (``cuda:LOCAL_RANK`` under torchrun on GPUs).

    Yields:
        This process's :class:`Ranks`.
    """
    launched = launched_ranks()
    if not launched.active or not dist.is_available():
        yield current_ranks()
        return
    if dist.is_initialized():
        yield current_ranks()
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs: dict[str, Any] = {"backend": backend, "timeout": timeout()}
    if device.type == "cuda":
        kwargs["device_id"] = device
    dist.init_process_group(**kwargs)
    logger.info("rank %d of %d (%s)", launched.rank, launched.world_size, backend)
    try:
        yield current_ranks()
        # Leave together: a rank that tears its group down while another still works (rank 0
        # writing the report) could abort in gloo's teardown. Not after an error, which may
        # have reached one rank only: the job then fails anyway.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def any_rank(flag: bool, ranks: Ranks | None = None) -> bool:
    """True on every rank if ``flag`` is true on any (e.g. a stop request that reached one)."""
    ranks = ranks or current_ranks()
    if not ranks.active:
        return bool(flag)
    value = torch.tensor([1 if flag else 0], dtype=torch.int32, device=_collective_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def broadcast_object(value: T, ranks: Ranks | None = None) -> T:
    """Rank 0's ``value`` on every rank (a path, a checkpoint payload)."""
    ranks = ranks or current_ranks()
    if not ranks.active:
        return value
    box = [value if ranks.is_main else None]
    dist.broadcast_object_list(box, src=0, device=_collective_device())
    return box[0]  # type: ignore[return-value]


def gather_objects(value: Any, ranks: Ranks | None = None) -> list[Any]:
    """Every rank's ``value``, in rank order, on every rank."""
    ranks = ranks or current_ranks()
    if not ranks.active:
        return [value]
    out: list[Any] = [None] * ranks.world_size
    dist.all_gather_object(out, value)
    return out


def barrier(ranks: Ranks | None = None) -> None:
    """Wait until every rank is here."""
    ranks = ranks or current_ranks()
    if ranks.active:
        dist.barrier()


def broadcast_module(module: nn.Module, ranks: Ranks | None = None) -> None:
    """Rank 0's parameters and buffers into ``module`` on every rank, as DDP starts."""
    ranks = ranks or current_ranks()
    if not ranks.active:
        return
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)


def average_buffers(module: nn.Module, ranks: Ranks | None = None) -> None:
    """Every floating-point buffer of ``module`` (BatchNorm running statistics) replaced by
    its mean over the ranks, in one all-reduce: after a data-parallel step in which each
    rank normalised its own share of the batch."""
    ranks = ranks or current_ranks()
    buffers = [b for b in module.buffers() if b.is_floating_point()]
    if not ranks.active or not buffers:
        return
    flat = torch.cat([b.detach().reshape(-1).double() for b in buffers])
    dist.all_reduce(flat)
    flat /= ranks.world_size
    offset = 0
    with torch.no_grad():
        for b in buffers:
            b.copy_(flat[offset : offset + b.numel()].view_as(b))
            offset += b.numel()


def sum_gradients(
    parameters: Sequence[nn.Parameter], extras: Sequence[float], ranks: Ranks | None = None
) -> list[float]:
    """Sum every parameter's ``.grad`` and the numbers ``extras`` over the ranks, in one
    all-reduce of one flat buffer.

    A parameter that got no gradient on any rank keeps ``grad = None`` (the optimiser then
    skips it, as in one process); one that got a gradient on some ranks gets their sum.

    Args:
        parameters: The parameters the optimiser steps, in the same order on every rank.
        extras: Numbers to sum along (loss and accuracy sums, a count of bad losses).

    Returns:
        ``extras`` summed over the ranks.
    """
    ranks = ranks or current_ranks()
    if not ranks.active:
        return list(extras)
    grads = [p.grad for p in parameters]
    like = next((g for g in grads if g is not None), None)
    dtype = like.dtype if like is not None else parameters[0].dtype
    device = like.device if like is not None else parameters[0].device
    flat = torch.cat(
        [
            (g if g is not None else torch.zeros(p.shape, dtype=dtype, device=device))
            .reshape(-1)
            .to(dtype)
            for p, g in zip(parameters, grads, strict=True)
        ]
    )
    dist.all_reduce(flat)
    present = [1.0 if g is not None else 0.0 for g in grads]
    # Counts and metric sums in float64, exact whatever the gradients' dtype.
    tail = torch.tensor([*present, *extras], dtype=torch.float64, device=device)
    dist.all_reduce(tail)
    offset = 0
    for p, count in zip(parameters, tail[: len(present)].tolist(), strict=True):
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).to(p.dtype) if count else None
        offset += n
    return tail[len(present) :].tolist()


class EpisodeOrderedGradients:
    """A step's gradients summed over the ranks in episode order: bit for bit one process's.

    :func:`sum_gradients` adds each rank's partial sum, an order of additions one process
    never makes, so the last bits differ and Adam grows the difference over the steps. Here
    each rank keeps every episode's gradient apart (:meth:`after_episode` moves it out of
    ``.grad``); :meth:`end_step` gathers them all and every rank adds them up as one process
    accumulates them, episode 0 first. It costs ``ceil(M / N)`` gradient copies per rank and
    an all-gather of ``M`` of them per step (``M`` = meta-batch, ``N`` = ranks) instead of
    one all-reduce: nothing for Conv-4, real memory and traffic for a ResNet.

    Args:
        parameters: The parameters the optimiser steps, in the same order on every rank.
        numbers: How many numbers each episode brings (its loss and accuracy terms), summed
            in episode order along with the gradients.
        ranks: The run's ranks (active).
    """

    def __init__(self, parameters: Sequence[nn.Parameter], numbers: int, ranks: Ranks) -> None:
        self.parameters, self.numbers, self.ranks = list(parameters), numbers, ranks
        self._rows: list[tuple[int, torch.Tensor, list[float]]] = []

    def begin_step(self) -> None:
        self._rows = []

    def after_episode(self, position: int, numbers: Sequence[float]) -> None:
        """Take the gradient the episode at ``position`` left in ``.grad`` (and clear it),
        with the episode's ``numbers``."""
        dtype = self.parameters[0].dtype
        flat = torch.cat(
            [
                (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(dtype)
                for p in self.parameters
            ]
        )
        present = [1.0 if p.grad is not None else 0.0 for p in self.parameters]
        for p in self.parameters:
            p.grad = None
        self._rows.append((position, flat, [*present, *numbers]))

    def end_step(self, meta_batch: int, bad: bool) -> tuple[list[float], bool]:
        """Set every parameter's ``.grad`` to the meta-batch's sum, added in episode order.

        Args:
            meta_batch: Episodes in the step, over all ranks.
            bad: Whether this rank met a non-finite loss (its episode left no row).

        Returns:
            The episodes' numbers, each summed in episode order from 0.0, and whether any
            rank met a non-finite loss (then no ``.grad`` is set).
        """
        device, dtype = _collective_device(), self.parameters[0].dtype
        width = sum(p.numel() for p in self.parameters)
        rows = -(-meta_batch // self.ranks.world_size)  # the largest shard; others pad
        grads = torch.zeros(rows, width, dtype=dtype, device=device)
        # A row's extras: the episode's position (-1: padding), this rank's non-finite flag,
        # then the parameters' has-a-gradient flags and the episode's numbers.
        extras = torch.full(
            (rows, 2 + len(self.parameters) + self.numbers), -1.0, dtype=torch.float64
        )
        extras[:, 1] = float(bad)
        for row, (position, flat, numbers) in enumerate(self._rows):
            grads[row] = flat.to(device)
            extras[row, 0] = position
            extras[row, 2:] = torch.tensor(numbers, dtype=torch.float64)
        gathered = [torch.empty_like(grads) for _ in range(self.ranks.world_size)]
        gathered_extras = [torch.empty_like(extras, device=device) for _ in gathered]
        dist.all_gather(gathered, grads)
        dist.all_gather(gathered_extras, extras.to(device))
        all_extras = torch.cat(gathered_extras).cpu()
        if bool((all_extras[:, 1] > 0).any()):
            return [], True
        all_grads = torch.cat(gathered)
        order = [int(i) for i in all_extras[:, 0].argsort() if all_extras[i, 0] >= 0]
        total = all_grads[order[0]].clone()
        for i in order[1:]:
            total.add_(all_grads[i])  # one process's ``grad += new``, in the same order
        has_grad = (all_extras[order, 2 : 2 + len(self.parameters)] > 0).any(dim=0).tolist()
        sums = [0.0] * self.numbers
        for i in order:
            for j, x in enumerate(all_extras[i, 2 + len(self.parameters) :].tolist()):
                sums[j] += x
        offset = 0
        for p, has in zip(self.parameters, has_grad, strict=True):
            n = p.numel()
            if has:
                p.grad = total[offset : offset + n].view_as(p).to(p.device, p.dtype)
            offset += n
        return sums, False


class RunningStats:
    """A step's BatchNorm running statistics when its episodes ran on several ranks.

    In one process the episodes of a step update each BatchNorm layer one after the other.
    A train-mode forward updates ``r <- (1 - m) r + m * batch_stat``; ``k`` of them (counted
    by ``num_batches_tracked``) make the affine map ``r <- (1 - m)^k r + b``, whose ``b`` does
    not depend on ``r``. Each rank records ``(k, b)`` of its own episodes; at the end of the
    step the records are summed over the ranks (each position is one rank's), and every rank
    applies the maps in episode order from the statistics the step started with: the
    one-process result, to round-off.

    Args:
        module: The learner; its BatchNorm layers that track running statistics.

    Raises:
        ConfigError: A layer uses a cumulative average (``momentum=None``), whose update
            depends on how many batches came before and cannot be split this way.
    """

    def __init__(self, module: nn.Module) -> None:
        self.layers = [
            m
            for m in module.modules()
            if isinstance(m, _BatchNorm) and m.track_running_stats and m.running_mean is not None
        ]
        for layer in self.layers:
            if layer.momentum is None:
                raise ConfigError(
                    f"{type(layer).__name__} with momentum=None (a cumulative average) cannot "
                    "be combined exactly across ranks; give it a momentum, or run on one process"
                )
        self._start: list[tuple[torch.Tensor, ...]] = []
        self._before: list[tuple[torch.Tensor, ...]] = []
        self._records: dict[int, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {}

    def begin_step(self) -> None:
        """Remember the statistics the step starts from."""
        self._start = self._snapshot()
        self._records = {}

    def before_episode(self) -> None:
        self._before = self._snapshot()

    def after_episode(self, position: int) -> None:
        """Record the map the episode at ``position`` of the meta-batch applied."""
        record = []
        for layer, (mean0, var0, count0) in zip(self.layers, self._before, strict=True):
            k = layer.num_batches_tracked - count0
            decay = (1.0 - float(layer.momentum)) ** float(k)
            b_mean = layer.running_mean - decay * mean0
            b_var = layer.running_var - decay * var0
            record.append((k.reshape(1).to(b_mean.dtype), b_mean, b_var))
        self._records[position] = record

    def end_step(self, meta_batch: int) -> None:
        """Sum the records over the ranks, then set every layer's statistics to what the
        ``meta_batch`` episodes would have left in one process."""
        if not self.layers:
            return
        parts = []
        for position in range(meta_batch):
            record = self._records.get(position)
            for i, layer in enumerate(self.layers):
                if record is None:
                    c = layer.running_mean.numel()
                    parts.append(torch.zeros(1 + 2 * c, dtype=layer.running_mean.dtype))
                else:
                    parts.append(torch.cat([t.reshape(-1).cpu() for t in record[i]]))
        flat = torch.cat(parts).double().to(_collective_device())
        dist.all_reduce(flat)
        flat = flat.to(self.layers[0].running_mean.device)
        offset = 0
        state = [(m.double(), v.double(), c.clone()) for m, v, c in self._start]
        for _ in range(meta_batch):
            for i, layer in enumerate(self.layers):
                c = layer.running_mean.numel()
                k = flat[offset]
                b_mean, b_var = (
                    flat[offset + 1 : offset + 1 + c],
                    flat[offset + 1 + c : offset + 1 + 2 * c],
                )
                offset += 1 + 2 * c
                mean, var, count = state[i]
                decay = (1.0 - float(layer.momentum)) ** float(k)
                state[i] = (
                    decay * mean + b_mean,
                    decay * var + b_var,
                    count + round(float(k)),
                )
        with torch.no_grad():
            for layer, (mean, var, count) in zip(self.layers, state, strict=True):
                layer.running_mean.copy_(mean)
                layer.running_var.copy_(var)
                layer.num_batches_tracked.copy_(count)

    def _snapshot(self) -> list[tuple[torch.Tensor, ...]]:
        return [
            (
                m.running_mean.detach().clone(),
                m.running_var.detach().clone(),
                m.num_batches_tracked.clone(),
            )
            for m in self.layers
        ]


def _collective_device() -> torch.device:
    """Where the backend's collectives take tensors: the rank's GPU for nccl, else the CPU."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
