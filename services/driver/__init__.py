"""The `seer pretrain` driver process: start a local Ray on loopback (``local_ray``) or join a
cluster, build the trainer, print progress, turn signals into a stop with a final checkpoint
(``pretrain``), through the actor it shares with the workers (``control``: light, it imports
only Ray, so that it starts in a moment and the run's clock starts with it)."""
