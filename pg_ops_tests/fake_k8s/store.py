"""The fake API server's object store: the semantics the official client and pg_ops rely on.

- objects keyed by (group/version, resource, namespace, name), one resourceVersion counter;
- create answers 409 AlreadyExists, get/replace/patch/delete 404 NotFound;
- replace with a stale metadata.resourceVersion answers 409 Conflict;
- strategic-merge and JSON-merge patches merge maps (null deletes a key) and replace lists
  (real strategic merge merges some lists by key, e.g. containers by name: not needed here);
- server-side apply tracks field ownership per manager (metadata.managedFields, lists are
  atomic) and answers 409 Conflict when an apply would change a field another manager owns,
  unless force=true; a field an applier stops sending is removed when nobody else owns it;
- label selectors: equality (=, ==, !=), set-based (in, notin), exists (key, !key).

Test infrastructure only: not part of pg_ops.
"""

from __future__ import annotations

import copy
import datetime
import re
import threading
import uuid
from collections.abc import Callable

Key = tuple[str, str, str, str]  # (group/version, resource, namespace, name)
Path = tuple[str, ...]

KINDS = {
    "pods": "Pod", "configmaps": "ConfigMap", "secrets": "Secret", "services": "Service",
    "statefulsets": "StatefulSet", "persistentvolumeclaims": "PersistentVolumeClaim",
    "poddisruptionbudgets": "PodDisruptionBudget", "networkpolicies": "NetworkPolicy",
    "serviceaccounts": "ServiceAccount", "roles": "Role", "rolebindings": "RoleBinding",
    "clusterroles": "ClusterRole", "clusterrolebindings": "ClusterRoleBinding",
    "namespaces": "Namespace", "events": "Event", "nodes": "Node",
}
# Server-owned identity fields: never part of what a manager owns.
IDENTITY = {("metadata", f) for f in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp",
                                      "managedFields", "generation", "deletionTimestamp")}
IDENTITY |= {("apiVersion",), ("kind",)}
DEFAULT_MANAGER = "unknown"


class ApiError(Exception):
    """Becomes a Status body like the real API's."""

    def __init__(self, code: int, reason: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details or {}

    def status(self) -> dict:
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": self.message, "reason": self.reason, "details": self.details, "code": self.code}


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- label selectors -----------------------------------------------------------------------------
_REQ = re.compile(r"^\s*(!)?\s*([A-Za-z0-9_./-]+)\s*(?:(==|!=|=)\s*([A-Za-z0-9_.-]*)|\s+(in|notin)\s*\(([^)]*)\))?\s*$")


def parse_selector(text: str) -> list[tuple[str, str, set[str]]]:
    """[(key, op, values)] with op one of in, notin, exists, !exists."""
    parts, depth, current = [], 0, ""
    for ch in text or "":
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    if current.strip():
        parts.append(current)
    out = []
    for part in parts:
        m = _REQ.match(part)
        if not m:
            raise ApiError(400, "BadRequest", f"unable to parse requirement: {part!r}")
        neg, key, op, value, setop, values = m.groups()
        if neg:
            out.append((key, "!exists", set()))
        elif op in ("=", "=="):
            out.append((key, "in", {value}))
        elif op == "!=":
            out.append((key, "notin", {value}))
        elif setop:
            out.append((key, setop, {v.strip() for v in values.split(",") if v.strip()}))
        else:
            out.append((key, "exists", set()))
    return out


def selector_matches(requirements: list[tuple[str, str, set[str]]], labels: dict[str, str]) -> bool:
    for key, op, values in requirements:
        present = key in labels
        if op == "in" and not (present and labels[key] in values):
            return False
        if op == "notin" and present and labels[key] in values:
            return False
        if op == "exists" and not present:
            return False
        if op == "!exists" and present:
            return False
    return True


def labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# -- merges and field paths -------------------------------------------------------------------
def merge_patch(target: dict, patch: dict) -> dict:
    """RFC 7386: maps merge, null deletes, everything else replaces."""
    out = copy.deepcopy(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_patch(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def leaf_paths(obj: dict, prefix: Path = ()) -> dict[Path, object]:
    """Field path -> value; lists and empty maps are leaves (atomic)."""
    out: dict[Path, object] = {}
    for key, value in obj.items():
        path = (*prefix, key)
        if path in IDENTITY:
            continue
        if isinstance(value, dict) and value:
            out.update(leaf_paths(value, path))
        else:
            out[path] = value
    return out


def get_path(obj: dict, path: Path) -> object:
    for key in path:
        if not isinstance(obj, dict) or key not in obj:
            return None
        obj = obj[key]
    return obj


def delete_path(obj: dict, path: Path) -> None:
    parents = []
    node = obj
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            return
        parents.append((node, key))
        node = node[key]
    node.pop(path[-1], None)
    for parent, key in reversed(parents):  # drop maps the removal left empty
        if parent[key] == {}:
            del parent[key]


def dotted(path: Path) -> str:
    return "." + ".".join(path)


def fields_v1(paths: list[Path]) -> dict:
    tree: dict = {}
    for path in paths:
        node = tree
        for key in path:
            node = node.setdefault(f"f:{key}", {})
    return tree


class Ownership:
    """Which managers own which leaf fields of one object (managedFields, simplified)."""

    def __init__(self):
        self.owners: dict[Path, set[str]] = {}
        self.operation: dict[str, str] = {}

    def paths_of(self, manager: str) -> set[Path]:
        return {p for p, who in self.owners.items() if manager in who}

    def record_update(self, manager: str, before: dict | None, after: dict) -> None:
        """An Update (create, replace, patch) owns what it changed, alone."""
        old = leaf_paths(before or {})
        for path, value in leaf_paths(after).items():
            if before is None or old.get(path, object()) != value:
                self.owners[path] = {manager}
                self.operation[manager] = "Update"
        for path in set(old) - set(leaf_paths(after)):
            self.owners.pop(path, None)

    def managed_fields(self, api_version: str) -> list[dict]:
        managers = sorted({m for who in self.owners.values() for m in who})
        return [{"manager": m, "operation": self.operation.get(m, "Update"), "apiVersion": api_version,
                 "time": now(), "fieldsType": "FieldsV1", "fieldsV1": fields_v1(sorted(self.paths_of(m)))}
                for m in managers]


def server_side_apply(current: dict | None, ownership: Ownership, config: dict, manager: str,
                      force: bool) -> dict:
    """The object after `manager` applies `config` (raises 409 on conflicts unless force)."""
    current = current or {}
    wanted = leaf_paths(config)
    conflicts = sorted(
        (path, sorted(ownership.owners.get(path, set()) - {manager}))
        for path, value in wanted.items()
        if ownership.owners.get(path, set()) - {manager} and get_path(current, path) != value
    )
    if conflicts and not force:
        causes = [{"reason": "FieldManagerConflict", "message": f'conflict with "{who[0]}"', "field": dotted(p)}
                  for p, who in conflicts]
        text = "; ".join(f'conflict with "{who[0]}": {dotted(p)}' for p, who in conflicts)
        name = config.get("metadata", {}).get("name", "")
        raise ApiError(409, "Conflict", f"Apply failed with {len(conflicts)} conflict(s): {text}",
                       {"name": name, "causes": causes})
    result = copy.deepcopy(current)
    for path in ownership.paths_of(manager) - set(wanted):
        ownership.owners[path].discard(manager)
        if not ownership.owners[path]:
            del ownership.owners[path]
            delete_path(result, path)
    result = merge_patch(result, {k: v for k, v in config.items()})
    for path, value in wanted.items():
        if get_path(current, path) != value:
            ownership.owners[path] = {manager}
        else:
            ownership.owners.setdefault(path, set()).add(manager)
    ownership.operation[manager] = "Apply"
    return result


class Store:
    """Thread-safe objects with resourceVersions; `on_change(event, key, obj)` observers."""

    def __init__(self):
        self.lock = threading.RLock()
        self.objects: dict[Key, dict] = {}
        self.ownership: dict[Key, Ownership] = {}
        self.version = 0
        self.observers: list[Callable[[str, Key, dict], None]] = []

    def _bump(self, obj: dict, key: Key) -> dict:
        self.version += 1
        obj["metadata"]["resourceVersion"] = str(self.version)
        obj["metadata"]["managedFields"] = self.ownership[key].managed_fields(key[0])
        self.objects[key] = obj
        for observer in self.observers:
            observer("changed", key, obj)
        return copy.deepcopy(obj)

    @staticmethod
    def _not_found(key: Key) -> ApiError:
        return ApiError(404, "NotFound", f'{key[1]} "{key[3]}" not found', {"name": key[3], "kind": key[1]})

    def get(self, key: Key) -> dict:
        with self.lock:
            if key not in self.objects:
                raise self._not_found(key)
            return copy.deepcopy(self.objects[key])

    def find(self, key: Key) -> dict | None:
        with self.lock:
            obj = self.objects.get(key)
            return copy.deepcopy(obj) if obj is not None else None

    def list(self, api_version: str, resource: str, namespace: str | None, selector: str = "") -> dict:
        requirements = parse_selector(selector)
        with self.lock:
            items = [copy.deepcopy(o) for (gv, res, ns, _), o in sorted(self.objects.items())
                     if gv == api_version and res == resource and (namespace is None or ns == namespace)
                     and selector_matches(requirements, o["metadata"].get("labels") or {})]
            return {"kind": f"{KINDS.get(resource, resource.title())}List", "apiVersion": api_version,
                    "metadata": {"resourceVersion": str(self.version)}, "items": items}

    def _prepare_new(self, key: Key, obj: dict) -> dict:
        obj = copy.deepcopy(obj)
        obj.setdefault("apiVersion", key[0])
        obj.setdefault("kind", KINDS.get(key[1], key[1].title()))
        meta = obj.setdefault("metadata", {})
        meta["name"] = key[3]
        if key[2]:
            meta["namespace"] = key[2]
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now()
        meta["generation"] = 1
        for field in ("resourceVersion", "deletionTimestamp", "managedFields"):
            meta.pop(field, None)
        return obj

    def create(self, key: Key, obj: dict, manager: str | None = None) -> dict:
        with self.lock:
            if key in self.objects:
                raise ApiError(409, "AlreadyExists", f'{key[1]} "{key[3]}" already exists',
                               {"name": key[3], "kind": key[1]})
            new = self._prepare_new(key, obj)
            self.ownership[key] = Ownership()
            self.ownership[key].record_update(manager or DEFAULT_MANAGER, None, new)
            return self._bump(new, key)

    def _check_version(self, key: Key, current: dict, sent: dict) -> None:
        sent_version = sent.get("metadata", {}).get("resourceVersion")
        if sent_version and sent_version != current["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {key[1]} "{key[3]}": the object has '
                           f"been modified; please apply your changes to the latest version and try again",
                           {"name": key[3], "kind": key[1]})

    def _keep_server_fields(self, current: dict, new: dict) -> dict:
        meta = new.setdefault("metadata", {})
        for field in ("name", "namespace", "uid", "creationTimestamp", "deletionTimestamp"):
            if field in current["metadata"]:
                meta[field] = current["metadata"][field]
        if "status" in current:  # status is a subresource: writes to the object do not change it
            new["status"] = current["status"]
        spec_changed = current.get("spec") != new.get("spec")
        meta["generation"] = current["metadata"].get("generation", 1) + (1 if spec_changed else 0)
        new.setdefault("apiVersion", current.get("apiVersion"))
        new.setdefault("kind", current.get("kind"))
        return new

    def replace(self, key: Key, obj: dict, manager: str | None = None) -> dict:
        with self.lock:
            current = self.get(key)
            self._check_version(key, current, obj)
            new = self._keep_server_fields(current, copy.deepcopy(obj))
            self.ownership[key].record_update(manager or DEFAULT_MANAGER, current, new)
            return self._bump(new, key)

    def merge(self, key: Key, patch: dict, manager: str | None = None) -> dict:
        with self.lock:
            current = self.get(key)
            self._check_version(key, current, patch)
            patch = {k: v for k, v in patch.items() if k != "status"}
            new = self._keep_server_fields(current, merge_patch(current, patch))
            self.ownership[key].record_update(manager or DEFAULT_MANAGER, current, new)
            return self._bump(new, key)

    def apply(self, key: Key, config: dict, manager: str, force: bool) -> dict:
        if not manager:
            raise ApiError(400, "BadRequest", "PATCH, application/apply-patch+yaml: fieldManager is required")
        with self.lock:
            current = self.objects.get(key)
            if current is None:
                self.ownership[key] = Ownership()
                new = server_side_apply(None, self.ownership[key], config, manager, force)
                new = self._prepare_new(key, new)
                return self._bump(new, key)
            current = copy.deepcopy(current)
            new = server_side_apply(current, self.ownership[key], config, manager, force)
            return self._bump(self._keep_server_fields(current, new), key)

    def set_status(self, key: Key, status: dict) -> dict | None:
        """What a controller or kubelet writes (the status subresource)."""
        with self.lock:
            if key not in self.objects:
                return None
            obj = copy.deepcopy(self.objects[key])
            obj["status"] = status
            return self._bump(obj, key)

    def mutate(self, key: Key, change: Callable[[dict], None]) -> dict | None:
        """A server-side change (deletionTimestamp, a controller's write)."""
        with self.lock:
            if key not in self.objects:
                return None
            obj = copy.deepcopy(self.objects[key])
            change(obj)
            return self._bump(obj, key)

    def remove(self, key: Key) -> dict:
        with self.lock:
            if key not in self.objects:
                raise self._not_found(key)
            obj = self.objects.pop(key)
            self.ownership.pop(key, None)
            self.version += 1
            for observer in self.observers:
                observer("deleted", key, obj)
            return copy.deepcopy(obj)
