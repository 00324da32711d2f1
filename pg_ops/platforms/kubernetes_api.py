"""The Kubernetes API as pg_ops uses it: one client per platform, and ONE helper through which
every call goes, so each failure becomes a single clear line naming the verb and the object:

    kubernetes: patch configmap postgresql/homelab-pg-ops-state: forbidden (403): <server message>

The `kubernetes` package is imported here, lazily by whoever needs this module (it takes
~0.6 s to import and `import pg_ops.definitions` must stay fast).
"""

from __future__ import annotations

import contextlib
import json
import os
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar, overload

import kubernetes.client as k8s
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from urllib3.exceptions import HTTPError as Urllib3Error

from pg_ops.errors import ConflictError, PgOpsError

T = TypeVar("T")

# Connect / read timeouts of every call: an API server that does not answer must not hang a
# sensor tick or a failover run.
REQUEST_TIMEOUT = (3, 20)
EXEC_TIMEOUT_S = 30.0
EXEC_SUBPROTOCOL = "v4.channel.k8s.io"
EXEC_STDOUT, EXEC_STDERR, EXEC_STATUS_CHANNEL = 1, 2, 3  # channel 3: the exec's final Status
IN_CLUSTER_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


class KubernetesError(PgOpsError):
    """A Kubernetes API call that failed; `status` is the HTTP status (0: no answer)."""

    def __init__(self, message: str, status: int = 0, reason: str = ""):
        super().__init__(message)
        self.status = status
        self.reason = reason


class KubernetesNotFound(KubernetesError):
    pass


class KubernetesConflict(KubernetesError, ConflictError):
    """409: AlreadyExists, a resourceVersion mismatch, or an apply conflict with another
    field manager. A ConflictError, so state.update_state retries the CAS ones."""


def load_configuration() -> k8s.Configuration:
    """In-cluster service account when running in a pod, else KUBECONFIG (or ~/.kube/config)."""
    from kubernetes import config

    cfg = k8s.Configuration()
    if os.environ.get("KUBERNETES_SERVICE_HOST") and IN_CLUSTER_TOKEN.exists():
        try:
            config.load_incluster_config(client_configuration=cfg)
            return cfg
        except ConfigException as exc:
            raise PgOpsError(f"kubernetes: in-cluster configuration unusable: {exc}") from exc
    # The client reads KUBECONFIG once at import; read it at call time instead.
    path = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    if not any(Path(p).is_file() for p in path.split(os.pathsep) if p):
        raise PgOpsError(
            f"kubernetes: no kubeconfig and not in a pod: {path} does not exist and "
            f"KUBERNETES_SERVICE_HOST is not set (set KUBECONFIG or run pg_ops in the cluster)"
        )
    try:
        config.load_kube_config(config_file=path, client_configuration=cfg, persist_config=False)
    except (ConfigException, OSError, ValueError) as exc:
        raise PgOpsError(f"kubernetes: kubeconfig {path} unusable: {exc}") from exc
    return cfg


def _server_message(exc: ApiException) -> str:
    try:
        body = json.loads(exc.body or "")
        message = body.get("message") or exc.reason
    except (ValueError, AttributeError):
        message = (exc.body or exc.reason or "").strip()
    return " ".join(str(message).split())[:300]


def _reason_words(status: int, reason: str) -> str:
    words = {401: "unauthorized", 403: "forbidden", 404: "not found", 409: "conflict",
             422: "invalid", 500: "server error", 503: "unavailable"}
    return words.get(status, (reason or "error").lower())


class KubernetesApi:
    """The clients pg_ops uses, bound to one API server."""

    def __init__(self, configuration: k8s.Configuration | None = None):
        self.configuration = configuration or load_configuration()
        self.client = k8s.ApiClient(self.configuration)
        self.core = k8s.CoreV1Api(self.client)
        self.apps = k8s.AppsV1Api(self.client)
        self.custom = k8s.CustomObjectsApi(self.client)
        # Requests made through this client, by "<verb> <kind>" ("list pods", "get secret",
        # "exec pod"): what an operation costs the API server (the failover benchmark reads it).
        self.calls: Counter[str] = Counter()
        self._calls_lock = threading.Lock()

    def _count(self, verb: str, what: str) -> None:
        with self._calls_lock:
            self.calls[f"{verb} {what.split(' ', 1)[0]}"] += 1

    def close(self) -> None:
        self.client.close()

    @overload
    def call(self, verb: str, what: str, fn: Callable[..., T], *args: Any, missing_ok: Literal[False] = False,
             **kwargs: Any) -> T: ...

    @overload
    def call(self, verb: str, what: str, fn: Callable[..., T], *args: Any, missing_ok: bool,
             **kwargs: Any) -> T | None: ...

    def call(self, verb: str, what: str, fn: Callable[..., T], *args: Any, missing_ok: bool = False,
             **kwargs: Any) -> T | None:
        """Run one API call; `what` is "<kind> <namespace>/<name>". Returns None for a 404
        when missing_ok, raises a KubernetesError with one clear line otherwise."""
        kwargs.setdefault("_request_timeout", REQUEST_TIMEOUT)
        self._count(verb, what)
        try:
            return fn(*args, **kwargs)
        except ApiException as exc:
            status = int(exc.status or 0)
            if status == 404 and missing_ok:
                return None
            message = (f"kubernetes: {verb} {what}: {_reason_words(status, exc.reason)} ({status}): "
                       f"{_server_message(exc)}")
            cls = {404: KubernetesNotFound, 409: KubernetesConflict}.get(status, KubernetesError)
            # from None: the message has the status, reason and server message; the ApiException
            # adds every response header and the body again
            raise cls(message, status, exc.reason or "") from None
        except (Urllib3Error, OSError) as exc:
            cause = " ".join(str(getattr(exc, "reason", None) or exc).split())[:200]
            raise KubernetesError(
                f"kubernetes: {verb} {what}: API server {self.configuration.host} unreachable: {cause}"
            ) from exc

    def exec_in_pod(self, what: str, name: str, namespace: str, container: str, command: list[str],
                    timeout: float = EXEC_TIMEOUT_S) -> tuple[int, str, str]:
        """Run a command in a container: (exit code, stdout, stderr), over a WebSocket
        (v4.channel.k8s.io: each binary message starts with its channel; 3 is the final Status).

        ONE deadline covers everything, the upgrade included: when the pod's node is cut off, the
        API server holds the request while it tries to reach the kubelet, and the client's own
        WebSocket (kubernetes.stream) has no timeout there. Not through `kubernetes.stream.stream`
        either: with client 36 a refused upgrade (403, 404, a pod not running) surfaces there as
        an AttributeError that hides the status and the server's message."""
        from kubernetes.stream.ws_client import get_websocket_url
        from websocket import ABNF, WebSocket, WebSocketBadStatusException, WebSocketException

        self._count("exec", "pod")
        cfg = self.configuration
        url = get_websocket_url(f"{cfg.host}/api/v1/namespaces/{namespace}/pods/{name}/exec", [
            ("command", command), ("container", container), ("stdin", "false"), ("stdout", "true"),
            ("stderr", "true"), ("tty", "false")])
        auth = cfg.get_api_key_with_prefix("authorization") or cfg.get_api_key_with_prefix("BearerToken")
        deadline = time.monotonic() + timeout
        late = KubernetesError(f"kubernetes: exec in {what}: {command[0]} did not finish within {timeout:g} s "
                               f"(the pod's node unreachable?)")
        ws = WebSocket(sslopt=_ssl_options(cfg), skip_utf8_validation=True)
        try:
            ws.connect(url, header=[f"authorization: {auth}"] if auth else [], subprotocols=[EXEC_SUBPROTOCOL],
                       timeout=timeout)
        except WebSocketBadStatusException as exc:  # the upgrade was refused: a plain HTTP error
            status = int(exc.status_code or 0)
            cls = {404: KubernetesNotFound}.get(status, KubernetesError)
            raise cls(f"kubernetes: exec in {what}: {_reason_words(status, exc.status_message or '')} ({status}): "
                      f"{_status_message(exc.resp_body)}", status, exc.status_message or "") from None
        except TimeoutError:
            raise late from None
        except (WebSocketException, OSError) as exc:
            if "timed out" in str(exc):
                raise late from None
            raise KubernetesError(f"kubernetes: exec in {what}: API server {cfg.host} unreachable: "
                                  f"{' '.join(str(exc).split())[:200]}") from exc
        channels: dict[int, bytes] = {}
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise late
                ws.settimeout(remaining)
                try:
                    opcode, data = ws.recv_data()
                except TimeoutError:
                    raise late from None
                except (WebSocketException, OSError):
                    break  # the server closed the stream
                if opcode == ABNF.OPCODE_CLOSE:
                    break
                if data:
                    channels[data[0]] = channels.get(data[0], b"") + data[1:]
        finally:
            with contextlib.suppress(Exception):
                ws.close(timeout=0.5)
        text = {ch: raw.decode(errors="replace") for ch, raw in channels.items()}
        return (_exit_code(what, text.get(EXEC_STATUS_CHANNEL, "")), text.get(EXEC_STDOUT, ""),
                text.get(EXEC_STDERR, ""))


def _ssl_options(cfg: k8s.Configuration) -> dict:
    """The kubeconfig's TLS settings, as the websocket library takes them."""
    if not cfg.verify_ssl:
        return {"cert_reqs": ssl.CERT_NONE}
    options: dict = {"cert_reqs": ssl.CERT_REQUIRED}
    if cfg.ssl_ca_cert:
        options["ca_certs"] = cfg.ssl_ca_cert
    if cfg.cert_file:
        options["certfile"] = cfg.cert_file
    if cfg.key_file:
        options["keyfile"] = cfg.key_file
    if cfg.assert_hostname is not None:
        options["check_hostname"] = cfg.assert_hostname
    if cfg.tls_server_name:
        options["server_hostname"] = cfg.tls_server_name
    return options


def _exit_code(what: str, status_text: str) -> int:
    """The exit code in the exec's final Status: Success, or NonZeroExitCode with the code."""
    try:
        status = json.loads(status_text)
        if status.get("status") == "Success":
            return 0
        return int(status["details"]["causes"][0]["message"])
    except (ValueError, KeyError, IndexError, TypeError):
        raise KubernetesError(f"kubernetes: exec in {what}: the connection ended without an exit status "
                              f"({' '.join(str(status_text).split())[:200] or 'none'})") from None


def _status_message(body: bytes | str | None) -> str:
    """The message of a Status body (an HTTP error the API server sent)."""
    text = body.decode(errors="replace") if isinstance(body, bytes) else (body or "")
    try:
        text = json.loads(text).get("message") or text
    except (ValueError, AttributeError):
        pass
    return " ".join(str(text).split())[:300]
