"""Test harness: a real Kubernetes control plane, a node agent, and MinIO, on loopback.

Registered as a pytest plugin by tests/conftest.py (`pytest_plugins = ["harness.plugin"]`).
The binaries come from `make testbin` (scripts/testbin, pins in scripts/testbin.versions);
a missing one fails the test that needs it with the command that builds it, never skips.

Fixtures (all defined in harness/plugin.py):

* `control_plane` (session) → `controlplane.ControlPlane`: etcd + kube-apiserver (RBAC,
  self-signed certs, service-account keys, admin client cert in group system:masters) +
  kube-controller-manager (job, ttl-after-finished, garbage-collector, deployment,
  replicaset, serviceaccount, serviceaccount-token, namespace, root-ca-cert-publisher).
  `.kubeconfig` path of the admin kubeconfig, `.server` https URL, `.env` os.environ plus
  KUBECONFIG (for subprocesses), `.api_client()` a new kubernetes ApiClient,
  `.kubectl(*args, check=True, input_text=None)` → CompletedProcess[str], `.log_paths`,
  `.startup_s`.
* `node_agent` (function scope over one session agent) → `node_agent.NodeAgent`: the Ready
  node `epnas-node-0` that binds and runs pods as local processes. `.images` (mutable
  image → command-prefix table), `.config` (NodeConfig: name, labels, taints, allocatable),
  `.set_taints([...])`, `.set_labels({...})`, `.container_log(ns, pod, container=None)`,
  `.pod_dir(ns, pod)`, `.running_pids()`. Images, labels and taints are restored after each
  test. Rules (command mapping, env, volumes, termination message): node_agent's docstring.
* `minio` (session) → `minio.MinioServer`: `.endpoint` (http URL), `.root_user`,
  `.root_password`, `.region`, `.s3_client()` (boto3, path-style).
* `bucket` (function) → str: a fresh, empty bucket on `minio`, emptied and removed after.
* `namespace` (function) → str: a fresh namespace whose `default` ServiceAccount and
  `kube-root-ca.crt` ConfigMap exist (pods can be created at once); deleted after the test
  (deletion not awaited).
* `helm` (session) → `plugin.Helm`: the pinned helm binary against `control_plane`
  (KUBECONFIG set, its own HELM_CACHE/CONFIG/DATA_HOME); `helm(*args, check=True)` →
  CompletedProcess[str]; `.binary`, `.env`.
* `images` (session) → {"controller": ref, "trainer": ref}: both images built by
  scripts/images with buildah (cached by their inputs' hash). `node_agent.local_images[name]
  = ref` makes the node agent run containers of image `name` in that image (harness/rootfs.py).
* `kueue` (session) → `kueue.KueueServer`: the Kueue manager (pinned KUEUE_VERSION) against
  `control_plane`, its CRDs applied from the same module version and its webhooks registered
  (batch Jobs only when they carry `kueue.x-k8s.io/queue-name`); see harness/kueue.py.
* `argo` (session) → `argo.ArgoServer`: Argo's workflow-controller (pinned ARGO_VERSION) against
  `control_plane`, its CRDs from the same module version; `.use_node(node_agent, *images)` lets
  the node agent run Argo's pods (init/wait in the executor image), `.grant_executor(ns)`; see
  harness/argo.py.
* `harness_workdir` (session) → pathlib.Path: where servers keep data and logs.

Helpers: `harness.manifests` (python_pod / python_job / python_container builders),
`harness.waits` (wait_until, wait_for_job_finished, job_condition, job_pods,
wait_for_deleted), `harness.standalone` (the whole stack outside pytest, for the
process-hygiene test). Every process the harness starts carries $EPNAS_HARNESS_RUN when
it is set (`procs.processes_with_marker` finds them).

When a test using these fixtures fails, the tails of every server log (etcd, apiserver,
controller-manager, node agent, MinIO) are appended to its report.
"""
