"""Meta-training, evaluation on fixed episode sets, checkpoints."""

from metatl.training.builders import build_learner
from metatl.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from metatl.training.data import ImageTransform, load_split
from metatl.training.evaluation import (
    EvalResult,
    UnknownMethodError,
    default_methods,
    evaluate,
    evaluate_methods,
    format_paired_table,
    format_table,
    list_methods,
    paired_difference,
    register_method,
)
from metatl.training.loop import NonFiniteLossError, TrainingLoop
from metatl.training.meta_train import (
    RunResult,
    meta_train,
    run_experiment,
)
from metatl.training.pretrain import run_pretraining

__all__ = [
    "CheckpointError",
    "EvalResult",
    "ImageTransform",
    "NonFiniteLossError",
    "RunResult",
    "TrainingLoop",
    "UnknownMethodError",
    "build_learner",
    "default_methods",
    "evaluate",
    "evaluate_methods",
    "format_paired_table",
    "format_table",
    "list_methods",
    "load_checkpoint",
    "load_split",
    "meta_train",
    "paired_difference",
    "register_method",
    "run_experiment",
    "run_pretraining",
    "save_checkpoint",
]
