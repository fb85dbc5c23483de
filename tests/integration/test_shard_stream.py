"""The shard feed through the never-ending stream into a real Ray Train run: WebDataset tars on
the real S3 server named by a brace pattern (one of them truncated, one missing), read by the
shard read tasks, cropped by the ingest actors, trained on by 2 gloo workers."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from seer_core.config import load_config
from services.driver.pretrain import run_pretraining
from services.images.sample import generate_sample_images
from services.images.shards import directory_samples, write_webdataset_shards
from tests.s3server import put_objects

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_tar_shards_on_s3_train_a_real_run(ray_cluster: Any, s3_server: Any, s3_client: Any,
                                           tmp_path: Path) -> None:
    bucket = f"shards-{uuid.uuid4().hex[:8]}"
    s3_client.create_bucket(Bucket=bucket)
    images = tmp_path / "images"
    generate_sample_images(images, 24, seed=2, min_side=64, max_side=128, progress=False)
    paths = write_webdataset_shards(directory_samples(images), tmp_path / "shards", 6)
    objects = {f"laion/{p.name}": p.read_bytes() for p in paths}  # 00000..00003
    objects["laion/00001.tar"] = objects["laion/00001.tar"][:5000]  # cut: bad_shard, go on
    del objects["laion/00003.tar"]  # in the pattern, never there: vanished, go on
    put_objects(s3_client, bucket, objects)
    steps = 4  # x 2 workers x batch 4 = 32 images from 2 good shards of 6: shards come back
    cfg = load_config("local", [
        "model.trunk=tiny", "model.head_hidden=[32]", "model.head_out=16",
        "model.prototypes=32", "augment.global_size=32", "augment.local_size=16",
        "augment.min_side=16", "train.batch_size=4", "train.num_workers=2",
        "train.torch_threads=1", "swav.queue_length=0", "swav.freeze_prototypes_steps=2",
        "schedule.name=warmup_cosine", "schedule.warmup_steps=2", "schedule.cosine_steps=20",
        f"feed.uri=s3://{bucket}/laion/{{00000..00003}}.tar",
        f"feed.endpoint_url={s3_server.endpoint_url}", "feed.shuffle_buffer=8",
        "feed.images_per_shard_visit=4", "ingest.actors=1", "ingest.cpus_per_actor=0.5",
        "ingest.read_tasks=1", "ingest.chunk_images=8", "ingest.read_task_cpus=0.25",
        "train.cpus_per_worker=0.5", f"checkpoint.storage={tmp_path / 'ckpt'}",
        "checkpoint.run_name=shards", "checkpoint.every_steps=100", "checkpoint.keep=2",
        "checkpoint.every_minutes=0", "metrics.status_port=0", f"train.max_steps={steps}",
    ])
    assert cfg.feed.kind == "auto"
    outcome = run_pretraining(cfg, install_signals=False)
    assert outcome.step == steps and outcome.images_seen == steps * 4 * 2
