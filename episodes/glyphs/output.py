"""Write a built benchmark: move a split's PNGs into place, save its caches, the manifest."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from episodes.glyphs.charsets import codepoint_name
from episodes.glyphs.fonts import FontSpec
from episodes.glyphs.render import RENDER_SCALE, RENDERER_VERSION

__all__ = ["make_manifest", "write_split"]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_split(
    tmp: Path,
    split: str,
    members: list[str],
    rendered: str,
    fonts: tuple[FontSpec, ...],
    font_images: list[np.ndarray],
) -> dict[str, str]:
    """Move one split's PNGs into place and save its cache; returns the cache files' hashes."""
    row = {c: i for i, c in enumerate(rendered)}
    rows = [row[c] for c in members]
    size = font_images[0].shape[-1]
    images = np.empty((len(members), len(fonts), 1, size, size), np.uint8)
    for f, array in enumerate(font_images):
        images[:, f, 0] = array[rows]
    for c in members:
        class_dir = tmp / "images" / split / codepoint_name(c)
        class_dir.mkdir(parents=True)
        for spec in fonts:
            png = tmp / "staging" / spec.slug / f"{codepoint_name(c)}.png"
            png.rename(class_dir / f"{spec.slug}.png")
    labels = np.repeat(np.arange(len(members), dtype=np.int64), len(fonts))
    (tmp / "cache").mkdir(exist_ok=True)
    hashes = {}
    for kind, array in (("images", images.reshape(-1, 1, size, size)), ("labels", labels)):
        name = f"cache/{split}-{kind}.npy"
        np.save(tmp / name, array)
        hashes[name] = _sha256(tmp / name)
    return hashes


def make_manifest(
    fonts: tuple[FontSpec, ...],
    infos: list[dict[str, Any]],
    chars: str,
    kept: list[str],
    splits: dict[str, list[str]],
    dropped: dict[str, dict[str, Any]],
    image_size: int,
    margin: int,
    seed: int,
) -> dict[str, Any]:
    """The manifest of a build, without ``cache_sha256`` (added by the caller)."""
    import PIL
    from PIL import features

    font_entries = [
        {
            "slug": spec.slug,
            "package": spec.package,
            "file": str(spec.path),
            "face_index": info["face_index"],
            "family": info["family"],
            "sha256": info["sha256"],
        }
        for spec, info in zip(fonts, infos, strict=True)
    ]
    return {
        "format": "metatl-glyphs",
        "renderer_version": RENDERER_VERSION,
        "renderer": {
            "pillow": PIL.__version__,
            "freetype": features.version("freetype2"),
            "render_scale": RENDER_SCALE,
            "resample": "box",
        },
        "image_size": image_size,
        "margin": margin,
        "seed": seed,
        "image_order": "class-major (label order); within a class, one image per font in order",
        "fonts": font_entries,
        "characters": kept,
        "splits": splits,
        "dropped": [
            {"char": c, "codepoint": codepoint_name(c), **dropped[c]} for c in sorted(dropped)
        ],
        "counts": {
            "requested": len(chars),
            "kept": len(kept),
            "dropped": len(dropped),
            "fonts": len(fonts),
            "images": len(kept) * len(fonts),
            "splits": {
                s: {"classes": len(m), "images": len(m) * len(fonts)} for s, m in splits.items()
            },
            "per_font": {
                spec.slug: {"missing": info["missing"], "blank": info["blank"]}
                for spec, info in zip(fonts, infos, strict=True)
            },
        },
    }
