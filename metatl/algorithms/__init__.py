"""Few-shot learners, one per module, all on the :class:`Learner` contract."""

from metatl.algorithms.base import Learner
from metatl.algorithms.maml import ANIL, FOMAML, MAML, MAML_VARIANTS, MAMLState, MetaSGD
from metatl.algorithms.protonet import ProtoNet, PrototypeState

__all__ = [
    "ANIL",
    "FOMAML",
    "MAML",
    "MAML_VARIANTS",
    "Learner",
    "MAMLState",
    "MetaSGD",
    "ProtoNet",
    "PrototypeState",
]
