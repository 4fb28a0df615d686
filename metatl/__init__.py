"""metatl: transfer learning, meta-learning and few-shot adaptation for PyTorch.

The names a user starts from; everything else lives in the subpackages
(:mod:`metatl.algorithms`, :mod:`metatl.backbones`, :mod:`metatl.training`,
:mod:`metatl.transfer`, :mod:`metatl.adaptation`, :mod:`metatl.reports`) and in
:mod:`episodes` for the data::

    import metatl

    data = metatl.load_dataset("image_folder", "my_images", "test", image_size=28)
    learner = metatl.load_learner("runs/<run>").learner      # or:
    learner = metatl.create_learner("protonet", metatl.create_backbone("conv4"))
    result = metatl.score(learner, data, way=5, shot=1)          # .mean, .ci95
    run = metatl.fit(["data.dataset=image_folder", "data.root=my_images"])  # train + test
    run = metatl.adapt_domain("configs/adapt_conv4_digits.yaml", ["adapt.method=dann"])
"""

from episodes.datasets import list_datasets, load_dataset, register_dataset
from metatl.algorithms.registry import create_learner, list_learners, register_learner
from metatl.api import adapt_domain, fit, score
from metatl.backbones import create_backbone, list_backbones, register_backbone
from metatl.training.evaluation import EvalResult, paired_difference
from metatl.training.restore import LoadedLearner, load_learner

__version__ = "0.1.0"

__all__ = [
    "EvalResult",
    "LoadedLearner",
    "adapt_domain",
    "create_backbone",
    "create_learner",
    "fit",
    "list_backbones",
    "list_datasets",
    "list_learners",
    "load_dataset",
    "load_learner",
    "paired_difference",
    "register_backbone",
    "register_dataset",
    "register_learner",
    "score",
]
