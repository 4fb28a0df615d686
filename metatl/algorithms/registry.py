"""Every learner by name: ``create_learner("maml", backbone, config)``.

One registry serves Python, run configs (``model.algorithm``) and sweeps, as the backbone
registry does for ``model.backbone``. A builder takes the backbone, the run config (its
sections hold the learner's settings; None for the defaults) and the episode way (for a
learned head of fixed width)::

    @register_learner("my_net")
    def _my_net(backbone, config, n_way):
        return MyNet(backbone, temperature=2.0)
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from metatl.algorithms.base import Learner
from metatl.algorithms.caml import CAML
from metatl.algorithms.finetune import FineTune
from metatl.algorithms.imaml import IMAML
from metatl.algorithms.linear_probe import LinearProbe
from metatl.algorithms.maml import MAML, MAML_VARIANTS
from metatl.algorithms.protonet import ProtoNet
from metatl.backbones import Backbone

if TYPE_CHECKING:
    from metatl.config import RunConfig

__all__ = [
    "LearnerBuilder",
    "UnknownLearnerError",
    "create_learner",
    "is_meta_trained",
    "list_learners",
    "register_learner",
]

LearnerBuilder = Callable[[Backbone, "RunConfig", "int | None"], Learner]
"""``(backbone, run config, n_way) -> learner``."""


@dataclass(frozen=True)
class _Entry:
    build: LearnerBuilder
    meta_trained: bool


_LEARNERS: dict[str, _Entry] = {}


class UnknownLearnerError(ValueError):
    """No learner is registered under the name."""


def register_learner(
    name: str, *, meta_trained: bool = True
) -> Callable[[LearnerBuilder], LearnerBuilder]:
    """Decorator: register ``builder`` as learner ``name``.

    Args:
        name: The name ``model.algorithm`` and :func:`create_learner` use.
        meta_trained: False for learners that only adapt per episode (a linear probe,
            fine-tuning): a run of them needs a pretrained backbone and ``train.steps=0``.
    """

    def add(builder: LearnerBuilder) -> LearnerBuilder:
        if name in _LEARNERS:
            warnings.warn(f"learner '{name}' registered twice", stacklevel=2)
        _LEARNERS[name] = _Entry(builder, meta_trained)
        return builder

    return add


def list_learners() -> list[str]:
    """Registered learner names, sorted."""
    return sorted(_LEARNERS)


def is_meta_trained(name: str) -> bool:
    """Whether learner ``name`` is trained episodically (see :func:`register_learner`)."""
    return _entry(name).meta_trained


def create_learner(
    name: str, backbone: Backbone, config: RunConfig | None = None, n_way: int | None = None
) -> Learner:
    """Learner ``name`` on ``backbone``, with the settings of ``config`` (default: the
    defaults of every section).

    Raises:
        UnknownLearnerError: No such learner (the message lists the registered ones).
    """
    if config is None:
        from metatl.config import RunConfig  # the config imports this registry for its choices

        config = RunConfig()
    return _entry(name).build(backbone, config, n_way)


def _entry(name: str) -> _Entry:
    if name not in _LEARNERS:
        raise UnknownLearnerError(
            f"unknown learner '{name}'; registered learners: {', '.join(list_learners())}"
        )
    return _LEARNERS[name]


@register_learner("protonet")
def _protonet(backbone: Backbone, config: RunConfig, n_way: int | None) -> Learner:
    model = config.model
    return ProtoNet(backbone, distance=model.distance, cosine_scale=model.cosine_scale)  # type: ignore[arg-type]


def _maml_variant(name: str) -> LearnerBuilder:
    def build(backbone: Backbone, config: RunConfig, n_way: int | None) -> Learner:
        maml = config.model.maml
        settings = dataclasses.asdict(maml) | MAML_VARIANTS[name]
        return MAML(backbone, n_way=n_way if maml.head == "learned" else None, **settings)

    build.__doc__ = f"{name}: the MAML family with model.maml settings and {MAML_VARIANTS[name]}."
    return build


for _variant in MAML_VARIANTS:
    register_learner(_variant)(_maml_variant(_variant))


@register_learner("imaml")
def _imaml(backbone: Backbone, config: RunConfig, n_way: int | None) -> Learner:
    """imaml: the inner-loop settings of model.maml (an error for first_order or meta_sgd),
    the implicit gradient's of model.imaml; model.maml.inner_memory plays no part."""
    maml = config.model.maml
    return IMAML(
        backbone,
        n_way=n_way if maml.head == "learned" else None,
        inner_steps=maml.inner_steps,
        test_inner_steps=maml.test_inner_steps,
        inner_lr=maml.inner_lr,
        adapt=maml.adapt,
        head=maml.head,  # type: ignore[arg-type]
        bn=maml.bn,  # type: ignore[arg-type]
        first_order=maml.first_order,
        meta_sgd=maml.meta_sgd,
        **dataclasses.asdict(config.model.imaml),
    )


@register_learner("caml")
def _caml(backbone: Backbone, config: RunConfig, n_way: int | None) -> Learner:
    return CAML(backbone, **dataclasses.asdict(config.model.caml))


@register_learner("linear", meta_trained=False)
def _linear(backbone: Backbone, config: RunConfig, n_way: int | None) -> Learner:
    return LinearProbe(backbone, **dataclasses.asdict(config.linear_probe))


@register_learner("finetune", meta_trained=False)
def _finetune(backbone: Backbone, config: RunConfig, n_way: int | None) -> Learner:
    return FineTune(backbone, **dataclasses.asdict(config.finetune))
