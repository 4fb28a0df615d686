"""Seeded image corruptions at five severities, in the manner of ImageNet-C (Hendrycks &
Dietterich, 2019), for test-time adaptation.

``corrupt(images, kind, severity, seed)`` takes and returns uint8 ``[N, C, H, W]`` tensors; the
arithmetic is float64 torch on the CPU, so the output is the same on every run. Severity 0 is
the identity, 1-5 grow in strength (the mean absolute difference from the clean images grows
with severity). Sizes in pixels are given for 28x28 images and scale with the image side, so a
corruption at 84x84 looks like the same corruption at 28x28 upsampled.

==================  ==========================================================================
kind                severity 1 .. 5
==================  ==========================================================================
``gaussian_noise``  additive N(0, s^2) noise, s = 0.08, 0.12, 0.18, 0.26, 0.38 of the 0-255
                    range (ImageNet-C's values), clipped
``gaussian_blur``   Gaussian blur, sigma = 0.5, 0.75, 1.0, 1.5, 2.0 pixels (at 28 px); the
                    edge is replicated
``elastic``         each pixel moves along a smooth random field (uniform noise blurred with
                    sigma = 3 px, scaled to a root-mean-square displacement of 0.5, 1.0, 1.5,
                    2.0, 2.5 px at 28 px), bilinear, edge replicated (Simard et al., 2003)
``contrast``        each image and channel pulled to its mean: ``(x - mean) * c + mean``,
                    c = 0.4, 0.3, 0.2, 0.1, 0.05 (ImageNet-C's values)
==================  ==========================================================================

The random draws of image ``i`` depend on ``seed``, ``kind`` and ``i`` only (not on the other
images or on the severity): severities of one seed apply the same noise or field at growing
strength, and a batch corrupted in pieces equals the batch corrupted at once when each piece
passes its ``first_index``.
"""

from __future__ import annotations

import hashlib
import math
import re

import torch
import torch.nn.functional as F  # noqa: N812

from episodes.data import LabelledImages

__all__ = [
    "CORRUPTIONS",
    "SEVERITIES",
    "corrupt",
    "corrupted",
    "corruption_split",
    "parse_corruption_split",
]

CORRUPTIONS = ("gaussian_noise", "gaussian_blur", "elastic", "contrast")
SEVERITIES = (1, 2, 3, 4, 5)

_REFERENCE_SIDE = 28
_NOISE_STD = (0.08, 0.12, 0.18, 0.26, 0.38)
_BLUR_SIGMA = (0.5, 0.75, 1.0, 1.5, 2.0)
_ELASTIC_RMS = (0.5, 1.0, 1.5, 2.0, 2.5)
_ELASTIC_SMOOTHING = 3.0
_CONTRAST = (0.4, 0.3, 0.2, 0.1, 0.05)
_SPLIT = re.compile(r"^(?P<split>.+)-(?P<kind>[a-z_]+)-(?P<severity>[0-5])$")


def corrupt(
    images: torch.Tensor, kind: str, severity: int, seed: int = 0, *, first_index: int = 0
) -> torch.Tensor:
    """Corrupt a batch of images.

    Args:
        images: uint8 ``[N, C, H, W]``.
        kind: One of :data:`CORRUPTIONS`.
        severity: 0 (identity: an equal copy) to 5.
        seed: Seed of the random draws (noise, displacement fields).
        first_index: Index of ``images[0]`` in the whole collection (the draws of an image
            depend on its index), for corrupting a collection in pieces.

    Returns:
        uint8 ``[N, C, H, W]``, a new tensor.

    Raises:
        ValueError: Unknown ``kind``, ``severity`` outside 0-5, or not a uint8 4-d tensor.
    """
    if kind not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {kind!r}; corruptions: {', '.join(CORRUPTIONS)}")
    if isinstance(severity, bool) or severity not in (0, *SEVERITIES):
        raise ValueError(f"severity must be an int in 0..5, got {severity!r}")
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(
            f"images must be a uint8 tensor [N, C, H, W], got {images.dtype} "
            f"of shape {tuple(images.shape)}"
        )
    if severity == 0 or images.shape[0] == 0:
        return images.clone()
    x = images.to(torch.float64)
    side = min(images.shape[-2:]) / _REFERENCE_SIDE
    level = severity - 1
    if kind == "gaussian_noise":
        out = x + _NOISE_STD[level] * 255.0 * _per_image(images.shape, seed, kind, first_index)
    elif kind == "gaussian_blur":
        out = _blur(x, _BLUR_SIGMA[level] * side)
    elif kind == "elastic":
        out = _elastic(x, _ELASTIC_RMS[level] * side, _ELASTIC_SMOOTHING * side, seed, first_index)
    else:
        mean = x.mean(dim=(-2, -1), keepdim=True)
        out = (x - mean) * _CONTRAST[level] + mean
    return out.round().clamp(0, 255).to(torch.uint8)


def corrupted(data: LabelledImages, kind: str, severity: int, seed: int = 0) -> LabelledImages:
    """``data`` with every image corrupted (:func:`corrupt`); labels and classes unchanged.

    Returns:
        ``LabelledImages`` named ``"<data.name>-<kind>-<severity>"`` (``data`` itself named
        as it is for severity 0 is not returned: the images are always a new tensor).
    """
    images = corrupt(data.images, kind, severity, seed)
    return LabelledImages(images, data.labels, data.class_names, f"{data.name}-{kind}-{severity}")


def corruption_split(split: str, kind: str, severity: int) -> str:
    """The split name ``"<split>-<kind>-<severity>"`` (e.g. ``"test-gaussian_noise-3"``) that
    the ``glyphs_c`` dataset reads (see :func:`parse_corruption_split`)."""
    name = f"{split}-{kind}-{severity}"
    parse_corruption_split(name)
    return name


def parse_corruption_split(name: str) -> tuple[str, str | None, int]:
    """``(split, kind, severity)`` of a corrupted split name; a plain split name is
    ``(name, None, 0)``.

    Raises:
        ValueError: The name ends like ``-<kind>-<severity>`` with an unknown kind.
    """
    match = _SPLIT.match(name)
    if match is None:
        return name, None, 0
    if match["kind"] not in CORRUPTIONS:
        raise ValueError(
            f"{name!r}: unknown corruption {match['kind']!r}; corruptions: {', '.join(CORRUPTIONS)}"
        )
    return match["split"], match["kind"], int(match["severity"])


def _generator(seed: int, kind: str, index: int) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}\0{kind}\0{index}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def _per_image(
    shape: torch.Size | tuple[int, ...],
    seed: int,
    kind: str,
    first_index: int,
    uniform: bool = False,
) -> torch.Tensor:
    """Standard normal (or uniform in [-1, 1]) draws of ``shape``, image by image."""
    out = torch.empty(shape, dtype=torch.float64)
    for i in range(shape[0]):
        generator = _generator(seed, kind, first_index + i)
        if uniform:
            out[i] = torch.rand(shape[1:], generator=generator, dtype=torch.float64) * 2 - 1
        else:
            out[i] = torch.randn(shape[1:], generator=generator, dtype=torch.float64)
    return out


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``[N, C, H, W]`` float64, edges replicated."""
    n, c, h, w = x.shape
    radius = max(1, min(math.ceil(3 * sigma), h - 1, w - 1))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    flat = x.reshape(n * c, 1, h, w)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))
    return flat.reshape(n, c, h, w)


def _elastic(
    x: torch.Tensor, rms: float, smoothing: float, seed: int, first_index: int
) -> torch.Tensor:
    """Move every pixel along a smooth random field of root-mean-square length ``rms`` px."""
    n, _, h, w = x.shape
    field = _blur(_per_image((n, 2, h, w), seed, "elastic", first_index, uniform=True), smoothing)
    norm = field.pow(2).sum(dim=1).mean(dim=(-2, -1)).sqrt().clamp_min(1e-12)
    field = field * (rms / norm).view(n, 1, 1, 1)  # [N, 2, H, W]: (dx, dy) in pixels
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij"
    )
    # grid_sample wants (x, y) in [-1, 1] at pixel centres (align_corners=False).
    gx = (xs + field[:, 0] + 0.5) * (2.0 / w) - 1.0
    gy = (ys + field[:, 1] + 0.5) * (2.0 / h) - 1.0
    grid = torch.stack((gx, gy), dim=-1)  # [N, H, W, 2]
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
