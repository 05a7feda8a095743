"""The cluster side of EPNAS: the ``ArchitectureSearch`` controller.

Modules, by what they do:

* ``crd``      the CRD document, generated from ``epnas.spec.crd_openapi_schema()`` (pure).
* ``jobs``     the Job manifest builder (pure) and ``JobExecutor`` (one Job per child).
* ``status``   what the CR's status should say, from a step summary (pure).
* ``kube``     thin wrappers over the ``kubernetes`` client (all cluster I/O).
* ``metrics``  every Prometheus metric (``epnas_`` namespace).
* ``http``     ``/metrics``, ``/healthz``, ``/readyz``.
* ``runner``   one ``SearchLoop`` thread per CR.
* ``main``     the process: CR watch, dispatch, flags (``python -m controller``).

``controller`` imports ``epnas``, never ``child_trainer``.
"""

__all__ = ["crd", "jobs", "status", "kube", "metrics", "http", "runner", "main"]
