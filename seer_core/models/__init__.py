"""Models for SEER pretraining: trunks by name, the SwAV head, and what training needs around them.

A package (not one module) because it holds several jobs: the trunk registry (``trunks``), the
SwAV head and model (``head``), activation checkpointing (``checkpointing``), SyncBN groups
(``sync_bn``), trunk export (``export``) and model sizing (``summary``). Import from here.
"""

from seer_core.models.checkpointing import (
    CheckpointedStage,
    RunningStats,
    enable_activation_checkpointing,
)
from seer_core.models.export import export_trunk_state_dict
from seer_core.models.head import (
    SEER_HEAD_HIDDEN,
    SEER_HEAD_OUT,
    SEER_PROTOTYPES,
    SwAVHead,
    SwAVModel,
    build_swav_model,
)
from seer_core.models.summary import count_parameters, estimate_gflops, eval_mode, model_table
from seer_core.models.sync_bn import convert_sync_batchnorm, sync_groups
from seer_core.models.trunks import (
    SEER_REGNETS,
    SMALL_REGNETS,
    TRUNK_NAMES,
    RegNetSpec,
    build_trunk,
    regnet_block_params,
    torchvision_architecture,
)

__all__ = [
    "SEER_HEAD_HIDDEN", "SEER_HEAD_OUT", "SEER_PROTOTYPES", "SEER_REGNETS", "SMALL_REGNETS",
    "TRUNK_NAMES", "CheckpointedStage", "RegNetSpec", "RunningStats", "SwAVHead", "SwAVModel",
    "build_swav_model", "build_trunk", "convert_sync_batchnorm", "count_parameters",
    "enable_activation_checkpointing", "estimate_gflops", "eval_mode", "export_trunk_state_dict",
    "model_table", "regnet_block_params", "sync_groups", "torchvision_architecture"
]
