"""Volumes: a pod's volumes materialised as host dirs, and a container's mounts of them
(rules: the package docstring, **Files** and **Images**).

`emptyDir`/`persistentVolumeClaim` become a fresh dir (mode 0777) under the pod dir,
`configMap`/`secret` a dir with one file per key (or per `items` entry), `hostPath` the path
itself, `projected` a dir with a real pod-bound ServiceAccount token, ConfigMap/Secret keys and
downward-API fields; other kinds are skipped. `_mounts` maps each mountPath to its host dir
(`subPath` honoured); `_image_mounts` gives the same as bind mounts for a container that runs in
its image. `_field_value` answers a downward-API `fieldRef` (volumes and env alike)."""

from __future__ import annotations

import pathlib
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

from harness import rootfs

from .common import ContainerConfigError, Pod

if TYPE_CHECKING:
    from .agent import NodeAgent


class PodVolumes:
    """The `PodRunner`'s volume half (a mixin): its state lives on the runner."""

    agent: NodeAgent
    pod: Pod
    spec: Pod
    dir: pathlib.Path
    namespace: str
    pod_name: str
    uid: str

    def _prepare_volumes(self) -> dict[str, pathlib.Path]:
        """Materialise the pod's volumes as host dirs; name → dir (skipped kinds absent)."""
        volumes: dict[str, pathlib.Path] = {}
        for volume in self.spec.get("volumes") or []:
            name = volume["name"]
            target = self.dir / "volumes" / name
            if "hostPath" in volume:
                volumes[name] = pathlib.Path(volume["hostPath"]["path"])
            elif "emptyDir" in volume or "persistentVolumeClaim" in volume:
                target.mkdir(parents=True, exist_ok=True)
                target.chmod(0o777)  # the kubelet's emptyDir mode: any uid may write
                volumes[name] = target
            elif "configMap" in volume or "secret" in volume:
                self._write_key_files(volume, target)
                volumes[name] = target
            elif "projected" in volume:
                self._write_projected(volume["projected"], target)
                volumes[name] = target
        return volumes

    def _write_projected(self, projected: Pod, target: pathlib.Path) -> None:
        """Write a projected volume: a real ServiceAccount token (TokenRequest), ConfigMap/Secret
        keys and downward-API fields, so a process can talk to the apiserver as its ServiceAccount."""
        target.mkdir(parents=True, exist_ok=True)
        files: dict[str, bytes] = {}
        for source in projected.get("sources") or []:
            if "serviceAccountToken" in source:
                token_source = source["serviceAccountToken"]
                token = self.agent.request_token(
                    self.namespace,
                    self.spec.get("serviceAccountName") or "default",
                    audience=token_source.get("audience"),
                    expiration_s=token_source.get("expirationSeconds") or 3607,
                    pod_name=self.pod_name,
                    pod_uid=self.uid,
                )
                files[token_source["path"]] = token.encode()
            for kind, is_secret in (("configMap", False), ("secret", True)):
                if kind in source:
                    ref = source[kind]
                    data = self.agent.read_data(
                        self.namespace, ref["name"], secret=is_secret, optional=bool(ref.get("optional"))
                    )
                    for item in ref.get("items") or [{"key": key, "path": key} for key in data]:
                        if item["key"] in data:
                            files[item["path"]] = data[item["key"]]
            for item in (source.get("downwardAPI") or {}).get("items") or []:
                if "fieldRef" in item:
                    files[item["path"]] = self._field_value(item["fieldRef"]["fieldPath"]).encode()
        for path, content in files.items():
            (target / path).parent.mkdir(parents=True, exist_ok=True)
            (target / path).write_bytes(content)

    def _write_key_files(self, volume: Pod, target: pathlib.Path) -> None:
        source = volume.get("configMap") or volume.get("secret")
        is_secret = "secret" in volume
        name = source.get("secretName") if is_secret else source.get("name")
        data = self.agent.read_data(self.namespace, name, secret=is_secret, optional=bool(source.get("optional")))
        items = source.get("items") or [{"key": key, "path": key} for key in data]
        target.mkdir(parents=True, exist_ok=True)
        for item in items:
            if item["key"] not in data:
                raise ContainerConfigError(f"key {item['key']!r} not found in {name}")
            path = target / item["path"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data[item["key"]])

    def _mounts(self, container: Pod, volumes: Mapping[str, pathlib.Path]) -> dict[str, pathlib.Path]:
        mounts = {}
        for mount in container.get("volumeMounts") or []:
            host = volumes.get(mount["name"])
            if host is None:
                continue
            if mount.get("subPath"):
                host = host / mount["subPath"]
                host.mkdir(parents=True, exist_ok=True)
            mounts[mount["mountPath"]] = host
        return mounts

    def _image_mounts(self, container: Pod, volumes: Mapping[str, pathlib.Path]) -> list[rootfs.Mount]:
        read_only = {m["mountPath"]: bool(m.get("readOnly")) for m in container.get("volumeMounts") or []}
        return [
            rootfs.Mount(path, host, read_only.get(path, False))
            for path, host in self._mounts(container, volumes).items()
        ]

    def _field_value(self, path: str) -> str:
        meta = self.pod["metadata"]
        match = re.match(r"^metadata\.(labels|annotations)\['(.+)'\]$", path)
        if match:
            return (meta.get(match.group(1)) or {}).get(match.group(2), "")
        values = {
            "metadata.name": meta["name"],
            "metadata.namespace": meta["namespace"],
            "metadata.uid": meta["uid"],
            "spec.nodeName": self.agent.config.name,
            "spec.serviceAccountName": self.spec.get("serviceAccountName", "default"),
            "status.podIP": "127.0.0.1",
            "status.podIPs": "127.0.0.1",
            "status.hostIP": "127.0.0.1",
            "status.hostIPs": "127.0.0.1",
        }
        if path not in values:
            raise ContainerConfigError(f"unsupported fieldRef {path!r}")
        return values[path]
