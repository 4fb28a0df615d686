"""Readers for on-disk datasets; each decodes once into an in-memory :class:`LabelledImages`."""

from episodes.datasets._decode import (
    DatasetFormatError,
    ImageDecodeError,
    decode_images,
    is_colour_image,
)
from episodes.datasets.cifar_fs import CIFAR_FS_SPLITS, load_cifar_fs, read_cifar_pickle
from episodes.datasets.cub import CUB_SPLITS, cub_class_split, load_cub
from episodes.datasets.digits import DIGITS_SPLITS, load_digits_benchmark, read_digits_manifest
from episodes.datasets.fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist
from episodes.datasets.glyph_domains import (
    GLYPH_DESIGNS,
    KANJI_DOMAIN_SPLITS,
    design_domains,
    load_kanji_domains,
)
from episodes.datasets.glyphs import glyph_splits, load_glyphs, read_glyph_manifest
from episodes.datasets.image_folder import colour_images, image_folder_files, load_image_folder
from episodes.datasets.mini_imagenet import load_mini_imagenet
from episodes.datasets.omniglot import load_omniglot
from episodes.datasets.registry import (
    UnknownDatasetError,
    UnknownSplitError,
    list_datasets,
    load_dataset,
    register_dataset,
)

__all__ = [
    "CIFAR_FS_SPLITS",
    "CUB_SPLITS",
    "DIGITS_SPLITS",
    "FASHION_MNIST_CLASSES",
    "GLYPH_DESIGNS",
    "KANJI_DOMAIN_SPLITS",
    "DatasetFormatError",
    "ImageDecodeError",
    "UnknownDatasetError",
    "UnknownSplitError",
    "colour_images",
    "cub_class_split",
    "decode_images",
    "design_domains",
    "glyph_splits",
    "image_folder_files",
    "is_colour_image",
    "list_datasets",
    "load_cifar_fs",
    "load_cub",
    "load_dataset",
    "load_digits_benchmark",
    "load_fashion_mnist",
    "load_glyphs",
    "load_image_folder",
    "load_kanji_domains",
    "load_mini_imagenet",
    "load_omniglot",
    "read_cifar_pickle",
    "read_digits_manifest",
    "read_glyph_manifest",
    "register_dataset",
]
