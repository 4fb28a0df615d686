"""Few-shot learners, one per module, all on the :class:`Learner` contract."""

from metatl.algorithms.base import Learner
from metatl.algorithms.caml import CAML, CAMLState
from metatl.algorithms.finetune import FineTune, FineTuneState
from metatl.algorithms.imaml import IMAML
from metatl.algorithms.linear_probe import LinearHead, LinearProbe
from metatl.algorithms.maml import ANIL, FOMAML, MAML, MAML_VARIANTS, MAMLState, MetaSGD
from metatl.algorithms.protonet import ProtoNet, PrototypeState

__all__ = [
    "ANIL",
    "CAML",
    "FOMAML",
    "IMAML",
    "MAML",
    "MAML_VARIANTS",
    "CAMLState",
    "FineTune",
    "FineTuneState",
    "Learner",
    "LinearHead",
    "LinearProbe",
    "MAMLState",
    "MetaSGD",
    "ProtoNet",
    "PrototypeState",
]
