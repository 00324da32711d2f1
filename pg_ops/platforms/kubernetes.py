"""The Kubernetes platform: members are the StatefulSet's pods, pg_ops talks to the API with
the official `kubernetes` client (in-cluster service account, else KUBECONFIG).

- Members: the pods the selector labels find, named <cluster>-<i>, reached at the pod IP and
  the container port named `postgresql`. A member whose pod does not exist (or has no IP yet)
  is given its stable headless-Service DNS name instead: probing it fails like any unreachable
  member, so status shows it as down rather than crashing.
- pg_ops-owned objects: the desired-state ConfigMap (CAS on resourceVersion,
  kubernetes_state.py) and the credentials Secret (generated once, never overwritten; a role
  the spec gains is added).
- Routing: the primary Service selects LABEL_ROLE=primary; route_primary moves that label.
  A pod the StatefulSet recreates comes back without it: until deploy/health calls
  route_primary again (every health tick), the primary Service has no endpoint when that pod
  was the primary, and the read Service lacks it when it was a replica.
- start/stop/kill: the StatefulSet controller keeps pods running, so stopping a member is
  deleting its pod (it comes back at once, with the desired state of that moment), and
  starting is making sure the pod exists and runs (a pod stuck Pending is reported, never
  deleted by pg_ops).
- Scratch targets (restore drills): a temporary pod of the cluster's image in the drill namespace
  (`kubernetes.drill_namespace`, default `<namespace>-drills`: pg_ops may create pods only there,
  where no Secret but the drills' own lives), labelled LABEL_SCRATCH, its postgres password in a
  temporary Secret; both deleted (grace 0) when the drill ends, however it ends.
- Addresses: pg_ops and the member scripts reach each other through cluster DNS. When pg_ops
  runs outside the cluster network (tests with stand-in nodes, a laptop with port-forwards),
  PG_OPS_K8S_ADDRESSES names a JSON file of overrides:
  {"peers": {"<ns>/<member>": "host:port"}, "services": {"<ns>/<service>": "host:port"},
   "pod_ips": {"<pod IP>": "host:port"}} (where a pod IP is reached from here).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import secrets
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from importlib import resources
from typing import TYPE_CHECKING

from pydantic import SecretStr

from pg_ops.credentials import (
    MONITORING_USER,
    POOLER_USER,
    READ_SUFFIX,
    REPLICATION_USER,
    SUPERUSER,
    Credentials,
    app_credentials,
    generate_password,
    new_credentials,
    pooled_uri,
    required_roles,
)
from pg_ops.errors import ClusterExists, MemberError, PgOpsError, Unsupported
from pg_ops.platforms.base import (
    FENCED_FILE,
    REPORT_FILE,
    SCRATCH_PARAMETERS,
    UPGRADE_GO_FILE,
    MemberReport,
    MemberUpgrade,
    Platform,
    RecoveryPod,
    RecoveryPodRequest,
    ScratchTarget,
    UpgradeScratch,
)
from pg_ops.platforms.kubernetes_api import KubernetesApi, KubernetesConflict, KubernetesError
from pg_ops.platforms.kubernetes_objects import ObjectClient, describe
from pg_ops.platforms.kubernetes_state import ConfigMapStateStore, owned_metadata
from pg_ops.poll import poll
from pg_ops.postgres.conninfo import Endpoint
from pg_ops.render import names as names
from pg_ops.render import scratch
from pg_ops.spec import ClusterSpec
from pg_ops.state import DesiredState

if TYPE_CHECKING:
    from pg_ops.stores.s3 import S3Credentials

ADDRESSES_ENV = "PG_OPS_K8S_ADDRESSES"
POD_START_TIMEOUT_S = 180.0  # image pull + volume attach on a fresh node
POD_GONE_TIMEOUT_S = 60.0  # beyond terminationGracePeriodSeconds the kubelet kills anyway
# Storage is measured with `df` through a pod exec, once per member per health pass. Each exec
# is bounded (a pod on a node cut off from the API server makes the API server wait for the
# kubelet), and a pod that did not answer is skipped for a while; see data_dir_usage.
DF_TIMEOUT_S = 5.0
# A fenced pod the exec could not reach is deleted with this grace: its kubelet sends TERM, then
# KILL a second later, and only then removes the pod (what fence_confirmed waits for).
FENCE_GRACE_S = 1
# Between pg_ops's clock (the record's observed_at) and the API server's (a pod's creation time,
# to the second): a pod must predate the primary's last observation by this much to count as its pod.
POD_CLOCK_MARGIN_S = 5.0
# A Secret volume is refreshed at the kubelet's next sync (syncFrequency 1 min) plus its cache TTL:
# a rotated passfile reaches every running member within about two minutes.
PASSFILE_SYNC_TIMEOUT_S = 180.0
PASSFILE_GENERATION = "# pg_ops generation "  # the passfile's first line (member.sh reports N)
EXEC_BACKOFF_S = 60.0
# (namespace, pod) -> monotonic time until which it is not asked: process-wide, because the
# health sensor builds a new platform object every tick (in the same code-server process).
_EXEC_SILENT: dict[tuple[str, str], float] = {}
PASSWORD_SUFFIX = names.password_key("")


def _at_least(number: int | None, floor: int) -> bool:
    return number is not None and number >= floor


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _unb64(text: str) -> str:
    return base64.b64decode(text).decode()


def _running(pod) -> bool:
    """Running, not being deleted, and its postgres container not waiting (CrashLoopBackOff)."""
    if pod is None or pod.metadata.deletion_timestamp is not None or pod.status is None \
            or pod.status.phase != "Running":
        return False
    return not any(cs.name == names.CONTAINER and cs.state and cs.state.waiting
                   for cs in pod.status.container_statuses or [])


def _ready(pod) -> bool:
    """Running, not being deleted, and Ready (its readiness probe passes)."""
    if pod is None or pod.metadata.deletion_timestamp is not None or pod.status is None \
            or pod.status.phase != "Running":
        return False
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def _last_words(pod) -> MemberReport:
    """The termination message of the pod's postgres container while it is not running
    (member.sh writes a refusal there; the kubelet keeps it in the pod status), parsed as the
    member report it is; an empty one when there is none."""
    for cs in (pod.status.container_statuses or []) if pod is not None and pod.status else []:
        if cs.name != names.CONTAINER or (cs.state and cs.state.running):
            continue
        ended = (cs.state.terminated if cs.state else None) or (cs.last_state.terminated if cs.last_state else None)
        if ended is not None and ended.message:
            return MemberReport.parse(ended.message)
    return MemberReport()


def _pending_reason(pod) -> str:
    """Why a pod is not running, as the scheduler and kubelet report it."""
    if pod is None:
        return "the pod does not exist (is the StatefulSet scaled down?)"
    status = pod.status
    for cond in (status.conditions or []) if status else []:
        if cond.status == "False" and cond.type == "PodScheduled":
            return f"{cond.reason}: {cond.message}"
    for cs in (status.container_statuses or []) if status else []:
        if cs.state and cs.state.waiting:
            return f"{cs.state.waiting.reason}: {cs.state.waiting.message or ''}".strip(": ")
    return f"phase {status.phase if status else 'unknown'}"


class KubernetesPlatform(Platform):
    """Members are the StatefulSet's pods (see the module doc); the contract is Platform's."""

    kind = "kubernetes"

    def __init__(self, spec: ClusterSpec, api: KubernetesApi | None = None,
                 manifests: Callable[[ClusterSpec], list[dict]] | None = None):
        self.spec = spec
        self.namespace = spec.kubernetes.namespace
        self._api = api
        self._manifests = manifests
        self.pod_start_timeout = POD_START_TIMEOUT_S
        self._fences: dict[str, str | None] = {}  # member -> uid of the pod fence_member deleted gracefully

    @property
    def api(self) -> KubernetesApi:
        # Built on first use: constructing a platform (ClusterContext.for_spec) needs no API.
        if self._api is None:
            self._api = KubernetesApi()
        return self._api

    def _what(self, kind: str, name: str) -> str:
        return f"{kind} {self.namespace}/{name}"

    # -- where things are ------------------------------------------------------------------
    def _overrides(self, section: str) -> dict[str, str]:
        path = os.environ.get(ADDRESSES_ENV)
        if not path:
            return {}
        try:
            return json.loads(open(path).read()).get(section, {})
        except (OSError, ValueError) as exc:
            raise PgOpsError(f"{ADDRESSES_ENV}={path}: unreadable address overrides ({exc})") from exc

    def peer_addresses(self) -> dict[str, str]:
        overrides = self._overrides("peers")
        return {m: overrides.get(f"{self.namespace}/{m}") or names.peer_address(self.spec, m)
                for m in self.spec.member_names}

    def _service_endpoint(self, service: str, port: int) -> Endpoint:
        override = self._overrides("services").get(f"{self.namespace}/{service}")
        if override:
            return Endpoint.parse(override)
        return Endpoint(f"{service}.{self.namespace}.svc.cluster.local", port)

    def primary_dsn(self, user: str = SUPERUSER, dbname: str = "postgres") -> str:
        from psycopg.conninfo import make_conninfo

        ep = self._service_endpoint(names.primary_service(self.spec), self.spec.kubernetes.services.primary.port)
        return make_conninfo(host=ep.host, port=ep.port, user=user, dbname=dbname, connect_timeout=3)

    def passfile(self) -> None:
        return None

    def _list_pods(self, labels: dict[str, str]) -> list:
        selector = ",".join(f"{k}={v}" for k, v in labels.items())
        return self.api.call("list", f"pods in {self.namespace} ({selector})", self.api.core.list_namespaced_pod,
                             self.namespace, label_selector=selector).items

    def _pods(self) -> dict:
        members = set(self.spec.member_names)
        return {p.metadata.name: p for p in self._list_pods(names.selector_labels(self.spec))
                if p.metadata.name in members}

    def _pod(self, name: str):
        return self.api.call("get", self._what("pod", name), self.api.core.read_namespaced_pod, name,
                             self.namespace, missing_ok=True)

    def _pod_endpoint(self, pod) -> Endpoint | None:
        """The pod IP and its `postgresql` port; where an address override says how that pod IP
        is reached from here (`pod_ips`: the test nodes' stand-in pod network), there."""
        if pod is None or pod.status is None or not pod.status.pod_ip:
            return None
        override = self._overrides("pod_ips").get(pod.status.pod_ip)
        if override:
            return Endpoint.parse(override)
        containers = sorted(pod.spec.containers, key=lambda c: c.name != names.CONTAINER)
        for container in containers:
            for port in container.ports or []:
                if port.name == names.PORT_NAME:
                    return Endpoint(pod.status.pod_ip, port.container_port)
        return None

    def member_endpoints(self) -> dict[str, Endpoint]:
        pods = self._pods()
        peers = self.peer_addresses()
        return {m: self._pod_endpoint(pods.get(m)) or Endpoint.parse(peers[m]) for m in self.spec.member_names}

    # -- pg_ops-owned objects --------------------------------------------------------------
    def state_store(self) -> ConfigMapStateStore:
        return ConfigMapStateStore(self.api, self.spec)

    def _secret_what(self) -> str:
        return self._what("secret", names.credentials_secret(self.spec))

    def _read_secret(self):
        return self.api.call("get", self._secret_what(), self.api.core.read_namespaced_secret,
                             names.credentials_secret(self.spec), self.namespace, missing_ok=True)

    @staticmethod
    def _credentials_of(secret) -> Credentials:
        data = secret.data or {}
        return Credentials(passwords={key.removesuffix(PASSWORD_SUFFIX): SecretStr(_unb64(value))
                                      for key, value in data.items() if key.endswith(PASSWORD_SUFFIX)})

    def load_credentials(self) -> Credentials | None:
        secret = self._read_secret()
        return None if secret is None else self._credentials_of(secret)

    def s3_credentials(self, secret_name: str) -> S3Credentials:
        """The backup store's keys from the Secret the spec names (`credentials_secret`), keys
        `access_key` and `secret_key`. Read at use, never cached, never logged."""
        from pg_ops.stores.s3 import S3Credentials

        what = self._what("secret", secret_name)
        secret = self.api.call("get", what, self.api.core.read_namespaced_secret, secret_name, self.namespace)
        data = secret.data or {}
        missing = [k for k in ("access_key", "secret_key") if k not in data]
        if missing:
            raise PgOpsError(f"kubernetes: {what}: missing key(s) {', '.join(missing)} for the backup store")
        return S3Credentials(_unb64(data["access_key"]), _unb64(data["secret_key"]))

    @staticmethod
    def _secret_data(creds: Credentials, generation: int = 1) -> dict[str, str]:
        """The Secret's keys: a password per role, and the members' passfile, whose first line
        ("# pg_ops generation N", not a secret) each member script reports once it copied it."""
        data = {names.password_key(role): _b64(creds.password(role)) for role in creds.passwords}
        data[names.PASSFILE_KEY] = _b64(f"{PASSFILE_GENERATION}{generation}\n"
                                        + creds.passfile_text([SUPERUSER, REPLICATION_USER]))
        if POOLER_USER in creds.passwords:  # spec `pooler`: PgBouncer's own login, mounted alone in its pods
            from pg_ops.postgres import pgbouncer

            data[names.POOLER_USERLIST_KEY] = _b64(pgbouncer.userlist(creds.password(POOLER_USER)))
        return data

    @staticmethod
    def _passfile_of(secret) -> tuple[int, str]:
        """(generation, the passfile's lines below it) of the credentials Secret."""
        text = _unb64((secret.data or {}).get(names.PASSFILE_KEY, "")) if secret is not None else ""
        first, _, rest = text.partition("\n")
        if first.startswith(PASSFILE_GENERATION) and first[len(PASSFILE_GENERATION):].isdigit():
            return int(first[len(PASSFILE_GENERATION):]), rest
        return 0, text

    def ensure_credentials(self, initial: Credentials | None = None) -> Credentials:
        """Created once with generated passwords (`initial`'s when given: a recovered cluster's
        are its source's); afterwards only keys that are missing (a role the spec gained) are
        added, with the Secret's resourceVersion, so two writers racing cannot replace each
        other's passwords."""
        for _ in range(5):
            secret = self._read_secret()
            if secret is None:
                creds = initial.with_roles(required_roles(self.spec)) if initial else new_credentials(self.spec)
                body = {"metadata": owned_metadata(self.spec, names.credentials_secret(self.spec)),
                        "type": "Opaque", "data": self._secret_data(creds)}
                try:
                    self.api.call("create", self._secret_what(), self.api.core.create_namespaced_secret,
                                  self.namespace, body, field_manager=names.FIELD_MANAGER)
                    return creds
                except KubernetesConflict:
                    continue  # created concurrently: read theirs
            current = self._credentials_of(secret)
            creds = current.with_roles(required_roles(self.spec))
            missing = {k: v for k, v in self._secret_data(creds).items() if k not in (secret.data or {})}
            if not missing:
                return creds
            if self._replace_secret_data(secret, missing):
                return creds
        raise PgOpsError(f"kubernetes: update {self._secret_what()}: it kept changing under us; try again")

    def _replace_secret_data(self, secret, data: dict[str, str]) -> bool:
        """The credentials Secret with `data` merged into what it holds, written with the
        resourceVersion it was read at: False when another writer changed it meanwhile (read it
        again and retry)."""
        body = {"metadata": {"name": secret.metadata.name, "namespace": self.namespace,
                             "labels": secret.metadata.labels, "annotations": secret.metadata.annotations,
                             "resourceVersion": secret.metadata.resource_version},
                "type": secret.type or "Opaque", "data": {**(secret.data or {}), **data}}
        try:
            self.api.call("update", self._secret_what(), self.api.core.replace_namespaced_secret,
                          secret.metadata.name, self.namespace, body, field_manager=names.FIELD_MANAGER)
            return True
        except KubernetesConflict:
            return False

    def store_credentials(self, creds: Credentials) -> None:
        """The credentials Secret's password and passfile keys replaced, with its resourceVersion.
        When the passfile changes (the superuser's or replicator's password), its generation goes
        up and this returns once every running member copied it (the kubelet syncs the Secret's
        volume within about a minute; member.sh copies the change within a second and reports the
        generation): only then may the password change in PostgreSQL, or a replica reconnecting
        and the primary's own lease check would be refused. A member that has not copied it after
        PASSFILE_SYNC_TIMEOUT_S: the Secret is put back as it was, and the error names it."""
        for _ in range(5):
            secret = self._read_secret()
            if secret is None:
                raise PgOpsError(f"kubernetes: {self._secret_what()}: missing; `pg-ops deploy` creates it")
            generation, lines = self._passfile_of(secret)
            changed = lines != creds.passfile_text([SUPERUSER, REPLICATION_USER])
            if not changed:
                if self._replace_secret_data(secret, self._secret_data(creds, generation)):
                    return
                continue
            if self._replace_secret_data(secret, self._secret_data(creds, generation + 1)):
                try:
                    self._await_passfile(generation + 1)
                except PgOpsError:
                    self._put_back(self._credentials_of(secret), generation + 2)
                    raise
                return
        raise PgOpsError(f"kubernetes: update {self._secret_what()}: it kept changing under us; try again")

    def _await_passfile(self, generation: int) -> None:
        """Every member whose container runs reports the passfile generation (or a newer one); a
        member not running copies the Secret's passfile when it starts."""
        late: list[str] = []

        def attempt() -> bool | None:
            late[:] = [m for m in self.spec.member_names if self.member_running(m)
                       and not _at_least(self.member_report(m).passfile_generation, generation)]
            return None if late else True

        def expired() -> PgOpsError:
            return PgOpsError(f"kubernetes: {self._secret_what()}: member(s) {', '.join(late)} did not copy the new "
                              f"passfile (generation {generation}) within {PASSFILE_SYNC_TIMEOUT_S:g} s (the kubelet "
                              f"syncs Secret volumes; a pod that cannot be reached by exec cannot say): the Secret "
                              f"is put back and the password is not changed")
        poll(attempt, timeout=PASSFILE_SYNC_TIMEOUT_S, interval=1.0, expired=expired)

    def _put_back(self, creds: Credentials, generation: int) -> None:
        for _ in range(5):
            secret = self._read_secret()
            if secret is not None and self._replace_secret_data(secret, self._secret_data(creds, generation)):
                return

    def _role_secret_namespaces(self, role: str) -> list[str]:
        declared = self.spec.role(role)
        return list(declared.secret_namespaces) if declared and declared.secret_namespaces else [self.namespace]

    def deliver_role_credentials(self, role: str, password: str, dbname: str) -> bool:
        port = self.spec.kubernetes.services.primary.port
        targets = ((names.app_secret(self.spec, role), names.primary_service(self.spec)),
                   (names.app_secret(self.spec, role) + READ_SUFFIX, names.replicas_service(self.spec)))
        changed = False
        for namespace in self._role_secret_namespaces(role):
            for secret_name, service in targets:
                host = f"{service}.{self.namespace}.svc.cluster.local"
                document = app_credentials(role, password, dbname, [(host, port)], None, None)
                if self.spec.pooler is not None and service == names.primary_service(self.spec):
                    # spec `pooler`: the same role through PgBouncer's Service
                    pooler = Endpoint(f"{names.pooler_service(self.spec)}.{self.namespace}.svc.cluster.local", port)
                    document["pooled-uri"] = pooled_uri(role, password, dbname, pooler)
                data = {k: _b64(v) for k, v in document.items()}
                what = f"secret {namespace}/{secret_name}"
                live = self.api.call("get", what, self.api.core.read_namespaced_secret, secret_name, namespace,
                                     missing_ok=True)
                metadata = {**owned_metadata(self.spec, secret_name), "namespace": namespace}
                if live is None:
                    self.api.call("create", what, self.api.core.create_namespaced_secret, namespace,
                                  {"metadata": metadata, "type": "Opaque", "data": data},
                                  field_manager=names.FIELD_MANAGER)
                elif (live.data or {}) != data:
                    body = {"metadata": {**metadata, "resourceVersion": live.metadata.resource_version},
                            "type": "Opaque", "data": data}
                    self.api.call("update", what, self.api.core.replace_namespaced_secret, secret_name, namespace,
                                  body, field_manager=names.FIELD_MANAGER)
                else:
                    continue
                changed = True
        return changed

    def remove_role_credentials(self, role: str) -> bool:
        # A delete, not a read first: RBAC lets pg_ops delete its Secrets by name (in the
        # cluster's namespace any, in an application's those the spec names) but read only
        # those it delivers.
        removed = False
        for namespace in self._role_secret_namespaces(role):
            for secret_name in (names.app_secret(self.spec, role), names.app_secret(self.spec, role) + READ_SUFFIX):
                gone = self.api.call("delete", f"secret {namespace}/{secret_name}",
                                     self.api.core.delete_namespaced_secret, secret_name, namespace, missing_ok=True)
                removed = removed or gone is not None
        return removed

    def _git_owned_objects(self) -> list[dict]:
        if self._manifests is not None:
            return self._manifests(self.spec)
        try:
            from pg_ops.render import manifests
        except ImportError as exc:
            raise PgOpsError(f"cluster {self.spec.name}: the rendered manifests are unavailable ({exc})") from exc
        return manifests(self.spec)

    def prepare(self, state: DesiredState) -> None:
        """gitops: true -> ArgoCD applies the Git-owned objects; only check they are there.
        gitops: false -> server-side apply them as field manager pg-ops, in manifest order,
        saying how far it got when one fails; except the Role and RoleBinding, which give pg_ops
        its access and which only a cluster admin can apply, and the drill namespace's objects
        (they are checked)."""
        from pg_ops.render.access import admin_applied

        missing = self.missing_git_owned()
        if missing:
            raise PgOpsError(f"cluster {self.spec.name}: Git-owned objects missing ({', '.join(missing)}); "
                             f"{self.how_to_apply()}")
        self.grow_storage()  # a larger kubernetes.storage: claims grown, the StatefulSet replaced (below)
        if self.spec.kubernetes.gitops:
            return
        objects = self._git_owned_objects()
        client = ObjectClient(self.api)
        applied = [o for o in objects if not admin_applied(self.spec, o)]
        for done, obj in enumerate(applied):
            try:
                client.apply(obj)
            except KubernetesError as exc:
                before = ", ".join(describe(o) for o in applied[:done]) or "none"
                raise type(exc)(f"{exc}; applied before it: {before}; not applied: {len(applied) - done} object(s)",
                                exc.status, exc.reason) from exc

    def missing_git_owned(self) -> list[str]:
        """The Git-owned objects prepare needs and does not find: all of them with gitops, else
        those only an admin applies (the Role and RoleBinding, the drill namespace's). One that
        pg_ops may not even read counts as missing: the Role that would let it is not applied."""
        from pg_ops.render.access import admin_applied

        objects = self._git_owned_objects()
        client = ObjectClient(self.api)
        checked = objects if self.spec.kubernetes.gitops else [o for o in objects if admin_applied(self.spec, o)]
        missing = []
        for obj in checked:
            try:
                found = client.exists(obj)
            except KubernetesError as exc:
                if exc.status != 403:
                    raise
                found = False
            if not found:
                missing.append(describe(obj))
        return missing

    def how_to_apply(self, folder: str | None = None) -> str:
        """Who applies the objects missing_git_owned names, and how."""
        if self.spec.kubernetes.gitops:
            return "sync the GitOps application (kubernetes.gitops is true: pg_ops never applies them)"
        folder = folder or f"deploy/kubernetes/{self.spec.name}"
        return (f"a cluster admin applies them once: "
                f"`kubectl apply -f {folder}/role.yaml -f {folder}/rolebinding.yaml` "
                f"and the drill namespace's NetworkPolicy in networkpolicy.yaml")

    # -- growing the data volumes ---------------------------------------------------------------
    def grow_storage(self) -> list[str]:
        """Bring the members' claims and the StatefulSet's claim template to kubernetes.storage:
        each smaller claim patched (its class must allow expansion: the API server refuses
        otherwise, and so does this, in one line naming the class, before anything changed),
        then, without gitops, the StatefulSet, whose claim template cannot change in place,
        deleted with its pods orphaned and left for `prepare` to apply again: what the runbook
        did by hand (`kubectl delete sts --cascade=orphan`). Returns the claims grown."""
        from kubernetes.utils import parse_quantity

        wanted = self.spec.kubernetes.storage
        claims = {}
        for member in self.spec.member_names:
            claim = self.api.call("get", self._what("persistentvolumeclaim", names.data_claim(member)),
                                  self.api.core.read_namespaced_persistent_volume_claim, names.data_claim(member),
                                  self.namespace, missing_ok=True)
            if claim is None:
                continue
            have = (claim.spec.resources.requests or {}).get("storage")
            if have is not None and parse_quantity(have) != parse_quantity(wanted):
                claims[names.data_claim(member)] = (have, claim.spec.storage_class_name)
        smaller = [c for c, (have, _) in claims.items() if parse_quantity(have) > parse_quantity(wanted)]
        if smaller:
            raise Unsupported(f"cluster {self.spec.name}: kubernetes.storage {wanted} is smaller than claim "
                              f"{smaller[0]}'s {claims[smaller[0]][0]}: a claim never shrinks")
        grown: list[str] = []
        for name, (have, storage_class) in sorted(claims.items()):
            try:
                self.api.call("patch", self._what("persistentvolumeclaim", name),
                              self.api.core.patch_namespaced_persistent_volume_claim, name, self.namespace,
                              {"spec": {"resources": {"requests": {"storage": wanted}}}})
            except KubernetesError as exc:
                done = f"; grown before it: {', '.join(grown)}" if grown else "; nothing was changed"
                raise Unsupported(f"cluster {self.spec.name}: claim {name} (storage class {storage_class}) cannot "
                                  f"grow from {have} to {wanted}: the class must allow volume expansion "
                                  f"(local-path does not){done} ({exc})") from None
            grown.append(name)
        if not self.spec.kubernetes.gitops:
            self._replace_statefulset_for_its_claims(wanted)
        return grown

    def _replace_statefulset_for_its_claims(self, wanted: str) -> None:
        from kubernetes.utils import parse_quantity

        sts_name = names.statefulset_name(self.spec)
        sts = self.api.call("get", self._what("statefulset", sts_name), self.api.apps.read_namespaced_stateful_set,
                            sts_name, self.namespace, missing_ok=True)
        if sts is None:
            return
        templates = sts.spec.volume_claim_templates or []
        if not any(parse_quantity((t.spec.resources.requests or {}).get("storage", "0")) != parse_quantity(wanted)
                   for t in templates):
            return
        uid = sts.metadata.uid
        self.api.call("delete", self._what("statefulset", sts_name), self.api.apps.delete_namespaced_stateful_set,
                      sts_name, self.namespace, propagation_policy="Orphan", missing_ok=True)

        def gone() -> bool | None:
            now = self.api.call("get", self._what("statefulset", sts_name), self.api.apps.read_namespaced_stateful_set,
                                sts_name, self.namespace, missing_ok=True)
            return True if now is None or now.metadata.uid != uid else None

        poll(gone, timeout=POD_GONE_TIMEOUT_S, interval=0.2, expired=lambda: PgOpsError(
            f"kubernetes: statefulset {self.namespace}/{sts_name} not gone {POD_GONE_TIMEOUT_S:g} s after its "
            f"orphaning delete"))

    def git_owned_objects(self) -> list[tuple[dict, dict | None]]:
        client = ObjectClient(self.api)
        return [(obj, client.read(obj)) for obj in self._git_owned_objects()]

    # -- members ---------------------------------------------------------------------------
    def member_running(self, name: str) -> bool:
        return _running(self._pod(name))

    def _statefulset(self):
        sts = self.api.call("get", self._what("statefulset", names.statefulset_name(self.spec)),
                            self.api.apps.read_namespaced_stateful_set, names.statefulset_name(self.spec),
                            self.namespace, missing_ok=True)
        if sts is None:
            raise MemberError(f"kubernetes: statefulset {self.namespace}/{names.statefulset_name(self.spec)} "
                              f"not found: the Git-owned manifests are not applied")
        return sts

    def start_member(self, name: str) -> None:
        """The StatefulSet controller (re)creates the pod; wait until it runs, and report a
        pod that stays Pending (unschedulable, a volume or image that cannot be had)."""
        if self.member_running(name):
            return
        sts = self._statefulset()
        ordinal = int(name.rsplit("-", 1)[1])
        if ordinal >= (sts.spec.replicas or 0):
            raise MemberError(f"kubernetes: pod {self.namespace}/{name}: statefulset "
                              f"{sts.metadata.name} has {sts.spec.replicas} replicas; scale it to "
                              f"{self.spec.postgres.members}")
        seen: list = []

        def runs() -> bool | None:
            seen[:] = [self._pod(name)]
            if _running(seen[0]):
                return True
            # A member that refused does not come round by itself: say so now, with its reason,
            # as locally (rather than after the whole start timeout of a crash-looping pod).
            refused = _last_words(seen[0]).refused
            if refused is not None:
                raise MemberError(f"member {name} exited before it was running: it refused to start: {refused}")
            return None

        def expired() -> MemberError:
            pod = seen[0]
            phase = pod.status.phase if pod is not None and pod.status else "missing"
            return MemberError(f"kubernetes: pod {self.namespace}/{name} stuck {phase} after "
                               f"{self.pod_start_timeout:g} s: {_pending_reason(pod)}")

        poll(runs, timeout=self.pod_start_timeout, interval=0.5, expired=expired)

    def _delete_pod(self, name: str, grace_seconds: int | None, *, uid: str | None = None,
                    wait: bool = True) -> str | None:
        """Delete a pod and (`wait`) wait until that pod (its uid) is gone; the StatefulSet then
        makes a new one, which is not waited for. Grace 0 is a forced delete: the API object goes
        at once, the kubelet kills the container at its next sync (seconds), and a pod on a dead
        node does not block us. `uid`: only that incarnation (a precondition of the delete; a
        pod of another uid is left alone). Returns the uid deleted, None when there was none."""
        pod = self._pod(name)
        if pod is None or (uid is not None and pod.metadata.uid != uid):
            return None
        if uid is None:
            kwargs: dict = {} if grace_seconds is None else {"grace_period_seconds": grace_seconds}
        else:  # with a body, the API server ignores the query's grace: both go in the body
            body: dict = {"preconditions": {"uid": uid}}
            if grace_seconds is not None:
                body["gracePeriodSeconds"] = grace_seconds
            kwargs = {"body": body}
        uid = pod.metadata.uid
        self.api.call("delete", self._what("pod", name), self.api.core.delete_namespaced_pod, name,
                      self.namespace, missing_ok=True, **kwargs)
        if not wait:
            return uid
        grace = (pod.spec.termination_grace_period_seconds or 30) if grace_seconds is None else grace_seconds

        def gone() -> bool | None:
            pod = self._pod(name)
            return True if pod is None or pod.metadata.uid != uid else None

        def expired() -> MemberError:
            return MemberError(f"kubernetes: delete pod {self.namespace}/{name}: still terminating after "
                               f"{POD_GONE_TIMEOUT_S + grace:g} s (node unreachable?)")

        poll(gone, timeout=POD_GONE_TIMEOUT_S + grace, interval=0.2, expired=expired)
        return uid

    def stop_member(self, name: str) -> None:
        """Graceful delete: the kubelet sends TERM, which the member script turns into a
        checkpoint, then a smart (a primary with transactions in flight) or fast shutdown."""
        self._delete_pod(name, None)

    def _set_role(self, name: str, role: str | None) -> None:
        self.api.call("patch", self._what("pod", name), self.api.core.patch_namespaced_pod, name, self.namespace,
                      {"metadata": {"labels": {names.LABEL_ROLE: role}}}, missing_ok=True)

    def fence_member(self, name: str) -> bool:
        """Out of the Services first (label removed), postgres stopped at once where its pod
        answers, then the pod force-deleted (grace 0, so a failover is not held up by a pod on
        an unreachable node). True when the exec answered: its kubelet is connected, so postgres
        is stopped and the force deletion reaches the container at once.

        Why the immediate stop: a deleted pod is never killed outright; its kubelet sends TERM
        first, and a clean shutdown writes a shutdown checkpoint that standbys still streaming
        from the old primary receive, past the new primary's fork point: they could then not
        follow the new timeline without a rewind. An immediate shutdown writes nothing more (the
        local platform's SIGKILL, on Kubernetes).

        When the exec does not answer (False), the pod is deleted gracefully instead (grace
        FENCE_GRACE_S): a container that crashed and waits to restart has nothing to exec into,
        but its kubelet is connected and completes the deletion once the container is stopped,
        which fence_confirmed sees. Only the pod that already existed when pg_ops last saw the
        primary writable (the record's observed_at) can confirm anything: a newer one is a
        replacement made after a forced deletion, force-deleted at once, and the lease decides.
        A pod whose node is cut off from the API server stays Terminating and keeps running
        until its kubelet is back; its isolation fencing stops it once its lease runs out (the
        failover waits for that, then fence_abandon force-deletes it), or its member script
        demotes it once the ConfigMap volume refreshes."""
        self._set_role(name, None)
        state = self.state_store().read()
        self._fences.pop(name, None)
        if self._stop_postgres_now(name, state.epoch if state is not None else 0):
            self._delete_pod(name, 0)
            return True
        pod = self._pod(name)
        seen = state.observed_at if state is not None else 0.0
        if pod is None or pod.metadata.creation_timestamp is None \
                or pod.metadata.creation_timestamp.timestamp() > seen - POD_CLOCK_MARGIN_S:
            # No pod, or one made after the old primary was last seen writable (a replacement
            # the StatefulSet made after someone force-deleted the pod it ran in): deleting it
            # says nothing about the old container, which may still run on a node that has not
            # noticed. Forced, as a pod on a lost node must not hold the name; the lease decides.
            self._delete_pod(name, 0)
            return False
        # The pod the old primary ran in when pg_ops last saw it writable (the record's observed_at).
        try:
            self._fences[name] = self._delete_pod(name, FENCE_GRACE_S, uid=pod.metadata.uid, wait=False)
        except KubernetesError as exc:  # a 409: replaced meanwhile; anything else: the lease decides
            logging.getLogger("pg_ops").warning("fence %s: graceful delete not possible (%s)", name, exc)
        return False

    def fence_confirmed(self, name: str) -> bool:
        """The pod fence_member deleted gracefully is gone from the API (or replaced by a new
        one of the same name): only its kubelet removes such a pod, after its containers
        stopped — the guarantee a StatefulSet's one pod per name rests on. (A person force-deleting
        it meanwhile, or the pod garbage collector for a node declared out of service, would
        also remove it; both say the node is gone.)"""
        uid = self._fences.get(name)
        if uid is None:
            return False
        pod = self._pod(name)
        if pod is not None and pod.metadata.uid == uid:
            return False
        del self._fences[name]
        return True

    def fence_abandon(self, name: str) -> None:
        """Its lease ran out (or fencing is off): force-delete what is left, so the StatefulSet
        makes the pod again (elsewhere, with network storage) while its node is unreachable."""
        uid = self._fences.pop(name, None)
        if uid is not None:  # None: fence_member force-deleted it already
            self._delete_pod(name, 0, uid=uid)

    def _stop_postgres_now(self, name: str, epoch: int) -> bool:
        """`pg_ctl stop -m immediate` in the pod, best effort and bounded (DF_TIMEOUT_S). The
        fence marker is written first: the member script would otherwise boot postgres again
        from its record file, which the kubelet refreshes up to a minute late and which may
        still name this member (it waits until the record reaches the fence's epoch). True only
        when pg_ctl says it stopped the server: otherwise the failover waits for the lease."""
        what = self._what("pod", name)
        # Exit 3: the marker could not be written (postgres is still stopped, but its script may
        # boot it again from a stale record, so the stop is not confirmed).
        script = ('printf "epoch=%s\\n" "$1" > "$2" || unmarked=1; "$3" stop -D "$4" -m immediate -w -t 3; rc=$?; '
                  '[ -z "$unmarked" ] || exit 3; exit $rc')
        command = ["sh", "-c", script, "fence", str(epoch), f"{names.PGDATA_MOUNT}/{FENCED_FILE}",
                   f"{names.pg_bin(self.spec.postgres.version)}/pg_ctl", names.PGDATA]
        try:
            code, _, err = self.api.exec_in_pod(what, name, self.namespace, names.CONTAINER, command,
                                                timeout=DF_TIMEOUT_S)
        except KubernetesError as exc:
            logging.getLogger("pg_ops").warning("fence %s: immediate stop not possible (%s); deleting the pod",
                                                name, exc)
            return False
        # pg_ctl exits 1 with "Is server running?" when postgres is not running: stopped as well
        # (the marker keeps its script from starting it again).
        stopped = code == 0 or (code == 1 and "is server running" in err.lower())
        if not stopped:
            logging.getLogger("pg_ops").warning("fence %s: the immediate stop exited %d: %s", name, code,
                                                " ".join(err.split())[:200] or "the fence marker could not be written")
        return stopped

    def route_primary(self, name: str) -> None:
        """Every other pod is labelled replica before `name` is labelled primary, so the
        primary Service never selects two pods."""
        pods = self._pods()
        for other, pod in sorted(pods.items()):
            if other != name and (pod.metadata.labels or {}).get(names.LABEL_ROLE) != names.ROLE_REPLICA:
                self._set_role(other, names.ROLE_REPLICA)
        if name not in pods:
            raise MemberError(f"kubernetes: patch pod {self.namespace}/{name}: pod not found; "
                              f"the primary Service has no endpoint")
        if (pods[name].metadata.labels or {}).get(names.LABEL_ROLE) != names.ROLE_PRIMARY:
            self._set_role(name, names.ROLE_PRIMARY)

    def _data_claim(self, name: str) -> str:
        templates = self._statefulset().spec.volume_claim_templates or []
        return f"{templates[0].metadata.name if templates else 'data'}-{name}"

    def check_rotation(self, role: str) -> None:
        # postgres and replicator: store_credentials waits until every running member copied the
        # changed passfile. The exporter sidecar reads its password file once, when it starts
        # (postgres_exporter builds its data sources at startup): a rotation would leave it
        # logging in with the old one, scraping nothing, until its pod restarts.
        if role == MONITORING_USER:
            raise Unsupported(f"cluster {self.spec.name}: rotating {role} on Kubernetes is not supported yet: the "
                              f"exporter sidecar reads its password once when it starts and would stop scraping")
        # PgBouncer reads its auth file at start and on RELOAD, and the kubelet refreshes the
        # mounted key up to a minute after the Secret changed: between the password change and
        # both, the pooler could not log in for auth_query and every new client would be refused.
        if role == POOLER_USER:
            raise Unsupported(f"cluster {self.spec.name}: rotating {role} on Kubernetes is not supported yet: the "
                              f"pooler pods read its password from a mounted Secret key the kubelet refreshes up "
                              f"to a minute later, and would refuse every new client meanwhile")

    def check_wipe(self, name: str, keep_aside: bool) -> None:
        if keep_aside:
            raise Unsupported(f"member {name}: re-cloning deletes its whole volume on Kubernetes, with the writes a "
                              f"former primary may hold that nobody counted yet (and any data dir kept aside on it): "
                              f"`pg-ops rebuild {name}` without --reclone rewinds it, counts them and keeps a "
                              f"diverged copy aside on the volume")

    def wipe_member(self, name: str, keep_aside: bool = False) -> str | None:
        """Delete the member's PVC, then its pod: the StatefulSet recreates both and the member
        script re-clones into the empty volume. (The PVC stays Terminating until the pod is
        gone: the pvc-protection finalizer.)"""
        self.check_wipe(name, keep_aside)
        claim = self._data_claim(name)
        self.api.call("delete", self._what("persistentvolumeclaim", claim),
                      self.api.core.delete_namespaced_persistent_volume_claim, claim, self.namespace,
                      missing_ok=True)
        self._delete_pod(name, 0)
        return None

    def member_log_tail(self, name: str, lines: int = 5) -> str:
        try:
            # Raw response: the client (v36) turns a text body into the repr of its bytes.
            response = self.api.call("read log of", self._what("pod", name), self.api.core.read_namespaced_pod_log,
                                     name, self.namespace, container=names.CONTAINER, tail_lines=lines,
                                     missing_ok=True, _preload_content=False)
        except KubernetesError as exc:
            if exc.status == 400:  # container not started yet
                return ""
            raise
        return "" if response is None else response.data.decode(errors="replace").strip()

    def member_passfile(self, name: str) -> str:
        return f"{names.RUN_DIR}/pgpass"  # member.sh: $PGOPS_RUN_DIR/pgpass, an emptyDir in every pod

    def stopped_for_good(self, name: str) -> bool:
        return False  # the StatefulSet controller recreates the pod, the kubelet restarts the container

    def shutdown_checkpoint(self, name: str) -> str | None:
        # stop_member deletes the pod: once its container has stopped there is no exec to read the
        # control file with (the switchover then waits for the pre-shutdown LSN; see kubernetes.md).
        return None

    def member_report(self, name: str) -> MemberReport:
        """The report on the data volume, through an exec into the pod; while its container is
        not running (it refused and waits to restart), the refusal it left as its termination
        message. An empty MemberReport() when there is neither."""
        what = self._what("pod", name)
        try:
            code, out, _ = self.api.exec_in_pod(what, name, self.namespace, names.CONTAINER,
                                                ["cat", f"{names.PGDATA_MOUNT}/{REPORT_FILE}"])
            if code == 0:
                return MemberReport.parse(out)
        except (KubernetesError, MemberError):
            pass
        try:
            return _last_words(self._pod(name))
        except KubernetesError:
            return MemberReport()

    def data_dir_usage(self, name: str) -> tuple[int, int] | None:
        """df of the data volume, through an exec into the pod (the kubelet's volume stats are
        not in the API). The mount point, not PGDATA: it exists before the first initdb/clone
        and is the same filesystem. None when the pod does not run (the member is down) or did
        not answer within DF_TIMEOUT_S; a pod that did not answer is not asked again for
        EXEC_BACKOFF_S (its node is probably cut off: every exec to it would hang as long), so
        no caller's loop over the members can be held up by it tick after tick."""
        what = self._what("pod", name)
        if time.monotonic() < _EXEC_SILENT.get((self.namespace, name), 0.0):
            return None
        try:
            code, out, err = self.api.exec_in_pod(what, name, self.namespace, names.CONTAINER,
                                                  ["df", "-B1", "--output=used,size", names.PGDATA_MOUNT],
                                                  timeout=DF_TIMEOUT_S)
        except KubernetesError as exc:
            if exc.status in (400, 404):  # no such pod, or its container is not running
                return None
            if exc.status == 0 and "did not finish" in str(exc):
                _EXEC_SILENT[(self.namespace, name)] = time.monotonic() + EXEC_BACKOFF_S
                logging.getLogger("pg_ops").warning("%s; storage of %s unknown for %g s", exc, name, EXEC_BACKOFF_S)
                return None
            raise
        _EXEC_SILENT.pop((self.namespace, name), None)
        if code != 0:
            raise MemberError(f"kubernetes: exec in {what}: df exited {code}: {' '.join(err.split())[:200]}")
        try:
            used, size = (int(v) for v in out.strip().splitlines()[-1].split())
        except ValueError:
            raise MemberError(f"kubernetes: exec in {what}: unexpected df output {out.strip()[:200]!r}") from None
        return used, size

    def check_teardown(self) -> None:
        raise Unsupported(f"cluster {self.spec.name}: teardown is for local clusters only (platform kubernetes); "
                          f"delete the Git-owned objects through Git")

    def teardown(self) -> None:
        self.check_teardown()

    def check_archive_store(self, store_type: str) -> None:
        if store_type != "s3":
            raise Unsupported(f"cluster {self.spec.name}: WAL archiving on Kubernetes needs an S3 store "
                              f"(backups.store.type is {store_type})")

    def check_point_in_time(self, what: str) -> None:
        self.check_archive_store(self.spec.backups.store.type)  # the recovery pod reads the archive from S3

    def check_recover(self) -> None:
        # The new cluster's first pod fetches the base backup and the WAL from S3 (recover_pod.sh).
        self.check_archive_store(self.spec.backups.store.type)

    # -- a new cluster recovered to a point in time (`pg-ops recover`) ---------------------------
    def bootstrap_recovered(self, credentials: Credentials, request: RecoveryPodRequest) -> str:
        """Lay out this (new) cluster so that its first member recovers on its own data volume:
        the credentials Secret with the source's passwords (the restored roles have them), the
        recovery Secret (recovery_files and a token), the desired state designating that member
        with `recovery` = the token, then the Git-owned objects applied (prepare). member.sh's
        [recover] row restores and replays in the pod once the Secret with that token is mounted,
        stops the promoted server cleanly and starts it as the primary; the other members clone
        from it. Returns the member."""
        if self.state_store().read() is not None:
            raise ClusterExists(f"cluster {self.spec.name} already has a desired-state record "
                              f"({self._what('configmap', names.state_configmap(self.spec))})")
        self.ensure_credentials(initial=credentials)
        token = secrets.token_hex(8)
        name = names.recovery_secret(self.spec)
        what = self._what("secret", name)
        self.api.call("delete", what, self.api.core.delete_namespaced_secret, name, self.namespace, missing_ok=True)
        body = {"metadata": owned_metadata(self.spec, name), "type": "Opaque",
                "data": {k: _b64(v) for k, v in {**recovery_files(request), "token": token}.items()}}
        self.api.call("create", what, self.api.core.create_namespaced_secret, self.namespace, body,
                      field_manager=names.FIELD_MANAGER)
        member = self.spec.member_names[0]
        state = self.state_store().write(DesiredState(cluster=self.spec.name, primary=member, epoch=1, bootstrap=True,
                                                      recovery=token, members=self.peer_addresses()), None)
        self.prepare(state)
        return member

    def recovery_done(self) -> None:
        """The recovery's inputs (base backup place, the store's keys) deleted once the member runs
        as the primary."""
        name = names.recovery_secret(self.spec)
        self.api.call("delete", self._what("secret", name), self.api.core.delete_namespaced_secret, name,
                      self.namespace, missing_ok=True)

    def discard_recovered(self) -> None:
        """A recovery that failed: its StatefulSet (pods with it), their claims, its Secrets and
        its desired-state record deleted, so the name can be used again; the Services and
        ConfigMaps prepare applied stay (the same ones a new attempt applies). Only for a
        cluster bootstrap_recovered made, never run on a cluster that served."""
        sts = names.statefulset_name(self.spec)
        self.api.call("delete", self._what("statefulset", sts), self.api.apps.delete_namespaced_stateful_set, sts,
                      self.namespace, missing_ok=True, propagation_policy="Background")
        for member in self.spec.member_names:
            self._delete_pod(member, 0)
        for member in self.spec.member_names:
            claim = names.data_claim(member)
            self.api.call("delete", self._what("persistentvolumeclaim", claim),
                          self.api.core.delete_namespaced_persistent_volume_claim, claim, self.namespace,
                          missing_ok=True)
        for secret in (names.recovery_secret(self.spec), names.credentials_secret(self.spec)):
            self.api.call("delete", self._what("secret", secret), self.api.core.delete_namespaced_secret, secret,
                          self.namespace, missing_ok=True)
        state = names.state_configmap(self.spec)
        self.api.call("delete", self._what("configmap", state), self.api.core.delete_namespaced_config_map, state,
                      self.namespace, missing_ok=True)

    def check_rollout(self) -> None:
        return None

    def server_config_error(self) -> str | None:
        """`postgres -C` with the PostgreSQL server binaries where pg_ops runs (PG_OPS_PG_BIN; the
        Dagster image carries the cluster's major's); without them None, and a value the members
        refuse is found after the reload instead (pg_file_settings), before anything restarts."""
        from pg_ops import settings
        from pg_ops.platforms.server_user import server_user
        from pg_ops.postgres import running_config

        try:
            postgres = settings.pg_bin() / "postgres"
        except PgOpsError:
            return None
        return running_config.config_error(postgres, self.server_config_text(), server_user().process_kwargs())

    # -- the pooler (spec `pooler`: render/pooler.py's Deployment, Git-owned) --------------------
    def pooler_endpoint(self) -> Endpoint | None:
        if self.spec.pooler is None:
            return None
        return self._service_endpoint(names.pooler_service(self.spec), self.spec.kubernetes.services.primary.port)

    def _pooler_pods(self) -> list:
        """The pooler's pods that are Ready (its readiness probe: PgBouncer listens), by name."""
        return sorted((p for p in self._list_pods(names.pooler_labels(self.spec)) if _ready(p)),
                      key=lambda p: p.metadata.name)

    def start_pooler(self, primary: str) -> bool:
        """The Deployment is applied with the other Git-owned objects (prepare); this waits until
        one of its pods is Ready. True when none was before. It forwards to the primary Service,
        so `primary` needs no aiming here."""
        if self.spec.pooler is None:
            return False
        if self._pooler_pods():
            return False
        what = self._what("deployment", names.pooler_name(self.spec))

        def expired() -> PgOpsError:
            return PgOpsError(f"kubernetes: {what}: no Ready pod after {self.pod_start_timeout:g} s "
                              f"(kubectl describe pods -l {names.LABEL_NAME}=pgbouncer -n {self.namespace})")

        poll(lambda: bool(self._pooler_pods()) or None, timeout=self.pod_start_timeout, interval=0.5, expired=expired)
        return True

    def stop_pooler(self) -> None:
        return None  # the Deployment is Git's: removing `pooler` from the spec and syncing removes it

    def move_pooler(self, cluster: str | None) -> None:
        raise Unsupported(f"cluster {self.spec.name}: the pooler follows the primary Service on Kubernetes; it is "
                          f"not moved to another cluster")

    def pooler_admin(self, command: str, timeout: float = 5.0) -> list[dict]:
        """The command on every Ready pooler pod at once (a PAUSE waits for each one's open
        transactions), through its pod IP as a client in the cluster; the rows of all of them.
        One pod failing raises, naming it (the others have run the command)."""
        from concurrent.futures import ThreadPoolExecutor

        from pg_ops.postgres import pgbouncer

        if self.spec.pooler is None:
            raise PgOpsError(f"cluster {self.spec.name} has no pooler (spec `pooler`)")
        pods = self._pooler_pods()
        if not pods:
            raise PgOpsError(f"kubernetes: {self._what('deployment', names.pooler_name(self.spec))}: no Ready pod")
        password = self.load_credentials_or_fail().password(POOLER_USER)

        def one(pod) -> list[dict]:
            endpoint = self._pod_endpoint(pod)
            if endpoint is None:
                raise PgOpsError("no pod IP")
            return pgbouncer.admin(endpoint, password, command, timeout)

        rows: list[dict] = []
        failed: list[str] = []
        with ThreadPoolExecutor(max_workers=len(pods), thread_name_prefix="pooler-admin") as pool:
            for pod, future in [(p, pool.submit(one, p)) for p in pods]:
                try:
                    rows += future.result()
                except Exception as exc:  # noqa: BLE001 - named below
                    failed.append(f"pooler pod {pod.metadata.name}: {str(exc).strip().splitlines()[0]}")
        if failed:
            raise PgOpsError(f"{command}: " + "; ".join(failed))
        return rows

    def server_config_text(self) -> str:
        from pg_ops.render.config import postgresql_conf

        return postgresql_conf(self.spec)

    def running_binaries(self, name: str) -> str | None:
        """The image the member's pod runs (its postgres container's)."""
        pod = self._pod(name)
        if pod is None:
            return None
        return next((c.image for c in pod.spec.containers if c.name == names.CONTAINER), None)

    def rendered_binaries(self) -> str:
        return self.spec.kubernetes.image

    # -- scratch targets -------------------------------------------------------------------
    @contextlib.contextmanager
    def scratch_target(self, purpose: str) -> Iterator[ScratchTarget]:
        """A temporary pod of the cluster's image (its PostgreSQL major) on an emptyDir, reached at
        its pod IP; pod and Secret are deleted with grace 0 when the block ends, also on error.
        A pod that does not run within pod_start_timeout fails with the scheduler's reason."""
        name = names.scratch_name(self.spec, purpose, secrets.token_hex(3))
        password = generate_password()
        try:
            self._create_scratch(name, purpose, {names.SCRATCH_PASSWORD_KEY: password},
                                 scratch.scratch_server_pod_spec(self.spec, name, SCRATCH_PARAMETERS))
            endpoint = self._wait_scratch(name, password)
            yield ScratchTarget(self._scratch_what("pod", name), endpoint, password)
        finally:
            self._delete_scratch(name)

    @property
    def drill_namespace(self) -> str:
        return names.drill_namespace(self.spec)

    def _scratch_what(self, kind: str, name: str) -> str:
        return f"{kind} {self.drill_namespace}/{name}"

    def _create_scratch(self, name: str, purpose: str, secret_data: dict[str, str], pod_spec: dict) -> None:
        ns = self.drill_namespace
        self.api.call("create", self._scratch_what("secret", name), self.api.core.create_namespaced_secret,
                      ns, scratch.scratch_secret(self.spec, name, purpose, secret_data),
                      field_manager=names.FIELD_MANAGER)
        self.api.call("create", self._scratch_what("pod", name), self.api.core.create_namespaced_pod,
                      ns, scratch.scratch_pod(self.spec, name, purpose, pod_spec), field_manager=names.FIELD_MANAGER)

    def member_template(self) -> tuple[str, dict[str, str]]:
        """The live StatefulSet's postgres container: its image and its plain env values."""
        container = next((c for c in self._statefulset().spec.template.spec.containers if c.name == names.CONTAINER),
                         None)
        if container is None:
            return "", {}
        return container.image or "", {e.name: e.value for e in container.env or [] if e.value is not None}

    def member_upgrade(self, member: str, from_major: int, to_major: int, password: str) -> MemberUpgrade:
        from pg_ops.platforms.kubernetes_upgrade import PodDataUpgrade

        return PodDataUpgrade(self, member, from_major, to_major)

    def upgrade_go(self, name: str, go: str) -> None:
        """member.sh's upgrade go file (`<upgrade id> <system identifier>`) beside the data, by an
        exec: its record file lags the kubelet's ConfigMap sync. Best effort: the record is the go."""
        command = ["sh", "-c", 'printf "%s\\n" "$1" > "$2"', "go", go, f"{names.PGDATA_MOUNT}/{UPGRADE_GO_FILE}"]
        try:
            code, _, err = self.api.exec_in_pod(self._what("pod", name), name, self.namespace, names.CONTAINER,
                                                command, timeout=DF_TIMEOUT_S)
        except KubernetesError as exc:
            code, err = -1, str(exc)
        if code != 0:
            logging.getLogger("pg_ops").warning("upgrade of %s: the go could not be written in its pod (%s); it "
                                                "starts once its record file catches up", name, err.strip()[:200])

    def upgrade_scratch(self, from_major: int, to_major: int) -> AbstractContextManager[UpgradeScratch]:
        """Where pg_ops runs, with this machine's binaries of both majors (as locally): the
        rehearsal restores a backup from the store, which needs nothing of the cluster's pods."""
        from pg_ops.platforms.local_upgrade import upgrade_scratch

        return upgrade_scratch(from_major, to_major)

    # -- recovery pods (the point-in-time drill) --------------------------------------------------
    @contextlib.contextmanager
    def recovery_pod(self, request: RecoveryPodRequest) -> Iterator[RecoveryPod]:
        """A scratch pod whose entrypoint is recover_pod.sh (from its Secret, with the server's
        configuration, the password statement, the base backup's place and the store's keys:
        recovery_files): it fetches the base backup from S3 into its emptyDir and replays the
        archive with barman-cloud-wal-restore. Deleted with its Secret when the block ends, also
        on error."""
        name = names.scratch_name(self.spec, request.purpose, secrets.token_hex(3))
        pod = scratch.recovery_pod_spec(self.spec, name)
        what = self._scratch_what("recovery pod", name)
        try:
            self._create_scratch(name, request.purpose, recovery_files(request), pod)
            endpoint = self._wait_running(name, what)
            yield RecoveryPod(self._scratch_what("pod", name), endpoint,
                              lambda: _ended_reason(self._read_scratch(name)))
        finally:
            self._delete_scratch(name)

    def _wait_running(self, name: str, what: str) -> Endpoint:
        last: dict = {}

        def running() -> Endpoint | None:
            pod = self._read_scratch(name)
            ended = _ended_reason(pod)
            if ended:
                raise MemberError(f"kubernetes: {what} {ended}")
            last["pod"] = pod
            return self._pod_endpoint(pod) if _running(pod) else None

        def expired() -> MemberError:
            return MemberError(f"kubernetes: {what} not running after {self.pod_start_timeout:g} s: "
                               f"{_one_line(_pending_reason(last.get('pod')))}")

        return poll(running, timeout=self.pod_start_timeout, interval=0.5, expired=expired)

    def _read_scratch(self, name: str):
        """The scratch pod as it is now, None when it is gone."""
        return self.api.call("get", self._scratch_what("pod", name), self.api.core.read_namespaced_pod, name,
                             self.drill_namespace, missing_ok=True)

    def _wait_scratch(self, name: str, password: str) -> Endpoint:
        from pg_ops.postgres.topology import probe_members

        what = self._scratch_what("scratch pod", name)
        last: dict = {}

        def accepting() -> Endpoint | None:
            pod = self._read_scratch(name)
            phase = pod.status.phase if pod is not None and pod.status else "missing"
            if phase in ("Failed", "Succeeded"):
                raise MemberError(f"kubernetes: {what} ended ({phase}) before accepting connections: "
                                  f"{_one_line(_pending_reason(pod))}")
            endpoint = self._pod_endpoint(pod) if _running(pod) else None
            error = None
            if endpoint is not None:
                probe = probe_members({name: endpoint}, SUPERUSER, password, 2.0)[name]
                if probe.reachable:
                    return endpoint
                error = probe.error
            last.update(pod=pod, phase=phase, endpoint=endpoint, error=error)
            return None

        def expired() -> MemberError:
            if last["endpoint"] is not None:
                return MemberError(f"kubernetes: {what} runs but does not accept connections after "
                                   f"{self.pod_start_timeout:g} s: {_one_line(last['error'] or 'no answer')}")
            return MemberError(f"kubernetes: {what} stuck {last['phase']} after {self.pod_start_timeout:g} s: "
                               f"{_one_line(_pending_reason(last['pod']))}")

        return poll(accepting, timeout=self.pod_start_timeout, interval=0.5, expired=expired)

    def _delete_scratch(self, name: str) -> None:
        """Both deletes are tried; one that fails is raised when nothing else is, else logged
        (the drill's own error wins), naming what is left to delete by hand."""
        failures = []
        for kind, delete, kwargs in (("pod", self.api.core.delete_namespaced_pod, {"grace_period_seconds": 0}),
                                     ("secret", self.api.core.delete_namespaced_secret, {})):
            try:
                self.api.call("delete", self._scratch_what(kind, name), delete, name, self.drill_namespace,
                              missing_ok=True, **kwargs)
            except KubernetesError as exc:
                failures.append(str(exc))
        if failures:
            message = f"{'; '.join(failures)} (left behind: delete it by hand, label {names.LABEL_SCRATCH})"
            if sys.exc_info()[1] is None:
                raise PgOpsError(message)
            logging.getLogger("pg_ops").error(message)

    # -- what the tests observe and do (not in the Platform protocol; pg_ops never calls these) -----
    def force_delete_pod(self, name: str) -> None:
        """Delete the member's pod with grace 0, as when its node dies, and wait until that pod
        is gone (the StatefulSet makes a new one, not waited for)."""
        self._delete_pod(name, 0)

    def member_pods(self) -> dict:
        """The members' pods as the API server lists them now, by name."""
        return self._pods()

    def ready_pooler_pods(self) -> list:
        """The pooler's Ready pods, by name."""
        return self._pooler_pods()

    def service_endpoint(self, service: str, port: int) -> Endpoint:
        """Where pg_ops reaches a Service of the cluster's namespace (an address override first)."""
        return self._service_endpoint(service, port)

    def passfile_generation(self) -> int:
        """The generation of the passfile in the credentials Secret (0 when it has none)."""
        return self._passfile_of(self._read_secret())[0]

    @staticmethod
    def credentials_of(secret) -> Credentials:
        """The passwords a credentials Secret (as the API returns it: base64 `data`) holds."""
        return KubernetesPlatform._credentials_of(secret)


# The recovery pod's server: the drill logs in with the superuser's password over TCP; the
# script sets that password through the pod's own socket, the one way in without one.
RECOVERY_HBA = ("# pg_ops recovery pod\nlocal all postgres trust\n"
                "host all all 0.0.0.0/0 scram-sha-256\nhost all all ::/0 scram-sha-256\n")


def recovery_files(request: RecoveryPodRequest) -> dict[str, str]:
    """What recover_pod.sh reads from its Secret (a drill's recovery pod, or the first member of
    a cluster `pg-ops recover` makes): itself, the server's configuration, the password
    statement, and one file per variable of the base backup's place and the store's keys."""
    script = resources.files("pg_ops.platforms").joinpath(names.RECOVERY_SCRIPT).read_text()
    files = {names.RECOVERY_SCRIPT: script, "postgresql.conf": request.config, "pg_hba.conf": RECOVERY_HBA,
             "superuser.sql": request.superuser_statement, "PGOPS_S3_BUCKET": request.bucket,
             "PGOPS_S3_KEY": request.key, "PGOPS_S3_ENDPOINT": request.endpoint_url or "",
             "PGOPS_S3_REGION": request.region or "us-east-1",
             "AWS_ACCESS_KEY_ID": request.access_key, "AWS_SECRET_ACCESS_KEY": request.secret_key}
    return {key: value for key, value in files.items() if value is not None}


def _ended_reason(pod) -> str | None:
    """Why a pod that runs once stopped (its container's termination message), None while it runs."""
    if pod is None:
        return "is gone"
    phase = pod.status.phase if pod.status else None
    if phase not in ("Failed", "Succeeded"):
        return None
    for status in (pod.status.container_statuses or []):
        terminated = status.state.terminated if status.state else None
        if terminated is not None:
            return f"stopped (exit {terminated.exit_code}): {_one_line(terminated.message or terminated.reason or '')}"
    return f"ended ({phase})"


def _one_line(text: str) -> str:
    return " ".join(text.split())
