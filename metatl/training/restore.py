"""A trained learner back from its checkpoint, for evaluation, transfer or a notebook.

``load_learner("runs/<run>")`` reads the run's ``best.pt`` (never running code from it),
rebuilds the model its config describes and loads every weight, with one clear error when
they do not fit. A pretraining checkpoint (``python -m metatl.pretrain``) holds a backbone
and the classifier over its training classes, an adaptation checkpoint (``python -m
metatl.adapt``) a backbone and the classifier over the classes both domains share:
:func:`source_classifier` gives that classifier back, for transferability scores that need
the source's own predictions and for test-time adaptation (TENT).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from metatl.algorithms import Learner
from metatl.config import RunConfig, config_to_dict, flatten
from metatl.training.builders import build_learner
from metatl.training.checkpoint import CheckpointError, checkpoint_config, load_checkpoint

__all__ = ["LoadedLearner", "learner_from_checkpoint", "load_learner", "source_classifier"]

# Checkpoint kinds that hold backbone.* and classifier.* weights (and maybe other heads).
_WITH_CLASSIFIER = ("pretrain", "adapt")


@dataclass(frozen=True)
class LoadedLearner:
    """A learner restored from a checkpoint.

    Attributes:
        learner: The model, its weights loaded, in eval mode.
        config: The run config it was trained with (overrides applied).
        file: The checkpoint file read.
        kind: ``"pretrain"`` for a pretraining checkpoint, ``"adapt"`` for a domain
            adaptation one, else ``"meta"``.
        classifier: The pretraining or adaptation classifier ``[out_dim] -> [classes]``, or
            None.
    """

    learner: Learner
    config: RunConfig
    file: Path
    kind: str
    classifier: nn.Linear | None


def load_learner(path: str | Path, overrides: Sequence[str] = ()) -> LoadedLearner:
    """Read a checkpoint (a ``.pt`` file or a run directory) and rebuild its learner.

    Args:
        path: ``runs/<run>`` (its ``best.pt``) or a checkpoint file.
        overrides: Dotted ``key=value`` overrides on the stored config (e.g.
            ``episodes.way=10`` for a learned head of another width).

    Raises:
        CheckpointError: Unreadable, damaged or foreign file, no config, or weights that do
            not fit the model the config builds (one line naming the file and the cause).
    """
    file = Path(path)
    file = file / "best.pt" if file.is_dir() else file
    checkpoint = load_checkpoint(file)
    config = checkpoint_config(checkpoint, file, overrides)
    size = config.data.image_size
    shape = (_channels(checkpoint, file), size, size)
    learner = learner_from_checkpoint(checkpoint, file, config, shape).eval()
    kind = checkpoint.get("kind") if checkpoint.get("kind") in _WITH_CLASSIFIER else "meta"
    return LoadedLearner(learner, config, file, kind, source_classifier(checkpoint))


def _channels(checkpoint: Mapping[str, Any], file: Path) -> int:
    """Input channels of the stored backbone: those of its first convolution's weights."""
    state = checkpoint["model"]
    if isinstance(state, Mapping):
        for value in state.values():
            if isinstance(value, torch.Tensor) and value.dim() == 4:
                return int(value.shape[1])
    raise CheckpointError(f"checkpoint {file} holds no convolution weights to read channels from")


def source_classifier(checkpoint: Mapping[str, Any]) -> nn.Linear | None:
    """The classifier of a pretraining or adaptation checkpoint over its training classes,
    else None."""
    state = checkpoint.get("model")
    if checkpoint.get("kind") not in _WITH_CLASSIFIER or not isinstance(state, Mapping):
        return None
    weight, bias = state.get("classifier.weight"), state.get("classifier.bias")
    if not isinstance(weight, torch.Tensor) or not isinstance(bias, torch.Tensor):
        return None
    classifier = nn.Linear(weight.shape[1], weight.shape[0])
    classifier.load_state_dict({"weight": weight, "bias": bias})
    return classifier.eval()


def learner_from_checkpoint(
    checkpoint: Mapping[str, Any],
    file: Path,
    config: RunConfig,
    image_shape: tuple[int, int, int],
) -> Learner:
    """The checkpoint's learner, built from ``config`` and loaded with its weights.

    Args:
        checkpoint: What :func:`~metatl.training.checkpoint.load_checkpoint` returned.
        file: Its file, for the messages.
        config: The config to build with (the stored one, maybe with overrides).
        image_shape: ``(channels, height, width)`` of the images it will see.

    Raises:
        CheckpointError: The weights do not fit the model ``config`` builds (one line,
            naming the file, what differs and the overrides that may be the cause).
    """
    channels, size, _ = image_shape
    # The checkpoint holds every weight: no need to resolve model.pretrained again.
    model = dataclasses.replace(config.model, pretrained="")
    learner = build_learner(
        dataclasses.replace(config, model=model), channels, size, n_way=config.episodes.way
    )
    state = checkpoint["model"]
    if not isinstance(state, Mapping):
        raise CheckpointError(f"checkpoint {file} holds no model weights")
    if checkpoint.get("kind") in _WITH_CLASSIFIER:  # a backbone, its classifier, other heads
        state = {k: v for k, v in state.items() if str(k).startswith("backbone.")}
    problem = _misfit(state, learner.state_dict())
    if not problem:
        try:
            learner.load_state_dict(state)
        except (RuntimeError, TypeError, ValueError):
            problem = "its weights cannot be loaded"
    if problem:
        stored = flatten(config_to_dict(checkpoint_config(checkpoint, file)))
        now = flatten(config_to_dict(config))
        changed = [
            f"{k}={now[k]}"
            for k in now
            if k.startswith(("model.", "data.image_size", "episodes.way"))
            and k != "model.pretrained"
            and now[k] != stored.get(k)
        ]
        built = f"the model built with {', '.join(changed)}" if changed else "its model"
        raise CheckpointError(f"checkpoint {file} does not fit {built}: {problem}")
    return learner


def _misfit(state: Mapping[str, Any], expected: Mapping[str, Any]) -> str:
    """What keeps ``state`` from loading into a model whose state dict is ``expected``."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    reshaped = [
        k
        for k in expected
        if k in state and tuple(getattr(state[k], "shape", (-1,))) != tuple(expected[k].shape)
    ]
    problems = []
    if reshaped:
        k = reshaped[0]
        problems.append(
            f"{len(reshaped)} tensor(s) of another shape ({k}: "
            f"{list(getattr(state[k], 'shape', []))} in the checkpoint, "
            f"{list(expected[k].shape)} in the model)"
        )
    if missing:
        problems.append(f"{len(missing)} missing ({_first(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected ({_first(unexpected)})")
    return "; ".join(problems)


def _first(keys: Sequence[Any]) -> str:
    return ascii(str(keys[0]))[1:-1][:80] + (", ..." if len(keys) > 1 else "")
