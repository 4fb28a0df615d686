"""Run tracking behind a small protocol: the always-on JSONL log, optionally W&B.

Importing this package does not import ``wandb``; only starting a W&B run does.
"""

from metatl.tracking.base import Tracker
from metatl.tracking.factory import config_keys, create_tracker, sweep_overrides
from metatl.tracking.jsonl import JsonlTracker, read_jsonl
from metatl.tracking.multi import MultiTracker
from metatl.tracking.wandb_tracker import WandbTracker, resolve_mode

__all__ = [
    "JsonlTracker",
    "MultiTracker",
    "Tracker",
    "WandbTracker",
    "config_keys",
    "create_tracker",
    "read_jsonl",
    "resolve_mode",
    "sweep_overrides",
]
