"""Learners by name: one registry for Python, model.algorithm and sweeps."""

from __future__ import annotations

import pytest

from metatl.algorithms import CAML, MAML, FineTune, LinearProbe, ProtoNet
from metatl.algorithms import registry as registry_module
from metatl.algorithms.registry import (
    UnknownLearnerError,
    create_learner,
    is_meta_trained,
    list_learners,
    register_learner,
)
from metatl.backbones import create_backbone
from metatl.config import ConfigError, load_config
from metatl.training import build_learner


def _conv4():
    return create_backbone("conv4", in_channels=1, image_size=28)


def test_every_learner_is_registered_with_its_settings() -> None:
    assert list_learners() == [
        "anil", "caml", "finetune", "fomaml", "imaml", "linear", "maml", "metasgd", "protonet"
    ]  # fmt: skip
    assert isinstance(create_learner("protonet", _conv4()), ProtoNet)
    anil = create_learner("anil", _conv4())
    assert isinstance(anil, MAML) and anil.adapt_scope == "head"
    config = load_config(None, ["finetune.n_blocks=2", "finetune.steps=7"])
    tuned = create_learner("finetune", _conv4(), config)
    assert isinstance(tuned, FineTune) and (tuned.n_blocks, tuned.steps) == (2, 7)
    assert isinstance(create_learner("linear", _conv4()), LinearProbe)
    caml = create_learner("caml", _conv4(), load_config(None, ["model.caml.max_way=16"]))
    assert isinstance(caml, CAML) and caml.max_way == 16 and is_meta_trained("caml")
    assert not is_meta_trained("linear") and is_meta_trained("metasgd")
    with pytest.raises(UnknownLearnerError, match="registered learners: anil, caml, finetune"):
        create_learner("snail", _conv4())


def test_a_registered_learner_is_a_choice_of_the_run_config(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ConfigError, match="model.algorithm='cosine_nn' is not allowed"):
        load_config(None, ["model.algorithm=cosine_nn"])
    monkeypatch.setattr(registry_module, "_LEARNERS", dict(registry_module._LEARNERS))

    @register_learner("cosine_nn")
    def _cosine(backbone, config, n_way):
        return ProtoNet(backbone, distance="cosine")

    config = load_config(None, ["model.algorithm=cosine_nn"])
    learner = build_learner(config, 1, 28)
    assert isinstance(learner, ProtoNet) and learner.distance == "cosine"

    @register_learner("frozen_probe", meta_trained=False)
    def _probe(backbone, config, n_way):
        return LinearProbe(backbone)

    with pytest.raises(ConfigError, match="frozen_probe adapts per episode and is not"):
        load_config(None, ["model.algorithm=frozen_probe"])


def test_import_metatl_gives_the_names_a_user_starts_from() -> None:
    import metatl

    for name in metatl.__all__:
        assert getattr(metatl, name) is not None, name
    backbone = metatl.create_backbone("conv4", in_channels=1, image_size=28)
    assert isinstance(metatl.create_learner("protonet", backbone), ProtoNet)
    assert "fashion_mnist" in metatl.list_datasets() and "maml" in metatl.list_learners()
