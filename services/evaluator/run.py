"""Evaluating checkpoints (and the random-init baseline) on the labelled set: once, or --watch.

`Evaluator` holds what is worth keeping between checkpoints in a long-lived process: the decoded
labelled set (loaded once) and the random baseline's results (computed once per architecture).
`EvalSession` adds the results file, the PNG and the gauges around it; `seer eval` uses it for
one checkpoint, `watch` for each new one.

`watch` polls the store and evaluates the newest checkpoint not evaluated yet (so a busy
evaluator keeps up with the newest weights, and an idle one back-fills older checkpoints that are
still there). A step counts as done only once its rows are in the results file, so a restarted
evaluator skips what it already did, and a checkpoint that vanished, could not be read, or failed
to evaluate is retried at the next poll, unless a newer one came along. Nothing that goes wrong
in a poll stops the loop: it is logged, counted in `seer_eval_errors_total{reason}`, and the loop
sleeps until the next poll. SIGTERM/SIGINT (set `stop`) end it after the current evaluation.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from statistics import fmean, pstdev
from typing import Any

import torch
from torch import nn

from seer_core.config.schema import EvalConfig
from seer_core.evaluation import (
    EvalError,
    extract_features,
    finetune,
    frozen_trunk,
    knn_classify,
    linear_probe,
    lowshot,
    lowshot_indices,
    random_trunk,
    trunk_from_checkpoint,
)
from services.evaluator import BadCheckpointError, BadInputError, EvaluatorError
from services.evaluator.checkpoints import (
    CheckpointRef,
    LoadedCheckpoint,
    list_refs,
    load_checkpoint,
)
from services.evaluator.gauges import EvalGauges
from services.evaluator.plot import plot_accuracy
from services.evaluator.progress import Progress
from services.evaluator.results import (
    ResultsFile,
    done_steps,
    eval_settings,
    rows_for,
    settings_id,
)
from services.labelled import LabelledDataError, LabelledSet, load_labelled
from services.storage import RunStorage

log = logging.getLogger("seer.eval")

#: (protocol, metric, value) triples, before run/step/... are attached.
Figures = list[tuple[str, str, float]]


def lowshot_name(fraction: float) -> str:
    """0.01 -> lowshot1pct, 0.1 -> lowshot10pct, 0.005 -> lowshot0.5pct."""
    return f"lowshot{round(fraction * 100, 6):g}pct"


class Evaluator:
    """Runs the configured protocols on a trunk; loads the labelled set once per process."""

    def __init__(self, settings: EvalConfig, *, endpoint_url: str | None = None) -> None:
        self.settings = settings
        self.endpoint_url = endpoint_url
        self.device = None if settings.device == "auto" else torch.device(settings.device)
        if settings.torch_threads:  # spinning OpenMP threads vs other work on the node: a
            torch.set_num_threads(settings.torch_threads)  # tiny fine-tune took 5 s, not 0.05
        self._data: LabelledSet | None = None
        #: eval.knn_k values the loaded training split is large enough for (set by data()).
        self.knn_ks: list[int] = list(settings.knn_k)
        self._baselines: dict[str, Figures] = {}
        #: What the numbers depend on besides the checkpoint, and its digest: every row's key.
        self.key_settings = eval_settings(settings)
        self.key = settings_id(self.key_settings)

    def data(self) -> LabelledSet:
        """The labelled set, loaded on first use (a failed load is retried on the next call).

        A k larger than the training split is left out with a warning (a small set still gets
        the ks that fit: SEER's k=200 on a 160-image set should not cost the k=20 figure); only
        when no k fits is the set refused."""
        if self._data is None:
            s = self.settings
            try:
                data = load_labelled(s.data, image_size=s.image_size,
                                     val_fraction=s.val_fraction, split_seed=s.split_seed,
                                     endpoint_url=self.endpoint_url,
                                     progress=Progress(f"loading {s.data}"))
            except LabelledDataError as exc:
                where = "" if s.data in str(exc) else f"labelled set {s.data}: "
                raise BadInputError(f"{where}{exc}") from exc
            n_train = len(data.train)
            fit = [k for k in s.knn_k if k <= n_train]
            too_big = [k for k in s.knn_k if k > n_train]
            if "knn" in s.protocols and not fit:
                raise BadInputError(
                    f"labelled set {s.data}: {n_train} training images, fewer than "
                    f"k={min(too_big)} (eval.knn_k {s.knn_k}); add images or lower "
                    "eval.knn_k / --knn-k")
            if "knn" in s.protocols and too_big:
                log.warning("labelled set %s: %d training images, fewer than k=%s: kNN with %s "
                            "skipped (eval.knn_k %s); evaluating k=%s", s.data, n_train,
                            ",".join(map(str, too_big)),
                            "those k" if len(too_big) > 1 else "that k", s.knn_k,
                            ",".join(map(str, fit)))
            self.knn_ks = fit
            self._data = data
        return self._data

    def figures(self, trunk: nn.Module, label: str) -> Figures:
        """Every configured protocol on `trunk`: [(protocol, metric, value %)]."""
        s, data = self.settings, self.data()
        out: Figures = []
        classes = len(data.classes)
        try:
            if {"knn", "linear", "lowshot"} & set(s.protocols):
                frozen = frozen_trunk(trunk, s.stage)
                train_x, val_x = (extract_features(
                    frozen, split.images, batch_size=s.batch_size, device=self.device,
                    progress=Progress(f"{label}: {s.stage} features, {name}"))
                    for name, split in (("train", data.train), ("val", data.val)))
                train_y, val_y = data.train.labels, data.val.labels
            if "knn" in s.protocols:
                for k in self.knn_ks:
                    r = knn_classify(train_x, train_y, val_x, val_y, k=k,
                                     temperature=s.temperature, num_classes=classes)
                    out += [(f"knn{k}", "top1", r["top1"]), (f"knn{k}", "top5", r["top5"])]
            if "linear" in s.protocols:
                p = linear_probe(train_x, train_y, val_x, val_y, num_classes=classes,
                                 epochs=s.probe_epochs, seed=s.seed)
                out += [("linear", "top1", p.top1), ("linear", "top5", p.top5)]
            if "lowshot" in s.protocols:
                for r in lowshot(train_x, train_y, val_x, val_y, fractions=s.lowshot_fractions,
                                 seeds=s.lowshot_seeds, num_classes=classes,
                                 epochs=s.probe_epochs):
                    name = lowshot_name(r.fraction)
                    out += [(name, "top1", r.top1_mean), (name, "top5", r.top5_mean),
                            (name, "top1_std", r.top1_std)]
            if "finetune" in s.protocols:
                r = finetune(trunk, data.train.images, data.train.labels, data.val.images,
                             data.val.labels, num_classes=classes, steps=s.finetune_steps,
                             lr=s.finetune_lr, batch_size=s.batch_size, seed=s.seed,
                             device=self.device, progress=Progress(f"{label}: finetune"))
                out += [("finetune", "top1", r["top1"]), ("finetune", "top5", r["top5"])]
                if "lowshot" in s.protocols:
                    out += self._lowshot_finetune(trunk, label)
        except EvalError as exc:
            raise BadInputError(f"{label} on {s.data}: {exc}") from exc
        return [(p, m, round(float(v), 4)) for p, m, v in out]

    def _lowshot_finetune(self, trunk: nn.Module, label: str) -> Figures:
        """SEER's low-shot protocol proper: fine-tune on each class-balanced share of the
        labels (the same subsets as the low-shot probe), mean and spread over the seeds."""
        s, data = self.settings, self.data()
        out: Figures = []
        for fraction in s.lowshot_fractions:
            name = f"{lowshot_name(fraction)}_finetune"
            top1s, top5s = [], []
            for seed in s.lowshot_seeds:
                idx = lowshot_indices(data.train.labels, fraction, seed)
                r = finetune(trunk, data.train.images[idx], data.train.labels[idx],
                             data.val.images, data.val.labels, num_classes=len(data.classes),
                             steps=s.finetune_steps, lr=s.finetune_lr,
                             batch_size=s.batch_size, seed=seed, device=self.device,
                             progress=Progress(f"{label}: {name} seed {seed}"))
                top1s.append(r["top1"])
                top5s.append(r["top5"])
            out += [(name, "top1", fmean(top1s)), (name, "top5", fmean(top5s)),
                    (name, "top1_std", pstdev(top1s))]
        return out

    def checkpoint_trunk(self, loaded: LoadedCheckpoint) -> tuple[nn.Module, str]:
        """The checkpoint's trunk and its architecture's name (for the baseline)."""
        try:
            trunk, cfg = trunk_from_checkpoint(loaded.saved)
        except (EvalError, ValueError, KeyError, RuntimeError) as exc:
            raise BadCheckpointError(f"{loaded.ref.describe()}: {exc}") from exc
        return trunk, cfg.model.trunk

    def make_rows(self, figures: Figures, *, run: str, step: int, images_seen: int, trunk: str,
                  checkpoint: str) -> list[dict[str, Any]]:
        """Result rows, keyed by the settings they were computed with (see results)."""
        now = round(time.time(), 3)
        return [{"run": run, "step": step, "images_seen": images_seen, "trunk": trunk,
                 "stage": self.settings.stage, "protocol": p, "metric": m, "value": v,
                 "wall_time": now, "checkpoint": checkpoint, "data": self.settings.data,
                 "settings": self.key_settings, "settings_id": self.key}
                for p, m, v in figures]

    def baseline_figures(self, trunk_name: str) -> Figures:
        """A random-initialised trunk of the same architecture: computed once, then cached."""
        if trunk_name not in self._baselines:
            trunk = random_trunk(trunk_name, seed=self.settings.seed)
            self._baselines[trunk_name] = self.figures(trunk, f"random {trunk_name}")
        return self._baselines[trunk_name]


def summary_line(rows: list[dict[str, Any]], baseline: list[dict[str, Any]]) -> str:
    """`knn20 41.2 (random 12.0) | linear 50.1 (random 20.3)`: top-1 per protocol."""
    base = {r["protocol"]: f" (random {r['value']:.1f})" for r in baseline if r["metric"] == "top1"}
    return " | ".join(f"{r['protocol']} {r['value']:.1f}{base.get(r['protocol'], '')}"
                      for r in rows if r["metric"] == "top1")


class EvalSession:
    """Evaluates checkpoints and records the rows: results file, PNG, gauges."""

    def __init__(self, evaluator: Evaluator, results: ResultsFile | None = None,
                 gauges: EvalGauges | None = None) -> None:
        self.evaluator = evaluator
        self.results = results
        self.gauges = gauges
        self.rows: list[dict[str, Any]] = results.read() if results is not None else []

    @property
    def settings(self) -> EvalConfig:
        return self.evaluator.settings

    def process(self, ref: CheckpointRef, run: str | None = None,
                ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], LoadedCheckpoint]:
        """Copies, loads and evaluates `ref` (+ the baseline, unless the results already hold
        it) and records the new rows. Returns (checkpoint rows, baseline rows, checkpoint).
        `run`: the run name rows are filed under (the store's; default: the checkpoint's)."""
        start = time.perf_counter()
        loaded = load_checkpoint(ref)
        run = run or loaded.run
        ev = self.evaluator
        trunk, trunk_name = ev.checkpoint_trunk(loaded)  # a foreign one: at once
        data = ev.data()  # data errors before the (slow) feature extraction
        rows = ev.make_rows(ev.figures(trunk, f"step {loaded.step}"), run=run, step=loaded.step,
                            images_seen=loaded.images_seen, trunk="checkpoint",
                            checkpoint=ref.display)
        base_rows: list[dict[str, Any]] = []
        new = rows
        if self.settings.baseline == "random":
            name = f"random:{trunk_name}"
            base_rows = [r for r in rows_for(self.rows, run, ev.key)
                         if r.get("trunk") == "random" and r.get("checkpoint") == name]
            if not base_rows:  # the baseline once per results file
                base_rows = ev.make_rows(ev.baseline_figures(trunk_name), run=run, step=0,
                                         images_seen=0, trunk="random", checkpoint=name)
                new = [*base_rows, *rows]
        if self.results is not None:
            self.results.append(new)
        self.rows.extend(new)
        if self.gauges is not None:
            self.gauges.show_rows(new)
            self.gauges.success(time.perf_counter() - start)
            self.gauges.skipped_images(data.skipped)
        self.redraw(run)
        return rows, base_rows, loaded

    def redraw(self, run: str) -> None:
        """Redraws the PNG from the rows of the current settings only (one curve never mixes
        settings); a plotting failure is logged, never fatal."""
        if self.results is None:
            return
        try:
            rows = rows_for(self.rows, run, self.evaluator.key)
            if plot_accuracy(rows, self.results.plot_path, run=run,
                             stage=self.settings.stage, data=self.settings.data) is not None:
                self.results.publish_plot()
        except Exception as exc:  # matplotlib, a full disk, an S3 hiccup: the rows are safe
            log.error("could not draw %s: %s", self.results.plot_uri, exc)


@dataclass
class WatchStats:
    polls: int = 0
    evaluated: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # reasons, in order


def poll(session: EvalSession, storage: RunStorage, done: set[int], stats: WatchStats) -> bool:
    """One poll; True when a checkpoint was evaluated. Never raises."""
    stats.polls += 1
    ref: CheckpointRef | None = None
    try:
        ref = next((r for r in reversed(list_refs(storage))
                    if r.step is not None and r.step not in done), None)
        if ref is None:
            log.debug("poll %d: nothing new in %s", stats.polls, storage.display)
            return False
        start = time.perf_counter()
        rows, baseline, loaded = session.process(ref, run=storage.run_name)
    except Exception as exc:  # the evaluator must outlive anything one poll meets
        reason = exc.reason if isinstance(exc, EvaluatorError) else "error"
        if isinstance(exc, EvaluatorError):
            log.error("eval: %s; retrying at the next poll", exc)
        else:
            log.exception("eval: %s failed (%s: %s); retrying at the next poll",
                          ref.describe() if ref is not None else storage.display,
                          type(exc).__name__, exc)
        stats.errors.append(reason)
        if session.gauges is not None:
            session.gauges.error(reason)
        return False
    done.add(loaded.step)
    stats.evaluated.append(loaded.step)
    log.info("eval step %d (%d images seen, %s): %s in %.1f s", loaded.step, loaded.images_seen,
             session.settings.stage, summary_line(rows, baseline), time.perf_counter() - start)
    return True


def watch(session: EvalSession, storage: RunStorage, *, interval_s: float,
          stop: threading.Event | None = None, max_polls: int | None = None) -> WatchStats:
    """Polls until `stop` is set (or `max_polls` polls: a scheduled job's single pass)."""
    stop = stop if stop is not None else threading.Event()
    key = session.evaluator.key
    done = done_steps(session.rows, storage.run_name, key)  # of the current settings only
    if session.gauges is not None:
        session.gauges.show_rows(rows_for(session.rows, storage.run_name, key))
    stats = WatchStats()
    log.info("eval: watching %s every %.0f s (%d step(s) already in the results)",
             storage.display, interval_s, len(done))
    while not stop.is_set():
        evaluated = poll(session, storage, done, stats)
        if max_polls is not None and stats.polls >= max_polls:
            break
        if not evaluated:  # after an evaluation, look again at once: a newer one may be there
            stop.wait(interval_s)
    return stats
