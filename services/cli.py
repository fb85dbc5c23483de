"""The `seer` command: pretrain, eval, seed, status, models, config, export.

Every command validates its input before doing anything slow, and says what to do next when it
cannot go on (a missing feed folder, an unknown preset, no checkpoint yet).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

from seer_core.config import ConfigError, SeerConfig, load_config, preset_names

# Where `seer seed` writes by default: the `local` preset's feed, and `eval.data`'s default.
SAMPLES_DIR = "runs/sample-images"
LABELLED_DIR = "runs/labelled"
# Where `seer seed --shards` writes by default (the sample pool as numbered shards).
SHARDS_DIR = "runs/shards"
SHARD_FORMATS = {"tar": ("tar",), "parquet": ("parquet",), "both": ("tar", "parquet")}
DEFAULT_PER_SHARD = 64

T = TypeVar("T")


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", "-c", default="local",
        help="a preset name (%(default)s, seer-rg256, sslight-mobilenet, ...) or a YAML file",
    )
    parser.add_argument(
        "--set", "-s", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one key, e.g. --set train.max_steps=100 (repeatable)",
    )


def _config(args: argparse.Namespace, extra: Sequence[str] = ()) -> SeerConfig:
    return load_config(args.config, [*args.overrides, *extra])


def cmd_pretrain(args: argparse.Namespace) -> int:
    from services.driver.pretrain import RunFailed, run_pretraining

    cfg = _config(args, [f"train.{key}={value}" for key, value in (
        ("max_steps", args.max_steps), ("max_minutes", args.max_minutes)) if value is not None])
    try:
        run_pretraining(cfg, address=args.address, synthetic=args.synthetic)
    except RunFailed as exc:
        print(f"seer: run failed: {exc}", file=sys.stderr)
        return 1
    return 0


def _at_least_one(text: str) -> int:
    """argparse type: an integer >= 1 (a count of images), with a message that says so."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def cmd_seed(args: argparse.Namespace) -> int:
    """The sample pool the `local` preset reads, the same images packed into shards (--shards:
    a shard feed to try, or to upload), or (--labelled) the set `seer eval` reads."""
    if args.labelled and args.count is not None:
        print("seer seed: --count is for the sample pool; with --labelled give "
              "--train-per-class and --val-per-class", file=sys.stderr)
        return 2
    unused = [flag for flag, value in (("--train-per-class", args.train_per_class),
                                       ("--val-per-class", args.val_per_class)) if value]
    if unused and not args.labelled:
        print(f"seer seed: {unused[0]} needs --labelled", file=sys.stderr)
        return 2
    if args.shards and args.labelled:
        print("seer seed: --shards packs the sample pool; the labelled set (--labelled) is "
              "folders per class, never shards", file=sys.stderr)
        return 2
    unused = [flag for flag, value in (("--format", args.format),
                                       ("--per-shard", args.per_shard)) if value is not None]
    if unused and not args.shards:
        print(f"seer seed: {unused[0]} needs --shards", file=sys.stderr)
        return 2
    default = LABELLED_DIR if args.labelled else SHARDS_DIR if args.shards else SAMPLES_DIR
    out = Path(args.out or default)
    if out.exists() and not out.is_dir():
        print(f"seer seed: {out} is a file, not a folder", file=sys.stderr)
        return 2
    if out.exists() and any(out.iterdir()) and not args.force:
        print(f"{out} already holds files; add --force to write into it anyway (images of the "
              "same name are replaced, others stay)", file=sys.stderr)
        return 1
    start = time.perf_counter()
    count = 2000 if args.count is None else args.count
    if args.shards:
        formats = SHARD_FORMATS[args.format or "tar"]
        per_shard = args.per_shard or DEFAULT_PER_SHARD
        written = _seed_shards(out, count, args.seed, formats, per_shard)
        _report_shards(out, count, written, min(count, per_shard),
                       time.perf_counter() - start)
        return 0
    if not args.labelled:
        from services.images.sample import generate_sample_images

        n = generate_sample_images(out, count, seed=args.seed, progress=True)
        print(f"wrote {n} sample images to {out} in {time.perf_counter() - start:.1f} s")
        return 0
    from services.images.labelled import generate_labelled_images
    from services.images.shapes import OBJECT_KINDS

    train = args.train_per_class or 100
    val = args.val_per_class or 50
    written = generate_labelled_images(out, train_per_class=train, val_per_class=val,
                                       seed=args.seed, progress=True)
    print(f"wrote {written['train']} train + {written['val']} val labelled images to {out} "
          f"in {time.perf_counter() - start:.1f} s")
    print(f"  {len(OBJECT_KINDS)} classes ({train} train + {val} val each): "
          f"{', '.join(OBJECT_KINDS)}")
    print(f"  layout: {out / 'train'}/<class>/*.jpg, {out / 'val'}/<class>/*.jpg")
    print(f"next: seer eval --data {shlex.quote(str(out))}   (evaluates the newest checkpoint "
          "that seer pretrain wrote for --config's run)")
    return 0


def _seed_shards(out: Path, count: int, seed: int, formats: Sequence[str],
                 per_shard: int) -> dict[str, list[Path]]:
    """The sample pool (the very bytes `seer seed` writes) as numbered shards in ``out``, per
    format. The images are generated once into a hidden folder beside ``out`` (same disk, so no
    small /tmp fills up) and packed from there, one shard in memory at a time."""
    import tempfile

    from services.evaluator.progress import Progress
    from services.images.sample import generate_sample_images
    from services.images.shards import (
        directory_samples,
        write_parquet_shards,
        write_webdataset_shards,
    )

    writers = {"tar": write_webdataset_shards, "parquet": write_parquet_shards}
    out.parent.mkdir(parents=True, exist_ok=True)
    written = {}
    with tempfile.TemporaryDirectory(prefix=f".{out.name}-images-", dir=out.parent) as images:
        generate_sample_images(images, count, seed=seed, progress=True)
        for fmt in formats:
            samples = directory_samples(images)
            if count >= 200:  # as generate_sample_images shows its own
                samples = _with_progress(samples, Progress(f"{fmt} shards", tty=True), count)
            written[fmt] = writers[fmt](samples, out, per_shard)
    return written


def _with_progress(items: Iterable[T], progress: Callable[[int, int], None],
                   total: int) -> Iterator[T]:
    for done, item in enumerate(items, 1):
        yield item
        progress(done, total)


def _report_shards(out: Path, count: int, written: dict[str, list[Path]], per_shard: int,
                   seconds: float) -> None:
    """What was written, and the feed.uri to train on it (quoted: a shell expands braces)."""
    from services.feed.shards.names import shard_pattern

    patterns = [shard_pattern([p.as_posix() for p in paths]) for paths in written.values()]
    print(f"wrote {count} sample images to {out} in {seconds:.1f} s:")
    for (fmt, paths), pattern in zip(written.items(), patterns, strict=True):
        size = sum(p.stat().st_size for p in paths) / 1e6
        print(f"  {len(paths)} {fmt} shard(s) of up to {per_shard} images, "
              f"{size:.1f} MB: feed.uri={pattern}")
    print(f"next: seer pretrain --set {shlex.quote(f'feed.uri={patterns[0]}')}\n"
          f"  or, in the checkout: make run FEED={shlex.quote(patterns[0])}")


def cmd_status(args: argparse.Namespace) -> int:
    from services.storage import resolve_storage

    cfg = _config(args)
    run = cfg.checkpoint.run_name
    storage = resolve_storage(cfg.checkpoint.storage, run, cfg.checkpoint.endpoint_url)
    checkpoints = storage.list_checkpoints()
    if not checkpoints:
        print(json.dumps({"run": run, "checkpoints": 0}) if args.json else
              f"no checkpoint yet for run {run!r} in {storage.display}")
        return 1
    step, path = checkpoints[-1]
    meta = storage.read_meta(path)
    steps = [s for s, _ in checkpoints]
    summary = {"run": run, "storage": storage.display, "checkpoints": len(checkpoints),
               "steps": steps, "newest": path, "step": meta.get("step", step),
               **{key: meta.get(key) for key in ("images_seen", "loss", "lr", "world_size")},
               "written": meta.get("time"),
               "age_seconds": round(time.time() - meta["time"], 1) if "time" in meta else None}
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"run {run} in {storage.display}")

    def fmt(key: str, spec: str, suffix: str = "") -> str | None:
        return None if summary[key] is None else f"{summary[key]:{spec}}{suffix}"

    for label, text in [("checkpoints", f"{len(steps)} (steps {', '.join(map(str, steps))})"),
                        ("newest", path), ("step", summary["step"]),
                        ("images seen", summary["images_seen"]), ("loss", fmt("loss", ".4f")),
                        ("lr", fmt("lr", ".6g")), ("workers", fmt("world_size", "")),
                        ("written", fmt("age_seconds", ".0f", " s ago"))]:
        if text is not None:
            print(f"  {label + ':':<14}{text}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from seer_core.models import TRUNK_NAMES, model_table

    names = args.names or list(TRUNK_NAMES)
    unknown = [n for n in names if n not in TRUNK_NAMES]
    if unknown:
        print(f"unknown trunk {unknown[0]!r}; allowed: {', '.join(TRUNK_NAMES)}", file=sys.stderr)
        return 2
    print(model_table(names))
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    if args.list:
        print("\n".join(preset_names()))
        return 0
    if args.schema:  # for editors and manifest checks: presets and --config files follow it
        print(json.dumps(SeerConfig.model_json_schema(), indent=2))
        return 0
    from seer_core.training.preflight import preflight

    cfg = _config(args)
    preflight(cfg)  # what the workers would build: a value that passes here starts a run
    print(cfg.to_yaml(), end="")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    import torch

    from seer_core.checkpoint import load_state
    from seer_core.models import build_swav_model, export_trunk_state_dict
    from seer_core.training import config_of

    saved = load_state(args.checkpoint)
    cfg = config_of(saved)
    model = build_swav_model(cfg.model.trunk, cfg.model.head_hidden, cfg.model.head_out,
                             cfg.model.head_batchnorm, cfg.model.prototypes)
    model.load_state_dict(saved["model"])
    torch.save(export_trunk_state_dict(model), args.out)
    print(f"wrote the {cfg.model.trunk} trunk (torchvision key names) of step {saved['step']} "
          f"to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seer",
        description="Never-ending SEER pretraining (SwAV on RegNetY) on a stream of images.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pretrain", help="train until stopped (Ctrl-C/SIGTERM checkpoint first)")
    _add_config_args(p)
    p.add_argument("--max-steps", type=int, help="stop after this step (demos, tests)")
    p.add_argument("--max-minutes", type=float, help="stop after this many minutes")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else local)")
    p.add_argument("--synthetic", action="store_true",
                   help="train on in-memory random batches (the compute-only ceiling)")
    p.set_defaults(func=cmd_pretrain)

    from services.evaluator.command import add_eval_parser

    add_eval_parser(sub, _add_config_args)

    p = sub.add_parser(
        "seed", help="write sample images for the embedded default feed (--shards: packed into "
        "WebDataset/Parquet shards; --labelled: a labelled set for seer eval)")
    p.add_argument("--out", help=f"folder (default: {SAMPLES_DIR}, {SHARDS_DIR} with --shards, "
                   f"{LABELLED_DIR} with --labelled)")
    p.add_argument("--count", type=_at_least_one, help="sample images (default: 2000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="write into a non-empty folder")
    p.add_argument("--labelled", action="store_true",
                   help="write a labelled set instead: OUT/train/<class>/*.jpg and "
                   "OUT/val/<class>/*.jpg, one generated object per image, its kind the class")
    p.add_argument("--train-per-class", type=_at_least_one, metavar="N",
                   help="--labelled: training images per class (default: 100)")
    p.add_argument("--val-per-class", type=_at_least_one, metavar="N",
                   help="--labelled: validation images per class (default: 50)")
    p.add_argument("--shards", action="store_true",
                   help="pack the sample images into numbered shards instead (OUT/00000.tar, "
                   "...), as the public corpora are published; prints the feed.uri to use")
    p.add_argument("--format", choices=sorted(SHARD_FORMATS),
                   help="--shards: WebDataset tars, Parquet image tables (Hugging Face layout) "
                   "or both (default: tar)")
    p.add_argument("--per-shard", type=_at_least_one, metavar="N",
                   help=f"--shards: images per shard (default: {DEFAULT_PER_SHARD})")
    p.set_defaults(func=cmd_seed)

    p = sub.add_parser("status", help="newest checkpoint, step, images seen, loss, LR")
    _add_config_args(p)
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("models", help="trunks: parameters, output width, GFLOPs at 224")
    p.add_argument("names", nargs="*", help="only these trunks")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("config", help="print the resolved config (or --list the presets, or "
                       "its --schema)")
    _add_config_args(p)
    p.add_argument("--list", action="store_true")
    p.add_argument("--schema", action="store_true",
                   help="print the config's JSON Schema (every key, its type, bounds and help)")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("export", help="a checkpoint's trunk as a torchvision state_dict")
    p.add_argument("checkpoint", help="a checkpoint folder or state.pt")
    p.add_argument("out", help="output .pt file")
    p.set_defaults(func=cmd_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"seer: config error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("seer: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
