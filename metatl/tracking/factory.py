"""A run's tracker from its config, and W&B sweep parameters as config overrides."""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from metatl.config import RunConfig, config_to_dict, flatten
from metatl.tracking.base import Tracker
from metatl.tracking.jsonl import JsonlTracker
from metatl.tracking.multi import MultiTracker
from metatl.tracking.wandb_tracker import WandbTracker, is_main_process, resolve_mode

__all__ = ["config_keys", "create_tracker", "format_override_value", "sweep_overrides"]

logger = logging.getLogger(__name__)


def create_tracker(config: RunConfig, run_dir: str | Path, *, resume: bool = False) -> Tracker:
    """The tracker of a run: ``run_dir/metrics.jsonl``, plus W&B unless it is disabled.

    The config is not logged here: call ``tracker.log_config`` so that both receive it.

    Args:
        config: The run config; ``tracking.wandb`` configures W&B.
        run_dir: The run directory.
        resume: Continue the W&B run recorded in ``run_dir`` (see :class:`WandbTracker`).

    Raises:
        ValueError: W&B could not start a run; the message names the keys to change.
    """
    run_dir = Path(run_dir)
    jsonl = JsonlTracker(run_dir / "metrics.jsonl")
    trackers: list[Tracker] = [jsonl]
    try:
        if resolve_mode(config.tracking.wandb.mode) != "disabled" and is_main_process():
            trackers.append(WandbTracker(config.tracking.wandb, run_dir, resume=resume))
    except BaseException:
        jsonl.close()
        raise
    return MultiTracker(trackers)


def config_keys() -> list[str]:
    """Every dotted leaf key of :class:`RunConfig`, e.g. ``model.maml.inner_lr``, sorted."""
    return sorted(flatten(config_to_dict(RunConfig())))


def sweep_overrides(keys: Iterable[str] | None = None) -> list[str]:
    """The parameters of the active W&B run (a sweep agent's) as ``key=value`` overrides.

    ``wandb.agent(sweep_id, function=...)`` starts a run whose config holds the sampled
    parameters, keyed by dotted config keys (``model.maml.inner_lr: 0.1``) or nested; apply
    the result on top of the run config. Without an active run, or when ``wandb`` was never
    imported, this is ``[]`` (and does not import ``wandb``).

    Args:
        keys: The dotted keys to take; default :func:`config_keys`. Other keys of the W&B
            config are ignored (with a warning when they are dotted, likely a typo).
    """
    wandb = sys.modules.get("wandb")
    run = getattr(wandb, "run", None) if wandb is not None else None
    if run is None:
        return []
    known = set(config_keys() if keys is None else keys)
    values = flatten(dict(run.config))
    unknown = sorted(k for k in values if k not in known and "." in k)
    if unknown:
        logger.warning("W&B run config keys that are not config keys, ignored: %s", unknown)
    return [f"{k}={format_override_value(values[k])}" for k in sorted(values) if k in known]


def format_override_value(value: Any) -> str:
    """``value`` written so that OmegaConf's dotlist parsing gives it back: ``[1,5]``,
    ``true``, ``null``, floats by ``repr``, strings bare unless they would read as
    something else (``'1e-3'``, ``'true'``), then quoted.

    Raises:
        ValueError: A value that has no dotlist form (a mapping, an arbitrary object).
    """
    text = _format(value, in_list=False)
    if not _same(_parse(text), value):
        raise ValueError(f"cannot write {value!r} as a config override value")
    return text


def _format(value: Any, *, in_list: bool) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return ".nan"
        if math.isinf(value):
            return ".inf" if value > 0 else "-.inf"
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(_format(v, in_list=True) for v in value) + "]"
    if isinstance(value, str):
        special = in_list and any(c in value for c in ",[]{}'\"")
        return json.dumps(value) if special or not _same(_parse(value), value) else value
    raise ValueError(f"cannot write {value!r} as a config override value")


def _parse(text: str) -> Any:
    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist([f"v={text}"]))["v"]
    except Exception:  # anything unparsable is "not the same value"
        return _Unparsable


class _Unparsable:
    pass


def _same(parsed: Any, value: Any) -> bool:
    if isinstance(value, list | tuple):
        return (
            isinstance(parsed, list)
            and len(parsed) == len(value)
            and all(_same(p, v) for p, v in zip(parsed, value, strict=True))
        )
    if isinstance(value, float) and math.isnan(value):
        return isinstance(parsed, float) and math.isnan(parsed)
    return type(parsed) is type(value) and parsed == value
