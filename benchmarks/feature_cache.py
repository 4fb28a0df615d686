"""Wall time of evaluate() with ProtoNet + linear probe, with and without the feature cache.

    python benchmarks/feature_cache.py             # Conv-4 84x84 and MobileNetV2 224
    python benchmarks/feature_cache.py --quick     # a few minutes
    python benchmarks/feature_cache.py --settings conv4 --episodes 200 --repeats 5

Each setting evaluates ``protonet`` and ``linear`` (the registry's defaults) on the same
backbone over a fixed set of 5-way 1-shot 15-query episodes drawn from a small synthetic RGB
set at the backbone's input size, once with ``feature_cache=False`` (the backbone runs on
every image of every episode, for each method) and once with it (each image's features at
most once). Each round times both, in a shuffled order, and the ratio is taken within the
round (then the median over rounds), so a noisy shared machine affects both alike; the
accuracies of the two paths are checked to be identical in every round.

MobileNetV2 uses torchvision's ImageNet weights when they are in the torch hub cache and
random weights otherwise (same cost). Uncached evaluation costs seconds per episode on a CPU
(Conv-4 at 84 about 2-4 s, MobileNetV2 at 224 about 10-17 s on 2 cores), so the timed rounds
use fewer episodes (``--episodes``, ``--large-episodes``) and ``--extrapolate N`` (default
600) adds a *measured* cached run of N episodes next to the uncached time scaled linearly to
N (every uncached episode costs the same; the cached cost is bounded by the split's images
plus the per-episode prototype or head fit).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from dataclasses import dataclass

import torch

from episodes import EpisodeSpec, LabelledImages
from metatl.algorithms import LinearProbe, ProtoNet
from metatl.backbones import Backbone, create_backbone
from metatl.training import ImageTransform
from metatl.training.device import resolve_device
from metatl.training.evaluation import evaluate

SPEC = EpisodeSpec(n_way=5, n_shot=1, n_query=15)


@dataclass(frozen=True)
class Setting:
    backbone: str
    size: int
    classes: int
    per_class: int
    episodes: int

    def label(self) -> str:
        return f"{self.backbone} {self.size}x{self.size}"


def build_backbone(name: str, size: int) -> tuple[Backbone, str]:
    """The backbone in eval mode and a word on its weights."""
    torch.manual_seed(0)
    if name == "conv4":
        return create_backbone("conv4", in_channels=3, image_size=size).eval(), "random init"
    from metatl.backbones.weights import WeightsError

    try:
        backbone = create_backbone(name, pretrained="IMAGENET1K_V1", download=False)
        return backbone.eval(), "ImageNet weights"
    except WeightsError:
        return create_backbone(name).eval(), "random weights (ImageNet weights not cached)"


def synthetic_rgb(setting: Setting) -> LabelledImages:
    """Per class a smooth random colour pattern plus noise, uint8 at the backbone's size."""
    gen = torch.Generator().manual_seed(0)
    n, size = setting.classes * setting.per_class, setting.size
    coarse = torch.rand(setting.classes, 3, 6, 6, generator=gen)
    patterns = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear")
    images = patterns.repeat_interleave(setting.per_class, 0) * 255
    images = images + 50 * torch.randn(n, 3, size, size, generator=gen)
    return LabelledImages(
        images.round().clamp(0, 255).to(torch.uint8),
        torch.arange(setting.classes).repeat_interleave(setting.per_class),
        tuple(f"c{c}" for c in range(setting.classes)),
        name=f"synthetic-rgb-{size}",
    )


def timed_evaluate(learners, data, episodes, transform, device, cached) -> tuple[float, dict]:
    start = time.perf_counter()
    results = evaluate(
        learners, data, SPEC, episodes, 0, transform, device=device, feature_cache=cached
    )
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, {n: r.accuracies for n, r in results.items()}


def run_setting(setting: Setting, repeats: int, extrapolate: int, device: torch.device) -> dict:
    """Time ``evaluate`` with and without the cache in ``repeats`` shuffled rounds.

    Returns:
        ``label``, ``weights``, ``images``, per-path ``seconds`` (one per round), the
        within-round ``ratios`` (uncached / cached) and, if ``extrapolate`` exceeds the
        setting's episodes, ``extrapolated`` (measured cached and scaled uncached seconds).

    Raises:
        AssertionError: If the two paths' per-episode accuracies differ in any round.
    """
    backbone, weights = build_backbone(setting.backbone, setting.size)
    backbone = backbone.to(device)
    data = synthetic_rgb(setting)
    learners = {"protonet": ProtoNet(backbone), "linear": LinearProbe(backbone)}
    transform = ImageTransform(backbone.input_spec)
    times: dict[str, list[float]] = {"cached": [], "uncached": []}
    ratios = []
    rng = random.Random(0)
    for _ in range(repeats):
        order = [True, False]
        rng.shuffle(order)
        this_round = {}
        for cached in order:
            this_round[cached] = timed_evaluate(
                learners, data, setting.episodes, transform, device, cached
            )
            times["cached" if cached else "uncached"].append(this_round[cached][0])
        if this_round[True][1] != this_round[False][1]:
            raise AssertionError("cached and uncached accuracies differ")
        ratios.append(this_round[False][0] / this_round[True][0])
    result = {
        "label": setting.label(),
        "weights": weights,
        "images": len(data),
        "episodes": setting.episodes,
        "seconds": times,
        "ratios": ratios,
    }
    if extrapolate > setting.episodes:
        seconds, _ = timed_evaluate(learners, data, extrapolate, transform, device, cached=True)
        uncached = statistics.median(times["uncached"]) / setting.episodes * extrapolate
        result["extrapolated"] = {
            "episodes": extrapolate,
            "cached_s": seconds,
            "uncached_s": uncached,
        }
    return result


def report(result: dict, repeats: int) -> str:
    """The Markdown section of one setting."""
    lines = [
        f"\n### {result['label']}, {result['weights']}; {result['images']} images, "
        f"{result['episodes']} episodes {SPEC.n_way}-way {SPEC.n_shot}-shot "
        f"{SPEC.n_query}-query, {repeats} rounds\n",
        "| path | median s | min s | s/episode | speed-up (median of per-round ratios) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for path in ("uncached", "cached"):
        seconds = result["seconds"][path]
        median = statistics.median(seconds)
        speedup = f"{statistics.median(result['ratios']):.1f}x" if path == "cached" else "1"
        label = "feature cache" if path == "cached" else path
        lines.append(
            f"| {label} | {median:.1f} | {min(seconds):.1f} "
            f"| {median / result['episodes']:.3f} | {speedup} |"
        )
    lines.append("\naccuracies identical in every round: yes")
    if extra := result.get("extrapolated"):
        lines.append(
            f"{extra['episodes']} episodes: feature cache {extra['cached_s']:.1f} s measured; "
            f"uncached ~{extra['uncached_s']:.0f} s extrapolated "
            f"(~{extra['uncached_s'] / extra['cached_s']:.0f}x)"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=["conv4", "mobilenet_v2"])
    parser.add_argument("--episodes", type=int, default=200, help="Conv-4 episodes")
    parser.add_argument("--large-episodes", type=int, default=20, help="MobileNetV2 episodes")
    parser.add_argument("--extrapolate", type=int, default=600, help="0: off")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="few episodes, 2 rounds")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    if args.quick:
        args.episodes, args.large_episodes, args.repeats, args.extrapolate = 30, 3, 2, 0
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    settings = {
        "conv4": Setting("conv4", 84, 20, 30, args.episodes),
        "mobilenet_v2": Setting("mobilenet_v2", 224, 10, 20, args.large_episodes),
    }
    print(f"evaluate(protonet + linear), {device}, {torch.get_num_threads()} threads")
    for name in args.settings:
        print(
            report(
                run_setting(settings[name], args.repeats, args.extrapolate, device), args.repeats
            )
        )


if __name__ == "__main__":
    main()
