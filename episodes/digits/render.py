"""Render one font's ten digits, clean and with light seeded augmentation.

A digit is drawn large (its ink box >= :data:`RENDER_SCALE` times the output resolution),
then mapped by one affine transform onto a canvas ``RENDER_SCALE`` times the output size:
centred on its ink box, its longest ink side scaled to ``(S - 2 * margin) * scale``, rotated
and shifted; its strokes are then thickened or thinned (a grey-level max or min filter) and the
canvas is area-averaged down to ``S x S``. Images are 8-bit grey, dark ink on white, as the glyph
benchmark's.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from episodes.digits.fonts import DIGITS
from episodes.glyphs.fonts import FontSpec, resolve_face

__all__ = [
    "DEFAULT_AUGMENTATION",
    "DEFAULT_MARGIN",
    "RENDERER_VERSION",
    "RENDER_SCALE",
    "Augmentation",
    "render_digits",
]

RENDERER_VERSION = 1
RENDER_SCALE = 4
DEFAULT_MARGIN = 2  # a clean digit's longest ink side spans 24 of 28 pixels, as the target's


@dataclass(frozen=True)
class Augmentation:
    """Ranges of the random transform of each augmented copy (each drawn uniformly).

    Attributes:
        rotation: Largest rotation, degrees either way.
        scale: ``(low, high)`` factor on the nominal ink size ``S - 2 * margin``.
        shift: Largest shift, output pixels, along each axis either way.
        stroke: ``(low, high)`` stroke change in pixels of the ``RENDER_SCALE``-times canvas,
            per side, an integer (negative thins, positive thickens; 4 canvas pixels are one
            output pixel).
    """

    rotation: float = 10.0
    scale: tuple[float, float] = (0.85, 1.05)
    shift: float = 1.5
    stroke: tuple[int, int] = (-1, 2)

    def to_dict(self) -> dict[str, Any]:
        """The ranges as JSON-ready values (for the manifest)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


DEFAULT_AUGMENTATION = Augmentation()


def render_digits(
    spec: FontSpec,
    copies: int,
    image_size: int = 28,
    margin: int = DEFAULT_MARGIN,
    seed: int = 0,
    augmentation: Augmentation = DEFAULT_AUGMENTATION,
    face_index: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The ten digits of one font: one clean image each and ``copies`` augmented ones.

    The random transform of copy ``k`` of digit ``d`` depends on ``seed``, the font's slug,
    ``d`` and ``k`` only, so a font renders the same whatever other fonts are built with it.

    Args:
        spec: The font (the face of a collection in ``spec.face`` or ``face_index``).
        copies: Augmented images per digit (>= 0).
        image_size: Output height and width ``S``.
        margin: Blank pixels at each end of a clean digit's longest ink side.
        seed: Seed of the augmentation.
        augmentation: Ranges of the random transforms.
        face_index: Collection face index, if already resolved.

    Returns:
        ``(clean, augmented)``: uint8 ``[10, S, S]`` (dark ink on 255 white; all white for a
        digit that draws no ink) and uint8 ``[10, copies, S, S]``.
    """
    if face_index is None:
        face_index = resolve_face(spec)[0]
    glyphs = [_draw_glyph(spec, face_index, d, image_size - 2 * margin) for d in DIGITS]
    clean = np.stack([_place(g, image_size, margin, _IDENTITY) for g in glyphs])
    augmented = np.empty((len(DIGITS), copies, image_size, image_size), dtype=np.uint8)
    for d, glyph in enumerate(glyphs):
        rng = np.random.default_rng(_seed_sequence(seed, spec.slug, d))
        for k in range(copies):
            augmented[d, k] = _place(glyph, image_size, margin, _draw(rng, augmentation))
    return clean, augmented


@dataclass(frozen=True)
class _Transform:
    rotation: float  # degrees
    scale: float
    shift: tuple[float, float]  # output pixels
    stroke: int  # canvas pixels per side


_IDENTITY = _Transform(0.0, 1.0, (0.0, 0.0), 0)


def _draw(rng: np.random.Generator, aug: Augmentation) -> _Transform:
    rotation, scale, dx, dy = rng.uniform(
        (-aug.rotation, aug.scale[0], -aug.shift, -aug.shift),
        (aug.rotation, aug.scale[1], aug.shift, aug.shift),
    )
    stroke = int(rng.integers(aug.stroke[0], aug.stroke[1], endpoint=True))
    return _Transform(float(rotation), float(scale), (float(dx), float(dy)), stroke)


def _seed_sequence(seed: int, slug: str, digit: int) -> np.random.SeedSequence:
    key = hashlib.sha256(f"{seed}\0{slug}\0{digit}".encode()).digest()
    return np.random.SeedSequence([int.from_bytes(key[i : i + 4], "little") for i in (0, 4, 8)])


def _draw_glyph(spec: FontSpec, face_index: int, char: str, ink_size: int) -> Any:
    """The digit's ink, white on black, cropped to its ink box; ``None`` if it draws none.

    Drawn so that its longest ink side is at least ``ink_size * RENDER_SCALE`` pixels (the
    placement then only shrinks it, or enlarges it by the augmentation's scale at most).
    """
    from PIL import Image, ImageDraw, ImageFont

    target = ink_size * RENDER_SCALE

    def draw(px: int) -> tuple[Any, tuple[int, int, int, int] | None]:
        font = ImageFont.truetype(
            str(spec.path), px, index=face_index, layout_engine=ImageFont.Layout.BASIC
        )
        left, top, right, bottom = font.getbbox(char)
        canvas = Image.new("L", (max(right - left, 1) + 8, max(bottom - top, 1) + 8))
        ImageDraw.Draw(canvas).text((4 - left, 4 - top), char, font=font, fill=255)
        return canvas, canvas.getbbox()

    px = math.ceil(target * 1.5)  # digits are about 0.7 em tall
    canvas, box = draw(px)
    for _ in range(3):  # grow the font until the ink is at least `target` pixels long
        if box is None or max(box[2] - box[0], box[3] - box[1]) >= target:
            break
        px = math.ceil(px * target / max(box[2] - box[0], box[3] - box[1]) * 1.02)
        canvas, box = draw(px)
    return None if box is None else canvas.crop(box)


def _place(glyph: Any, image_size: int, margin: int, t: _Transform) -> np.ndarray:
    """``glyph`` transformed by ``t`` onto a white ``S x S`` image, dark ink."""
    from PIL import Image, ImageFilter

    if glyph is None:
        return np.full((image_size, image_size), 255, dtype=np.uint8)
    big = image_size * RENDER_SCALE
    width, height = glyph.size
    factor = (image_size - 2 * margin) * RENDER_SCALE * t.scale / max(width, height)
    cos, sin = math.cos(math.radians(t.rotation)), math.sin(math.radians(t.rotation))
    # Inverse map, canvas -> glyph: p_glyph = centre_glyph + R(-angle) (p - centre - shift) / f.
    a, b, d, e = cos / factor, sin / factor, -sin / factor, cos / factor
    cx = big / 2 + t.shift[0] * RENDER_SCALE
    cy = big / 2 + t.shift[1] * RENDER_SCALE
    coefficients = (a, b, width / 2 - a * cx - b * cy, d, e, height / 2 - d * cx - e * cy)
    canvas = glyph.transform(
        (big, big), Image.Transform.AFFINE, coefficients, Image.Resampling.BILINEAR
    )
    if t.stroke:
        size = 2 * abs(t.stroke) + 1
        stroke_filter = ImageFilter.MaxFilter if t.stroke > 0 else ImageFilter.MinFilter
        canvas = canvas.filter(stroke_filter(size))
    small = canvas.resize((image_size, image_size), Image.Resampling.BOX)
    return 255 - np.asarray(small, dtype=np.uint8)
