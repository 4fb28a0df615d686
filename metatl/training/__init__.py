"""Meta-training, evaluation on fixed episode sets, checkpoints."""

from metatl.training.builders import build_learner
from metatl.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from metatl.training.data import ImageTransform, load_split
from metatl.training.evaluation import EvalResult, evaluate, format_table
from metatl.training.meta_train import (
    NonFiniteLossError,
    RunResult,
    meta_train,
    run_experiment,
    test_learner,
)

__all__ = [
    "CheckpointError",
    "EvalResult",
    "ImageTransform",
    "NonFiniteLossError",
    "RunResult",
    "build_learner",
    "evaluate",
    "format_table",
    "load_checkpoint",
    "load_split",
    "meta_train",
    "run_experiment",
    "save_checkpoint",
    "test_learner",
]
