"""The child trainer and the shared weight dictionary against a real MinIO server.

Uses the harness's session ``minio`` and per-test ``bucket`` for the round trip; the
outage tests start their own server (same binary, ``harness.minio.MinioServer``) so
stopping it cannot disturb other tests.  A missing binary fails with the harness's
message pointing at ``make testbin``.
"""

from __future__ import annotations

import os
import pathlib
import secrets
import subprocess
import sys
import threading
import time

import pytest
from harness import binaries
from harness.controlplane import _http_ok
from harness.minio import MinioServer

from epnas.store import StoreError, open_store
from epnas.task import load_result
from epnas.weights import merge, read_index

REPO = pathlib.Path(__file__).resolve().parents[2]
ARCH = {
    "space": "image-layer",
    "layers": [
        {"op": "conv2d", "src1": 0, "channels": 16, "width": 3, "activation": "relu"},
        {"op": "maxpool", "src1": 1, "width": 2},
    ],
}


def s3_env(server: MinioServer) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": server.root_user,
        "AWS_SECRET_ACCESS_KEY": server.root_password,
        "AWS_REGION": server.region,
        "EPNAS_S3_ENDPOINT": server.endpoint,
    }


@pytest.fixture()
def s3_credentials(minio, monkeypatch):
    for key, value in s3_env(minio).items():
        monkeypatch.setenv(key, value)
    return minio


def task_doc(child: str) -> dict:
    return {
        "apiVersion": "epnas.io/v1alpha1",
        "kind": "ChildTask",
        "search": "s1",
        "child": child,
        "arch": ARCH,
        "dataset": {"kind": "synthetic", "inputShape": [1, 8, 8], "options": {"samples": 120}},
        "training": {"regime": "prediction", "epochs": 2, "batchSize": 64},
        "seed": 1,
        "weights": "weights/",
    }


def run_trainer(server: MinioServer, arch_uri: str, out_uri: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **s3_env(server), "EPNAS_TRAINER_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "child_trainer", "--arch", arch_uri, "--out", out_uri, "--device", "cpu"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_trainer_weights_and_results_round_trip_through_s3(s3_credentials, bucket):
    server = s3_credentials
    root = f"s3://{bucket}/runs/s1"
    store = open_store(root)
    store.put_json("children/e000-s00-c00/arch.json", task_doc("e000-s00-c00"))
    done = run_trainer(server, f"{root}/children/e000-s00-c00/arch.json", f"{root}/children/e000-s00-c00")
    assert done.returncode == 0, done.stderr
    first = load_result(store.get_bytes("children/e000-s00-c00/result.json"))
    assert first.inherited_fraction == 0.0 and first.weights_key == "children/e000-s00-c00/weights.safetensors"
    assert store.exists(first.weights_key)

    report = merge(store, "weights/", [(first.weights_key, first.val_accuracy, first.child)])
    assert report.written and store.exists("weights/index.json")
    index, warnings = read_index(store, "weights/")
    assert not warnings and {e.child for es in index.values() for e in es} == {"e000-s00-c00"}

    store.put_json("children/e000-s01-c00/arch.json", task_doc("e000-s01-c00"))
    done = run_trainer(server, f"{root}/children/e000-s01-c00/arch.json", f"{root}/children/e000-s01-c00")
    assert done.returncode == 0, done.stderr
    second = load_result(store.get_bytes("children/e000-s01-c00/result.json"))
    assert second.inherited_fraction == 1.0
    assert sorted(store.list("children/")) == sorted(
        f"children/{c}/{f}"
        for c in ("e000-s00-c00", "e000-s01-c00")
        for f in ("arch.json", "result.json", "weights.safetensors")
    )


def test_invalid_task_on_s3_exits_2_without_result(s3_credentials, bucket):
    root = f"s3://{bucket}/s1"
    store = open_store(root)
    doc = task_doc("e000-s00-c01")
    doc["arch"] = {"space": "image-layer", "layers": [{"op": "conv9", "src1": 0}]}
    store.put_json("children/e000-s00-c01/arch.json", doc)
    done = run_trainer(s3_credentials, f"{root}/children/e000-s00-c01/arch.json", f"{root}/children/e000-s00-c01")
    assert done.returncode == 2 and done.stderr.startswith("epnas-trainer: invalid input:")
    assert not store.exists("children/e000-s00-c01/result.json")


# ---------------------------------------------------------------- outage


@pytest.fixture()
def own_minio(tmp_path, monkeypatch):
    """A private MinIO that the test may stop and restart on the same port and data directory."""
    server = MinioServer(tmp_path / "minio")
    try:
        server.start()
    except binaries.MissingBinaryError as err:
        server.stop()
        pytest.fail(f"{err} (run `make testbin`)", pytrace=False)
    server.s3_client().create_bucket(Bucket="outage")
    for key, value in s3_env(server).items():
        monkeypatch.setenv(key, value)
    yield server
    server.stop()


def push_in_thread(store, key: str, data: bytes) -> tuple[threading.Thread, list]:
    outcome: list = []

    def push() -> None:
        try:
            store.put_bytes(key, data)
            outcome.append("ok")
        except Exception as err:  # reported by the assertion below
            outcome.append(err)

    thread = threading.Thread(target=push)
    thread.start()
    return thread, outcome


class Outage:
    """Stops the private MinIO from inside an upload, so the outage provably overlaps it.

    ``arm(store, operation, part)`` hooks botocore: just before the ``part``-th request of
    ``operation`` (``UploadPart`` or ``PutObject``) is built, the server stops (at once), and a
    thread starts it again ``down_s`` later on the same port and data.  ``sent[operation]``
    counts the requests of that operation actually sent, retries included.
    """

    def __init__(self, server: MinioServer, down_s: float = 3.0):
        self.server, self.down_s = server, down_s
        self.fired = threading.Event()
        self.sent: dict[str, int] = {}
        self.seen = 0

    def arm(self, store, operation: str, part: int = 1) -> None:
        def before_call(**kwargs) -> None:
            self.seen += 1
            if self.seen == part and not self.fired.is_set():
                self.fired.set()
                self.server.server.stop(grace_s=0)
                threading.Thread(target=self._restart, daemon=True).start()

        def before_send(**kwargs) -> None:
            self.sent[operation] = self.sent.get(operation, 0) + 1

        store.client.meta.events.register(f"before-call.s3.{operation}", before_call)
        store.client.meta.events.register(f"before-send.s3.{operation}", before_send)

    def _restart(self) -> None:
        time.sleep(self.down_s)
        self.server.server.start()
        self.server.server.wait_ready(lambda: _http_ok(f"{self.server.endpoint}/minio/health/ready"), timeout_s=60)


def test_push_started_during_a_3s_outage_is_retried_to_a_complete_object(own_minio):
    store = open_store("s3://outage/s1")
    data = secrets.token_bytes(3 * 1024 * 1024)
    outage = Outage(own_minio)
    outage.arm(store, "PutObject")
    thread, outcome = push_in_thread(store, "children/c/weights.safetensors", data)
    thread.join(timeout=120)
    assert outcome == ["ok"]
    assert outage.fired.is_set() and outage.sent["PutObject"] > 1  # the outage hit the upload, and it was retried
    assert store.get_bytes("children/c/weights.safetensors") == data


def test_multipart_push_interrupted_by_a_3s_outage_ends_complete(own_minio):
    store = open_store("s3://outage/s1")
    data = secrets.token_bytes(40 * 1024 * 1024)  # five 8 MiB parts: a multipart upload
    outage = Outage(own_minio)
    outage.arm(store, "UploadPart", part=3)  # the server dies as the third part goes out
    thread, outcome = push_in_thread(store, "weights/objects/big.safetensors", data)
    thread.join(timeout=180)
    assert outcome == ["ok"]
    assert outage.fired.is_set() and outage.sent["UploadPart"] > 5, outage.sent  # more sends than parts: retried
    assert store.get_bytes("weights/objects/big.safetensors") == data


def test_reader_never_sees_a_partial_object_during_an_outage(own_minio):
    store = open_store("s3://outage/s1")
    old, new = b"A" * (9 * 1024 * 1024), b"B" * (9 * 1024 * 1024)
    store.put_bytes("weights/index.json", old)
    reader = open_store("s3://outage/s1")  # a client of its own: the writer's hook must not stop it
    outage = Outage(own_minio)
    outage.arm(store, "UploadPart", part=2)  # 9 MiB: two parts; the server dies before the second
    thread, outcome = push_in_thread(store, "weights/index.json", new)
    reads = 0
    while thread.is_alive():
        try:
            assert reader.get_bytes("weights/index.json") in (old, new)
            reads += 1
        except StoreError:  # the server is down: a reader waits like everyone else
            pass
    thread.join()
    assert outcome == ["ok"] and outage.fired.is_set() and reads >= 1
    assert store.get_bytes("weights/index.json") == new
