"""Offline W&B sweeps: the spec files of ``wandb sweep``, searched by W&B's own engine (the
``sweeps`` package, ``pip install 'metatl[sweep]'``), with each trial a normal
``python -m metatl.train`` run started as W&B's agent would start it."""

from metatl.sweeping.command import expand_command, format_value, macro_args
from metatl.sweeping.engine import INSTALL_HINT, SweepsMissingError
from metatl.sweeping.loop import SweepController
from metatl.sweeping.report import rank_trials, ranking_table, write_report, write_results
from metatl.sweeping.runner import TrialLaunch, TrialProcess, launch_subprocess
from metatl.sweeping.spec import SweepSpec, SweepSpecError, load_spec, spec_from_dict
from metatl.sweeping.state import SweepState, Trial, new_sweep_dir, read_run

__all__ = [
    "INSTALL_HINT",
    "SweepController",
    "SweepSpec",
    "SweepSpecError",
    "SweepState",
    "SweepsMissingError",
    "Trial",
    "TrialLaunch",
    "TrialProcess",
    "expand_command",
    "format_value",
    "launch_subprocess",
    "load_spec",
    "macro_args",
    "new_sweep_dir",
    "rank_trials",
    "ranking_table",
    "read_run",
    "spec_from_dict",
    "write_report",
    "write_results",
]
