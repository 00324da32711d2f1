"""The Git-owned ConfigMaps: server configuration and the member + probe scripts."""

from __future__ import annotations

import hashlib
from pathlib import Path

from pg_ops.postgres import config as pg_config
from pg_ops.render import names as k
from pg_ops.render.meta import metadata
from pg_ops.spec import ClusterSpec

MEMBER_SCRIPT = Path(__file__).parents[1] / "platforms" / "member.sh"  # the one script both platforms run
PROBE_SCRIPT = Path(__file__).with_name("probe.sh")


def hba_networks(spec: ClusterSpec) -> tuple[list[str], list[str]]:
    """(plain networks, TLS-only networks) for pg_hba.conf.

    Loopback serves the probes and the exporter sidecar; the pod network serves peers, pg_ops and
    applications in the cluster. The external source ranges reach members through the
    LoadBalancer with their own address (externalTrafficPolicy: Local keeps it): with a TLS
    Secret they must use TLS (hostssl), otherwise plain scram like the pod network.
    """
    plain = ["127.0.0.1/32", k.POD_NETWORK]
    external = list(spec.kubernetes.services.external.source_ranges)
    if spec.kubernetes.tls_secret:
        return plain, external
    return plain + external, []


def archive_command(spec: ClusterSpec) -> str | None:
    """WAL archiving from the pods: barman-cloud-wal-archive of the cluster's image
    (deploy/postgres/Dockerfile), keys from the container env (the backup Secret). Needs an S3
    store: a pod cannot write to pg_ops's file store."""
    if not spec.backups.wal.enabled or spec.backups.store.type != "s3":
        return None
    from pg_ops.postgres import barman
    from pg_ops.stores.wal_archive import s3_target

    return barman.archive_command(s3_target(spec), "", None)


def postgresql_conf(spec: ClusterSpec) -> str:
    text = pg_config.postgresql_conf(spec, archive_command=archive_command(spec))
    if spec.kubernetes.tls_secret:
        text += (f"# TLS for the external path (Secret {spec.kubernetes.tls_secret})\n"
                 f"ssl = on\nssl_cert_file = '{k.TLS_MOUNT}/tls.crt'\nssl_key_file = '{k.TLS_MOUNT}/tls.key'\n"
                 "ssl_min_protocol_version = 'TLSv1.2'\n")
    return pg_config.stamped(text)


def config_data(spec: ClusterSpec) -> dict[str, str]:
    plain, tls = hba_networks(spec)
    return {"postgresql.conf": postgresql_conf(spec),
            "pg_hba.conf": pg_config.pg_hba_conf(networks=plain, tls_networks=tls),
            "pg_ident.conf": "# pg_ops maps no identities\n"}


def config_hash(spec: ClusterSpec) -> str:
    """Changes whenever the server configuration does, so it changes the pod template too: the
    StatefulSet gets a new revision and pods still on the old one are visible (OnDelete: the
    rolling_restart job replaces them, replicas first)."""
    data = config_data(spec)
    return hashlib.sha256("".join(f"{key}\0{data[key]}\0" for key in sorted(data)).encode()).hexdigest()[:16]


def config_configmap(spec: ClusterSpec) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": metadata(spec, k.config_configmap(spec), "config"),
            "data": config_data(spec)}


def script_configmap(spec: ClusterSpec) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": metadata(spec, k.script_configmap(spec), "member-script"),
            "data": {"member.sh": MEMBER_SCRIPT.read_text(), "probe.sh": PROBE_SCRIPT.read_text()}}
