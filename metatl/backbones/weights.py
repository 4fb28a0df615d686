"""Pretrained weights: named weights, local files and metatl checkpoints, offline first.

``create_backbone(name, pretrained=...)`` ends here. ``pretrained`` is

- a weight name the backbone knows (torchvision's ``IMAGENET1K_V1``, ``DEFAULT`` ...): the
  file is looked up in the standard cache (``torch.hub.get_dir()/checkpoints`` for
  torchvision) and downloaded there only when that is allowed and possible; otherwise the
  error names the file and the directory to put it in;
- a path to a state dict (the backbone's own layout or its source library's), or
- a path to a metatl checkpoint (``{"model": {"backbone.<key>": tensor, ...}, ...}``).

Files are read with ``torch.load(..., weights_only=True)`` only. A file whose name pins a
hash (torchvision's ``<name>-<first hex of sha256>.pth``) must match it.

Downloads are allowed unless ``download=False`` or the environment sets ``METATL_OFFLINE=1``.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlparse

import torch

from metatl.backbones.base import Backbone

__all__ = [
    "OFFLINE_ENV",
    "NamedWeights",
    "UnknownWeightsError",
    "WeightsError",
    "WeightsHashError",
    "WeightsNotFoundError",
    "cached_url_file",
    "download_allowed",
    "hash_prefix",
    "hub_checkpoint_dir",
    "install_weights_file",
    "load_pretrained",
    "load_state_into",
    "load_weights_file",
]

OFFLINE_ENV = "METATL_OFFLINE"
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z]+$")


class WeightsError(RuntimeError):
    """Pretrained weights cannot be resolved, read or loaded."""


class UnknownWeightsError(WeightsError):
    """A weight name the backbone does not know (the message lists the known ones)."""


class WeightsNotFoundError(WeightsError):
    """The weights file is neither cached nor downloadable (the message says where to put it)."""


class WeightsHashError(WeightsError):
    """A weights file does not have the hash published for it."""


@runtime_checkable
class NamedWeights(Protocol):
    """A backbone that knows weights by name (e.g. torchvision's ``IMAGENET1K_V1``)."""

    def weight_names(self) -> list[str]: ...

    def load_named_weights(self, name: str, *, download: bool | None = None) -> None: ...


def hub_checkpoint_dir() -> Path:
    """torch's weights cache, ``$TORCH_HOME/hub/checkpoints`` (``torch.hub.get_dir()``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def download_allowed(download: bool | None = None) -> bool:
    """``download`` if given, else True unless ``METATL_OFFLINE`` is set to a true value."""
    if download is not None:
        return download
    return os.environ.get(OFFLINE_ENV, "").strip().lower() not in ("1", "true", "yes", "on")


def hash_prefix(name: str) -> str | None:
    """The sha256 prefix a file name or URL pins (``resnet18-f37072fd.pth`` -> ``f37072fd``)."""
    match = _HASH_IN_NAME.search(Path(urlparse(name).path).name)
    return match.group(1) if match else None


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_hash(path: str | Path, prefix: str) -> None:
    """Raise :class:`WeightsHashError` unless ``sha256(path)`` starts with ``prefix``."""
    digest = file_sha256(path)
    if not digest.startswith(prefix):
        raise WeightsHashError(
            f"{path}: sha256 {digest[:16]}... does not match the published hash prefix "
            f"'{prefix}' of this file; it is corrupt or not the published weights; "
            "delete it and put the right file there"
        )


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _download(url: str, dest: Path, prefix: str | None) -> None:
    """Fetch ``url`` into ``dest`` (torch.hub checks the hash prefix). Tests replace this."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(url, str(dest), hash_prefix=prefix, progress=False)


def cached_url_file(url: str, *, download: bool | None = None, what: str = "") -> Path:
    """The local copy of the weights at ``url`` in :func:`hub_checkpoint_dir`.

    The cache is used when the file is there (its hash checked); otherwise the file is
    downloaded if :func:`download_allowed`.

    Raises:
        WeightsNotFoundError: Not cached and not downloadable; one line naming the file name
            and the directory to put it in.
        WeightsHashError: The cached or downloaded file does not match its hash prefix.
    """
    directory = hub_checkpoint_dir()
    name = Path(urlparse(url).path).name
    path = directory / name
    prefix = hash_prefix(name)
    if path.is_file():
        if prefix:
            check_hash(path, prefix)
        return path
    label = f"{what} " if what else ""
    if not download_allowed(download):
        reason = f"downloads are off ({OFFLINE_ENV}=1 or download=False)"
    else:
        try:
            _download(url, path, prefix)
            return path
        except RuntimeError as err:  # torch.hub's hash-prefix mismatch
            raise WeightsHashError(f"download of {name}: {_one_line(err)}") from None
        except OSError as err:  # URLError, HTTPError, socket and file errors
            reason = f"download failed: {_one_line(err)}"
    raise WeightsNotFoundError(
        f"{label}weights file {name} is not in {directory} and could not be fetched ({reason}); "
        f"put {name} in {directory}"
    )


def load_weights_file(path: str | Path) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with clear errors."""
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"weights file {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for bad zip/pickle data
        raise WeightsError(
            f"{path} cannot be read as weights (truncated, not a torch file, or it holds "
            f"objects other than tensors): {_one_line(err)}"
        ) from None


def _is_state_dict(obj: object) -> bool:
    return isinstance(obj, Mapping) and all(isinstance(v, torch.Tensor) for v in obj.values())


def backbone_state(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """The backbone's tensors in a loaded file: a metatl checkpoint's ``backbone.*`` keys,
    a learner state dict's ``backbone.*`` keys, or a plain state dict as it is."""
    if isinstance(obj, Mapping) and "model" in obj and _is_state_dict(obj["model"]):
        obj, checkpoint = obj["model"], True
    else:
        checkpoint = False
    if not _is_state_dict(obj):
        raise WeightsError(f"{source} holds neither a state dict nor a metatl checkpoint")
    inner = {k[len("backbone.") :]: v for k, v in obj.items() if k.startswith("backbone.")}
    if inner:
        return inner
    if checkpoint:
        raise WeightsError(f"{source} is a checkpoint whose model has no 'backbone.' keys")
    return dict(obj)


def _listed(keys: list[str]) -> str:
    return ", ".join(keys[:5]) + (f", ... ({len(keys)} in all)" if len(keys) > 5 else "")


def load_state_into(backbone: Backbone, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load ``state`` (own layout, or the source library's if the backbone converts it).

    Raises:
        WeightsError: Missing or unexpected keys, or shapes that do not fit; the message
            names ``source`` and the first offending keys.
    """
    convert = getattr(backbone, "convert_state_dict", None)
    state = convert(state) if callable(convert) else dict(state)
    own = backbone.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    name = type(backbone).__name__
    if missing or unexpected:
        raise WeightsError(
            f"{source} does not fit {name}: missing keys [{_listed(missing)}], "
            f"unexpected keys [{_listed(unexpected)}]"
        )
    wrong = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in state.items()
        if v.shape != own[k].shape
    ]
    if wrong:
        raise WeightsError(f"{source} does not fit {name}: shapes differ: {_listed(wrong)}")
    backbone.load_state_dict(state)


def load_pretrained(
    backbone: Backbone, pretrained: str | os.PathLike[str] | bool, *, download: bool | None = None
) -> Backbone:
    """Load ``pretrained`` (a weight name, a state-dict file or a metatl checkpoint) in place.

    ``True`` means ``"DEFAULT"``. A name the backbone knows wins over a file of that name.

    Raises:
        UnknownWeightsError: Neither a known weight name nor an existing file; lists the names.
        WeightsNotFoundError, WeightsHashError, WeightsError: See :func:`cached_url_file`,
            :func:`load_weights_file` and :func:`load_state_into`.
    """
    if pretrained is True:
        pretrained = "DEFAULT"
    if isinstance(pretrained, bool) or not pretrained:
        return backbone
    names = backbone.weight_names() if isinstance(backbone, NamedWeights) else []
    if isinstance(pretrained, str) and pretrained in names:
        backbone.load_named_weights(pretrained, download=download)  # type: ignore[attr-defined]
        return backbone
    path = Path(pretrained)
    if path.is_file():
        state = backbone_state(load_weights_file(path), str(path))
        load_state_into(backbone, state, str(path))
        return backbone
    label = getattr(backbone, "name", type(backbone).__name__)
    known = f"valid weight names: {', '.join(names)}" if names else "it has no named weights"
    raise UnknownWeightsError(
        f"pretrained={str(pretrained)!r} for {label} is neither a weight name nor an existing "
        f"file; {known}; or give the path of a state dict or metatl checkpoint"
    )


def install_weights_file(src: str | Path, directory: str | Path | None = None) -> Path:
    """Copy a weights file into the cache (:func:`hub_checkpoint_dir`), hash checked.

    The copy is atomic; an identical file already there is left as it is.

    Raises:
        WeightsHashError: ``src`` does not match the hash prefix its name pins.
    """
    src = Path(src)
    directory = Path(directory) if directory is not None else hub_checkpoint_dir()
    prefix = hash_prefix(src.name)
    if prefix:
        check_hash(src, prefix)
    dest = directory / src.name
    if dest.is_file() and file_sha256(dest) == file_sha256(src):
        return dest
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{src.name}.", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest
