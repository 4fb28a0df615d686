"""Episode sampling throughput from the in-memory cache (episodes per second).

    python benchmarks/episode_sampling.py [--root data/glyphs] [--way 5 --shot 5 --query 15]

Times building episodes (index sampling + gathering uint8 images + float transform) from the
glyph benchmark's train split, with 0 and 2 DataLoader workers, over repeats; prints medians.
Without a built benchmark (or with --synthetic) it uses a random cache of the same shape.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from episodes import EpisodeDataset, EpisodeSpec, LabelledImages


def load_data(root: Path, synthetic: bool, size: int) -> LabelledImages:
    if not synthetic and (root / "manifest.json").is_file():
        from episodes.datasets.glyphs import load_glyphs

        return load_glyphs(root, "train", image_size=size)
    n_classes, per_class = 2038, 20
    return LabelledImages(
        torch.randint(0, 256, (n_classes * per_class, 1, size, size), dtype=torch.uint8),
        torch.arange(n_classes).repeat_interleave(per_class),
        tuple(str(c) for c in range(n_classes)),
        name="synthetic",
    )


def to_float(images: torch.Tensor) -> torch.Tensor:
    return images.float().div_(255.0).sub_(0.5).div_(0.5)


def episodes_per_second(dataset: EpisodeDataset, workers: int) -> float:
    loader = DataLoader(dataset, batch_size=None, num_workers=workers)
    start = time.perf_counter()
    count = sum(1 for _ in loader)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("data/glyphs"))
    parser.add_argument("--synthetic", action="store_true")
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--way", type=int, default=5)
    parser.add_argument("--shot", type=int, default=5)
    parser.add_argument("--query", type=int, default=15)
    parser.add_argument("--episodes", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    start = time.perf_counter()
    data = load_data(args.root, args.synthetic, args.size)
    load_s = time.perf_counter() - start
    spec = EpisodeSpec(args.way, args.shot, args.query)
    print(
        f"data: {data.name}, {len(data)} images of {data.image_shape}, "
        f"{data.num_classes} classes, loaded in {load_s:.2f} s"
    )
    print(
        f"episodes: {args.way}-way {args.shot}-shot {args.query}-query, "
        f"{args.episodes} per repeat, median of {args.repeats} repeats"
    )
    for transform, label in ((None, "uint8"), (to_float, "float, normalised")):
        for workers in (0, 2):
            rates = []
            for repeat in range(args.repeats):
                ds = EpisodeDataset.from_spec(data, spec, repeat, args.episodes, transform)
                rates.append(episodes_per_second(ds, workers))
            med = statistics.median(rates)
            print(
                f"  {label:18s} workers={workers}: {med:8.0f} episodes/s "
                f"({1000 / med:.3f} ms/episode)"
            )


if __name__ == "__main__":
    main()
