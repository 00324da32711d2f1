"""Drift of a Kubernetes cluster's Git-owned objects: the live StatefulSet, Services, PDB,
NetworkPolicy, RBAC and config ConfigMaps against what `pg_ops.render.manifests(spec)` renders.

Only the fields the rendered object sets are compared. Everything else in the live object is
the API server's or another controller's business and never counts as drift: status,
metadata.managedFields / resourceVersion / uid / creationTimestamp / generation, defaulted
fields (a Service's clusterIP, a port's protocol, a pod template's dnsPolicy…), annotations
ArgoCD or kubectl add. Lists are compared item by item in order (the API keeps the order of
containers, ports, volumes…); a list of another length is one drift naming both lengths.

pg_ops-owned objects (desired-state ConfigMap, credentials Secret, role labels) are not
rendered, so they are never compared: they change on purpose.
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass, field

from pg_ops.operations.context import ClusterContext

ABSENT = object()
SHOWN_CHARS = 80  # long values (config files, scripts) are shortened in messages


@dataclass(frozen=True)
class FieldDrift:
    object: str  # "StatefulSet/homelab"
    path: str  # "spec.template.spec.containers[0].image"
    live: builtins.object
    rendered: builtins.object

    def __str__(self) -> str:
        return f"{self.object} {self.path}: live {_show(self.live)}, rendered {_show(self.rendered)}"


@dataclass
class DriftReport:
    cluster: str
    checked: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    drifted: list[FieldDrift] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.missing and not self.drifted

    def lines(self) -> list[str]:
        return [f"{name}: missing (rendered, not in the cluster)" for name in self.missing] + \
            [str(d) for d in self.drifted]

    def summary(self) -> str:
        if self.passed:
            return f"cluster {self.cluster}: {len(self.checked)} Git-owned objects match the rendered manifests"
        return f"cluster {self.cluster}: drift in {len(self.lines())} field(s)/object(s): " + "; ".join(self.lines())


def _show(value: object) -> str:
    if value is ABSENT:
        return "<absent>"
    text = value if isinstance(value, str) else repr(value)
    text = " ".join(text.split()) if "\n" in text else text
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS - 1] + "…"


def _empty(value: object) -> bool:
    return value is ABSENT or value is None or value == {} or value == []


def _same_scalar(live: object, rendered: object) -> bool:
    # Numbers and quantities may come back as the other type (port 5432 / "5432").
    return live == rendered or (not isinstance(live, dict | list) and str(live) == str(rendered))


def compare_fields(rendered: object, live: object, path: str = "") -> list[tuple[str, object, object]]:
    """(path, live, rendered) for every field the rendered value sets that the live one differs in."""
    if isinstance(rendered, dict):
        if _empty(rendered):
            return []  # `emptyDir: {}` and the like: the server may drop or default an empty map
        if not isinstance(live, dict):
            return [(path, live, rendered)]
        out = []
        for key, value in rendered.items():
            out += compare_fields(value, live.get(key, ABSENT), f"{path}.{key}" if path else key)
        return out
    if isinstance(rendered, list):
        if _empty(rendered) and _empty(live):
            return []
        key = _merge_key(rendered)
        if key is not None and isinstance(live, list):
            # A list merged by key (containers, volumes, env, ports...): each rendered item is
            # compared with the live item of its key; items another manager added (an injected
            # sidecar, a volume) are theirs, as server-side apply keeps them, and not drift.
            by_key = {item.get(key): item for item in live if isinstance(item, dict)}
            out = []
            for i, want in enumerate(rendered):
                out += compare_fields(want, by_key.get(want[key], ABSENT), f"{path}[{i}]")
            return out
        if not isinstance(live, list) or len(live) != len(rendered):
            count = f"{len(live)} items" if isinstance(live, list) else live
            return [(path, count, f"{len(rendered)} items")]
        out = []
        for i, (want, have) in enumerate(zip(rendered, live, strict=True)):
            out += compare_fields(want, have, f"{path}[{i}]")
        return out
    if rendered is None:
        return []  # an explicit null in a manifest sets nothing
    return [] if _same_scalar(live, rendered) else [(path, live, rendered)]


# The merge keys Kubernetes's associative lists use (containers, volumes, env, imagePullSecrets:
# name; volumeMounts: mountPath; container ports: containerPort; Service ports: port, where each
# also has a name): the first that every rendered item has, uniquely.
MERGE_KEYS = ("name", "mountPath", "containerPort", "port")


def _merge_key(items: list) -> str | None:
    if not items or not all(isinstance(item, dict) for item in items):
        return None
    for key in MERGE_KEYS:
        values = [item.get(key) for item in items]
        if all(v is not None for v in values) and len(set(map(str, values))) == len(values):
            return key
    return None


def object_name(obj: dict) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def check_drift(ctx: ClusterContext) -> DriftReport:
    """Compare every Git-owned object of a Kubernetes cluster with its rendered manifest."""
    report = DriftReport(cluster=ctx.name)
    for want, live in ctx.platform.git_owned_objects():
        name = object_name(want)
        report.checked.append(name)
        if live is None:
            report.missing.append(name)
            continue
        body = {k: v for k, v in want.items() if k not in ("apiVersion", "kind")}
        report.drifted += [FieldDrift(name, path, have, value) for path, have, value in compare_fields(body, live)]
    ctx.log.info("%s", report.summary())
    return report
