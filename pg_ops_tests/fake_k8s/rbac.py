"""Authentication and RBAC of the fake API server, the way kube-apiserver decides them.

- Bearer tokens name an identity: PG_OPS_TOKEN is pg_ops's ServiceAccount
  (system:serviceaccount:dagster:pg-ops, what the kubeconfig the tests write carries, so every
  call the Kubernetes platform makes is authorized like in production); ADMIN_TOKEN is a
  cluster admin (group system:masters: no RBAC check), for test setup that plays the role of a
  person with kubectl (bootstrapping the Role/RoleBinding, objects a test plants). No token or an
  unknown one: 401.
- A request is allowed when a rule of a Role (through a RoleBinding in the request's namespace)
  or of a ClusterRole (through a RoleBinding there or a ClusterRoleBinding) matches it: apiGroups,
  resources (`pods/exec` for a subresource, `*`, `*/exec`), verbs, and resourceNames, which only
  match a request that names an object (never a create or a list). The objects are read from the
  store at each request, as the real authorizer reads its informers.
- A refusal is the real 403 Status: `<resource> "<name>" is forbidden: User "<user>" cannot
  <verb> resource "<resource[/sub]>" in API group "<group>" in the namespace "<ns>"`.

Test infrastructure only: not part of pg_ops.
"""

from __future__ import annotations

from dataclasses import dataclass

from pg_ops_tests.fake_k8s.store import ApiError, Store

PG_OPS_TOKEN = "pg-ops-service-account-token"
ADMIN_TOKEN = "cluster-admin-token"
RBAC_API = "rbac.authorization.k8s.io/v1"


@dataclass(frozen=True)
class Identity:
    user: str
    groups: tuple[str, ...]

    @property
    def superuser(self) -> bool:
        return "system:masters" in self.groups

    def is_subject(self, subject: dict, binding_namespace: str) -> bool:
        kind, name = subject.get("kind"), subject.get("name")
        if kind == "ServiceAccount":
            namespace = subject.get("namespace") or binding_namespace
            return self.user == f"system:serviceaccount:{namespace}:{name}"
        if kind == "User":
            return self.user == name
        if kind == "Group":
            return name in self.groups
        return False


def _service_account(namespace: str, name: str) -> Identity:
    return Identity(f"system:serviceaccount:{namespace}:{name}",
                    ("system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"))


TOKENS = {
    PG_OPS_TOKEN: _service_account("dagster", "pg-ops"),
    ADMIN_TOKEN: Identity("kubernetes-admin", ("system:masters", "system:authenticated")),
}


def authenticate(authorization: str | None) -> Identity:
    token = (authorization or "").removeprefix("Bearer ").strip()
    identity = TOKENS.get(token)
    if identity is None:
        raise ApiError(401, "Unauthorized", "Unauthorized")
    return identity


@dataclass(frozen=True)
class Attributes:
    """What the authorizer sees of one request."""

    verb: str
    group: str
    resource: str
    subresource: str | None
    namespace: str
    name: str | None

    @property
    def full_resource(self) -> str:
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource


def _matches(rule: dict, attrs: Attributes) -> bool:
    if not any(g in ("*", attrs.group) for g in rule.get("apiGroups", [])):
        return False
    if not any(v in ("*", attrs.verb) for v in rule.get("verbs", [])):
        return False
    resources = rule.get("resources", [])
    if not ("*" in resources or attrs.full_resource in resources
            or (attrs.subresource and f"*/{attrs.subresource}" in resources)):
        return False
    names = rule.get("resourceNames") or []
    return not names or (bool(attrs.name) and attrs.name in names)


def _rules(store: Store, identity: Identity, namespace: str) -> list[dict]:
    rules: list[dict] = []
    bindings = [(b, namespace) for b in store.list(RBAC_API, "rolebindings", namespace)["items"]] if namespace else []
    bindings += [(b, "") for b in store.list(RBAC_API, "clusterrolebindings", None)["items"]]
    for binding, where in bindings:
        if not any(identity.is_subject(s, where) for s in binding.get("subjects") or []):
            continue
        ref = binding.get("roleRef") or {}
        if ref.get("kind") == "Role" and where:
            role = store.find((RBAC_API, "roles", where, ref.get("name", "")))
        elif ref.get("kind") == "ClusterRole":
            role = store.find((RBAC_API, "clusterroles", "", ref.get("name", "")))
        else:
            role = None
        rules += (role or {}).get("rules") or []
    return rules


def allowed(store: Store, identity: Identity, attrs: Attributes) -> bool:
    return identity.superuser or any(_matches(rule, attrs) for rule in _rules(store, identity, attrs.namespace))


def forbidden(identity: Identity, attrs: Attributes) -> ApiError:
    what = f'{attrs.resource} "{attrs.name}"' if attrs.name else attrs.resource
    where = f'in the namespace "{attrs.namespace}"' if attrs.namespace else "at the cluster scope"
    details = {"name": attrs.name, "kind": attrs.resource} if attrs.name else {"kind": attrs.resource}
    return ApiError(403, "Forbidden", f'{what} is forbidden: User "{identity.user}" cannot {attrs.verb} resource '
                                      f'"{attrs.full_resource}" in API group "{attrs.group}" {where}', details)
