"""The desired-state record of a Kubernetes cluster: one pg_ops-owned ConfigMap, key STATE_KEY
holding DesiredState.to_text() (the member scripts read it as a mounted file).

Compare-and-swap has two guards: the record's own `version` must be the one the caller read,
and the write carries the ConfigMap's resourceVersion, so a concurrent writer between our
read and our write makes the API answer 409, which becomes a ConflictError (retried by
state.update_state). Creation answers 409 AlreadyExists to the loser of a race.
"""

from __future__ import annotations

from pg_ops.errors import ConflictError
from pg_ops.platforms.kubernetes_api import KubernetesApi
from pg_ops.render import names as names
from pg_ops.spec import ClusterSpec
from pg_ops.state import DesiredState


def owned_metadata(spec: ClusterSpec, name: str) -> dict:
    """Metadata of a pg_ops-owned object. No app.kubernetes.io/instance label on purpose:
    ArgoCD tracks by that label by default and would prune what Git does not hold."""
    return {
        "name": name,
        "namespace": spec.kubernetes.namespace,
        "labels": {names.LABEL_NAME: "postgresql", names.LABEL_CLUSTER: spec.name,
                   names.LABEL_MANAGED_BY: names.FIELD_MANAGER},
    }


class ConfigMapStateStore:
    def __init__(self, api: KubernetesApi, spec: ClusterSpec):
        self.api = api
        self.spec = spec
        self.namespace = spec.kubernetes.namespace
        self.name = names.state_configmap(spec)

    @property
    def what(self) -> str:
        return f"configmap {self.namespace}/{self.name}"

    def _get(self):
        return self.api.call("get", self.what, self.api.core.read_namespaced_config_map,
                             self.name, self.namespace, missing_ok=True)

    def _parse(self, configmap) -> DesiredState | None:
        text = (configmap.data or {}).get(names.STATE_KEY)
        if not text:
            return None
        return DesiredState.from_text(text, source=self.what)

    def read(self) -> DesiredState | None:
        configmap = self._get()
        return None if configmap is None else self._parse(configmap)

    def write(self, new: DesiredState, expected_version: int | None) -> DesiredState:
        stored = new.model_copy(update={"version": (expected_version or 0) + 1})
        body = {"metadata": owned_metadata(self.spec, self.name), "data": {names.STATE_KEY: stored.to_text()}}
        current = self._get()
        current_state = self._parse(current) if current is not None else None
        current_version = current_state.version if current_state else None
        if current_version != expected_version:
            raise ConflictError(f"{self.what}: desired state changed concurrently (version {current_version}, "
                                f"expected {expected_version})")
        if current is None:
            self.api.call("create", self.what, self.api.core.create_namespaced_config_map, self.namespace, body,
                          field_manager=names.FIELD_MANAGER)
        else:
            body["metadata"]["resourceVersion"] = current.metadata.resource_version
            body["metadata"]["labels"] = {**(current.metadata.labels or {}), **body["metadata"]["labels"]}
            body["data"] = {**(current.data or {}), **body["data"]}
            self.api.call("update", self.what, self.api.core.replace_namespaced_config_map, self.name,
                          self.namespace, body, field_manager=names.FIELD_MANAGER)
        return stored
