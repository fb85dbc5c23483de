"""A real Ray run checkpointed by 2 workers resumes with 1 worker and keeps training.

Before per-rank queue files were redistributed, the resumed worker loaded rank 0's 8-row queue
into its 16-row one and raised, and `FailureConfig(max_failures=-1)` restarted it for ever.
"""

from __future__ import annotations

import pytest

from seer_core.checkpoint import COMMIT_FILE
from services.driver.pretrain import run_pretraining
from services.storage import resolve_storage
from tests.integration.test_trainer import ckpt_bucket, service_config  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_two_workers_then_one(ray_cluster, s3_server, ckpt_bucket) -> None:  # noqa: F811
    endpoint = s3_server.endpoint_url
    # Synthetic batches: this is about checkpoints, the image feed is not used.
    first = run_pretraining(service_config(endpoint, "unused", ckpt_bucket, "worlds",
                                           "train.max_steps=3"),
                            synthetic=True, install_signals=False)
    assert first.step == 3
    storage = resolve_storage(f"s3://{ckpt_bucket}/runs", "worlds", endpoint)
    [(step, path)] = storage.list_checkpoints()
    assert step == 3 and storage.read_json(f"{path}/{COMMIT_FILE}")["world_size"] == 2
    assert storage.filesystem.get_file_info(f"{path}/{COMMIT_FILE}").size > 0

    second = run_pretraining(service_config(endpoint, "unused", ckpt_bucket, "worlds",
                                            "train.num_workers=1", "train.max_steps=5"),
                             synthetic=True, install_signals=False)
    assert second.metrics["resumed_step"] == 3
    assert second.metrics["resumed_queue_filled"] == 16  # both ranks' 8 rows, in one queue
    assert second.step == 5 and second.images_seen == 3 * 4 * 2 + 2 * 4
    assert [s for s, _ in storage.list_checkpoints()] == [3, 5]
    newest = storage.list_checkpoints()[-1][1]
    assert storage.read_json(f"{newest}/{COMMIT_FILE}")["world_size"] == 1
