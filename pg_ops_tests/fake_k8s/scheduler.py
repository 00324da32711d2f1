"""The fake cluster's scheduler: which node a pod goes to, or why it stays Pending, with the
rules pg_ops's manifests depend on:

- nodes marked unschedulable (`kubectl cordon`) and nodes the node controller found unreachable
  (taint node.kubernetes.io/unreachable) take no new pod;
- a claim on a node-local class (K3s's `local-path`, also the default class when a claim names
  none) is pinned to the node its volume was created on (the PV's node affinity); a claim of any
  other class attaches anywhere;
- a ReadWriteOncePod claim another pod object uses keeps the pod Pending;
- pod anti-affinity on kubernetes.io/hostname: `required…` excludes nodes that run a matching
  pod, `preferred…` only ranks them lower;
- a pod a test holds (FakeKubernetes.hold_pending) is Unschedulable, whatever the nodes.

The messages follow the real scheduler's ("0/3 nodes are available: 1 node(s) were
unschedulable, 2 node(s) didn't match pod anti-affinity rules."). Not modelled: resources
(requests are not counted), taints other than unreachable, topology keys other than hostname.

Test infrastructure only: not part of pg_ops.
"""

from __future__ import annotations

from pg_ops_tests.fake_k8s.store import Store, labels_match

HOSTNAME = "kubernetes.io/hostname"
SELECTED_NODE = "volume.kubernetes.io/selected-node"  # set on a claim bound to a node-local volume
UNREACHABLE_TAINT = "node.kubernetes.io/unreachable"


def claim_names(pod: dict) -> list[str]:
    return [v["persistentVolumeClaim"]["claimName"] for v in pod["spec"].get("volumes", [])
            if "persistentVolumeClaim" in v]


def _selector_matches(selector: dict, labels: dict) -> bool:
    if not labels_match(selector.get("matchLabels") or {}, labels):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def _anti_affinity_terms(pod: dict) -> tuple[list[dict], list[dict]]:
    anti = (pod["spec"].get("affinity") or {}).get("podAntiAffinity") or {}
    required = anti.get("requiredDuringSchedulingIgnoredDuringExecution") or []
    preferred = [t["podAffinityTerm"] for t in anti.get("preferredDuringSchedulingIgnoredDuringExecution") or []]
    return ([t for t in required if t.get("topologyKey") == HOSTNAME],
            [t for t in preferred if t.get("topologyKey") == HOSTNAME])


class Scheduler:
    def __init__(self, store: Store, node_local_classes: set[str], default_class: str):
        self.store = store
        self.node_local_classes = node_local_classes
        self.default_class = default_class

    def storage_class(self, claim: dict) -> str:
        return claim["spec"].get("storageClassName") or self.default_class

    def node_local(self, claim: dict) -> bool:
        return self.storage_class(claim) in self.node_local_classes

    def choose(self, pod: dict, held: bool) -> tuple[str | None, str]:
        """(node, "") or (None, why it stays Pending)."""
        ns = pod["metadata"]["namespace"]
        nodes = self.store.list("v1", "nodes", None)["items"]
        total = len(nodes)
        if held:
            return None, f"0/{total} nodes are available: {total} Insufficient memory."
        pinned: str | None = None
        for claim_name in claim_names(pod):
            claim = self.store.find(("v1", "persistentvolumeclaims", ns, claim_name))
            if claim is None:
                return None, f'persistentvolumeclaim "{claim_name}" not found'
            if claim["metadata"].get("deletionTimestamp"):
                return None, f'persistentvolumeclaim "{claim_name}" is being deleted'
            if "ReadWriteOncePod" in (claim["spec"].get("accessModes") or []) and any(
                    claim_name in claim_names(other) for other in self.store.list("v1", "pods", ns)["items"]
                    if other["metadata"]["uid"] != pod["metadata"]["uid"]):
                return None, (f"0/{total} nodes are available: 1 node has pod using PersistentVolumeClaim with the "
                              f"same name and ReadWriteOncePod access mode.")
            if self.node_local(claim):
                pinned = (claim["metadata"].get("annotations") or {}).get(SELECTED_NODE) or pinned
        required, preferred = _anti_affinity_terms(pod)
        others = [p for p in self.store.list("v1", "pods", ns)["items"]
                  if p["metadata"]["uid"] != pod["metadata"]["uid"] and p["spec"].get("nodeName")]
        reasons: dict[str, int] = {}
        feasible = []
        for node in nodes:
            name = node["metadata"]["name"]
            taints = {t["key"] for t in node["spec"].get("taints") or []}
            if pinned and name != pinned:
                reasons["node(s) didn't match PersistentVolume's node affinity"] = \
                    reasons.get("node(s) didn't match PersistentVolume's node affinity", 0) + 1
                continue
            if node["spec"].get("unschedulable"):
                reasons["node(s) were unschedulable"] = reasons.get("node(s) were unschedulable", 0) + 1
                continue
            if UNREACHABLE_TAINT in taints:
                key = f"node(s) had untolerated taint {{{UNREACHABLE_TAINT}: }}"
                reasons[key] = reasons.get(key, 0) + 1
                continue
            here = [p for p in others if p["spec"]["nodeName"] == name]
            if any(_selector_matches(t.get("labelSelector") or {}, p["metadata"].get("labels") or {})
                   for t in required for p in here):
                key = "node(s) didn't match pod anti-affinity rules"
                reasons[key] = reasons.get(key, 0) + 1
                continue
            soft = sum(1 for t in preferred for p in here
                       if _selector_matches(t.get("labelSelector") or {}, p["metadata"].get("labels") or {}))
            feasible.append((soft, len(here), name))
        if not feasible:
            detail = ", ".join(f"{n} {why}" for why, n in sorted(reasons.items()))
            return None, f"0/{total} nodes are available: {detail}."
        return min(feasible)[2], ""
