"""Evaluation protocols for self-supervised trunks: kNN, linear probe, low-shot, fine-tuning.

The maths only (torch, torchvision, PIL): the periodic evaluator service loads the checkpoint
and the labelled set, then calls these (one module per protocol, each saying what it does).
"""

from seer_core.evaluation.checks import EvalError
from seer_core.evaluation.features import EVAL_STAGES, FrozenTrunk, extract_features, frozen_trunk
from seer_core.evaluation.finetune import finetune
from seer_core.evaluation.knn import knn_classify
from seer_core.evaluation.linear import (
    DEFAULT_LRS,
    DEFAULT_WEIGHT_DECAYS,
    ProbeResult,
    linear_probe,
    stratified_holdout,
)
from seer_core.evaluation.lowshot import LowShotResult, lowshot, lowshot_indices
from seer_core.evaluation.transforms import preprocess
from seer_core.evaluation.trunks import random_trunk, trunk_from_checkpoint

__all__ = [
    "DEFAULT_LRS", "DEFAULT_WEIGHT_DECAYS", "EVAL_STAGES", "EvalError", "FrozenTrunk",
    "LowShotResult", "ProbeResult", "extract_features", "finetune", "frozen_trunk", "knn_classify",
    "linear_probe", "lowshot", "lowshot_indices", "preprocess", "random_trunk",
    "stratified_holdout", "trunk_from_checkpoint"
]
