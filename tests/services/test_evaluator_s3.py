"""The evaluator against a real S3 server (moto): checkpoints read, and results written, in S3."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from seer_core.checkpoint import step_dir_name
from services.cli import main
from services.evaluator import CheckpointVanishedError
from services.evaluator.checkpoints import list_refs, load_checkpoint
from services.storage import RunStorage, resolve_storage
from tests.s3server import MotoServer
from tests.services.evaluator_helpers import (
    TrappedFS,
    make_labelled,
    tiny_config,
    write_checkpoint,
)


def _upload_checkpoints(client: Any, bucket: str, local_root: Path, steps: list[int]) -> None:
    for step in steps:
        folder = local_root / "r1" / step_dir_name(step)
        for name in ("state.pt", "meta.json", "commit.json"):
            client.put_object(Bucket=bucket, Key=f"runs/r1/{folder.name}/{name}",
                              Body=(folder / name).read_bytes())


def test_watch_an_s3_store_with_results_in_s3(tmp_path: Path, s3_server: MotoServer,
                                              s3_client: Any, s3_bucket: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    data = make_labelled(tmp_path / "data")
    local = tiny_config(tmp_path / "local", data)
    write_checkpoint(local, 10)
    write_checkpoint(local, 20)
    _upload_checkpoints(s3_client, s3_bucket, tmp_path / "local", [10, 20])
    endpoint = s3_server.endpoint_url
    storage = resolve_storage(f"s3://{s3_bucket}/runs", "r1", endpoint)

    # retention deletes step 20 from the bucket after it was listed, before it is read
    def retention(path: str) -> None:
        for name in ("commit.json", "state.pt", "meta.json"):
            s3_client.delete_object(Bucket=s3_bucket, Key=path.split("/", 1)[1].replace(
                "state.pt", name))

    trapped = RunStorage(TrappedFS(on_open=retention, inner=storage.filesystem), storage.root,
                         "r1", storage.display)
    ref = list_refs(trapped)[-1]
    assert ref.display == f"s3://{s3_bucket}/runs/r1/{step_dir_name(20)}"
    with pytest.raises(CheckpointVanishedError, match="step 20"):
        load_checkpoint(ref)
    assert load_checkpoint(list_refs(storage)[-1]).step == 10

    args = ["--set", f"checkpoint.storage=s3://{s3_bucket}/runs",
            "--set", f"checkpoint.endpoint_url={endpoint}", "--set", "checkpoint.run_name=r1",
            "--set", f"eval.data={data}", "--set", "eval.image_size=32",
            "--set", "eval.knn_k=[5]", "--set", "eval.protocols=[knn]",
            "--set", "eval.device=cpu", "--set", "eval.baseline=none"]
    assert main(["eval", *args, "--watch", "--max-polls", "1", "--metrics-port", "0"]) == 0
    body = s3_client.get_object(Bucket=s3_bucket, Key="runs/r1-eval/results.jsonl")["Body"]
    rows = [json.loads(line) for line in body.read().decode().splitlines()]
    assert {r["step"] for r in rows} == {10} and {r["protocol"] for r in rows} == {"knn5"}
    png = s3_client.get_object(Bucket=s3_bucket, Key="runs/r1-eval/results.png")["Body"].read()
    assert png[:4] == b"\x89PNG"

    # a restarted watcher reads the results back from S3 and skips step 10
    _upload_checkpoints(s3_client, s3_bucket, tmp_path / "local", [20])
    assert main(["eval", *args, "--watch", "--max-polls", "2", "--metrics-port", "0",
                 "--interval", "0.01"]) == 0
    body = s3_client.get_object(Bucket=s3_bucket, Key="runs/r1-eval/results.jsonl")["Body"]
    steps = [json.loads(line)["step"] for line in body.read().decode().splitlines()]
    assert sorted(steps) == [10, 10, 20, 20]
    capsys.readouterr()
