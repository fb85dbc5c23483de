"""The TorchTrainer of a config: scaling, storage, failure and checkpoint policy, data."""

from __future__ import annotations

import os

from ray.train.torch import TorchTrainer

from seer_core.config import SeerConfig
from services.s3 import ENDPOINT_ENV
from services.trainer.checkpoints import storage_for
from services.trainer.loop import guarded_train_loop
from services.trainer.process_group import LoopbackTorchConfig

#: Endpoint settings the workers need (never credentials: those come from the chain).
_FORWARDED = (*ENDPOINT_ENV, "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_EC2_METADATA_DISABLED")


def build_trainer(cfg: SeerConfig, *, synthetic: bool = False,
                  actors: int | None = None) -> TorchTrainer:
    """The TorchTrainer for a config; `fit()` runs until a stop condition or a stop request.
    ``actors``: the ingest pool size, resolved by the driver."""
    from ray.train import DataConfig, FailureConfig, RunConfig, ScalingConfig

    storage = storage_for(cfg)
    datasets = None
    dataset_config = None
    if not synthetic:
        from services.ingest.stream import dataset_factory, execution_options

        datasets = {"train": dataset_factory(cfg, actors=actors)}
        dataset_config = DataConfig(execution_options=execution_options(cfg))
    return TorchTrainer(
        guarded_train_loop,
        train_loop_config={"config": cfg.to_dict(), "synthetic": synthetic},
        torch_config=LoopbackTorchConfig(timeout_s=int(cfg.train.collective_timeout_s)),
        scaling_config=ScalingConfig(
            # [min, max]: Ray Train restarts the group with the workers it can get (a node lost,
            # a node back) from the newest committed checkpoint; the LR follows the world size.
            num_workers=((cfg.train.min_workers, cfg.train.max_workers) if cfg.train.elastic
                         else cfg.train.max_workers),
            elastic_resize_monitor_interval_s=cfg.train.resize_check_s,
            use_gpu=cfg.train.use_gpu,
            resources_per_worker={"CPU": cfg.train.cpus_per_worker},
        ),
        run_config=RunConfig(
            name=cfg.checkpoint.run_name,
            storage_path=storage.root,
            storage_filesystem=storage.filesystem,
            failure_config=FailureConfig(max_failures=-1),
            # No checkpoint_config: Ray Train never sees seer's checkpoints, seer alone writes,
            # commits and deletes them (services.trainer.checkpoint_writer).
            worker_runtime_env={"env_vars": {n: os.environ[n] for n in _FORWARDED
                                             if n in os.environ}},
        ),
        datasets=datasets,
        dataset_config=dataset_config,
    )
