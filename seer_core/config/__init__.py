"""The one typed configuration schema of seer, its named presets, YAML loading and validation.

Every knob lives here, with a default that runs on a laptop (the embedded default), so that a
run is fully described by one object that is validated once, before any worker starts, and
stored in every checkpoint. Errors name the dotted key and what is allowed, because the user
usually typed it in a `--set key=value` on a long command line.
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
