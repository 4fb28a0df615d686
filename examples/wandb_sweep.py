"""A W&B sweep over dotted config keys: the spec, W&B's agent online, the same search offline.

    python examples/wandb_sweep.py --quick    # synthetic blobs, 3 tiny trials, ~40 s
    python examples/wandb_sweep.py            # ProtoNet on the glyphs (make glyphs), 4 trials

The spec written to ``<out-dir>/protonet_lr_shot.yaml`` is what ``wandb sweep`` takes: a grid
over config keys (``optim.lr``, ``episodes.shot``) and the command that runs a trial. Online,
with a W&B account (``wandb login``), from the repository root::

    wandb sweep runs/sweeps/protonet_lr_shot.yaml     # prints ENTITY/PROJECT/SWEEP_ID
    wandb agent ENTITY/PROJECT/SWEEP_ID               # on each machine, as many as you like

The agent runs the spec's ``command`` per trial, ``${args}`` becoming ``--key=value``:
``/usr/bin/env python -m metatl.train --config PRESET --optim.lr=0.003 --episodes.shot=5 ...``.
Offline, W&B's own search engine (``pip install -e '.[sweep]'``) suggests the same trials and
runs each such command here, one at a time; this script does it from Python, as does::

    python -m metatl.sweep runs/sweeps/protonet_lr_shot.yaml tracking.wandb.mode=offline
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path
from typing import Any

import yaml

from episodes.synthetic import write_blob_folder
from metatl import sweeping

PRESET = Path(__file__).resolve().parents[1] / "configs" / "protonet_conv4_glyphs.yaml"
QUICK = """\
data: {{dataset: image_folder, root: {root}, image_size: 28}}
episodes: {{way: 5, shot: 1, query: 5}}
train: {{val_episodes: 20, val_query: 5, log_every: 10}}
test: {{shots: [1], query: 5, episodes: 20}}
"""


def sweep_spec(preset: Path, fixed: dict[str, int]) -> dict[str, Any]:
    """A grid over learning rate and training shot, ``fixed`` values, the metric to rank by."""
    command = ["${env}", "${interpreter}", "-m", "metatl.train", "--config", str(preset)]
    return {
        "name": "protonet-lr-shot",
        "project": "metatl",
        "method": "grid",
        "metric": {"name": "val/best_accuracy", "goal": "maximize"},
        "parameters": {
            "optim.lr": {"values": [0.003, 0.0003]},
            "episodes.shot": {"values": [1, 5]},
            **{key: {"value": value} for key, value in fixed.items()},
        },
        "command": [*command, "${args}"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="synthetic blobs, 3 tiny trials")
    parser.add_argument("--count", type=int, help="trials to run (default: the whole grid)")
    parser.add_argument("--out-dir", type=Path, default=Path("runs/sweeps"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # a line per trial
    args.out_dir.mkdir(parents=True, exist_ok=True)
    fixed = {"train.steps": 300, "train.val_every": 100, "train.val_episodes": 100}
    fixed["test.episodes"] = 200  # a short trial: 300 steps, 2 min on a 2-core CPU
    with tempfile.TemporaryDirectory() as tmp:
        preset = Path(tmp) / "quick.yaml" if args.quick else PRESET
        if args.quick:  # blob data, 20 steps, 20 validation and test episodes
            splits = {"train": 20, "val": 5, "test": 5}
            preset.write_text(QUICK.format(root=write_blob_folder(Path(tmp), splits, 12, 150.0)))
            fixed, args.count = {"train.steps": 20, "train.val_every": 20}, args.count or 3
        path = args.out_dir / "protonet_lr_shot.yaml"
        path.write_text(yaml.safe_dump(sweep_spec(preset, fixed), sort_keys=False))
        print(f"the spec, for `wandb sweep {path}`:\n\n{path.read_text()}")
        spec = sweeping.load_spec(path)  # checked against W&B's schema and metatl's config
        mode = "disabled" if args.quick else "offline"  # never the network; `wandb sync` later
        overrides = spec.check_overrides([f"tracking.wandb.mode={mode}"])
        state = sweeping.SweepState.create(spec, args.out_dir, overrides=overrides)
        sweeping.SweepController(state, spec, poll=0.5).run(args.count)
        sweeping.write_results(state, spec)  # results.json: ranked trials, their parameters
        print(f"sweep {state.dir}: {state.ended}\n\n{sweeping.ranking_table(state, spec)}")
        print(f"\nreport: {sweeping.write_report(state, spec)}")


if __name__ == "__main__":
    main()
