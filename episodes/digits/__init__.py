"""The digits domain-shift benchmark, synthetic -> real, built offline and deterministically.

Source: the digits 0-9 rendered from the Latin digits of Debian font packages (text faces,
monospaced, OCR, handwriting and script, display faces; and the glyph benchmark's CJK fonts,
whose Latin digits are designs of their own), each face several times with light seeded
augmentation (rotation, scale, shift, stroke width). The kept fonts' families are split into
``source_train`` and ``source_val`` (label-free model selection on held-out designs).

Target: scikit-learn's 1,797 bundled handwritten digits (8x8, values 0-16), upsampled to the
source's 28x28 and split per digit into ``target_train`` (adaptation; unlabelled use) and
``target_test`` (scoring only). Images are 8-bit grey, dark ink on white, as the glyph
benchmark's. The classic SynDigits -> SVHN situation, offline.

Output (``out_dir``)::

    cache/<split>-images.npy     uint8 [N, 1, 28, 28]
    cache/<split>-labels.npy     int64 [N]
    cache/<split>-fonts.npy      int64 [N], font of each source image (source splits)
    manifest.json                fonts (package, file, face, family, SHA-256, split), dropped
                                 fonts and why, options, augmentation, target source, counts

The build goes to a temporary directory renamed into place at the end; building twice with the
same fonts, options and library versions gives byte-identical files, whatever the number of
workers. CLI: ``python -m episodes.digits --out data/digits``. Reader: ``load_dataset("digits",
root, split)`` (:func:`episodes.datasets.load_digits_benchmark`), and
:func:`episodes.load_domain_shift` for the four splits with the target's labels withheld.

Modules: :mod:`~episodes.digits.fonts` (font packages and faces), :mod:`~episodes.digits.render`
(one font's digits), :mod:`~episodes.digits.target` (scikit-learn's digits),
:mod:`~episodes.digits.build` (filter, split, write), :mod:`~episodes.digits.cli`.
"""

from episodes.digits.build import BUILDER_VERSION, build_digits_benchmark, split_families
from episodes.digits.cli import main
from episodes.digits.fonts import (
    DIGIT_FONT_PACKAGES,
    DIGITS,
    font_family,
    installed_fonts,
    owning_packages,
    package_fonts,
    small_digit_fonts,
)
from episodes.digits.render import (
    DEFAULT_AUGMENTATION,
    DEFAULT_MARGIN,
    RENDERER_VERSION,
    Augmentation,
    render_digits,
)
from episodes.digits.target import load_sklearn_digits

__all__ = [
    "BUILDER_VERSION",
    "DEFAULT_AUGMENTATION",
    "DEFAULT_MARGIN",
    "DIGITS",
    "DIGIT_FONT_PACKAGES",
    "RENDERER_VERSION",
    "Augmentation",
    "build_digits_benchmark",
    "font_family",
    "installed_fonts",
    "load_sklearn_digits",
    "main",
    "owning_packages",
    "package_fonts",
    "render_digits",
    "small_digit_fonts",
    "split_families",
]
