"""The `seer pretrain` driver process: start a local Ray on loopback (``local_ray``) or join a
cluster, build the trainer, print progress, turn signals into a stop with a final checkpoint
(``pretrain``). The control actor it shares with the workers is ``services.trainer.control``."""
