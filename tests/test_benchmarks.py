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


def test_train_step_benchmark_prints_gflops_against_a_matmul(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The `local` preset's step (tiny batch) with its work counted and set against a matmul."""
    argv = ["train_step.py", "--batch", "4", "--steps", "2", "--warmup", "1"]
    monkeypatch.setattr(sys, "argv", argv)
    threads = torch.get_num_threads()  # the script pins the preset's threads
    try:
        runpy.run_path(str(BENCHMARKS / "train_step.py"), run_name="__main__")
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "config local: trunk small" in out and "torch threads 1" in out
    work = re.search(r"work: ([\d.]+) GFLOP per step, ([\d.]+) GFLOP/s; float32 matmul on the "
                     r"same threads: ([\d.]+) GFLOP/s; the step uses (\d+)% of it", out)
    assert work, out
    gflop, rate, peak, share = (float(v) for v in work.groups())
    # 4 images of 2x64 + 4x32 crops through `small`: forward + backward is ~0.2-0.3 GFLOP.
    assert 0.05 < gflop < 1.0 and rate > 0 and peak > 0
    assert abs(share - 100 * rate / peak) <= 1  # the printed share is the printed ratio


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
    from services.images.sample import generate_sample_images

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


_TINY = ["model.trunk=tiny", "model.head_hidden=[16]", "model.head_out=8",
         "model.prototypes=[8]", "eval.knn_k=[1, 2]", "eval.image_size=32",
         "eval.probe_epochs=5", "eval.device=cpu"]


def _quality(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    for item in _TINY:
        argv += ["--set", item]
    monkeypatch.setattr(sys, "argv", ["quality.py", *argv])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(BENCHMARKS / "quality.py"), run_name="__main__")
    return exit_info.value.code


def _tiny_checkpoints(work: Path, runs: list[str]) -> None:
    from seer_core.config import load_config
    from tests.services.evaluator_helpers import write_checkpoint

    for i, run in enumerate(runs):
        cfg = load_config("local", [*_TINY, f"checkpoint.storage={work / 'checkpoints'}",
                                    f"checkpoint.run_name={run}"])
        write_checkpoint(cfg, 40 + i, images_seen=640)


def test_quality_benchmark_two_seeds_report_per_seed_and_mean_gains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--seeds 2 --keep-runs`: runs that already have checkpoints are not pretrained again
    (--minutes bounds the damage if they were); each seed's run (its own name and checkpoints)
    is evaluated, and the per-seed gains, their mean ± std and raw pixels are reported and
    saved."""
    import json

    work = tmp_path / "quality"
    _tiny_checkpoints(work, ["quality-seed0", "quality-seed1"])
    code = _quality(["--keep-runs", "--minutes", "0.05", "--seeds", "2", "--workdir", str(work),
                     "--pool-count", "2", "--train-per-class", "2", "--val-per-class", "1"],
                    monkeypatch)
    assert code == 0
    out = capsys.readouterr().out
    assert "keeping run quality-seed0 (--keep-runs)" in out
    assert "keeping run quality-seed1 (--keep-runs)" in out and "pretraining for" not in out
    assert "run quality-seed0" in out and "run quality-seed1" in out
    assert re.search(r"^\s+40\s+640\s", out, re.MULTILINE)  # seed 0's checkpoint
    assert re.search(r"^\s+41\s+640\s", out, re.MULTILINE)  # seed 1's checkpoint
    assert re.search(r"^\s+0 quality-seed0\s+[-+]\d", out, re.MULTILINE)
    assert re.search(r"^\s+1 quality-seed1\s+[-+]\d", out, re.MULTILINE)
    assert "mean ± std over 2 seed(s)" in out and "of 2 seed(s)" in out
    summary = json.loads((work / "summary.json").read_text())
    assert [s["seed"] for s in summary["per_seed"]] == [0, 1] and summary["seeds"] == [0, 1]
    gains = [s["gain"]["knn1"] for s in summary["per_seed"]]
    assert summary["gain"]["knn1"]["mean"] == pytest.approx(sum(gains) / 2)
    assert set(summary["raw_pixels"]) == {"knn1", "knn2"}
    assert (work / "quality.png").is_file()


def test_quality_benchmark_seed_runs_are_apart() -> None:
    """What each seed's `seer pretrain` gets: its own run name (own checkpoints) and
    train.seed, over the user's --set."""
    from seer_core.config import load_config

    mod = runpy.run_path(str(BENCHMARKS / "quality.py"))
    assert mod["run_names"]("generated", [0]) == ["quality"]
    assert mod["run_names"]("real", [4, 5]) == ["quality-real-seed4", "quality-real-seed5"]
    cfg = load_config("local", mod["run_overrides"](
        ["checkpoint.run_name=mine", "train.seed=4"], "quality-real-seed5", 5))
    assert (cfg.checkpoint.run_name, cfg.train.seed) == ("quality-real-seed5", 5)


def test_quality_benchmark_real_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--data real` on a tiny set built from the installed packages (2 stamp groups per
    class): the labelled set has the 8 classes and none of its stamps is in the pool."""
    import json

    from services.images import real as real_images

    try:
        real_images.check_sources()
    except real_images.MissingPackagesError as exc:
        pytest.skip(f"needs `{real_images.INSTALL_COMMAND}` (.ci/run installs it): {exc}")
    work = tmp_path / "quality-real"
    _tiny_checkpoints(work, ["quality-real"])
    code = _quality(["--skip-pretrain", "--data", "real", "--workdir", str(work),
                     "--pool-count", "3", "--stamps-per-class", "2"], monkeypatch)
    assert code == 0
    out = capsys.readouterr().out
    assert "labelled set: real drawings" in out and "8 classes" in out
    assert re.search(r"^\s+0 quality-real\s+[-+]\d", out, re.MULTILINE)
    labelled = json.loads((work / "labelled" / real_images.MANIFEST).read_text())
    pool = json.loads((work / "pool" / real_images.MANIFEST).read_text())
    assert set(labelled["stamps"].values()).isdisjoint(pool["stamps"].values())
    assert len(list((work / "pool").glob("real_*.jpg"))) == 3
    assert sorted(p.name for p in (work / "labelled" / "val").iterdir()) == sorted(
        real_images.CLASSES)


def test_quality_benchmark_real_data_refuses_without_the_packages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.images import real as real_images

    monkeypatch.setattr(real_images, "STAMPS_ROOT", tmp_path / "absent")
    monkeypatch.setattr(sys, "argv", ["quality.py", "--data", "real", "--workdir",
                                      str(tmp_path / "w"), "--skip-pretrain"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(BENCHMARKS / "quality.py"), run_name="__main__")
    message = str(exit_info.value.code)
    assert message.startswith("--data real:")
    assert "apt-get install -y tuxpaint-stamps-default mate-backgrounds" in message
    assert not (tmp_path / "w" / "pool").exists()  # nothing written, nothing installed
