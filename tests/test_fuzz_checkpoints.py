"""A seeded fuzz run of the checkpoint loader.

A few hundred damaged or hostile variants of a real (tiny) checkpoint: truncated, bit-flipped,
with another magic number, with zip entries renamed or removed, with pickles that carry code,
with giant sizes declared in the zip headers or the tensor metadata; an empty file, a
directory, a FIFO. For each, :func:`load_checkpoint` returns a dict or raises
:class:`CheckpointError` with one line that names the file (and never advises
``weights_only=False``); it never raises anything else, never hangs, never runs the pickled
code and never changes the file.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import pickletools
import random
import struct
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from metatl.algorithms import ProtoNet
from metatl.backbones.conv4 import Conv4
from metatl.config import RunConfig, config_to_dict
from metatl.training.checkpoint import (
    CheckpointError,
    checkpoint_config,
    load_checkpoint,
    save_checkpoint,
)
from tests.conftest import TookTooLong, deadline

SEED = 20240611
SECONDS = 5.0  # per load


@dataclass(frozen=True)
class Case:
    kind: str
    detail: str
    make: Callable[[Path], Path]  # writes the case under a directory, returns what to load


class Payload:
    """Unpickling it would run ``os.system``; the command creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., object], tuple[object, ...]]:
        return os.system, (f"touch {self.marker}",)


class ExecPayload(Payload):
    def __reduce__(self) -> tuple[Callable[..., object], tuple[object, ...]]:
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A real checkpoint: a Conv-4 ProtoNet (8 filters, a few KB) with a config."""
    torch.manual_seed(0)
    learner = ProtoNet(Conv4(hidden=8))
    path = tmp_path_factory.mktemp("original") / "best.pt"
    save_checkpoint(
        path,
        {
            "model": learner.state_dict(),
            "config": config_to_dict(RunConfig()),
            "step": 3,
            "val": {"accuracy": 0.5, "ci95": 0.1, "step": 3},
        },
    )
    return path.read_bytes()


# ---- the mutations ------------------------------------------------------------------------


def _file(name: str, data: bytes) -> Callable[[Path], Path]:
    def make(directory: Path) -> Path:
        path = directory / name
        path.write_bytes(data)
        return path

    return make


def _entries(data: bytes) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return [(info.filename, archive.read(info)) for info in archive.infolist()]


def _zip(entries: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        for name, payload in entries:
            archive.writestr(name, payload)
    return out.getvalue()


def _offsets(data: bytes, signature: bytes) -> list[int]:
    found, start = [], 0
    while (i := data.find(signature, start)) >= 0:
        found.append(i)
        start = i + 1
    return found


def truncations(data: bytes, rng: random.Random) -> Iterator[Case]:
    # Every structure boundary (each header start, +-1), the last bytes, and random points.
    marks = {0, 1, 3, 4, 29, 30, len(data) - 1, len(data) - 2, len(data) - 21, len(data) - 23}
    for signature in (b"PK\x03\x04", b"PK\x01\x02", b"PK\x06\x06", b"PK\x06\x07", b"PK\x05\x06"):
        for offset in _offsets(data, signature):
            marks |= {offset - 1, offset, offset + 1}
    marks |= {rng.randrange(len(data)) for _ in range(40)}
    for cut in sorted(m for m in marks if 0 <= m < len(data)):
        yield Case("truncate", f"at {cut} of {len(data)}", _file("best.pt", data[:cut]))


def bit_flips(data: bytes, rng: random.Random) -> Iterator[Case]:
    pickle_at = data.index(b"archive/data.pkl") + len(b"archive/data.pkl")
    central = data.index(b"PK\x01\x02")
    regions = [
        ("anywhere", 0, len(data)),
        ("local headers and data.pkl", 0, pickle_at + 5_000),
        ("central directory and end records", central, len(data)),
    ]
    for region, start, end in regions:
        for _ in range(50):
            offset = rng.randrange(start, min(end, len(data)))
            mutated = bytearray(data)
            mutated[offset] ^= 1 << rng.randrange(8)
            yield Case("bit flip", f"{region}: byte {offset}", _file("best.pt", bytes(mutated)))


def wrong_magic(data: bytes) -> Iterator[Case]:
    for magic in (
        b"PK\x05\x06",
        b"\x00\x00\x00\x00",
        b"\x80\x02\x8a\x0a",
        b"\x7fELF",
        b"PK\x03\x05",
    ):
        yield Case("wrong magic", repr(magic), _file("best.pt", magic + data[4:]))


def entry_edits(data: bytes) -> Iterator[Case]:
    entries = _entries(data)
    names = [name for name, _ in entries]
    for name in names:
        yield Case(
            "entry removed",
            name,
            _file("best.pt", _zip([(n, p) for n, p in entries if n != name])),
        )
    renames = {
        "archive/data.pkl": ["archive/data.pk1", "other/data.pkl", "archive/constants.pkl"],
        "archive/data/0": ["archive/data/00", "archive/data/999"],
        "archive/byteorder": ["archive/byteorder2"],
    }
    for old, news in renames.items():
        for new in news:
            renamed = [(new if n == old else n, p) for n, p in entries]
            yield Case("entry renamed", f"{old} -> {new}", _file("best.pt", _zip(renamed)))
    swapped = [
        (n, dict(entries)["archive/data/1"] if n == "archive/data/0" else p) for n, p in entries
    ]
    yield Case("entry swapped", "data/0 holds data/1", _file("best.pt", _zip(swapped)))
    yield Case("entries", "none", _file("best.pt", _zip([])))
    yield Case("entries", "flat names", _file("best.pt", _zip([("data.pkl", entries[0][1])])))
    deflated = io.BytesIO()
    with zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, payload in entries:
            archive.writestr(name, payload)
    yield Case("entries", "deflated", _file("best.pt", deflated.getvalue()))


def _long1(value: int) -> bytes:
    raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def giant_sizes(data: bytes) -> Iterator[Case]:
    # In the zip: the central directory's sizes of an entry, the zip64 end record's counts
    # and offsets, the file name length.
    for at in _offsets(data, b"PK\x01\x02")[:3] + _offsets(data, b"PK\x01\x02")[-1:]:
        for field, value in ((20, 0xFFFFFFFE), (24, 0xFFFFFFFE), (20, len(data)), (28, 0xFFFF)):
            mutated = bytearray(data)
            width = 2 if field == 28 else 4
            mutated[at + field : at + field + width] = value.to_bytes(width, "little")
            yield Case(
                "giant zip size",
                f"entry at {at}, field +{field} = {value}",
                _file("best.pt", bytes(mutated)),
            )
    for at in _offsets(data, b"PK\x06\x06"):
        for field in (24, 32, 40, 48):  # entries on disk, entries, directory size, offset
            mutated = bytearray(data)
            mutated[at + field : at + field + 8] = (2**62).to_bytes(8, "little")
            yield Case(
                "giant zip size", f"zip64 end record +{field}", _file("best.pt", bytes(mutated))
            )
    for at in _offsets(data, b"PK\x05\x06"):
        for field in (8, 10, 12, 16):
            mutated = bytearray(data)
            width = 2 if field < 12 else 4
            mutated[at + field : at + field + width] = b"\xff" * width
            yield Case("giant zip size", f"end record +{field}", _file("best.pt", bytes(mutated)))
    # In the tensor metadata, with the CRC made to match: the first storage's byte count, the
    # first tensor's storage offset and its first dimension.
    entries = _entries(data)
    pkl = dict(entries)["archive/data.pkl"]
    ops = list(pickletools.genops(pkl))
    persid = next(i for i, (op, _, _) in enumerate(ops) if op.name == "BINPERSID")
    targets = {"storage numel": persid - 3, "storage offset": persid + 1, "tensor size": persid + 3}
    for what, index in targets.items():
        start, stop = ops[index][2], ops[index + 1][2]
        for value in (-1, 2**31, 2**40, 2**62, 2**70):
            mutated = pkl[:start] + _long1(value) + pkl[stop:]
            rebuilt = [(n, mutated if n.endswith("data.pkl") else p) for n, p in entries]
            yield Case("giant tensor size", f"{what} {value}", _file("best.pt", _zip(rebuilt)))


def code_pickles(data: bytes, marker: Path) -> Iterator[Case]:
    entries = _entries(data)
    for payload_class in (Payload, ExecPayload):
        evil = payload_class(marker)
        name = payload_class.__name__
        for protocol in (0, 2, 4, 5):
            pkl = pickle.dumps(evil, protocol=protocol)
            yield Case(
                "code",
                f"{name} as data.pkl, protocol {protocol}",
                _file("best.pt", _zip([("archive/data.pkl", pkl), *entries[1:]])),
            )
        nested = pickle.dumps({"format_version": 1, "model": {"w": evil}}, protocol=2)
        yield Case(
            "code",
            f"{name} inside the model dict",
            _file("best.pt", _zip([("archive/data.pkl", nested), *entries[1:]])),
        )
        yield Case("code", f"{name} as a bare pickle", _file("best.pt", pickle.dumps(evil)))

        def saved(directory: Path, evil: Payload = evil, legacy: bool = False) -> Path:
            path = directory / "best.pt"
            torch.save(
                {"format_version": 1, "model": {}, "x": evil},
                path,
                _use_new_zipfile_serialization=not legacy,
            )
            return path

        yield Case("code", f"{name} in torch.save's zip", saved)
        yield Case(
            "code", f"{name} in torch.save's legacy format", lambda d, e=evil: saved(d, e, True)
        )
    # A hand-written pickle: GLOBAL posix system, via the memo.
    command = f"touch {marker}".encode()
    hand = (
        b"\x80\x02cposix\nsystem\nq\x00h\x00X"
        + struct.pack("<I", len(command))
        + command
        + b"\x85R."
    )
    yield Case(
        "code",
        "hand-written GLOBAL via the memo",
        _file("best.pt", _zip([("archive/data.pkl", hand), *entries[1:]])),
    )


def special_files() -> Iterator[Case]:
    yield Case("special", "empty file", _file("best.pt", b""))

    def directory(d: Path) -> Path:
        (d / "run").mkdir()
        return d / "run"

    def directory_best(d: Path) -> Path:
        (d / "run" / "best.pt").mkdir(parents=True)
        return d / "run"

    def fifo(d: Path) -> Path:
        os.mkfifo(d / "best.pt")
        return d / "best.pt"

    yield Case("special", "a run directory without best.pt", directory)
    yield Case("special", "best.pt is a directory", directory_best)
    yield Case("special", "a FIFO", fifo)
    yield Case("special", "missing", lambda d: d / "nothing.pt")


def all_cases(data: bytes, marker: Path) -> list[Case]:
    rng = random.Random(SEED)
    return [
        *truncations(data, rng),
        *bit_flips(data, rng),
        *wrong_magic(data),
        *entry_edits(data),
        *giant_sizes(data),
        *code_pickles(data, marker),
        *special_files(),
    ]


# ---- the run --------------------------------------------------------------------------------


def _digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def _same(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def check(case: Case, directory: Path, marker: Path, expected: dict) -> tuple[str, str]:
    """Load one case; ``(outcome, problem)`` with ``problem`` empty when all holds: refused
    in one line naming the file, or loaded with exactly the original's content."""
    directory.mkdir()
    target = case.make(directory)
    shown = target / "best.pt" if target.is_dir() else target
    before = _digest(shown) if not shown.is_fifo() else None
    started = time.perf_counter()
    try:
        with deadline(SECONDS):
            result = load_checkpoint(target)
    except TookTooLong:
        return "hung", f"no answer within {SECONDS} s"
    except CheckpointError as err:
        message = str(err)
        outcome = "refused"
        if "\n" in message or str(shown) not in message or "weights_only" in message:
            return outcome, f"message {message!r}"
    except Exception as err:  # any other type is the bug looked for
        return "crashed", f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"
    else:
        outcome = "loaded"
        if not _same(result, expected):
            return outcome, "loaded other content than the original's"
    elapsed = time.perf_counter() - started
    if elapsed >= SECONDS:
        return outcome, f"took {elapsed:.1f} s"
    if marker.exists():
        return outcome, "ran the pickled code"
    if not shown.is_fifo() and _digest(shown) != before:
        return outcome, "changed the file"
    return outcome, ""


def test_fuzz_checkpoint_loader(original: bytes, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    expected = torch.load(io.BytesIO(original), weights_only=True)
    cases = all_cases(original, marker)
    assert len(cases) >= 300
    failures, outcomes = [], {}
    started = time.perf_counter()
    for i, case in enumerate(cases):
        outcome, problem = check(case, tmp_path / f"case{i:04d}", marker, expected)
        outcomes[case.kind, outcome] = outcomes.get((case.kind, outcome), 0) + 1
        if problem:
            failures.append(f"{case.kind} ({case.detail}): {outcome}, {problem}")
    elapsed = time.perf_counter() - started
    print(f"{len(cases)} cases in {elapsed:.1f} s: {outcomes}")
    assert not failures, f"{len(failures)} of {len(cases)} cases failed:\n" + "\n".join(failures)
    # Code is always refused; damaged structure is refused, not loaded.
    assert not any(kind == "code" and outcome == "loaded" for kind, outcome in outcomes)
    assert not any(
        kind in ("truncate", "wrong magic", "giant tensor size") and outcome == "loaded"
        for kind, outcome in outcomes
    )


def test_messages_say_damaged_or_code_and_never_suggest_weights_only_false(
    original: bytes, tmp_path: Path
) -> None:
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(original[: len(original) // 2])
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(truncated)
    assert str(err.value) == (
        f"checkpoint {truncated} is truncated or corrupt (the zip directory at the end of the "
        "file is missing or damaged)"
    )
    flipped = bytearray(original)
    flipped[-5_000] ^= 0x04  # in the tensor data: torch.load alone would load it
    (tmp_path / "flipped.pt").write_bytes(bytes(flipped))
    with pytest.raises(
        CheckpointError,
        match=r"flipped.pt is truncated or corrupt \(a zip entry fails its CRC-32 check\)$",
    ):
        load_checkpoint(tmp_path / "flipped.pt")

    marker = tmp_path / "pwned"
    code = tmp_path / "code.pt"
    torch.save({"format_version": 1, "model": {}, "x": Payload(marker)}, code)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(code)
    assert str(err.value) == (
        f"checkpoint {code} holds objects other than tensors and plain data (e.g. code; it "
        "refers to posix.system); metatl never loads such files"
    )
    assert not marker.exists()


def test_a_checkpoint_without_config_says_so(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "best.pt", {"model": {}})
    checkpoint = load_checkpoint(path)
    with pytest.raises(CheckpointError) as err:
        checkpoint_config(checkpoint, path)
    assert str(err.value) == (
        f"checkpoint {path} has no config (not written by python -m metatl.train/pretrain?)"
    )
    stored = save_checkpoint(
        tmp_path / "ok.pt", {"model": {}, "config": config_to_dict(RunConfig())}
    )
    config = checkpoint_config(load_checkpoint(stored), stored, ["test.way=3"])
    assert config.test.way == 3
