"""How do a run's weights grow and move between checkpoints? Norms and drift per trunk stage.

    python benchmarks/weight_drift.py runs/quality/checkpoints/quality/step_*

Under BatchNorm a convolution's output does not depend on its weights' scale, so an optimizer
step moves it by (step / weight norm): as the norms grow, the same learning rate turns smaller.
If a run's late climb out of its loss plateau (issue 18) were that effective learning rate
falling past some threshold, the norms would show a knee there, and a lower LR would bring the
climb sooner. For each checkpoint (in the order given) this prints the images seen, the L2 norm
of the trunk's convolution weights (all of them, then per stage), the norm of each head matrix,
and the trunk's drift since the previous checkpoint: the norm of the weight change, absolute and
as a share of the norm. A drift of many per cent per checkpoint with little loss progress is a
noise-dominated walk; a knee in the norms where the climb starts would point to the LR.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from seer_core.checkpoint import load_state  # noqa: E402


def stage_of(key: str) -> str:
    """`trunk.trunk_output.block3.block3-1...` -> `block3`; the stem and anything else keep
    their first trunk-level name (`stem`)."""
    parts = key.split(".")
    if len(parts) > 2 and parts[1] == "trunk_output":
        return parts[2]
    return parts[1] if len(parts) > 1 else parts[0]


def conv_weights(model: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The trunk's convolution kernels (4-d weights): the scale-invariant part under BN."""
    return {k: v.float() for k, v in model.items()
            if k.startswith("trunk.") and k.endswith(".weight") and v.dim() == 4}


def norm(tensors: list[torch.Tensor]) -> float:
    return math.sqrt(sum(float(t.pow(2).sum()) for t in tensors))


def describe(state: dict, previous: tuple[int, dict[str, torch.Tensor]] | None
             ) -> tuple[str, tuple[int, dict[str, torch.Tensor]]]:
    """One line for one checkpoint, and (its step, its conv weights) for the next line's
    drift."""
    model, step = state["model"], int(state["step"])
    convs = conv_weights(model)
    if not convs:
        raise SystemExit("no trunk convolution weights in this checkpoint")
    stages: dict[str, list[torch.Tensor]] = {}
    for key, value in convs.items():
        stages.setdefault(stage_of(key), []).append(value)
    total = norm(list(convs.values()))
    heads = [f"{k.removeprefix('head.')}={float(v.float().norm()):.1f}"
             for k, v in model.items()
             if k.startswith("head.") and k.endswith("weight") and v.dim() == 2]
    line = (f"{int(state.get('images_seen', 0)):>10,} images  step {step:>7}  "
            f"conv {total:7.1f}  " + "  ".join(f"{s} {norm(v):.1f}" for s, v in stages.items())
            + ("  | " + "  ".join(heads) if heads else ""))
    if previous is not None and previous[1].keys() == convs.keys():
        drift = norm([convs[k] - previous[1][k] for k in convs])
        line += (f"  | drift {drift:.2f} ({100 * drift / total:.1f}% of the norm) over "
                 f"{step - previous[0]} steps")
    return line, (step, convs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", type=Path,
                        help="checkpoint step folders (or their state.pt), oldest first")
    args = parser.parse_args(argv)
    previous = None
    # One checkpoint in memory at a time (plus the previous conv weights): a RegNetY-256GF
    # state is ~5 GB.
    for path in args.checkpoints:
        line, previous = describe(load_state(path), previous)
        print(f"{path.name if path.is_dir() else path.parent.name}: {line}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
