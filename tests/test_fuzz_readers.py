"""Fuzz the dataset readers with mutated files: only the data layer's own errors, fast, no writes.

Every case is made here, deterministically (seeded), from small valid files: PNG, JPEG, GIF, BMP
and WebP images written with PIL, Fashion-MNIST IDX files (raw and gzip'd), a glyph benchmark's
manifest and ``.npy`` caches, a miniImageNet split CSV, and Omniglot / image-folder layouts holding
a mutated image. Mutations: truncation at several points, random bit flips (anywhere, and in the
header only), another format's magic bytes, random blocks, and headers that declare giant or
negative dimensions (decompression bombs). For every read the reader must either return valid
data or raise ``DatasetFormatError`` (``ImageDecodeError``) or ``FileNotFoundError`` with a
one-line message naming the file; it must finish in under 5 s, leave every file unchanged, emit
no ``DecompressionBombWarning``, keep to these rules with every warning turned into an error, and
never need gigabytes (reads run under an address-space limit of the current size + 2 GiB, and a
``MemoryError`` anywhere in an error's chain counts as a failure).
"""

from __future__ import annotations

import contextlib
import faulthandler
import gzip
import hashlib
import io
import json
import os
import struct
import time
import warnings
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from episodes.data import LabelledImages
from episodes.datasets import (
    DatasetFormatError,
    colour_images,
    decode_images,
    glyph_splits,
    load_fashion_mnist,
    load_glyphs,
    load_image_folder,
    load_mini_imagenet,
    load_omniglot,
)
from episodes.datasets.fashion_mnist import read_idx

SEED = 8
READ_SECONDS = 5.0
HEADROOM = 2 << 30  # bytes of address space a read may add
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 2**31

MAGICS = {
    "png": b"\x89PNG\r\n\x1a\n",
    "jpeg": b"\xff\xd8\xff\xe0\x00\x10JFIF",
    "gif": b"GIF89a",
    "bmp": b"BM",
    "webp": b"RIFF\x00\x00\x00\x00WEBPVP8 ",
    "tiff": b"II*\x00\x08\x00\x00\x00",
    "zip": b"PK\x03\x04",
    "npy": b"\x93NUMPY\x01\x00",
    "gzip": b"\x1f\x8b\x08\x00",
    "pdf": b"%PDF-1.4",
    "psd": b"8BPS\x00\x01",
    "ico": b"\x00\x00\x01\x00",
    "zeros": bytes(8),
}

Mutation = tuple[str, bytes]


# --------------------------------------------------------------------------- mutations


def generic_mutations(data: bytes, rng: np.random.Generator, scale: int) -> list[Mutation]:
    """Truncations, bit flips (anywhere and in the first 64 bytes), magic bytes, random blocks."""
    n = len(data)
    cuts = {0, 1, 4, 8, 12, 16, 24, 33, 64, n // 4, n // 2, n - 8, n - 1}
    cuts |= {int(c) for c in rng.integers(1, n, 2 * scale - 2)} if scale > 1 else set()
    out = [(f"truncate@{c}", data[:c]) for c in sorted(cuts) if 0 <= c < n]
    for i, k in enumerate([1, 1, 2, 4, 8, 32] * scale):
        span = n if i % 2 == 0 else min(n, 64)
        flipped = bytearray(data)
        for position, bit in zip(rng.integers(0, span, k), rng.integers(0, 8, k), strict=True):
            flipped[position] ^= 1 << int(bit)
        out.append((f"flip{k}{'' if span == n else '-header'}", bytes(flipped)))
    for name in rng.choice(sorted(MAGICS), 3 * scale, replace=scale > 4):
        out.append((f"magic:{name}", MAGICS[name] + data[len(MAGICS[name]) :]))
    start = int(rng.integers(0, n))
    block = rng.integers(0, 256, min(32, n - start), dtype=np.uint8).tobytes()
    out.append(("random-block", data[:start] + block + data[start + len(block) :]))
    out.append(("zero-tail", data[: n // 2] + bytes(n - n // 2)))
    return out


def png_size(data: bytes, width: int, height: int) -> bytes:
    """``data`` with the IHDR claiming ``width x height`` (CRC fixed, so PIL believes it)."""
    ihdr = bytearray(data[12:29])
    struct.pack_into(">II", ihdr, 4, width, height)
    return data[:12] + bytes(ihdr) + struct.pack(">I", zlib.crc32(ihdr)) + data[33:]


def jpeg_size(data: bytes, width: int, height: int) -> bytes:
    at = max(data.find(b"\xff\xc0"), data.find(b"\xff\xc2"))
    return data[: at + 5] + struct.pack(">HH", height, width) + data[at + 9 :]


def gif_size(data: bytes, width: int, height: int) -> bytes:
    """Both the logical screen and the first image descriptor claim ``width x height``."""
    out = bytearray(data)
    struct.pack_into("<HH", out, 6, width, height)
    at = 13 + (3 * 2 ** ((data[10] & 7) + 1) if data[10] & 0x80 else 0)
    while out[at] == 0x21:  # extension blocks: introducer, label, sub-blocks
        at += 2
        while out[at]:
            at += out[at] + 1
        at += 1
    assert out[at] == 0x2C
    struct.pack_into("<HH", out, at + 5, width, height)
    return bytes(out)


def bmp_size(data: bytes, width: int, height: int) -> bytes:
    return data[:18] + struct.pack("<ii", width, height) + data[26:]


def webp_size(data: bytes, width: int, height: int) -> bytes:
    if data[12:16] == b"VP8 ":
        at = data.find(b"\x9d\x01\x2a") + 3
        return data[:at] + struct.pack("<HH", width & 0x3FFF, height & 0x3FFF) + data[at + 4 :]
    assert data[12:16] == b"VP8L"
    (bits,) = struct.unpack("<I", data[21:25])
    bits = (bits & ~0x0FFFFFFF) | ((width - 1) & 0x3FFF) | (((height - 1) & 0x3FFF) << 14)
    return data[:21] + struct.pack("<I", bits) + data[25:]


BIG = [(100_000, 100_000), (65_536, 32_768), (2**31 - 1, 2**31 - 1), (10_000, 10_000)]
SIZE_EDITS: dict[str, tuple[Callable[[bytes, int, int], bytes], list[tuple[int, int]]]] = {
    ".png": (png_size, [*BIG, (9_000, 9_000), (0, 10)]),
    ".jpg": (jpeg_size, [(65_535, 65_535), (65_535, 4_000), (10_000, 10_000), (0, 10)]),
    ".gif": (gif_size, [(65_535, 65_535), (10_000, 10_000), (0, 0)]),
    ".bmp": (bmp_size, [*BIG, (2**31 - 1, 1), (1, -(2**31)), (-12, 10), (9_000, 9_000)]),
    ".webp": (webp_size, [(16_383, 16_383), (10_000, 10_000), (9_000, 9_000)]),
}


def image_bases() -> list[tuple[str, bytes]]:
    """Small valid images of every supported format and the common modes."""
    rng = np.random.default_rng(SEED)
    grey = rng.integers(0, 256, (10, 12), dtype=np.uint8)
    rgb = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    rgba = rng.integers(0, 256, (10, 12, 4), dtype=np.uint8)
    palette = Image.fromarray(rgb).quantize(16)
    frames = [Image.fromarray(np.roll(rgb, k, axis=1)).quantize(8) for k in range(3)]
    specs: list[tuple[str, Image.Image, dict[str, Any]]] = [
        ("grey.png", Image.fromarray(grey), {}),
        ("rgb.png", Image.fromarray(rgb), {}),
        ("rgba.png", Image.fromarray(rgba), {}),
        ("palette.png", palette, {}),
        ("wide.png", Image.fromarray(grey.astype(np.uint16) * 257), {}),
        ("bits.png", Image.fromarray(grey > 127), {}),
        ("grey.jpg", Image.fromarray(grey), {"quality": 90}),
        ("rgb.jpg", Image.fromarray(rgb), {}),
        ("progressive.jpg", Image.fromarray(rgb), {"progressive": True}),
        ("palette.gif", palette, {}),
        ("animated.gif", frames[0], {"save_all": True, "append_images": frames[1:]}),
        ("rgb.bmp", Image.fromarray(rgb), {}),
        ("grey.bmp", Image.fromarray(grey), {}),
        ("lossy.webp", Image.fromarray(rgb), {"quality": 80}),
        ("lossless.webp", Image.fromarray(rgba), {"lossless": True}),
    ]
    out = []
    for name, image, options in specs:
        buffer = io.BytesIO()
        image.save(buffer, format=Image.registered_extensions()[Path(name).suffix], **options)
        out.append((name, buffer.getvalue()))
    return out


def image_cases(scale: int) -> list[tuple[str, str, bytes]]:
    """``(file name, mutation, bytes)`` for every base image."""
    cases = []
    for index, (name, data) in enumerate(image_bases()):
        rng = np.random.default_rng([SEED, index])
        mutations = generic_mutations(data, rng, scale)
        edit, sizes = SIZE_EDITS[Path(name).suffix]
        mutations += [(f"size {w}x{h}", edit(data, w, h)) for w, h in sizes]
        cases += [(name, label, mutated) for label, mutated in mutations]
    return cases


# --------------------------------------------------------------------------- checking


def tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def causes(error: BaseException) -> Iterator[BaseException]:
    seen: BaseException | None = error
    while seen is not None:
        yield seen
        seen = seen.__cause__ or seen.__context__


def check_result(result: object) -> None:
    """Valid data: a uint8 ``[N, C, H, W]`` tensor or collection of sane size, or file paths."""
    if isinstance(result, list):
        for item in result:
            assert isinstance(item, Path) or check_result(item) is None
        return
    if isinstance(result, np.ndarray):  # an IDX array
        assert result.dtype == np.uint8 and result.size <= 2**24
        return
    images = result.images if isinstance(result, LabelledImages) else result
    assert isinstance(images, torch.Tensor) and images.dtype == torch.uint8 and images.dim() == 4
    assert images.shape[1] in (1, 3) and images.shape[2] * images.shape[3] <= MAX_PIXELS


@contextlib.contextmanager
def address_space_limit(headroom: int) -> Iterator[None]:
    """Cap this process's address space at its current size + ``headroom`` (Linux only)."""
    import resource

    statm = Path("/proc/self/statm")
    if not statm.exists():
        yield
        return
    current = int(statm.read_text().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = current + headroom
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


class Fuzz:
    """Runs reads, checks every rule above and collects failures instead of stopping at one."""

    def __init__(self) -> None:
        self.outcomes: Counter[tuple[str, str]] = Counter()
        self.failures: list[str] = []
        self.files = 0
        self.slowest = 0.0

    def read(
        self, kind: str, label: str, read: Callable[[], object], root: Path, names: Sequence[Path]
    ) -> None:
        """Run ``read`` twice (warnings recorded, then every warning an error) and check it."""
        before = tree_hashes(root)
        for strict in (False, True):
            outcome = self._read_once(kind, label, read, names, strict)
            self.outcomes[(kind, outcome)] += not strict
        if tree_hashes(root) != before:
            self.failures.append(f"{kind} [{label}]: a file changed")

    def _read_once(
        self, kind: str, label: str, read: Callable[[], object], names: Sequence[Path], strict: bool
    ) -> str:
        where = f"{kind} [{label}]{' (warnings as errors)' if strict else ''}"
        start = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("error" if strict else "always")
            try:
                result = read()
            except (DatasetFormatError, FileNotFoundError) as error:
                outcome = type(error).__name__
                message = str(error)
                if "\n" in message or not any(str(n) in message for n in names):
                    self.failures.append(f"{where}: message not one line naming the file: {error}")
                if any(isinstance(e, MemoryError) for e in causes(error)):
                    self.failures.append(f"{where}: needed too much memory: {error}")
            except Exception as error:
                outcome = "other"
                self.failures.append(f"{where}: {type(error).__name__}: {error}"[:400])
            else:
                outcome = "ok"
                try:
                    check_result(result)
                except AssertionError:
                    shape = (
                        getattr(result, "shape", None) or getattr(result, "images", result).shape
                    )
                    self.failures.append(f"{where}: invalid data returned, shape {shape}")
        elapsed = time.perf_counter() - start
        self.slowest = max(self.slowest, elapsed)
        if elapsed > READ_SECONDS:
            self.failures.append(f"{where}: took {elapsed:.1f}s")
        for warning in caught:
            if issubclass(warning.category, Image.DecompressionBombWarning) or (
                "episodes" in Path(warning.filename).parts
            ):
                self.failures.append(f"{where}: warning escaped: {warning.message}")
        return outcome

    def report(self) -> str:
        kinds = sorted({k for k, _ in self.outcomes})
        lines = [f"{self.files} mutated files, slowest read {self.slowest:.2f}s"]
        for kind in kinds:
            counts = {o: c for (k, o), c in self.outcomes.items() if k == kind}
            lines.append(f"  {kind}: {dict(sorted(counts.items()))}")
        return "\n".join(lines)


# --------------------------------------------------------------------------- the corpora


def fuzz_images(fuzz: Fuzz, tmp: Path, scale: int) -> None:
    """Each mutated image alone: decoded as stored, forced grey and resized, scanned for colour."""
    folder = tmp / "images"
    folder.mkdir()
    for i, (name, label, data) in enumerate(image_cases(scale)):
        path = folder / f"{i:04d}-{name}"
        path.write_bytes(data)
        fuzz.files += 1
        where = f"{name} {label}"
        fuzz.read("decode", where, lambda p=path: decode_images([p]), folder, [path])
        grey = lambda p=path: decode_images([p], channels=1, image_size=7)  # noqa: E731
        fuzz.read("decode grey 7x7", where, grey, folder, [path])
        fuzz.read("colour_images", where, lambda p=path: colour_images([p]), folder, [path])
        path.unlink()


def fuzz_layouts(fuzz: Fuzz, tmp: Path, scale: int) -> None:
    """A mutated image among valid ones in an image folder and in an Omniglot layout."""
    cases = image_cases(scale)
    picked = np.random.default_rng(SEED).choice(len(cases), 12 * scale, replace=False)
    grey = Image.fromarray(np.full((6, 6), 200, np.uint8))
    for n, index in enumerate(sorted(picked)):
        name, label, data = cases[index]
        root = tmp / f"layout{n}"
        for folder in ("folder/ant", "folder/bee", "omni/images_background/A/c1"):
            (root / folder).mkdir(parents=True)
            for k in range(2):
                grey.save(root / folder / f"000{k}_01.png")
        in_folder = root / "folder/bee" / f"x-{name}"
        in_omniglot = root / "omni/images_background/A/c1/0002_01.png"
        for target in (in_folder, in_omniglot):
            target.write_bytes(data)
            fuzz.files += 1
        where = f"{name} {label}"
        folder_read = lambda r=root: load_image_folder(r / "folder", 6)  # noqa: E731
        fuzz.read("image_folder", where, folder_read, root, [in_folder])
        colour_read = lambda r=root: colour_images(r / "folder")  # noqa: E731
        fuzz.read("colour_images folder", where, colour_read, root, [in_folder])
        omniglot_read = lambda r=root: load_omniglot(r / "omni", "background", 6)  # noqa: E731
        fuzz.read("omniglot", where, omniglot_read, root, [in_omniglot])


def _idx_bytes(magic: int, array: np.ndarray) -> bytes:
    return struct.pack(f">{1 + array.ndim}i", magic, *array.shape) + array.tobytes()


def fuzz_fashion_mnist(fuzz: Fuzz, tmp: Path, scale: int) -> None:
    """Mutated IDX files (raw, gzip'd after mutation, mutated gzip streams) next to valid ones."""
    rng = np.random.default_rng(SEED)
    images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 5, dtype=np.uint8)
    files = {
        "train-images-idx3-ubyte": (2051, _idx_bytes(2051, images)),
        "train-labels-idx1-ubyte": (2049, _idx_bytes(2049, labels)),
    }
    claimed = {  # dimensions claimed by the header; the payload is left as it is
        3: [(2**31 - 1, 28, 28), (5, 2**31 - 1, 2**31 - 1), (-1, 28, 28), (0, 28, 28), (5, 28, 27)],
        1: [(2**31 - 1,), (-5,), (0,), (2**30,)],
    }
    crafted = {  # headers whose size arithmetic overflows or goes negative yet "fits" the payload
        3: [
            ("dims 2^30 x 2^30 x 16, no payload", struct.pack(">4i", 2051, 2**30, 2**30, 16)),
            ("dims -2 x -28 x 28", struct.pack(">4i", 2051, -2, -28, 28) + images[:2].tobytes()),
        ],
        1: [("dims 2^31-1, no payload", struct.pack(">2i", 2049, 2**31 - 1))],
    }
    case = 0
    for stem, (magic, data) in files.items():
        ndim = magic - 0x0800
        mutations = generic_mutations(data, np.random.default_rng([SEED, magic]), scale)
        for dims in claimed[ndim]:
            header = struct.pack(f">{1 + ndim}i", magic, *dims)
            mutations.append((f"dims {dims}", header + data[len(header) :]))
        mutations += crafted[ndim]
        mutations.append(("magic of float32 data", struct.pack(">i", magic + 0x0B00) + data[4:]))
        gz = gzip.compress(data, mtime=0)
        variants = [("", label, m) for label, m in mutations]
        variants += [(".gz", label, gzip.compress(m, mtime=0)) for label, m in mutations]
        variants += [
            (".gz", f"gzip stream {label}", m)
            for label, m in generic_mutations(gz, np.random.default_rng([SEED, magic, 1]), scale)
        ]
        for suffix, label, payload in variants:
            root = tmp / f"idx{case}"
            case += 1
            root.mkdir()
            for name, (_, good) in files.items():
                good = gzip.compress(good, mtime=0) if suffix else good
                (root / f"{name}{suffix}").write_bytes(good)
            target = root / f"{stem}{suffix}"
            target.write_bytes(payload)
            fuzz.files += 1
            where = f"{target.name} {label}"
            fuzz.read("fashion-mnist", where, lambda r=root: load_fashion_mnist(r), root, [target])
            fuzz.read("read_idx", where, lambda t=target, m=magic: read_idx(t, m), root, [target])


def write_glyph_benchmark(root: Path) -> dict[str, Any]:
    """A tiny benchmark as ``python -m episodes.glyphs`` writes it (its manifest code), 8x8."""
    from episodes.glyphs.fonts import FontSpec
    from episodes.glyphs.output import make_manifest

    fonts = tuple(FontSpec(s, f"/fonts/{s}.ttf", package=f"fonts-{s}") for s in ("a", "b"))
    infos = [
        {"face_index": 0, "family": s, "sha256": "0" * 64, "missing": 0, "blank": 0}
        for s in ("A", "B")
    ]
    splits = {"train": list("亜悪愛"), "val": list("圧握"), "test": list("安扱")}
    chars = sorted(c for members in splits.values() for c in members)
    manifest = make_manifest(fonts, infos, "".join(chars), chars, splits, {}, 8, 1, 0)
    rng = np.random.default_rng(SEED)
    (root / "cache").mkdir(parents=True)
    hashes = {}
    for split, members in splits.items():
        n = len(members)
        arrays = {
            "images": rng.integers(0, 256, (2 * n, 1, 8, 8), dtype=np.uint8),
            "labels": np.repeat(np.arange(n, dtype=np.int64), 2),
        }
        for kind, array in arrays.items():
            name = f"cache/{split}-{kind}.npy"
            np.save(root / name, array)
            hashes[name] = hashlib.sha256((root / name).read_bytes()).hexdigest()
    manifest["cache_sha256"] = hashes
    text = json.dumps(manifest, ensure_ascii=False, indent=1, sort_keys=True) + "\n"
    (root / "manifest.json").write_text(text, encoding="utf-8")
    return manifest


def manifest_edits(manifest: dict[str, Any]) -> list[Mutation]:
    """Valid JSON with missing keys, wrong types or bad values; and JSON that is not a dict."""

    def dump(value: object) -> bytes:
        return json.dumps(value, ensure_ascii=False).encode()

    edits = [
        (f"no {key}", dump({k: v for k, v in manifest.items() if k != key}))
        for key in ("format", "splits", "fonts", "image_size", "cache_sha256", "characters")
    ]
    replacements: list[tuple[str, object]] = [
        ("splits", []), ("splits", "train"), ("splits", {}), ("splits", {"train": "亜悪愛"}),
        ("splits", {"train": [1, 2, 3]}), ("splits", {"train": None}), ("splits", {"train": []}),
        ("splits", {"../../outside": ["亜"]}), ("splits", {"train": ["亜", "亜", "亜"]}),
        ("fonts", {}), ("fonts", []), ("fonts", "ab"), ("fonts", [None, None]),
        ("image_size", "8"), ("image_size", -8), ("image_size", 0), ("image_size", 8.5),
        ("image_size", True), ("image_size", None), ("image_size", 10**30),
        ("image_size", float("inf")), ("image_size", float("nan")),
        ("cache_sha256", []), ("cache_sha256", None), ("cache_sha256", {"x": 5}),
        ("format", None), ("format", "other"),
    ]  # fmt: skip
    edits += [
        (f"{key}={value!r}"[:50], dump(manifest | {key: value})) for key, value in replacements
    ]
    edits += [
        ("a list", b"[]"),
        ("a string", b'"metatl-glyphs"'),
        ("null", b"null"),
        ("empty", b""),
        ("nested 100000 deep", b"[" * 100_000 + b"]" * 100_000),
        ("BOM", b"\xef\xbb\xbf" + dump(manifest)),
        ("latin-1", dump(manifest).replace("亜".encode(), b"\xe9")),
    ]
    return edits


def npy_edit(data: bytes, old: str, new: str) -> bytes:
    """A version-1 ``.npy`` with ``old`` replaced by ``new`` in its header (same header length)."""
    (length,) = struct.unpack("<H", data[8:10])
    header = data[10 : 10 + length].decode("latin1")
    assert old in header, (old, header)
    edited = header.replace(old, new).rstrip("\n ")
    assert len(edited) < length
    return (
        data[:10]
        + (edited + " " * (length - 1 - len(edited)) + "\n").encode("latin1")
        + data[10 + length :]
    )


def npy_edits(data: bytes, kind: str) -> list[Mutation]:
    """Headers claiming giant, negative or wrong shapes, wrong dtypes, broken syntax, versions."""
    shape, descr = ("(6, 1, 8, 8)", "'|u1'") if kind == "images" else ("(6,)", "'<i8'")
    shapes = {
        "images": ["(1099511627776, 1, 8, 8)", "(10**18, 1, 8, 8)", "(-1, 1, 8, 8)",
                   "(6, 1, 8000, 8000)", "(0, 1, 8, 8)", "(6L, 1L, 8L, 8L)", "(6, 1, 8, 8, 1)"],
        "labels": ["(1099511627776,)", "(1000000000,)", "(-6,)", "(0,)", "(6L,)", "(2, 3)"],
    }  # fmt: skip
    edits = [(f"shape {s}", npy_edit(data, shape, s)) for s in shapes[kind]]
    for new in ("'|O'", "'<f8'", "'|V8'", "'<U1'", "'|u1'", "'<i8'", "'>i8'"):
        if new != descr:
            edits.append((f"descr {new}", npy_edit(data, descr, new)))
    edits.append(("fortran order", npy_edit(data, "False", "True")))
    edits.append(("header not a dict", npy_edit(data, data[10:70].decode("latin1"), "[1, 2]")))
    edits.append(("header missing keys", npy_edit(data, f"'shape': {shape}, ", "")))
    edits.append(("header nested", npy_edit(data, shape, "(" * 20 + ")" * 20)))
    edits += [
        ("header length 65535", data[:8] + b"\xff\xff" + data[10:]),
        ("version 3.0", data[:6] + b"\x03\x00" + data[8:]),
        ("version 9.9", data[:6] + b"\x09\x09" + data[8:]),
    ]
    zipped = io.BytesIO()
    np.savez(zipped, a=np.zeros(3))
    edits.append(("an .npz archive", zipped.getvalue()))
    return edits


def fuzz_glyphs(fuzz: Fuzz, tmp: Path, scale: int) -> None:
    """Mutated manifest.json and cache/*.npy files of a glyph benchmark, read split by split."""
    pristine = tmp / "pristine"
    manifest = write_glyph_benchmark(pristine)
    targets = {
        "manifest.json": manifest_edits(manifest),
        "cache/train-images.npy": npy_edits(
            (pristine / "cache/train-images.npy").read_bytes(), "images"
        ),
        "cache/train-labels.npy": npy_edits(
            (pristine / "cache/train-labels.npy").read_bytes(), "labels"
        ),
    }

    def read(root: Path) -> list[LabelledImages]:
        return [load_glyphs(root, split) for split in glyph_splits(root)]

    def read_verified(root: Path) -> LabelledImages:
        return load_glyphs(root, glyph_splits(root)[0], image_size=4, verify=True)

    case = 0
    for index, (name, edits) in enumerate(targets.items()):
        data = (pristine / name).read_bytes()
        rng = np.random.default_rng([SEED, index])
        for label, mutated in generic_mutations(data, rng, scale) + edits:
            root = tmp / f"bench{case}"
            case += 1
            write_glyph_benchmark(root)
            (root / name).write_bytes(mutated)
            fuzz.files += 1
            where = f"{name} {label}"
            fuzz.read("glyphs", where, lambda r=root: read(r), root, [root])
            fuzz.read("glyphs verified", where, lambda r=root: read_verified(r), root, [root])


def fuzz_mini_imagenet(fuzz: Fuzz, tmp: Path, scale: int) -> None:
    """A mutated split CSV, or a mutated image among the listed ones."""
    rows = [(f"n0000000{c}0000000{k}.jpg", f"n0000000{c}") for c in (1, 2) for k in (1, 2)]
    text = "filename,label\n" + "".join(f"{f},{w}\n" for f, w in rows)
    data = text.encode()
    appended = {
        "giant field": b"a" * 200_000 + b",n00000001\n",
        "three fields": b"a.jpg,n1,x\n",
        "parent path": b"../train.csv,n00000001\n",
        "absolute path": b"/etc/passwd,n1\n",
        "empty name": b",n00000001\n",
        "open quote": b'"abc,n1\n',
        "10000 missing rows": b"".join(b"m%05d.jpg,n1\n" % i for i in range(10_000)),
    }
    crafted = [(label, data + tail) for label, tail in appended.items()] + [
        ("NUL byte", data[:20] + b"\x00" + data[20:]),
        ("invalid UTF-8", data[:20] + b"\xff\xfe" + data[20:]),
        ("CRLF", data.replace(b"\n", b"\r\n")),
        ("BOM", b"\xef\xbb\xbf" + data),
        ("header only", data[:15]),
        ("UTF-16", text.encode("utf-16")),
    ]
    mutations = generic_mutations(data, np.random.default_rng([SEED, 7]), scale) + crafted
    jpegs = [c for c in image_cases(scale) if c[0].endswith(".jpg")]
    picked = np.random.default_rng([SEED, 8]).choice(len(jpegs), 8 * scale, replace=False)
    cases = [("train.csv", label, m) for label, m in mutations]
    cases += [(f"images/{rows[1][0]}", f"image {jpegs[i][0]} {jpegs[i][1]}", jpegs[i][2])
              for i in sorted(picked)]  # fmt: skip
    good = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(good, "JPEG")
    for case, (name, label, mutated) in enumerate(cases):
        root = tmp / f"mini{case}"
        (root / "images").mkdir(parents=True)
        for filename, _ in rows:
            (root / "images" / filename).write_bytes(good.getvalue())
        (root / "train.csv").write_bytes(data)
        target = root / name
        target.write_bytes(mutated)
        fuzz.files += 1
        read = lambda r=root: load_mini_imagenet(r, "train", image_size=8)  # noqa: E731
        fuzz.read("mini-imagenet", label, read, root, [target, root / "train.csv"])


CORPORA = (fuzz_images, fuzz_layouts, fuzz_fashion_mnist, fuzz_glyphs, fuzz_mini_imagenet)


def run_fuzz(tmp: Path, scale: int) -> Fuzz:
    """Every corpus at ``scale`` (more truncation points, flips and magics per base file)."""
    fuzz = Fuzz()
    faulthandler.dump_traceback_later(300 * scale, exit=True)  # a hang fails, loudly
    try:
        with address_space_limit(HEADROOM):
            for corpus in CORPORA:
                (tmp / corpus.__name__).mkdir()
                corpus(fuzz, tmp / corpus.__name__, scale)
    finally:
        faulthandler.cancel_dump_traceback_later()
    return fuzz


def check_fuzz(fuzz: Fuzz, min_files: int) -> None:
    """No failure; ``-s`` shows the outcome counts per reader."""
    print(fuzz.report())
    failures = fuzz.failures
    shown = "\n".join(failures[:60])
    assert not failures, f"{len(failures)} failures:\n{shown}"
    assert fuzz.files >= min_files
    for kind in {k for k, _ in fuzz.outcomes}:  # each reader both accepted and refused files
        outcomes = {o for k, o in fuzz.outcomes if k == kind}
        assert "ok" in outcomes and len(outcomes) > 1, (kind, outcomes)


def test_fuzz_readers(tmp_path: Path) -> None:
    """About 800 mutated files, a few seconds."""
    check_fuzz(run_fuzz(tmp_path, scale=1), min_files=500)


@pytest.mark.slow
def test_fuzz_readers_long(tmp_path: Path) -> None:
    """Thirty times the mutations per base file: about 10,000 files."""
    check_fuzz(run_fuzz(tmp_path, scale=30), min_files=9000)
