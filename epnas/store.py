"""Object store: one small interface, two backends chosen by URI.

* ``file:///abs/dir`` (or a plain path): every write goes to a temp file in the
  target directory and is renamed over the key with ``os.replace``, so a reader
  sees the old object or the new one, never half a file.
* ``s3://bucket/prefix``: boto3 with a configurable endpoint (MinIO), credentials
  from the environment (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``), the
  endpoint from the argument or ``EPNAS_S3_ENDPOINT``.  botocore retries with
  backoff, plus a bounded retry loop of our own around every call for connection
  errors and 5xx answers, so a short server outage is ridden out.  Large objects
  go up as multipart uploads; S3 shows an object only once its upload completed,
  so a reader never sees a partial one either.

Keys are ``/``-separated and relative to the store root.  Every failure raises
``StoreError`` (``StoreNotFound`` for a missing key, ``StoreDecodeError`` for ``get_json`` on
content that is not JSON, ``StoreURIError`` for a URI that names no store: invalid input,
exit 2); messages name the store and key, never credentials.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pathlib
import random
import re
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from typing import Any, TypeVar

from epnas.errors import INVALID_INPUT, EpnasError, InvalidInput

T = TypeVar("T")

RETRY_DEADLINE_S = 60.0
MULTIPART_THRESHOLD = 8 * 1024 * 1024
TEMP_PREFIX = ".tmp-"
PERMANENT_CODES = ("AccessDenied", "NoSuchBucket", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidBucketName")


class StoreError(EpnasError, RuntimeError):
    """A store operation failed (message without credentials): a fault, exit 1.

    ``transient``: the store did not answer or answered 5xx until the retry deadline passed:
    waiting may fix it (a controller resumes the search later instead of failing it).
    """

    reason = "StoreError"

    def __init__(self, message: str, *, transient: bool = False):
        super().__init__(message)
        self.transient = transient


class StoreNotFound(StoreError):
    """The key does not exist."""


class StoreDecodeError(StoreError):
    """``get_json``: the object exists but is not valid JSON (UTF-8): damaged content, not an
    unreachable store.  ``detail`` is what is wrong, without the store and key."""

    def __init__(self, message: str, *, detail: str | None = None):
        super().__init__(message)
        self.detail = message if detail is None else detail


class StoreURIError(StoreError, InvalidInput):
    """A URI that names no store or object (empty, a foreign scheme, no bucket, no absolute
    path, no key): invalid input, exit 2."""

    exit_code = INVALID_INPUT
    reason = "InvalidInput"


def split_uri(uri: str) -> tuple[str, str]:
    """A full object URI → ``(store root URI, key)``: the key is the last path component.

    ``s3://b/p/children/c/arch.json`` → ``("s3://b/p/children/c", "arch.json")``;
    ``file:///d/arch.json`` → ``("file:///d", "arch.json")``.
    """
    scheme, sep, rest = uri.partition("://")
    if not sep:
        path = pathlib.PurePosixPath(uri)
        return str(path.parent), path.name
    head, _, key = rest.rstrip("/").rpartition("/")
    if not key or (scheme == "s3" and not head):
        raise StoreURIError(f"{_redact(uri)}: no object key in the URI")
    return f"{scheme}://{head}", key


def join_uri(root: str, key: str) -> str:
    """``root`` + ``/`` + ``key`` (no doubled slashes)."""
    return f"{root.rstrip('/')}/{key.lstrip('/')}" if key else root


S3_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def check_root(uri: str) -> str:
    """``uri`` if it names a store root plainly, else ``StoreURIError`` saying what is wrong.

    Accepted: ``file:///absolute/dir`` (or ``file://localhost/…``), ``s3://bucket[/prefix]``
    with an S3 bucket name (3–63 of ``a-z 0-9 . -``), or a non-empty plain path.  Refused:
    the empty string, ``file://`` without an absolute path, ``s3://`` without a bucket, any
    other scheme.
    """
    if not uri or not uri.strip():
        raise StoreURIError("the store URI is empty; use file:///abs/dir, s3://bucket/prefix or a directory")
    scheme, sep, rest = uri.partition("://")
    if not sep:
        if ":" in uri.split("/", 1)[0]:
            raise StoreURIError(
                f"{_redact(uri)}: not a store URI; use file:///abs/dir, s3://bucket/prefix or a directory"
            )
        return uri
    if scheme == "file":
        parsed = urllib.parse.urlparse(uri)
        if parsed.netloc not in ("", "localhost") or not parsed.path.startswith("/") or parsed.path.strip("/") == "":
            raise StoreURIError(f"{_redact(uri)}: file URIs must be file:///absolute/dir (not the root directory)")
        return uri
    if scheme == "s3":
        bucket = rest.partition("/")[0]
        if not bucket:
            raise StoreURIError(f"{_redact(uri)}: no bucket in the URI; use s3://bucket/prefix")
        if not S3_BUCKET.match(bucket):
            raise StoreURIError(
                f"{_redact(uri)}: {bucket!r} is not an S3 bucket name (3-63 characters of a-z, 0-9, '.', '-')"
            )
        return uri
    raise StoreURIError(f"{_redact(uri)}: unsupported store scheme {scheme!r}; use file:// or s3://")


def open_store(uri: str, *, endpoint: str | None = None, region: str | None = None) -> Store:
    """The store rooted at ``uri`` (``file:///abs/dir``, a plain path, or ``s3://bucket/prefix``)."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return FileStore(pathlib.Path(uri).resolve())
    if scheme == "file":
        parsed = urllib.parse.urlparse(uri)
        if parsed.netloc not in ("", "localhost"):
            raise StoreURIError(f"{_redact(uri)}: file URIs must be file:///absolute/path")
        return FileStore(pathlib.Path(urllib.parse.unquote(parsed.path)))
    if scheme == "s3":
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise StoreURIError(f"{_redact(uri)}: no bucket in the URI")
        return S3Store(
            bucket, prefix.strip("/"), endpoint=endpoint or os.environ.get("EPNAS_S3_ENDPOINT") or None, region=region
        )
    raise StoreURIError(f"{_redact(uri)}: unsupported store scheme {scheme!r}; use file:// or s3://")


class Store:
    """get/put bytes, JSON and files, exists, list, delete; keys relative to ``uri``."""

    uri: str

    def get_bytes(self, key: str) -> bytes:
        raise NotImplementedError

    def put_bytes(self, key: str, data: bytes) -> None:
        raise NotImplementedError

    def exists(self, key: str) -> bool:
        raise NotImplementedError

    def list(self, prefix: str = "") -> list[str]:
        """Every key starting with ``prefix``, sorted, relative to the store root."""
        raise NotImplementedError

    def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is not an error."""
        raise NotImplementedError

    def get_file(self, key: str, path: str | os.PathLike) -> None:
        _atomic_write(pathlib.Path(path), self.get_bytes(key))

    def put_file(self, key: str, path: str | os.PathLike) -> None:
        self.put_bytes(key, pathlib.Path(path).read_bytes())

    def get_json(self, key: str) -> Any:
        """The decoded JSON at ``key``; undecodable content raises ``StoreDecodeError``."""
        data = self.get_bytes(key)
        try:
            return json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            detail = f"not valid JSON: {err}"
            raise StoreDecodeError(f"{self.uri}/{key}: {detail}", detail=detail) from None

    def put_json(self, key: str, obj: Any) -> None:
        self.put_bytes(key, (json.dumps(obj, sort_keys=True, indent=2) + "\n").encode())


def _check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise StoreError(f"invalid store key {key!r}")
    return key


def _atomic_write(path: pathlib.Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class FileStore(Store):
    """A directory; writes are temp file + ``os.replace``."""

    def __init__(self, root: pathlib.Path):
        self.root = root
        self.uri = root.as_uri()

    def _path(self, key: str) -> pathlib.Path:
        return self.root / _check_key(key)

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise StoreNotFound(f"{self.uri}/{key}: not found") from None
        except OSError as err:
            raise StoreError(f"{self.uri}/{key}: {err.strerror or err}") from None

    def put_bytes(self, key: str, data: bytes) -> None:
        try:
            _atomic_write(self._path(key), bytes(data))
        except OSError as err:
            raise StoreError(f"{self.uri}/{key}: {err.strerror or err}") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        base = self.root / prefix.rpartition("/")[0] if "/" in prefix else self.root
        if not base.is_dir():
            return []
        keys = []
        for path in base.rglob("*"):
            if path.is_file() and not path.name.startswith(TEMP_PREFIX):
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            pass
        except OSError as err:
            raise StoreError(f"{self.uri}/{key}: {err.strerror or err}") from None


class S3Store(Store):
    """``s3://bucket/prefix`` through boto3 (path-style addressing when an endpoint is given)."""

    def __init__(self, bucket: str, prefix: str, *, endpoint: str | None, region: str | None):
        import boto3
        import botocore.config
        from boto3.s3.transfer import TransferConfig

        self.bucket, self.prefix = bucket, prefix
        self.uri = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        config = botocore.config.Config(
            retries={"max_attempts": 10, "mode": "standard"},
            connect_timeout=5,
            read_timeout=60,
            s3={"addressing_style": "path"} if endpoint else None,
            # S3-compatible servers (MinIO) mis-verify botocore's default streamed CRC trailers on re-sent parts
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        try:
            # a fresh session reads the environment's credentials now (the default session caches them)
            self.client = boto3.session.Session().client("s3", endpoint_url=endpoint, region_name=region, config=config)
        except Exception as err:  # bad endpoint URL and the like; never echo the endpoint's userinfo
            raise StoreError(f"{self.uri}: cannot create an S3 client: {type(err).__name__}") from None
        self.transfer = TransferConfig(multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_THRESHOLD)

    def _key(self, key: str) -> str:
        _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, what: str, key: str, fn: Callable[[], T]) -> T:
        return with_retries(fn, describe=f"{self.uri}/{key}: {what}")

    def get_bytes(self, key: str) -> bytes:
        """One GET, its body read whole: one version of the object, never parts of two (a broken
        stream is read again from the start by ``with_retries``). On loopback MinIO this is 1.7–3.5×
        faster than s3transfer's ranged, threaded download for 4–64 MiB (bench/bench_store_throughput.py)."""

        def fetch() -> bytes:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
            try:
                return body.read()
            finally:
                body.close()

        return self._call("get", key, fetch)

    def put_bytes(self, key: str, data: bytes) -> None:
        payload = bytes(data)
        if len(payload) < MULTIPART_THRESHOLD:  # a bytes body re-sends cleanly on botocore's retries
            self._call("put", key, lambda: self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=payload))
        else:
            self._call(
                "put",
                key,
                lambda: self.client.upload_fileobj(
                    io.BytesIO(payload), self.bucket, self._key(key), Config=self.transfer
                ),
            )

    def put_file(self, key: str, path: str | os.PathLike) -> None:
        self._call(
            "put", key, lambda: self.client.upload_file(str(path), self.bucket, self._key(key), Config=self.transfer)
        )

    def exists(self, key: str) -> bool:
        try:
            self._call("head", key, lambda: self.client.head_object(Bucket=self.bucket, Key=self._key(key)))
        except StoreNotFound:
            return False
        return True

    def list(self, prefix: str = "") -> list[str]:
        if any(part in (".", "..") for part in prefix.split("/")):
            raise StoreError(f"invalid store prefix {prefix!r}")
        full = f"{self.prefix}/{prefix}" if self.prefix else prefix
        strip = len(self.prefix) + 1 if self.prefix else 0

        def collect() -> list[str]:
            keys = []
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
                keys += [item["Key"][strip:] for item in page.get("Contents", [])]
            return sorted(keys)

        return self._call("list", prefix, collect)

    def delete(self, key: str) -> None:
        self._call("delete", key, lambda: self.client.delete_object(Bucket=self.bucket, Key=self._key(key)))


def with_retries(fn: Callable[[], T], *, describe: str, deadline_s: float = RETRY_DEADLINE_S) -> T:
    """Call ``fn`` until it succeeds, retrying connection errors and 5xx answers for ``deadline_s``.

    A missing key raises ``StoreNotFound``; any other failure ``StoreError`` with
    the error's code or class name (botocore messages never carry the secret, but we
    keep to the code to be sure nothing else leaks).
    """
    import botocore.exceptions as bx
    from boto3.exceptions import S3UploadFailedError

    give_up = time.monotonic() + deadline_s
    delay = 0.2
    resends = 3  # botocore may re-send a half-read stream after a dropped connection: it fails its signature
    while True:
        try:
            return fn()
        except bx.ClientError as err:
            code = str(err.response.get("Error", {}).get("Code", "?"))
            status = int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            if code in ("404", "NoSuchKey", "NotFound"):
                raise StoreNotFound(f"{describe}: not found") from None
            resent = code == "SignatureDoesNotMatch" and resends > 0
            resends -= resent
            if (status < 500 and not resent) or time.monotonic() > give_up:
                raise StoreError(f"{describe}: {code} (HTTP {status})", transient=status >= 500) from None
        except bx.NoCredentialsError:
            raise StoreError(f"{describe}: no S3 credentials (set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)") from None
        except S3UploadFailedError as err:
            permanent = next((c for c in PERMANENT_CODES if c in str(err)), None)
            if permanent == "SignatureDoesNotMatch" and resends > 0:
                permanent, resends = None, resends - 1
            if permanent or time.monotonic() > give_up:
                raise StoreError(
                    f"{describe}: upload failed ({permanent or 'gave up after retries'})", transient=not permanent
                ) from None
        except (bx.ConnectionError, bx.HTTPClientError, bx.IncompleteReadError) as err:  # incl. a body cut mid-stream
            if time.monotonic() > give_up:
                raise StoreError(
                    f"{describe}: {type(err).__name__} (gave up after {deadline_s:.0f} s)", transient=True
                ) from None
        except bx.BotoCoreError as err:
            raise StoreError(f"{describe}: {type(err).__name__}") from None
        time.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, 2.0)


def _redact(uri: str) -> str:
    """``uri`` without any ``user:password@`` part."""
    parsed = urllib.parse.urlsplit(uri)
    if parsed.username or parsed.password:
        netloc = parsed.hostname or ""
        if parsed.port:
            netloc += f":{parsed.port}"
        return urllib.parse.urlunsplit(parsed._replace(netloc=netloc))
    return uri
