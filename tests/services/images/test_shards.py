"""Shard writers: WebDataset tars as img2dataset writes them, Parquet as Hugging Face writes an
Image column; numbered, atomic, deterministic, and read back by the shard readers."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from services.feed.shards import iter_parquet_samples, iter_tar_samples
from services.images.sample import generate_sample_images
from services.images.shards import (
    HF_IMAGE_TYPE,
    directory_samples,
    write_parquet_shards,
    write_webdataset_shards,
)


def _samples(n: int) -> list[tuple[str, bytes, str]]:
    out = []
    for i in range(n):
        buf = io.BytesIO()
        Image.new("RGB", (8 + i, 8), (i * 7 % 256, 40, 90)).save(buf, "PNG")
        out.append((f"{i:09d}", buf.getvalue(), ".PNG" if i % 2 else "png"))
    return out


def test_webdataset_shards_are_numbered_with_image_and_json_members(tmp_path: Path) -> None:
    samples = _samples(7)
    paths = write_webdataset_shards(iter(samples), tmp_path / "wds", 3)
    assert [p.name for p in paths] == ["00000.tar", "00001.tar", "00002.tar"]
    assert sorted(p.name for p in (tmp_path / "wds").iterdir()) == [p.name for p in paths]
    with tarfile.open(paths[0]) as tar:
        names = tar.getnames()
        meta = json.loads(tar.extractfile("000000001.json").read())  # type: ignore[union-attr]
    assert names == ["000000000.png", "000000000.json", "000000001.png", "000000001.json",
                     "000000002.png", "000000002.json"]
    assert meta == {"key": "000000001", "status": "success", "error_message": None,
                    "sha256": hashlib.sha256(samples[1][1]).hexdigest()}
    with paths[2].open("rb") as f:
        assert [s.data for s in iter_tar_samples(f, "x")] == [samples[6][1]]


def test_writing_the_same_samples_twice_gives_the_same_bytes(tmp_path: Path) -> None:
    [a] = write_webdataset_shards(_samples(3), tmp_path / "a", 10)
    [b] = write_webdataset_shards(_samples(3), tmp_path / "b", 10)
    assert a.read_bytes() == b.read_bytes()


def test_parquet_shards_use_the_hugging_face_image_layout(tmp_path: Path) -> None:
    samples = _samples(7)
    paths = write_parquet_shards(samples, tmp_path, 5, rows_per_group=2)
    assert [p.name for p in paths] == ["00000.parquet", "00001.parquet"]
    table = pq.ParquetFile(paths[0])
    assert table.schema_arrow.field("image").type == HF_IMAGE_TYPE
    assert table.metadata.num_row_groups == 3 and table.metadata.num_rows == 5
    features = json.loads(table.schema_arrow.metadata[b"huggingface"])["info"]["features"]
    assert features["image"] == {"_type": "Image"}
    rows = table.read().to_pylist()
    assert rows[1] == {"key": "000000001", "image": {"bytes": samples[1][1],
                                                     "path": "000000001.png"}}
    with paths[1].open("rb") as f:
        assert [s.data for s in iter_parquet_samples(f, "x")] == [d for _, d, _ in samples[5:]]
    [single] = write_parquet_shards(samples, tmp_path / "one", 10)
    assert pq.ParquetFile(single).metadata.num_row_groups == 1  # default: one group a shard


def test_a_failed_write_leaves_no_shard_and_no_temporary_file(tmp_path: Path) -> None:
    bad = [("000000000", b"ok", "png"), ("000000001", 12345, "png")]
    with pytest.raises(TypeError):
        write_webdataset_shards(bad, tmp_path, 10)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        write_parquet_shards(bad, tmp_path, 10)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("key", "ext"), [("a.b", "jpg"), ("", "jpg"), ("k", ""), ("d/x.y", "png")])
def test_keys_webdataset_would_split_wrongly_are_refused(tmp_path: Path, key: str,
                                                         ext: str) -> None:
    with pytest.raises(ValueError, match=r"no '\.'"):
        write_webdataset_shards([(key, b"x", ext)], tmp_path, 1)


def test_no_samples_no_shards_and_a_shard_size_must_be_positive(tmp_path: Path) -> None:
    assert write_webdataset_shards([], tmp_path, 5) == []
    assert write_parquet_shards([], tmp_path, 5) == []
    with pytest.raises(ValueError, match="images_per_shard"):
        write_webdataset_shards(_samples(1), tmp_path, 0)


def test_sample_images_pack_into_shards_the_readers_decode(tmp_path: Path) -> None:
    generate_sample_images(tmp_path / "images", 6, seed=3, min_side=32, max_side=64,
                           progress=False)
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    first = sorted((tmp_path / "images").glob("sample_*"))[0]
    (tmp_path / "images" / f"a.b{first.suffix}").write_bytes(first.read_bytes())
    samples = list(directory_samples(tmp_path / "images"))
    assert len(samples) == 7 and samples[0][0] == "a_b"  # the dot would end a WebDataset key
    [tar] = write_webdataset_shards(samples, tmp_path / "wds", 100)
    [table] = write_parquet_shards(samples, tmp_path / "hf", 100)
    for path, read in ((tar, iter_tar_samples), (table, iter_parquet_samples)):
        with path.open("rb") as f:
            out = list(read(f, path.name))
        assert [s.data for s in out] == [d for _, d, _ in samples]
        for s in out:
            with Image.open(io.BytesIO(s.data or b"")) as img:
                img.load()
