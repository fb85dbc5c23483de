"""Prints the train step's images/s, its GFLOP/s against a plain matmul, and the loss's share.

    python benchmarks/train_step.py                                  # the `local` preset's step
    python benchmarks/train_step.py --threads 2 --no-channels-last   # what threads / layout do
    python benchmarks/train_step.py --compile                        # torch.compile'd trunk
    python benchmarks/train_step.py --profile                        # + the ops that take the time
    python benchmarks/train_step.py --trunk regnety_400mf --batch 16 --prototypes 3000 \
        --global-size 224 --local-size 96 --threads 2 --set model.head_hidden=[2048]  # SEER shapes
    python benchmarks/train_step.py --trunk regnety_8gf --device cuda --amp auto --batch 32

Uses seer_core's real train step (normalise, photometric stage, forward per resolution, loss,
backward, optimizer, schedule) on in-memory uint8 batches, so it measures compute only, not
ingest. Everything comes from the preset (`--config`, default `local`) unless a flag or `--set`
says otherwise, so the default measures exactly the step a laptop run takes.

Why the matmul: "img/s" alone cannot say whether a step is slow because it has much to do or
because it does it badly. The step's floating-point work is counted once (torch's
FlopCounterMode: convolutions and matmuls, forward and backward) and divided by the median step
time; a large float32 matmul on the same threads is what this CPU does at best. The ratio is
the share of the machine the step uses; what is left on the table is the rest.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from seer_core.config import ConfigError, load_config
from seer_core.training import build_train_state, train_step


def matmul_gflops(device: torch.device, size: int = 1024, repeats: int = 20) -> float:
    """GFLOP/s of a square float32 matmul: the CPU's (or GPU's) practical ceiling."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(device)
    b = torch.randn(size, size, generator=gen).to(device)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times) / 1e9


def step_flops(state, batch) -> float:  # type: ignore[no-untyped-def]
    """Floating-point operations of one train step (forward + backward), counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        train_step(state, batch)
    return float(counter.get_total_flops())


def overrides_from(args: argparse.Namespace) -> list[str]:
    """Only what a flag set explicitly (a flag's dest is its config key; the schema checks the
    value): the preset decides the rest."""
    out = [f"{key}={str(value).lower() if isinstance(value, bool) else value}"
           for key, value in vars(args).items() if "." in key and value is not None]
    out.append(f"train.use_gpu={'true' if args.device.startswith('cuda') else 'false'}")
    return [*out, *args.overrides]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="local", help="preset or YAML (default: local)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="config overrides, after the flags below")
    parser.add_argument("--trunk", dest="model.trunk")
    parser.add_argument("--recipe", dest="augment.recipe")
    parser.add_argument("--batch", dest="train.batch_size", type=int, help="images per step")
    parser.add_argument("--global-size", dest="augment.global_size", type=int)
    parser.add_argument("--local-size", dest="augment.local_size", type=int)
    parser.add_argument("--prototypes", dest="model.prototypes", type=int)
    parser.add_argument("--sinkhorn-iterations", dest="swav.sinkhorn_iterations", type=int)
    parser.add_argument("--amp", dest="train.amp", help="auto, off, bf16 or fp16")
    parser.add_argument("--channels-last", dest="model.channels_last",
                        action=argparse.BooleanOptionalAction, default=None,
                        help="trunk memory format (default: the preset's)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the trunk (compile time is reported, not timed)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0: the preset's train.torch_threads, else torch's)")
    parser.add_argument("--activation-checkpointing", dest="model.activation_checkpointing",
                        action="store_const", const=True)
    parser.add_argument("--profile", action="store_true",
                        help="also print where the step's time goes (torch.profiler, top ops)")
    args = parser.parse_args()

    try:
        cfg = load_config(args.config, overrides_from(args))
    except ConfigError as exc:  # a flag's value, as the schema checks it
        parser.error(str(exc))
    threads = args.threads or cfg.train.torch_threads
    if threads:
        torch.set_num_threads(threads)
    state = build_train_state(cfg, args.device)
    if args.compile:
        state.model.trunk.compile()  # in place: the state dict keeps its keys
    gen = torch.Generator().manual_seed(0)
    batch = {
        key: torch.randint(0, 256, (cfg.train.batch_size, g.count, 3, g.size, g.size),
                           generator=gen, dtype=torch.uint8)
        for key, g in zip(state.recipe.keys, state.recipe.groups)
    }
    shapes = ", ".join(f"{g.count}x{g.size}" for g in state.recipe.groups)
    print(f"config {args.config}: trunk {cfg.model.trunk}, recipe {cfg.augment.recipe} "
          f"({shapes}), batch {cfg.train.batch_size}, {list(cfg.model.prototypes)} prototypes, "
          f"optimizer {cfg.optim.name}, photometric on trainer "
          f"{cfg.augment.photometric_on_device}, channels_last {cfg.model.channels_last}, "
          f"compile {args.compile}, device {args.device}, amp {cfg.train.amp}, "
          f"torch threads {torch.get_num_threads()}", flush=True)
    start = time.perf_counter()
    for _ in range(args.warmup):
        train_step(state, batch)
    if args.compile:
        print(f"compile + {args.warmup} warm-up steps: {time.perf_counter() - start:.1f} s",
              flush=True)
    flops = step_flops(state, batch)
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
    step_gflops = flops / median / 1e9
    peak = matmul_gflops(torch.device(args.device))
    print(f"step: median {median * 1000:.1f} ms, {cfg.train.batch_size / median:.1f} images/s "
          f"(p90 {sorted(step_s)[int(0.9 * (len(step_s) - 1))] * 1000:.1f} ms)")
    print(f"work: {flops / 1e9:.2f} GFLOP per step, {step_gflops:.1f} GFLOP/s; float32 matmul "
          f"on the same threads: {peak:.1f} GFLOP/s; the step uses "
          f"{100 * step_gflops / peak:.0f}% of it")
    print(f"Sinkhorn + loss: {statistics.median(loss_s) * 1000:.2f} ms median, "
          f"{100 * share:.2f}% of the step (target < 5%)")
    if args.profile:
        print_profile(state, batch, steps=5)


def print_profile(state, batch, steps: int) -> None:  # type: ignore[no-untyped-def]
    """The ops that take the step's time, by self CPU time: what a faster step must attack."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            train_step(state, batch)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
