"""Render one font's glyphs: centred on the ink box, longest side fixed, area-averaged down."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from episodes.glyphs.fonts import FontSpec, resolve_face

__all__ = ["DEFAULT_MARGIN", "RENDERER_VERSION", "RENDER_SCALE", "render_glyphs"]

RENDERER_VERSION = 1
DEFAULT_MARGIN = 6
RENDER_SCALE = 4  # the ink box is rendered at >= this many times the output resolution


def render_glyphs(
    spec: FontSpec,
    characters: str,
    image_size: int = 84,
    margin: int = DEFAULT_MARGIN,
    face_index: int | None = None,
) -> tuple[np.ndarray, list[bool]]:
    """Render ``characters`` in one font: centred on the ink box, longest side fixed.

    Args:
        spec: The font.
        characters: The characters (the font should map them all; see :mod:`episodes.glyphs`).
        image_size: Output height and width ``S``.
        margin: Pixels left blank on the ink's longest side, on each end.
        face_index: Collection face index, if already resolved.

    Returns:
        uint8 ``[len(characters), S, S]`` (ink dark on 255 white) and, per character, whether
        it rendered blank (its image is then all white).
    """
    from PIL import Image, ImageDraw, ImageFont

    if face_index is None:
        face_index = resolve_face(spec)[0]
    ink = image_size - 2 * margin
    target = ink * RENDER_SCALE
    fonts: dict[int, Any] = {}

    def font(px: int) -> Any:
        if px not in fonts:
            fonts[px] = ImageFont.truetype(
                str(spec.path), px, index=face_index, layout_engine=ImageFont.Layout.BASIC
            )
        return fonts[px]

    def draw(char: str, px: int) -> tuple[Any, tuple[int, int, int, int] | None]:
        left, top, right, bottom = font(px).getbbox(char)
        canvas = Image.new("L", (right - left + 8, bottom - top + 8))
        ImageDraw.Draw(canvas).text((4 - left, 4 - top), char, font=font(px), fill=255)
        return canvas, canvas.getbbox()

    out = np.full((len(characters), image_size, image_size), 255, dtype=np.uint8)
    blank = []
    for i, char in enumerate(characters):
        px = math.ceil(target * 1.25)  # most ink boxes are 0.8-1.0 em: no upsampling needed
        canvas, box = draw(char, px)
        for _ in range(3):  # grow the font until the ink is at least `target` pixels long
            if box is None or max(box[2] - box[0], box[3] - box[1]) >= target:
                break
            px = math.ceil(px * target / max(box[2] - box[0], box[3] - box[1]) * 1.02)
            canvas, box = draw(char, px)
        blank.append(box is None)
        if box is None:
            continue
        scale = max(box[2] - box[0], box[3] - box[1]) / ink  # canvas pixels per output pixel
        half = scale * image_size / 2
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        x0, y0 = math.floor(cx - half), math.floor(cy - half)
        region = canvas.crop((x0, y0, math.ceil(cx + half), math.ceil(cy + half)))
        src = (cx - half - x0, cy - half - y0, cx + half - x0, cy + half - y0)
        small = region.resize((image_size, image_size), Image.Resampling.BOX, box=src)
        out[i] = 255 - np.asarray(small)
    return out, blank
