"""Meta-training on several processes with torchrun, from Python: the one-process run, split.

    torchrun --standalone --nproc-per-node 2 examples/distributed_training.py --data my_images
    python examples/distributed_training.py --data my_images        # the same run, one process
    torchrun --standalone --nproc-per-node 2 examples/distributed_training.py --quick  # ~30 s

Every process runs this script and calls :func:`metatl.fit` with the same settings. Each
rank runs its block of every meta-batch (here 4 MAML episodes a step, 2 per rank), the
gradients are summed over the ranks, and rank 0 alone writes the run directory and prints.
With ``train.gradient_sum=episode_order`` the ranks' episode gradients are added in episode
order, so the weights are one process's bit for bit: the printed weight digest is the same
on 1 and on 2 processes (the default, ``all_reduce``, is equal to round-off and moves less
data). On a CPU use ``OMP_NUM_THREADS=1`` per process: the processes share the cores.

``my_images`` holds ``train/<class>/*.png``, ``val/<class>/*.png`` and ``test/<class>/*.png``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
from pathlib import Path

import torch

import metatl
from episodes.synthetic import write_blob_folder


def weight_digest(run_dir: Path) -> str:
    """The SHA-256 of every tensor of the run's best checkpoint, in name order."""
    state = torch.load(run_dir / "best.pt", map_location="cpu", weights_only=True)["model"]
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, help="image folder with train/, val/, test/")
    parser.add_argument("--out", type=Path, default=Path("runs"), help="runs go here")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--quick", action="store_true", help="synthetic blobs, 20 steps")
    args = parser.parse_args()
    rank = int(os.environ.get("RANK", "0"))  # set by torchrun; this script does no collectives
    with tempfile.TemporaryDirectory() as tmp:
        # Each process writes the same synthetic set (seeded) into its own directory.
        data = (
            write_blob_folder(Path(tmp) / "data", {"train": 24, "val": 8, "test": 8}, 20, 150.0)
            if args.quick
            else args.data
        )
        steps = 20 if args.quick else args.steps
        run = metatl.fit(
            [
                "data.dataset=image_folder",
                f"data.root={data}",
                "model.algorithm=maml",
                "episodes.way=5",
                "episodes.shot=1",
                "episodes.query=5",
                "train.meta_batch=4",
                "train.gradient_sum=episode_order",
                f"train.steps={steps}",
                f"train.val_every={steps // 2}",
                "train.val_episodes=20",
                "test.episodes=40",
                "test.shots=[1]",
                "precision=fp32",
                f"out_dir={args.out if not args.quick else Path(tmp) / 'runs'}",
                "tracking.wandb.mode=disabled",
            ]
        )
        if rank == 0:  # the other ranks' results are the same numbers; rank 0 reports
            processes = int(os.environ.get("WORLD_SIZE", "1"))
            print(f"processes: {processes}")
            for method, result in run.test["5-way 1-shot"].items():
                accuracy = f"{100 * result.mean:.2f} ± {100 * result.ci95:.2f} %"
                print(f"test 5-way 1-shot, {method}: {accuracy}")
            print(f"weights: {weight_digest(run.run_dir)}")


if __name__ == "__main__":
    main()
