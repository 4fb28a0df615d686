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
- :func:`load_source` and :func:`compare_sources` (``python -m metatl.transfer compare``,
  :func:`run_compare`): probes on every block, fine-tuning the top N blocks and a
  checkpoint's own adaptation against training from scratch and raw pixels, on one episode
  set per label budget (and every training label: :func:`all_labels_results`); negative
  transfer flagged; sources ranked by each score (Kendall tau); the per-source gap of
  feature statistics (:func:`batchnorm_gaps`) and the classic advice checked against the
  measurement (:func:`advise`).
"""

from metatl.transfer.advice import Advice, advise, advise_all
from metatl.transfer.all_labels import all_labels_results
from metatl.transfer.compare import Comparison, NegativeTransfer, compare_sources
from metatl.transfer.compare_run import CompareResult, run_compare
from metatl.transfer.scores import h_score, kendall_tau, leep, logme, nce
from metatl.transfer.similarity import linear_cka, mmd
from metatl.transfer.sources import Source, load_source
from metatl.transfer.statistics_gap import batchnorm_gaps
from metatl.transfer.study import StudyResult, run_layer_study

__all__ = [
    "Advice",
    "CompareResult",
    "Comparison",
    "NegativeTransfer",
    "Source",
    "StudyResult",
    "advise",
    "advise_all",
    "all_labels_results",
    "batchnorm_gaps",
    "compare_sources",
    "h_score",
    "kendall_tau",
    "leep",
    "linear_cka",
    "load_source",
    "logme",
    "mmd",
    "nce",
    "run_compare",
    "run_layer_study",
]
