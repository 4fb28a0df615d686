"""Unsupervised domain adaptation: a labelled source domain, an unlabelled target domain with
the same classes, and methods that make the source-trained model work on the target.

Training-time methods (``adapt.method``, :mod:`metatl.adaptation.methods`): ``source_only``,
``dann``, ``mcc``; test-time methods (``adapt.test_time``, :mod:`metatl.adaptation.test_time`):
``adabn``, ``tent``; against corruptions, in few-shot episodes:
:func:`corruption_study`. Label-free model selection: :mod:`metatl.adaptation.validators` and
:mod:`metatl.adaptation.selection`. The command: ``python -m metatl.adapt``
(:func:`run_adaptation`).
"""

from metatl.adaptation.losses import (
    DomainClassifier,
    dann_coefficient,
    entropy,
    gradient_reversal,
    minimum_class_confusion,
)
from metatl.adaptation.methods import METHODS, AdaptationMethod, build_method
from metatl.adaptation.robustness import corruption_setting, corruption_study
from metatl.adaptation.run import AdaptResult, adapted_variants, run_adaptation
from metatl.adaptation.selection import Selection, select_checkpoints
from metatl.adaptation.test_time import adabn, tent
from metatl.adaptation.trainer import Adapter, AdaptModel
from metatl.adaptation.validators import (
    predict_logits,
    prediction_entropy,
    soft_neighbourhood_density,
)

__all__ = [
    "METHODS",
    "AdaptModel",
    "AdaptResult",
    "AdaptationMethod",
    "Adapter",
    "DomainClassifier",
    "Selection",
    "adabn",
    "adapted_variants",
    "build_method",
    "corruption_setting",
    "corruption_study",
    "dann_coefficient",
    "entropy",
    "gradient_reversal",
    "minimum_class_confusion",
    "predict_logits",
    "prediction_entropy",
    "run_adaptation",
    "select_checkpoints",
    "soft_neighbourhood_density",
    "tent",
]
