"""Node agent: the scheduler and kubelet of the test cluster, running pods as local processes.

There is no container runtime here, so this agent stands in for the two cluster parts that
would need one. Everything else (Job, garbage-collector, Deployment controllers, admission,
RBAC) is the real kube-apiserver / kube-controller-manager.

What it does, and the rules a test (or a later engineer) can rely on:

* **Node.** Registers one Node (default `epnas-node-0`) with allocatable cpu 2, memory 24Gi,
  nvidia.com/gpu 4, pods 110, labels `epnas.io/pool: gpu`, `nvidia.com/gpu.present: "true"`,
  `kubernetes.io/hostname`, `kubernetes.io/os`, `kubernetes.io/arch`, and no taints. Labels,
  taints and allocatable are configurable (`NodeConfig`, `NodeAgent.set_taints`,
  `NodeAgent.set_labels`). Its Ready condition is refreshed every 10 s, and its Lease in
  `kube-node-lease` renewed.
* **Scheduling.** A pending pod whose `schedulerName` is `default-scheduler` is bound to the
  node when `nodeSelector`, required node affinity (`In`, `NotIn`, `Exists`, `DoesNotExist`,
  `Gt`, `Lt`), tolerations vs. NoSchedule/NoExecute taints, and resource requests (summed over
  the node's non-terminal pods, against allocatable) all fit. Otherwise it stays Pending with
  condition `PodScheduled=False, reason=Unschedulable`, like the real scheduler says it, and
  is retried whenever the node or the pods on it change.
* **Command.** An image maps to a command prefix through `NodeAgent.images` (a dict the tests
  may change at any time): an exact image match wins, else the longest key contained in the
  image name. By default any image containing `trainer`, `controller` or `python` maps to
  `[sys.executable]` (the venv's python). argv = prefix + container `command` + `args`; but
  when `command[0]` is `python`/`python3`/`pythonX.Y`, it is replaced by `sys.executable` and
  the prefix is not used. `$(VAR)` references are expanded from the container env. An image
  with no mapping leaves the container Waiting with reason `ErrImagePull` until one is added, and
  so does any image of a registry under `.invalid` (RFC 6761: never resolves), whatever its command;
  an argv that cannot be executed ends the container with exit code 128, reason `StartError`.
* **Images.** `NodeAgent.local_images` maps a pod's image name to a locally built image
  (scripts/images, in buildah's store). A container whose image is there runs *in its image*
  (harness/rootfs.py): its own mount namespace, an overlay on the image's rootfs, volumes
  bind-mounted at their mountPaths (`readOnly` honoured), the termination-message file at
  `terminationMessagePath`, `/proc`, `/sys`, a minimal `/dev`; argv from the image's
  Entrypoint/Cmd and the container's command/args (Kubernetes' rule); env = the image's Env,
  then the pod's; uid/gid from `runAsUser`/`runAsGroup` (container, then pod) or the image's
  USER; `runAsNonRoot` with uid 0 is a CreateContainerConfigError; `readOnlyRootFilesystem`
  makes the overlay read-only. Every other container runs on the host, as below.
* **Environment.** Each process gets a small base env (PATH with the venv's bin first, HOME =
  the pod dir, HOSTNAME = pod name, LANG, KUBERNETES_SERVICE_HOST/PORT = the apiserver), then
  `envFrom` and `env`: literal values, `secretKeyRef`, `configMapKeyRef` (with `optional`),
  `fieldRef` (metadata.name/namespace/uid, metadata.labels['k'], metadata.annotations['k'],
  spec.nodeName, spec.serviceAccountName, status.podIP and status.hostIP → 127.0.0.1),
  `resourceFieldRef` (the container's requests/limits; a missing limit is the node's
  allocatable, a missing request 0; divided by `divisor` and rounded up). A missing
  non-optional Secret/ConfigMap leaves the container Waiting with reason
  `CreateContainerConfigError`, retried each second.
* **Files.** Every pod gets a directory `<workdir>/pods/<ns>_<name>_<uid8>/`; the process runs
  in its `work/` subdir (or in the host dir of `workingDir` when that is a mountPath).
  Volumes: `emptyDir` and `persistentVolumeClaim` → a fresh dir in the pod dir, `configMap` and
  `secret` → a dir with one file per key, `hostPath` → the path itself, `projected` → a dir
  with its ConfigMap/Secret keys, downward-API fields and a real pod-bound ServiceAccount
  token (TokenRequest API); so the automatic `kube-api-access-*` volume at
  /var/run/secrets/kubernetes.io/serviceaccount holds `token`, `ca.crt` and `namespace`,
  and a process that reads them from `EPNAS_MOUNTS` talks to the apiserver as its
  ServiceAccount (RBAC applies). Other kinds (`downwardAPI` volumes, CSI, ...) are skipped. A process runs on the host, so mountPaths do not
  exist for it: a mount at `/tmp` sets `TMPDIR` to its host dir, and `EPNAS_MOUNTS` holds the
  JSON map {mountPath: host dir} of every mount of the container.
* **Termination message.** `EPNAS_TERMINATION_LOG` is set to a per-container file; a program
  that would write `terminationMessagePath` (default /dev/termination-log) writes there when
  the variable is set (our trainer does). When the process exits, that file (first 4096
  bytes) becomes the terminated state's `message`; with `FallbackToLogsOnError` and a
  non-zero exit and an empty file, the log tail is used, as the kubelet does.
* **Status.** Status goes through the pods/status subresource: Running with conditions
  PodScheduled, PodReadyToStartContainers, Initialized, ContainersReady, Ready, podIP/hostIP
  127.0.0.1, containerStatuses running; then Succeeded/Failed with terminated exitCode, reason
  `Completed`/`Error`, message. restartPolicy Never, OnFailure (restart on non-zero exit) and
  Always (restart on any exit) are honoured, with `restartCount` and `lastState`; init
  containers run one after the other first, and one that exits non-zero fails the pod
  without starting the rest, whatever the restartPolicy (the kubelet would restart it
  unless the policy is Never).
  Readiness/liveness probes are ignored (a running container is ready).
* **Deletion.** When a pod gets a deletionTimestamp its process groups get SIGTERM, then
  SIGKILL after the grace period; the final status is posted and the pod deleted with grace
  0, as the kubelet does. Pod finalizers (the Job controller's job-tracking) are left to
  their owners. Stdout+stderr of each container go to `<pod dir>/<container>.log`
  (`NodeAgent.container_log`), since there is no `kubectl logs` without a kubelet.

Layout (one module per concern; this package re-exports what the tests and benches import):

* `scheduling` — `NodeConfig`, the pure scheduling decisions, and the agent's binding of pods.
* `volumes` — a pod's volumes as host dirs (emptyDir, ConfigMap/Secret, projected, downward
  API) and a container's mounts of them.
* `runner` — the image → command table, argv and env, and `PodRunner`: starting, watching,
  restarting and killing a pod's processes, on the host or in their image, with their logs.
* `status` — the container records, the pod's phase and conditions, and the status patch.
* `agent` — `NodeAgent`: the Node, its heartbeat, the pod watch and the reconcile loop.
* `common` — the logger, the pod type and the errors that the others share.
"""

from .agent import NodeAgent
from .common import ImageNotMappedError
from .runner import container_argv, default_images, expand_refs, resource_field_value
from .scheduling import NodeConfig, insufficient_resources, pod_requests, tolerates, unschedulable_reason

__all__ = [
    "ImageNotMappedError",
    "NodeAgent",
    "NodeConfig",
    "container_argv",
    "default_images",
    "expand_refs",
    "insufficient_resources",
    "pod_requests",
    "resource_field_value",
    "tolerates",
    "unschedulable_reason",
]
