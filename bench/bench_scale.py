"""Controller scale on the real API server: one step of N children in flight, and many searches at once (issue 13).

Starts the test harness's stack (etcd + kube-apiserver + kube-controller-manager, the node
agent as the only node, MinIO; binaries from ``scripts/testbin``), with kube-apiserver audit
logging on (a subclass adds the flags; the harness is unchanged) and the node's allocatable
raised so that every child's pod fits at once.  The controller runs as users run it
(``python -m controller --namespace NS``, leader election on) as a subprocess, a fresh one
per scenario, with its own client certificate (CN ``epnas-bench-controller``, group
system:masters) so the audit log tells its requests from everyone else's.  Its trainer is
``bench/instant_trainer.py``: it reads the child's task and writes a valid result at once.

Scenarios (each its own namespace, bucket prefix and controller; deleted after):

* ``one-N`` for N in ``--sizes``: one search, ``budget: {episodes: 1, stepsPerEpisode: 2,
  branches: N}`` (two steps, so there is a next step), loose constraints, tiny trainer
  requests (``gpu: 0, cpu: 1m, memory: 16Mi``).
* ``many-SxB``: ``--searches`` S searches of ``--search-branches`` B branches, created at once.

Measured per scenario, over the window from creating the searches to all of them ``Succeeded``:

* **requests per child**: the controller's API requests (unique audit IDs, so a watch counts
  once) divided by the children it created a Job for; also without the leader Lease's
  renewals (time-driven, not child-driven), and broken down by verb and resource;
* **controller CPU per child**: utime + stime of the controller process (/proc/PID/stat) over
  the window, per child;
* **peak RSS**: VmHWM of the controller process at the end (it starts fresh per scenario);
* **peak in flight**: most Jobs at once between their POST and their last status write (audit);
* **Job creation rate**: Jobs of a step / the time between its first and last Job POST
  (audit ``requestReceivedTimestamp``, microseconds), median over searches and steps;
* **end → next step**: from the job controller's last status write of a step-0 Job (its
  ``Complete`` condition), to the controller's first POST of a step-1 Job, median over searches.

With ``--repeats R`` each scenario runs R times and the medians are reported.  A scenario that
does not end within ``--timeout-s`` is reported with ``timed_out: true``.

    python bench/bench_scale.py [--sizes 64,128,256,512] [--searches 10] [--search-branches 32]
                                [--repeats 1] [--timeout-s 1200] [--json out.json] [--workdir DIR]
                                [--profile DIR]
"""

from __future__ import annotations

import argparse
import base64
import collections
import datetime
import json
import os
import pathlib
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the harness

from harness import certs, procs  # noqa: E402
from harness.controlplane import ControlPlane  # noqa: E402
from harness.minio import MinioServer  # noqa: E402
from harness.node_agent import NodeAgent, NodeConfig  # noqa: E402
from harness.waits import wait_until  # noqa: E402

CONTROLLER_USER = "epnas-bench-controller"
TRAINER = REPO / "bench" / "instant_trainer.py"
SECRET = "minio-credentials"
CLK_TCK = os.sysconf("SC_CLK_TCK")
JOB_NAME = re.compile(r"^(?P<search>.+)-e(?P<episode>\d{3})-s(?P<step>\d{2})-c\d+$")
AUDIT_POLICY = f"""\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  users: [{CONTROLLER_USER}]
- level: Metadata
  verbs: [update, patch]
  resources: [{{group: batch, resources: [jobs/status]}}]
- level: None
"""


class AuditedControlPlane(ControlPlane):
    """The harness's control plane with kube-apiserver audit logging (JSON lines at ``audit_log``):
    every request of the bench's controller user, and every Job status write."""

    @property
    def audit_log(self) -> pathlib.Path:
        return self.workdir / "audit.log"

    def _add(self, name, argv, env=None):
        if name == "kube-apiserver":
            policy = self.workdir / "audit-policy.yaml"
            policy.write_text(AUDIT_POLICY)
            argv = [
                *argv,
                f"--audit-policy-file={policy}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-format=json",
                "--audit-log-maxsize=0",
                "--audit-log-maxbackup=0",
            ]
        return super()._add(name, argv, env)


class Stack:
    """Control plane (audited), node agent with room for every pod, MinIO, the CRD, a bucket."""

    def __init__(self, workdir: pathlib.Path):
        self.workdir = workdir
        self.plane = AuditedControlPlane(workdir / "control-plane")
        self.minio = MinioServer(workdir / "minio")
        self.agent: NodeAgent | None = None
        self.bucket = "bench-scale"
        self.controller_kubeconfig = workdir / "controller.kubeconfig"

    def start(self) -> None:
        from kubernetes import client as k8s_client

        self.plane.start()
        self.minio.start()
        self.minio.s3_client().create_bucket(Bucket=self.bucket)
        config = NodeConfig(
            allocatable={
                "cpu": "64",
                "memory": "512Gi",
                "nvidia.com/gpu": "4",
                "pods": "5000",
                "ephemeral-storage": "100Gi",
            }
        )
        self.agent = NodeAgent(
            self.plane.api_client,
            workdir=self.workdir / "node-agent",
            apiserver_port=int(self.plane.server.rsplit(":", 1)[1]),
            config=config,
        )
        self.agent.start()
        self.plane.kubectl("apply", "--server-side", "-f", str(REPO / "manifests" / "crd.yaml"))
        self.plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/architecturesearches.epnas.io")
        self._controller_kubeconfig()
        client = self.plane.api_client()
        self.core = k8s_client.CoreV1Api(client)
        self.custom = k8s_client.CustomObjectsApi(client)

    def _controller_kubeconfig(self) -> None:
        assert self.plane.pki is not None
        pki_dir = self.plane.pki.ca_cert.parent
        cert, key = certs._signed_cert(
            pki_dir,
            "bench-controller",
            f"/O=system:masters/CN={CONTROLLER_USER}",
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=clientAuth\n",
        )
        b64 = base64.b64encode
        kubeconfig = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "bench",
                    "cluster": {
                        "server": self.plane.server,
                        "certificate-authority-data": b64(self.plane.pki.ca_cert.read_bytes()).decode(),
                    },
                }
            ],
            "users": [
                {
                    "name": CONTROLLER_USER,
                    "user": {
                        "client-certificate-data": b64(cert.read_bytes()).decode(),
                        "client-key-data": b64(key.read_bytes()).decode(),
                    },
                }
            ],
            "contexts": [{"name": "bench", "context": {"cluster": "bench", "user": CONTROLLER_USER}}],
            "current-context": "bench",
        }
        self.controller_kubeconfig.write_text(json.dumps(kubeconfig))
        self.controller_kubeconfig.chmod(0o600)

    def stop(self) -> None:
        if self.agent is not None:
            self.agent.stop()
        self.minio.stop()
        self.plane.stop()


# ---------------------------------------------------------------- one scenario


def search_body(name: str, *, branches: int, seed: int, stack: Stack, prefix: str) -> dict:
    return {
        "apiVersion": "epnas.io/v1alpha1",
        "kind": "ArchitectureSearch",
        "metadata": {"name": name},
        "spec": {
            "seed": seed,
            "initialArchitecture": {"random": {"depth": 2}},
            "dataset": {"kind": "synthetic", "inputShape": [1, 8, 8], "numClasses": 4, "options": {"samples": 256}},
            "constraints": [{"metric": "modelSize", "max": 1e12}],
            "budget": {"episodes": 1, "stepsPerEpisode": 2, "branches": branches, "topK": 4},
            "childTraining": {
                "regime": "prediction",
                "epochs": 1,
                "batchSize": 64,
                "lr": 0.1,
                "parameterSharing": False,
            },
            "trainer": {
                "image": "epnas/trainer:test",
                "gpu": 0,
                "cpu": "1m",
                "memory": "16Mi",
                "backoffLimit": 0,
                "ttlSecondsAfterFinished": 3600,
                "activeDeadlineSeconds": 600,
            },
            "store": {
                "uri": f"s3://{stack.bucket}/{prefix}",
                "endpoint": stack.minio.endpoint,
                "secretName": SECRET,
                "region": stack.minio.region,
            },
        },
    }


def make_namespace(stack: Stack, name: str) -> None:
    from kubernetes.client.rest import ApiException

    stack.core.create_namespace({"metadata": {"name": name, "labels": {"epnas.io/bench": "scale"}}})

    def ready() -> bool:
        try:
            stack.core.read_namespaced_service_account("default", name)
            stack.core.read_namespaced_config_map("kube-root-ca.crt", name)
            return True
        except ApiException as err:
            if err.status != 404:
                raise
            return False

    wait_until(ready, timeout_s=60, what=f"namespace {name} to be usable")
    stack.core.create_namespaced_secret(
        name,
        {
            "metadata": {"name": SECRET},
            "stringData": {
                "AWS_ACCESS_KEY_ID": stack.minio.root_user,
                "AWS_SECRET_ACCESS_KEY": stack.minio.root_password,
            },
        },
    )


def delete_namespace(stack: Stack, name: str, *, timeout_s: float = 600) -> float:
    from kubernetes.client.rest import ApiException

    started = time.monotonic()
    try:
        stack.core.delete_namespace(name, propagation_policy="Background")
    except ApiException as err:
        if err.status != 404:
            raise

    def gone() -> bool:
        try:
            stack.core.read_namespace(name)
            return False
        except ApiException as err:
            return err.status == 404

    try:
        wait_until(gone, timeout_s=timeout_s, what=f"namespace {name} to be deleted", interval_s=1.0)
    except TimeoutError as err:
        print(f"warning: {err}", file=sys.stderr)
    return time.monotonic() - started


# ``--profile DIR``: the controller's main, with each search loop's thread under cProfile (wall time
# in its cumulative figures, since the loop blocks on the store and on Job watches); one
# DIR/<namespace>.<search>.prof per search, for ``python -m pstats``.  For finding where time goes:
# profiling inflates the CPU figures.
PROFILED_MAIN = """
import cProfile, os, sys
import epnas.search
run = epnas.search.SearchLoop.run
def profiled(self):
    profile = cProfile.Profile()
    profile.enable()
    try:
        return run(self)
    finally:
        profile.disable()
        profile.dump_stats(os.path.join(os.environ["EPNAS_BENCH_PROFILE"], (self.search.metadata.namespace or "") + "." + self.search.name + ".prof"))
epnas.search.SearchLoop.run = profiled
from controller.main import main
sys.exit(main(sys.argv[1:]))
"""


class Controller:
    """``python -m controller`` for one namespace, with the bench's kubeconfig and the instant trainer."""

    def __init__(self, stack: Stack, namespace: str, log: pathlib.Path, *, profile: pathlib.Path | None = None):
        self.port = procs.free_port()
        start = ["-c", PROFILED_MAIN] if profile else ["-m", "controller"]
        argv = [
            sys.executable,
            *start,
            "--namespace",
            namespace,
            "--metrics-port",
            str(self.port),
            "--kubeconfig",
            str(stack.controller_kubeconfig),
            "--leader-election-namespace",
            namespace,
            "--trainer-command",
            f"python {TRAINER}",
        ]
        env = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": stack.minio.root_user,
            "AWS_SECRET_ACCESS_KEY": stack.minio.root_password,
            "AWS_REGION": stack.minio.region,
            "PYTHONUNBUFFERED": "1",
            **procs.run_marker_env(),
        }
        env.pop("KUBECONFIG", None)
        if profile:
            profile.mkdir(parents=True, exist_ok=True)
            env["EPNAS_BENCH_PROFILE"] = str(profile)
        self.log = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"the controller exited {self.proc.returncode}: {self.log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=2) as answer:
                return answer.status == 200
        except (urllib.error.URLError, ConnectionError, OSError):
            return False

    def cpu_s(self) -> float:
        fields = pathlib.Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)

    def memory_kib(self) -> dict[str, int]:
        values = {}
        for line in pathlib.Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                values[key] = int(value.split()[0])
        return values

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _ts(text: str) -> float:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def read_audit(path: pathlib.Path) -> list[dict]:
    events = []
    with open(path, encoding="utf-8") as log:
        for line in log:
            line = line.strip()
            if line:
                try:
                    events.append(json.loads(line))
                except ValueError:
                    pass  # a line being written
    return events


def kind_of(event: dict) -> str:
    ref = event.get("objectRef") or {}
    resource = ref.get("resource", "?") + (f"/{ref['subresource']}" if ref.get("subresource") else "")
    return f"{event.get('verb')} {resource}"


def analyse(events: list[dict], *, namespace: str, searches: list[str], t0: float, t1: float) -> dict:
    """The controller's requests in [t0, t1] (one per audit ID) and each search's step timings."""
    mine: dict[str, dict] = {}
    status_writes: dict[str, list[float]] = collections.defaultdict(list)  # Job name → status write times
    for event in events:
        ref = event.get("objectRef") or {}
        user = (event.get("user") or {}).get("username")
        if user == CONTROLLER_USER:
            received = _ts(event["requestReceivedTimestamp"])
            if t0 <= received <= t1 and ref.get("namespace", namespace) == namespace:
                mine.setdefault(event["auditID"], event)
        elif (
            ref.get("resource") == "jobs"
            and ref.get("subresource") == "status"
            and ref.get("namespace") == namespace
            and event.get("stage") == "ResponseComplete"
            and (event.get("responseStatus") or {}).get("code", 200) < 300
        ):
            status_writes[ref.get("name", "")].append(_ts(event["stageTimestamp"]))
    kinds = collections.Counter(kind_of(e) for e in mine.values())
    posts: dict[str, dict[int, list[float]]] = {s: collections.defaultdict(list) for s in searches}
    for event in mine.values():
        ref = event.get("objectRef") or {}
        if (
            event.get("verb") == "create"
            and ref.get("resource") == "jobs"
            and not ref.get("subresource")
            and (event.get("responseStatus") or {}).get("code") == 201
        ):
            match = JOB_NAME.match(ref.get("name") or "")
            if match and match["search"] in posts:
                posts[match["search"]][int(match["step"])].append(_ts(event["requestReceivedTimestamp"]))
    rates, gaps, first_job = [], [], []
    for search, steps in posts.items():
        for times in steps.values():
            if len(times) > 1 and max(times) > min(times):
                rates.append((len(times) - 1) / (max(times) - min(times)))
        if steps.get(0):
            first_job.append(min(steps[0]) - t0)
        if steps.get(0) and steps.get(1):
            next_step = min(steps[1])
            ends = [
                max(t for t in times if t < next_step)
                for name, times in status_writes.items()
                if name.startswith(f"{search}-e000-s00-") and any(t < next_step for t in times)
            ]
            if ends:
                gaps.append(next_step - max(ends))
    created = sum(len(t) for steps in posts.values() for t in steps.values())
    # children in flight: a Job counts from its POST to its last status write (its Complete condition)
    changes = sorted(
        [
            (_ts(e["requestReceivedTimestamp"]), 1)
            for e in mine.values()
            if e.get("verb") == "create"
            and (e.get("objectRef") or {}).get("resource") == "jobs"
            and (e.get("responseStatus") or {}).get("code") == 201
        ]
        + [(max(times), -1) for times in status_writes.values()]
    )
    in_flight = peak = 0
    for _, change in changes:
        in_flight += change
        peak = max(peak, in_flight)
    leases = sum(n for k, n in kinds.items() if k.endswith(" leases"))
    return {
        "requests": len(mine),
        "requests_excl_leases": len(mine) - leases,
        "requests_by_kind": dict(sorted(kinds.items())),
        "jobs_created": created,
        "peak_in_flight": peak,
        "job_create_rates_per_s": rates,
        "end_to_next_step_s": gaps,
        "first_job_s": first_job,
    }


def run_scenario(
    stack: Stack,
    label: str,
    *,
    searches: int,
    branches: int,
    timeout_s: float,
    logs: pathlib.Path,
    profile: pathlib.Path | None = None,
) -> dict:
    namespace = f"bench-{label}-{secrets.token_hex(3)}"
    make_namespace(stack, namespace)
    controller = Controller(stack, namespace, logs / f"controller-{namespace}.log", profile=profile)
    names = [f"s{i:02d}" for i in range(searches)]
    result: dict = {
        "label": label,
        "searches": searches,
        "branches": branches,
        "planned_children": searches * branches * 2,
    }
    try:
        wait_until(controller.ready, timeout_s=180, what="the controller's /readyz")
        time.sleep(1.0)  # past its start-up
        cpu0, t0 = controller.cpu_s(), time.time()
        for i, name in enumerate(names):
            stack.custom.create_namespaced_custom_object(
                "epnas.io",
                "v1alpha1",
                namespace,
                "architecturesearches",
                search_body(name, branches=branches, seed=i, stack=stack, prefix=namespace),
            )
        phases: dict[str, str] = {}
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            listed = stack.custom.list_namespaced_custom_object(
                "epnas.io", "v1alpha1", namespace, "architecturesearches"
            )
            phases = {item["metadata"]["name"]: (item.get("status") or {}).get("phase", "") for item in listed["items"]}
            if all(phases.get(n) in ("Succeeded", "Failed") for n in names):
                break
            if controller.proc.poll() is not None:
                raise RuntimeError(f"the controller exited {controller.proc.returncode}")
            time.sleep(0.5)
        t1, cpu1 = time.time(), controller.cpu_s()
        memory = controller.memory_kib()
        result["timed_out"] = not all(phases.get(n) in ("Succeeded", "Failed") for n in names)
        result["phases"] = dict(collections.Counter(phases.values()))
    finally:
        controller.stop()
    time.sleep(1.0)  # the audit log's last lines
    stats = analyse(read_audit(stack.plane.audit_log), namespace=namespace, searches=names, t0=t0, t1=t1)
    children = max(1, stats["jobs_created"])
    cpu = cpu1 - cpu0
    result.update(
        {
            "children": stats["jobs_created"],
            "peak_in_flight": stats["peak_in_flight"],
            "wall_s": round(t1 - t0, 2),
            "controller_cpu_s": round(cpu, 3),
            "cpu_ms_per_child": round(1000 * cpu / children, 2),
            "requests": stats["requests"],
            "requests_per_child": round(stats["requests"] / children, 3),
            "requests_per_child_excl_leases": round(stats["requests_excl_leases"] / children, 3),
            "requests_by_kind": stats["requests_by_kind"],
            "peak_rss_mib": round(memory.get("VmHWM", 0) / 1024, 1),
            "rss_end_mib": round(memory.get("VmRSS", 0) / 1024, 1),
            "job_create_rate_per_s": _median(stats["job_create_rates_per_s"]),
            "end_to_next_step_s": _median(stats["end_to_next_step_s"]),
            "end_to_next_step_max_s": round(max(stats["end_to_next_step_s"]), 3)
            if stats["end_to_next_step_s"]
            else None,
            "first_job_s": _median(stats["first_job_s"]),
        }
    )
    result["namespace_delete_s"] = round(delete_namespace(stack, namespace), 1)
    return result


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


MEDIAN_FIELDS = (
    "children",
    "peak_in_flight",
    "wall_s",
    "controller_cpu_s",
    "cpu_ms_per_child",
    "requests",
    "requests_per_child",
    "requests_per_child_excl_leases",
    "peak_rss_mib",
    "rss_end_mib",
    "job_create_rate_per_s",
    "end_to_next_step_s",
    "end_to_next_step_max_s",
    "first_job_s",
    "namespace_delete_s",
)


def combine(runs: list[dict]) -> dict:
    """Medians of repeated runs of one scenario (the first run's breakdown of requests)."""
    out = dict(runs[0])
    for key in MEDIAN_FIELDS:
        values = [r[key] for r in runs if r.get(key) is not None]
        out[key] = round(statistics.median(values), 3) if values else None
    out["timed_out"] = any(r.get("timed_out") for r in runs)
    out["repeats"] = len(runs)
    return out


def table(scenarios: list[dict]) -> str:
    head = (
        "| scenario | children (Jobs) | peak in flight | wall s | requests/child | excl. leases | CPU ms/child | peak RSS MiB "
        "| Jobs/s | end → next step s (max) |"
    )
    lines = [head, "|" + "---|" * 10]
    for s in scenarios:
        gap = (
            f"{s['end_to_next_step_s']} ({s['end_to_next_step_max_s']})" if s["end_to_next_step_s"] is not None else "–"
        )
        lines.append(
            f"| {s['label']}{' TIMED OUT' if s['timed_out'] else ''} | {s['children']} | {s['peak_in_flight']} | {s['wall_s']} | "
            f"{s['requests_per_child']} | {s['requests_per_child_excl_leases']} | {s['cpu_ms_per_child']} | "
            f"{s['peak_rss_mib']} | {s['job_create_rate_per_s']} | {gap} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--sizes", default="64,128,256,512", help="branches of the one-search scenarios, comma-separated ('' for none)"
    )
    parser.add_argument(
        "--searches", type=int, default=10, help="searches at once in the many-searches scenario (0: skip it)"
    )
    parser.add_argument("--search-branches", type=int, default=32, help="branches of each of those searches")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each scenario (medians reported)")
    parser.add_argument("--timeout-s", type=float, default=1200, help="limit per scenario, from creating its searches")
    parser.add_argument("--json", metavar="PATH", help="write the report here as JSON")
    parser.add_argument(
        "--profile", metavar="DIR", help="run each search loop under cProfile, stats to DIR (inflates CPU)"
    )
    parser.add_argument(
        "--workdir", help="where the servers keep data and logs (default: a temporary dir, removed after)"
    )
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    workdir = (
        pathlib.Path(args.workdir) if args.workdir else pathlib.Path(tempfile.mkdtemp(prefix="epnas-bench-scale-"))
    )
    workdir.mkdir(parents=True, exist_ok=True)
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    stack = Stack(workdir)
    scenarios: list[dict] = []
    started = time.monotonic()
    try:
        stack.start()
        plan = [(f"one-{n}", 1, n) for n in sizes]
        if args.searches > 0:
            plan.append((f"many-{args.searches}x{args.search_branches}", args.searches, args.search_branches))
        for label, searches, branches in plan:
            runs = []
            for repeat in range(args.repeats):
                run = run_scenario(
                    stack,
                    label,
                    searches=searches,
                    branches=branches,
                    timeout_s=args.timeout_s,
                    logs=logs,
                    profile=pathlib.Path(args.profile) if args.profile else None,
                )
                print(
                    f"{label} run {repeat + 1}: {json.dumps({k: run[k] for k in MEDIAN_FIELDS if k in run})}",
                    file=sys.stderr,
                    flush=True,
                )
                runs.append(run)
            scenarios.append(combine(runs))
    finally:
        stack.stop()
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    singles = [s for s in scenarios if s["searches"] == 1]
    flat = {}
    for key in ("cpu_ms_per_child", "requests_per_child", "requests_per_child_excl_leases"):
        values = {s["branches"]: s[key] for s in singles}
        flat[key] = {
            "by_branches": values,
            "largest_over_smallest": round(values[max(values)] / values[min(values)], 3)
            if values and values[min(values)]
            else None,
        }
    report = {
        "scenarios": scenarios,
        "flatness": flat,
        "total_s": round(time.monotonic() - started, 1),
        "node_allocatable": stack.agent.config.allocatable if stack.agent else {},
    }
    print(table(scenarios))
    print(json.dumps(flat))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(report, indent=1))
    return 1 if any(s["timed_out"] for s in scenarios) else 0


if __name__ == "__main__":
    sys.exit(main())
