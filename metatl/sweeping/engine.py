"""W&B's own search engine, the open-source ``sweeps`` package, imported on first use.

Suggestions (``next_run``) and early termination (``stop_runs``) come from it unchanged, so
an offline sweep searches exactly as a W&B sweep with the same spec. The package draws from
Python's and NumPy's global random generators; :func:`suggest` seeds both per trial (and
restores them after), so a sweep is reproducible and a resumed one continues as if never
stopped.
"""

from __future__ import annotations

import contextlib
import random
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from types import ModuleType
from typing import Any

import numpy as np

__all__ = [
    "INSTALL_HINT",
    "SweepsMissingError",
    "fill_defaults",
    "percentiles",
    "plain",
    "runs_to_stop",
    "schema_violations",
    "suggest",
    "sweep_run",
    "sweeps_module",
]

INSTALL_HINT = "pip install 'metatl[sweep]'"
_BAND = re.compile(r"Band: (?P<band>\d+) Metric: (?P<value>\S+) Threshold: (?P<threshold>\S+)\)")


class SweepsMissingError(ValueError):
    """The ``sweeps`` package is not installed."""


def sweeps_module() -> ModuleType:
    """The ``sweeps`` package.

    Raises:
        SweepsMissingError: It is not installed (the message says how to install it).
    """
    try:
        with warnings.catch_warnings():
            # sweeps 0.3 declares a pydantic-v1 style Config; pydantic 2 warns on import.
            warnings.simplefilter("ignore", UserWarning)
            import sweeps
    except ImportError as err:
        raise SweepsMissingError(
            f"offline sweeps need W&B's search engine, the sweeps package: {INSTALL_HINT} ({err})"
        ) from None
    return sweeps


def schema_violations(config: Mapping[str, Any]) -> list[str]:
    """What W&B's sweep-config schema finds wrong with ``config`` (empty if nothing)."""
    sweeps = sweeps_module()
    try:
        return list(sweeps.schema_violations_from_proposed_config(dict(config)))
    except ValueError as err:
        return [str(err)]


def fill_defaults(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` with W&B's defaults filled in (metric goal, hyperband ``eta``, ...); it must
    already pass :func:`schema_violations`."""
    return dict(sweeps_module().SweepConfig(dict(config)))


def sweep_run(
    name: str,
    params: Mapping[str, Any],
    state: str,
    history: Sequence[Mapping[str, Any]] = (),
    summary: Mapping[str, Any] | None = None,
) -> Any:
    """A ``sweeps.SweepRun``: the config in W&B's ``{"key": {"value": v}}`` form."""
    sweeps = sweeps_module()
    return sweeps.SweepRun(
        name=name,
        state=state,
        config={key: {"value": value} for key, value in params.items()},
        history=[dict(record) for record in history],
        summary_metrics=dict(summary or {}),
    )


def suggest(config: Mapping[str, Any], runs: Sequence[Any], *, seed: int, index: int) -> Any:
    """``sweeps.next_run`` for the ``index``-th trial, with the global generators seeded from
    ``(seed, index)``; ``None`` when the search space is exhausted (a finished grid)."""
    with _seeded(seed, index), warnings.catch_warnings():
        # Bayes search fits a Gaussian process; sklearn's convergence warnings are noise here.
        warnings.filterwarnings("ignore", module="sklearn")
        return sweeps_module().next_run(dict(config), list(runs))


def runs_to_stop(config: Mapping[str, Any], runs: Sequence[Any]) -> dict[str, str]:
    """Running runs that ``sweeps.stop_runs`` early-terminates: name -> why, e.g.
    ``hyperband band 2: val/best_accuracy 0.41 is worse than the threshold 0.55``. Empty when
    the spec has no ``early_terminate``."""
    if "early_terminate" not in config:
        return {}
    stopped = sweeps_module().stop_runs(dict(config), list(runs))
    metric = config["metric"]
    return {run.name: _why(run.name, run.early_terminate_info, metric) for run in stopped}


def percentiles(name: str, param: Mapping[str, Any], qs: Sequence[float]) -> list[Any]:
    """Values of the distribution of parameter ``name`` at the percentiles ``qs``, as the
    engine computes samples (its inverse CDF)."""
    sweeps_module()
    from sweeps.params import HyperParameter

    hyper = HyperParameter(name, dict(param))
    return [plain(hyper.ppf(q)) for q in qs]


def plain(value: Any) -> Any:
    """``value`` with NumPy scalars and arrays turned into Python ones (as JSON would)."""
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def _why(name: str, info: Mapping[str, Any] | None, metric: Mapping[str, Any]) -> str:
    """The engine's account of a stop (``Run: x Step: 2 (Band: 2 Metric: -0.41 Threshold:
    -0.55) STOP``, metrics negated when maximising) in the metric's own terms."""
    # The engine's runs share one list of lines; this run's is the one naming it.
    lines = [" ".join(str(line).split()) for line in (info or {}).get("lines", [])]
    line = next((x for x in reversed(lines) if x.startswith(f"Run: {name} ")), "")
    found = _BAND.search(line)
    if not found:
        return line or "hyperband"
    sign = -1.0 if metric.get("goal") == "maximize" else 1.0
    value, threshold = sign * float(found["value"]), sign * float(found["threshold"])
    return (
        f"hyperband band {found['band']}: {metric['name']} {value:.4g} is worse than the "
        f"threshold {threshold:.4g}"
    )


@contextlib.contextmanager
def _seeded(seed: int, index: int) -> Iterator[None]:
    py_state, np_state = random.getstate(), np.random.get_state()
    random.seed(f"metatl-sweep:{seed}:{index}")
    np.random.seed([seed, index])
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
