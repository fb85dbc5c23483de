"""A run that cannot go on ends with a clear error instead of restarting for ever (real Ray).

The failure here is one users meet: the run's checkpoint folder holds a checkpoint of another
model (the user changed `model.*` but kept `checkpoint.run_name`). Every worker group Ray Train
starts would fail while restoring it, and Ray Train's `max_failures=-1` would restart it for
ever; starting over from step 0 instead would throw the run away. The restore finds that no
committed checkpoint fits and the run ends at once, saying why.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from seer_core.config import load_config
from services.driver.pretrain import RunFailed, run_pretraining

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _overrides(storage: Path, head_out: int) -> list[str]:
    return ["model.trunk=tiny", "model.head_hidden=[32]", f"model.head_out={head_out}",
            "model.prototypes=32", "augment.global_size=32", "augment.local_size=16",
            "train.batch_size=4", "train.num_workers=1", "train.torch_threads=1",
            "train.cpus_per_worker=0.5", "swav.queue_length=0", f"checkpoint.storage={storage}",
            "checkpoint.run_name=changed-model", "checkpoint.every_steps=1000",
            "checkpoint.every_minutes=0", "metrics.status_port=0",
            "train.max_repeated_failures=2"]


@pytest.mark.timeout(300)  # before the fix the run restarted for ever
def test_the_same_failure_at_each_restart_ends_the_run(ray_cluster, tmp_path: Path) -> None:
    first = run_pretraining(load_config("local", [*_overrides(tmp_path, 16), "train.max_steps=2"]),
                            synthetic=True, install_signals=False)
    assert first.step == 2

    changed = load_config("local", [*_overrides(tmp_path, 24), "train.max_steps=4"])
    with pytest.raises(RunFailed) as caught:
        run_pretraining(changed, synthetic=True, install_signals=False)
    message = str(caught.value)
    assert "NoUsableCheckpoint" in message and "not starting again from step 0" in message
    assert "size mismatch" in message, message  # the cause, from the failed load
