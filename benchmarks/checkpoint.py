"""Prints what a checkpoint costs the step loop and what a resume reads, before and after issue 17.

    python benchmarks/checkpoint.py                       # regnety_400mf + LARS, 2 ranks
    python benchmarks/checkpoint.py --trunk regnety_8gf --world 4

SEER's RegNetY-256GF with LARS momentum is a ~12 GB state; this machine holds a scaled one (a
smaller RegNetY, the same optimizer), and the figures scale with its bytes. Ranks are real
processes in a gloo group on 127.0.0.1, checkpointing into a local folder.

- **loop pause per checkpoint**: *before*, the loop serialised the state and waited for the
  copy into the store (`ray.train.report` in SYNC mode; measured here as the same work done
  inline: `write_files` + `store_file` per file). *After*, the loop pays only for the copy into
  host memory (`CheckpointWriter.start`); serialisation, upload and commit run beside training.
- **bytes read per resume** (all ranks): *before*, every rank read `state.pt` and its own file;
  *after*, rank 0 reads `state.pt` and broadcasts it, each rank reads its own file. Counted
  from the files `restore` actually opens (after) and from the same files per rank (before).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from services.driver.local_ray import free_loopback_port


def _rank(rank: int, world: int, port: int, trunk: str, storage: str, out: str,
          repeats: int) -> None:
    from seer_core.checkpoint import STATE_FILE
    from seer_core.config import load_config
    from seer_core.training import build_train_state, train_step
    from services.trainer import checkpoints
    from services.trainer.batches import synthetic_batches
    from services.trainer.checkpoint_writer import CheckpointWriter, snapshot, write_files
    from services.trainer.checkpoints import restore, storage_for

    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}",
                                         rank=rank, world_size=world)
    cfg = load_config("local", [f"model.trunk={trunk}", "optim.name=lars", "train.amp=off",
                                f"train.num_workers={world}", f"checkpoint.storage={storage}",
                                "checkpoint.run_name=bench", "train.batch_size=4"])
    state = build_train_state(cfg)
    train_step(state, next(synthetic_batches(cfg, state.recipe, rank)))  # optimizer state
    store = storage_for(cfg)
    report: dict[str, Any] = {"rank": rank}

    inline = []
    for i in range(repeats):  # before: serialise and store inside the loop
        with tempfile.TemporaryDirectory() as tmp:
            began = time.perf_counter()
            for local in write_files(snapshot(state, rank, world, {"step": state.step}),
                                     Path(tmp)):
                store.store_file(local, f"{store.run_path}/inline_{i}/{local.name}")
            inline.append(time.perf_counter() - began)
    writer = CheckpointWriter(store, rank, world, state.device, keep=2, grace_s=600)
    paused = []
    for _ in range(repeats):  # after: the loop pays for the host copy only
        state.step += 1
        paused.append(writer.start(state, {"step": state.step}))
        writer.finish()  # (outside the measured pause: the loop would train on meanwhile)
    writer.close()
    report["pause_before_s"] = min(inline)
    report["pause_after_s"] = min(paused)

    read: list[int] = []
    real = checkpoints.load_state

    def counting(path: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        read.append(Path(path).stat().st_size)
        return real(path, *args, **kwargs)

    checkpoints.load_state = counting  # type: ignore[assignment]
    fresh = build_train_state(cfg)
    restore(fresh, rank, world)
    newest = store.list_checkpoints()[-1][1]
    report["read_after_bytes"] = sum(read)
    own = Path(newest) / checkpoints.rank_file(rank)
    report["read_before_bytes"] = (Path(newest) / STATE_FILE).stat().st_size + own.stat().st_size
    report["state_bytes"] = (Path(newest) / STATE_FILE).stat().st_size
    Path(out, f"rank{rank}.json").write_text(json.dumps(report))
    torch.distributed.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trunk", default="regnety_400mf")
    parser.add_argument("--world", type=int, default=2, help="ranks (processes)")
    parser.add_argument("--repeats", type=int, default=3, help="checkpoints timed (min kept)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="seer-bench-ckpt-") as root:
        out = Path(root, "out")
        out.mkdir()
        torch.multiprocessing.spawn(
            _rank, args=(args.world, free_loopback_port(), args.trunk, str(Path(root, "store")),
                         str(out), args.repeats), nprocs=args.world, join=True)
        reports = [json.loads(Path(out, f"rank{r}.json").read_text())
                   for r in range(args.world)]
    state_mb = reports[0]["state_bytes"] / 2**20
    seer_scale = 12 * 1024 / state_mb
    print(f"{args.trunk} + LARS: state.pt {state_mb:.1f} MiB; {args.world} ranks "
          f"(SEER RegNetY-256GF: ~12 GiB, x{seer_scale:.0f})")
    before = max(r["pause_before_s"] for r in reports)
    after = max(r["pause_after_s"] for r in reports)
    print(f"loop pause per checkpoint (slowest rank, best of {args.repeats}): before "
          f"{before * 1000:.0f} ms, after {after * 1000:.0f} ms (x{before / after:.1f} less); "
          f"scaled to 12 GiB: {before * seer_scale:.0f} s -> {after * seer_scale:.0f} s")
    read_before = sum(r["read_before_bytes"] for r in reports) / 2**20
    read_after = sum(r["read_after_bytes"] for r in reports) / 2**20
    print(f"bytes read per resume (all ranks): before {read_before:.1f} MiB, after "
          f"{read_after:.1f} MiB; at 64 ranks of a 12 GiB state: before "
          f"{64 * 12:.0f} GiB, after 12 GiB")


if __name__ == "__main__":
    main()
