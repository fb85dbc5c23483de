"""seer_core.training.preflight: what would fail inside every worker fails once, in the driver."""

from __future__ import annotations

import pytest

from seer_core.config import ConfigError, load_config, preset_names
from seer_core.training.preflight import preflight


@pytest.mark.parametrize("preset", preset_names())
def test_every_preset_passes(preset: str) -> None:
    preflight(load_config(preset))


@pytest.mark.parametrize(
    ("overrides", "section", "words"),
    [
        (["schedule.factor=1"], "schedule", "factor"),
        (["schedule.name=plateau_halving", "optim.lr=0.3", "schedule.min_lr=1",
          "schedule.start_lr=0"], None, None),
        (["schedule.name=warmup_cosine", "schedule.warmup_steps=10", "schedule.cosine_steps=5",
          "schedule.final_lr=1"], None, None),
    ],
)
def test_values_the_workers_reject_are_named(overrides: list[str], section: str | None,
                                             words: str | None) -> None:
    if section is None:
        preflight(load_config("local", overrides))  # allowed corner values build fine
        return
    # The schema refuses it first: the bound is the constructor's, stated once (issue 19)...
    with pytest.raises(ConfigError, match=rf"^{section}\.{words}: "):
        load_config("local", overrides)
    # ...and a value set past the schema (an attribute) is still named before any worker.
    cfg = load_config("local")
    key, value = overrides[0].split("=")
    setattr(getattr(cfg, section), key.split(".")[1], float(value))
    with pytest.raises(ConfigError) as caught:
        preflight(cfg)
    message = str(caught.value)
    assert message.startswith(f"{section}:") and words in message
    assert f"{section}.* keys" in message


def test_min_lr_is_a_fraction_checked_by_the_schema() -> None:
    with pytest.raises(ConfigError, match=r"schedule\.min_lr: 2\.0 is too large"):
        load_config("local", ["schedule.min_lr=2"])
