"""A trainer that trains nothing, for the controller scale benchmark (bench/bench_scale.py).

Takes the real trainer's flags (``--arch URI --out URI [--endpoint URL] ...``; the rest are
ignored), reads the child task (``arch.json``) from the store, and writes a valid
``result.json`` for it at once: the task's child and architecture hash (``epnas.arch``, so
the loop's hash check passes), the analytic metrics (``epnas.metrics``), and accuracies
derived from the hash (plausible, deterministic).  Exit 0.

It stays cheap (a few hundred of these start at once on the test node): no torch and no
boto3; the two S3 requests are signed here (SigV4, path-style) with the standard library,
credentials from ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, region ``AWS_REGION``
(default us-east-1), endpoint from ``--endpoint`` or ``EPNAS_S3_ENDPOINT``.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import os
import sys
import time
import urllib.parse
import urllib.request


def _sign(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def s3_request(method: str, endpoint: str, uri: str, body: bytes = b"", *, attempts: int = 5) -> bytes:
    """One path-style S3 request for ``s3://bucket/key`` signed with SigV4; retried on errors."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme != "s3":
        raise ValueError(f"not an s3:// URI: {uri}")
    base = urllib.parse.urlparse(endpoint)
    path = urllib.parse.quote(f"/{parsed.netloc}/{parsed.path.lstrip('/')}", safe="/~")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    access, secret = os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]
    for attempt in range(attempts):
        now = datetime.datetime.now(datetime.UTC)
        amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        payload = hashlib.sha256(body).hexdigest()
        headers = {"host": base.netloc, "x-amz-content-sha256": payload, "x-amz-date": amz_date}
        signed = ";".join(sorted(headers))
        canonical = "\n".join([method, path, "", *(f"{k}:{headers[k]}" for k in sorted(headers)), "", signed, payload])
        scope = f"{day}/{region}/s3/aws4_request"
        to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
        key = _sign(_sign(_sign(_sign(f"AWS4{secret}".encode(), day), region), "s3"), "aws4_request")
        signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        headers["authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={access}/{scope}, SignedHeaders={signed}, Signature={signature}"
        )
        request = urllib.request.Request(
            f"{base.scheme}://{base.netloc}{path}",
            data=body if method == "PUT" else None,
            method=method,
            headers=headers,
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return answer.read()
        except OSError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * 2**attempt)
    raise AssertionError("unreachable")


def flag(args: list[str], name: str, default: str | None = None) -> str | None:
    return args[args.index(name) + 1] if name in args else default


def main(argv: list[str]) -> int:
    arch_uri, out_uri = flag(argv, "--arch"), flag(argv, "--out")
    endpoint = flag(argv, "--endpoint") or os.environ.get("EPNAS_S3_ENDPOINT")
    if not arch_uri or not out_uri or not endpoint:
        print(
            "instant_trainer: --arch, --out and an endpoint (--endpoint or EPNAS_S3_ENDPOINT) are required",
            file=sys.stderr,
        )
        return 2
    started = time.monotonic()
    from epnas.metrics import compute_metrics
    from epnas.spec import geometry_of
    from epnas.task import ChildResult, load_task

    task = load_task(s3_request("GET", endpoint, arch_uri))
    shape, classes = geometry_of(task.dataset, task.arch.space, task.training.resolution)
    metrics = compute_metrics(task.arch, shape, classes).as_dict()
    digest = int(task.arch.hash, 16)
    val = 0.5 + (digest % 4000) / 10000  # 0.5 … 0.9, fixed by the architecture
    result = ChildResult(
        child=task.child,
        arch_hash=task.arch.hash,
        val_accuracy=val,
        test_accuracy=max(0.0, val - 0.01),
        history={"val_acc": [val]},
        metrics=metrics,
        train_seconds=time.monotonic() - started,
        epochs_run=1,
        device="cpu",
        warnings=["instant_trainer: not trained (scale benchmark)"],
    )
    s3_request("PUT", endpoint, f"{out_uri.rstrip('/')}/result.json", result.to_json().encode())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
