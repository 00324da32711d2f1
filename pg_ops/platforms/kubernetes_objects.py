"""Any manifest (a dict with apiVersion/kind/metadata) as an API object: server-side apply it
with pg_ops's field manager, or read it back. Used for the Git-owned objects when a cluster is
not GitOps-managed (`kubernetes.gitops: false`), and to check they exist when it is.

Core (v1) kinds go through CoreV1Api's typed methods; every other group (apps, policy,
networking.k8s.io, rbac…, and custom resources such as ServiceMonitor) through
CustomObjectsApi, whose paths are the generic /apis/<group>/<version>/… ones.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pg_ops.platforms.kubernetes_api import KubernetesApi
from pg_ops.render import names as names
from pg_ops.render.names import plural

APPLY_CONTENT_TYPE = "application/apply-patch+yaml"
CLUSTER_SCOPED_CORE = {"Namespace", "PersistentVolume", "Node"}


def _snake(kind: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", kind).lower()


def describe(obj: dict) -> str:
    """'statefulset postgresql/homelab': how errors name an object."""
    meta = obj.get("metadata", {})
    where = f"{meta['namespace']}/" if meta.get("namespace") else ""
    return f"{obj['kind'].lower()} {where}{meta.get('name', '?')}"


class ObjectClient:
    def __init__(self, api: KubernetesApi):
        self.api = api

    def apply(self, obj: dict, *, force: bool = True) -> None:
        """Server-side apply as field manager `pg-ops`. force=True takes over fields another
        manager set (pg_ops is the applier when the cluster is not GitOps-managed).

        An apply cannot remove what another manager ADDED to a list merged by key (a Service port
        someone added with `kubectl edit`: the rendered port and theirs both stay, and the API
        server refuses the result, 422 "Duplicate value"). So when an apply of an existing object
        is refused as invalid, what the manifest sets is written over the live object (a JSON
        patch of its top-level sections: the same `patch` verb, the server's own defaulting and
        allocated values such as a ClusterIP kept) and the apply is made again, which then owns
        the fields. What the server refuses even then (an immutable field) is raised as the
        apply's error."""
        from pg_ops.platforms.kubernetes_api import KubernetesError

        try:
            self._apply(obj, force)
        except KubernetesError as exc:
            if exc.status != 422 or not self.exists(obj):
                raise
            try:
                self._overwrite(obj)
            except KubernetesError:
                raise exc from None  # refused either way (an immutable field): the apply's own words
            self._apply(obj, force)

    def _overwrite(self, obj: dict) -> None:
        ops = [{"op": "add", "path": f"/{key}", "value": value} for key, value in obj.items()
               if key not in ("apiVersion", "kind", "metadata", "status")]
        self._patch("overwrite", obj, ops, {"_content_type": "application/json-patch+json"})

    def _apply(self, obj: dict, force: bool) -> None:
        self._patch("apply", obj, obj, {"force": force, "_content_type": APPLY_CONTENT_TYPE})

    def _patch(self, verb: str, obj: dict, body: Any, options: dict[str, Any]) -> None:
        """A PATCH of the object the manifest names, as field manager `pg-ops`, through the
        typed CoreV1Api for core kinds and CustomObjectsApi's generic paths for the rest."""
        kind, meta = obj["kind"], obj["metadata"]
        group, _, version = obj["apiVersion"].rpartition("/")
        options = {"field_manager": names.FIELD_MANAGER, **options}
        what = describe(obj)
        if not group:
            if kind in CLUSTER_SCOPED_CORE:
                self.api.call(verb, what, getattr(self.api.core, f"patch_{_snake(kind)}"), meta["name"], body,
                              **options)
            else:
                self.api.call(verb, what, getattr(self.api.core, f"patch_namespaced_{_snake(kind)}"),
                              meta["name"], meta["namespace"], body, **options)
        elif meta.get("namespace"):
            self.api.call(verb, what, self.api.custom.patch_namespaced_custom_object, group, version,
                          meta["namespace"], plural(kind), meta["name"], body, **options)
        else:
            self.api.call(verb, what, self.api.custom.patch_cluster_custom_object, group, version,
                          plural(kind), meta["name"], body, **options)

    def exists(self, obj: dict) -> bool:
        return self.read(obj) is not None

    def read(self, obj: dict) -> dict | None:
        """The live object a manifest names, as the API server returns it (plain JSON, with
        status and server-populated fields); None when it does not exist."""
        kind, meta = obj["kind"], obj["metadata"]
        group, _, version = obj["apiVersion"].rpartition("/")
        what = describe(obj)
        raw = {"missing_ok": True, "_preload_content": False}  # plain JSON, for every kind alike
        if not group:
            if kind in CLUSTER_SCOPED_CORE:
                found = self.api.call("get", what, getattr(self.api.core, f"read_{_snake(kind)}"), meta["name"], **raw)
            else:
                found = self.api.call("get", what, getattr(self.api.core, f"read_namespaced_{_snake(kind)}"),
                                      meta["name"], meta["namespace"], **raw)
        elif meta.get("namespace"):
            found = self.api.call("get", what, self.api.custom.get_namespaced_custom_object, group, version,
                                  meta["namespace"], plural(kind), meta["name"], **raw)
        else:
            found = self.api.call("get", what, self.api.custom.get_cluster_custom_object, group, version,
                                  plural(kind), meta["name"], **raw)
        return None if found is None else json.loads(found.data)
