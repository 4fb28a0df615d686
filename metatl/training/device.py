"""Where a run computes and at what precision: ``device`` and ``precision`` of the config."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator
from pathlib import Path

import torch

from metatl.config import ConfigError

__all__ = [
    "PRECISIONS",
    "autocast",
    "grad_scaler",
    "native_bf16",
    "resolve_device",
    "resolve_precision",
]

logger = logging.getLogger(__name__)

PRECISIONS: dict[str, torch.dtype | None] = {
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` computes bf16 natively: a CUDA GPU with bf16 support, or a CPU
    with AVX-512 BF16 or AMX (elsewhere bf16 autocast is emulated and slower than fp32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    return any(flag in _cpu_flags() for flag in _CPU_BF16_FLAGS)


@functools.cache
def _cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``; empty where it cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    flags = (line.partition(":")[2] for line in text.splitlines() if line.startswith("flags"))
    return frozenset(word for line in flags for word in line.split())


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``auto`` -> ``bf16`` where :func:`native_bf16`, else ``fp32``; others unchanged."""
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(device) else "fp32"


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(name: str) -> torch.device:
    """The torch device for a config's ``device``: ``auto`` picks CUDA, then MPS, then CPU.

    Raises:
        ConfigError: If the named device is not present on this machine.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if _mps_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device={name} but CUDA is not available here (torch.cuda.is_available() is "
                "False); use device=auto or device=cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device={name} but only {torch.cuda.device_count()} CUDA device(s) are present"
            )
    if device.type == "mps" and not _mps_available():
        raise ConfigError(f"device={name} but MPS is not available here; use device=auto or cpu")
    return device


@contextlib.contextmanager
def autocast(device: torch.device | str, precision: str) -> Iterator[None]:
    """``torch.autocast`` at ``precision`` (``fp32``: no autocast at all; ``auto``: see
    :func:`resolve_precision`).

    Raises:
        ConfigError: If the device has no autocast for that dtype (e.g. fp16 on an old CPU).
    """
    precision = resolve_precision(precision, device)
    dtype = PRECISIONS[precision]
    if dtype is None:
        yield
        return
    device = torch.device(device)
    try:
        context = torch.autocast(device.type, dtype=dtype)
    except RuntimeError as err:
        raise ConfigError(f"precision={precision} is not supported on {device}: {err}") from None
    with context:
        yield


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """A loss scaler, enabled for fp16 only (bf16 has fp32's range and needs none).

    Training loops build one per run, so this is also where a slow choice is pointed out,
    and what ``precision=auto`` chose is logged.
    """
    if precision == "auto":
        precision = resolve_precision(precision, device)
        logger.info("precision=auto: %s on %s", precision, device)
    if precision == "fp16" and device.type == "cpu":
        logger.warning(
            "precision=fp16 on the CPU runs ~10x slower than fp32 (few CPUs have fp16 "
            "kernels); use precision=bf16 there (benchmarks/precision_step_time.py)"
        )
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
