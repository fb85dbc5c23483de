"""The pretrain driver's pieces that need no Ray: status page, progress line, banner, checks."""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from seer_core.config import load_config
from services.driver.pretrain import (
    RayPlaces,
    StatusPage,
    anchor_local_paths,
    banner,
    check_feed,
    format_progress,
    required_cpus,
)
from services.storage import resolve_storage

PROGRESS = {"step": 120, "images_seen": 1920, "loss": 6.25, "lr": 0.0375,
            "images_per_second": 41.5, "data_wait_share": 0.02, "last_checkpoint_step": 100,
            "embedding_rank": 23.46}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_status_page_serves_parsable_progress() -> None:
    port = _free_port()
    page = StatusPage(port)
    try:
        # The driver's page is for this machine: it listens on loopback, never on every interface.
        assert page.server is not None and page.server.server_address[0] == "127.0.0.1"
        page.update(PROGRESS)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            text = r.read().decode()
    finally:
        page.close()
    values = {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    assert values["seer_cli_step"] == 120
    assert values["seer_cli_images_seen"] == 1920
    assert values["seer_cli_loss"] == 6.25
    assert values["seer_cli_data_wait_ratio"] == pytest.approx(0.02)
    assert values["seer_cli_checkpoint_step"] == 100
    assert values["seer_cli_embedding_rank"] == pytest.approx(23.46)


def test_progress_line_and_banner(tmp_path: Path) -> None:
    line = format_progress(PROGRESS)
    assert "step      120" in line and "41.5 img/s" in line and "loss 6.2500" in line
    assert "data wait  2.0%" in line and "last ckpt 100" in line and "rank 23.5" in line
    assert "rank  nan" in format_progress({k: v for k, v in PROGRESS.items()
                                          if k != "embedding_rank"})  # an older worker
    cfg = load_config("local", [f"checkpoint.storage={tmp_path}", "train.max_steps=50"])
    storage = resolve_storage(str(tmp_path), "seer-local")
    text = banner(cfg, storage, RayPlaces("http://x/metrics"), 9100)
    assert "run 'seer-local'" in text and str(tmp_path / "seer-local") in text
    assert "stops at:    step 50" in text and "status page: http://127.0.0.1:9100" in text


def test_missing_local_feed_says_how_to_fix(tmp_path: Path) -> None:
    cfg = load_config("local", [f"feed.uri={tmp_path / 'nothing'}"])
    with pytest.raises(SystemExit, match="seer seed --out"):
        check_feed(cfg)
    check_feed(load_config("local", ["feed.uri=s3://bucket/prefix/"]))  # remote: not checked


def test_local_shard_patterns_pass_when_their_shards_exist(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A brace pattern or glob is no path: it passes when the feed's lister finds a shard."""
    from services.images.shards import write_parquet_shards, write_webdataset_shards

    samples = [(f"k{i}", bytes([i]), "jpg") for i in range(4)]
    write_webdataset_shards(samples, tmp_path / "runs" / "shards", 2)
    write_parquet_shards(samples, tmp_path / "runs" / "shards", 2)
    monkeypatch.chdir(tmp_path)

    def check(uri: str, *extra: str) -> None:
        check_feed(anchor_local_paths(load_config("local", [f"feed.uri={uri}", *extra])))

    for uri in ("runs/shards/{00000..00001}.tar", "runs/shards/{00000..00001}.parquet",
                "runs/shards/{00000..00009}.tar",  # some missing: the feed skips them
                "runs/shards/*.tar", "runs/shards/0000*.parquet", "runs/shards/00001.tar",
                f"{tmp_path}/runs/shards/{{00000..00001}}.tar"):
        check(uri)
    check("runs/shards/", "feed.kind=shards")
    shards = tmp_path / "runs" / "shards"
    for uri, says in (
            ("runs/shards/{00002..00006}.tar", f"none of the 5 shards it names exists. Write "
             f"sample shards with `seer seed --shards --out {shards}`"),
            ("runs/other/*.parquet", "no shard exists. Write sample shards with `seer seed "
             f"--shards --format parquet --out {tmp_path / 'runs' / 'other'}`"),
            ("runs/shards/00007.tar", f"no shard exists. Write sample shards with `seer seed "
             f"--shards --out {shards}`")):
        with pytest.raises(SystemExit) as exit_info:
            check(uri)
        assert says in str(exit_info.value), uri
    with pytest.raises(SystemExit, match=r"seer seed --shards --out .*runs/empty`"):
        (tmp_path / "runs" / "empty").mkdir()
        check("runs/empty", "feed.kind=shards")
    with pytest.raises(SystemExit, match=r"feed\.uri: shard pattern .*is reversed"):
        check("runs/shards/{00009..00000}.tar")


def test_required_cpus_counts_every_consumer() -> None:
    cfg = load_config("local", ["train.num_workers=2", "train.cpus_per_worker=1",
                                "ingest.actors=3", "ingest.cpus_per_actor=1",
                                "ingest.read_tasks=4", "ingest.read_task_cpus=0.25"])
    assert required_cpus(cfg) == pytest.approx(2 + 3 + 1 + 0.5)


def test_relative_local_paths_are_anchored_at_the_driver(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers run elsewhere (Ray Train moves them to a session folder): the driver's cwd rules."""
    cfg = load_config("local", ["feed.manifest_base=imgs", "checkpoint.storage=runs/ckpt"])
    monkeypatch.chdir(tmp_path)
    out = anchor_local_paths(cfg)
    assert out.feed.uri == str(tmp_path / "runs" / "sample-images")
    assert out.feed.manifest_base == str(tmp_path / "imgs")
    assert out.checkpoint.storage == str(tmp_path / "runs" / "ckpt")
    assert cfg.checkpoint.storage == "runs/ckpt"  # the caller's config is not changed
    kept = load_config("local", ["feed.uri=s3://bucket/img/", "checkpoint.storage=/abs/ckpt",
                                 "feed.manifest_base=file:///data/imgs"])
    again = anchor_local_paths(kept, "/elsewhere")
    assert (again.feed.uri, again.checkpoint.storage, again.feed.manifest_base) == (
        "s3://bucket/img/", "/abs/ckpt", "file:///data/imgs")
    home = anchor_local_paths(load_config("local", ["checkpoint.storage=~/ckpt"]), "/x")
    assert home.checkpoint.storage == str(Path("~/ckpt").expanduser())


def test_relative_shard_patterns_are_anchored_whole() -> None:
    """The folder of a pattern is anchored and normalised; its brace groups are left as written
    (``..`` in a range is no parent folder), so it still names the same shards."""
    from services.feed.shards.names import expand_shard_pattern

    def anchored(uri: str) -> str:
        return anchor_local_paths(load_config("local", [f"feed.uri={uri}"]), "/w/x").feed.uri

    assert anchored("runs/./shards/{00000..00003}.tar") == "/w/x/runs/shards/{00000..00003}.tar"
    assert expand_shard_pattern(anchored("runs/shards/{00000..00003}.tar"))[-1] == (
        "/w/x/runs/shards/00003.tar")
    assert anchored("{00000..00003}.tar") == "/w/x/{00000..00003}.tar"
    assert anchored("../shards/part-{0..3}.parquet") == "/w/shards/part-{0..3}.parquet"
    assert anchored("d/{a,b/../c}.tar") == "/w/x/d/{a,b/../c}.tar"  # normpath: d/c}.tar
    assert anchored("runs/shards/*.tar") == "/w/x/runs/shards/*.tar"
    assert anchored("s3://b/p/{00000..00009}.tar") == "s3://b/p/{00000..00009}.tar"
