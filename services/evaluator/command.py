"""`seer eval`: the command line of the evaluator (wired into services.cli).

Flags are turned into `eval.*` config overrides, so one validation (with its messages naming
the key and the allowed values) covers the YAML file, `--set` and the flags, and flags win.
Exit codes: 0 done, else the error's `exit_code` (services.evaluator).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

from seer_core.config import SeerConfig, load_config
from seer_core.config.schema import EVAL_PROTOCOLS, EvalConfig
from services.evaluator import BadInputError, EvaluatorError

log = logging.getLogger("seer.eval")


#: Flags that set one eval.* key as given (their dest is the key). Type, allowed values and help
#: come from the schema, so a flag never disagrees with the key it overrides.
KEY_FLAGS = {"--data": "data", "--stage": "stage", "--baseline": "baseline",
             "--image-size": "image_size", "--batch-size": "batch_size", "--device": "device",
             "--results": "results", "--interval": "interval_s", "--metrics-port": "metrics_port",
             "--metrics-addr": "metrics_addr"}


def add_eval_parser(sub: Any, add_config_args: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser(
        "eval", help="evaluate checkpoints (kNN, linear, low-shot) once, or --watch the store",
        description="Frozen-trunk evaluation of a checkpoint on a labelled set, with a "
        "random-initialised trunk of the same architecture as the baseline. Every flag "
        "overrides the eval.* key of the config named in brackets.")
    add_config_args(p)
    p.add_argument("--checkpoint", default="latest", metavar="latest|STEP|PATH",
                   help="the newest checkpoint of the run (default), a step of it, or a "
                   "checkpoint folder / state.pt (local or s3://)")
    p.add_argument("--protocol", metavar="LIST",
                   help=f"comma-separated: {', '.join(EVAL_PROTOCOLS)} [eval.protocols]")
    p.add_argument("--finetune", action="store_true",
                   help="add short fine-tuning to the protocols [eval.finetune_steps]")
    p.add_argument("--knn-k", metavar="K[,K]", help="kNN neighbour counts [eval.knn_k]")
    for flag, key in KEY_FLAGS.items():
        field = EvalConfig.model_fields[key]
        kind, literal = field.annotation, typing.get_origin(field.annotation) is Literal
        p.add_argument(flag, dest=key, type=kind if kind in (int, float) else None,
                       choices=typing.get_args(kind) if literal else None,
                       help=f"{field.description} [eval.{key}]")
    p.add_argument("--no-results", action="store_true",
                   help="print only: no results file, no PNG")
    p.add_argument("--json", action="store_true", help="print the rows as JSON lines")
    p.add_argument("--watch", action="store_true",
                   help="poll the checkpoint store and evaluate each new checkpoint once")
    p.add_argument("--max-polls", type=int, metavar="N",
                   help="--watch: stop after N polls (1: a scheduled job's single pass)")
    p.set_defaults(func=cmd_eval)


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def eval_overrides(args: argparse.Namespace) -> list[str]:
    """The flags as `eval.key=value` overrides (JSON values are YAML values)."""
    values = {key: getattr(args, key) for key in KEY_FLAGS.values()}
    if args.protocol is not None:
        protocols = _split(args.protocol)
        unknown = [p for p in protocols if p not in EVAL_PROTOCOLS]
        if unknown or not protocols:
            raise BadInputError(f"--protocol: {unknown[0] if unknown else args.protocol!r} is "
                                f"not allowed; allowed: {', '.join(EVAL_PROTOCOLS)}")
        values["protocols"] = list(dict.fromkeys(protocols))
    if args.knn_k is not None:
        try:
            values["knn_k"] = [int(k) for k in _split(args.knn_k)]
        except ValueError as exc:
            raise BadInputError(f"--knn-k: {args.knn_k!r} must be integers, e.g. 20,200") from exc
    return [f"eval.{key}={json.dumps(v)}" for key, v in values.items() if v is not None]


def resolve_config(args: argparse.Namespace) -> SeerConfig:
    """The config with the flags applied; `--finetune` adds fine-tuning to the protocols."""
    cfg = load_config(args.config, [*args.overrides, *eval_overrides(args)])
    if args.finetune and "finetune" not in cfg.eval.protocols:
        cfg.eval.protocols.append("finetune")
    return cfg


@contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM/SIGINT set `stop` (the loop ends after the current evaluation); a second one
    interrupts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        log.warning("eval: %s received; stopping after the current evaluation",
                    signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,  # a no-op if the root has handlers
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("seer").setLevel(logging.INFO)


def _print_report(rows: list[dict[str, Any]], baseline: list[dict[str, Any]], loaded: Any,
                  data: Any, results: Any) -> None:
    base = {(r["protocol"], r["metric"]): r["value"] for r in baseline}
    table: dict[str, dict[str, float]] = {}
    for r in rows:
        table.setdefault(r["protocol"], {})[r["metric"]] = r["value"]
    first = rows[0] if rows else {}
    print(f"run {first.get('run')} step {loaded.step} ({loaded.images_seen} images seen), "
          f"{first.get('stage')} features, {data.source or first.get('data')}: "
          f"{len(data.classes)} classes, {len(data.train.labels)} train / "
          f"{len(data.val.labels)} val images"
          + (f", skipped {sum(data.skipped.values())} unreadable" if data.skipped else ""))
    header = f"  {'protocol':<14}{'top1':>16}{'top5':>8}"
    if base:
        header += f"{'random top1':>13}{'gain':>8}"
    print(header)
    nan = float("nan")
    for protocol, values in table.items():
        top1 = f"{values.get('top1', nan):.2f}"
        if "top1_std" in values:
            top1 += f" ± {values['top1_std']:.2f}"
        line = f"  {protocol:<14}{top1:>16}{values.get('top5', nan):>8.2f}"
        if (protocol, "top1") in base:
            b = base[(protocol, "top1")]
            line += f"{b:>13.2f}{values.get('top1', nan) - b:>+8.2f}"
        print(line)
    if results is not None:
        print(f"results: {results.uri}\nplot:    {results.plot_uri}")


def cmd_eval(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except (EvaluatorError, OSError) as exc:  # OSError (results folder, store): a retry's worth
        print(f"seer: eval: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 1)


def _run(args: argparse.Namespace) -> int:
    from services.evaluator.checkpoints import resolve_checkpoint
    from services.evaluator.gauges import EvalGauges
    from services.evaluator.results import ResultsFile, default_results_uri
    from services.evaluator.run import EvalSession, Evaluator, watch
    from services.storage import resolve_storage

    if args.max_polls is not None and (args.max_polls < 1 or not args.watch):
        raise BadInputError("--max-polls: needs --watch and N >= 1")
    cfg = resolve_config(args)
    s = cfg.eval
    _setup_logging()
    if s.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise BadInputError("eval.device: 'cuda' but no CUDA device is visible; use auto "
                                "or cpu")
    spec = args.checkpoint.strip()
    storage = None
    if args.watch or spec == "latest" or spec.isdigit():
        try:
            storage = resolve_storage(cfg.checkpoint.storage, cfg.checkpoint.run_name,
                                      cfg.checkpoint.endpoint_url)
        except ValueError as exc:
            raise BadInputError(str(exc)) from exc
    results = None
    if not args.no_results:
        uri = s.results or default_results_uri(cfg.checkpoint.storage, cfg.checkpoint.run_name)
        try:
            results = ResultsFile(uri, cfg.checkpoint.endpoint_url)
        except ValueError as exc:
            raise BadInputError(str(exc)) from exc
    evaluator = Evaluator(s, endpoint_url=s.endpoint_url or cfg.feed.endpoint_url)
    if args.watch:
        gauges = EvalGauges()
        if s.metrics_port:
            port = gauges.serve(s.metrics_port, s.metrics_addr)
            print(f"seer_eval_* gauges on http://{s.metrics_addr}:{port}/metrics", file=sys.stderr)
        if results is not None:
            print(f"results: {results.uri} (plot: {results.plot_uri})", file=sys.stderr)
        stop = threading.Event()
        try:
            with stop_on_signals(stop):
                stats = watch(EvalSession(evaluator, results, gauges), storage,
                              interval_s=s.interval_s, stop=stop, max_polls=args.max_polls)
        finally:
            gauges.close()
        log.info("eval: stopped after %d poll(s); evaluated steps %s", stats.polls,
                 stats.evaluated or "none")
        return 1 if args.max_polls is not None and stats.errors else 0
    session = EvalSession(evaluator, results)
    ref = resolve_checkpoint(spec, storage, cfg.checkpoint.endpoint_url)
    rows, baseline, loaded = session.process(ref, run=storage.run_name if storage else None)
    if args.json:
        for row in [*baseline, *rows]:
            print(json.dumps(row))
    else:
        _print_report(rows, baseline, loaded, evaluator.data(), results)
    return 0

