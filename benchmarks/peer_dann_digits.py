"""metatl's DANN next to pytorch-adapt's on the digits benchmark (fonts -> handwritten).

metatl's side is ``python -m metatl.adapt --config configs/adapt_conv4_digits.yaml
adapt.method=dann`` (run in-process). pytorch-adapt's ``DANNHook`` (its defaults: separate
backbone passes per domain, a constant reversal weight of 1) trains the same Conv-4 from the
same initial weights, with the same linear classifier and 1024-1024 domain classifier, on the
same source and target batches (drawn by metatl's :class:`~metatl.adaptation.Adapter`: same
order, same crops), with the same SGD (momentum, weight decay, cosine rate) for the same
number of steps; each keeps the epoch with the best source validation accuracy and is scored
on the same 898 handwritten test digits.

pytorch-adapt pins ``torchmetrics==0.9.3``, which needs ``pkg_resources``; it is installed
next to, not into, the project's environment::

    bash benchmarks/install_pytorch_adapt.sh            # -> .peers/pytorch-adapt
    python benchmarks/peer_dann_digits.py --epochs 6    # data/digits from make digits

Prints a table (target accuracy ± 95% CI over images, paired difference, wall time of the
training, median step time) and writes it as JSON (``--out``).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
PEER_SITE = REPO / ".peers" / "pytorch-adapt"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default=str(REPO / "data" / "digits"))
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--out", default="", help="write the results as JSON here")
    args = parser.parse_args(argv)
    if str(PEER_SITE) not in sys.path:
        sys.path.append(str(PEER_SITE))
    try:
        from pytorch_adapt.hooks import DANNHook
    except ImportError as err:
        print(f"pytorch-adapt is not importable ({err}): bash benchmarks/install_pytorch_adapt.sh")
        return 2

    from episodes import UnlabelledImages
    from metatl.adaptation import Adapter, AdaptModel, build_method, run_adaptation
    from metatl.adaptation.validators import correct_predictions, predict_logits
    from metatl.config import load_config
    from metatl.training.builders import build_backbone
    from metatl.training.data import load_split
    from metatl.training.evaluation import EvalResult, format_paired_table, format_table
    from metatl.training.pretrain import cosine_lr

    with tempfile.TemporaryDirectory() as tmp:
        overrides = [
            f"data.root={args.data_root}",
            "adapt.method=dann",
            "adapt.test_time=[]",
            f"pretrain.epochs={args.epochs}",
            f"out_dir={tmp}",
            "tracking.wandb.mode=disabled",
        ]
        config = load_config(str(REPO / "configs" / "adapt_conv4_digits.yaml"), overrides)
        ours = run_adaptation(config)
        results = json.loads((ours.run_dir / "results.json").read_text())
        metatl_result = ours.test["target test images"]["dann"]
        metatl_wall = results["train_time_s"]

        data = config.data
        source, val, test = (
            load_split(data, s) for s in ("source_train", "source_val", "target_test")
        )
        target = UnlabelledImages.from_labelled(load_split(data, "target_train"))
        torch.manual_seed(config.seed)  # as run_adaptation: the same initial weights
        backbone = build_backbone(config, 1, 28)
        model = AdaptModel(
            backbone, source.num_classes, build_method(config.adapt).make_heads(backbone.out_dim)
        )
        adapter = Adapter(model, config, source, val, target, Path(tmp), _NullTracker())
        hook = DANNHook(opts=[adapter.optimizer])
        best, start, times = (-1.0, None), time.perf_counter(), []
        for step in range(1, adapter.total_steps + 1):
            for group in adapter.optimizer.param_groups:
                group["lr"] = cosine_lr(step - 1, adapter.total_steps, config.pretrain.lr)
            xs, items = adapter.batch(*divmod(step - 1, adapter.batches_per_epoch))
            xt = adapter.target_batch(step)
            model.train()
            t0 = time.perf_counter()
            hook(
                {
                    "G": model.backbone,
                    "C": model.classifier,
                    "D": model.domain_classifier,
                    "src_imgs": xs,
                    "src_labels": source.labels[items],
                    "target_imgs": xt,
                    "src_domain": torch.zeros(len(xs)),
                    "target_domain": torch.ones(len(xt)),
                }
            )
            times.append(time.perf_counter() - t0)
            adapter.loop.step = step
            if step % adapter.batches_per_epoch == 0:
                accuracy = adapter.validate().mean
                if accuracy > best[0]:
                    best = (accuracy, copy.deepcopy(model.state_dict()))
        peer_wall = time.perf_counter() - start
        model.load_state_dict(best[1])
        logits = predict_logits(model.classify(), test.images, adapter.transform)
        correct = correct_predictions(logits, test.labels).tolist()
        peer_result = EvalResult.from_accuracies(correct, f"{test.name} images")

    rows = {"target test images": {"metatl": metatl_result, "pytorch-adapt": peer_result}}
    print(f"\n{adapter.total_steps} steps, {args.epochs} epochs; target accuracy ± 95% CI:\n")
    print(format_table(rows))
    print(format_paired_table(rows, reference="pytorch-adapt"))
    print(
        f"\ntraining wall time: metatl {metatl_wall:.0f} s, pytorch-adapt {peer_wall:.0f} s "
        f"(its median step {1e3 * statistics.median(times):.1f} ms)"
    )
    if args.out:
        payload = {
            "metatl": {
                "target_accuracy": metatl_result.mean,
                "ci95": metatl_result.ci95,
                "train_wall_s": metatl_wall,
            },
            "pytorch-adapt": {
                "target_accuracy": peer_result.mean,
                "ci95": peer_result.ci95,
                "train_wall_s": peer_wall,
                "median_step_ms": 1e3 * statistics.median(times),
            },
            "steps": adapter.total_steps,
            "epochs": args.epochs,
        }
        Path(args.out).write_text(json.dumps(payload, indent=2) + "\n")
    return 0


class _NullTracker:
    """Drops every metric (the peer's run keeps none)."""

    def log(self, metrics, step):
        pass

    def log_config(self, config):
        pass

    def log_artifact(self, path, name=None):
        pass

    def log_image(self, *args, **kwargs):
        pass

    def log_summary(self, values):
        pass

    def close(self):
        pass


if __name__ == "__main__":
    sys.exit(main())
