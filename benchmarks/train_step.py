"""Prints the train step's images/s and the share of the step spent in Sinkhorn + SwAV loss.

    python benchmarks/train_step.py --trunk regnety_400mf --recipe seer --batch 16
    python benchmarks/train_step.py --trunk regnety_8gf --device cuda --amp auto --batch 32

Uses seer_core's real train step (normalise, forward per resolution, loss, backward, LARS,
schedule) on in-memory uint8 batches, so it measures compute only, not ingest. The loss share is
timed around the loss computation inside the step (with a device sync on CUDA).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from seer_core.config import load_config
from seer_core.training import build_train_state, train_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trunk", default="regnety_400mf")
    parser.add_argument("--recipe", default="seer", choices=["seer", "swav", "sslight"])
    parser.add_argument("--batch", type=int, default=16, help="images per step")
    parser.add_argument("--global-size", type=int, default=None, help="override crop size")
    parser.add_argument("--local-size", type=int, default=None, help="override crop size")
    parser.add_argument("--prototypes", type=int, default=3000)
    parser.add_argument("--sinkhorn-iterations", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", default="off", choices=["auto", "off", "bf16", "fp16"])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--activation-checkpointing", action="store_true")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = [
        f"model.trunk={args.trunk}",
        f"augment.recipe={args.recipe}",
        f"train.batch_size={args.batch}",
        f"model.prototypes={args.prototypes}",
        f"swav.sinkhorn_iterations={args.sinkhorn_iterations}",
        f"train.amp={args.amp}",
        f"train.use_gpu={'true' if args.device.startswith('cuda') else 'false'}",
        f"model.activation_checkpointing={'true' if args.activation_checkpointing else 'false'}",
        "model.head_hidden=[2048]",
        "swav.freeze_prototypes_steps=0",
    ]
    # The recipe's own crop sizes unless asked otherwise (the `local` preset shrinks them).
    overrides.append(f"augment.global_size={args.global_size or 'null'}")
    overrides.append(f"augment.local_size={args.local_size or 'null'}")
    cfg = load_config("local", overrides)
    state = build_train_state(cfg, args.device)
    gen = torch.Generator().manual_seed(0)
    batch = {
        key: torch.randint(0, 256, (args.batch, g.count, 3, g.size, g.size), generator=gen,
                           dtype=torch.uint8)
        for key, g in zip(state.recipe.keys, state.recipe.groups)
    }
    shapes = ", ".join(f"{g.count}x{g.size}" for g in state.recipe.groups)
    print(f"trunk {args.trunk}, recipe {args.recipe} ({shapes}), batch {args.batch}, "
          f"{args.prototypes} prototypes, {args.sinkhorn_iterations} Sinkhorn iterations, "
          f"device {args.device}, amp {args.amp}, torch threads {torch.get_num_threads()}")
    for _ in range(args.warmup):
        train_step(state, batch)
    step_s, loss_s = [], []
    for _ in range(args.steps):
        start = time.perf_counter()
        result = train_step(state, batch)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        step_s.append(time.perf_counter() - start)
        loss_s.append(result.loss_seconds)
    median = statistics.median(step_s)
    share = sum(loss_s) / sum(step_s)
    print(f"step: median {median * 1000:.1f} ms, {args.batch / median:.1f} images/s")
    print(f"Sinkhorn + loss: {statistics.median(loss_s) * 1000:.2f} ms median, "
          f"{100 * share:.2f}% of the step (target < 5%)")


if __name__ == "__main__":
    main()
