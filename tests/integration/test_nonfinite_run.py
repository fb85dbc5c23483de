"""A real Ray Train run, checkpointing to the S3 server, in which one step's loss is non-finite
(issue 9, item 1).

The worker loop, the train step, Ray Data's shard iterator and the checkpoint path are the
production ones (`train_loop_per_worker` under a TorchTrainer configured as `build_trainer`
configures it). Only the dataset differs from `seer pretrain`: instead of the ingest stream of
uint8 crops it is a fixed, ordered Ray Dataset of float crops in [0, 1] — a legal input of the
step (`normalize` takes uint8 or float) — in which one image is NaN. The ingest stream cannot
produce NaN (it decodes to uint8), and a NaN image is what an fp16 overflow in one sample looks
like to the rest of the step, so this is the injection point that needs no test hook in the
product.

Before the fix, the NaN embeddings went into the SwAV queue, every following step was NaN until
they aged out, `train.max_bad_steps` (3) was exceeded and the run failed (FailureConfig with
max_failures=0 here, so a rollback shows as a failure); a checkpoint taken meanwhile held the
poisoned queue.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from seer_core.checkpoint import STATE_FILE, load_state
from seer_core.config import load_config
from seer_core.training import recipe_for
from services.storage import RunStorage
from services.trainer.checkpoint_writer import rank_file
from services.trainer.checkpoints import storage_for
from services.trainer.loop import train_loop_per_worker

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BATCH = 4
STEPS = 8
NAN_STEP = 6  # the 6th batch of the (ordered) pass holds the NaN image


def _load(storage: RunStorage, path: str, name: str, tmp_path: Path) -> dict[str, Any]:
    """A checkpoint file from the S3 store, loaded the way the trainer loads it."""
    local = tmp_path / f"{Path(path).name}-{name}"
    with storage.filesystem.open_input_stream(f"{path}/{name}") as handle:
        local.write_bytes(handle.read())
    return load_state(local)


def test_one_nonfinite_step_is_skipped_and_checkpoints_stay_finite(ray_cluster, s3_server,
                                                                    s3_bucket: str,
                                                                    tmp_path: Path) -> None:
    import ray.data
    from ray.data import ExecutionOptions
    from ray.train import DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    cfg = load_config("local", [
        "model.trunk=tiny", "model.head_hidden=[32]", "model.head_out=16",
        "model.prototypes=32", "augment.global_size=32", "augment.local_size=16",
        f"train.batch_size={BATCH}", "train.num_workers=1", "train.torch_threads=1",
        "train.cpus_per_worker=0.5", "train.seed=0", f"train.max_steps={STEPS}",
        "train.log_every_steps=1", "train.amp=off",
        "swav.queue_length=16", "swav.queue_start_step=0", "swav.freeze_prototypes_steps=2",
        "schedule.name=warmup_cosine", "schedule.warmup_steps=4", "schedule.cosine_steps=50",
        f"checkpoint.storage=s3://{s3_bucket}/runs",
        f"checkpoint.endpoint_url={s3_server.endpoint_url}", "checkpoint.run_name=nonfinite",
        "checkpoint.every_steps=3", "checkpoint.keep=10", "checkpoint.every_minutes=0",
        "metrics.status_port=0",
    ])
    assert cfg.train.max_bad_steps == 3

    # One pass = STEPS batches, in order; image 1 of batch NAN_STEP is NaN in every crop.
    rng = np.random.default_rng(0)
    columns = {
        g.key: rng.random((STEPS * BATCH, g.count, 3, g.size, g.size), dtype=np.float32)
        for g in recipe_for(cfg).groups
    }
    for value in columns.values():
        value[(NAN_STEP - 1) * BATCH + 1] = np.nan
    rows = [{key: value[i] for key, value in columns.items()} for i in range(STEPS * BATCH)]
    dataset = ray.data.from_items(rows, override_num_blocks=1)

    storage = storage_for(cfg)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": cfg.to_dict(), "synthetic": False},
        scaling_config=ScalingConfig(num_workers=1, use_gpu=False,
                                     resources_per_worker={"CPU": cfg.train.cpus_per_worker}),
        run_config=RunConfig(
            name=cfg.checkpoint.run_name,
            storage_path=storage.root,
            storage_filesystem=storage.filesystem,
            failure_config=FailureConfig(max_failures=0),  # a rollback fails the test
        ),
        datasets={"train": dataset},
        dataset_config=DataConfig(execution_options=ExecutionOptions(preserve_order=True)),
    )
    result = trainer.fit()

    # The run went on to its limit, and the one bad step was counted as skipped.
    assert result.error is None
    checkpoints = storage.list_checkpoints()
    final = storage.read_meta(checkpoints[-1][1])  # what rank 0 reported with the last one
    assert final["step"] == STEPS
    assert final["skipped_steps"] == 1

    # Step 6's checkpoint decision came on the skipped step: it was taken at step 7 instead.
    assert [step for step, _ in checkpoints] == [3, NAN_STEP + 1, STEPS]
    for step, path in checkpoints:
        saved = _load(storage, path, STATE_FILE, tmp_path)
        queue = _load(storage, path, rank_file(0), tmp_path)["queue"]
        assert saved["step"] == step
        assert torch.isfinite(queue["embeddings"]).all(), f"queue of step {step}"
        for name, tensor in saved["model"].items():
            assert torch.isfinite(tensor.float()).all(), f"{name} of step {step}"
        # A skip is no optimizer update: the schedule did not advance on it.
        assert saved["schedule"]["steps_done"] == (step if step < NAN_STEP else step - 1)
        assert np.isfinite(storage.read_meta(path)["loss"])
