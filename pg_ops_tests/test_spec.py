from pathlib import Path

import pytest

from pg_ops.errors import SpecError
from pg_ops.settings import REPO_ROOT
from pg_ops.spec import load_spec, load_specs, select_spec


def test_shipped_specs_load():
    specs = {s.name: s for s in load_specs(REPO_ROOT / "deploy" / "clusters")}
    local, homelab = specs["local"], specs["homelab"]
    assert local.platform == "local" and local.postgres.members == 3
    assert local.failover.mode == "automatic" and local.backups.store.type == "file"
    assert [d.name for d in local.databases] == ["app"]
    k = homelab.kubernetes
    assert (homelab.platform == "kubernetes" and k.namespace == "postgresql"
            and k.image.endswith("/pg-ops-postgres:16-barman-3.19.1"))
    assert (k.storage, k.resources.cpu, k.resources.memory) == ("50Gi", "2", "4Gi")
    assert (k.services.primary.name, k.services.primary.port) == ("postgres-ha-postgresql", 5432)
    assert k.services.external.ip == "192.168.10.100" and k.services.external.source_ranges == ["192.168.10.0/24"]
    assert homelab.failover.mode == "automatic"
    assert homelab.backups.schedule == "0 2 * * *" and homelab.backups.retention_days == 7


@pytest.mark.parametrize("body, field, reason", [
    ("name: Bad_Name\n", "name", "DNS-1123"),
    ("name: a\npostgres: {members: 0}\n", "postgres.members", "greater than or equal to 1"),
    ("name: a\npostgres: {replication: maybe}\n", "postgres.replication", "'async', 'sync' or 'sync-strict'"),
    ("name: a\npostgres: {parameters: {port: 1}}\n", "postgres.parameters", "managed by pg_ops"),
    # PostgreSQL parameter names are case-insensitive.
    ("name: a\npostgres: {parameters: {Port: 1}}\n", "postgres.parameters", "Port is managed by pg_ops"),
    ("name: a\npostgres: {parameters: {SYNCHRONOUS_STANDBY_NAMES: '*'}}\n", "postgres.parameters",
     "SYNCHRONOUS_STANDBY_NAMES is managed by pg_ops"),
    # In a sync mode a commit must wait for a standby (RPO 0).
    ("name: a\npostgres: {replication: sync, parameters: {synchronous_commit: local}}\n", "postgres",
     "parameters.synchronous_commit: 'local' does not wait for a standby, so replication sync would lose"),
    ("name: a\npostgres: {replication: sync-strict, parameters: {synchronous_commit: off}}\n", "postgres",
     "parameters.synchronous_commit: 'off' does not wait for a standby"),  # YAML reads a bare off as false
    ("name: a\npostgres: {replication: sync, parameters: {Synchronous_Commit: 'LOCAL'}}\n", "postgres",
     "parameters.Synchronous_Commit: 'local' does not wait"),
    ("name: a\ndatabases: [{name: postgres, owner: x}]\n", "databases.0", "reserved"),
    ("name: a\nbackups: {store: {type: s3}}\n", "backups.store.s3.bucket", "Field required"),
    ("name: a\nunknown_key: 1\n", "unknown_key", "Extra inputs are not permitted"),
    ("name: a\nfailover: {mode: sometimes}\n", "failover.mode", "'automatic' or 'manual'"),
    ("name: a\ndatabases: [{name: m, owner: postgres_exporter}]\n", "databases.0", "reserved"),
    ("name: a\nalerts: {alertmanager_url: 'http://am:s3cret@am:9093'}\n", "alerts.alertmanager_url",
     "carries credentials"),
    ("name: a\nalerts: {alertmanager_url: 'am:9093'}\n", "alerts.alertmanager_url", "not an http(s)"),
    ("name: a\nplatform: kubernetes\npooler: {replicas: 0}\n", "pooler.replicas", "greater than or equal to 1"),
    ("name: a\npooler: {mode: statement}\n", "pooler.mode", "'transaction' or 'session'"),
    ("name: a\nmaintenance: {window: 'sometimes'}\n", "maintenance.window", "is not a five-field cron"),
    ("name: a\nbackups: {store: {type: file, path: b}, copy_to: {store: {type: file, path: b}}}\n", "backups",
     "backups.copy_to is backups.store itself"),
    ("name: a\ndatabases: [{name: m, owner: pgops_pooler}]\n", "databases.0", "reserved"),
])
def test_bad_spec_names_file_field_and_reason(tmp_path: Path, body, field, reason):
    path = tmp_path / "c.yaml"
    path.write_text(body)
    with pytest.raises(SpecError) as err:
        load_spec(path)
    message = str(err.value)
    assert str(path) in message and f"field {field}" in message and reason in message
    assert "\n" not in message


@pytest.mark.parametrize("replication, value", [
    ("sync", "on"), ("sync", "remote_write"), ("sync-strict", "remote_apply"), ("sync", "'ON'"),
    ("async", "local"), ("async", "off"),  # async mode promises no RPO 0: any value is the operator's choice
])
def test_synchronous_commit_accepted_when_it_keeps_the_mode_s_promise(tmp_path: Path, replication, value):
    path = tmp_path / "c.yaml"
    path.write_text(f"name: a\npostgres: {{replication: {replication}, parameters: {{synchronous_commit: {value}}}}}\n")
    spec = load_spec(path)
    assert spec.postgres.replication == replication and spec.postgres.parameter("SYNCHRONOUS_COMMIT") is not None


def test_parameters_are_read_whatever_their_case(tmp_path: Path):
    from pg_ops.postgres.config import wal_receiver_timeout_seconds

    path = tmp_path / "c.yaml"
    path.write_text("name: a\npostgres: {parameters: {WAL_Receiver_Timeout: 30s}}\n")
    spec = load_spec(path)
    assert spec.postgres.parameter("wal_receiver_timeout") == "30s" and wal_receiver_timeout_seconds(spec) == 30.0


def test_invalid_yaml_and_missing_file(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="invalid YAML"):
        load_spec(bad)
    with pytest.raises(SpecError, match="not found"):
        load_specs(tmp_path / "nope.yaml")


def test_duplicate_cluster_names_and_selection(tmp_path: Path):
    (tmp_path / "a.yaml").write_text("name: one\n")
    (tmp_path / "b.yaml").write_text("name: one\n")
    with pytest.raises(SpecError, match="already defined"):
        load_specs(tmp_path)
    (tmp_path / "b.yaml").write_text("name: two\nlocal: {base_port: 21000}\n")
    specs = load_specs(tmp_path)
    assert select_spec(specs, None).name == "one"
    assert select_spec(specs, "two").name == "two"
    with pytest.raises(SpecError, match="'three' is not defined"):
        select_spec(specs, "three")


def test_two_kubernetes_clusters_in_one_namespace_need_their_own_services(tmp_path: Path):
    """The same primary Service name in one namespace: the second cluster's apply would take the
    first's Service (its applications would write to the second); the same external address too.
    `pg-ops recover` gives the new cluster its own (test_wal's Kubernetes recovery)."""
    folder = tmp_path / "k8s"
    folder.mkdir()
    (folder / "a.yaml").write_text("name: a\nplatform: kubernetes\n")
    (folder / "b.yaml").write_text("name: b\nplatform: kubernetes\n")
    with pytest.raises(SpecError, match=r"b.yaml: field kubernetes.services.primary.name: Service "
                                        r"'postgres-ha-postgresql' in namespace postgresql is already cluster a's"):
        load_specs(folder)
    (folder / "b.yaml").write_text("name: b\nplatform: kubernetes\nkubernetes: {namespace: other}\n")
    assert [s.name for s in load_specs(folder)] == ["a", "b"]  # another namespace
    (folder / "a.yaml").write_text("name: a\nplatform: kubernetes\n"
                                   "kubernetes: {services: {external: {ip: 192.0.2.10}}}\n")
    (folder / "b.yaml").write_text("name: b\nplatform: kubernetes\n"
                                   "kubernetes: {namespace: other, services: {external: {ip: 192.0.2.10}}}\n")
    with pytest.raises(SpecError, match=r"b.yaml: field kubernetes.services.external.ip: 192.0.2.10 is already "
                                        r"cluster a's"):
        load_specs(folder)


def test_local_ports_outside_the_ephemeral_range_and_apart_from_other_clusters(tmp_path: Path):
    from pg_ops.spec import ephemeral_ports

    ephemeral = ephemeral_ports()
    shipped = load_spec(REPO_ROOT / "deploy/clusters/local.yaml")
    assert shipped.local.base_port + shipped.postgres.members - 1 < ephemeral.start  # the default is outside it
    inside = tmp_path / "inside"
    inside.mkdir()
    (inside / "a.yaml").write_text(f"name: a\nlocal: {{base_port: {ephemeral.start + 100}}}\n")
    with pytest.raises(SpecError, match=rf"a.yaml: field local.base_port: ports {ephemeral.start + 100}-"
                                        rf"{ephemeral.start + 102} fall in this machine's ephemeral port range"):
        load_specs(inside)
    overlap = tmp_path / "overlap"
    overlap.mkdir()
    (overlap / "a.yaml").write_text("name: a\nlocal: {base_port: 21000}\n")
    (overlap / "b.yaml").write_text("name: b\nlocal: {base_port: 21002}\n")
    with pytest.raises(SpecError, match=r"b.yaml: field local.base_port: ports 21002-21004 overlap cluster a's "
                                        r"21000-21002"):
        load_specs(overlap)
    (overlap / "b.yaml").write_text("name: b\nlocal: {base_port: 21003}\n")
    assert [s.name for s in load_specs(overlap)] == ["a", "b"]
    # A pooler takes the port after the members'.
    (overlap / "b.yaml").write_text("name: b\nlocal: {base_port: 21003}\npooler: {}\n")
    (overlap / "c.yaml").write_text("name: c\nlocal: {base_port: 21006}\n")
    with pytest.raises(SpecError, match=r"c.yaml: field local.base_port: ports 21006-21008 overlap cluster b's "
                                        r"21003-21006"):
        load_specs(overlap)
    (overlap / "c.yaml").unlink()
    # Kubernetes specs have no local ports to check.
    (overlap / "k.yaml").write_text("name: k\nplatform: kubernetes\nlocal: {base_port: 21000}\n")
    assert [s.name for s in load_specs(overlap)] == ["a", "b", "k"]


@pytest.mark.parametrize("parameters, refused", [
    ({}, False),  # replies every 1 s (status interval), lease 5 s
    ({"wal_receiver_status_interval": "10s", "wal_sender_timeout": "60s"}, True),  # every 10 s
    ({"wal_receiver_status_interval": 10, "wal_sender_timeout": 4000}, False),  # asked every 2 s
    ({"wal_receiver_status_interval": "3s", "wal_sender_timeout": "10s"}, True),  # 3 s > lease / 2
    ({"wal_receiver_status_interval": 0, "wal_sender_timeout": 0}, True),  # never
])
def test_standby_replies_must_come_within_half_the_lease(tmp_path: Path, parameters, refused):
    import yaml

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"name": "c", "postgres": {"parameters": parameters}}))
    if refused:
        with pytest.raises(SpecError, match=r"standbys reply only every .* more than half of failover.lease_seconds"):
            load_spec(path)
    else:
        load_spec(path)
    # With isolation fencing off, or one member, there is no lease to keep.
    path.write_text(yaml.safe_dump({"name": "c", "postgres": {"parameters": parameters},
                                    "failover": {"isolation_fencing": False}}))
    load_spec(path)
