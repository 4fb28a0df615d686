"""Coming from learn2learn: one MAML recipe written with learn2learn, then with metatl.

The recipe of configs/maml_conv4_glyphs_5w1s.yaml (Conv-4, 5-way 1-shot, 15 queries, second
order, 1 inner step at lr 0.4, meta-batch 4, Adam 1e-3, 3 inner steps at test). So that the
comparison is paired, both halves start from the same weights (seed 0), meta-train on the same
episodes (metatl's seeded stream, the one metatl.fit draws), use batch statistics in BatchNorm
and channels-last weights, and are scored on the same test episodes. The learn2learn half runs
only where learn2learn is installed.

    python examples/from_learn2learn.py           # the glyph benchmark, 2,000 steps each
    python examples/from_learn2learn.py --quick   # synthetic blobs, a few steps
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

import metatl
from episodes import EpisodeDataset, EpisodeSpec
from episodes.synthetic import write_blob_folder
from metatl.algorithms import Learner
from metatl.tracking import read_jsonl
from metatl.training import ImageTransform

try:
    import learn2learn as l2l
except ImportError:
    l2l = None

REPO = Path(__file__).parents[1]
WAY, SHOT, QUERY, META_BATCH, TEST_SEED = 5, 1, 15, 4, 3


class L2LLearner(Learner):
    """A learn2learn MAML behind metatl's learner contract, so that metatl scores it."""

    needs_grad_to_adapt = True

    def __init__(self, maml: nn.Module, backbone: nn.Module, test_steps: int = 3) -> None:
        super().__init__(backbone)
        self.maml, self.test_steps = maml, test_steps

    def adapt(self, support_x, support_y, n_way):
        learner = self.maml.clone()
        for _ in range(self.test_steps):
            learner.adapt(F.cross_entropy(learner(support_x), support_y), first_order=True)
        return learner

    def predict(self, query_x, learner):
        return learner(query_x)


def train_learn2learn(train, steps: int) -> tuple[L2LLearner, list[float]]:
    torch.manual_seed(0)  # as metatl.fit seeds before it builds: the same initial weights
    backbone = metatl.create_backbone("conv4", in_channels=1, image_size=28)
    model = nn.Sequential(backbone, nn.Linear(backbone.out_dim, WAY))
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.track_running_stats = False  # batch statistics always, as metatl's default
        bn.running_mean = bn.running_var = bn.num_batches_tracked = None
    maml = l2l.algorithms.MAML(model.to(memory_format=torch.channels_last), lr=0.4)
    optimizer = torch.optim.Adam(maml.parameters(), lr=1e-3)
    transform = ImageTransform(backbone.input_spec)
    spec = EpisodeSpec(WAY, SHOT, QUERY)
    stream = iter(EpisodeDataset.from_spec(train, spec, 0, steps * META_BATCH, transform))
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        optimizer.zero_grad()
        for _ in range(META_BATCH):
            episode = next(stream)
            learner = maml.clone()  # second order: adapt() keeps the graph
            learner.adapt(F.cross_entropy(learner(episode.support_x), episode.support_y))
            loss = F.cross_entropy(learner(episode.query_x), episode.query_y)
            (loss / META_BATCH).backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return L2LLearner(maml, backbone), times


def train_metatl(dataset: str, root: Path, steps: int, episodes: int, out: Path):
    run = metatl.fit(
        REPO / "configs" / "maml_conv4_glyphs_5w1s.yaml",
        [
            *(f"data.dataset={dataset}", f"data.root={root}", f"train.steps={steps}"),
            "train.log_every=1",  # every step's time in metrics.jsonl
            f"train.val_every={steps}",  # validated once, at the end: the final weights
            f"train.val_episodes={min(200, episodes)}",
            *("test.shots=[1]", f"test.episodes={episodes}", f"test.seed={TEST_SEED}"),
            *("test.pixel_baseline=false", "device=cpu", f"out_dir={out}"),
            "tracking.wandb.mode=disabled",
        ],
    )
    records = read_jsonl(run.run_dir / "metrics.jsonl")
    times = [r["train/step_time_s"] for r in records if "train/step_time_s" in r]
    return run.test[f"{WAY}-way {SHOT}-shot"]["maml"], times


def report(name: str, result: metatl.EvalResult, times: list[float]) -> None:
    accuracy = f"{100 * result.mean:.2f} ± {100 * result.ci95:.2f} %"
    print(f"{name}: {WAY}-way {SHOT}-shot test accuracy {accuracy} over {len(result.accuracies)}")
    print(f"{name}: median step {1000 * statistics.median(times):.1f} ms over {len(times)} steps")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=REPO / "data" / "glyphs")
    parser.add_argument("--steps", type=int, default=2000, help="meta-training steps")
    parser.add_argument("--episodes", type=int, default=600, help="test episodes")
    parser.add_argument("--quick", action="store_true", help="synthetic blobs, 20 steps")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        splits = {"train": 20, "val": 5, "test": 10}
        root = write_blob_folder(Path(tmp) / "data", splits, 20) if args.quick else args.data
        dataset = "glyphs" if (root / "manifest.json").is_file() else "image_folder"
        steps, episodes = (20, 50) if args.quick else (args.steps, args.episodes)
        ours, times = train_metatl(dataset, root, steps, episodes, Path(tmp) / "runs")
        report("metatl", ours, times)
        if l2l is None:
            print("learn2learn not installed: skipping its half")
            return
        train = metatl.load_dataset(dataset, root, "train", image_size=28)
        test = metatl.load_dataset(dataset, root, "test", image_size=28)
        learner, times = train_learn2learn(train, steps)
        # fit tests each shot on the episodes of seed test.seed + shot: score the same ones
        seed = TEST_SEED + SHOT
        theirs = metatl.score(learner, test, shot=SHOT, query=QUERY, episodes=episodes, seed=seed)
        report("learn2learn", theirs, times)
        mean, ci95 = metatl.paired_difference(theirs, ours)  # refuses different episodes
        print(f"learn2learn - metatl (paired): {100 * mean:+.2f} ± {100 * ci95:.2f} points")


if __name__ == "__main__":
    main()
