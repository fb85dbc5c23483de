"""One SwAV training step and the state it carries, usable with or without Ray.

The Ray Train workers, the benchmarks and the tests all drive this same function, so what is
measured and tested is what runs in production. It owns the numerics that are easy to get
subtly wrong: prototype normalisation before the forward, scores and Sinkhorn in float32 under
AMP, prototype gradients dropped during the freeze, a non-finite loss skipping the update on
every rank at once, and the LR decision taken from the loss averaged over all ranks.
"""

from seer_core.training.saved import config_of, load_state_dict, state_dict
from seer_core.training.state import (
    StepResult,
    TrainState,
    build_optimizer,
    build_train_state,
    is_log_step,
    make_queue,
    make_schedule,
    photometric_params,
    photometric_strength,
    recipe_for,
    resolve_amp,
    swav_model,
    unwrap,
)
from seer_core.training.step import batch_size_of, prepare_inputs, train_step

__all__ = [
    "StepResult", "TrainState", "batch_size_of", "build_optimizer", "build_train_state",
    "config_of", "is_log_step", "load_state_dict", "make_queue", "make_schedule",
    "photometric_params", "photometric_strength", "prepare_inputs", "recipe_for", "resolve_amp",
    "state_dict", "swav_model", "train_step", "unwrap"
]
