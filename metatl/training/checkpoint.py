"""Checkpoints: written atomically, read with clear errors.

Reading never runs code from the file and never trusts it: before ``torch.load`` (always with
``weights_only=True``) the zip archive that ``torch.save`` writes is checked entry by entry
(layout, declared sizes against the file's, CRC-32 of every entry, which ``torch.load`` does
not check), so that a damaged file is reported as such instead of loading wrong weights, and
a file whose pickle refers to code is named for what it is.
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import torch

from metatl.atomic_io import write_atomic
from metatl.config import ConfigError, RunConfig, config_from_dict

__all__ = ["CheckpointError", "checkpoint_config", "load_checkpoint", "save_checkpoint"]

FORMAT_VERSION = 1

_ZIP_MAGIC = b"PK\x03\x04"
_CHUNK = 1 << 20


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, corrupt or not a metatl checkpoint."""


class _DamagedError(Exception):
    """Internal: why an archive is truncated or corrupt (a short reason, our own words)."""


class _ForeignError(Exception):
    """Internal: the file is intact but of another kind (what it is, our own words)."""


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``path`` via a temporary file and an atomic rename.

    A crash mid-write leaves the previous file intact, never a truncated one.
    """
    return write_atomic(
        path, lambda f: torch.save({"format_version": FORMAT_VERSION, **payload}, f)
    )


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    ``path`` may be a run directory, in which case its ``best.pt`` is read. The file is
    opened once and only read.

    Raises:
        CheckpointError: Missing file; a truncated or corrupt one (not a zip archive, an
            entry past the end of the file, a failed CRC check, ...); one whose pickle holds
            objects other than tensors and plain data (e.g. code), which is never loaded; or
            one that is not a metatl checkpoint. The message is one line naming the file.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "best.pt"
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a regular file")
    try:
        with open(path, "rb") as file:
            payload = _load(file, path)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise CheckpointError(f"checkpoint {path} cannot be read: {reason}") from None
    if not isinstance(payload, dict) or "format_version" not in payload or "model" not in payload:
        raise CheckpointError(f"{path} is not a metatl checkpoint (no model/format_version)")
    return payload


def checkpoint_config(
    checkpoint: Mapping[str, Any], path: str | Path, overrides: Sequence[str] = ()
) -> RunConfig:
    """The run config a checkpoint was written with, with ``key=value`` overrides on top.

    Args:
        checkpoint: What :func:`load_checkpoint` returned.
        path: The file it was read from (for the messages).
        overrides: Dotted ``key=value`` overrides, as for :func:`metatl.config.load_config`.

    Raises:
        CheckpointError: The checkpoint has no config, or one this version cannot read.
        ConfigError: An override is invalid.
    """
    values = checkpoint.get("config")
    if not isinstance(values, dict):
        raise CheckpointError(
            f"checkpoint {path} has no config (not written by python -m metatl.train/pretrain?)"
        )
    try:
        config_from_dict(values)
    except ConfigError as err:
        raise CheckpointError(
            f"checkpoint {path} has a config this metatl cannot read: {err}"
        ) from None
    return config_from_dict(values, overrides)


def _load(file: IO[bytes], path: Path) -> Any:
    """Check ``file``'s archive, then ``torch.load`` it; every failure a CheckpointError."""
    try:
        data_pkl = _check_archive(file)
    except _DamagedError as why:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({why})") from None
    except _ForeignError as what:
        raise CheckpointError(f"checkpoint {path} is {what}") from None
    file.seek(0)
    try:
        with warnings.catch_warnings():
            # Said of any pickle protocol but torch.save's own (2), i.e. of foreign files only.
            warnings.filterwarnings("ignore", "Detected pickle protocol", UserWarning)
            return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # The weights-only unpickler refused an intact, well-formed pickle: it refers to
        # something other than tensors and plain data. (torch's own message would suggest
        # weights_only=False, which is exactly what must not be done with such a file.)
        if _is_well_formed(data_pkl):
            raise CheckpointError(_holds_objects(path, data_pkl)) from None
        reason = "its pickle is malformed"
    except Exception:  # torch raises many types for inconsistent records and metadata
        reason = "its tensor records do not match their description"
    raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({reason})")


def _check_archive(file: IO[bytes]) -> bytes:
    """Check the zip archive ``torch.save`` writes and return its ``data.pkl``.

    Raises:
        _DamagedError: With the reason, in our own words.
        _ForeignError: An intact file of another kind: a bare pickle, a TorchScript archive.
    """
    head = file.read(len(_ZIP_MAGIC))
    if not head:
        raise _DamagedError("the file is empty")
    if head != _ZIP_MAGIC:
        if head.startswith(b"\x80"):  # pickle's PROTO opcode
            raise _ForeignError(
                "a bare pickle, not the zip archive torch.save writes; metatl never loads such "
                "files"
            )
        raise _DamagedError("not a zip archive")
    size = os.fstat(file.fileno()).st_size
    file.seek(0)
    try:
        with zipfile.ZipFile(file) as archive:
            entries = archive.infolist()
            data_pkl = _find_data_pkl(entries)
            for entry in entries:
                _check_entry(archive, entry, size)
            return archive.read(data_pkl)
    except (_DamagedError, _ForeignError):
        raise
    except zipfile.BadZipFile as err:
        raise _DamagedError(_describe_bad_zip(err)) from None
    except EOFError:
        raise _DamagedError("an entry ends past the end of the file") from None
    except Exception:  # zipfile raises ValueError, struct.error, ... on crafted headers
        raise _DamagedError("its zip directory is damaged") from None


def _find_data_pkl(entries: Sequence[zipfile.ZipInfo]) -> zipfile.ZipInfo:
    if not entries:
        raise _DamagedError("the zip archive is empty")
    prefixes = {e.filename.split("/", 1)[0] for e in entries}
    if len(prefixes) != 1 or any("/" not in e.filename for e in entries):
        raise _DamagedError("its zip entries are not under one folder, as torch.save writes them")
    names = {e.filename.split("/", 1)[1]: e for e in entries}
    if "constants.pkl" in names:
        raise _ForeignError("a TorchScript archive (torch.jit.save), not a checkpoint")
    if "data.pkl" not in names:
        raise _DamagedError("no data.pkl in the zip archive")
    return names["data.pkl"]


def _check_entry(archive: zipfile.ZipFile, entry: zipfile.ZipInfo, size: int) -> None:
    """Declared sizes within the file, stored (as torch.save writes), CRC-32 intact."""
    if entry.compress_type != zipfile.ZIP_STORED:
        raise _DamagedError(f"entry {_name(entry)} is compressed, which torch.save never does")
    if entry.flag_bits & 0x1:
        raise _DamagedError(f"entry {_name(entry)} is encrypted")
    if entry.compress_size != entry.file_size:
        raise _DamagedError(f"entry {_name(entry)} declares two different sizes")
    if entry.header_offset + entry.file_size > size:
        raise _DamagedError(
            f"entry {_name(entry)} declares {entry.file_size} bytes, more than the file holds"
        )
    with archive.open(entry) as data:  # zipfile checks the CRC-32 once all is read
        while data.read(_CHUNK):
            pass


def _describe_bad_zip(err: zipfile.BadZipFile) -> str:
    text = str(err)
    if text.startswith("Bad CRC-32"):
        return "a zip entry fails its CRC-32 check"
    if "central directory" in text or "not a zip file" in text.lower():
        return "the zip directory at the end of the file is missing or damaged"
    return "its zip headers are damaged"


def _name(entry: zipfile.ZipInfo) -> str:
    return ascii(entry.filename[:80])


def _is_well_formed(data_pkl: bytes) -> bool:
    """Whether ``data_pkl`` parses as one whole pickle (read, never run)."""
    try:
        for _ in pickletools.genops(io.BytesIO(data_pkl)):
            pass
    except Exception:
        return False
    return True


def _holds_objects(path: Path, data_pkl: bytes) -> str:
    names = sorted(_globals(data_pkl) - _allowed_globals())
    named = f"; it refers to {', '.join(names[:3])}" if names else ""
    return (
        f"checkpoint {path} holds objects other than tensors and plain data (e.g. code"
        f"{named}); metatl never loads such files"
    )


def _globals(data_pkl: bytes) -> set[str]:
    """``module.name`` of each global a well-formed pickle refers to, read and never run
    (STACK_GLOBAL's two names are followed through the memo), as short ASCII."""
    found: set[str] = set()
    pushed: list[str | None] = []  # what each opcode pushed: its string, or None
    memo: dict[Any, str | None] = {}
    for op, arg, _ in pickletools.genops(io.BytesIO(data_pkl)):
        name = op.name
        if name in ("GLOBAL", "INST"):
            found.add(str(arg).replace(" ", "."))
            pushed.append(None)
        elif name == "STACK_GLOBAL":
            module, attr = pushed[-2:] if len(pushed) >= 2 else (None, None)
            if module is not None and attr is not None:
                found.add(f"{module}.{attr}")
            pushed.append(None)
        elif name == "MEMOIZE":
            memo[len(memo)] = pushed[-1] if pushed else None
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[arg] = pushed[-1] if pushed else None
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            pushed.append(memo.get(arg))
        elif name in ("PROTO", "FRAME", "STOP"):
            continue
        else:
            pushed.append(arg if isinstance(arg, str) and "UNICODE" in name else None)
    return {ascii(n)[1:-1][:80] for n in found}


def _allowed_globals() -> set[str]:
    """What torch's weights-only unpickler accepts (only to leave those out of the names)."""
    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        return set(_get_allowed_globals())
    except Exception:  # a private helper: fall back to what a state dict refers to
        return {"collections.OrderedDict", "torch._utils._rebuild_tensor_v2"}
