"""The one typed configuration schema of seer, its named presets, YAML loading and validation.

A run is fully described by one object (`schema.py`), validated once before any worker starts
and stored in every checkpoint; `presets.py` reads presets, YAML files and `--set` overrides.
"""

from seer_core.config.presets import PRESETS_DIR_ENV, load_config, preset_names, presets_dir
from seer_core.config.schema import (
    AugmentConfig,
    CheckpointConfig,
    ConfigError,
    FeedConfig,
    IngestConfig,
    MetricsConfig,
    ModelConfig,
    OptimConfig,
    ScheduleConfig,
    SeerConfig,
    SwAVConfig,
    TrainConfig,
    config_from_dict,
)

__all__ = [
    "PRESETS_DIR_ENV", "AugmentConfig", "CheckpointConfig", "ConfigError", "FeedConfig",
    "IngestConfig", "MetricsConfig", "ModelConfig", "OptimConfig", "ScheduleConfig", "SeerConfig",
    "SwAVConfig", "TrainConfig", "config_from_dict", "load_config", "preset_names", "presets_dir",
]
