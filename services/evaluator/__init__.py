"""The evaluation job: `seer eval` once, or `seer eval --watch` beside a never-ending run.

``checkpoints``: finding a checkpoint and copying it safely while the trainer's retention deletes
old ones; ``results``: the JSON-lines file and the settings that key its rows; ``plot``: the
accuracy-vs-images PNG; ``gauges``: `seer_eval_*`; ``run``: evaluating a checkpoint and the
random baseline, and the --watch loop; ``command``: the CLI. The maths (features, kNN, probes)
is seer_core.evaluation, the labelled set services.labelled.

This module holds only the errors, sorted by what the caller should do about them, so the CLI
starts fast: `seer eval` exits with `exit_code` (bad input 2; nothing to do yet or transient 1),
the watch loop counts `reason` in `seer_eval_errors_total{reason}` and carries on at the next
poll.
"""


class EvaluatorError(RuntimeError):
    """Base class; `reason` is the bounded label used in `seer_eval_errors_total{reason}`."""

    reason = "error"
    exit_code = 1


class NoCheckpointError(EvaluatorError):
    """Nothing to evaluate yet (an empty store, a step that is not there)."""

    reason = "no_checkpoint"


class CheckpointVanishedError(EvaluatorError):
    """The checkpoint was deleted (retention) between listing it and reading it."""

    reason = "vanished"


class StoreError(EvaluatorError):
    """The store could not be read (network, permissions): worth a retry."""

    reason = "store_error"


class BadCheckpointError(EvaluatorError):
    """A corrupt or truncated state.pt, or one that does not fit its own architecture."""

    reason = "bad_checkpoint"
    exit_code = 2


class BadInputError(EvaluatorError):
    """The labelled set or the settings cannot work (fewer images than k, ...)."""

    reason = "bad_input"
    exit_code = 2
