"""Run a command inside a locally built image, the way a container runtime would, with no runtime.

The machines here have buildah but no Docker daemon or CRI runtime. This module gives the test
cluster's node agent (and the image tests) what a kubelet + runc would: for an image built by
scripts/images, a process whose root is the image's filesystem and whose volumes sit at their
mount paths. It is test infrastructure, never shipped.

How one container starts (`launch`), all as root on the host:

1. `image_rootfs(ref)` gives the image's root filesystem: a buildah working container of the
   image, mounted once per image ID (`buildah from` + `buildah mount`); `image_config(ref)` its
   OCI config (Entrypoint, Cmd, Env, WorkingDir, User).
2. `unshare --mount --propagation private` starts this file's `__main__` in a new mount
   namespace, so nothing it mounts is seen by the host, and every mount goes with the process.
3. There it mounts an overlay with the image's rootfs as the lower layer and a per-container
   upper dir (the container's writable layer), then, under it: `/proc`, a read-only `/sys`, a
   tmpfs `/dev` with the null, zero, full, random, urandom and tty nodes and a tmpfs `/dev/shm`,
   the host's `/etc/hosts` and `/etc/resolv.conf`, the termination-message file at its path
   (default `/dev/termination-log`), and each volume bind-mounted at its mountPath (read-only
   when asked). With `read_only_root` the overlay is then remounted read-only, as
   `readOnlyRootFilesystem: true` does; the volumes keep their own flags.
4. It chroots into the overlay, changes to the working dir, drops to the uid/gid (and no
   supplementary groups), and execs the argv with exactly the container's environment. The
   network namespace is the host's (pods here all have IP 127.0.0.1), so loopback servers
   such as the test apiserver and MinIO are reachable.

The pid that `launch` returns is the container's main process (unshare and the helper exec into
it), so signals and exit codes behave as in a pod. Only root can do this; `require_root`
says what is missing otherwise.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import shutil
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

SPEC_ENV = "EPNAS_ROOTFS_SPEC"
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
HOST_FILES = ("/etc/hosts", "/etc/resolv.conf")


@dataclasses.dataclass(frozen=True)
class Mount:
    """One bind mount: the host `source` (dir or file) at `target` inside the container."""

    target: str
    source: pathlib.Path
    read_only: bool = False


@dataclasses.dataclass(frozen=True)
class ImageConfig:
    """The parts of an OCI image config a runtime uses to start a container."""

    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    env: Mapping[str, str]
    workdir: str
    user: str

    def argv(self, command: Sequence[str] | None, args: Sequence[str] | None) -> list[str]:
        """Kubernetes' rule: `command` replaces the Entrypoint, `args` the Cmd; a `command`
        without `args` drops the Cmd."""
        if command:
            return [*command, *(args or [])]
        return [*self.entrypoint, *(args if args else self.cmd)]

    def uid_gid(self) -> tuple[int, int]:
        """The numeric `USER uid[:gid]` (our images use numbers; 0:0 when unset)."""
        uid, _, gid = (self.user or "0").partition(":")
        return int(uid), int(gid or uid)


def require_root() -> None:
    """Fail, saying why, where the mount namespace cannot be made."""
    if os.geteuid() != 0:
        raise RuntimeError("running containers in their images needs root (mount namespaces, chroot)")
    for tool in ("unshare", "mount", "buildah"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is missing: apt-get install util-linux mount buildah (make test-deps)")


def _buildah(*args: str) -> str:
    result = subprocess.run(["buildah", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"buildah {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout.strip()


def image_id(ref: str) -> str:
    """The image's ID, or a RuntimeError naming the image when buildah does not have it."""
    return _buildah("inspect", "--type", "image", "--format", "{{.FromImageID}}", ref)


@functools.cache
def image_config(ref: str) -> ImageConfig:
    """The image's OCI config (Entrypoint, Cmd, Env, WorkingDir, User)."""
    config = json.loads(_buildah("inspect", "--type", "image", ref))["OCIv1"].get("config") or {}
    env = dict(item.partition("=")[::2] for item in config.get("Env") or [])
    return ImageConfig(
        entrypoint=tuple(config.get("Entrypoint") or ()),
        cmd=tuple(config.get("Cmd") or ()),
        env=env,
        workdir=config.get("WorkingDir") or "/",
        user=config.get("User") or "0",
    )


_rootfs_lock = threading.Lock()


def image_rootfs(ref: str) -> pathlib.Path:
    """The image's root filesystem, mounted once per image ID and reused (read it, never write:
    each container gets its own overlay on top)."""
    with _rootfs_lock:
        name = f"epnas-rootfs-{image_id(ref)[:12]}"
        containers = _buildah("containers", "--format", "{{.ContainerName}}").split()
        if name not in containers:
            _buildah("from", "--name", name, "--pull-never", ref)
        return pathlib.Path(_buildah("mount", name))


def launch(
    rootfs: pathlib.Path,
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    state_dir: pathlib.Path,
    mounts: Sequence[Mount] = (),
    workdir: str = "/",
    uid: int = 0,
    gid: int = 0,
    read_only_root: bool = False,
    termination_log: tuple[str, pathlib.Path] | None = None,
    stdout: TextIO | int | None = None,
) -> subprocess.Popen[bytes]:
    """Start `argv` in `rootfs` (see the module docstring); `state_dir` holds the container's
    writable layer; `termination_log` is (path in the container, host file)."""
    require_root()
    for sub in ("upper", "work", "merged"):
        (state_dir / sub).mkdir(parents=True, exist_ok=True)
    spec = {
        "rootfs": str(rootfs),
        "state": str(state_dir),
        "argv": list(argv),
        "workdir": workdir,
        "uid": uid,
        "gid": gid,
        "read_only_root": read_only_root,
        "mounts": [{"target": m.target, "source": str(m.source), "read_only": m.read_only} for m in mounts],
        "termination_log": [termination_log[0], str(termination_log[1])] if termination_log else None,
        "mount_bin": shutil.which("mount"),
    }
    return subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "--", sys.executable, "-I", __file__],
        env={**env, SPEC_ENV: json.dumps(spec)},
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=subprocess.STDOUT if stdout is not None else None,
        start_new_session=True,
    )


# ----------------------------------------------------------------------------------------
# Inside the new mount namespace (this file run as a script, before the exec).


def _mount(mount_bin: str, *args: str) -> None:
    subprocess.run([mount_bin, *args], check=True, stdin=subprocess.DEVNULL)


def _ensure(path: pathlib.Path, *, directory: bool) -> None:
    if directory:
        path.mkdir(parents=True, exist_ok=True)
    elif not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()


def _inside(root: pathlib.Path, target: str) -> pathlib.Path:
    """`target` (a path in the container) as a host path under `root`, resolving symlinks as
    the container would see them (an absolute link restarts at `root`, `..` stops at `root`),
    like runc's securejoin: Debian's `/var/run -> /run` must not lead to the host's /run."""
    parts = [part for part in pathlib.PurePosixPath(target).parts if part != "/"]
    resolved: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = root.joinpath(*resolved, part)
        if candidate.is_symlink():
            hops += 1
            if hops > 40:
                raise ValueError(f"mount path {target!r}: too many symbolic links")
            link = os.readlink(candidate)
            if link.startswith("/"):
                resolved = []
            parts = [p for p in pathlib.PurePosixPath(link).parts if p != "/"] + parts
            continue
        resolved.append(part)
    return root.joinpath(*resolved)


def _enter(spec: dict[str, Any], env: dict[str, str]) -> None:
    mount = functools.partial(_mount, spec["mount_bin"])
    state = pathlib.Path(spec["state"])
    root = state / "merged"
    mount(
        "-t",
        "overlay",
        "overlay",
        "-o",
        f"lowerdir={spec['rootfs']},upperdir={state / 'upper'},workdir={state / 'work'}",
        str(root),
    )
    _ensure(root / "proc", directory=True)
    mount("-t", "proc", "proc", str(root / "proc"))
    _ensure(root / "sys", directory=True)
    mount("-t", "sysfs", "-o", "ro,nosuid,nodev,noexec", "sysfs", str(root / "sys"))
    _ensure(root / "dev", directory=True)
    mount("-t", "tmpfs", "-o", "mode=755,nosuid", "tmpfs", str(root / "dev"))
    for device in DEVICES:
        _ensure(root / "dev" / device, directory=False)
        mount("--bind", f"/dev/{device}", str(root / "dev" / device))
    _ensure(root / "dev" / "shm", directory=True)
    mount("-t", "tmpfs", "-o", "mode=1777,nosuid,nodev", "tmpfs", str(root / "dev" / "shm"))
    for name, target in (
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ):
        (root / "dev" / name).symlink_to(target)
    binds = [{"target": path, "source": path, "read_only": True} for path in HOST_FILES if os.path.exists(path)]
    if spec["termination_log"]:
        target, source = spec["termination_log"]
        binds.append({"target": target, "source": source, "read_only": False})
    for item in [*binds, *spec["mounts"]]:
        source = pathlib.Path(item["source"])
        target = _inside(root, item["target"])
        _ensure(target, directory=source.is_dir())
        mount("--bind", str(source), str(target))
        if item["read_only"]:
            mount("-o", "remount,bind,ro", str(target))
    if spec["read_only_root"]:
        mount("-o", "remount,ro", str(root))
    os.chroot(root)
    os.chdir(spec["workdir"] or "/")
    os.setgroups([])
    os.setgid(spec["gid"])
    os.setuid(spec["uid"])
    os.execvpe(spec["argv"][0], spec["argv"], env)


def main() -> None:
    env = dict(os.environ)
    spec = json.loads(env.pop(SPEC_ENV))
    try:
        _enter(spec, env)
    except (OSError, subprocess.CalledProcessError, ValueError) as error:
        # As runc says it: the container could not start; 128 is the kubelet's StartError code.
        print(f"rootfs: cannot start {spec['argv']!r}: {error}", file=sys.stderr, flush=True)
        sys.exit(128)


if __name__ == "__main__":
    main()
