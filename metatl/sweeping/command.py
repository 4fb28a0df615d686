"""A trial's command line, with the macros of a sweep spec expanded as W&B's agent does.

The agent (``wandb agent``, see ``wandb/wandb_agent.py`` and
``wandb/sdk/launch/sweeps/utils.py``) writes each parameter as ``f"{key}={value}"``, that is
with Python's ``str``: ``True``, ``[1, 5]``, ``1e-05``, ``None``. The train CLI reads all of
these back (``--key=value``, ``key=value`` and ``--key value``), so a trial started here gets
exactly the arguments an agent would give it.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "ARGS_MACROS",
    "DEFAULT_COMMAND",
    "expand_command",
    "format_value",
    "macro_args",
]

# The agent's command when the spec has none.
DEFAULT_COMMAND: tuple[str, ...] = ("${env}", "${interpreter}", "${program}", "${args}")
# The argument forms ``metatl.config.parse_overrides`` reads, in order of preference.
ARGS_MACROS: tuple[str, ...] = ("${args_no_hyphens}", "${args}", "${args_no_equals}")
_ENVVAR = re.compile(r"\$\{envvar:([A-Z0-9_]*)\}")


def format_value(value: Any) -> str:
    """A parameter value as the agent writes it on the command line (``str``)."""
    return f"{value}"


def macro_args(params: Mapping[str, Any]) -> dict[str, list[str]]:
    """Every ``${args...}`` macro's expansion for ``params`` (dotted key -> value).

    Mirrors ``create_sweep_command_args`` of wandb: ``args`` (``--k=v``), ``args_no_hyphens``
    (``k=v``), ``args_no_equals`` (``--k v``), ``args_no_boolean_flags`` (``--k`` for true,
    nothing for false), ``args_json`` (one JSON object), ``args_append_hydra`` (``+k=v``),
    ``args_override_hydra`` (``++k=v``).
    """
    flags, no_hyphens, no_equals, no_booleans = [], [], [], []
    hydra_append, hydra_override = [], []
    for key, value in params.items():
        flag = f"{key}={format_value(value)}"
        flags.append(f"--{flag}")
        no_hyphens.append(flag)
        no_equals += [f"--{key}", format_value(value)]
        hydra_append.append(f"+{flag}")
        hydra_override.append(f"++{flag}")
        if isinstance(value, bool):
            no_booleans += [f"--{key}"] if value else []
        else:
            no_booleans.append(f"--{flag}")
    return {
        "args": flags,
        "args_no_equals": no_equals,
        "args_no_hyphens": no_hyphens,
        "args_no_boolean_flags": no_booleans,
        "args_json": [json.dumps(dict(params))],
        "args_append_hydra": hydra_append,
        "args_override_hydra": hydra_override,
    }


def expand_command(
    command: Sequence[str] | None,
    params: Mapping[str, Any],
    *,
    program: str | None = None,
    interpreter: str = sys.executable,
    args_json_file: str | Path | None = None,
) -> list[str]:
    """The argv of a trial: ``command`` (default :data:`DEFAULT_COMMAND`) with its macros
    replaced, as the agent does.

    ``${envvar:NAME}`` inside an item becomes the variable's value (or ``NAME`` if unset). An
    item that is a whole ``${macro}`` becomes the macro's list: ``${env}`` is
    ``/usr/bin/env`` (dropped on Windows), ``${interpreter}`` is ``interpreter`` (the agent
    says ``python``; here the running interpreter, so the trial uses the same environment),
    ``${program}`` the spec's program, ``${args_json_file}`` the path of a file holding
    ``${args_json}`` (written here), and the ``${args...}`` forms of :func:`macro_args`.
    Unknown macros expand to nothing, as in the agent.

    Raises:
        ValueError: ``${program}`` without a program.
    """
    items = [str(item) for item in (command or DEFAULT_COMMAND)]
    values: dict[str, list[str]] = dict(macro_args(params))
    values["interpreter"] = [interpreter]
    values["env"] = [] if os.name == "nt" else ["/usr/bin/env"]
    if "${program}" in items:
        if not program:
            raise ValueError("the sweep's command uses ${program} but the spec has no program")
        values["program"] = [program]
    if "${args_json_file}" in items:
        if args_json_file is None:
            raise ValueError("the sweep's command uses ${args_json_file}: give args_json_file")
        Path(args_json_file).parent.mkdir(parents=True, exist_ok=True)
        Path(args_json_file).write_text(values["args_json"][0])
        values["args_json_file"] = [str(args_json_file)]
    argv: list[str] = []
    for item in items:
        item = _ENVVAR.sub(lambda m: os.environ.get(m.group(1), m.group(1)), item)
        if item.startswith("${") and item.endswith("}"):
            argv += values.get(item[2:-1]) or []
        else:
            argv.append(item)
    return argv
