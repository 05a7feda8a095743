"""Where a search's data lives in a shared store, and which stores a search may name (pure).

* ``search_location``: ``<spec.store.uri>/<namespace>/<name>/<uid>``.  Two namespaces that
  share a store never collide, and a search deleted and created again (a new uid) starts
  fresh instead of silently resuming the old one; the old data stays where it was.  A user
  who wants the old one continued says so: ``spec.store.resumeUid`` names its uid (only a
  search of the same namespace and name can be named, so one tenant cannot reach another's).
* ``StorePolicy``: the controller writes with its own credentials, so an installation says
  which stores searches may use (``--allowed-store``/``--allowed-endpoint``, chart values
  ``store.allowed``/``store.allowedEndpoints``).  Empty lists allow any store.
"""

from __future__ import annotations

import dataclasses
import urllib.parse

from epnas.store import join_uri


def search_location(root: str, *, namespace: str, name: str, uid: str, resume_uid: str | None = None) -> str:
    """The store URI of one ArchitectureSearch object's data."""
    return join_uri(root, f"{namespace}/{name}/{resume_uid or uid}")


def _normal(uri: str) -> str:
    return uri.rstrip("/")


@dataclasses.dataclass(frozen=True)
class StorePolicy:
    """The stores an installation lets searches use: URI prefixes and S3 endpoints."""

    uris: tuple[str, ...] = ()
    endpoints: tuple[str, ...] = ()

    def refusal(self, uri: str, endpoint: str | None) -> str | None:
        """Why ``uri`` at ``endpoint`` is not allowed, or ``None`` when it is."""
        path = urllib.parse.urlsplit(uri).path
        if any(part in (".", "..") for part in path.split("/")):
            return f"spec.store.uri {uri!r} has '.' or '..' path segments"
        if self.uris and not any(
            _normal(uri) == _normal(a) or _normal(uri).startswith(_normal(a) + "/") for a in self.uris
        ):
            return f"spec.store.uri {uri!r} is not under a store this installation allows ({', '.join(self.uris)})"
        if self.endpoints and _normal(endpoint or "") not in {_normal(e) for e in self.endpoints}:
            shown = repr(endpoint) if endpoint else "(none: AWS S3)"
            return (
                f"spec.store.endpoint {shown} is not an endpoint this installation allows ({', '.join(self.endpoints)})"
            )
        return None
