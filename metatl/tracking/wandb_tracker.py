"""Weights & Biases behind the tracker protocol.

``wandb`` is imported inside the functions that need it, so importing :mod:`metatl` never
imports it (it is slow to import and starts a service process on ``wandb.init``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from metatl.config import WandbConfig

__all__ = [
    "RUN_ID_FILE",
    "STEP_METRIC",
    "WandbTracker",
    "has_api_key",
    "is_main_process",
    "resolve_mode",
]

RUN_ID_FILE = "wandb_run_id"
"""File in the run directory holding the W&B run id, so a resumed run continues it."""
STEP_METRIC = "trainer/step"
"""The x-axis of every W&B chart: our training step, not W&B's own per-call counter."""

MODES = ("auto", "online", "offline", "disabled")
_ENV_MODES = {
    "online": "online",
    "run": "online",
    "offline": "offline",
    "dryrun": "offline",
    "disabled": "disabled",
}


def resolve_mode(mode: str) -> str:
    """The W&B mode a run uses: ``online``, ``offline`` or ``disabled``.

    ``auto`` follows the environment variable ``WANDB_MODE`` when it is set, else is
    ``online`` when W&B credentials are configured (:func:`has_api_key`) and ``offline``
    otherwise. Any other mode is returned as is.

    Raises:
        ValueError: ``mode`` or ``WANDB_MODE`` is not a known mode.
    """
    if mode not in MODES:
        raise ValueError(
            f"tracking.wandb.mode={mode!r} is not allowed; choose one of: {', '.join(MODES)}"
        )
    if mode != "auto":
        return mode
    env_mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if env_mode:
        if env_mode not in _ENV_MODES:
            raise ValueError(
                f"WANDB_MODE={env_mode!r} is not a W&B mode; unset it or set "
                "tracking.wandb.mode=online, offline or disabled"
            )
        return _ENV_MODES[env_mode]
    return "online" if has_api_key() else "offline"


def has_api_key() -> bool:
    """Whether W&B credentials are configured, without touching the network.

    Looks where ``wandb.init`` looks: ``WANDB_API_KEY``, ``WANDB_IDENTITY_TOKEN_FILE``, the
    netrc file (``NETRC`` or ``~/.netrc``) and W&B's settings files, for the configured host.
    """
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    import wandb

    try:
        from wandb.sdk import wandb_setup
        from wandb.sdk.lib import wbauth
    except ImportError:  # an older wandb: its wandb.api reads the same sources
        return bool(wandb.api.api_key)
    try:
        settings = wandb_setup.singleton().settings
        host = wbauth.HostUrl(settings.base_url, app_url=settings.app_url)
        auth = wbauth.authenticate_session(
            host=host, source="metatl", prompt=False, verify=False, update_session=False
        )
    except wandb.errors.AuthenticationError:
        return True  # a key is configured but malformed: going online reports it clearly
    except Exception:  # an internal API that moved; offline is the safe side
        return False
    return auth is not None


def is_main_process() -> bool:
    """False on ranks other than 0 of a distributed run (``RANK``, ``LOCAL_RANK`` or an
    initialised ``torch.distributed``), which must not log to W&B."""
    rank = os.environ.get("RANK", os.environ.get("LOCAL_RANK"))
    if rank is not None and rank.strip() not in ("", "0"):
        return False
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized() and dist.get_rank() != 0)


class WandbTracker:
    """Logs a run to W&B: metrics against :data:`STEP_METRIC`, the config, images, the
    summary and, online only, artifacts.

    W&B files go to ``run_dir/wandb`` (offline runs to ``run_dir/wandb/offline-run-*``, for
    ``wandb sync``). If a W&B run is already active (a sweep agent calling a function, a
    notebook), it is used and left for whoever started it to finish. On ranks other than 0,
    or with mode ``disabled``, the tracker does nothing.

    Args:
        settings: ``tracking.wandb`` of the run config; empty strings mean "W&B's default".
        run_dir: The run directory; its name is the default W&B run name.
        config: Logged as the run's config, if given (see :meth:`log_config`).
        resume: Continue the W&B run whose id is in ``run_dir/wandb_run_id``, if any.

    Raises:
        ValueError: W&B could not start a run (unknown entity, no credentials online, ...);
            the message names the ``tracking.wandb.*`` keys to change.
    """

    def __init__(
        self,
        settings: WandbConfig,
        run_dir: str | Path,
        config: Mapping[str, Any] | None = None,
        *,
        resume: bool = False,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.mode = resolve_mode(settings.mode)
        self._run: Any = None
        self._owns_run = False
        if self.mode == "disabled" or not is_main_process():
            return
        import wandb

        self.run_dir.mkdir(parents=True, exist_ok=True)
        if wandb.run is not None:
            self._run = wandb.run
            self.mode = "offline" if self._run.offline else "online"
        else:
            self._run = self._start(settings, resume)
            self._owns_run = True
        (self.run_dir / RUN_ID_FILE).write_text(f"{self._run.id}\n")
        self._run.define_metric(STEP_METRIC)
        self._run.define_metric("*", step_metric=STEP_METRIC)
        if config is not None:
            self.log_config(config)

    @property
    def run(self) -> Any:
        """The W&B run logged to, or None (disabled, rank != 0, closed)."""
        return self._run

    def _start(self, settings: WandbConfig, resume: bool) -> Any:
        import wandb

        id_file = self.run_dir / RUN_ID_FILE
        run_id = None
        if resume and id_file.is_file():
            run_id = id_file.read_text().strip() or None
        try:
            return wandb.init(
                project=settings.project or None,
                entity=settings.entity or None,
                group=settings.group or None,
                tags=list(settings.tags) or None,
                name=settings.name or self.run_dir.name,
                dir=self.run_dir,
                mode=self.mode,
                id=run_id,
                resume="allow" if run_id else None,
            )
        except Exception as err:
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise ValueError(
                f"W&B could not start a run (mode {self.mode}, tracking.wandb.project="
                f"{settings.project!r}, tracking.wandb.entity={settings.entity!r}): {reason}. "
                "Check those keys and `wandb login`, or set tracking.wandb.mode=offline "
                "(sync later) or tracking.wandb.mode=disabled"
            ) from err

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        if self._run is not None:
            self._run.log({**metrics, STEP_METRIC: int(step)})

    def log_config(self, config: Mapping[str, Any]) -> None:
        if self._run is not None:
            self._run.config.update(_plain(config), allow_val_change=True)

    def log_image(
        self, key: str, path: str | Path, step: int | None = None, caption: str | None = None
    ) -> None:
        if self._run is None:
            return
        import wandb

        record: dict[str, Any] = {key: wandb.Image(str(path), caption=caption)}
        if step is not None:
            record[STEP_METRIC] = int(step)
        self._run.log(record)

    def log_summary(self, values: Mapping[str, Any]) -> None:
        if self._run is not None:
            self._run.summary.update(_plain(values))

    def log_artifact(self, path: str | Path, name: str | None = None) -> None:
        # Online only: checkpoints are large, and an offline run is synced for its metrics
        # and images; the files stay in the run directory either way.
        if self._run is None or self._run.offline or self._run.disabled:
            return
        import wandb

        path = Path(path)
        artifact = wandb.Artifact(
            name=artifact_name(name or path.name, self._run.id),
            type="model" if path.suffix == ".pt" else "report",
        )
        artifact.add_file(str(path), name=path.name)
        self._run.log_artifact(artifact)

    def close(self) -> None:
        """Finish the W&B run if this tracker started it; calling it again does nothing."""
        run, self._run = self._run, None
        if run is not None and self._owns_run:
            run.finish()


def artifact_name(name: str, run_id: str) -> str:
    """A W&B artifact name for the file ``name`` of run ``run_id``: ``best-<run id>``.

    Artifact names are project-wide, hence the run id; W&B allows letters, digits, ``-``,
    ``_`` and ``.`` only.
    """
    stem = Path(name).stem if Path(name).suffix else name
    return re.sub(r"[^\w.-]", "-", f"{stem}-{run_id}")


def _plain(values: Mapping[str, Any]) -> dict[str, Any]:
    return {
        str(k): _plain(v) if isinstance(v, Mapping) else list(v) if isinstance(v, tuple) else v
        for k, v in values.items()
    }
