"""MAML with many inner steps in little memory: the checkpointed inner loop (the same
meta-gradient, recomputed in the backward) and implicit MAML, on your images.

    python examples/maml_memory.py --data my_images  # my_images/{train,test}/<class>/*.png
    python examples/maml_memory.py --quick           # synthetic blobs, under a minute

First one episode: the meta-gradient with ``model.maml.inner_memory=store`` and
``=checkpoint``, and how much each keeps for the backward. Then MAML (checkpointed) and
iMAML meta-train for the same number of episodes and are scored on the same test episodes.
"""

from __future__ import annotations

import argparse
import tempfile
import weakref
from pathlib import Path

import torch

import metatl
from episodes import Episode, EpisodeDataset, EpisodeSpec
from episodes.synthetic import write_blob_folder
from metatl.algorithms import Learner
from metatl.config import load_config
from metatl.training import ImageTransform


class _Kept:
    __slots__ = ("__weakref__", "tensor")

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor


def graph_mib(learner: Learner, episode: Episode) -> tuple[float, torch.Tensor]:
    """MiB of distinct tensors the graph of ``learner.loss`` keeps for the backward, and the
    loss (run ``backward`` on it)."""
    kept: weakref.WeakSet[_Kept] = weakref.WeakSet()

    def pack(t: torch.Tensor) -> _Kept:
        holder = _Kept(t)
        kept.add(holder)
        return holder

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda k: k.tensor):
        loss, _ = learner.loss(episode)
    storages = {k.tensor.untyped_storage().data_ptr(): k.tensor.untyped_storage() for k in kept}
    return sum(s.nbytes() for s in storages.values()) / 2**20, loss


def learner(name: str, overrides: list[str]) -> Learner:
    torch.manual_seed(0)
    backbone = metatl.create_backbone("conv4", in_channels=1, image_size=28)
    return metatl.create_learner(name, backbone, load_config(None, overrides)).train()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, help="an image folder with train/ and test/")
    parser.add_argument("--episodes", type=int, default=500, help="meta-training episodes")
    parser.add_argument("--quick", action="store_true", help="synthetic blobs, 20 episodes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = (
            write_blob_folder(Path(tmp), {"train": 20, "test": 10}, 10, 60.0)
            if args.quick
            else args.data
        )
        train = metatl.load_dataset("image_folder", root, "train", image_size=28)
        test = metatl.load_dataset("image_folder", root, "test", image_size=28)
        transform = ImageTransform(metatl.create_backbone("conv4").input_spec)
        n, n_test = (20, 20) if args.quick else (args.episodes, 200)
        stream = EpisodeDataset.from_spec(train, EpisodeSpec(5, 1, 5), 1, n, transform=transform)

        # 1. One episode, 10 second-order inner steps: store vs checkpoint.
        grads, kept = {}, {}
        for memory in ("store", "checkpoint"):
            maml = learner(
                "maml", ["model.maml.inner_steps=10", f"model.maml.inner_memory={memory}"]
            )
            kept[memory], loss = graph_mib(maml, stream[0])
            loss.backward()
            grads[memory] = [p.grad for p in maml.parameters()]
        diff = max(float((a - b).abs().max()) for a, b in zip(*grads.values(), strict=True))
        print(
            f"10 inner steps: graph kept for the backward {kept['store']:.1f} MiB (store), "
            f"{kept['checkpoint']:.1f} MiB (checkpoint); meta-gradients differ by {diff:.1e}"
        )

        # 2. Meta-train and test: MAML (5 steps, checkpointed) and iMAML (10 proximal steps).
        runs = {
            "maml": ["model.maml.inner_steps=5", "model.maml.inner_memory=checkpoint"],
            "imaml": [
                "model.maml.inner_steps=10",
                "model.maml.test_inner_steps=10",
                "model.maml.inner_lr=0.2",
                "model.imaml.lam=0.5",
            ],
        }
        for name, overrides in runs.items():
            model = learner(name, [*overrides, "model.maml.test_inner_steps=10"])
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
            for episode in stream:
                loss, _ = model.loss(episode)  # iMAML: backward gives the implicit gradient
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            result = metatl.score(model.eval(), test, way=5, shot=1, query=5, episodes=n_test)
            print(
                f"{name}: 5-way 1-shot test accuracy {100 * result.mean:.1f} ± "
                f"{100 * result.ci95:.1f} % over {n_test} episodes"
            )


if __name__ == "__main__":
    main()
