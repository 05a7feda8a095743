"""Both images, built from the repository's Dockerfiles and run in their own root filesystems.

The `images` fixture builds Dockerfile.controller and Dockerfile.trainer with buildah (a
debootstrap Debian base and PyPI's torch here; the same Dockerfiles take the published Python
base and the CPU wheel index elsewhere). harness/rootfs.py runs a command in an image the way
a runtime does: the image's rootfs under an overlay, the image's USER, Entrypoint and Env,
volumes at their mount paths, and, as the chart's pods ask, a read-only root with only /tmp
writable. What a user would otherwise find first is checked here: a missing module or file in
an image, a wrong entrypoint, a trainer that needs to write outside /tmp.
"""

from __future__ import annotations

import json
import pathlib
import subprocess

import pytest
from harness import rootfs
from harness.minio import MinioServer

from epnas.store import open_store
from epnas.task import load_result

ARCH = {
    "space": "image-layer",
    "layers": [
        {"op": "conv2d", "src1": 0, "channels": 8, "width": 3, "activation": "relu"},
        {"op": "maxpool", "src1": 1, "width": 2},
    ],
}
TERMINATION_LOG = "/dev/termination-log"


def run_in_image(
    ref: str,
    args: list[str] | None,
    tmp_path: pathlib.Path,
    *,
    env: dict[str, str] | None = None,
    command: list[str] | None = None,
    mounts: tuple[rootfs.Mount, ...] = (),
    timeout_s: float = 300,
) -> tuple[int, str, str]:
    """Run the image as a restricted pod would: its USER, read-only root, an emptyDir at /tmp,
    a termination-message file; → (exit code, output, termination message)."""
    config = rootfs.image_config(ref)
    empty_dir = tmp_path / "tmp"
    empty_dir.mkdir(exist_ok=True)
    empty_dir.chmod(0o777)
    message = tmp_path / "termination-log"
    message.write_bytes(b"")
    message.chmod(0o666)
    uid, gid = config.uid_gid()
    log = tmp_path / "output.log"
    with open(log, "wb") as out:
        process = rootfs.launch(
            rootfs.image_rootfs(ref),
            config.argv(command, args),
            env={**config.env, **(env or {})},
            state_dir=tmp_path / "state",
            mounts=(rootfs.Mount("/tmp", empty_dir), *mounts),
            workdir=config.workdir,
            uid=uid,
            gid=gid,
            read_only_root=True,
            termination_log=(TERMINATION_LOG, message),
            stdout=out,
        )
        try:
            code = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
    return code, log.read_text(errors="replace"), message.read_text()


@pytest.mark.parametrize("name", ["controller", "trainer"])
def test_image_runs_as_numeric_non_root_and_needs_no_writable_root(images, name, tmp_path):
    probe = (
        "import json, os, pathlib, errno\n"
        "out = {'uid': os.getuid(), 'gid': os.getgid()}\n"
        "try:\n"
        "    pathlib.Path('/opt/epnas/probe').write_text('x')\n"
        "    out['root_write'] = 'allowed'\n"
        "except OSError as e:\n"
        "    out['root_write'] = errno.errorcode[e.errno]\n"
        "pathlib.Path('/tmp/probe').write_text('x')\n"
        "import epnas, torch\n"
        f"import {'child_trainer' if name == 'trainer' else 'controller'}\n"
        "out['torch'] = torch.__version__.split('+')[0]\n"
        "out['home'] = os.environ['HOME']\n"
        "print(json.dumps(out))\n"
    )
    code, output, _ = run_in_image(images[name], ["-c", probe], tmp_path, command=["python"])

    assert code == 0, output
    seen = json.loads(output.strip().splitlines()[-1])
    assert (seen["uid"], seen["gid"]) == (65532, 65532)
    assert seen["root_write"] == "EROFS"  # the read-only root holds; /tmp (the emptyDir) took the write
    assert (tmp_path / "tmp" / "probe").read_text() == "x"
    assert seen["torch"] == "2.15.0" and seen["home"] == "/tmp"


def s3_env(server: MinioServer) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": server.root_user,
        "AWS_SECRET_ACCESS_KEY": server.root_password,
        "AWS_REGION": server.region,
        "EPNAS_S3_ENDPOINT": server.endpoint,
    }


def test_trainer_image_trains_a_child_against_minio(images, minio, bucket, tmp_path, monkeypatch):
    for key, value in s3_env(minio).items():
        monkeypatch.setenv(key, value)
    root = f"s3://{bucket}/runs/s1"
    store = open_store(root)
    store.put_json(
        "children/e000-s00-c00/arch.json",
        {
            "apiVersion": "epnas.io/v1alpha1",
            "kind": "ChildTask",
            "search": "s1",
            "child": "e000-s00-c00",
            "arch": ARCH,
            "dataset": {"kind": "synthetic", "inputShape": [1, 8, 8], "options": {"samples": 120}},
            "training": {"regime": "prediction", "epochs": 1, "batchSize": 64},
            "seed": 1,
            "weights": "weights/",
        },
    )

    code, output, message = run_in_image(
        images["trainer"],
        [
            "--arch",
            f"{root}/children/e000-s00-c00/arch.json",
            "--out",
            f"{root}/children/e000-s00-c00",
            "--device",
            "cpu",
            "--termination-log",
            TERMINATION_LOG,
        ],
        tmp_path,
        env={**s3_env(minio), "EPNAS_TRAINER_THREADS": "1"},
    )

    assert code == 0, output
    result = load_result(store.get_bytes("children/e000-s00-c00/result.json"))
    assert result.child == "e000-s00-c00" and 0.0 <= result.val_accuracy <= 1.0
    assert store.get_bytes(result.weights_key)[:8]  # the safetensors header's length prefix
    assert json.loads(message)["child"] == "e000-s00-c00"  # written where the kubelet reads it


def test_trainer_image_refuses_a_bad_endpoint_with_exit_2(images, tmp_path):
    code, output, message = run_in_image(
        images["trainer"],
        ["--arch", "s3://b/a.json", "--out", "s3://b/out", "--endpoint", "not a url"],
        tmp_path,
        env={"EPNAS_TERMINATION_LOG": TERMINATION_LOG},
    )  # as the child Job sets it

    assert code == 2, output
    summary = json.loads(message)
    assert summary["reason"] == "InvalidInput" and "endpoint" in summary["message"]
