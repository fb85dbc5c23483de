"""The `seer` command's quick subcommands, run in-process through `main()`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from seer_core.checkpoint import COMMIT_FILE, save_state
from seer_core.config import load_config
from seer_core.training import build_train_state, state_dict
from services.cli import main
from services.storage import META_FILE


def test_models_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "regnety_256gf", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "regnety_256gf" in out and "10444" in out and "tiny" in out
    assert main(["models", "vit"]) == 2
    assert "unknown trunk 'vit'" in capsys.readouterr().err


def test_config_list_and_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--list"]) == 0
    assert "seer-rg256" in capsys.readouterr().out
    assert main(["config", "--set", "train.batch_size=-1"]) == 2
    assert "train.batch_size: -1 is too small" in capsys.readouterr().err
    # The schedule's own bound, stated once, is the schema's too (issue 19).
    assert main(["config", "--set", "schedule.factor=1"]) == 2
    assert "schedule.factor: 1.0 is too large; allowed: < 1" in capsys.readouterr().err
    assert main(["config", "--config", "sslight-mobilenet"]) == 0
    assert "global_local_alpha: 0.4" in capsys.readouterr().out


def test_config_schema_is_json_schema_the_presets_pass(
        capsys: pytest.CaptureFixture[str]) -> None:
    """`seer config --schema` prints the JSON Schema an editor or a manifest check uses: every
    preset passes it, and an unknown key, a value outside a Literal or past a bound fails it."""
    import copy

    import jsonschema
    import yaml

    from seer_core.config import preset_names, presets_dir

    assert main(["config", "--schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    validator = jsonschema.Draft202012Validator(schema)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert set(schema["properties"]) >= {"model", "schedule", "train", "eval"}
    presets = {name: yaml.safe_load((presets_dir() / f"{name}.yaml").read_text())
               for name in preset_names()}
    assert len(presets) >= 3
    for name, preset in presets.items():
        assert not list(validator.iter_errors(preset)), name
    local = presets["local"]
    for section, key, value in [("train", "nope", 1), ("train", "amp", "fp8"),
                                ("schedule", "factor", 1.0), ("optim", "momentum", 1.0),
                                ("train", "batch_size", 0), ("eval", "knn_k", [0])]:
        bad = copy.deepcopy(local)
        bad.setdefault(section, {})[key] = value
        assert list(validator.iter_errors(bad)), (section, key, value)


def test_seed_writes_images_and_refuses_to_mix(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "imgs"
    assert main(["seed", "--out", str(out), "--count", "5"]) == 0
    assert len(list(out.iterdir())) == 5
    assert main(["seed", "--out", str(out), "--count", "5"]) == 1
    assert "--force" in capsys.readouterr().err


def test_seed_labelled(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                       monkeypatch: pytest.MonkeyPatch) -> None:
    from services.images.shapes import OBJECT_KINDS

    out = tmp_path / "labelled"
    args = ["seed", "--labelled", "--out", str(out), "--train-per-class", "2",
            "--val-per-class", "1"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert f"wrote 20 train + 10 val labelled images to {out}" in printed
    assert f"next: seer eval --data {out}" in printed
    for split, count in (("train", 2), ("val", 1)):
        assert sorted(p.name for p in (out / split).iterdir()) == sorted(OBJECT_KINDS)
        assert all(len(list(p.iterdir())) == count for p in (out / split).iterdir())
    # A non-empty folder is refused without --force, and nothing is written.
    before = sorted(out.rglob("*"))
    assert main(args) == 1
    assert "--force" in capsys.readouterr().err
    assert sorted(out.rglob("*")) == before
    assert main([*args, "--force"]) == 0
    capsys.readouterr()
    # Counts are checked before anything is written.
    for flag in ("--train-per-class", "--val-per-class"):
        with pytest.raises(SystemExit) as exit_info:
            main(["seed", "--labelled", "--out", str(tmp_path / "none"), flag, "0"])
        assert exit_info.value.code == 2
        assert f"argument {flag}: must be >= 1, got 0" in capsys.readouterr().err
    assert main(["seed", "--labelled", "--out", str(tmp_path / "none"), "--count", "3"]) == 2
    assert "--count is for the sample pool" in capsys.readouterr().err
    assert main(["seed", "--out", str(tmp_path / "none"), "--train-per-class", "3"]) == 2
    assert "--train-per-class needs --labelled" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()
    # Without --out, --labelled writes runs/labelled (eval.data's default).
    monkeypatch.chdir(tmp_path)
    assert main(["seed", "--labelled", "--train-per-class", "1", "--val-per-class", "1"]) == 0
    assert len(list((tmp_path / "runs" / "labelled" / "val").rglob("*.jpg"))) == 10
    assert not (tmp_path / "runs" / "sample-images").exists()


def _shard_images(pattern: str) -> list[tuple[str, bytes]]:
    """(where, bytes) of every image the shard feed finds under ``pattern``, in order: seer's
    own lister (ShardSource) and readers, as a read task uses them. ``where`` is the member's
    shard's file name with the member's name in a tar, row group:row in a Parquet table."""
    from services.feed.base import FeedSpec
    from services.feed.shards import iter_shard_samples
    from services.feed.shards.source import ShardSource

    source = ShardSource(FeedSpec(uri=pattern))
    images = []
    try:
        for shard in source.list_shards():
            with source.open(shard) as handle:
                for sample in iter_shard_samples(handle, shard):
                    assert sample.data is not None, sample
                    images.append((sample.key.rsplit("/", 1)[1], sample.data))
    finally:
        source.close()
    return images


def test_seed_shards_hold_exactly_the_sample_images(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from services.feed.shards.names import expand_shard_pattern

    ref, out = tmp_path / "imgs", tmp_path / "shards"
    assert main(["seed", "--out", str(ref), "--count", "5", "--seed", "3"]) == 0
    want = sorted((p.name, p.read_bytes()) for p in ref.iterdir())
    capsys.readouterr()
    assert main(["seed", "--shards", "--format", "both", "--per-shard", "2", "--out", str(out),
                 "--count", "5", "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"0000{i}.{ext}" for i in range(3) for ext in ("tar", "parquet"))  # nothing hidden left
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    for ext in ("tar", "parquet"):
        pattern = f"{out.as_posix()}/{{00000..00002}}.{ext}"
        assert f"3 {ext} shard(s) of up to 2 images" in printed
        assert f"feed.uri={pattern}" in printed
        assert expand_shard_pattern(pattern) == [str(out / f"0000{i}.{ext}") for i in range(3)]
        # The very bytes, in order, two a shard: a tar's members by name, a table's by row.
        assert _shard_images(pattern) == [
            (f"0000{i // 2}.{ext}#" + (name if ext == "tar" else f"0:{i % 2}"), data)
            for i, (name, data) in enumerate(want)]
    tar_pattern = f"{out.as_posix()}/{{00000..00002}}.tar"
    assert f"next: seer pretrain --set 'feed.uri={tar_pattern}'" in printed
    assert f"make run FEED='{tar_pattern}'" in printed


def test_seed_shards_refuses_bad_combinations(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    none = str(tmp_path / "none")
    assert main(["seed", "--shards", "--labelled", "--out", none]) == 2
    assert "--labelled) is folders per class, never shards" in capsys.readouterr().err
    for flag, value in (("--format", "parquet"), ("--per-shard", "8")):
        assert main(["seed", "--out", none, flag, value]) == 2
        assert f"{flag} needs --shards" in capsys.readouterr().err
    for flag, value, says in (("--per-shard", "0", "must be >= 1, got 0"),
                              ("--format", "zip", "invalid choice: 'zip'")):
        with pytest.raises(SystemExit) as exit_info:
            main(["seed", "--shards", "--out", none, flag, value])
        assert exit_info.value.code == 2
        assert f"argument {flag}: {says}" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()
    # Default folder runs/shards, one shard; then a second seeding into it needs --force.
    monkeypatch.chdir(tmp_path)
    assert main(["seed", "--shards", "--count", "1"]) == 0
    assert "feed.uri=runs/shards/{00000..00000}.tar" in capsys.readouterr().out
    assert [p.name for p in (tmp_path / "runs" / "shards").iterdir()] == ["00000.tar"]
    assert main(["seed", "--shards", "--count", "1", "--format", "parquet"]) == 1
    assert "--force" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "sample-images").exists()


def _tiny_overrides(storage: Path) -> list[str]:
    return ["model.trunk=tiny", "model.head_hidden=[16]", "model.head_out=8",
            "model.prototypes=8", f"checkpoint.storage={storage}", "checkpoint.run_name=r1"]


def test_status_and_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    overrides = _tiny_overrides(tmp_path)
    args = [x for o in overrides for x in ("--set", o)]
    assert main(["status", *args]) == 1
    assert "no checkpoint yet for run 'r1'" in capsys.readouterr().out

    cfg = load_config("local", overrides)
    state = build_train_state(cfg)
    state.step, state.images_seen = 40, 640
    folder = tmp_path / "r1" / "step_000000000040"
    save_state(state_dict(state), folder / "state.pt")
    (folder / META_FILE).write_text(json.dumps({"step": 40, "images_seen": 640, "loss": 5.5,
                                                "lr": 0.25, "time": 0}))
    (folder / COMMIT_FILE).write_text(json.dumps({"step": 40, "world_size": 1}))
    assert main(["status", *args, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["step"] == 40 and summary["images_seen"] == 640 and summary["loss"] == 5.5
    assert summary["steps"] == [40]

    exported = tmp_path / "trunk.pt"
    assert main(["export", str(folder), str(exported)]) == 0
    weights = torch.load(exported, weights_only=True)
    assert weights and not any(k.startswith(("head", "module.", "fc.")) for k in weights)


def _eval_args(tmp_path: Path) -> tuple[list[str], Path]:
    from tests.services.evaluator_helpers import make_labelled, tiny_overrides

    data = make_labelled(tmp_path / "data")
    overrides = tiny_overrides(tmp_path / "ckpt", data)
    return [x for o in overrides for x in ("--set", o)], data


def test_eval_once_prints_records_and_plots(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    from tests.services.evaluator_helpers import tiny_config, write_checkpoint

    args, data = _eval_args(tmp_path)
    assert main(["eval", *args]) == 1
    assert "no checkpoint yet for run 'r1'" in capsys.readouterr().err
    write_checkpoint(tiny_config(tmp_path / "ckpt", data), 40)
    assert main(["eval", *args, "--checkpoint", "latest", "--knn-k", "5",
                 "--protocol", "knn,linear"]) == 0
    out = capsys.readouterr().out
    assert "run r1 step 40 (640 images seen), res5 features" in out
    assert "4 classes, 24 train / 8 val images" in out
    assert "knn5" in out and "linear" in out and "random top1" in out and "knn20" not in out
    results = tmp_path / "ckpt" / "r1-eval" / "results.jsonl"
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert {(r["trunk"], r["protocol"]) for r in rows} == {
        (t, p) for t in ("checkpoint", "random") for p in ("knn5", "linear")}
    assert results.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert f"plot:    {results.with_suffix('.png')}" in out

    folder = tmp_path / "ckpt" / "r1" / "step_000000000040"
    assert main(["eval", *args, "--checkpoint", str(folder), "--no-results", "--json",
                 "--baseline", "none", "--protocol", "knn,lowshot", "--stage", "res4",
                 "--finetune", "--set", "eval.finetune_steps=2", "--set", "eval.probe_epochs=2",
                 "--set", "eval.lowshot_fractions=[0.5]", "--set", "eval.lowshot_seeds=[0, 1]"
                 ]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["protocol"] for r in printed} == {"knn5", "knn20", "lowshot50pct", "finetune",
                                                 "lowshot50pct_finetune"}
    for protocol in ("lowshot50pct", "lowshot50pct_finetune"):  # probe, and SEER's fine-tuning
        assert {r["metric"] for r in printed if r["protocol"] == protocol} == {
            "top1", "top5", "top1_std"}
    assert {r["stage"] for r in printed} == {"res4"} and {r["trunk"] for r in printed} == {
        "checkpoint"}
    assert len(results.read_text().splitlines()) == len(rows)  # --no-results: file untouched


def test_eval_bad_input_exits_2_naming_what_and_where(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from tests.services.evaluator_helpers import tiny_config, write_checkpoint

    args, data = _eval_args(tmp_path)
    folder = write_checkpoint(tiny_config(tmp_path / "ckpt", data), 40)
    assert main(["eval", *args, "--data", str(tmp_path / "nothing-here")]) == 2
    assert "nothing-here" in capsys.readouterr().err
    assert main(["eval", *args, "--protocol", "knn,svm"]) == 2
    assert "--protocol: 'svm' is not allowed; allowed: knn, linear" in capsys.readouterr().err
    assert main(["eval", *args, "--stage", "res5", "--set", "eval.knn_k=[500]"]) == 2
    assert "fewer than k=500" in capsys.readouterr().err
    (folder / "state.pt").write_bytes(b"not a checkpoint")
    assert main(["eval", *args, "--checkpoint", "40"]) == 2
    err = capsys.readouterr().err
    assert "checkpoint step 40" in err and "corrupt or truncated" in err
    assert main(["eval", *args, "--checkpoint", str(tmp_path / "nope")]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
    assert main(["eval", *args, "--max-polls", "1"]) == 2
    assert "--max-polls: needs --watch" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["eval", *args, "--device", "cuda"]) == 2
        assert "eval.device: 'cuda' but no CUDA device is visible" in capsys.readouterr().err


def test_eval_watch_single_pass(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--watch --max-polls 1`: what a scheduled job runs; a second pass finds nothing new."""
    from tests.services.evaluator_helpers import tiny_config, write_checkpoint

    args, data = _eval_args(tmp_path)
    write_checkpoint(tiny_config(tmp_path / "ckpt", data), 40)
    assert main(["eval", *args, "--watch", "--max-polls", "1", "--metrics-port", "0"]) == 0
    results = tmp_path / "ckpt" / "r1-eval" / "results.jsonl"
    count = len(results.read_text().splitlines())
    assert count == 8  # (knn5, knn20) x (top1, top5) x (checkpoint, random)
    assert main(["eval", *args, "--watch", "--max-polls", "1"]) == 0
    assert len(results.read_text().splitlines()) == count


def test_eval_watch_serves_its_gauges_on_loopback_by_default(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A laptop's `seer eval --watch` must not listen on every interface; the manifests pass
    --metrics-addr=0.0.0.0 where a PodMonitor scrapes the pod."""
    import socket

    from tests.services.evaluator_helpers import tiny_config, write_checkpoint

    args, data = _eval_args(tmp_path)
    write_checkpoint(tiny_config(tmp_path / "ckpt", data), 40)
    with socket.socket() as probe:  # a free port, released before the evaluator binds it
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert main(["eval", *args, "--watch", "--max-polls", "1", "--metrics-port", str(port)]) == 0
    assert f"seer_eval_* gauges on http://127.0.0.1:{port}/metrics" in capsys.readouterr().err


def test_config_refuses_sync_batchnorm_on_several_cpu_workers(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--set", "model.sync_bn_group_size=64",
                 "--set", "train.num_workers=2"]) == 2
    assert "model.sync_bn_group_size" in capsys.readouterr().err


def test_config_refuses_an_endpoint_with_credentials_without_printing_them(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--set", "checkpoint.endpoint_url=http://AKIAXXX:s3cr3tpw@minio:9000"
                 ]) == 2
    out, err = capsys.readouterr()
    assert "checkpoint.endpoint_url: must not carry credentials" in err
    assert "s3cr3tpw" not in out + err and "AKIAXXX" not in out + err
