"""A small JSON client of the real API server for the stand-in node parts (TEST INFRASTRUCTURE).

Plain dicts in camelCase, as they are on the wire (the container runner, standin/containers.py,
works on dicts); a refusal raises ApiError (code, reason, message). `find` and `create` have the
shape the container runner reads Secrets, ConfigMaps and pods and writes Events through.
Each identity (a node's `system:node:<name>` certificate, an admin's) is one `RawApi`.
"""

from __future__ import annotations

import datetime
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

TIMEOUT_S = 10.0


class ApiError(Exception):
    """A refusal of the API server: its status code, reason and message."""

    def __init__(self, code: int, reason: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details or {}


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _prefix(api_version: str) -> str:
    return "/api/v1" if api_version == "v1" else f"/apis/{api_version}"


def path_of(api_version: str, resource: str, namespace: str | None, name: str | None = None,
            sub: str | None = None) -> str:
    path = _prefix(api_version)
    if namespace:
        path += f"/namespaces/{namespace}"
    path += f"/{resource}"
    if name:
        path += f"/{name}"
    if sub:
        path += f"/{sub}"
    return path


class RawApi:
    def __init__(self, server: str, ca: Path, cert: tuple[Path, Path]):
        self.server = server
        self._context = ssl.create_default_context(cafile=str(ca))
        self._context.load_cert_chain(str(cert[0]), str(cert[1]))

    def request(self, method: str, path: str, body: dict | None = None, *, query: dict | None = None,
                content_type: str = "application/json", timeout: float = TIMEOUT_S) -> dict:
        url = f"{self.server}{path}"
        if query:
            url += "?" + urllib.parse.urlencode(query, doseq=True)
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": content_type, "Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, context=self._context, timeout=timeout) as reply:
                raw = reply.read()
        except urllib.error.HTTPError as exc:
            try:
                status = json.loads(exc.read())
            except ValueError:
                status = {}
            raise ApiError(exc.code, status.get("reason", ""), status.get("message", str(exc)),
                           status.get("details")) from None
        return json.loads(raw) if raw else {}

    # -- the verbs the node parts use
    def find(self, key: tuple[str, str, str, str]) -> dict | None:
        """The object or None (404): the fake store's `find`, so the container runner can read
        Secrets, ConfigMaps and pods through it. Any other refusal raises."""
        api_version, resource, namespace, name = key
        try:
            return self.request("GET", path_of(api_version, resource, namespace or None, name))
        except ApiError as exc:
            if exc.code == 404:
                return None
            raise

    def create(self, key: tuple[str, str, str, str], body: dict, manager: str = "stand-in") -> dict:
        api_version, resource, namespace, _ = key
        obj = {"apiVersion": api_version, "kind": _kind(resource), **body}
        return self.request("POST", path_of(api_version, resource, namespace or None), obj,
                            query={"fieldManager": manager})

    def list(self, api_version: str, resource: str, namespace: str | None = None, **query) -> list[dict]:
        return self.request("GET", path_of(api_version, resource, namespace), query=query or None).get("items", [])

    def patch(self, api_version: str, resource: str, namespace: str | None, name: str, body: dict,
              sub: str | None = None, strategic: bool = True) -> dict:
        kind = "strategic-merge-patch+json" if strategic else "merge-patch+json"
        return self.request("PATCH", path_of(api_version, resource, namespace, name, sub), body,
                            content_type=f"application/{kind}")

    def apply(self, api_version: str, resource: str, namespace: str | None, name: str, body: dict,
              manager: str) -> dict:
        return self.request("PATCH", path_of(api_version, resource, namespace, name), body,
                            query={"fieldManager": manager, "force": "true"},
                            content_type="application/apply-patch+yaml")

    def delete(self, api_version: str, resource: str, namespace: str | None, name: str,
               body: dict | None = None) -> dict:
        return self.request("DELETE", path_of(api_version, resource, namespace, name), body)


def _kind(resource: str) -> str:
    return {"events": "Event", "persistentvolumes": "PersistentVolume", "pods": "Pod", "nodes": "Node",
            "leases": "Lease", "namespaces": "Namespace", "serviceaccounts": "ServiceAccount",
            "storageclasses": "StorageClass", "secrets": "Secret", "configmaps": "ConfigMap"}[resource]
