"""Weight dictionary push and pull through MinIO against raw boto3 on the same bytes (issue 13).

One MinIO on loopback (the test harness's, built by ``scripts/testbin``), one model of
``--mib`` MiB of float32 parameters in ``--layers`` Linear layers.  Each repeat times, side by
side and alternating:

* **push**: ``epnas.weights.push_child`` (shareable tensors → safetensors → ``S3Store.put_bytes``)
  against raw boto3 sending the same serialized bytes (the faster of ``put_object`` and
  ``upload_fileobj`` with boto3's default transfer manager);
* **pull**: ``epnas.weights.pull`` into a fresh model from the merged dictionary (index, object,
  decode, copy into the model) against raw boto3 fetching the same object (the faster of
  ``get_object().read()`` and ``download_fileobj``).

Throughput is MiB of tensor data per second; the ratio is product / raw (target ≥ 0.5).
Medians of ``--repeats``.

    python bench/bench_store_throughput.py [--mib 64] [--layers 8] [--repeats 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the harness's MinIO


def _model(mib: float, layers: int):
    from torch import nn

    side = max(8, int((mib * 2**20 / 4 / layers) ** 0.5))
    return nn.Sequential(*[nn.Linear(side, side, bias=False) for _ in range(layers)])


def _timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def measure(endpoint: str, user: str, password: str, region: str, *, mib: float, layers: int, repeats: int) -> dict:
    """Median seconds and MiB/s of the product's push and pull and of raw boto3 on the same bytes."""
    import boto3
    import botocore.config
    import safetensors.torch
    import torch

    from epnas.store import open_store
    from epnas.weights import merge, pull, push_child, shareable_state

    os.environ.update(AWS_ACCESS_KEY_ID=user, AWS_SECRET_ACCESS_KEY=password, AWS_REGION=region)
    client = boto3.client(
        "s3", endpoint_url=endpoint, region_name=region, config=botocore.config.Config(s3={"addressing_style": "path"})
    )
    client.create_bucket(Bucket="bench")
    store = open_store("s3://bench/search", endpoint=endpoint, region=region)
    torch.manual_seed(0)
    model = _model(mib, layers)
    data = safetensors.torch.save({n: t.detach().contiguous() for n, t in shareable_state(model).items()})
    size_mib = sum(p.numel() * 4 for p in model.parameters()) / 2**20

    push_child(store, "children/c0000", model)  # warm connections and the bucket
    merge(store, "weights", [("children/c0000/weights.safetensors", 0.9, "c0000")])
    (obj,) = [k for k in store.list("weights/objects/")]
    raw_key = f"search/{obj}"  # list() keys are relative to the store root

    def raw_put() -> float:
        return min(
            _timed(lambda: client.put_object(Bucket="bench", Key="raw/put", Body=data)),
            _timed(lambda: client.upload_fileobj(io.BytesIO(data), "bench", "raw/upload")),
        )

    def raw_get() -> float:
        def download() -> None:
            client.download_fileobj("bench", raw_key, io.BytesIO())

        return min(_timed(lambda: client.get_object(Bucket="bench", Key=raw_key)["Body"].read()), _timed(download))

    times: dict[str, list[float]] = {"push": [], "raw_push": [], "pull": [], "raw_pull": []}
    for i in range(repeats):
        times["push"].append(_timed(functools.partial(push_child, store, f"children/c{i + 1:04d}", model)))
        times["raw_push"].append(raw_put())
        fresh = _model(mib, layers)
        times["pull"].append(_timed(functools.partial(pull, store, "weights", fresh)))
        times["raw_pull"].append(raw_get())
        assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))
    medians = {k: statistics.median(v) for k, v in times.items()}
    rates = {k: size_mib / s for k, s in medians.items()}
    return {
        "mib": round(size_mib, 2),
        "repeats": repeats,
        "seconds": {k: round(v, 4) for k, v in medians.items()},
        "mib_per_s": {k: round(v, 1) for k, v in rates.items()},
        "ratio": {
            "push": round(rates["push"] / rates["raw_push"], 3),
            "pull": round(rates["pull"] / rates["raw_pull"], 3),
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=float, default=64.0)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=pathlib.Path)
    args = parser.parse_args()
    from harness.minio import MinioServer

    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        server = MinioServer(pathlib.Path(tmp))
        server.start()
        try:
            out = measure(
                server.endpoint,
                server.root_user,
                server.root_password,
                server.region,
                mib=args.mib,
                layers=args.layers,
                repeats=args.repeats,
            )
        finally:
            server.stop()
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
