"""Which blocks of a network are general, which specific? The layer-transfer study of
Yosinski et al. (2014) on your own labelled images, from Python.

Tasks A and B are two halves of the classes: a random half (similar tasks) and a split by a
grouping you give (dissimilar tasks). For each n, a network for B starts from the first n
blocks of a network trained on B (BnB) or on A (AnB), frozen or fine-tuned (+), or from
random frozen blocks; its accuracy on held-out images of B against n is the paper's Figure 2.

    python examples/layer_transfer_study.py --quick       # synthetic blobs vs stripes, ~1 min
    python examples/layer_transfer_study.py               # the glyph benchmark, 3 seeds, < 1 h
    python -m metatl.transfer layers --config configs/layers_conv4_glyphs.yaml   # the same
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from PIL import Image

from metatl.config import load_config
from metatl.reports.layer_findings import findings
from metatl.reports.layers import write_study_report
from metatl.transfer import run_layer_study

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "layers_conv4_glyphs.yaml"


def synthetic_folder(root: Path, classes: int = 40, per_class: int = 15) -> Path:
    """An image folder of ``classes`` classes: the first half soft blobs, the second half
    stripes; ``root/groups.csv`` says which is which (the dissimilar split)."""
    gen = torch.Generator().manual_seed(0)
    rows = ["class,group"]
    for c in range(classes):
        group = "blobs" if c < classes // 2 else "stripes"
        if group == "blobs":
            coarse = torch.rand(1, 1, 5, 5, generator=gen)
        else:
            coarse = (torch.rand(1, 1, 1, 7, generator=gen) > 0.5).float().expand(1, 1, 7, 7)
        pattern = torch.nn.functional.interpolate(coarse, size=(28, 28), mode="bilinear")[0, 0]
        folder = root / "train" / f"{group}{c:02d}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            shift = tuple(torch.randint(-2, 3, (2,), generator=gen).tolist())
            image = torch.roll(pattern, shift, dims=(0, 1))
            noisy = (image * 255 + 40 * torch.randn(28, 28, generator=gen)).clamp(0, 255)
            Image.fromarray(noisy.to(torch.uint8).numpy(), mode="L").save(folder / f"{i}.png")
        rows.append(f"{group}{c:02d},{group}")
    (root / "groups.csv").write_text("\n".join(rows) + "\n")
    return root


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="synthetic data, one seed")
    parser.add_argument("--out-dir", default="runs", help="where the study directory goes")
    args = parser.parse_args(argv)
    overrides = [f"out_dir={args.out_dir}"]
    with tempfile.TemporaryDirectory() as tmp:
        if args.quick:
            data = synthetic_folder(Path(tmp))
            overrides += [
                "data.dataset=image_folder",
                f"data.root={data}",
                "layers.pool=[train]",
                "layers.splits=[random,groups]",
                f"layers.groups_file={data / 'groups.csv'}",
                "layers.a_groups=[blobs]",
                "layers.seeds=[0]",
                "pretrain.epochs=4",
                "pretrain.batch_size=32",
                "precision=fp32",
                "tracking.wandb.mode=disabled",
            ]
        config = load_config(CONFIG, overrides)
        result = run_layer_study(config, report=write_study_report)

    print(f"\nstudy: {result.study_dir} ({len(result.records)} runs)")
    for record in result.records:
        if record["n"] in (0, max(r["n"] for r in result.records)):
            print(f"  {record['run']:<28} {100 * record['accuracy']:5.1f}%")
    print("\nthe paper's findings, on this data:")
    for finding in findings(result.records, result.meta):
        print(f"  {finding.verdict:<12} {finding.claim}")
    print(f"\nfigures and tables: {result.study_dir / 'report.md'}")


if __name__ == "__main__":
    main()
