"""Few-shot learners, one per module, all on the :class:`Learner` contract."""

from metatl.algorithms.base import Learner
from metatl.algorithms.protonet import ProtoNet, PrototypeState

__all__ = ["Learner", "ProtoNet", "PrototypeState"]
