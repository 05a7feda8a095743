"""The RBAC the controller needs: exactly the permissions its code uses, nothing more.

Every API call in ``controller.kube`` names its permission (``Use``); ``code_uses`` reads them
out of that module's source, so a new call that needs a new verb cannot be added without the
tests (tests/unit/controller/test_rbac.py) failing until ``CLUSTER_RULES``/``LEASE_RULES``,
manifests/rbac.yaml and the chart's ``epnas.rules`` grant it.

Two permissions are used without a call of their own:

* ``update architecturesearches/finalizers``: a Job's ownerReference sets
  ``blockOwnerDeletion``, which the API server's ``OwnerReferencesPermissionEnforcement``
  admission plugin allows only to who may update the owner's finalizers.
* Leases are only ever needed in the controller's own namespace (leader election), so they are
  granted by a Role there, never cluster-wide.

The Argo executor (``controller.argo``, ``spec.executor: argo``) is optional: its Workflow verbs
(``ARGO_USES``, which ``argo_uses`` checks against that module's calls) are granted only when the
installation enables it (``cluster_rules(argo=True)``; the chart's ``argo.enabled``), and the
children's pods then need Argo's executor permissions (``EXECUTOR_USES``) in the search's namespace.
"""

from __future__ import annotations

import ast
import inspect
from types import ModuleType
from typing import NamedTuple

from controller import argo, kube
from controller.argo import ARGO_USES, EXECUTOR_USES
from controller.crd import GROUP, PLURAL
from controller.kube import LEASES, Use


class Rule(NamedTuple):
    """One RBAC ``rules`` entry."""

    group: str
    resource: str
    verbs: tuple[str, ...]

    def as_manifest(self) -> dict:
        return {"apiGroups": [self.group], "resources": [self.resource], "verbs": list(self.verbs)}


IMPLIED = frozenset({Use("update", GROUP, f"{PLURAL}/finalizers")})


def uses_in(module: ModuleType) -> set[Use]:
    """Every ``Use(verb, *RESOURCE)`` written inside a function of ``module`` (the API calls; a
    module-level constant such as ``ARGO_USES`` is not a call), ``RESOURCE`` a name in ``module``."""
    tree = ast.parse(inspect.getsource(module))
    found: set[Use] = set()
    for function in ast.walk(tree):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(function):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Use" and node.args:
                verb = ast.literal_eval(node.args[0])
                starred = node.args[1]
                assert isinstance(starred, ast.Starred) and isinstance(starred.value, ast.Name), ast.dump(node)
                group, resource = getattr(module, starred.value.id)
                found.add(Use(verb, group, resource))
    return found


def code_uses() -> set[Use]:
    """Every ``Use(verb, *RESOURCE)`` written in ``controller.kube``, plus ``IMPLIED``."""
    return uses_in(kube) | set(IMPLIED)


def argo_uses() -> set[Use]:
    """Every ``Use`` the Argo executor's calls name in ``controller.argo`` (``ARGO_USES`` must equal it)."""
    return uses_in(argo)


def rules_for(uses: set[Use]) -> list[Rule]:
    """``uses`` grouped into rules, one per resource, verbs in a fixed order."""
    order = ("get", "list", "watch", "create", "update", "patch", "delete")
    by_resource: dict[tuple[str, str], set[str]] = {}
    for use in uses:
        by_resource.setdefault((use.group, use.resource), set()).add(use.verb)
    return [Rule(g, r, tuple(v for v in order if v in verbs)) for (g, r), verbs in sorted(by_resource.items())]


def cluster_rules(*, argo: bool = False) -> list[Rule]:
    """The ClusterRole (or, watching one namespace, the Role there): everything but Leases, and
    with ``argo`` the Workflow verbs of the Argo executor (``ARGO_USES``)."""
    uses = {u for u in code_uses() if (u.group, u.resource) != LEASES}
    return rules_for(uses | (set(ARGO_USES) if argo else set()))


def lease_rules() -> list[Rule]:
    """The Role in the controller's own namespace: leader election."""
    return rules_for({u for u in code_uses() if (u.group, u.resource) == LEASES})


def executor_rules() -> list[Rule]:
    """The Role of the children's ServiceAccount in a search's namespace under the Argo executor:
    what Argo's ``wait`` container (argoexec, emissary executor) does with the pod's token."""
    return rules_for(set(EXECUTOR_USES))
