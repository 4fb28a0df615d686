"""Time per meta-training step of learners at fp32 vs bf16 (or fp16) autocast (median ms).

    python benchmarks/precision_step_time.py                      # ProtoNet, Conv-4 28x28
    python benchmarks/precision_step_time.py --algorithm maml --way 5 --shot 1 --query 15
    python benchmarks/precision_step_time.py --backbone resnet12 --size 84 --channels 3
    python benchmarks/precision_step_time.py --algorithm protonet caml maml --precisions bf16 \
        --set model.caml.freeze_backbone=true                    # learners side by side
    python benchmarks/precision_step_time.py --precisions fp32 --formats channels_last contiguous
    python benchmarks/precision_step_time.py --algorithm protonet fomaml --precisions fp32 \
        --compile                                                # eager vs torch.compile

One step is what ``metatl.training.meta_train`` does: the learner's loss on an episode under
``autocast(device, precision)``, backward through the loss scaler, an Adam step. Each round
times every (learner, precision, memory format) once, in a shuffled order, and the ratio to
the first is taken within the round (then the median over rounds), so a noisy shared machine
affects all alike. Every learner starts from the same backbone weights and sees the same episode.

``--compile`` adds, for each of them, a variant whose backbone forward is ``torch.compile``d
(the learner's loss, the inner loop and Adam stay eager), with its gradient difference to the
eager variant as the harness measures it (:func:`measure.max_relative_difference`). A
variant that cannot run (second-order MAML: a compiled backward cannot be differentiated
again) is reported and left out.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import random
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks import measure
from metatl.config import load_config
from metatl.training.builders import build_learner
from metatl.training.device import autocast, grad_scaler, resolve_device

FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algorithm", nargs="+", default=["protonet"])
    parser.add_argument("--backbone", default="conv4")
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--way", type=int, default=20)
    parser.add_argument("--shot", type=int, default=5)
    parser.add_argument("--query", type=int, default=5)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument(
        "--formats",
        nargs="+",
        default=["channels_last"],
        choices=["channels_last", "contiguous"],
        help="memory formats of the weights and images (metatl.train uses channels_last)",
    )
    parser.add_argument("--compile", action="store_true", help="add torch.compile variants")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=10, help="steps per timing")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--set", nargs="*", default=[], help="config overrides for all learners")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    (episode,) = measure.random_episodes(
        args.way, args.shot, args.query, channels=args.channels, size=args.size, device=device
    )

    runners, gradients, agreement, partner = {}, {}, {}, {}
    for algorithm in args.algorithm:
        config = load_config(
            None,
            [
                f"model.algorithm={algorithm}",
                f"model.backbone={args.backbone}",
                f"episodes.way={args.way}",
                f"test.way={args.way}",
                f"train.val_way={args.way}",
                *args.set,
            ],
        )
        torch.manual_seed(0)
        base = build_learner(config, args.channels, args.size, n_way=args.way).to(device)
        variants = ("eager", "compiled") if args.compile else ("eager",)
        for precision, memory_format, variant in itertools.product(
            args.precisions, args.formats, variants
        ):
            learner = copy.deepcopy(base).to(memory_format=FORMATS[memory_format])
            if variant == "compiled":
                learner.backbone.forward = torch.compile(learner.backbone.forward)
            images = episode.map_images(
                lambda x, f=memory_format: x.contiguous(memory_format=FORMATS[f])
            )
            optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
            scaler = grad_scaler(device, precision)

            def step(
                learner=learner,
                optimizer=optimizer,
                scaler=scaler,
                precision=precision,
                images=images,
            ):
                learner.train()
                optimizer.zero_grad(set_to_none=True)
                with autocast(device, precision):
                    loss, _ = learner.loss(images)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()

            name = f"{algorithm} {precision}"
            name += f" {memory_format}" if len(args.formats) > 1 else ""
            name += f" {variant}" if args.compile else ""
            try:
                gradient = first_gradient(learner, images, device, precision)
            except RuntimeError as err:  # e.g. a compiled backward differentiated twice
                print(f"{name}: cannot run: {str(err).splitlines()[0]}")
                continue
            eager = name.replace(" compiled", " eager")
            if variant == "compiled" and eager in gradients:
                agreement[name] = measure.max_relative_difference(gradients[eager], gradient)
                partner[name] = eager
            gradients[name] = gradient
            runners[name] = step

    for run in runners.values():  # warm-up: oneDNN picks and caches its kernels
        for _ in range(3):
            run()
    times: dict[str, list[float]] = {name: [] for name in runners}
    ratios: dict[str, list[float]] = {name: [] for name in runners}
    to_eager: dict[str, list[float]] = {name: [] for name in partner}
    reference = next(iter(runners))
    rng = random.Random(0)
    for _ in range(args.rounds):
        order = list(runners)
        rng.shuffle(order)
        this_round = {}
        for name in order:
            start = time.perf_counter()
            for _ in range(args.steps):
                runners[name]()
            if device.type == "cuda":
                torch.cuda.synchronize()
            this_round[name] = (time.perf_counter() - start) / args.steps
        for name, seconds in this_round.items():
            times[name].append(seconds)
            ratios[name].append(seconds / this_round[reference])
            if name in partner:
                to_eager[name].append(seconds / this_round[partner[name]])

    print(
        f"{', '.join(args.algorithm)} {args.backbone} {args.size}x{args.size}x{args.channels}, "
        f"{args.way}-way {args.shot}-shot {args.query}-query, {device}, "
        f"{torch.get_num_threads()} threads, {args.rounds} rounds x {args.steps} steps\n"
    )
    header = "| learner, precision | median ms/step | min ms/step "
    header += f"| ratio to {reference} (median) |"
    print(header + (" ratio to eager | grad rel. diff to eager |" if args.compile else ""))
    print("| --- | --- | --- | --- |" + (" --- | --- |" if args.compile else ""))
    for name in runners:
        line = (
            f"| {name} | {1e3 * statistics.median(times[name]):.1f} "
            f"| {1e3 * min(times[name]):.1f} | {statistics.median(ratios[name]):.2f} |"
        )
        if args.compile and name in partner:
            line += f" {statistics.median(to_eager[name]):.2f} | {agreement[name]:.1e} |"
        elif args.compile:
            line += " — | — |"
        print(line)


def first_gradient(learner, images, device, precision) -> list[torch.Tensor]:
    """The gradient of one loss on ``images`` (no optimizer step), parameter by parameter."""
    learner.train()
    with autocast(device, precision):
        loss, _ = learner.loss(images)
    loss.backward()
    gradient = [p.grad.detach().clone() for p in learner.parameters() if p.grad is not None]
    learner.zero_grad(set_to_none=True)
    return gradient


if __name__ == "__main__":
    main()
