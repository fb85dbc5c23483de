"""load_labelled from a real S3 server (moto_server on 127.0.0.1): both folder layouts and a
Parquet file, endpoint resolution, retries through a faulty proxy, and the S3-specific errors."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from services.labelled import LabelledDataError, load_labelled
from tests.s3server import FaultProxy, MotoServer, put_objects
from tests.services.test_labelled import SIZE, check_consistent, flat_files, split_files, write

pytestmark = pytest.mark.integration


def upload(client: Any, bucket: str, prefix: str, files: dict[str, bytes]) -> None:
    put_objects(client, bucket, {f"{prefix}{rel}": data for rel, data in files.items()})


def relative(names: list[str], root: str) -> list[str]:
    assert all(n.startswith(root) for n in names), (names, root)
    return [n[len(root):].lstrip("/") for n in names]


def test_train_val_layout_from_s3_matches_local(
    s3_server: MotoServer, s3_client: Any, s3_bucket: str, tmp_path: Path
) -> None:
    files = split_files({"apple": 3, "banana": 2, "cherry": 2}, {"apple": 1, "banana": 2,
                                                                "cherry": 1})
    upload(s3_client, s3_bucket, "sets/split/", files)
    upload(s3_client, s3_bucket, "sets/split-other/", {"apple/x.jpg": b"not under the prefix"})
    calls: list[tuple[int, int]] = []
    remote = load_labelled(f"s3://{s3_bucket}/sets/split", image_size=SIZE,
                           endpoint_url=s3_server.endpoint_url,
                           progress=lambda d, t: calls.append((d, t)))
    local = load_labelled(str(write(tmp_path, files)), image_size=SIZE)
    assert remote.classes == local.classes == ["apple", "banana", "cherry"]
    assert remote.source == f"s3://{s3_bucket}/sets/split" and remote.skipped == {}
    check_consistent(remote)
    for r, loc in ((remote.train, local.train), (remote.val, local.val)):
        assert torch.equal(r.images, loc.images) and torch.equal(r.labels, loc.labels)
        assert relative(r.names, f"s3://{s3_bucket}/sets/split/") == relative(
            loc.names, str(tmp_path))
    assert calls == [(i, 11) for i in range(12)]


def test_flat_layout_from_s3_endpoint_from_environment(
    s3_server: MotoServer, s3_client: Any, s3_bucket: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    files = flat_files({"apple": 6, "banana": 4})
    files["banana/broken.jpg"] = b"\xff\xd8\xff\xe0 cut short"
    files["banana/notes.txt"] = b"ignored"
    upload(s3_client, s3_bucket, "flat/", files)
    s3_client.put_object(Bucket=s3_bucket, Key="flat/.hidden/x.jpg", Body=b"ignored")
    monkeypatch.setenv("SEER_S3_ENDPOINT_URL", s3_server.endpoint_url)
    remote = load_labelled(f"s3://{s3_bucket}/flat/", image_size=SIZE, val_fraction=0.5,
                           split_seed=4)
    assert remote.skipped == {"corrupt": 1}
    assert len(remote.train) + len(remote.val) == 10
    check_consistent(remote)
    # The split depends on the seed and each class's sorted images, not on where they live.
    local = load_labelled(str(write(tmp_path, files)), image_size=SIZE, val_fraction=0.5,
                          split_seed=4)
    assert relative(remote.val.names, f"s3://{s3_bucket}/flat/") == relative(
        local.val.names, str(tmp_path))
    assert torch.equal(remote.val.images, local.val.images)


def test_parquet_from_s3(s3_server: MotoServer, s3_client: Any, s3_bucket: str) -> None:
    files = flat_files({"apple": 4, "cherry": 4})
    rows = sorted(files.items())
    table = pa.table({
        "image": [data for _, data in rows],
        "label": [rel.split("/")[0] for rel, _ in rows],
        "split": ["val" if rel.endswith("000.jpg") else "train" for rel, _ in rows],
    })
    for name, t in (("with_split.parquet", table), ("no_split.parquet", table.drop(["split"]))):
        buf = io.BytesIO()
        pq.write_table(t, buf)
        s3_client.put_object(Bucket=s3_bucket, Key=f"tables/{name}", Body=buf.getvalue())
    spec = f"s3://{s3_bucket}/tables/with_split.parquet"
    ls = load_labelled(spec, image_size=SIZE, endpoint_url=s3_server.endpoint_url)
    assert ls.classes == ["apple", "cherry"]
    assert ls.val.names == [f"{spec}#0", f"{spec}#4"] and ls.val.labels.tolist() == [0, 1]
    assert len(ls.train) == 6
    check_parquet = load_labelled(f"s3://{s3_bucket}/tables/no_split.parquet", image_size=SIZE,
                                  endpoint_url=s3_server.endpoint_url, val_fraction=0.25)
    assert sorted(check_parquet.val.labels.tolist()) == [0, 1]
    for part in (ls.train, ls.val, check_parquet.train):
        assert part.images.shape == (len(part), 3, SIZE, SIZE)
        assert part.images.dtype == torch.uint8


def test_transient_errors_are_retried(
    fault_proxy: FaultProxy, s3_client: Any, s3_bucket: str
) -> None:
    upload(s3_client, s3_bucket, "set/", flat_files({"apple": 3, "banana": 3}))
    fault_proxy.fail_next(1, match=r"^GET /[^/?]+\?")  # the listing
    fault_proxy.fail_next(2, status=500, code="InternalError", match=r"^GET /[^/]+/set/.+")
    fault_proxy.drop_next(1, match=r"^GET /[^/]+/set/.+")
    ls = load_labelled(f"s3://{s3_bucket}/set", image_size=SIZE, val_fraction=0.3,
                       endpoint_url=fault_proxy.endpoint_url)
    assert len(ls.train) + len(ls.val) == 6 and ls.skipped == {}
    assert fault_proxy.faults_served == 4


def test_s3_errors(s3_server: MotoServer, s3_client: Any, s3_bucket: str) -> None:
    endpoint = s3_server.endpoint_url

    def fails(spec: str, match: str) -> None:
        with pytest.raises(LabelledDataError, match=match):
            load_labelled(spec, image_size=SIZE, endpoint_url=endpoint)

    upload(s3_client, s3_bucket, "set/", flat_files({"apple": 2}))
    s3_client.put_object(Bucket=s3_bucket, Key="set/banana/", Body=b"")  # a folder marker
    fails(f"s3://{s3_bucket}/set", rf"empty class folder s3://{s3_bucket}/set/banana/")
    fails(f"s3://{s3_bucket}/nothing-here", rf"not found: no objects under s3://{s3_bucket}/")
    fails(f"s3://{s3_bucket}/missing.parquet", rf"not found: s3://{s3_bucket}/missing\.parquet")
    fails(f"s3://{s3_bucket}-absent/set", "the bucket does not exist")
    fails("s3:///set", "not an s3://bucket")
