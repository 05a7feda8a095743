"""Unit tests of the controller: CRD, Jobs, Workflows, RBAC, watch, status, HTTP (controller/)."""
