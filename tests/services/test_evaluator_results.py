"""The evaluator's outputs: the JSON-lines results file, the PNG and the seer_eval_* gauges."""

from __future__ import annotations

import json
import struct
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from seer_core.config.schema import EvalConfig
from services.evaluator.gauges import EvalGauges
from services.evaluator.plot import plot_accuracy
from services.evaluator.results import (
    ResultsFile,
    default_results_uri,
    done_steps,
    eval_settings,
    parse_rows,
    rows_for,
    settings_id,
)

_SETTINGS = eval_settings(EvalConfig(data="labelled"))
ROW_KEYS = ("run", "step", "images_seen", "trunk", "stage", "protocol", "metric", "value",
            "wall_time", "checkpoint", "data", "settings", "settings_id")


def _row(step: int, protocol: str = "knn20", metric: str = "top1", value: float = 50.0,
         trunk: str = "checkpoint", run: str = "r1") -> dict[str, Any]:
    return {"run": run, "step": step, "images_seen": step * 16, "trunk": trunk,
            "stage": "res5", "protocol": protocol, "metric": metric, "value": value,
            "wall_time": 1.0, "checkpoint": f"/x/step_{step}", "data": "labelled",
            "settings": _SETTINGS, "settings_id": settings_id(_SETTINGS)}


def test_default_results_path_is_beside_the_run() -> None:
    assert default_results_uri("runs/checkpoints", "r1") == "runs/checkpoints/r1-eval/results.jsonl"
    assert default_results_uri("s3://b/p/", "r1") == "s3://b/p/r1-eval/results.jsonl"


def test_append_read_and_a_torn_last_line(tmp_path: Path) -> None:
    results = ResultsFile(str(tmp_path / "eval" / "results.jsonl"))
    assert results.read() == []
    results.append([_row(10), _row(10, metric="top5", value=90.0)])
    assert [r["metric"] for r in results.read()] == ["top1", "top5"]
    assert set(results.read()[0]) == set(ROW_KEYS)
    # a crash mid-write leaves half a line without a newline: readers skip it, and the next
    # append starts on a fresh line instead of gluing its row to the torn one
    with open(results.path, "a") as handle:
        handle.write('{"run": "r1", "step": 20, "imag')
    assert len(results.read()) == 2
    results.append([_row(30)])
    rows = results.read()
    assert [r["step"] for r in rows] == [10, 10, 30]
    assert results.path.read_text().count("\n") == 4
    assert results.plot_path == tmp_path / "eval" / "results.png"


def test_parse_rows_counts_what_it_skips() -> None:
    rows, bad = parse_rows('{"a": 1}\nnot json\n\n[1, 2]\n' + json.dumps(_row(5)) + "\n")
    assert [r["step"] for r in rows] == [5] and bad == 3


def test_done_steps_and_baseline_are_per_run_and_settings() -> None:
    """Rows match by run and settings key; stage and data are part of the settings; a row
    without a key (an older file) matches no settings."""
    res5 = EvalConfig(data="labelled")
    res4, other_size = EvalConfig(data="labelled", stage="res4"), EvalConfig(
        data="labelled", image_size=96)
    key = settings_id(eval_settings(res5))
    assert len({key, settings_id(eval_settings(res4)),
                settings_id(eval_settings(other_size)),
                settings_id(eval_settings(EvalConfig(data="elsewhere")))}) == 4
    assert key == settings_id(eval_settings(EvalConfig(data="labelled", knn_k=[200, 20])))
    assert key == settings_id(eval_settings(EvalConfig(data="labelled", interval_s=5.0)))
    rows = [_row(10), _row(20), _row(30, run="other"), _row(0, trunk="random"),
            {**_row(40), "settings_id": settings_id(eval_settings(res4))},
            {**_row(50), "settings_id": settings_id(eval_settings(other_size))},
            {k: v for k, v in _row(60).items() if k not in ("settings", "settings_id")}]
    assert done_steps(rows, "r1", key) == {10, 20}
    assert any(r["trunk"] == "random" for r in rows_for(rows, "r1", key))  # the stored baseline
    assert not any(r["trunk"] == "random"
                   for r in rows_for(rows, "r1", settings_id(eval_settings(res4))))


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


def test_plot_is_a_png_with_the_baseline(tmp_path: Path) -> None:
    rows = [_row(0, value=20.0, trunk="random"), _row(0, "linear", value=25.0, trunk="random")]
    for step, value in ((100, 30.0), (200, 40.0), (300, 45.0)):
        rows += [_row(step, value=value), _row(step, "linear", value=value + 5),
                 _row(step, metric="top5", value=90.0)]
    out = plot_accuracy(rows, tmp_path / "results.png", run="r1", stage="res5")
    assert out == tmp_path / "results.png"
    width, height = _png_size(out)
    assert (width, height) == (800, 500)
    assert out.stat().st_size > 10_000  # axes, two lines, two dashed baselines, a legend
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert plot_accuracy(rows, tmp_path / "none.png", run="nobody", stage="res5") is None


def test_plot_title_names_the_set_not_the_machine_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The PNG is published beside the results and quoted in READMEs: its title says which set
    (the folder and its parent) and never the absolute path of the machine that drew it."""
    from matplotlib.axes import Axes

    titles: list[str] = []
    original = Axes.set_title

    def recording(self: Axes, label: str, *args: Any, **kwargs: Any) -> Any:
        titles.append(label)
        return original(self, label, *args, **kwargs)

    monkeypatch.setattr(Axes, "set_title", recording)
    data = str(tmp_path / "home" / "someone" / "quality-real" / "labelled")
    rows = [{**_row(0, value=20.0, trunk="random"), "data": data},
            {**_row(100, value=30.0), "data": data}]
    assert plot_accuracy(rows, tmp_path / "r.png", run="r1", stage="res5", data=data)
    assert len(titles) == 1 and "quality-real/labelled" in titles[0], titles
    assert str(tmp_path) not in titles[0] and "someone" not in titles[0], titles
    s3 = "s3://my-labelled/val-subset/"
    rows = [{**r, "data": s3} for r in rows]
    assert plot_accuracy(rows, tmp_path / "s.png", run="r1", stage="res5", data=s3)
    assert "s3://my-labelled/val-subset" in titles[1], titles


@pytest.fixture
def gauges() -> Any:
    g = EvalGauges()
    yield g
    g.close()


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def test_gauges_are_served_over_http(gauges: EvalGauges) -> None:
    port = gauges.serve(0, "127.0.0.1")
    gauges.show_rows([_row(0, value=12.5, trunk="random"), _row(500, value=41.25),
                      _row(500, "lowshot10pct", "top1_std", 1.5)])
    gauges.show_rows([_row(400, value=39.0)])  # a back-filled older step changes nothing
    gauges.success(3.5)
    gauges.error("vanished")
    gauges.skipped_images({"corrupt": 2})
    text = _scrape(port)
    assert ('seer_eval_accuracy_percent{metric="top1",protocol="knn20",stage="res5",'
            'trunk="checkpoint"} 41.25') in text
    assert ('seer_eval_accuracy_percent{metric="top1",protocol="knn20",stage="res5",'
            'trunk="random"} 12.5') in text
    assert 'protocol="lowshot10pct"' in text
    assert "seer_eval_checkpoint_step 500.0" in text
    assert "seer_eval_images_seen 8000.0" in text
    assert "seer_eval_duration_seconds 3.5" in text
    assert 'seer_eval_errors_total{reason="vanished"}' in text
    assert 'seer_eval_labelled_skipped_images{reason="corrupt"} 2.0' in text
    assert "seer_eval_last_success_timestamp_seconds" in text


def test_progress_rewrites_a_line_on_a_terminal_and_stays_quiet_in_short_logs() -> None:
    import io

    from services.evaluator.progress import Progress

    terminal = io.StringIO()
    progress = Progress("step 500: res5 features, train", stream=terminal, tty=True)
    for done in (64, 128, 150):
        progress(done, 150)
    text = terminal.getvalue()
    assert text.startswith("\r\033[K")
    assert "step 500: res5 features, train: 150/150 (100%)" in text and text.endswith("\n")

    log = io.StringIO()
    quiet = Progress("features", stream=log, tty=False, every_s=60)
    for done in (64, 128, 150):
        quiet(done, 150)
    assert log.getvalue() == ""  # short: nothing in a log file
    chatty = Progress("features", stream=log, tty=False, every_s=0)
    chatty(64, 150)
    chatty(150, 150)
    assert log.getvalue().count("\n") == 2 and "\r" not in log.getvalue()


def test_gauges_bind_loopback_unless_told_otherwise(gauges: EvalGauges) -> None:
    gauges.serve(0)
    assert gauges.server.server_address[0] == "127.0.0.1"
