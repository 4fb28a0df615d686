"""Build an Omniglot-like glyph benchmark offline: one class per character, one image per font.

The default build renders the 2,965 JIS X 0208 level-1 kanji in 20 font designs shipped by
18 Debian packages (sans, serif/mincho, brush kaisho, gyōsho and sōsho, handwriting, rounded,
pixel). A character is kept only if every font maps it (fontTools ``getBestCmap``) and none
renders it blank; each glyph is centred on its ink bounding box, scaled (aspect ratio kept) so
its longest ink side spans ``image_size - 2 * margin`` pixels, rendered at >= 4x the output
resolution and area-averaged down. Images are 8-bit grey, dark ink on white.

Output (``out_dir``)::

    images/<split>/U+XXXX/<font-slug>.png     the image-folder layout
    cache/<split>-images.npy                  uint8 [N, 1, S, S], class-major, fonts in order
    cache/<split>-labels.npy                  int64 [N]
    manifest.json                             fonts, characters, splits, drops, hashes

The build goes to a temporary directory next to ``out_dir`` that is renamed into place at the
end, so an interrupted build never looks complete. Builds are byte-identical for the same
inputs, whatever the number of workers. CLI: ``python -m episodes.glyphs --out data/glyphs``.

Modules: :mod:`~episodes.glyphs.fonts` (font table, face resolution, coverage),
:mod:`~episodes.glyphs.charsets` (character sets), :mod:`~episodes.glyphs.render` (one font's
glyphs to arrays), :mod:`~episodes.glyphs.build` (split, render in workers, write the output),
:mod:`~episodes.glyphs.cli` (the command line).
"""

from episodes.glyphs.build import SPLITS, BuildExistsError, build_glyph_benchmark, split_classes
from episodes.glyphs.charsets import codepoint_name, jis_level1_kanji, read_characters
from episodes.glyphs.cli import main
from episodes.glyphs.fonts import (
    FONT_ROOT,
    FontSpec,
    MissingFontError,
    default_fonts,
    parse_font_arg,
)
from episodes.glyphs.render import DEFAULT_MARGIN, RENDERER_VERSION, render_glyphs

__all__ = [
    "DEFAULT_MARGIN",
    "FONT_ROOT",
    "RENDERER_VERSION",
    "SPLITS",
    "BuildExistsError",
    "FontSpec",
    "MissingFontError",
    "build_glyph_benchmark",
    "codepoint_name",
    "default_fonts",
    "jis_level1_kanji",
    "main",
    "parse_font_arg",
    "read_characters",
    "render_glyphs",
    "split_classes",
]
