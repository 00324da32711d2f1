"""Cluster-wide server configuration (postgresql.conf, pg_hba.conf) rendered from a spec.

Per-member settings (port, cluster_name, listen_addresses) are NOT here: the member script
passes them on the command line, because pg_rewind copies configuration files from its
source and a rewound member would otherwise boot with the new primary's port and name.
"""

from __future__ import annotations

from pg_ops.postgres.archiving import archive_settings
from pg_ops.spec import ClusterSpec, setting_seconds

WAL_RECEIVER_TIMEOUT_S = 5


def wal_receiver_timeout_seconds(spec: ClusterSpec) -> float:
    seconds = setting_seconds(spec.postgres.parameter("wal_receiver_timeout"), bare_unit=0.001)
    return seconds if seconds and seconds > 0 else float(WAL_RECEIVER_TIMEOUT_S)


def conf_value(v: object) -> str:
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, int | float):
        return str(v)
    return "'" + str(v).replace("'", "''") + "'"


def postgresql_conf(spec: ClusterSpec, *, small: bool = False, archive_command: str | None = None) -> str:
    """`small`: the embedded local cluster on a laptop-sized machine. `archive_command`: the
    platform's command for this cluster's WAL archive (None: archiving off)."""
    members = spec.postgres.members
    settings: dict[str, object] = {
        "max_connections": spec.postgres.max_connections,
        "password_encryption": "scram-sha-256",
        "wal_level": "replica",
        "wal_log_hints": True,            # pg_rewind needs it (or checksums; we have both)
        "max_wal_senders": members * 2 + 4,
        "max_replication_slots": members * 2 + 4,
        "wal_keep_size": "256MB" if small else "1GB",  # margin besides the slots
        "max_slot_wal_keep_size": "2GB" if small else "20GB",  # a dead replica cannot fill the disk
        "hot_standby": True,
        "hot_standby_feedback": True,     # fewer recovery conflicts for backups taken on replicas
        "max_standby_streaming_delay": "300s",  # a replica-side pg_dump is not cancelled after 30 s
        "wal_receiver_status_interval": "1s",
        # The receiver pings its sender after half of this without a message, so a replica's
        # silence (pg_stat_wal_receiver.last_msg_receipt_time) says within ~3 s that its
        # primary went quiet; the connection itself ends after the full timeout.
        "wal_receiver_timeout": f"{WAL_RECEIVER_TIMEOUT_S}s",
        "wal_sender_timeout": "5s",
        "wal_retrieve_retry_interval": "500ms",
        "recovery_target_timeline": "latest",
        "shared_buffers": "128MB" if small else "1GB",
        "synchronous_commit": "on",
        "logging_collector": False,
        "log_line_prefix": "%m [%p] %q%u@%d ",
        "log_min_messages": "warning",
        "log_connections": False,
        "log_checkpoints": False,
        "shared_preload_libraries": "",
    }
    if small:
        # Segments live in the data dir (pg_dynshmem), not /dev/shm: a SIGKILLed local member
        # (chaos tests, a killed laptop session) leaves nothing behind in RAM once its data
        # dir is gone. Production (Kubernetes) keeps PostgreSQL's default (posix).
        settings["dynamic_shared_memory_type"] = "mmap"
    if archive_command and spec.backups.wal.enabled:
        settings.update(archive_settings(archive_command, spec.backups.wal.archive_timeout_seconds))
    settings.update(spec.postgres.parameters)
    lines = ["# Rendered by pg_ops from the cluster spec; per-member settings are on the command line."]
    lines += [f"{k} = {conf_value(v)}" for k, v in settings.items()]
    return "\n".join(lines) + "\n"


STAMP_PREFIX = "# pg-ops configuration "


def stamped(text: str) -> str:
    """The file with its first line naming its digest: what a rollout compares to know whether a
    member reads the rendered file (a node may append lines of its own; the stamp stays)."""
    import hashlib

    return f"{STAMP_PREFIX}{hashlib.sha256(text.encode()).hexdigest()[:16]}\n{text}"


def stamp_of(text: str) -> str | None:
    first = text.split("\n", 1)[0]
    return first[len(STAMP_PREFIX):].strip() if first.startswith(STAMP_PREFIX) else None


def pg_hba_conf(*, networks: list[str], tls_networks: list[str] | None = None) -> str:
    """scram-sha-256 everywhere over TCP; no trust. `tls_networks` require TLS (hostssl)."""
    lines = ["# Rendered by pg_ops. TYPE DATABASE USER ADDRESS METHOD",
             "local all all scram-sha-256"]
    for net in networks:
        lines.append(f"host replication replicator {net} scram-sha-256")
        lines.append(f"host all all {net} scram-sha-256")
    for net in tls_networks or []:
        lines.append(f"hostssl all all {net} scram-sha-256")
    return "\n".join(lines) + "\n"
