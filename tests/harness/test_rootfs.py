"""harness/rootfs.py's path rule: a mount path resolves inside the image's root, as runc's does."""

from __future__ import annotations

import os

from harness.rootfs import ImageConfig, _inside


def test_mount_paths_resolve_symlinks_inside_the_root(tmp_path):
    root = tmp_path / "root"
    (root / "run").mkdir(parents=True)
    (root / "var").mkdir()
    os.symlink("/run", root / "var" / "run")  # Debian's /var/run
    os.symlink("../../..", root / "run" / "up")
    os.symlink("/etc/passwd", root / "run" / "host-file")

    assert _inside(root, "/var/run/secrets/sa") == root / "run" / "secrets" / "sa"
    assert _inside(root, "/run/up/etc") == root / "etc"
    assert _inside(root, "/../../etc/shadow") == root / "etc" / "shadow"
    assert _inside(root, "/run/host-file") == root / "etc" / "passwd"


def test_command_and_args_replace_entrypoint_and_cmd_as_kubernetes_says():
    config = ImageConfig(entrypoint=("python", "-m", "x"), cmd=("--help",), env={}, workdir="/", user="65532:65532")

    assert config.argv(None, None) == ["python", "-m", "x", "--help"]
    assert config.argv(None, ["--run"]) == ["python", "-m", "x", "--run"]
    assert config.argv(["sh"], None) == ["sh"]
    assert config.argv(["sh"], ["-c", "true"]) == ["sh", "-c", "true"]
    assert config.uid_gid() == (65532, 65532)
