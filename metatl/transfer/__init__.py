"""What transfers, and how well: measures for transfer learning from a source model.

This package gathers the transfer-learning tools of metatl: freezing layers, the layer-transfer
study (Yosinski et al. 2014), transferability scores and the advice built on them. Here now:

- transferability scores of a source model on a labelled target set, higher meaning better
  transfer expected (:func:`logme`, :func:`leep`, :func:`nce`, :func:`h_score`), and
  :func:`kendall_tau` to ask how well a score ranks source models;
- representation similarity between source and target, per block (:func:`linear_cka`,
  :func:`mmd`) — these are pure functions on tensors;
- the layer-transfer study (:func:`run_layer_study`, ``python -m metatl.transfer layers``):
  which blocks are general, which specific, and which of the paper's findings hold;
- :func:`compare_sources`: nearest class mean and linear probes on every block of several
  source backbones on one episode set, paired against no transfer, negative transfer
  flagged, sources ranked by LogME / H-score against the accuracy they reach.
"""

from metatl.transfer.compare import Comparison, compare_sources
from metatl.transfer.scores import h_score, kendall_tau, leep, logme, nce
from metatl.transfer.similarity import linear_cka, mmd
from metatl.transfer.study import StudyResult, run_layer_study

__all__ = [
    "Comparison",
    "StudyResult",
    "compare_sources",
    "h_score",
    "kendall_tau",
    "leep",
    "linear_cka",
    "logme",
    "mmd",
    "nce",
    "run_layer_study",
]
