"""Build, in the driver, everything a training worker builds from a config, before any worker.

The schema checks each knob on its own; some values are only wrong together or only fail when
an object is built from them (`schedule.factor=1`, `schedule.min_lr` above the base LR, a
prototype count the head rejects). Found inside Ray Train workers, such an error makes every
worker raise while building, and Ray Train restarts the group for ever. Found here, it is one
clear message naming the config section, before Ray starts.

The model is built on PyTorch's ``meta`` device: shapes and module wiring without memory or
initialisation cost, so even a RegNetY-256GF config checks in well under a second on a laptop.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from seer_core.augment import BatchPhotometric
from seer_core.config import ConfigError, SeerConfig
from seer_core.models import convert_sync_batchnorm
from seer_core.training.state import (
    build_optimizer,
    make_queue,
    make_schedule,
    photometric_params,
    recipe_for,
    swav_model,
)


@contextlib.contextmanager
def _section(section: str, *errors: type[Exception]) -> Iterator[None]:
    """`errors` raised inside become a ConfigError naming `section`."""
    try:
        yield
    except errors as exc:
        raise ConfigError(f"{section}: {exc} (while building what the workers build; check the "
                          f"{section}.* keys)") from exc


def preflight(cfg: SeerConfig) -> None:
    """Raises ConfigError, naming the section, if a worker could not build from `cfg`."""
    with _section("augment", ValueError, TypeError, KeyError):
        recipe_for(cfg)
        if cfg.augment.photometric_on_device:
            BatchPhotometric(photometric_params(cfg))
    with _section("model", ValueError, TypeError, KeyError, RuntimeError), torch.device("meta"):
        model = swav_model(cfg)
        if cfg.model.sync_bn_group_size:
            model = convert_sync_batchnorm(model, cfg.model.sync_bn_group_size)
    with _section("optim", ValueError, TypeError):
        build_optimizer(model, cfg)
    with _section("schedule", ValueError, TypeError):
        make_schedule(cfg)
    with _section("swav", ValueError, TypeError):
        make_queue(cfg, cfg.train.max_workers, "meta")
