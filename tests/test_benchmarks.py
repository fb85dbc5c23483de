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
