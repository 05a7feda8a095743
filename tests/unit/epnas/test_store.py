"""Store: file:// round trips, atomic writes, URIs, errors without credentials."""

from __future__ import annotations

import os
import pathlib
import re

import boto3
import botocore.config
import pytest

from epnas.store import (
    FileStore,
    StoreDecodeError,
    StoreError,
    StoreNotFound,
    check_root,
    join_uri,
    open_store,
    split_uri,
)


@pytest.fixture()
def store(tmp_path):
    return open_store(tmp_path.as_uri())


def test_bytes_json_file_round_trip(store, tmp_path):
    store.put_bytes("a/b/blob.bin", b"\x00\x01data")
    store.put_json("a/doc.json", {"z": 1, "a": [1, 2]})
    assert store.get_bytes("a/b/blob.bin") == b"\x00\x01data"
    assert store.get_json("a/doc.json") == {"z": 1, "a": [1, 2]}
    assert store.get_bytes("a/doc.json").decode().startswith('{\n  "a"')
    src = tmp_path / "src.txt"
    src.write_text("file body")
    store.put_file("files/x.txt", src)
    store.get_file("files/x.txt", tmp_path / "out" / "copy.txt")
    assert (tmp_path / "out" / "copy.txt").read_text() == "file body"


def test_exists_list_delete(store):
    for key in ("s/children/c1/result.json", "s/children/c2/arch.json", "s/weights/index.json", "other"):
        store.put_bytes(key, b"x")
    assert store.exists("s/weights/index.json") and not store.exists("s/missing")
    assert store.list("s/children/") == ["s/children/c1/result.json", "s/children/c2/arch.json"]
    assert store.list("s/children/c1") == ["s/children/c1/result.json"]
    assert len(store.list("")) == 4
    store.delete("other")
    store.delete("other")
    assert not store.exists("other")


def test_missing_key_raises_not_found(store):
    with pytest.raises(StoreNotFound):
        store.get_bytes("nope.json")
    assert issubclass(StoreNotFound, StoreError)


def test_write_is_atomic_no_temp_left_and_overwrite(store, tmp_path):
    store.put_bytes("k", b"one")
    store.put_bytes("k", b"two")
    assert store.get_bytes("k") == b"two"
    assert sorted(os.listdir(tmp_path)) == ["k"]


def test_invalid_json_and_bad_keys(store):
    store.put_bytes("bad.json", b"{nope")
    with pytest.raises(StoreError, match="not valid JSON"):
        store.get_json("bad.json")
    store.put_bytes("latin.json", b"\xff\xfe")
    for key in ("bad.json", "latin.json"):  # its own type: a caller tells damage from an unreachable store by type
        with pytest.raises(StoreDecodeError, match=f"/{key}: not valid JSON"):
            store.get_json(key)
    for key in ("../escape", "/abs", "a//b", ""):
        with pytest.raises(StoreError):
            store.put_bytes(key, b"x")


@pytest.mark.parametrize(
    ("uri", "root", "key"),
    [
        (
            "s3://bucket/prefix/search/children/e000-s00-c00/arch.json",
            "s3://bucket/prefix/search/children/e000-s00-c00",
            "arch.json",
        ),
        ("s3://bucket/arch.json", "s3://bucket", "arch.json"),
        ("file:///abs/dir/arch.json", "file:///abs/dir", "arch.json"),
        ("/plain/path/arch.json", "/plain/path", "arch.json"),
    ],
)
def test_split_uri(uri, root, key):
    assert split_uri(uri) == (root, key)
    assert join_uri(root, key) == uri


def test_open_store_schemes(tmp_path):
    assert isinstance(open_store(str(tmp_path)), FileStore)
    assert open_store(tmp_path.as_uri()).uri == tmp_path.as_uri()
    with pytest.raises(StoreError, match="unsupported"):
        open_store("gs://bucket/x")
    with pytest.raises(StoreError):
        split_uri("s3://bucket-only")


def test_s3_errors_never_show_credentials(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDSECRETID")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "supersecretvalue")
    store = open_store("s3://bucket/prefix", endpoint="http://127.0.0.1:9")
    import epnas.store as store_module

    monkeypatch.setattr(store_module, "RETRY_DEADLINE_S", 0.0)
    store.client = boto3.client(
        "s3",
        endpoint_url="http://127.0.0.1:9",
        region_name="us-east-1",
        config=botocore.config.Config(retries={"max_attempts": 1}, connect_timeout=1),
    )
    with pytest.raises(StoreError) as info:
        store_module.with_retries(
            lambda: store.client.get_object(Bucket="bucket", Key="k"),
            describe="s3://bucket/prefix/k: get",
            deadline_s=0.0,
        )
    text = str(info.value)
    assert "supersecretvalue" not in text and "AKIDSECRETID" not in text
    assert "s3://bucket/prefix/k" in text


@pytest.mark.parametrize(
    "uri, words",
    [
        ("", "the store URI is empty"),
        ("s3://", "no bucket in the URI"),
        ("s3://B", "is not an S3 bucket name"),
        ("file://", "file URIs must be file:///absolute/dir"),
        ("file:///", "file URIs must be file:///absolute/dir"),
        ("file://relative/dir", "file URIs must be file:///absolute/dir"),
        ("gs://bucket", "unsupported store scheme 'gs'"),
        ("s3:/bucket", "not a store URI"),
    ],
)
def test_malformed_store_roots_are_refused(uri: str, words: str) -> None:
    with pytest.raises(StoreError, match=re.escape(words)):
        check_root(uri)


@pytest.mark.parametrize(
    "uri", ["s3://bucket", "s3://my.bucket-1/a/b", "file:///tmp/x", "file://localhost/tmp/x", "runs", "./a/b"]
)
def test_plain_store_roots_are_accepted(uri: str) -> None:
    assert check_root(uri) == uri


@pytest.mark.parametrize("store", ["", "s3://", "file://", "file:///"])
def test_epnas_search_refuses_a_malformed_store_before_writing_anything(store: str, tmp_path, monkeypatch) -> None:
    from click.testing import CliRunner

    from epnas.cli import main

    monkeypatch.chdir(tmp_path)
    example = pathlib.Path(__file__).resolve().parents[3] / "examples" / "digits-quick.yaml"
    result = CliRunner().invoke(main, ["search", str(example), "--store", store, "--quiet"])
    assert result.exit_code == 2, result.output
    assert "--store / spec.store.uri" in result.output
    assert list(tmp_path.iterdir()) == []  # nothing written, not even ./s3:/…
