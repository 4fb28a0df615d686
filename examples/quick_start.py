"""From a folder of images to a meta-trained learner's test accuracy ± 95% CI, in Python.

    python examples/quick_start.py --data my_images                    # ProtoNet, 300 steps
    python examples/quick_start.py --data my_images --algorithm maml   # or anil, metasgd, ...
    python examples/quick_start.py --quick                             # synthetic blobs, ~20 s

``my_images`` holds ``train/<class>/*.png``, ``val/<class>/*.png`` and ``test/<class>/*.png``,
different classes in each: the learner must adapt to test classes it never saw.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import metatl
from episodes.synthetic import write_blob_folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, help="image folder with train/, val/, test/")
    parser.add_argument("--algorithm", default="protonet", choices=metatl.list_learners())
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = (
            write_blob_folder(Path(tmp) / "data", {"train": 24, "val": 8, "test": 8}, 20, 150.0)
            if args.quick
            else args.data
        )
        steps = 60 if args.quick else args.steps
        run = metatl.fit(
            [
                "data.dataset=image_folder",
                f"data.root={data}",
                f"model.algorithm={args.algorithm}",
                "episodes.way=5",
                "episodes.shot=1",
                f"train.steps={steps}",
                f"train.val_every={steps}",
                "train.val_episodes=50",
                "train.val_query=10",
                "test.episodes=50",
                "test.query=10",
                f"out_dir={Path(tmp) / 'runs'}",
                "tracking.wandb.mode=disabled",
            ]
        )
        learner = metatl.load_learner(run.run_dir).learner  # the best checkpoint
        test = metatl.load_dataset("image_folder", data, "test", image_size=28)
        for shot in (1, 5):
            result = metatl.score(learner, test, shot=shot, query=10, episodes=100, seed=1)
            accuracy = f"{100 * result.mean:.1f} ± {100 * result.ci95:.1f} %"
            print(f"{args.algorithm} 5-way {shot}-shot: {accuracy}")


if __name__ == "__main__":
    main()
