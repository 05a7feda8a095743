"""A MinIO server on loopback with a root user, for tests."""

from __future__ import annotations

import os
import pathlib
import secrets
import time

import boto3
import botocore.config

from harness import binaries, procs
from harness.controlplane import _http_ok


class MinioServer:
    """A running `minio server`.

    Attributes: `endpoint` (http URL of the S3 API), `root_user`, `root_password`,
    `region`, `workdir`, `log_path`, `startup_s`.
    """

    region = "us-east-1"

    def __init__(self, workdir: pathlib.Path) -> None:
        self.workdir = workdir
        self.root_user = "epnas-test"
        self.root_password = secrets.token_hex(16)
        self.endpoint = ""
        self.log_path = workdir / "minio.log"
        self.server: procs.ServerProcess | None = None
        self.startup_s = 0.0

    def s3_client(self):
        """Return a boto3 S3 client for this server (path-style addressing, root credentials)."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.root_user,
            aws_secret_access_key=self.root_password,
            region_name=self.region,
            config=botocore.config.Config(
                s3={"addressing_style": "path"}, retries={"max_attempts": 3, "mode": "standard"}
            ),
        )

    def start(self) -> None:
        started = time.monotonic()
        minio_bin = binaries.require("minio")
        self.workdir.mkdir(parents=True, exist_ok=True)
        data = self.workdir / "data"
        data.mkdir(exist_ok=True)
        port, console_port = procs.free_port(), procs.free_port()
        self.endpoint = f"http://127.0.0.1:{port}"
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.workdir),
            "MINIO_ROOT_USER": self.root_user,
            "MINIO_ROOT_PASSWORD": self.root_password,
            "MINIO_BROWSER": "off",
            "MINIO_UPDATE": "off",
            **procs.run_marker_env(),
        }
        self.server = procs.ServerProcess(
            "minio",
            [
                str(minio_bin),
                "server",
                str(data),
                "--address",
                f"127.0.0.1:{port}",
                "--console-address",
                f"127.0.0.1:{console_port}",
                "--quiet",
            ],
            log_path=self.log_path,
            env=env,
            cwd=self.workdir,
        )
        self.server.start()
        self.server.wait_ready(lambda: _http_ok(f"{self.endpoint}/minio/health/ready"), timeout_s=60)
        self.startup_s = time.monotonic() - started

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
