"""`seer eval --watch`: each new checkpoint once, through deletions, errors, restarts, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytest

from seer_core.config import SeerConfig
from services.evaluator import BadCheckpointError, BadInputError
from services.evaluator.checkpoints import resolve_checkpoint
from services.evaluator.command import stop_on_signals
from services.evaluator.gauges import EvalGauges
from services.evaluator.plot import plot_accuracy
from services.evaluator.results import ResultsFile
from services.evaluator.run import EvalSession, Evaluator, watch
from services.storage import RunStorage, resolve_storage
from tests.services.evaluator_helpers import (
    TrappedFS,
    make_labelled,
    remove_checkpoint,
    tiny_config,
    write_checkpoint,
)


class Setup:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.data = make_labelled(tmp_path / "data")
        self.cfg = tiny_config(tmp_path / "ckpt", self.data)
        self.storage = resolve_storage(str(tmp_path / "ckpt"), "r1")
        self.results_path = tmp_path / "eval" / "results.jsonl"

    def session(self, cfg: SeerConfig | None = None, gauges: EvalGauges | None = None,
                *extra: str) -> EvalSession:
        cfg = cfg or (tiny_config(self.tmp / "ckpt", self.data, *extra) if extra else self.cfg)
        return EvalSession(Evaluator(cfg.eval), ResultsFile(str(self.results_path)), gauges)

    def rows(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.results_path.read_text().splitlines()]

    def steps(self, trunk: str = "checkpoint") -> list[int]:
        return sorted({r["step"] for r in self.rows() if r["trunk"] == trunk})


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return Setup(tmp_path)


@pytest.mark.parametrize("stream", ["s3-like", "local"])
def test_watch_survives_a_checkpoint_deleted_mid_read(setup: Setup, stream: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Retention deletes step 20 while the evaluator copies it, as the trainer writes step 30.
    A local file stays readable once opened (step 20 is still evaluated, from the copy); an
    S3-like stream breaks: step 20 is logged as vanished, and the next poll evaluates 30."""
    monkeypatch.setattr("services.evaluator.checkpoints.COPY_CHUNK_BYTES", 4096)
    write_checkpoint(setup.cfg, 10)
    write_checkpoint(setup.cfg, 20)

    def retention(path: str) -> bool:
        if "step_000000000020" not in path:
            return False
        write_checkpoint(setup.cfg, 30)
        remove_checkpoint(path)
        return stream == "s3-like"

    fs = TrappedFS(on_read=retention)
    storage = RunStorage(fs, setup.storage.root, "r1", setup.storage.display)
    gauges = EvalGauges()
    session = setup.session(None, gauges, "eval.baseline=none")
    stats = watch(session, storage, interval_s=0.01, max_polls=2)
    assert not (setup.tmp / "ckpt" / "r1" / "step_000000000020").exists()
    if stream == "s3-like":
        assert stats.errors == ["vanished"] and stats.evaluated == [30]
        assert setup.steps() == [30]
        assert 'seer_eval_errors_total{reason="vanished"}' in _scrape(gauges)
    else:
        assert stats.errors == [] and stats.evaluated == [20, 30]
        assert setup.steps() == [20, 30]
    assert {r["protocol"] for r in setup.rows()} == {"knn5", "knn20"}
    assert setup.results_path.with_suffix(".png").stat().st_size > 5000


def test_each_step_once_and_a_restart_skips_done_steps(setup: Setup,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    write_checkpoint(setup.cfg, 10)
    write_checkpoint(setup.cfg, 20)
    stats = watch(setup.session(), setup.storage, interval_s=0.01, max_polls=3)
    assert stats.evaluated == [20, 10] and stats.polls == 3  # newest first, then back-fill
    rows = setup.rows()
    per_step = {s: sum(r["step"] == s and r["trunk"] == "checkpoint" for r in rows)
                for s in (10, 20)}
    assert per_step == {10: 4, 20: 4}  # knn5, knn20 x top1, top5: once per step
    assert sum(r["trunk"] == "random" for r in rows) == 4  # the baseline, once
    first = rows[0]
    assert set(first) == {"run", "step", "images_seen", "trunk", "stage", "protocol", "metric",
                          "value", "wall_time", "checkpoint", "data", "settings", "settings_id"}
    assert first["settings"]["image_size"] == 32 and first["settings"]["knn_k"] == [5, 20]
    assert (first["run"], first["stage"], first["data"]) == ("r1", "res5", str(setup.data))
    step20 = next(r for r in rows if r["step"] == 20)
    assert step20["images_seen"] == 320 and step20["checkpoint"].endswith("step_000000000020")

    # a restarted evaluator: nothing is redone, the baseline is not recomputed
    def no_baseline(self: Evaluator, name: str) -> None:
        raise AssertionError("the baseline was recomputed")

    monkeypatch.setattr(Evaluator, "baseline_figures", no_baseline)
    session = setup.session()
    stats = watch(session, setup.storage, interval_s=0.01, max_polls=1)
    assert stats.evaluated == [] and stats.errors == []
    write_checkpoint(setup.cfg, 30)
    stats = watch(session, setup.storage, interval_s=0.01, max_polls=1)
    assert stats.evaluated == [30]
    assert setup.steps() == [10, 20, 30] and len(setup.rows()) == 4 * 4


def test_errors_in_a_poll_never_kill_the_loop(setup: Setup,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    data = setup.data.rename(setup.tmp / "data-later")  # not there yet
    write_checkpoint(setup.cfg, 10)
    session = setup.session()
    gauges = EvalGauges()
    session.gauges = gauges
    stats = watch(session, setup.storage, interval_s=0.01, max_polls=1)
    assert stats.errors == ["bad_input"] and stats.evaluated == []
    data.rename(setup.data)

    corrupt = write_checkpoint(setup.cfg, 20) / "state.pt"
    corrupt.write_bytes(corrupt.read_bytes()[:1000])
    stats = watch(session, setup.storage, interval_s=0.01, max_polls=2)
    assert stats.errors == ["bad_checkpoint", "bad_checkpoint"]  # retried at each poll
    write_checkpoint(setup.cfg, 30)

    calls = {"n": 0}
    original = Evaluator.figures

    def flaky(self: Evaluator, trunk: Any, label: str) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("CUDA out of memory (simulated)")
        return original(self, trunk, label)

    monkeypatch.setattr(Evaluator, "figures", flaky)
    stats = watch(session, setup.storage, interval_s=0.01, max_polls=2)
    assert stats.errors == ["error"] and stats.evaluated == [30]
    assert setup.steps() == [30]
    text = _scrape(gauges)
    assert 'seer_eval_errors_total{reason="bad_checkpoint"}' in text


def _scrape(gauges: EvalGauges) -> str:
    from tests.services.test_metrics import render

    return render().decode()


def test_a_checkpoint_of_another_architecture(setup: Setup) -> None:
    other = tiny_config(setup.tmp / "ckpt", setup.data, "model.trunk=mobilenet_v2")
    write_checkpoint(other, 10, trunk="tiny")  # weights of `tiny` under a mobilenet_v2 config
    session = setup.session()
    with pytest.raises(BadCheckpointError) as info:
        session.process(resolve_checkpoint("latest", setup.storage))
    assert "checkpoint step 10" in str(info.value) and "mobilenet_v2" in str(info.value)


def test_ks_larger_than_the_training_set_are_skipped_with_a_warning(
        setup: Setup, caplog: pytest.LogCaptureFixture) -> None:
    """A small labelled set (24 training images) with eval.knn_k [5, 50]: k=5 is evaluated
    for the checkpoint and the baseline, k=50 is left out and named in a warning."""
    write_checkpoint(setup.cfg, 10)
    cfg = tiny_config(setup.tmp / "ckpt", setup.data, "eval.knn_k=[5, 50]")
    with caplog.at_level("WARNING", logger="seer.eval"):
        rows, base, _ = setup.session(cfg).process(resolve_checkpoint("latest", setup.storage))
    assert {r["protocol"] for r in rows} == {"knn5"}
    assert {r["protocol"] for r in base} == {"knn5"}
    assert any("24 training images" in m and "k=50" in m and "skipped" in m
               for m in caplog.messages), caplog.messages


def test_no_k_fits_the_training_set(setup: Setup) -> None:
    write_checkpoint(setup.cfg, 10)
    cfg = tiny_config(setup.tmp / "ckpt", setup.data, "eval.knn_k=[50, 100]")
    with pytest.raises(BadInputError, match=r"24 training images, fewer than k=50"):
        setup.session(cfg).process(resolve_checkpoint("latest", setup.storage))


def test_sigterm_stops_after_the_current_evaluation(setup: Setup,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    write_checkpoint(setup.cfg, 10)
    write_checkpoint(setup.cfg, 20)
    original = Evaluator.figures

    def terminated_meanwhile(self: Evaluator, trunk: Any, label: str) -> Any:
        if label.startswith("step"):  # once, during the checkpoint's evaluation
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, trunk, label)

    monkeypatch.setattr(Evaluator, "figures", terminated_meanwhile)
    stop = threading.Event()
    before = signal.getsignal(signal.SIGTERM)
    with stop_on_signals(stop):
        stats = watch(setup.session(), setup.storage, interval_s=60, stop=stop)
    assert signal.getsignal(signal.SIGTERM) == before
    assert stop.is_set() and stats.evaluated == [20] and setup.steps() == [20]


@pytest.mark.parametrize("change", ["eval.image_size=24", "eval.knn_k=[5]",
                                    "eval.protocols=[knn, linear]"])
def test_changed_settings_start_new_rows_and_a_new_baseline(setup: Setup, change: str) -> None:
    """Rows are keyed by what changes their number: a new image size, k or protocol set
    evaluates the done steps again and computes its own baseline, never mixing the two on one
    curve; going back to the first settings finds them done."""
    write_checkpoint(setup.cfg, 10)
    assert watch(setup.session(), setup.storage, interval_s=0.01, max_polls=1).evaluated == [10]
    first = setup.rows()
    stats = watch(setup.session(None, None, change), setup.storage, interval_s=0.01,
                  max_polls=1)
    assert stats.evaluated == [10] and stats.errors == []
    second = setup.rows()[len(first):]
    assert {r["trunk"] for r in second} == {"checkpoint", "random"}  # its own baseline
    keys = ({r.get("settings_id") for r in first}, {r.get("settings_id") for r in second})
    assert len(keys[0]) == 1 and len(keys[1]) == 1 and keys[0] != keys[1]
    # The PNG holds the second settings' rows only: it is the one drawn from them alone.
    png = setup.results_path.with_suffix(".png").read_bytes()
    alone = plot_accuracy(second, setup.tmp / "alone.png", run="r1", stage="res5",
                          data=str(setup.data))
    assert alone is not None and alone.read_bytes() == png
    assert watch(setup.session(), setup.storage, interval_s=0.01, max_polls=1).evaluated == []


def test_rows_of_an_older_file_without_settings_are_kept_apart(setup: Setup) -> None:
    """A results file written before rows carried their settings still loads; since what its
    numbers were computed with (image size, k, epochs...) is not known, its rows are kept
    apart: the step is evaluated again under the current settings, the old rows stay."""
    write_checkpoint(setup.cfg, 10)
    setup.results_path.parent.mkdir(parents=True)
    legacy = [{"run": "r1", "step": 10, "images_seen": 160, "trunk": trunk, "stage": "res5",
               "protocol": p, "metric": "top1", "value": 99.0, "wall_time": 1.0,
               "checkpoint": "x", "data": str(setup.data)}
              for trunk in ("checkpoint", "random") for p in ("knn5", "knn20")]
    setup.results_path.write_text("".join(json.dumps(r) + "\n" for r in legacy))
    session = setup.session()
    assert len(session.rows) == 4  # loads
    stats = watch(session, setup.storage, interval_s=0.01, max_polls=1)
    assert stats.evaluated == [10]
    rows = setup.rows()
    assert rows[:4] == legacy
    assert {r["trunk"] for r in rows[4:]} == {"checkpoint", "random"}
    assert all(r["value"] != 99.0 for r in rows[4:])
