"""The manifests of the short-lived pods pg_ops creates in the drill namespace (never Git's): a
scratch server (a restore drill's target) and a recovery pod (a point-in-time drill, or the first
member of a cluster `pg-ops recover` makes), each with its Secret. Pure: the Kubernetes backend
(platforms/kubernetes.py) creates, waits for and deletes them."""

from __future__ import annotations

import base64

from pg_ops.render import names
from pg_ops.render.statefulset import POSTGRES_UID
from pg_ops.spec import ClusterSpec


def scratch_metadata(spec: ClusterSpec, name: str, purpose: str) -> dict:
    """The pod's and its Secret's (one name for both: the pod mounts or reads its own Secret)."""
    return {"name": name, "namespace": names.drill_namespace(spec), "labels": names.scratch_labels(spec, purpose)}


def scratch_secret(spec: ClusterSpec, name: str, purpose: str, data: dict[str, str]) -> dict:
    return {"metadata": scratch_metadata(spec, name, purpose), "type": "Opaque",
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}


def scratch_container(spec: ClusterSpec, **fields) -> dict:
    """The cluster's image (its PostgreSQL major), confined, limited like a member."""
    res = spec.kubernetes.resources
    return {
        "name": names.CONTAINER, "image": spec.kubernetes.image, "imagePullPolicy": "IfNotPresent",
        "ports": [{"name": names.PORT_NAME, "containerPort": names.PORT, "protocol": "TCP"}],
        "resources": {"requests": {"cpu": "250m", "memory": "512Mi"},
                      "limits": {"cpu": res.cpu, "memory": res.memory}},
        "securityContext": {"allowPrivilegeEscalation": False, "runAsNonRoot": True,
                            "capabilities": {"drop": ["ALL"]}},
        **fields,
    }


def confined_pod_spec(container: dict, volumes: list[dict]) -> dict:
    """No API token, no service links, nothing persistent; never restarted."""
    return {"containers": [container], "restartPolicy": "Never", "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "securityContext": {"runAsUser": POSTGRES_UID, "runAsGroup": POSTGRES_UID, "fsGroup": POSTGRES_UID,
                                "runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "volumes": volumes}


def scratch_server_pod_spec(spec: ClusterSpec, secret: str, parameters: dict) -> dict:
    """The official image's own entrypoint (initdb with POSTGRES_PASSWORD from the Secret,
    then postgres with `parameters`, the scratch settings)."""
    settings = [f"{k}={'on' if v is True else 'off' if v is False else v}" for k, v in parameters.items()]
    container = scratch_container(
        spec,
        args=["postgres", *[arg for s in settings for arg in ("-c", s)]],
        env=[{"name": "POSTGRES_PASSWORD",
              "valueFrom": {"secretKeyRef": {"name": secret, "key": names.SCRATCH_PASSWORD_KEY}}},
             {"name": "PGDATA", "value": names.PGDATA}],
        volumeMounts=[{"name": "data", "mountPath": names.PGDATA_MOUNT},
                      {"name": "socket", "mountPath": "/var/run/postgresql"}])
    return confined_pod_spec(container, [{"name": "data", "emptyDir": {}}, {"name": "socket", "emptyDir": {}}])


def recovery_pod_spec(spec: ClusterSpec, secret: str) -> dict:
    """recover_pod.sh as the entrypoint, read with the rest of its files from the Secret
    (mounted read-only), the data on an emptyDir; its last words in the termination log."""
    env: list[dict] = [{"name": "PGDATA", "value": names.PGDATA},
                       {"name": "PGOPS_RECOVERY_DIR", "value": names.RECOVERY_MOUNT},
                       {"name": "PGOPS_TERMINATION_LOG", "value": "/dev/termination-log"}]
    container = scratch_container(
        spec,
        command=["bash", f"{names.RECOVERY_MOUNT}/{names.RECOVERY_SCRIPT}"], env=env,
        volumeMounts=[{"name": "data", "mountPath": names.PGDATA_MOUNT},
                      {"name": "recovery", "mountPath": names.RECOVERY_MOUNT, "readOnly": True}])
    return confined_pod_spec(container, [{"name": "data", "emptyDir": {}},
                                           {"name": "recovery", "secret": {"secretName": secret,
                                                                           "defaultMode": 0o440}}])


def scratch_pod(spec: ClusterSpec, name: str, purpose: str, pod_spec: dict) -> dict:
    return {"metadata": scratch_metadata(spec, name, purpose), "spec": pod_spec}
