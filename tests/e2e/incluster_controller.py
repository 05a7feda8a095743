"""The controller image's ENTRYPOINT (`python -m controller`) for the node agent, with the
in-cluster config a real pod would have.

The node agent runs the Deployment's pod as a local process: KUBERNETES_SERVICE_HOST/PORT are
set, and the pod's projected `kube-api-access-*` volume (a real pod-bound ServiceAccount
token, `ca.crt`, `namespace`) lies in the host dir that `EPNAS_MOUNTS` maps
/var/run/secrets/kubernetes.io/serviceaccount to. The kubernetes client reads the token and
CA from fixed paths, so this points those two module constants at the mounted files and runs
`controller` as `python -m controller` would, with the pod's args. The controller's own
`load_incluster_config()` call is unchanged, and its API calls are made as the chart's
ServiceAccount, so the chart's RBAC is what applies.
"""

from __future__ import annotations

import json
import os
import pathlib
import runpy
import sys

from kubernetes.config import incluster_config

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def main() -> None:
    mounted = pathlib.Path(json.loads(os.environ["EPNAS_MOUNTS"])[SERVICE_ACCOUNT_DIR])
    incluster_config.SERVICE_TOKEN_FILENAME = str(mounted / "token")
    incluster_config.SERVICE_CERT_FILENAME = str(mounted / "ca.crt")
    sys.argv = ["controller", *sys.argv[1:]]
    runpy.run_module("controller", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
