"""The benchmark scripts still run end to end (a smoke test: figures are not asserted)."""

from __future__ import annotations

import re
import runpy
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_multicrop_benchmark_prints_rates_and_floor(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["multicrop.py", "--n", "4", "--seconds", "0.05", "--rounds", "2", "--floor"]
    monkeypatch.setattr(sys, "argv", argv)
    threads = torch.get_num_threads()  # the script pins 1 thread for the whole process
    try:
        with pytest.raises(SystemExit) as exit_info:
            runpy.run_path(str(BENCHMARKS / "multicrop.py"), run_name="__main__")
    finally:
        torch.set_num_threads(threads)
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for label in ("seer build_multicrop", "torchvision reference", "speed-up", "+ Gaussian blur"):
        assert label in out
    rates = [float(v) for v in re.findall(r"([\d.]+) img/s per core", out)]
    assert len(rates) == 6 and all(r > 0 for r in rates)


def test_quality_benchmark_evaluates_a_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--skip-pretrain` over a run holding one real (tiny) checkpoint: the pool and the
    labelled set are written, `seer eval` runs for real, and the gain line is printed."""
    from seer_core.config import load_config
    from tests.services.evaluator_helpers import write_checkpoint

    work = tmp_path / "quality"
    tiny = ["model.trunk=tiny", "model.head_hidden=[16]", "model.head_out=8",
            "model.prototypes=[8]", "eval.knn_k=[1, 2]", "eval.image_size=32",
            "eval.probe_epochs=5", "eval.device=cpu"]
    cfg = load_config("local", [*tiny, f"checkpoint.storage={work / 'checkpoints'}",
                                "checkpoint.run_name=quality"])
    write_checkpoint(cfg, 40, images_seen=640)
    argv = ["quality.py", "--skip-pretrain", "--workdir", str(work), "--pool-count", "2",
            "--train-per-class", "2", "--val-per-class", "1"]
    for item in tiny:
        argv += ["--set", item]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(BENCHMARKS / "quality.py"), run_name="__main__")
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "raw pixels:" in out and "random-init trunk" in out
    assert re.search(r"^\s+40\s+640\s", out, re.MULTILINE)  # the checkpoint's row
    assert "gain of the last checkpoint over random init" in out
    assert (work / "results.jsonl").is_file() and (work / "results.png").is_file()
    assert len(list((work / "pool").glob("sample_*"))) == 2


def test_view_agreement_benchmark_prints_every_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from services.sample_images import generate_sample_images

    generate_sample_images(tmp_path, 8, seed=0, min_side=48, max_side=64, progress=False)
    argv = ["view_agreement.py", "--pool", str(tmp_path), "--trunk", "tiny", "--size", "32"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(BENCHMARKS / "view_agreement.py"), run_name="__main__")
    assert exit_info.value.code == 0
    rows = [line for line in capsys.readouterr().out.splitlines()
            if re.search(r"-?\d\.\d{3}\s+-?\d\.\d{3}\s+-?\d\.\d{3}\s+\d\.\d{2}$", line)]
    assert len(rows) == 7


@pytest.mark.slow  # spawns a 2-rank gloo group
def test_checkpoint_benchmark_prints_pause_and_bytes_read() -> None:
    import subprocess

    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "checkpoint.py"), "--trunk", "tiny", "--repeats", "1"],
        capture_output=True, text=True, timeout=300, cwd=BENCHMARKS.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    pause = re.search(r"before (\d+) ms, after (\d+) ms", done.stdout)
    read = re.search(r"before ([\d.]+) MiB, after ([\d.]+) MiB", done.stdout)
    assert pause and read, done.stdout
    # Two ranks: before, both read state.pt; after, rank 0 alone does.
    assert float(read.group(2)) < float(read.group(1))
