"""What an evaluation number depends on besides the checkpoint: the key of a results row.

Rows used to be keyed by run, stage and data only, so changing `--image-size`, k or the
protocols appended rows of other settings to the same curve, and a step or a baseline already
in the file counted as done for settings it was never computed with. Each row now carries the
settings that change its number (`settings`, readable) and a short digest of them
(`settings_id`): done steps, the stored baseline, the PNG and the gauges only ever look at rows
of the current settings, so a change starts new rows and a new baseline beside the old ones.

Left out on purpose, since they do not change a number: the poll interval, the metrics port,
the results path, the device and thread count (floating-point noise only), whether a baseline
is wanted, the endpoint; and the feature-extraction batch size (the frozen trunk runs in eval
mode, so its BatchNorm uses stored statistics), except for fine-tuning, which trains with it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from seer_core.config.schema import EvalConfig

#: Settings every protocol depends on: which features, of which images, split how; `seed`
#: seeds the random baseline trunk (and the probes).
COMMON: tuple[str, ...] = ("stage", "data", "image_size", "val_fraction", "split_seed", "seed")
#: What each protocol adds (k values and low-shot fractions are also in the protocol names).
BY_PROTOCOL: dict[str, tuple[str, ...]] = {
    "knn": ("knn_k", "temperature"),
    "linear": ("probe_epochs",),
    "lowshot": ("lowshot_fractions", "lowshot_seeds", "probe_epochs"),
    "finetune": ("finetune_steps", "finetune_lr", "batch_size"),
}
#: Lists whose order does not change any number.
_UNORDERED = frozenset({"protocols", "knn_k", "lowshot_fractions", "lowshot_seeds"})


def eval_settings(s: EvalConfig) -> dict[str, Any]:
    """The settings that change the numbers of an evaluation with `s` (a plain, JSON-able
    dict). The protocol set is part of it: its rows are one evaluation, drawn together."""
    names = ["protocols", *COMMON]
    for protocol in sorted(s.protocols):
        names += BY_PROTOCOL[protocol]
    out: dict[str, Any] = {}
    for name in dict.fromkeys(names):
        value = getattr(s, name)
        if isinstance(value, list):
            value = sorted(value) if name in _UNORDERED else list(value)
        out[name] = value
    return out


def settings_id(settings: dict[str, Any]) -> str:
    """A short, stable digest of `eval_settings(...)`: equal settings, equal id."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def rows_for(rows: Iterable[dict[str, Any]], run: str, key: str) -> list[dict[str, Any]]:
    """The rows of `run` computed with the settings `key`. A row without a key (a file from
    before keys) matches none: what it was computed with is not known, so it is kept apart."""
    return [r for r in rows if r.get("run") == run and r.get("settings_id") == key]
