"""MAML on your images, one piece at a time: episodes, the outer loop, then test episodes
adapted step by step — and the same with ANIL (head only) and top:1 (last block and head).

    python examples/maml_step_by_step.py --data my_images  # my_images/{train,test}/<class>/*.png
    python examples/maml_step_by_step.py --quick           # synthetic blobs, ~20 s

With 0 steps the fresh zero head says nothing (accuracy 1/way); the learner is best at the
number of inner steps it was meta-trained with (1 here) and can overshoot beyond it.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path

import torch

import metatl
from episodes import EpisodeDataset, EpisodeSpec
from episodes.synthetic import write_blob_folder
from metatl.config import load_config
from metatl.training import ImageTransform


def episodes(
    data_root: Path, split: str, n: int, seed: int, transform: ImageTransform
) -> EpisodeDataset:
    data = metatl.load_dataset("image_folder", data_root, split, image_size=28)
    return EpisodeDataset.from_spec(data, EpisodeSpec(5, 1, 5), seed, n, transform=transform)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, help="an image folder with train/ and test/")
    parser.add_argument("--steps", type=int, default=300, help="meta-training steps")
    parser.add_argument("--quick", action="store_true", help="synthetic blobs, 40 steps")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = (
            write_blob_folder(Path(tmp), {"train": 20, "test": 10}, 10, 60.0)
            if args.quick
            else args.data
        )
        steps = 40 if args.quick else args.steps
        torch.manual_seed(0)
        config = load_config(None, ["model.maml.inner_steps=1", "model.maml.inner_lr=0.4"])
        for name, adapt in (("maml", "all"), ("anil", "head"), ("maml", "top:1")):
            maml_config = dataclasses.replace(config.model.maml, adapt=adapt)
            run = dataclasses.replace(
                config, model=dataclasses.replace(config.model, maml=maml_config)
            )
            backbone = metatl.create_backbone("conv4", in_channels=1, image_size=28)
            learner = metatl.create_learner(name, backbone, run)
            transform = ImageTransform(backbone.input_spec)
            optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
            learner.train()
            for episode in episodes(root, "train", steps, seed=1, transform=transform):
                loss, _ = learner.loss(episode)  # inner steps on the support set, inside
                optimizer.zero_grad()
                loss.backward()  # through the inner steps (second order for maml)
                optimizer.step()
            learner.eval()
            accuracies = torch.zeros(6)
            tests = episodes(root, "test", 20, seed=2, transform=transform)
            for test in tests:
                for inner_steps in range(6):  # each test episode adapted 0..5 steps
                    learner.test_inner_steps = inner_steps
                    state = learner.adapt(test.support_x, test.support_y, test.n_way)
                    predicted = learner.predict(test.query_x, state).argmax(1)
                    accuracies[inner_steps] += (predicted == test.query_y).float().mean()
            text = " ".join(f"{100 * a / len(tests):.0f}%" for a in accuracies)
            print(f"{name} adapt={adapt}: query accuracy after 0..5 inner steps: {text}")


if __name__ == "__main__":
    main()
