"""Run tracking behind a small protocol."""

from metatl.tracking.base import Tracker
from metatl.tracking.jsonl import JsonlTracker, read_jsonl

__all__ = ["JsonlTracker", "Tracker", "read_jsonl"]
