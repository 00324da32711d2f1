"""The fake API server's HTTP side: the REST paths the official `kubernetes` client calls,
mapped onto the Store, errors as real Status bodies (so the client raises ApiException with
the status and reason). Every request is authenticated (bearer token) and authorized with
RBAC against the Roles and RoleBindings in the store (rbac.py); a test can also deny one verb
on top (`forbid`), as a Role lacking it would.

Test infrastructure only: not part of pg_ops.
"""

from __future__ import annotations

import json
import re
import select
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import yaml

from pg_ops_tests.fake_k8s import rbac, websocket
from pg_ops_tests.fake_k8s.scheduler import _selector_matches
from pg_ops_tests.fake_k8s.store import ApiError, Key, Store


class Hang(Exception):
    """The request goes to a kubelet that cannot be reached: no answer until the client leaves."""

NAMESPACED = re.compile(
    r"^/(?:api/(?P<core>v1)|apis/(?P<group>[^/]+)/(?P<version>[^/]+))"
    r"/namespaces/(?P<ns>[^/]+)/(?P<resource>[^/]+)(?:/(?P<name>[^/]+)(?:/(?P<sub>[^/]+))?)?$")
CLUSTER = re.compile(
    r"^/(?:api/(?P<core>v1)|apis/(?P<group>[^/]+)/(?P<version>[^/]+))/(?P<resource>[^/]+)(?:/(?P<name>[^/]+))?$")
VERBS = {"GET": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
TRUE = {"true", "True", "1"}


class Request:
    def __init__(self, method: str, path: str, query: dict[str, str], body: bytes, content_type: str,
                 identity: rbac.Identity | None = None):
        self.method, self.path, self.query, self.body, self.content_type = method, path, query, body, content_type
        self.identity = identity
        m = NAMESPACED.match(path) or CLUSTER.match(path)
        if not m:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")
        parts = m.groupdict()
        self.group = parts.get("group") or ""
        self.api_version = "v1" if parts.get("core") else f"{parts['group']}/{parts['version']}"
        self.namespace = parts.get("ns") or ""
        self.resource = parts["resource"]
        self.name = parts.get("name")
        self.sub = parts.get("sub")
        verb = VERBS[method]
        if method == "GET" and not self.name:
            verb = "list"
        self.verb = verb

    @property
    def key(self) -> Key:
        return (self.api_version, self.resource, self.namespace, self.name or "")

    @property
    def rbac_resource(self) -> str:
        return f"{self.resource}/{self.sub}" if self.sub else self.resource

    def attributes(self, verb: str | None = None, name: str | None = "") -> rbac.Attributes:
        return rbac.Attributes(verb or self.verb, self.group, self.resource, self.sub, self.namespace,
                               self.name if name == "" else name)

    def json_body(self) -> dict:
        try:
            if self.content_type == "application/apply-patch+yaml":
                return yaml.safe_load(self.body) or {}
            return json.loads(self.body or b"{}")
        except (ValueError, yaml.YAMLError) as exc:
            raise ApiError(400, "BadRequest", f"invalid body: {exc}") from None


class FakeApiServer:
    """An HTTP server on 127.0.0.1 (free port) in a thread. `hooks` lets the controllers take
    over some verbs (pod deletion, pod logs, exec)."""

    def __init__(self, store: Store):
        self.store = store
        self.forbidden: list[tuple[str, str, str | None]] = []  # (verb, resource, name or None)
        self.delete_hooks: dict[str, callable] = {}  # resource -> fn(request, key) -> response dict
        self.log_reader = None  # fn(namespace, pod, container, tail_lines) -> str
        # fn(namespace, pod, container, command) -> a run() giving (exit code, stdout, stderr);
        # it raises ApiError for what the server refuses before the upgrade (pod not running).
        self.exec_runner = None
        self.partitioned = lambda namespace, pod: False  # fn: is the pod's node cut off (exec/log hang)
        self.evict = None  # fn(key, grace) -> the deleted pod: an eviction the budgets allow
        self.stopping = threading.Event()
        self.requests = 0
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="fake-k8s-api", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def hang(self, connection: socket.socket) -> None:
        """Hold a request without answering until the client closes the connection (its own
        timeout) or the server stops: what the API server does while it cannot reach a kubelet."""
        while not self.stopping.is_set():
            readable, _, _ = select.select([connection], [], [], 0.2)
            if readable:
                try:
                    if not connection.recv(1, socket.MSG_PEEK):
                        return
                except OSError:
                    return
                self.stopping.wait(0.2)

    # -- switches ------------------------------------------------------------------------------
    def forbid(self, verb: str, resource: str, name: str | None = None) -> None:
        """Deny `verb` on `resource` (optionally one object) to everyone but an admin, on top
        of RBAC: what a Role without that verb would answer."""
        self.forbidden.append((verb, resource, name))

    def clear_denials(self) -> None:
        self.forbidden.clear()

    def authorize(self, req: Request, verb: str | None = None, name: str | None = "") -> None:
        """RBAC for one request (or for `verb` on it: a server-side apply that creates is also
        a create; a WebSocket exec is a get and a create)."""
        identity = req.identity
        attrs = req.attributes(verb, name)
        if identity is None:
            raise ApiError(401, "Unauthorized", "Unauthorized")
        if identity.superuser:
            return
        denied = any(v in (attrs.verb, "*") and r == attrs.full_resource and n in (None, attrs.name)
                     for v, r, n in self.forbidden)
        if denied or not rbac.allowed(self.store, identity, attrs):
            raise rbac.forbidden(identity, attrs)

    # -- dispatch ------------------------------------------------------------------------------
    def handle(self, req: Request) -> tuple[int, object]:
        self.authorize(req)
        store, key = self.store, req.key
        manager = req.query.get("fieldManager")
        if req.sub == "log":
            if req.verb != "get" or self.log_reader is None:
                raise ApiError(405, "MethodNotAllowed", "only GET of pods/log is served")
            store.get(key)
            if self.partitioned(req.namespace, req.name):
                raise Hang()
            tail = req.query.get("tailLines")
            return 200, self.log_reader(req.namespace, req.name, req.query.get("container"),
                                        int(tail) if tail else None)
        if req.sub == "eviction" and req.verb == "create" and req.resource == "pods":
            return self._evict(req)
        if req.sub is not None:
            raise ApiError(404, "NotFound", f"the fake serves no {req.sub} subresource")
        if req.verb == "list":
            return 200, store.list(req.api_version, req.resource, req.namespace or None,
                                   req.query.get("labelSelector", ""))
        if req.verb == "get":
            return 200, store.get(key)
        if req.verb == "create":
            body = req.json_body()
            name = body.get("metadata", {}).get("name")
            if not name:
                raise ApiError(422, "Invalid", f"{req.resource}: metadata.name: Required value")
            return 201, store.create((*key[:3], name), body, manager)
        if req.verb == "update":
            return 200, store.replace(key, req.json_body(), manager)
        if req.verb == "patch":
            body = req.json_body()
            if req.content_type == "application/apply-patch+yaml":
                if store.find(key) is None:
                    self.authorize(req, "create", None)  # an apply that creates is a create too
                return 200, store.apply(key, body, manager or "", req.query.get("force") in TRUE)
            if req.content_type in ("application/strategic-merge-patch+json", "application/merge-patch+json"):
                return 200, store.merge(key, body, manager)
            raise ApiError(415, "UnsupportedMediaType", f"the fake does not serve {req.content_type} patches")
        if req.verb == "delete":
            hook = self.delete_hooks.get(req.resource)
            if hook is not None:
                return 200, hook(req, key)
            removed = store.remove(key)
            return 200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                         "details": {"name": key[3], "kind": req.resource, "uid": removed["metadata"]["uid"]}}
        raise ApiError(405, "MethodNotAllowed", f"{req.method} is not served")

    def _evict(self, req: Request) -> tuple[int, object]:
        """The eviction API: refused (429) while the pod's PodDisruptionBudget allows no
        disruption, refused (500) when two budgets select the pod; else a graceful delete."""
        pod = self.store.get(req.key)
        labels = pod["metadata"].get("labels") or {}
        budgets = [b for b in self.store.list("policy/v1", "poddisruptionbudgets", req.namespace)["items"]
                   if _selector_matches(b["spec"].get("selector") or {}, labels)]
        if len(budgets) > 1:
            raise ApiError(500, "InternalError", "This pod has more than one PodDisruptionBudget, which the eviction "
                                                 "subresource does not support.")
        if budgets:
            budget = budgets[0]
            spec = budget["spec"]
            matching = [p for p in self.store.list("v1", "pods", req.namespace)["items"]
                        if _selector_matches(spec.get("selector") or {}, p["metadata"].get("labels") or {})]
            healthy = sum(1 for p in matching if _ready(p) and not p["metadata"].get("deletionTimestamp"))
            desired = self._desired_healthy(spec, matching, req.namespace)
            if _ready(pod):
                allowed = healthy - desired > 0
            else:  # an unhealthy pod
                allowed = spec.get("unhealthyPodEvictionPolicy") == "AlwaysAllow" or healthy >= desired
            if not allowed:
                name = budget["metadata"]["name"]
                raise ApiError(429, "TooManyRequests", "Cannot evict pod as it would violate the pod's disruption budget.",
                               {"causes": [{"reason": "DisruptionBudget", "message":
                                            f"The disruption budget {name} needs {desired} healthy pods and has "
                                            f"{healthy} currently"}]})
        self.evict(req.key, None)
        return 201, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}

    def _desired_healthy(self, spec: dict, matching: list[dict], namespace: str) -> int:
        """desiredHealthy as the real disruption controller computes it (pkg/controller/disruption,
        getExpectedPodCount): an integer minAvailable counts against the pods selected; for
        maxUnavailable and for percentages the expected count is the sum of the `replicas` of
        the pods' controllers (here StatefulSets), NOT the pods selected, and percentages round
        up. A pod without a controller makes such a budget allow nothing (the real one reports
        an error and sets disruptionsAllowed 0)."""
        min_available, max_unavailable = spec.get("minAvailable"), spec.get("maxUnavailable")
        if isinstance(min_available, int):
            return min_available
        owners = set()
        for pod in matching:
            refs = [r for r in pod["metadata"].get("ownerReferences", []) if r.get("controller")]
            if not refs or refs[0].get("kind") != "StatefulSet":
                return len(matching) + 1  # "found no controllers": nothing allowed
            owners.add(refs[0]["name"])
        expected = 0
        for owner in owners:
            sts = self.store.find(("apps/v1", "statefulsets", namespace, owner))
            expected += int((sts or {}).get("spec", {}).get("replicas", 1))

        def scaled(value) -> int:
            if isinstance(value, str) and value.endswith("%"):
                return -(-int(value[:-1]) * expected // 100)  # rounded up
            return int(value)
        if max_unavailable is not None:
            return max(expected - scaled(max_unavailable), 0)
        return scaled(min_available) if min_available is not None else expected

    def check_exec(self, req: Request, container: str | None, command: list[str]):
        """An exec request before the upgrade: RBAC (a WebSocket exec is a GET, so `get` on
        pods/exec, and since Kubernetes 1.35 also `create`), the pod, the runner. Returns the
        deferred run."""
        self.authorize(req, "get")
        self.authorize(req, "create")
        if req.resource != "pods" or self.exec_runner is None:
            raise ApiError(404, "NotFound", f"the fake serves exec only for pods ({req.path})")
        self.store.get(req.key)
        if not command:
            raise ApiError(400, "BadRequest", "you must specify at least 1 command")
        return self.exec_runner(req.namespace, req.name, container, command)

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet: tests read assertions, not access logs
                return

            def _serve(self):
                server.requests += 1
                url = urlparse(self.path)
                lists = parse_qs(url.query)
                query = {k: v[-1] for k, v in lists.items()}
                if (self.headers.get("Upgrade") or "").lower() == "websocket":
                    self._serve_websocket(url.path, query, lists.get("command", []))
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                content_type = (self.headers.get("Content-Type") or "application/json").split(";")[0].strip()
                try:
                    identity = rbac.authenticate(self.headers.get("Authorization"))
                    status, payload = server.handle(Request(self.command, url.path, query, body, content_type,
                                                            identity))
                except ApiError as exc:
                    status, payload = exc.code, exc.status()
                except Hang:
                    server.hang(self.connection)
                    self.close_connection = True
                    return
                if isinstance(payload, str):
                    data, ctype = payload.encode(), "text/plain"
                else:
                    data, ctype = json.dumps(payload).encode(), "application/json"
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _serve_websocket(self, path, query, command):
                try:
                    req = Request("GET", path, query, b"", "application/json",
                                  rbac.authenticate(self.headers.get("Authorization")))
                    if req.sub != "exec":
                        raise ApiError(404, "NotFound", f"no websocket endpoint at {path}")
                    run = server.check_exec(req, query.get("container"), command)
                    if server.partitioned(req.namespace, req.name):
                        server.hang(self.connection)
                        self.close_connection = True
                        return
                except ApiError as exc:  # before the upgrade: a plain HTTP error, as the real server
                    data = json.dumps(exc.status()).encode()
                    self.send_response(exc.code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                websocket.serve_exec(self, run)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

        return Handler


def _ready(pod: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", []))
