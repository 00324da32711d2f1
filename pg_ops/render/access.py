"""Who may reach and disrupt the members: PodDisruptionBudgets, NetworkPolicy and RBAC."""

from __future__ import annotations

from pg_ops.render import names as k
from pg_ops.render.meta import metadata
from pg_ops.spec import ClusterSpec

# RBAC objects an admin applies (pg_ops can grant itself nothing: Kubernetes refuses a Role
# its creator does not already hold, and the RoleBinding is what gives pg_ops any access), and
# everything in the drill namespace (where pg_ops may only run drill pods).
# With `kubernetes.gitops: false` pg_ops applies every other Git-owned object, not these.
ADMIN_APPLIED_KINDS = ("Role", "RoleBinding")


def admin_applied(spec: ClusterSpec, obj: dict) -> bool:
    return obj["kind"] in ADMIN_APPLIED_KINDS or obj["metadata"].get("namespace") == k.drill_namespace(spec)
RBAC_API = "rbac.authorization.k8s.io/v1"


def primary_budget_name(spec: ClusterSpec) -> str:
    return f"{spec.name}-primary"


def pod_disruption_budgets(spec: ClusterSpec) -> list[dict]:
    """Two budgets that never select the same pod (the eviction API refuses a pod two budgets
    select), as CloudNativePG keeps them:

    - `<cluster>-primary` (role=primary, minAvailable 1): `kubectl drain` cannot evict the
      primary; switch over first (docs/runbooks/postgresql-node-maintenance.md), then the label
      is on another pod and the old primary is an ordinary replica.
    - `<cluster>` (every other member, also one whose role label pg_ops has not set yet):
      one at a time, as an INTEGER `minAvailable: members - 2` (CloudNativePG's replica budget).
      Not `maxUnavailable: 1`: for maxUnavailable (and percentages) the disruption controller
      takes the expected count from the pods' controller, the StatefulSet's `replicas` (all the
      members), not the pods the budget selects, so 2 healthy replicas of 3 members gave
      `disruptionsAllowed: 0` and every drain hung (issue 21; pg_ops_tests/test_control_plane.py
      shows it on the real controller). With an integer minAvailable the expected count is the
      pods selected. A replica that is not Ready (crash-looping, lagging) may still be evicted:
      it serves nobody, and a budget held by it must not block a drain forever.
    """
    members = k.selector_labels(spec)
    replicas_kept = max(len(spec.member_names) - 2, 0)  # all replicas but one
    primary = {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
               "metadata": metadata(spec, primary_budget_name(spec), "database"),
               "spec": {"minAvailable": 1,
                        "selector": {"matchLabels": {**members, k.LABEL_ROLE: k.ROLE_PRIMARY}}}}
    others = {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
              "metadata": metadata(spec, spec.name, "database"),
              "spec": {"minAvailable": replicas_kept, "unhealthyPodEvictionPolicy": "AlwaysAllow",
                       "selector": {"matchLabels": members,
                                    "matchExpressions": [{"key": k.LABEL_ROLE, "operator": "NotIn",
                                                          "values": [k.ROLE_PRIMARY]}]}}}
    return [primary, others]


def _tcp(port: int) -> dict:
    return {"protocol": "TCP", "port": port}


def network_policy(spec: ClusterSpec) -> dict:
    """Ingress: PostgreSQL from pods of any namespace (applications, pg_ops's runs) and from the
    external source ranges (the LoadBalancer keeps their address); metrics from any namespace
    (Prometheus). Egress: peers (clone, rewind, streaming) and cluster DNS only."""
    members = {"podSelector": {"matchLabels": k.selector_labels(spec)}}
    any_pod: dict[str, dict] = {"namespaceSelector": {}}
    external = [{"ipBlock": {"cidr": cidr}} for cidr in spec.kubernetes.services.external.source_ranges]
    dns = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
           "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": metadata(spec, spec.name, "database"),
        "spec": {
            "podSelector": {"matchLabels": k.selector_labels(spec)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [
                {"from": [any_pod, *external], "ports": [_tcp(k.PORT)]},
                {"from": [any_pod], "ports": [_tcp(k.METRICS_PORT)]},
            ],
            "egress": [
                {"to": [members], "ports": [_tcp(k.PORT)]},
                {"to": [dns], "ports": [{"protocol": "UDP", "port": 53}, _tcp(53)]},
                *archive_egress(spec),
            ],
        },
    }


def archive_egress(spec: ClusterSpec) -> list[dict]:
    """WAL archiving: the primary's archive command reaches the S3 endpoint (its port, any address:
    an object store is often outside the cluster)."""
    from urllib.parse import urlparse

    store = spec.backups.store
    if not spec.backups.wal.enabled or store.type != "s3":
        return []
    url = urlparse(store.endpoint_url or "https://s3.amazonaws.com")
    return [{"ports": [_tcp(url.port or (80 if url.scheme == "http" else 443))]}]


def member_service_account(spec: ClusterSpec) -> dict:
    return {"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": metadata(spec, k.member_service_account(spec), "database"),
            "automountServiceAccountToken": False}


def _rule(group: str, resource: str, verbs: list[str], names: list[str] | None = None) -> dict:
    rule = {"apiGroups": [group], "resources": [resource]}
    if names:
        rule["resourceNames"] = sorted(names)
    rule["verbs"] = verbs
    return rule


def _owned_rules(spec: ClusterSpec) -> list[dict]:
    """What the Kubernetes platform does with the objects pg_ops owns (kubernetes.py). `create`
    cannot be limited by resourceNames in RBAC; everything else is limited to the names pg_ops
    uses. No `create pods` here: it would let pg_ops read every Secret of the namespace by
    mounting it (the drills' pods are in their own namespace, drill_access)."""
    members = k.member_pod_names(spec)
    rules = [
        _rule("", "pods", ["get", "list", "delete"]),             # members (fence, rebuild)
        _rule("", "pods", ["patch"], members),                    # the role label
        # A WebSocket exec is a GET: `get` is what Kubernetes <= 1.34 checks, and 1.35 checks
        # `create` as well (AuthorizePodWebsocketUpgradeCreatePermission, on by default).
        _rule("", "pods/exec", ["get", "create"], members),
        _rule("", "pods/log", ["get"], members),
        _rule("", "configmaps", ["create"]),                       # the desired state, once
        # delete: the record of a cluster whose recovery (`pg-ops recover`) failed, with its pods
        _rule("", "configmaps", ["get", "update", "delete"], [k.state_configmap(spec)]),
        # the credentials once; delivered ones; a recovery's inputs (`pg-ops recover`), while it runs
        _rule("", "secrets", ["create", "delete"]),
        _rule("", "secrets", ["get", "update"], [k.credentials_secret(spec)]),  # update: a role added
        *([_rule("", "secrets", ["get", "update"], here)]    # applications' credentials delivered here
          if (here := app_secret_names(spec, delivered_only=True).get(spec.kubernetes.namespace)) else []),
        # patch: a larger kubernetes.storage grows the claims (KubernetesPlatform.grow_storage)
        _rule("", "persistentvolumeclaims", ["get", "delete", "patch"], [k.data_claim(m) for m in members]),
    ]
    store = spec.backups.store
    secret = getattr(store, "credentials_secret", None)
    if secret:
        # The backup store's keys, read where the backend reads them: this namespace.
        rules.append(_rule("", "secrets", ["get"], [secret]))
    return rules


def _git_owned_rules(spec: ClusterSpec, git_owned: list[dict]) -> list[dict]:
    """Read access to every Git-owned object by name (existence check, drift check); with
    `gitops: false` also what server-side apply needs (patch by name, create by kind), except on
    the RBAC objects an admin applies."""
    names: dict[tuple[str, str], list[str]] = {}
    applied: set[tuple[str, str]] = set()
    for obj in git_owned:
        group = obj["apiVersion"].rpartition("/")[0]
        key = (group, k.plural(obj["kind"]))
        names.setdefault(key, []).append(obj["metadata"]["name"])
        if not spec.kubernetes.gitops and not admin_applied(spec, obj):
            applied.add(key)
    rules = []
    for (group, resource), found in sorted(names.items()):
        verbs = ["get", "patch"] if (group, resource) in applied else ["get"]
        if (group, resource) == ("apps", "statefulsets") and (group, resource) in applied:
            verbs.append("delete")  # replaced (pods orphaned) when its claim template grows: grow_storage
        rules.append(_rule(group, resource, verbs, found))
        if (group, resource) in applied:
            rules.append(_rule(group, resource, ["create"]))
    return rules


def pg_ops_role_rules(spec: ClusterSpec, others: list[dict]) -> list[dict]:
    """The only verbs pg_ops may use in a cluster's namespace: the Role. `others` is every other
    Git-owned object of the cluster (the Role itself is added here)."""
    role = {"apiVersion": RBAC_API, "kind": "Role", "metadata": {"name": k.role_name(spec)}}
    return _owned_rules(spec) + _git_owned_rules(spec, [*others, role])


def pg_ops_role(spec: ClusterSpec, others: list[dict]) -> dict:
    return {"apiVersion": RBAC_API, "kind": "Role",
            "metadata": metadata(spec, k.role_name(spec), "rbac"),
            "rules": pg_ops_role_rules(spec, others)}


def pg_ops_role_binding(spec: ClusterSpec) -> dict:
    """Grants the Role to pg_ops's ServiceAccount where the Dagster release runs it."""
    return {"apiVersion": RBAC_API, "kind": "RoleBinding",
            "metadata": metadata(spec, k.role_name(spec), "rbac"),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": k.role_name(spec)},
            "subjects": [{"kind": "ServiceAccount", "name": k.service_account(spec),
                          "namespace": k.PG_OPS_NAMESPACE}]}


def app_secret_names(spec: ClusterSpec, delivered_only: bool = False) -> dict[str, list[str]]:
    """namespace -> the application credentials Secrets pg_ops writes there: `<cluster>-<role>`
    and `<cluster>-<role>-read` per login role with a generated password, in each of its
    secret_namespaces (default: the cluster's); unless `delivered_only`, also those of a declared
    role without a password that names namespaces (pg_ops deletes them there)."""
    out: dict[str, list[str]] = {}
    roles = set(spec.password_roles())
    if not delivered_only:
        roles |= {r.name for r in spec.roles if r.secret_namespaces}
    for role in sorted(roles):
        declared = spec.role(role)
        for namespace in (declared.secret_namespaces if declared and declared.secret_namespaces
                          else [spec.kubernetes.namespace]):
            out.setdefault(namespace, []).extend([k.app_secret(spec, role), k.app_secret(spec, role) + "-read"])
    return {ns: sorted(names) for ns, names in out.items()}


def drill_access(spec: ClusterSpec) -> list[dict]:
    """In the drill namespace: a Role that lets pg_ops run restore-drill pods (create, watch and
    delete pods and their Secrets: random names, so not limited by name) and read this Role, its
    binding and the NetworkPolicy (drift), the RoleBinding granting it to pg_ops's
    ServiceAccount, and the drill pods' NetworkPolicy. Applied by an admin, like the cluster's
    Role; the namespace holds nothing else."""
    namespace, name = k.drill_namespace(spec), f"{k.role_name(spec)}-drills"
    return [
        {"apiVersion": RBAC_API, "kind": "Role", "metadata": metadata(spec, name, "rbac", namespace=namespace),
         "rules": [_rule("", "pods", ["get", "list", "create", "delete"]),
                   _rule("", "secrets", ["create", "delete"]),
                   _rule("networking.k8s.io", "networkpolicies", ["get"], [name]),
                   _rule("rbac.authorization.k8s.io", "roles", ["get"], [name]),
                   _rule("rbac.authorization.k8s.io", "rolebindings", ["get"], [name])]},
        {"apiVersion": RBAC_API, "kind": "RoleBinding", "metadata": metadata(spec, name, "rbac", namespace=namespace),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
         "subjects": [{"kind": "ServiceAccount", "name": k.service_account(spec), "namespace": k.PG_OPS_NAMESPACE}]},
        drill_network_policy(spec, name),
    ]


def drill_network_policy(spec: ClusterSpec, name: str) -> dict:
    """The drill pods hold a restored copy of the data (password hashes included) and, for a
    point-in-time drill, the store's keys: only pg_ops's runs (namespace `dagster`) reach their
    PostgreSQL; they reach only cluster DNS and, with WAL archiving on S3, the store's port (the
    recovery pod fetches the base backup and the WAL there; a dump drill's pod needs neither)."""
    dns = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
           "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}
    runs = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": k.PG_OPS_NAMESPACE}}}
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": metadata(spec, name, "drills", namespace=k.drill_namespace(spec)),
        "spec": {
            "podSelector": {"matchLabels": {k.LABEL_CLUSTER: spec.name},
                            "matchExpressions": [{"key": k.LABEL_SCRATCH, "operator": "Exists"}]},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [runs], "ports": [_tcp(k.PORT)]}],
            "egress": [{"to": [dns], "ports": [{"protocol": "UDP", "port": 53}, _tcp(53)]}, *archive_egress(spec)],
        },
    }


def app_secret_access(spec: ClusterSpec) -> list[dict]:
    """In each application namespace other than the cluster's: a Role that lets pg_ops write
    exactly its credentials Secrets there (`create` cannot be limited by name in RBAC; get,
    update and delete are), and read this Role and its binding (drift), and the RoleBinding
    granting it to pg_ops's ServiceAccount. Applied by an admin, like the cluster's Role."""
    objects: list[dict] = []
    for namespace, secrets in sorted(app_secret_names(spec).items()):
        if namespace == spec.kubernetes.namespace:
            continue
        name = f"{k.role_name(spec)}-credentials"
        objects.append({"apiVersion": RBAC_API, "kind": "Role",
                        "metadata": metadata(spec, name, "rbac", namespace=namespace),
                        "rules": [_rule("", "secrets", ["create"]),
                                  _rule("", "secrets", ["get", "update", "delete"], secrets),
                                  _rule("rbac.authorization.k8s.io", "roles", ["get"], [name]),
                                  _rule("rbac.authorization.k8s.io", "rolebindings", ["get"], [name])]})
        objects.append({"apiVersion": RBAC_API, "kind": "RoleBinding",
                        "metadata": metadata(spec, name, "rbac", namespace=namespace),
                        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
                        "subjects": [{"kind": "ServiceAccount", "name": k.service_account(spec),
                                      "namespace": k.PG_OPS_NAMESPACE}]})
    return objects
