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
    # One val image per class, 10 classes: the sampling error of each gain is the binomial one
    # of its two kNN1 figures on 10 images, printed at the end of the seed's row.
    module = runpy.run_path(str(BENCHMARKS / "quality.py"))
    for row in summary["per_seed"]:
        expected = module["sampling_error"]([row["checkpoint"]["knn1"], row["random"]["knn1"]],
                                            10)
        assert row["gain_sampling_error"] == pytest.approx(expected)
        assert re.search(rf"^\s+{row['seed']} quality-seed{row['seed']}\s.*± {expected:.1f}$",
                         out, re.MULTILINE)


def test_quality_sampling_error_is_the_binomial_one() -> None:
    """50% measured on 100 images has a standard error of 5 points; a gain between two such
    figures sqrt(2) times that; a figure of 0% or 100% adds nothing."""
    error = runpy.run_path(str(BENCHMARKS / "quality.py"))["sampling_error"]
    assert error([50.0], 100) == pytest.approx(5.0)
    assert error([50.0, 50.0], 100) == pytest.approx(5.0 * 2**0.5)
    assert error([50.0, 100.0, 0.0], 100) == pytest.approx(5.0)
    # Ten times the images: a third of the error (sqrt(10) = 3.16).
    assert error([15.0, 11.0], 5000) == pytest.approx(error([15.0, 11.0], 500) / 10**0.5)


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


def _run_benchmark(name: str, argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", [name, *argv])
    threads = torch.get_num_threads()  # a script may pin 1 thread for the whole process
    try:
        runpy.run_path(str(BENCHMARKS / name), run_name="__main__")
    finally:
        torch.set_num_threads(threads)


def test_ingest_benchmark_compares_the_shard_and_object_read_paths(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Both feeds' read paths on the local S3 server: images/s per core and GETs per 1,000
    images from the request counters (one GET an image; one a visit of an 8-image tar)."""
    _run_benchmark("ingest.py", ["--n", "4", "--side", "128", "--seconds", "0.5", "--rounds", "1",
                                 "--shard-images", "8", "--shards", "2", "--skip-ray"],
                   monkeypatch)
    out = capsys.readouterr().out
    rows = {m[1]: [float(v) for v in m.groups()[1:]] for m in re.finditer(
        r"^\| (objects|shards)\b.*? \| ([\d.]+) \(([\d.]+)\) \| ([\d.]+) \| ([\d.]+) \|$", out,
        re.MULTILINE)}
    assert rows.keys() == {"objects", "shards"}, out
    assert all(v > 0 for row in rows.values() for v in row[:3])
    assert rows["objects"][3] == 1000.0
    assert 1000 / 8 / 2 < rows["shards"][3] < 1000 / 8 * 2  # whole visits, give or take one
    assert re.search(r"shard feed vs object feed: images/s x[\d.]+ .* GETs per 1,000 images "
                     r"\d+x fewer", out)


def test_ingest_benchmark_refuses_shards_on_a_given_bucket(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _run_benchmark("ingest.py", ["--s3", "s3://bucket/images/"], monkeypatch)
    assert exit_info.value.code == 2
    assert "--feed objects" in capsys.readouterr().err


def test_feed_cost_scales_the_local_counters(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tiny local run end to end: the counters it prints, and the table scaled from them."""
    _run_benchmark("feed_cost.py", ["--images-per-second", "1000", "--shard-images", "100",
                                    "--local-objects", "30", "--local-images", "40",
                                    "--local-shard-images", "5", "--local-shards", "2"],
                   monkeypatch)
    out = capsys.readouterr().out
    # A read task reads whole blocks (the preset's 256 rows); the owner lists 30 keys in a page.
    assert re.search(r"object feed 256 images read with 256 GET, 0 HEAD, an owner refresh 1 "
                     r"LIST for 30 keys; shard feed 256 images in (\d+) visits with \1 GET", out)
    assert "| GET requests per day | 86,400,000 | 864,000 |" in out  # 1,000/s, 1 and 1/100
    # ceil(1M pooled keys / 30 a LIST) a refresh, 144 refreshes a day; a pattern lists nothing.
    assert "| LIST requests per day | 4,800,096 | 0 |" in out
    assert "| HEAD requests per day | 0 | 0 |" in out


def test_feed_cost_arithmetic_on_known_counters() -> None:
    mod = runpy.run_path(str(BENCHMARKS / "feed_cost.py"))
    measured = mod["Measured"](
        object_images=500, object_requests={"GET": 510, "HEAD": 0}, object_refresh_lists=2,
        object_keys_listed=2000, shard_images=600, shard_visits=16,
        shard_requests={"GET": 48, "HEAD": 16}, shard_refresh_lists=1,
        shard_overhead_bytes=2000)
    target = mod["Target"](images_per_second=25_600, mean_image_kb=150, latency_ms=50,
                           shard_images=10_000, refresh_seconds=600, pool_size=1_000_000,
                           read_tasks=64, fetch_threads=8)
    res = mod["scale"](measured, target)
    obj, shard = res["objects"], res["shards"]
    day = 25_600 * 86_400  # 2,211,840,000 images a day
    assert obj["GET"] == pytest.approx(day * 1.02)  # 10 retries in 500 images
    assert obj["HEAD"] == 0
    assert obj["LIST"] == pytest.approx(1000 * 144)  # 1M keys at 1,000 a LIST, every 600 s
    assert obj["bytes_per_s"] == pytest.approx(25_600 * 150_000)
    assert obj["in_flight"] == pytest.approx((25_600 * 1.02 + 1000 / 600) * 0.05)
    # 3 GETs and 1 HEAD a visit (a Parquet table's ranged reads), 10,000 images a visit.
    assert shard["GET"] == pytest.approx(day * 3 / 10_000)
    assert shard["HEAD"] == pytest.approx(day / 10_000)
    assert shard["LIST"] == pytest.approx(144)
    assert shard["bytes_per_s"] == pytest.approx(25_600 * 152_000)
    assert shard["in_flight"] == pytest.approx((2.56 * 4 + 1 / 600) * 0.05)
    assert shard["streams"] == 64
    text = mod["table"](measured, target, res)
    assert "| GET requests per day | 2,256,076,800 | 663,552 |" in text
    assert "1,306 requests in flight are 20.4 per read task" in text
    assert "caps the run at 10,240 images/s" in text


def _tiny_checkpoint_and_set(tmp_path: Path, val_per_class: int) -> Path:
    """A real (tiny) checkpoint and a generated labelled set at 32-40 px under `tmp_path`
    (`labelled/`); returns the checkpoint's folder."""
    from seer_core.config import load_config
    from services.images.labelled import generate_labelled_images
    from tests.services.evaluator_helpers import write_checkpoint

    generate_labelled_images(tmp_path / "labelled", train_per_class=3,
                             val_per_class=val_per_class, seed=5, min_side=32, max_side=40,
                             progress=False)
    cfg = load_config("local", ["model.trunk=tiny", "model.head_hidden=[16]",
                                "model.head_out=8", "model.prototypes=[8]",
                                f"checkpoint.storage={tmp_path / 'ckpt'}"])
    return write_checkpoint(cfg, 7)


def test_feature_pcs_benchmark_describes_random_init_and_a_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real (tiny) checkpoint and a generated labelled set: one block for the random-init
    trunk and one for the checkpoint, each with its kNN line and one row per component."""
    folder = _tiny_checkpoint_and_set(tmp_path, val_per_class=1)
    module = runpy.run_path(str(BENCHMARKS / "feature_pcs.py"))
    assert module["main"]([str(folder), "--data", str(tmp_path / "labelled"), "--size", "32",
                           "--components", "3"]) == 0
    out = capsys.readouterr().out
    assert "random init (tiny): kNN" in out and f"{folder}: kNN" in out
    assert len(re.findall(r"^  PC[123] ", out, re.MULTILINE)) == 6


def test_feature_pcs_class_r2_and_correlation_on_known_values() -> None:
    module = runpy.run_path(str(BENCHMARKS / "feature_pcs.py"))
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    assert module["class_r2"](labels.float() * 3.0, labels) == pytest.approx(1.0)
    # Equal class means: the class explains none of it.
    assert module["class_r2"](torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, -1.0]), labels) == 0.0
    a = torch.arange(6.0)
    assert module["correlation"](a, 2 * a + 1) == pytest.approx(1.0)
    assert module["correlation"](a, -a) == pytest.approx(-1.0)


def test_weight_drift_benchmark_prints_norms_and_drift_of_real_checkpoints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two real (tiny) checkpoints with different weights: the printed conv norm and drift are
    the ones computed here from the saved tensors, and only the second line has a drift."""
    from seer_core.checkpoint import load_state
    from seer_core.config import load_config
    from tests.services.evaluator_helpers import write_checkpoint

    cfg = load_config("local", ["model.trunk=tiny", "model.head_hidden=[16]",
                                "model.head_out=8", "model.prototypes=[8]",
                                f"checkpoint.storage={tmp_path / 'ckpt'}"])
    first, second = write_checkpoint(cfg, 5), write_checkpoint(cfg, 9)
    module = runpy.run_path(str(BENCHMARKS / "weight_drift.py"))
    assert module["main"]([str(first), str(second)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and "drift" not in lines[0]

    a, b = (module["conv_weights"](load_state(f)["model"]) for f in (first, second))
    assert a and a.keys() == b.keys()
    norm_b = sum(float(v.pow(2).sum()) for v in b.values()) ** 0.5
    drift = sum(float((b[k] - a[k]).pow(2).sum()) for k in a) ** 0.5
    assert f"conv {norm_b:7.1f}" in lines[1]
    assert f"drift {drift:.2f} ({100 * drift / norm_b:.1f}% of the norm) over 4 steps" in lines[1]
    assert " stem " in lines[1] and " block4 " in lines[1] and "prototypes.0.weight=" in lines[1]
    assert module["stage_of"]("trunk.trunk_output.block3.block3-1.f.a.0.weight") == "block3"
    assert module["stage_of"]("trunk.stem.0.weight") == "stem"


def test_eval_noise_benchmark_measures_slices_of_the_val_set(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real (tiny) checkpoint, 4 val images per class cut into 2 slices of 2: one row per
    random-init seed and one for the checkpoint, and on every row the figure over the whole val
    split is the mean of the two equal slices' figures (the same votes, counted twice over)."""
    folder = _tiny_checkpoint_and_set(tmp_path, val_per_class=4)
    module = runpy.run_path(str(BENCHMARKS / "eval_noise.py"))
    assert module["main"]([str(folder), "--data", str(tmp_path / "labelled"), "--size", "32",
                           "--slice-per-class", "2", "--random-seeds", "2"]) == 0
    out = capsys.readouterr().out
    assert "2 slices of 2 per class" in out
    rows = re.findall(r"^(random init \(tiny, seed [01]\)|\S+step\S*)\s+([\d.]+)\s+([\d.]+)"
                      r"\s+([\d.]+)\s+sd", out, re.MULTILINE)
    assert [r[0] for r in rows] == ["random init (tiny, seed 0)", "random init (tiny, seed 1)",
                                    str(folder)]
    for _, whole, _, mean in rows:
        assert float(whole) == pytest.approx(float(mean), abs=0.051)


def test_eval_noise_slices_are_disjoint_and_balanced() -> None:
    slices = runpy.run_path(str(BENCHMARKS / "eval_noise.py"))["slices"]
    labels = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1, 0])  # five of class 0, four of class 1
    parts = slices(labels, 2)
    assert [p.tolist() for p in parts] == [[0, 2, 1, 3], [4, 6, 5, 7]]  # the 5th 0 is left out
    assert slices(labels, 5) == []
