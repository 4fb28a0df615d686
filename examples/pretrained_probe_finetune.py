"""ImageNet MobileNetV2 on your images: a linear probe against fine-tuning, on the same episodes.

    python examples/pretrained_probe_finetune.py --data my_images     # my_images/test/<class>/*
    python examples/pretrained_probe_finetune.py --data my_images --split val --shot 5
    python examples/pretrained_probe_finetune.py --quick              # synthetic blobs, ~20 s

torchvision's ``IMAGENET1K_V1`` weights are read from the torch hub cache, never downloaded
here (``make weights`` installs them). Per episode, ``linear`` fits logistic regression on the
frozen features of the support set; ``finetune`` fits that head, then trains it with the top
``--blocks`` blocks. Both see the same seeded episodes, so their difference is paired.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import metatl
from episodes.synthetic import write_blob_folder
from metatl.backbones import Backbone, WeightsError
from metatl.config import load_config


def mobilenet_v2(image_size: int) -> Backbone:
    """ImageNet MobileNetV2 from the local cache; exits naming ``make weights`` if absent."""
    try:
        return metatl.create_backbone(
            "mobilenet_v2", "IMAGENET1K_V1", download=False, image_size=image_size
        )
    except WeightsError as err:
        raise SystemExit(f"error: {err}\n`make weights` installs these weights offline") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, help="an image folder: <data>/<split>/<class>/*")
    parser.add_argument("--split", default="test", help="the split of new classes to score on")
    parser.add_argument("--way", type=int, default=5)
    parser.add_argument("--shot", type=int, default=1)
    parser.add_argument("--query", type=int, default=15, help="query images per class")
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--image-size", type=int, default=224, help="pixels the network sees")
    parser.add_argument("--blocks", type=int, default=1, help="top blocks fine-tuned; -1: all")
    parser.add_argument("--quick", action="store_true", help="synthetic blobs, 56 px, 20 episodes")
    args = parser.parse_args()
    if not args.quick and args.data is None:
        parser.error("give --data FOLDER (or --quick)")
    size, query, n = (56, 10, 20) if args.quick else (args.image_size, args.query, args.episodes)
    backbone = mobilenet_v2(size)  # before any work: a missing weights file fails at once
    config = load_config(None, [f"finetune.n_blocks={args.blocks}"])
    results: dict[str, metatl.EvalResult] = {}
    with tempfile.TemporaryDirectory() as tmp:
        blobs = Path(tmp) / "blobs"
        root = write_blob_folder(blobs, {args.split: 10}, 20, 60.0) if args.quick else args.data
        data = metatl.load_dataset("image_folder", root, args.split, image_size=size)
        print(f"{data.name}: {data.num_classes} classes, {len(data)} images, {size}x{size} px")
        for name in ("linear", "finetune"):  # seed 0 for both: the same episodes
            learner = metatl.create_learner(name, backbone, config)
            results[name] = metatl.score(
                learner, data, way=args.way, shot=args.shot, query=query, episodes=n, seed=0
            )
            accuracy = f"{100 * results[name].mean:.2f} ± {100 * results[name].ci95:.2f} %"
            print(f"{name} {args.way}-way {args.shot}-shot: {accuracy}")
    mean, ci = metatl.paired_difference(results["finetune"], results["linear"])
    print(f"finetune - linear, paired over {n} episodes: {100 * mean:+.2f} ± {100 * ci:.2f} points")


if __name__ == "__main__":
    main()
