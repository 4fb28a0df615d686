"""Readers for on-disk datasets; each decodes once into an in-memory :class:`LabelledImages`."""

from episodes.datasets._decode import DatasetFormatError, ImageDecodeError, decode_images
from episodes.datasets.fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist
from episodes.datasets.glyphs import glyph_splits, load_glyphs, read_glyph_manifest
from episodes.datasets.image_folder import load_image_folder
from episodes.datasets.mini_imagenet import load_mini_imagenet
from episodes.datasets.omniglot import load_omniglot

__all__ = [
    "FASHION_MNIST_CLASSES",
    "DatasetFormatError",
    "ImageDecodeError",
    "decode_images",
    "glyph_splits",
    "load_fashion_mnist",
    "load_glyphs",
    "load_image_folder",
    "load_mini_imagenet",
    "load_omniglot",
    "read_glyph_manifest",
]
