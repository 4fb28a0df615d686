"""Time per MAML-family meta-training step: which parameters adapt, and peers (median ms).

    python benchmarks/maml_step_time.py [--inner-steps 1] [--first-order] [--threads 1]
    python benchmarks/maml_step_time.py --backbone resnet18 --channels 3 --size 64 --shot 5

One step = meta-batch of episodes (default 4 x 5-way 1-shot 15 queries on a 28x28 Conv-4 with
BatchNorm), inner loop, query losses averaged, backward, Adam step. Compared in one run: each
round runs every method once in a shuffled order, and ratios are taken within a round (then
the median over rounds), so that a noisy shared machine affects all alike:

- MAML ``adapt="all"``, ``"top:1"`` and ANIL ``"head"`` (metatl, torch.func), and the last
  two without the frozen-trunk cache (``cache_frozen_trunk=False``);
- higher's ``innerloop_ctx(model, opt, copy_initial_weights=False)`` (all parameters adapt);
- a hand-written autograd MAML on explicit tensors (all parameters adapt).

All use a learned ``n_way`` head so the work is the same. The side-by-side harness with
learn2learn, easyfsl, FLOP/s and meta-gradient checks is ``python -m benchmarks``
(``benchmarks/run.py``); it reuses :func:`hand_forward` and :func:`hand_features` from here.
Prints the median and minimum time per step and the ratio to metatl's ``adapt="all"``. On a
shared machine, ``--threads 1`` suffers far less from other processes than the default OpenMP
threads do.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from benchmarks import measure
from episodes import Episode
from metatl.algorithms.maml import MAML
from metatl.backbones import Backbone, create_backbone

Step = Callable[[], None]


def make_backbone(args: argparse.Namespace) -> Backbone:
    torch.manual_seed(0)
    extra = {"hidden": args.hidden} if args.backbone == "conv4" else {}
    return create_backbone(args.backbone, in_channels=args.channels, image_size=args.size, **extra)


def metatl_step(args: argparse.Namespace, episodes: list[Episode], **kwargs: object) -> Step:
    backbone = make_backbone(args)
    learner = MAML(
        backbone,
        n_way=args.way,
        head="learned",
        inner_steps=args.inner_steps,
        inner_lr=args.inner_lr,
        first_order=args.first_order,
        **kwargs,  # type: ignore[arg-type]
    ).train()
    opt = torch.optim.Adam(learner.parameters(), lr=1e-3)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = sum(learner.loss(ep)[0] for ep in episodes) / len(episodes)
        loss.backward()  # type: ignore[union-attr]
        opt.step()

    return step


def _net(args: argparse.Namespace) -> nn.Module:
    backbone = make_backbone(args)
    return nn.Sequential(backbone, nn.Linear(backbone.out_dim, args.way)).train()


def higher_step(args: argparse.Namespace, episodes: list[Episode]) -> Step:
    import higher

    net = _net(args)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    inner_opt = torch.optim.SGD(net.parameters(), lr=args.inner_lr)
    callback = (lambda grads: [g.detach() for g in grads]) if args.first_order else None

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        for ep in episodes:
            with higher.innerloop_ctx(net, inner_opt, copy_initial_weights=False) as (fnet, diff):
                for _ in range(args.inner_steps):
                    diff.step(
                        F.cross_entropy(fnet(ep.support_x), ep.support_y), grad_callback=callback
                    )
                loss = F.cross_entropy(fnet(ep.query_x), ep.query_y) / len(episodes)
                loss.backward()
        opt.step()

    return step


def hand_features(params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Conv-4 with batch-statistics BatchNorm on explicit tensors (4 x conv w, b, gamma, beta)."""
    for i in range(4):
        weight, bias, gamma, beta = params[4 * i : 4 * i + 4]
        x = F.conv2d(x, weight, bias, padding=1)
        x = F.batch_norm(x, None, None, gamma, beta, training=True)
        x = F.max_pool2d(F.relu(x), 2)
    return x.flatten(1)


def hand_forward(params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """:func:`hand_features`, then the linear head ``params[16]``, ``params[17]``."""
    return F.linear(hand_features(params, x), params[16], params[17])


def hand_written_step(args: argparse.Namespace, episodes: list[Episode]) -> Step:
    params = list(_net(args).parameters())
    opt = torch.optim.Adam(params, lr=1e-3)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for ep in episodes:
            fast = params
            for _ in range(args.inner_steps):
                loss = F.cross_entropy(hand_forward(fast, ep.support_x), ep.support_y)
                grads = torch.autograd.grad(loss, fast, create_graph=not args.first_order)
                fast = [w - args.inner_lr * g for w, g in zip(fast, grads, strict=True)]
            total = total + F.cross_entropy(hand_forward(fast, ep.query_x), ep.query_y)
        (total / len(episodes)).backward()  # type: ignore[union-attr]
        opt.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inner-steps", type=int, default=1)
    parser.add_argument("--first-order", action="store_true")
    parser.add_argument("--inner-lr", type=float, default=0.4)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--backbone", default="conv4", help="a registered backbone name")
    parser.add_argument("--hidden", type=int, default=64, help="Conv-4 filters")
    parser.add_argument("--way", type=int, default=5)
    parser.add_argument("--shot", type=int, default=1)
    parser.add_argument("--query", type=int, default=15)
    parser.add_argument("--meta-batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--no-peers", action="store_true", help="skip higher and hand-written")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    episodes = measure.random_episodes(
        args.way,
        args.shot,
        args.query,
        channels=args.channels,
        size=args.size,
        count=args.meta_batch,
    )
    methods: dict[str, Step] = {
        "metatl all": metatl_step(args, episodes, adapt="all"),
        "metatl top:1": metatl_step(args, episodes, adapt="top:1"),
        "metatl head (ANIL)": metatl_step(args, episodes, adapt="head"),
        "metatl top:1, no trunk cache": metatl_step(
            args, episodes, adapt="top:1", cache_frozen_trunk=False
        ),
        "metatl head, no trunk cache": metatl_step(
            args, episodes, adapt="head", cache_frozen_trunk=False
        ),
    }
    if not args.no_peers:
        methods["higher 0.2.1 (all)"] = higher_step(args, episodes)
        if args.backbone == "conv4":
            methods["hand-written autograd (all)"] = hand_written_step(args, episodes)
    times: dict[str, list[float]] = {name: [] for name in methods}
    names, shuffle = list(methods), random.Random(0)
    for repeat in range(args.warmup + args.repeats):
        shuffle.shuffle(names)  # one round runs every method once, in a fresh order
        for name in names:
            start = time.perf_counter()
            methods[name]()
            if repeat >= args.warmup:
                times[name].append(time.perf_counter() - start)
    order = "1st" if args.first_order else "2nd"
    net = f"Conv-4 ({args.hidden} filters)" if args.backbone == "conv4" else args.backbone
    print(
        f"meta-batch {args.meta_batch} x {args.way}-way {args.shot}-shot {args.query}-query, "
        f"{args.size}x{args.size}x{args.channels} "
        f"{net} with BatchNorm, "
        f"{order} order, {args.inner_steps} inner step(s); {args.repeats} rounds, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    base = times["metatl all"]
    print("| method | median ms / step | min ms | ratio to metatl all (median of rounds) |")
    print("| --- | --- | --- | --- |")
    for name, values in times.items():
        ratio = statistics.median(v / b for v, b in zip(values, base, strict=True))
        print(
            f"| {name} | {1000 * statistics.median(values):.0f} | {1000 * min(values):.0f} "
            f"| {ratio:.2f} |"
        )


if __name__ == "__main__":
    main()
