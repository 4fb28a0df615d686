"""The real target domain: scikit-learn's bundled handwritten digits, at the source's size.

``sklearn.datasets.load_digits`` ships 1,797 handwritten digits (UCI optdigits' test set, 8x8
blocks counting 0-16 ink pixels of 4x4 each). Here they become 8-bit grey images like the
source's: ink ``v * 255 / 16``, bilinearly upsampled x3 to 24x24 (the digits fill the 8 rows of
their block, so they span 24 pixels as a clean source digit does), a 2-pixel blank border to
28x28, and dark ink on white.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812

from episodes.data import LabelledImages

__all__ = ["TARGET_SIZE", "load_sklearn_digits", "sklearn_digits_source"]

TARGET_SIZE = 28
_UPSAMPLE = 3  # 8 -> 24, then a blank border to TARGET_SIZE


def load_sklearn_digits() -> LabelledImages:
    """scikit-learn's 1,797 handwritten digits as 28x28 dark-on-white uint8 images.

    Returns:
        ``LabelledImages`` with images ``[1797, 1, 28, 28]`` (uint8, ink dark on 255 white),
        labels ``[1797]`` (the digit), class names ``"0" .. "9"``, in scikit-learn's order,
        named ``"sklearn-digits"``.

    Raises:
        ModuleNotFoundError: scikit-learn is not installed (it is in metatl's ``dev`` extra).
    """
    try:
        from sklearn.datasets import load_digits
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(
            "the digits benchmark's target domain is scikit-learn's bundled digits: "
            "`pip install scikit-learn` (or metatl's dev extra)"
        ) from error
    bunch = load_digits()
    blocks = torch.from_numpy(bunch.images).to(torch.float64)  # [N, 8, 8], 0..16
    ink = F.interpolate(
        (blocks * (255.0 / 16.0)).unsqueeze(1),
        scale_factor=_UPSAMPLE,
        mode="bilinear",
        align_corners=False,
    )
    border = (TARGET_SIZE - ink.shape[-1]) // 2
    ink = F.pad(ink, (border, border, border, border))
    images = 255 - ink.round().clamp(0, 255).to(torch.uint8)
    return LabelledImages(
        images=images,
        labels=torch.from_numpy(bunch.target).to(torch.int64),
        class_names=tuple(str(d) for d in range(10)),
        name="sklearn-digits",
    )


def sklearn_digits_source() -> dict[str, Any]:
    """Where the target images come from, for the manifest: the scikit-learn version, the
    bundled data file and its SHA-256, and how the images were made."""
    import sklearn
    import sklearn.datasets

    path = Path(sklearn.datasets.__file__).parent / "data" / "digits.csv.gz"
    digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
    return {
        "loader": "sklearn.datasets.load_digits",
        "scikit_learn": sklearn.__version__,
        "data_file": "sklearn/datasets/data/digits.csv.gz",
        "sha256": digest,
        "conversion": (
            "ink = v * 255 / 16 (v in 0..16); bilinear x3 upsampling (align_corners=False, "
            "float64) to 24x24; 2-pixel blank border to 28x28; image = 255 - round(ink)"
        ),
    }
