"""Metadata every rendered object carries: name, namespace, labels, and checkov skips."""

from __future__ import annotations

from pg_ops.render import names as k
from pg_ops.spec import ClusterSpec

MANAGED_BY = "pg-ops-render"  # Git-owned; pg_ops's own objects carry k.FIELD_MANAGER instead


def labels(spec: ClusterSpec, component: str) -> dict[str, str]:
    return {**k.selector_labels(spec), k.LABEL_COMPONENT: component, k.LABEL_MANAGED_BY: MANAGED_BY}


def metadata(spec: ClusterSpec, name: str, component: str, *, annotations: dict | None = None,
             namespace: str | None = None) -> dict:
    meta = {"name": name, "namespace": namespace or spec.kubernetes.namespace,
            "labels": labels(spec, component)}
    if annotations:
        meta["annotations"] = annotations
    return meta


def checkov_skips(**reasons: str) -> dict[str, str]:
    """checkov's in-object skip annotations (`checkov.io/skipN: CKV_K8S_xx=reason`): every check a
    manifest does not pass is skipped here, next to the object, with the reason written down."""
    return {f"checkov.io/skip{i}": f"{check}={reason}" for i, (check, reason) in enumerate(reasons.items(), 1)}


def object_key(obj: dict) -> tuple[str, str, str]:
    return obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"]
