"""The evaluation job: `seer eval` once, or `seer eval --watch` beside a never-ending run.

A package because it holds several jobs: finding and safely copying a checkpoint while the
trainer's retention deletes old ones (``checkpoints``), the JSON-lines results file
(``results``), the accuracy-vs-images PNG (``plot``), the `seer_eval_*` gauges (``gauges``),
evaluating a checkpoint and the random baseline (``run``) and the polling loop (``watch``).
The maths (features, kNN, probes) is seer_core.evaluation; the labelled set services.labelled.
Import the submodules directly; this module stays light so the CLI starts fast.
"""

from services.evaluator.errors import (
    BadCheckpointError,
    BadInputError,
    CheckpointVanishedError,
    EvaluatorError,
    NoCheckpointError,
    StoreError,
)

__all__ = [
    "BadCheckpointError",
    "BadInputError",
    "CheckpointVanishedError",
    "EvaluatorError",
    "NoCheckpointError",
    "StoreError",
]
