"""What can go wrong in an evaluation, sorted by what the caller should do about it.

`seer eval` maps them to exit codes (bad input 2, nothing to do / transient 1); the watch loop
maps them to the `reason` label of `seer_eval_errors_total` and carries on at the next poll.
"""

from __future__ import annotations


class EvaluatorError(RuntimeError):
    """Base class; `reason` is the bounded label used in `seer_eval_errors_total{reason}`."""

    reason = "error"
    exit_code = 1


class NoCheckpointError(EvaluatorError):
    """Nothing to evaluate yet (an empty store, a step that is not there)."""

    reason = "no_checkpoint"
    exit_code = 1


class CheckpointVanishedError(EvaluatorError):
    """The checkpoint was deleted (retention) between listing it and reading it."""

    reason = "vanished"
    exit_code = 1


class StoreError(EvaluatorError):
    """The store could not be read (network, permissions): worth a retry."""

    reason = "store_error"
    exit_code = 1


class BadCheckpointError(EvaluatorError):
    """A corrupt or truncated state.pt, or one that does not fit its own architecture."""

    reason = "bad_checkpoint"
    exit_code = 2


class BadInputError(EvaluatorError):
    """The labelled set or the settings cannot work (fewer images than k, ...)."""

    reason = "bad_input"
    exit_code = 2
