"""The StatefulSet: the official postgres image running pg_ops's member script.

OnDelete, never RollingUpdate: the controller must not restart the primary on its own; pg_ops's
rolling_restart job replaces pods replicas first, then switches over. The pod template carries no
role label: pg_ops sets it on the pods (the Services select on it) and Git never sees it.
"""

from __future__ import annotations

from pg_ops.render import monitoring
from pg_ops.render import names as k
from pg_ops.render.config import config_hash
from pg_ops.render.member_env import MemberEnv
from pg_ops.render.meta import checkov_skips, labels, metadata
from pg_ops.spec import ClusterSpec

POSTGRES_UID = 999  # the postgres user of the official image (Debian variant)
PROBE = f"{k.SCRIPT_MOUNT}/probe.sh"
# probe.sh passes while member.sh reports a clone, rewind, recovery or wait (its status file), so
# these only bound the time a member neither answers nor does any of that: 5 minutes.
STARTUP_PERIOD_S, STARTUP_FAILURES = 10, 30
# Shutdown (member.sh on TERM): CHECKPOINT while still serving (shared_buffers of 1 GB on homelab
# disks can take a minute), then smart for a primary with transactions in flight, then fast; all
# within STOP_S, before the kubelet's SIGKILL at the grace period.
GRACE_S = 180
STOP_S, CHECKPOINT_S, SMART_STOP_S = GRACE_S - 10, 90, 15
SHM_MOUNT = "/dev/shm"


def _exec_probe(*args: str, period: int, failures: int, timeout: int = 10) -> dict:
    return {"exec": {"command": ["/bin/bash", PROBE, *args]}, "periodSeconds": period,
            "timeoutSeconds": timeout, "failureThreshold": failures}


TERMINATION_LOG = "/dev/termination-log"


def member_env(spec: ClusterSpec) -> list[dict]:
    """member.sh's environment contract (render/member_env.py), every member from one template."""
    return MemberEnv(
        member=None, data=k.PGDATA, port=k.PORT, state=f"{k.STATE_MOUNT}/{k.STATE_KEY}",
        config_dir=k.CONFIG_MOUNT, passfile=f"{k.SECRET_MOUNT}/{k.PASSFILE_KEY}", run_dir=k.RUN_DIR,
        bin=k.pg_bin(spec.postgres.version), bins=k.PG_BINS, listen="*",
        stop_seconds=STOP_S, checkpoint_seconds=CHECKPOINT_S, smart_stop_seconds=SMART_STOP_S,
        termination_log=TERMINATION_LOG,  # the container's terminationMessagePath: a refusal's reason
        recovery_dir=k.RECOVERY_MOUNT,
    ).container_env()


def archive_env(spec: ClusterSpec) -> list[dict]:
    """The archive command's S3 keys, from the one backup Secret (`backups.store.credentials_secret`,
    keys access_key / secret_key), under the names boto3 (in barman-cloud) reads; without a
    Secret, boto3's default chain of the pod (e.g. an IAM role for the service account)."""
    store = spec.backups.store
    if not spec.backups.wal.enabled or store.type != "s3" or not store.credentials_secret:
        return []
    return [{"name": env, "valueFrom": {"secretKeyRef": {"name": store.credentials_secret, "key": key}}}
            for env, key in (("AWS_ACCESS_KEY_ID", "access_key"), ("AWS_SECRET_ACCESS_KEY", "secret_key"))]


def postgres_container(spec: ClusterSpec) -> dict:
    res = spec.kubernetes.resources
    m = spec.monitoring
    mounts = [
        {"name": k.DATA_CLAIM_TEMPLATE, "mountPath": k.PGDATA_MOUNT},
        # Whole ConfigMaps as directories, never subPath: a subPath mount never refreshes, and
        # the member script must see a new desired state (demotion) within the kubelet sync.
        {"name": "state", "mountPath": k.STATE_MOUNT, "readOnly": True},
        {"name": "config", "mountPath": k.CONFIG_MOUNT, "readOnly": True},
        {"name": "script", "mountPath": k.SCRIPT_MOUNT, "readOnly": True},
        {"name": "credentials", "mountPath": k.SECRET_MOUNT, "readOnly": True},
        {"name": "recovery", "mountPath": k.RECOVERY_MOUNT, "readOnly": True},
        {"name": "run", "mountPath": k.RUN_DIR},
        {"name": "tmp", "mountPath": "/tmp"},
        # Parallel queries and hash joins keep dynamic shared memory in /dev/shm, which the
        # container runtime gives 64 MiB ("could not resize shared memory segment").
        {"name": "shm", "mountPath": SHM_MOUNT},
    ]
    if spec.kubernetes.tls_secret:
        mounts.append({"name": "tls", "mountPath": k.TLS_MOUNT, "readOnly": True})
    return {
        "name": k.CONTAINER,
        "image": spec.kubernetes.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["/bin/bash", f"{k.SCRIPT_MOUNT}/member.sh"],
        "env": member_env(spec) + archive_env(spec),
        "ports": [{"name": k.PORT_NAME, "containerPort": k.PORT, "protocol": "TCP"}],
        "resources": {"requests": {"cpu": res.cpu, "memory": res.memory},
                      "limits": {"cpu": res.cpu, "memory": res.memory}},
        "startupProbe": _exec_probe("startup", period=STARTUP_PERIOD_S, failures=STARTUP_FAILURES),
        # Liveness tolerates a clone/rewind/recovery in progress: a restart would start it over.
        "livenessProbe": _exec_probe("live", period=10, failures=6),
        # Readiness: a lagging or disconnected replica leaves the read-only Service.
        "readinessProbe": _exec_probe("ready", f"{m.lag_alert_seconds:g}", str(m.lag_alert_bytes),
                                      period=5, failures=3),
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": mounts,
    }


def volumes(spec: ClusterSpec) -> list[dict]:
    vols = [
        # pg_ops creates the state ConfigMap at deploy; until then the member script waits and
        # says so in its log (optional: the pod starts and shows why it waits).
        {"name": "state", "configMap": {"name": k.state_configmap(spec), "optional": True}},
        {"name": "config", "configMap": {"name": k.config_configmap(spec)}},
        {"name": "script", "configMap": {"name": k.script_configmap(spec), "defaultMode": 0o555}},
        {"name": "credentials", "secret": {"secretName": k.credentials_secret(spec), "optional": False,
                                           "defaultMode": 0o440,
                                           "items": [{"key": k.PASSFILE_KEY, "path": k.PASSFILE_KEY}]}},
        # `pg-ops recover`: the first member's recovery inputs, read only while the desired state
        # names a recovery (member.sh's [recover] row); absent otherwise, hence optional.
        {"name": "recovery", "secret": {"secretName": k.recovery_secret(spec), "optional": True,
                                        "defaultMode": 0o440}},
        {"name": "run", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},  # passfile copy: not on disk
        {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
        # Memory-backed, so it counts against the container's memory limit: sized to it.
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": spec.kubernetes.resources.memory}},
        *monitoring.exporter_volumes(spec),
    ]
    if spec.kubernetes.tls_secret:
        # 0640 root:999 is what PostgreSQL accepts for a key file it does not own.
        vols.append({"name": "tls", "secret": {"secretName": spec.kubernetes.tls_secret, "defaultMode": 0o640}})
    return vols


def anti_affinity(spec: ClusterSpec) -> dict:
    """Members on different nodes: required, or preferred (a cordoned or lost node of three then
    leaves two members on one node rather than one Pending)."""
    term = {"labelSelector": {"matchLabels": k.selector_labels(spec)}, "topologyKey": "kubernetes.io/hostname"}
    if spec.kubernetes.anti_affinity == "required":
        return {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term]}}
    return {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 100, "podAffinityTerm": term}]}}


def statefulset(spec: ClusterSpec) -> dict:
    selector = k.selector_labels(spec)
    claim = {"accessModes": [spec.kubernetes.access_mode],
             "resources": {"requests": {"storage": spec.kubernetes.storage}}}
    if spec.kubernetes.storage_class:
        # volumeClaimTemplates cannot change on a live StatefulSet: see docs/architecture/kubernetes.md.
        claim["storageClassName"] = spec.kubernetes.storage_class
    skips = checkov_skips(
        CKV_K8S_40="the official postgres image runs as its postgres user, uid 999",
        CKV_K8S_43="images are pinned by tag in the cluster spec; digests are not known offline",
        CKV_K8S_15="IfNotPresent on purpose: a registry outage must not keep a member from restarting",
        **({"CKV_K8S_35": "barman-cloud (boto3) in the archive command reads the S3 keys from the env; the "
                          "Secret holds raw keys, not an AWS credentials file"} if archive_env(spec) else {}),
    )
    return {
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": metadata(spec, k.statefulset_name(spec), "database", annotations=skips),
        "spec": {
            "serviceName": k.headless_service(spec),
            "replicas": spec.postgres.members,
            "podManagementPolicy": "Parallel",   # members wait for the record, not for each other
            "updateStrategy": {"type": "OnDelete"},
            "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Retain", "whenScaled": "Retain"},
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": {**labels(spec, "database")},
                             "annotations": {"pg-ops.io/config-hash": config_hash(spec)}},
                "spec": {
                    "serviceAccountName": k.member_service_account(spec),
                    "automountServiceAccountToken": False,  # members never call the API
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": GRACE_S,  # checkpoint, smart, fast (member.sh)
                    "securityContext": {"runAsUser": POSTGRES_UID, "runAsGroup": POSTGRES_UID,
                                        "fsGroup": POSTGRES_UID, "runAsNonRoot": True,
                                        "fsGroupChangePolicy": "OnRootMismatch",
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "affinity": anti_affinity(spec),
                    "containers": [postgres_container(spec), monitoring.exporter_container(spec)],
                    "volumes": volumes(spec),
                },
            },
            "volumeClaimTemplates": [{"metadata": {"name": k.DATA_CLAIM_TEMPLATE, "labels": selector}, "spec": claim}],
        },
    }
