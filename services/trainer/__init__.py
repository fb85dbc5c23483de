"""The never-ending SwAV trainer on Ray Train: workers, rolling checkpoints, resume and faults.

Each worker takes batches of uint8 crops from its shard of the ingest stream, pass after pass,
for ever, and runs seer_core's train step. Everything that decides *when* something happens
(checkpoint now, stop now) is decided on rank 0 and broadcast, because every rank must take the
same checkpoint at the same step, and wall clocks differ between machines. Checkpoints are
seer's alone (`checkpoint_writer`, `checkpoints`): Ray Train restarts the group, never restores.
"""
